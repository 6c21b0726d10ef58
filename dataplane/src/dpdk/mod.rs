//! The safe boundary around DPDK: every FFI call of the data plane lives in
//! this module and its children, each wrapped in a small safe function named
//! after the C call minus `rte_`.
//!
//! Everything above this module works with [`Mbuf`], [`RxBurst`], [`TxQueue`]
//! and plain identifiers; it never sees a raw pointer. Each `unsafe` block
//! carries a `SAFETY:` line explaining why the call is sound.

#![allow(unsafe_code)]

mod eal;
mod log;
mod mbuf;
mod mempool;
mod port;

use std::ffi::CStr;
use std::fmt;

pub use eal::{launch_on_lcore, rdtsc, tsc_hz, worker_lcores, Eal, LaunchHandle, LcoreId};
pub use mbuf::{Mbuf, RxBurst, BURST_SIZE};
pub use mempool::Mempool;
pub use port::{LinkStatus, Port, PortConfig, PortId, PortStats, RxQueue, TxQueue};

/// An error returned by a DPDK call: the function that failed and DPDK's
/// `rte_strerror` text for the errno it reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpdkError {
    /// The DPDK function that failed, e.g. `rte_eth_dev_configure`.
    pub call: &'static str,
    /// The (positive) errno value.
    pub errno: i32,
    /// What the call was about (a port or pool name), if anything.
    pub context: String,
}

impl DpdkError {
    /// Builds an error from a negative return code (DPDK's `-errno` convention).
    fn from_ret(call: &'static str, ret: i32, context: impl Into<String>) -> Self {
        DpdkError {
            call,
            errno: ret.unsigned_abs() as i32,
            context: context.into(),
        }
    }

    /// Builds an error from `rte_errno`, for calls that return NULL or -1.
    fn from_rte_errno(call: &'static str, context: impl Into<String>) -> Self {
        // SAFETY: reads the calling thread's per-lcore errno variable; no preconditions.
        let errno = unsafe { dpdk_sys::shim_rte_errno() };
        DpdkError {
            call,
            errno,
            context: context.into(),
        }
    }
}

impl fmt::Display for DpdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: rte_strerror returns a pointer to a static or thread-local
        // NUL-terminated string for any errno value; we copy it out at once.
        let text = unsafe { CStr::from_ptr(dpdk_sys::rte_strerror(self.errno)) }.to_string_lossy();
        if self.context.is_empty() {
            write!(f, "{} failed: {text} (errno {})", self.call, self.errno)
        } else {
            write!(
                f,
                "{} failed for {}: {text} (errno {})",
                self.call, self.context, self.errno
            )
        }
    }
}

impl std::error::Error for DpdkError {}

/// Turns DPDK's `0 or -errno` return convention into a `Result`.
fn check(call: &'static str, ret: i32, context: impl FnOnce() -> String) -> Result<(), DpdkError> {
    if ret < 0 {
        Err(DpdkError::from_ret(call, ret, context()))
    } else {
        Ok(())
    }
}
