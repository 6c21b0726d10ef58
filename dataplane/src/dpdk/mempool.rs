//! Packet buffer pools.

use std::ffi::CString;
use std::ptr::NonNull;

use super::{DpdkError, Eal};

/// A pool of packet buffers (`rte_pktmbuf_pool_create`).
///
/// Buffers ([`super::Mbuf`]) do not keep their pool alive, so the pool is only
/// freed on drop when every buffer has come back; otherwise it is leaked on
/// purpose (and the leak logged), which keeps any straggler buffer valid.
#[derive(Debug)]
pub struct Mempool {
    raw: NonNull<dpdk_sys::rte_mempool>,
    name: String,
    size: u32,
}

// SAFETY: DPDK mempools are multi-producer/multi-consumer safe by default (the
// pktmbuf pool uses the "ring_mp_mc" ops); the pointer is only used through
// those thread-safe calls.
unsafe impl Send for Mempool {}
// SAFETY: as above; `&Mempool` only exposes thread-safe calls.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `size` buffers with `data_room` bytes each (including
    /// DPDK's 128 B headroom), a per-lcore cache of `cache` buffers, on NUMA
    /// socket `socket` (-1: any).
    ///
    /// # Errors
    /// When the name is taken, too long or holds a NUL, or memory is short.
    pub fn new(
        _eal: &Eal,
        name: &str,
        size: u32,
        cache: u32,
        data_room: u16,
        socket: i32,
    ) -> Result<Mempool, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError {
            call: "rte_pktmbuf_pool_create",
            errno: 22,
            context: format!("pool name {name:?} contains a NUL byte"),
        })?;
        // SAFETY: EAL is initialised (we hold `&Eal`); `cname` is a valid C
        // string that DPDK copies; the other arguments are plain values.
        let raw = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), size, cache, 0, data_room, socket)
        };
        let raw = NonNull::new(raw)
            .ok_or_else(|| DpdkError::from_rte_errno("rte_pktmbuf_pool_create", name))?;
        Ok(Mempool {
            raw,
            name: name.to_owned(),
            size,
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many buffers the pool holds in total.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Buffers currently taken out of the pool (held by rings, workers or in flight).
    pub fn in_use(&self) -> u32 {
        // SAFETY: `raw` is a live pool; the count only reads ring and cache lengths.
        unsafe { dpdk_sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }

    pub(super) fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.raw.as_ptr()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        let in_use = self.in_use();
        if in_use != 0 {
            tracing::error!(pool = %self.name, in_use, "mempool still has buffers out; leaking it rather than freeing memory in use");
            return;
        }
        // SAFETY: no buffer is outstanding and no port holds the pool any more
        // (ports keep an `Arc<Mempool>`), so nothing can touch it after this.
        unsafe { dpdk_sys::rte_mempool_free(self.raw.as_ptr()) };
    }
}
