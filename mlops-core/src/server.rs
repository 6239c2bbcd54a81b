//! The [`Server`] trait: inference, metadata and health, wherever the model runs.

use async_trait::async_trait;

use crate::error::Result;
use crate::inference::{
    InferenceRequest, InferenceResponse, ModelMetadataResponse, ServerMetadataResponse,
};

/// Answers Open Inference Protocol requests.
///
/// The in-process model server implements it, and so does the HTTP client of a
/// remote server, so application code does not care where the model runs.
///
/// `version` is the protocol's optional version path segment; `None` lets the
/// server choose (its routing policy).
///
/// Contract for implementations:
/// - an unknown model or version gives [`Error::NotFound`](crate::Error::NotFound);
/// - a request that does not fit the model (names, datatypes, shapes) gives
///   [`Error::InvalidInput`](crate::Error::InvalidInput) naming the input;
/// - a server that cannot take the request now (not ready, overloaded, draining)
///   gives [`Error::Unavailable`](crate::Error::Unavailable);
/// - the response echoes the request's `id` and returns only the requested outputs
///   when the request names some (an unknown output name is
///   [`Error::InvalidInput`](crate::Error::InvalidInput)).
#[async_trait]
pub trait Server: Send + Sync + std::fmt::Debug {
    /// Whether the server can receive and answer requests.
    async fn live(&self) -> Result<bool>;

    /// Whether every model is ready.
    async fn ready(&self) -> Result<bool>;

    /// The server's name, version and extensions.
    async fn server_metadata(&self) -> Result<ServerMetadataResponse>;

    /// The names of the models served.
    async fn list_models(&self) -> Result<Vec<String>>;

    /// A model's versions, platform, inputs and outputs.
    async fn model_metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadataResponse>;

    /// Whether a model (version) can answer now.
    async fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool>;

    /// Runs inference.
    async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferenceRequest,
    ) -> Result<InferenceResponse>;
}
