//! The protocol's gRPC face (cargo feature `grpc`): `inference.GRPCInferenceService`
//! (ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata,
//! ModelInfer, and the repository calls where Triton's clients look for them)
//! and `inference.model_repository.ModelRepositoryService` (where MLServer's
//! look), over any [`Server`](mlops_core::Server): the model server, or a remote one.
//!
//! - Tensors travel as typed `contents` or as `raw_input_contents` /
//!   `raw_output_contents` (little-endian, BYTES length-prefixed): an answer is
//!   raw when its request was, as Triton's clients expect.
//! - The same API keys and scopes as the HTTP face, from the `authorization:
//!   Bearer ...` metadata: `infer` for inference, health and metadata, `admin`
//!   for load and unload.
//! - Errors are gRPC statuses with the HTTP face's messages: bad input
//!   `INVALID_ARGUMENT`, unknown names `NOT_FOUND`, keys `UNAUTHENTICATED` /
//!   `PERMISSION_DENIED`, a full server `UNAVAILABLE`, oversized messages
//!   `RESOURCE_EXHAUSTED`; `INTERNAL` only for the server's own failures.
//!
//! Code generation: proto/ holds the two services written from the published
//! protocol (package, service, message and field names and numbers are the
//! protocol's); build.rs compiles them with protox, a protobuf compiler in
//! pure Rust, so building needs no `protoc`, and tonic-prost-build generates
//! the code into OUT_DIR.

mod client;
mod convert;
mod service;

pub use client::GrpcRemoteServer;
pub use service::{GrpcConfig, serve};

/// Makes rustls's ring provider the process's default when none is set yet.
/// tonic's TLS builds its rustls configs from the process default, which
/// rustls cannot pick by itself when a build enables both of its providers
/// (another dependency of the application may enable aws-lc-rs); an
/// application that installed its own keeps it.
fn ensure_crypto_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

/// Code generated from proto/inference.proto.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    unreachable_pub
)]
pub mod proto {
    tonic::include_proto!("inference");

    /// Code generated from proto/model_repository.proto.
    pub mod model_repository {
        tonic::include_proto!("inference.model_repository");
    }
}
