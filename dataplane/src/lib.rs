//! Patronus data plane: DPDK poll-mode workers that parse, track flows,
//! route and forward packets between the gateway's ports.
//!
//! `unsafe` is confined to [`dpdk`]; everything else is safe Rust over byte
//! slices, so the protocol logic is tested without DPDK.

#![deny(unsafe_code)]

pub mod agent;
pub mod config;
pub mod dpdk;
pub mod dpi;
pub mod flow;
pub mod frame;
pub mod gateway;
mod labels;
pub mod metrics;
pub mod neighbor;
pub mod packet;
pub mod pending;
pub mod published;
pub mod route;
pub mod runtime;
pub mod site;
pub mod stats;
pub mod tunnel;
pub mod worker;
