//! Patronus control plane: desired state (sites, peers, policies) behind the
//! public gRPC API, kept durable in an embedded database.

pub mod api;
pub mod auth;
pub mod events;
pub mod fleet;
pub use patronus_proto::manifest;
pub mod resource;
pub mod server;
pub mod store;
pub mod sync;
pub mod validate;
