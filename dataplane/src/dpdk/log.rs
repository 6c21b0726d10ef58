//! DPDK's own log (EAL, libraries, drivers) routed into the process's
//! tracing log, so that every line the data plane writes has one format
//! (with `--log-format json`, one JSON object per line).

use std::ffi::c_char;
use std::panic::catch_unwind;

/// The tracing target of DPDK's messages.
const TARGET: &str = "dpdk";

/// Sends DPDK's messages to tracing under the target `dpdk`, each at the
/// level DPDK gave it. [`Eal::init`](super::Eal::init) calls it first, so
/// that EAL's own messages are routed too. When DPDK cannot take the stream
/// it keeps writing to stdout, which is only logged.
pub(super) fn route_to_tracing() {
    // SAFETY: `sink` matches the shim's callback type and lives for the
    // whole process (a plain function); the shim stores it before handing
    // DPDK the stream, so no message reaches a null sink.
    let ret = unsafe { dpdk_sys::shim_rte_log_to(Some(sink)) };
    if ret != 0 {
        tracing::warn!("DPDK's log could not be routed: it keeps writing to stdout");
    }
}

extern "C" fn sink(level: u32, line: *const c_char, len: usize) {
    // A panic must not unwind into C; a lost log line is the lesser harm.
    let _ = catch_unwind(|| {
        // SAFETY: the shim passes `len` readable bytes at `line`, valid for
        // the duration of this call, and they are only read here.
        let bytes = unsafe { std::slice::from_raw_parts(line.cast::<u8>(), len) };
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end();
        match level {
            // RTE_LOG_EMERG .. RTE_LOG_ERR
            0..=4 => tracing::error!(target: TARGET, "{text}"),
            5 => tracing::warn!(target: TARGET, "{text}"),
            // RTE_LOG_NOTICE, RTE_LOG_INFO
            6 | 7 => tracing::info!(target: TARGET, "{text}"),
            _ => tracing::debug!(target: TARGET, "{text}"),
        }
    });
}
