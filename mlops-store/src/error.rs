//! Mapping `object_store` errors into the SDK's error.

use mlops_core::{Error, ResourceKind};

/// Converts an `object_store` error at `path` into [`mlops_core::Error`], keeping the
/// cases callers act on distinct: a missing object is [`Error::NotFound`], a
/// create-only write that found the object is [`Error::AlreadyExists`], a failed
/// update-if-unchanged is [`Error::Conflict`]; anything else is [`Error::Storage`].
pub fn storage_error(path: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::not_found(ResourceKind::Object, path),
        object_store::Error::AlreadyExists { .. } => {
            Error::already_exists(ResourceKind::Object, path)
        }
        object_store::Error::Precondition { .. } | object_store::Error::NotModified { .. } => {
            Error::conflict(path, "the object changed since it was read")
        }
        other => Error::storage(path, other),
    }
}
