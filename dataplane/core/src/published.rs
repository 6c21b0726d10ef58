//! A value that one thread replaces and many read without locking.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The current version of a `T`, swapped atomically. Readers check the
/// cheap [`Published::generation`] every burst and reload only when it moved,
/// so they see the old value or the new one, never a mix.
#[derive(Debug)]
pub struct Published<T> {
    current: ArcSwap<T>,
    generation: AtomicU64,
}

impl<T> Published<T> {
    /// Publishes the first value (generation 1).
    pub fn new(value: T) -> Self {
        Published {
            current: ArcSwap::from_pointee(value),
            generation: AtomicU64::new(1),
        }
    }

    /// Bumped by every [`Published::store`].
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Replaces the value.
    pub fn store(&self, value: T) {
        self.current.store(Arc::new(value));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}
