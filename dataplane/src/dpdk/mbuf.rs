//! Packet buffers and receive bursts.

use std::ptr::NonNull;

use patronus_core::frame::Frame;
pub use patronus_core::BURST_SIZE;

use super::Mempool;

/// An owned packet buffer (`rte_mbuf`), freed back to its pool on drop.
///
/// Byte access covers the first segment; receive paths here produce
/// single-segment buffers, and [`Mbuf::linearize`] folds any chain into one.
#[derive(Debug)]
pub struct Mbuf {
    raw: NonNull<dpdk_sys::rte_mbuf>,
}

// SAFETY: an mbuf has exactly one owner at a time (this value), and DPDK
// allows an mbuf to be freed or transmitted from any lcore.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes a buffer from `pool`, or `None` when the pool is empty.
    #[inline]
    pub fn alloc(pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: the pool is live for the duration of the call.
        let raw = unsafe { dpdk_sys::shim_rte_pktmbuf_alloc(pool.as_ptr()) };
        NonNull::new(raw).map(|raw| Mbuf { raw })
    }

    /// Wraps a buffer handed over by DPDK.
    ///
    /// # Safety
    /// `raw` must be a valid mbuf that nothing else owns or will free.
    #[inline]
    pub(super) unsafe fn from_raw(raw: NonNull<dpdk_sys::rte_mbuf>) -> Mbuf {
        Mbuf { raw }
    }

    /// Gives up ownership, for handing the buffer to a tx ring.
    #[inline]
    pub(super) fn into_raw(self) -> *mut dpdk_sys::rte_mbuf {
        let raw = self.raw.as_ptr();
        std::mem::forget(self);
        raw
    }

    #[inline]
    fn m(&self) -> &dpdk_sys::rte_mbuf {
        // SAFETY: we own a valid mbuf; reading its header is always allowed.
        unsafe { self.raw.as_ref() }
    }

    /// The packet bytes of the first segment.
    #[inline]
    pub fn data(&self) -> &[u8] {
        let m = self.m();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's data
        // buffer by DPDK's invariants, and we own the buffer (no writer aliases it).
        unsafe {
            std::slice::from_raw_parts(
                m.buf_addr.cast::<u8>().add(usize::from(m.data_off)),
                usize::from(m.data_len),
            )
        }
    }

    /// The packet bytes of the first segment, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let m = self.m();
        let (addr, off, len) = (m.buf_addr.cast::<u8>(), m.data_off, m.data_len);
        // SAFETY: as in `data`, and `&mut self` makes this the only reference.
        // A cloned (refcnt > 1) mbuf is never produced by this module.
        unsafe { std::slice::from_raw_parts_mut(addr.add(usize::from(off)), usize::from(len)) }
    }

    /// Length of the first segment.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.m().data_len)
    }

    /// True when the first segment holds no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total packet length over all segments.
    #[inline]
    pub fn pkt_len(&self) -> u32 {
        self.m().pkt_len
    }

    /// Number of segments.
    #[inline]
    pub fn segments(&self) -> u16 {
        self.m().nb_segs
    }

    /// The port the packet arrived on.
    #[inline]
    pub fn port(&self) -> u16 {
        self.m().port
    }

    /// Free bytes in front of the data.
    #[inline]
    pub fn headroom(&self) -> usize {
        // SAFETY: reads mbuf header fields only.
        usize::from(unsafe { dpdk_sys::shim_rte_pktmbuf_headroom(self.raw.as_ptr()) })
    }

    /// Free bytes after the data of the last segment.
    #[inline]
    pub fn tailroom(&self) -> usize {
        // SAFETY: reads mbuf header fields only.
        usize::from(unsafe { dpdk_sys::shim_rte_pktmbuf_tailroom(self.raw.as_ptr()) })
    }

    /// Grows the packet at the front by `n` bytes; false (unchanged) when the
    /// headroom is too small.
    #[inline]
    pub fn prepend(&mut self, n: usize) -> bool {
        let Ok(n) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: we own the mbuf; the call checks the headroom itself and
        // returns NULL without changing anything when it is short.
        !unsafe { dpdk_sys::shim_rte_pktmbuf_prepend(self.raw.as_ptr(), n) }.is_null()
    }

    /// Removes `n` bytes from the front; false (unchanged) when shorter.
    #[inline]
    pub fn adj(&mut self, n: usize) -> bool {
        let Ok(n) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: we own the mbuf; the call checks the length first.
        !unsafe { dpdk_sys::shim_rte_pktmbuf_adj(self.raw.as_ptr(), n) }.is_null()
    }

    /// Removes `n` bytes from the end; false (unchanged) when shorter.
    #[inline]
    pub fn trim(&mut self, n: usize) -> bool {
        let Ok(n) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: we own the mbuf; the call checks the length first.
        unsafe { dpdk_sys::shim_rte_pktmbuf_trim(self.raw.as_ptr(), n) == 0 }
    }

    /// Grows the packet at the end by `n` bytes; false (unchanged) when the
    /// tailroom is too small. The new bytes are uninitialised garbage from the
    /// buffer's previous use (never memory outside the buffer).
    #[inline]
    pub fn append(&mut self, n: usize) -> bool {
        let Ok(n) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: we own the mbuf; the call checks the tailroom first.
        !unsafe { dpdk_sys::shim_rte_pktmbuf_append(self.raw.as_ptr(), n) }.is_null()
    }

    /// Sets the packet to exactly `len` bytes (single segment), growing or
    /// shrinking at the end. False when it does not fit.
    pub fn set_len(&mut self, len: usize) -> bool {
        let cur = self.len();
        if len >= cur {
            self.append(len - cur)
        } else {
            self.trim(cur - len)
        }
    }

    /// Copies a chained packet into its first segment; false when it does not fit.
    pub fn linearize(&mut self) -> bool {
        // SAFETY: we own the mbuf chain; the call either succeeds or leaves it unchanged.
        unsafe { dpdk_sys::shim_rte_pktmbuf_linearize(self.raw.as_ptr()) == 0 }
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and nothing else references it.
        unsafe { dpdk_sys::shim_rte_pktmbuf_free(self.raw.as_ptr()) };
    }
}

