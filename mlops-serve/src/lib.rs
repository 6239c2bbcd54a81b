//! # mlops-serve
//!
//! Serving for the mlops SDK: an in-process model server and its HTTP face, which
//! speaks the Open Inference Protocol (v2). It depends on `mlops-core` only and
//! reaches models through the [`ModelRegistry`](mlops_core::ModelRegistry) and
//! [`ModelLoader`](mlops_core::ModelLoader) traits, never through a training
//! framework.
//!
//! Today this crate holds the protocol's error mapping ([`http_status`]); the
//! model server (routing, batching, caching, monitoring), the HTTP endpoints and the
//! remote client are planned: see the README's feature table.
//!
//! ```
//! use mlops_core::{Error, ResourceKind};
//! use mlops_serve::http_status;
//!
//! assert_eq!(http_status(&Error::not_found(ResourceKind::Model, "fraud")), 404);
//! assert_eq!(http_status(&Error::invalid_input("input 'x'", "wrong shape")), 400);
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod status;

pub use status::http_status;
