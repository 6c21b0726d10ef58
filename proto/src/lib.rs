//! The Patronus gRPC API, `patronus.v1`: messages and the client and server
//! code tonic generates from `proto/patronus/v1/*.proto`, and
//! the client connection set-up that patronusctl and the data plane share, and
//! the CRD-shaped manifests that patronusctl and the operator convert to them.

pub mod client;
pub mod manifest;
pub mod names;

/// `patronus.v1`.
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::large_enum_variant,
        clippy::doc_lazy_continuation
    )]
    tonic::include_proto!("patronus.v1");
}

/// The encoded file descriptor set of `patronus.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("patronus_v1_descriptor");
