//! [`BackendError`]: why a backend operation failed, and whether trying again may help.

use std::time::Duration;

/// A boxed error from a broker client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The broker cannot be reached right now; trying again later may succeed.
    #[error("{backend} is unavailable: {source}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// What the client said.
        #[source]
        source: BoxError,
    },
    /// The broker did not answer in time; trying again later may succeed.
    #[error("{backend} did not answer within {after:?}")]
    Timeout {
        /// The backend's name.
        backend: &'static str,
        /// How long it waited.
        after: Duration,
    },
    /// The backend is configured wrongly (a bad URL, a missing topic): retrying will not help.
    #[error("{backend} configuration: {message}")]
    Config {
        /// The backend's name.
        backend: &'static str,
        /// What is wrong, naming the setting.
        message: String,
    },
    /// The envelope is larger than the broker accepts.
    #[error(
        "{backend} refused a message of {size} bytes as too large (limit: {max} bytes; to raise it: {raise})"
    )]
    TooLarge {
        /// The backend's name.
        backend: &'static str,
        /// The envelope's size in bytes.
        size: usize,
        /// The broker's limit in bytes; 0 when the broker did not say.
        max: usize,
        /// Which broker setting sets the limit.
        raise: &'static str,
    },
    /// The broker refused the operation.
    #[error("{backend}: {source}")]
    Other {
        /// The backend's name.
        backend: &'static str,
        /// What the client said.
        #[source]
        source: BoxError,
    },
    /// The backend was closed.
    #[error("{backend} is closed")]
    Closed {
        /// The backend's name.
        backend: &'static str,
    },
}

impl BackendError {
    /// Whether the same call may succeed later (the broker is down or slow), as opposed to a
    /// permanent failure (bad configuration, a closed backend).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable { .. } | BackendError::Timeout { .. }
        )
    }

    /// Wraps a client error as [`BackendError::Unavailable`].
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        BackendError::Unavailable {
            backend,
            source: source.into(),
        }
    }
}
