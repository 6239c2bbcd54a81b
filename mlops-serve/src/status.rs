//! Which HTTP status an error becomes.

use mlops_core::Error;

/// The HTTP status code an [`Error`] is answered with, following the Open Inference
/// Protocol and KServe's practice: bad requests are 4xx and never 500.
///
/// | Error | Status |
/// |---|---|
/// | `InvalidInput`, `SchemaMismatch` | 400 Bad Request |
/// | `Unauthorized` | 401 Unauthorized |
/// | `Forbidden` | 403 Forbidden |
/// | `NotFound` | 404 Not Found |
/// | `AlreadyExists`, `Conflict` | 409 Conflict |
/// | `Unavailable` | 503 Service Unavailable |
/// | `Integrity`, `Storage`, `Backend`, anything else | 500 Internal Server Error |
pub fn http_status(error: &Error) -> u16 {
    match error {
        Error::InvalidInput { .. } | Error::SchemaMismatch { .. } => 400,
        Error::Unauthorized { .. } => 401,
        Error::Forbidden { .. } => 403,
        Error::NotFound { .. } => 404,
        Error::AlreadyExists { .. } | Error::Conflict { .. } => 409,
        Error::Unavailable { .. } => 503,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlops_core::ResourceKind;

    #[test]
    fn client_errors_are_4xx() {
        let cases = [
            (Error::invalid_input("input 'x'", "bad"), 400),
            (Error::schema_mismatch("infer", "x", "FP32", "BYTES"), 400),
            (
                Error::Unauthorized {
                    reason: "no key".into(),
                },
                401,
            ),
            (
                Error::Forbidden {
                    reason: "needs admin".into(),
                },
                403,
            ),
            (Error::not_found(ResourceKind::ModelVersion, "m@3"), 404),
            (Error::conflict("alias", "moved"), 409),
            (Error::already_exists(ResourceKind::Model, "m"), 409),
            (
                Error::Unavailable {
                    what: "model m".into(),
                    reason: "queue full".into(),
                },
                503,
            ),
            (Error::integrity("artifact", "digest"), 500),
            (Error::storage("s3://b", std::io::Error::other("x")), 500),
        ];
        for (e, status) in cases {
            assert_eq!(http_status(&e), status, "{e}");
        }
    }
}
