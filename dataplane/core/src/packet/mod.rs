//! Packet parsing and flow identity.

pub mod flow_key;
pub mod parse;
