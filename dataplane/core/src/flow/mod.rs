//! Per-worker flow tracking.

pub mod table;
