//! DPI counters: flows and bytes per category and per application, flows by
//! how their verdict was reached, and how many packets classification took.
//!
//! Application labels (`TLS.YouTube`) get stable ids from one process-wide,
//! append-only registry when a [`Classifier`](super::Classifier) is compiled,
//! so counters keep counting the same series across catalogue reloads. Each
//! worker writes its own [`DpiCounters`] (single writer: relaxed loads and
//! stores, no read-modify-write); the metrics endpoint sums the workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::{Category, Method};

/// Most distinct application labels counted; later ones count as [`OVERFLOW_LABEL`].
pub const MAX_APP_LABELS: usize = 4096;

/// Label id that collects applications beyond [`MAX_APP_LABELS`].
pub const OVERFLOW_LABEL: u32 = 0;

/// Upper bounds of the packets-to-classify histogram buckets (the last is +Inf).
pub const PACKET_BUCKETS: [u64; 9] = [1, 2, 3, 4, 5, 6, 8, 12, 16];

/// The process-wide application label registry.
fn registry() -> &'static Mutex<Vec<(String, Category)>> {
    static REGISTRY: OnceLock<Mutex<Vec<(String, Category)>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(vec![("other".to_owned(), Category::Unknown)]))
}

/// The stable id of an application label, registering it if new.
pub fn label_id(name: &str, category: Category) -> u32 {
    let mut labels = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = labels.iter().position(|(n, c)| n == name && *c == category) {
        return i as u32;
    }
    if labels.len() >= MAX_APP_LABELS {
        return OVERFLOW_LABEL;
    }
    labels.push((name.to_owned(), category));
    (labels.len() - 1) as u32
}

/// Every registered label, indexed by id.
pub fn labels() -> Vec<(String, Category)> {
    registry().lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// One worker's DPI counters.
#[derive(Debug)]
pub struct DpiCounters {
    app_flows: Box<[AtomicU64]>,
    app_bytes: Box<[AtomicU64]>,
    category_flows: [AtomicU64; Category::COUNT],
    category_bytes: [AtomicU64; Category::COUNT],
    method_flows: [AtomicU64; Method::COUNT],
    /// Cumulative histogram buckets are computed at read time; these are per bucket.
    packets_buckets: [AtomicU64; PACKET_BUCKETS.len() + 1],
    packets_sum: AtomicU64,
    reassembly_exhausted: AtomicU64,
    announcements_unshared: AtomicU64,
}

impl Default for DpiCounters {
    fn default() -> Self {
        DpiCounters {
            app_flows: (0..MAX_APP_LABELS).map(|_| AtomicU64::new(0)).collect(),
            app_bytes: (0..MAX_APP_LABELS).map(|_| AtomicU64::new(0)).collect(),
            category_flows: Default::default(),
            category_bytes: Default::default(),
            method_flows: Default::default(),
            packets_buckets: Default::default(),
            packets_sum: AtomicU64::new(0),
            reassembly_exhausted: AtomicU64::new(0),
            announcements_unshared: AtomicU64::new(0),
        }
    }
}

/// Adds to a counter that only this thread writes.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl DpiCounters {
    /// Records a flow's final classification (its label, category and how it
    /// was reached), with the bytes it carried so far and the packets it took.
    pub fn classified(
        &self,
        label: u32,
        category: Category,
        method: Method,
        bytes: u64,
        packets: u16,
    ) {
        bump(&self.method_flows[method.index()], 1);
        let label = label as usize;
        if let (Some(f), Some(b)) = (self.app_flows.get(label), self.app_bytes.get(label)) {
            bump(f, 1);
            bump(b, bytes);
        }
        bump(&self.category_flows[category.index()], 1);
        bump(&self.category_bytes[category.index()], bytes);
        let bucket = PACKET_BUCKETS
            .iter()
            .position(|&le| u64::from(packets) <= le)
            .unwrap_or(PACKET_BUCKETS.len());
        bump(&self.packets_buckets[bucket], 1);
        bump(&self.packets_sum, u64::from(packets));
    }

    /// Adds bytes of an already classified flow.
    #[inline]
    pub fn bytes(&self, label: u32, category: Category, bytes: u64) {
        if let Some(b) = self.app_bytes.get(label as usize) {
            bump(b, bytes);
        }
        bump(&self.category_bytes[category.index()], bytes);
    }

    /// Publishes the inspector's count of hellos left unreassembled for want of a buffer.
    pub fn set_reassembly_exhausted(&self, n: u64) {
        self.reassembly_exhausted.store(n, Ordering::Relaxed);
    }

    /// Counts flows announced here that `n` other workers' full queues could
    /// not take: those workers classify them by their own bytes.
    pub fn announcements_unshared(&self, n: u64) {
        bump(&self.announcements_unshared, n);
    }

    /// Flows announced here that other workers could not be told of.
    pub fn announcements_unshared_total(&self) -> u64 {
        self.announcements_unshared.load(Ordering::Relaxed)
    }

    /// Flows classified with this label.
    pub fn app_flows(&self, label: u32) -> u64 {
        self.app_flows
            .get(label as usize)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// Bytes of flows with this label.
    pub fn app_bytes(&self, label: u32) -> u64 {
        self.app_bytes
            .get(label as usize)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// Flows classified into `category`.
    pub fn category_flows(&self, category: Category) -> u64 {
        self.category_flows[category.index()].load(Ordering::Relaxed)
    }

    /// Flows whose verdict `method` reached.
    pub fn method_flows(&self, method: Method) -> u64 {
        self.method_flows[method.index()].load(Ordering::Relaxed)
    }

    /// Bytes of flows in `category`.
    pub fn category_bytes(&self, category: Category) -> u64 {
        self.category_bytes[category.index()].load(Ordering::Relaxed)
    }

    /// Flows per packets-to-classify bucket (not cumulative; the last bucket is +Inf), and the sum of packets.
    pub fn packets_histogram(&self) -> ([u64; PACKET_BUCKETS.len() + 1], u64) {
        (
            self.packets_buckets
                .each_ref()
                .map(|b| b.load(Ordering::Relaxed)),
            self.packets_sum.load(Ordering::Relaxed),
        )
    }

    /// Hellos left unreassembled because every buffer was in use.
    pub fn reassembly_exhausted(&self) -> u64 {
        self.reassembly_exhausted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_stable_and_counted() {
        let a = label_id("TestProto.A", Category::Video);
        assert_eq!(label_id("TestProto.A", Category::Video), a);
        assert_ne!(label_id("TestProto.B", Category::Video), a);
        assert_eq!(labels()[a as usize].0, "TestProto.A");
        let c = DpiCounters::default();
        c.classified(a, Category::Video, Method::ServerName, 1000, 3);
        c.bytes(a, Category::Video, 500);
        assert_eq!((c.app_flows(a), c.app_bytes(a)), (1, 1500));
        assert_eq!(c.category_bytes(Category::Video), 1500);
        assert_eq!(c.method_flows(Method::ServerName), 1);
        assert_eq!(c.method_flows(Method::Signature), 0);
        let (buckets, sum) = c.packets_histogram();
        assert_eq!((buckets[2], sum), (1, 3));
    }
}
