//! The Patronus gRPC API, `patronus.v1`: messages and the client and server
//! code tonic generates from `proto/patronus/v1/*.proto`, and
//! the client connection set-up that patronusctl and the data plane share, and
//! the CRD-shaped manifests that patronusctl and the operator convert to them.
//!
//! Without its default `grpc` feature the crate is only the naming rules
//! and the secret-file rules ([`names`], [`secrets`]) that the data plane's
//! cores share with the API, with no gRPC stack and no `protoc` at build time.

#[cfg(feature = "grpc")]
pub mod client;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "grpc")]
pub mod manifest;
pub mod names;
pub mod secrets;

/// `patronus.v1`.
#[cfg(feature = "grpc")]
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::large_enum_variant,
        clippy::doc_lazy_continuation
    )]
    tonic::include_proto!("patronus.v1");
}

/// Largest gRPC message any Patronus client or server sends or accepts (a
/// site's snapshot is the largest), set explicitly on both sides so that
/// what one side may send the other always accepts. The control plane's
/// validation keeps snapshots well under it.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The encoded file descriptor set of `patronus.v1`, for gRPC server reflection.
#[cfg(feature = "grpc")]
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("patronus_v1_descriptor");
