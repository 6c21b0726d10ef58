//! Bidirectional Forwarding Detection (RFC 5880), the data plane's liveness
//! protocol for paths and next hops: sans-IO, with time passed in.
//!
//! Built so far: the Control packet codec ([`packet`]), the session state
//! machine with its timers ([`session`]) and keyed SHA1 authentication
//! ([`auth`]: the caller verifies a packet before the session takes it, and
//! seals what the session sends). Sessions run on tunnel paths
//! ([`crate::paths::bfd`]); uplink next hops and multihop follow.

pub mod auth;
pub mod packet;
pub mod session;
