//! # mlops-serve
//!
//! Serving for the mlops SDK: an in-process model server and its HTTP face, which
//! speaks the Open Inference Protocol (v2). It depends on `mlops-core` only and
//! reaches models through the [`ModelRegistry`](mlops_core::ModelRegistry) and
//! [`ModelLoader`](mlops_core::ModelLoader) traits, never through a training
//! framework.
//!
//! - [`ModelServer`] implements [`Server`](mlops_core::Server): deployments of
//!   registry models with fixed, A/B or canary routing ([`Routing`]), shadow
//!   traffic, dynamic batching ([`BatchConfig`]), a prediction cache
//!   ([`CacheConfig`]), hot reload when an alias moves, and feature enrichment from
//!   an online store ([`Enrichment`]);
//! - [`http`] serves a [`Server`](mlops_core::Server) over HTTP with axum: the v2
//!   REST endpoints, the binary tensor extension, repository load/unload, admin
//!   endpoints, Prometheus metrics, API keys with scopes and request limits;
//! - [`RemoteServer`] implements the same trait over HTTP, so application code
//!   runs unchanged against a local or a remote server.
//!
//! ```
//! use mlops_core::{Error, ResourceKind};
//! use mlops_serve::http_status;
//!
//! assert_eq!(http_status(&Error::not_found(ResourceKind::Model, "fraud")), 404);
//! assert_eq!(http_status(&Error::invalid_input("input 'x'", "wrong shape")), 400);
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

// Layers, bottom to top; each uses only those above it in this list.
mod auth;
mod client;
pub mod codec;
mod config;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod http;
mod runtime;
mod server;
mod status;

pub use auth::{ApiKeys, KeyRing, Scope};
pub use client::RemoteServer;
#[cfg(feature = "tls")]
pub use config::HttpTls;
pub use config::{
    Arm, BatchConfig, CacheConfig, CanaryRamp, DeploymentConfig, Enrichment, FeedbackConfig,
    HttpConfig, LogConfig, MonitorConfig, Routing,
};
pub use runtime::cache::CacheStats;
pub use runtime::monitor::DriftEvent;
pub use runtime::shadow::ShadowRecord;
pub use server::{DeploymentStatus, ModelServer, ROUTING_KEY, ReloadReport, VersionDrift};
pub use status::http_status;
