//! Request bodies, read within the configured size and time limits.

use std::time::Duration;

use axum::body::Body;
use mlops_core::Error;

use super::error::ApiError;
use crate::config::HttpConfig;

/// Largest body of an admin or feedback call (JSON of a few fields, or one
/// outcome per row of a request).
const MAX_CONTROL_BODY_BYTES: usize = 4 << 20;

/// How large a body may be and how long it may take to arrive.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyLimits {
    pub(super) max_bytes: usize,
    pub(super) timeout: Duration,
}

impl BodyLimits {
    /// The limits of inference bodies.
    pub(super) fn inference(config: &HttpConfig) -> Self {
        Self {
            max_bytes: config.max_body_bytes,
            timeout: config.body_timeout,
        }
    }

    /// The limits of admin and feedback bodies: at most 4 MiB.
    pub(super) fn control(config: &HttpConfig) -> Self {
        Self {
            max_bytes: config.max_body_bytes.min(MAX_CONTROL_BODY_BYTES),
            timeout: config.body_timeout,
        }
    }
}

/// The whole body; 413 when it is larger than the limit, 408 when it does not
/// arrive in time (a client that sends part of a body and stalls).
pub(super) async fn read_body(body: Body, limits: BodyLimits) -> Result<bytes::Bytes, ApiError> {
    let limit = limits.max_bytes;
    match tokio::time::timeout(limits.timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::with_status(
            Error::invalid_input(
                "request body",
                format!("not received within {:?}", limits.timeout),
            ),
            408,
        )),
        Ok(Err(_)) => Err(ApiError::with_status(
            Error::invalid_input(
                "request body",
                format!("larger than the server's limit of {limit} bytes, or cut off"),
            ),
            413,
        )),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// A JSON body of an admin or feedback call, within the limits; `what` names it
/// in the error.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    limits: BodyLimits,
    what: &str,
) -> Result<T, ApiError> {
    let bytes = read_body(body, limits).await?;
    Ok(serde_json::from_slice(&bytes).map_err(|e| Error::invalid_input(what, e.to_string()))?)
}
