//! Errors as the protocol answers them: `{"error": "..."}` with the status of
//! [`http_status`], and the headers some statuses carry.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mlops_core::Error;

use crate::codec::ErrorResponse;
use crate::status::http_status;

/// An error as the protocol answers it.
pub(super) struct ApiError {
    pub(super) error: Error,
    /// A status other than [`http_status`]'s (413, 504).
    pub(super) status: Option<u16>,
    /// Whether the model server already counted this request in its metrics.
    pub(super) counted: bool,
}

impl ApiError {
    pub(super) fn with_status(error: Error, status: u16) -> Self {
        Self {
            error,
            status: Some(status),
            counted: false,
        }
    }

    pub(super) fn code(&self) -> u16 {
        self.status.unwrap_or_else(|| http_status(&self.error))
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self {
            error,
            status: None,
            counted: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&ErrorResponse {
            error: self.error.to_string(),
        })
        .unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if code == 503 {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if code == 401 {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// What every handler returns.
pub(super) type ApiResult = std::result::Result<Response, ApiError>;

/// A JSON body with its content type.
pub(super) fn json_response(value: &impl serde::Serialize) -> ApiResult {
    let body = serde_json::to_vec(value).map_err(|e| Error::backend("json", e))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The answer for paths the protocol does not have.
pub(super) async fn not_found() -> ApiResult {
    Err(ApiError::with_status(
        Error::invalid_input("path", "no such endpoint of the v2 protocol"),
        404,
    ))
}