/// Up to [`BURST_SIZE`] received buffers, owned, in a fixed array (no
/// allocation per burst). Buffers not taken out are freed on drop or refill.
#[derive(Debug)]
pub struct RxBurst {
    slots: [*mut dpdk_sys::rte_mbuf; BURST_SIZE],
    len: usize,
    next: usize,
}

// SAFETY: the burst owns the buffers it holds, like a collection of `Mbuf`s.
unsafe impl Send for RxBurst {}

impl Default for RxBurst {
    fn default() -> Self {
        RxBurst {
            slots: [std::ptr::null_mut(); BURST_SIZE],
            len: 0,
            next: 0,
        }
    }
}

impl RxBurst {
    /// An empty burst.
    pub fn new() -> Self {
        Self::default()
    }

    /// Buffers not yet taken out.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.len - self.next
    }

    /// Frees what is left and exposes the array for a new receive.
    #[inline]
    pub(super) fn refill_slots(&mut self) -> &mut [*mut dpdk_sys::rte_mbuf; BURST_SIZE] {
        self.free_remaining();
        &mut self.slots
    }

    #[inline]
    pub(super) fn set_received(&mut self, n: usize) {
        debug_assert!(n <= BURST_SIZE);
        self.len = n.min(BURST_SIZE);
        self.next = 0;
    }

    fn free_remaining(&mut self) {
        while self.pop().is_some() {}
    }

    /// Takes the next buffer out of the burst.
    #[inline]
    pub fn pop(&mut self) -> Option<Mbuf> {
        if self.next == self.len {
            return None;
        }
        let raw = self.slots[self.next];
        self.next += 1;
        // SAFETY: slots[..len] were filled by rx_burst with valid mbufs that
        // we own; each is handed out once (next only grows).
        NonNull::new(raw).map(|raw| unsafe { Mbuf::from_raw(raw) })
    }
}

impl Drop for RxBurst {
    fn drop(&mut self) {
        self.free_remaining();
    }
}

/// The cores' packet buffer interface, on mbufs.
impl Frame for Mbuf {
    #[inline]
    fn data(&self) -> &[u8] {
        Mbuf::data(self)
    }
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        Mbuf::data_mut(self)
    }
    #[inline]
    fn prepend(&mut self, n: usize) -> bool {
        Mbuf::prepend(self, n)
    }
    #[inline]
    fn set_len(&mut self, len: usize) -> bool {
        Mbuf::set_len(self, len)
    }
    #[inline]
    fn trim_front(&mut self, n: usize) -> bool {
        Mbuf::adj(self, n)
    }
}
