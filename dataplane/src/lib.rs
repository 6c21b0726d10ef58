//! Patronus data plane: DPDK poll-mode workers that run the cores of
//! [`patronus_core`] on real ports, the agent that follows a control plane,
//! the metrics endpoint, and the runtime that brings it all up and down.
//!
//! `unsafe` is confined to [`dpdk`]; everything else is safe Rust.

#![deny(unsafe_code)]

pub mod agent;
pub mod dpdk;
pub mod metrics;
pub mod resolver;
pub mod runtime;
pub mod site_sync;
pub mod worker;
