//! Request bodies, read within the configured size limit.

use axum::body::Body;
use mlops_core::Error;

use super::error::ApiError;

/// The whole body, or 413 when it is larger than `limit` bytes.
pub(super) async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::with_status(
            Error::invalid_input(
                "request body",
                format!("larger than the server's limit of {limit} bytes"),
            ),
            413,
        )
    })
}

/// A JSON body of an admin or feedback call, within the size limit; `what` names
/// it in the error.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
    what: &str,
) -> Result<T, ApiError> {
    let bytes = read_body(body, limit).await?;
    Ok(serde_json::from_slice(&bytes).map_err(|e| Error::invalid_input(what, e.to_string()))?)
}
