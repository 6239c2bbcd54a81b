//! Integration tests of mlops-serve, in one binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod bounds;
mod codec;
mod common;
mod conformance;
mod core;
mod enrichment;
mod grpc;
mod http;
mod inline;
mod live;
mod onnx;
mod real_clients;
