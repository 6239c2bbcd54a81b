//! Integration tests of mlops-core's public API, in one binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod drift;
mod drift_stream;
mod drift_table;
mod dyn_traits;
mod features;
mod models;
mod tensors;
