//! Conformance suites for the SDK's traits: test support, behind the `testkit`
//! cargo feature (turn it on in `[dev-dependencies]` only).
//!
//! Each suite is a function that drives one implementation through its trait's
//! documented contract and panics, naming the broken rule, when it does not hold,
//! in the style of object_store's `integration.rs`. The workspace runs every suite
//! on every implementation it ships (memory, local disk, S3- and Azure-compatible
//! servers; the in-process and the remote model server); an implementation of your
//! own passes the same suite:
//!
//! ```
//! # use mlops_core::ModelRegistry;
//! // In a `#[tokio::test]` of your crate, on a fresh instance of your registry:
//! async fn my_registry_keeps_the_contract(my_registry: &dyn ModelRegistry) {
//!     mlops_core::testkit::registry::conformance(my_registry).await;
//! }
//! ```
//!
//! A suite expects a fresh, empty implementation and uses names that start with
//! `conformance`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod audit;
pub mod features;
pub mod predictor;
pub mod process;
pub mod registry;
pub mod server;
pub mod snapshots;
pub mod tracker;

use crate::error::Error;

/// Panics unless `result` is an error of the kind `matches` accepts; `what` names
/// the operation in the message.
#[track_caller]
pub(crate) fn expect_err<T: std::fmt::Debug>(
    result: crate::Result<T>,
    what: &str,
    matches: impl Fn(&Error) -> bool,
) -> Error {
    match result {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) if matches(&e) => e,
        Err(e) => panic!("{what}: wrong kind of error: {e:?}"),
    }
}
