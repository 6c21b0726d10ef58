//! Patronus data-plane cores: everything a worker does to a packet, as
//! sans-IO code over byte slices and the [`frame::Frame`] trait, with no
//! DPDK, no async runtime and no gRPC.
//!
//! Bytes and time go in, decisions and bytes come out: parsing
//! ([`packet`]), the flow table ([`flow`]), classification ([`dpi`]), the
//! tunnel engine ([`tunnel`]), the packet path ([`pipeline`], run by
//! [`worker`]) and the validated configuration they all read ([`config`]). The `patronus-dataplane` crate
//! runs them on DPDK ports; tests, benchmarks and fuzz targets run them on
//! heap buffers (the `test-support` feature).

#![deny(unsafe_code)]

pub mod bfd;
pub mod config;
pub mod dpi;
pub mod flow;
pub mod frame;
mod labels;
pub mod neighbor;
pub mod packet;
pub mod paths;
pub mod pending;
pub mod pipeline;
pub mod published;
pub mod qos;
pub mod route;
pub mod stats;
#[cfg(test)]
mod testing;
pub mod tunnel;
pub mod worker;

/// How many packets one rx or tx burst, and so one pass of the pipeline,
/// moves at most.
pub const BURST_SIZE: usize = 32;
