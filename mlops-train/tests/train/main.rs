//! Integration tests of mlops-train, in one binary (linking burn and arrow once).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod artifacts;
mod data;
mod metrics;
mod search;
mod training;
