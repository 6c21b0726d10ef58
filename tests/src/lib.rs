//! Helpers shared by the end-to-end tests live in `tests/tests/common`.

pub mod impair;
