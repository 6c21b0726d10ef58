//! The packet buffer interface the forwarding logic works on.
//!
//! The gateway logic is generic over [`Frame`] so that it runs on DPDK
//! mbufs in the workers and, with the `test-support` feature, on heap
//! buffers (`VecFrame`) in tests, benchmarks and fuzz targets.

/// A mutable packet buffer with room to grow at the front.
pub trait Frame {
    /// The frame's bytes.
    fn data(&self) -> &[u8];
    /// The frame's bytes, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Grows the frame by `n` bytes at the front (uninitialised); false when there is no room.
    fn prepend(&mut self, n: usize) -> bool;
    /// Sets the frame to exactly `len` bytes, trimming or growing at the end; false when it does not fit.
    fn set_len(&mut self, len: usize) -> bool;
    /// Removes `n` bytes from the front; false (unchanged) when the frame is shorter.
    fn trim_front(&mut self, n: usize) -> bool;
    /// Current length.
    fn len(&self) -> usize {
        self.data().len()
    }
    /// True when the frame holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(any(test, feature = "test-support"))]
/// A heap frame with fixed headroom and capacity, like an mbuf, for tests
/// and offline tools.
#[derive(Clone, Debug)]
pub struct VecFrame {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

#[cfg(any(test, feature = "test-support"))]
impl VecFrame {
    /// Headroom of a new frame, as in DPDK (RTE_PKTMBUF_HEADROOM).
    pub const HEADROOM: usize = 128;
    /// Total buffer size, as a default DPDK mbuf data room.
    pub const CAPACITY: usize = 2048 + Self::HEADROOM;

    /// A frame holding a copy of `bytes`, in a buffer of the capacity
    /// (larger when they need more).
    pub fn new(bytes: &[u8]) -> Self {
        let len = Self::CAPACITY.max(Self::HEADROOM + bytes.len());
        // A buffer freed earlier on this thread, as a mempool's per-core
        // cache gives one back: holding what its last frame left.
        let recycled = (len == Self::CAPACITY)
            .then(|| FREE_BUFFERS.with(|free| free.borrow_mut().pop()))
            .flatten();
        let mut buf = recycled.unwrap_or_else(|| vec![0xa5; len]);
        buf[Self::HEADROOM..Self::HEADROOM + bytes.len()].copy_from_slice(bytes);
        VecFrame {
            buf,
            start: Self::HEADROOM,
            end: Self::HEADROOM + bytes.len(),
        }
    }

    /// An empty frame.
    pub fn empty() -> Self {
        Self::new(&[])
    }

    /// Makes the frame hold `bytes` again, with the full headroom, reusing
    /// the buffer; false (unchanged) when they do not fit.
    pub fn refill(&mut self, bytes: &[u8]) -> bool {
        let end = Self::HEADROOM + bytes.len();
        if end > self.buf.len() {
            return false;
        }
        self.buf[Self::HEADROOM..end].copy_from_slice(bytes);
        self.start = Self::HEADROOM;
        self.end = end;
        true
    }
}

/// Frames are equal when their bytes are: what lies outside them is
/// whatever the buffer held before, as in an mbuf.
#[cfg(any(test, feature = "test-support"))]
impl PartialEq for VecFrame {
    fn eq(&self, other: &Self) -> bool {
        self.data() == other.data()
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Eq for VecFrame {}

#[cfg(any(test, feature = "test-support"))]
thread_local! {
    /// Buffers of [`VecFrame::CAPACITY`] freed on this thread, for reuse.
    static FREE_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Most buffers kept for reuse per thread (a mempool cache's order).
#[cfg(any(test, feature = "test-support"))]
const FREE_BUFFERS_KEPT: usize = 512;

#[cfg(any(test, feature = "test-support"))]
impl Drop for VecFrame {
    fn drop(&mut self) {
        if self.buf.len() != Self::CAPACITY {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        // A thread being torn down frees it instead.
        let _ = FREE_BUFFERS.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < FREE_BUFFERS_KEPT {
                free.push(buf);
            }
        });
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Frame for VecFrame {
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }
    fn prepend(&mut self, n: usize) -> bool {
        if n > self.start {
            return false;
        }
        self.start -= n;
        true
    }
    fn set_len(&mut self, len: usize) -> bool {
        if self.start + len > self.buf.len() {
            return false;
        }
        self.end = self.start + len;
        true
    }
    fn trim_front(&mut self, n: usize) -> bool {
        if n > self.end - self.start {
            return false;
        }
        self.start += n;
        true
    }
}
