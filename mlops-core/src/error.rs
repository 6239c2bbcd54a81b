//! The one error type every trait in the SDK speaks.
//!
//! Each implementation crate keeps its own detailed error enum and converts it into
//! [`Error`], keeping the original as the `source` where one exists. Every variant
//! names the thing that was wrong (a view, a column, a model, a version, a path) so the
//! message alone tells a user what to fix.

use std::fmt;

/// A boxed error from a layer below the SDK (object storage, Redis, burn, HTTP).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of thing an error is about: used in [`Error::NotFound`] and
/// [`Error::AlreadyExists`] so that messages read "model version not found: fraud@7".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResourceKind {
    /// A feature view.
    FeatureView,
    /// An entity definition.
    Entity,
    /// A feature inside a view.
    Feature,
    /// A column of an Arrow batch.
    Column,
    /// A registered model (all of its versions).
    Model,
    /// One version of a model.
    ModelVersion,
    /// An alias of a model (`champion`, `challenger`, ...).
    Alias,
    /// An artifact's bytes in storage.
    Artifact,
    /// An experiment in the tracker.
    Experiment,
    /// A run in the tracker.
    Run,
    /// A dataset snapshot.
    Snapshot,
    /// An entry of the audit log.
    AuditEntry,
    /// A tensor named in an inference request or a model signature.
    Tensor,
    /// An object in storage.
    Object,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::FeatureView => "feature view",
            Self::Entity => "entity",
            Self::Feature => "feature",
            Self::Column => "column",
            Self::Model => "model",
            Self::ModelVersion => "model version",
            Self::Alias => "alias",
            Self::Artifact => "artifact",
            Self::Experiment => "experiment",
            Self::Run => "run",
            Self::Snapshot => "dataset snapshot",
            Self::AuditEntry => "audit entry",
            Self::Tensor => "tensor",
            Self::Object => "object",
        };
        f.write_str(s)
    }
}

/// Every error the SDK's traits return.
///
/// Match on the variant to decide what to do (retry a [`Error::Conflict`], show a
/// [`Error::InvalidInput`] to the caller, alert on [`Error::Integrity`]); print it to
/// tell a human what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named thing does not exist.
    #[error("{kind} not found: {name}")]
    NotFound {
        /// What kind of thing was looked up.
        kind: ResourceKind,
        /// Its name, e.g. `fraud@champion` or `transactions:amount`.
        name: String,
    },

    /// A create-only operation found the thing already there.
    #[error("{kind} already exists: {name}")]
    AlreadyExists {
        /// What kind of thing was being created.
        kind: ResourceKind,
        /// Its name.
        name: String,
    },

    /// A conditional write lost a race or a precondition did not hold (the object
    /// changed since it was read, an alias points at an archived version, ...).
    /// Re-reading and retrying may succeed.
    #[error("conflict on {target}: {reason}")]
    Conflict {
        /// The thing whose state did not match, e.g. `model fraud alias champion`.
        target: String,
        /// What was expected and what was found.
        reason: String,
    },

    /// The caller passed something malformed or out of range. Never retryable as is.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was invalid, e.g. `feature reference "a:b:c"` or `input 'x'`.
        what: String,
        /// Why, including what was expected.
        reason: String,
    },

    /// Data does not have the columns or types it must have.
    #[error("schema mismatch in {context}: column '{column}': expected {expected}, found {found}")]
    SchemaMismatch {
        /// Where the data was being used, e.g. `ingest into view transactions`.
        context: String,
        /// The offending column.
        column: String,
        /// What the schema requires.
        expected: String,
        /// What the data has.
        found: String,
    },

    /// Stored bytes do not match their recorded digest, or a signature does not verify.
    /// The data must not be used.
    #[error("integrity check failed for {target}: {reason}")]
    Integrity {
        /// What was checked, e.g. `model fraud version 3 artifact`.
        target: String,
        /// What did not match.
        reason: String,
    },

    /// No credentials, or credentials that are not valid (HTTP 401).
    #[error("unauthorized: {reason}")]
    Unauthorized {
        /// Why the credentials were refused; never contains the credential itself.
        reason: String,
    },

    /// Valid credentials without the permission the operation needs (HTTP 403).
    #[error("forbidden: {reason}")]
    Forbidden {
        /// Which permission was missing.
        reason: String,
    },

    /// The service cannot take the request now (not ready, overloaded, shutting down).
    /// Retrying later may succeed.
    #[error("{what} unavailable: {reason}")]
    Unavailable {
        /// What is unavailable, e.g. `model fraud`.
        what: String,
        /// Why, e.g. `queue full (1024 requests)`.
        reason: String,
    },

    /// Reading or writing persistent storage failed.
    #[error("storage error at {path}: {source}")]
    Storage {
        /// The object path or URL concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A component below the SDK failed (a training backend, Redis, an HTTP peer).
    #[error("{backend} error: {source}")]
    Backend {
        /// The component, e.g. `burn (wgpu)` or `redis`.
        backend: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// [`Error::NotFound`] for `kind` named `name`.
    pub fn not_found(kind: ResourceKind, name: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            name: name.into(),
        }
    }

    /// [`Error::AlreadyExists`] for `kind` named `name`.
    pub fn already_exists(kind: ResourceKind, name: impl Into<String>) -> Self {
        Self::AlreadyExists {
            kind,
            name: name.into(),
        }
    }

    /// [`Error::Conflict`] on `target` because of `reason`.
    pub fn conflict(target: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Conflict {
            target: target.into(),
            reason: reason.into(),
        }
    }

    /// [`Error::InvalidInput`]: `what` was invalid because of `reason`.
    pub fn invalid_input(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// [`Error::SchemaMismatch`] for `column` in `context`.
    pub fn schema_mismatch(
        context: impl Into<String>,
        column: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Self::SchemaMismatch {
            context: context.into(),
            column: column.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// [`Error::Integrity`] for `target` because of `reason`.
    pub fn integrity(target: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Integrity {
            target: target.into(),
            reason: reason.into(),
        }
    }

    /// [`Error::Storage`] at `path` caused by `source`.
    pub fn storage(path: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Storage {
            path: path.into(),
            source: source.into(),
        }
    }

    /// [`Error::Backend`] in `backend` caused by `source`.
    pub fn backend(backend: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            backend: backend.into(),
            source: source.into(),
        }
    }

    /// Whether retrying the same operation later may succeed ([`Error::Conflict`],
    /// [`Error::Unavailable`], [`Error::Storage`] and [`Error::Backend`]).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Conflict { .. }
                | Self::Unavailable { .. }
                | Self::Storage { .. }
                | Self::Backend { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_thing() {
        let e = Error::not_found(ResourceKind::ModelVersion, "fraud@champion");
        assert_eq!(e.to_string(), "model version not found: fraud@champion");
        let e = Error::schema_mismatch("ingest into view tx", "amount", "Float64", "Utf8");
        assert_eq!(
            e.to_string(),
            "schema mismatch in ingest into view tx: column 'amount': expected Float64, found Utf8"
        );
        let e = Error::storage("s3://b/models/fraud", std::io::Error::other("timed out"));
        assert_eq!(
            e.to_string(),
            "storage error at s3://b/models/fraud: timed out"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn retryable_classification() {
        assert!(Error::conflict("alias champion", "etag changed").is_retryable());
        assert!(!Error::invalid_input("model name", "empty").is_retryable());
        assert!(!Error::integrity("artifact", "digest mismatch").is_retryable());
    }
}
