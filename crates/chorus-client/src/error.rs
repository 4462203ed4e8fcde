//! Errors of the SDK, one enum for every call; each says what failed and whether to retry.

/// What went wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The options are unusable (no endpoint, unreadable certificate, bad fingerprint).
    #[error("invalid client options: {0}")]
    Config(String),
    /// No node could be reached within the allowed attempts.
    #[error("could not connect to any node after {attempts} attempts: {last}")]
    Connect {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The node answered the request with an error. `code` is the stable protocol code
    /// (`forbidden`, `invalid_channel`, `payload_too_large`, ...).
    #[error("{code}: {message}")]
    Server {
        /// The stable error code.
        code: String,
        /// The node's explanation.
        message: String,
    },
    /// No reply in time. A publish with this error may still have been applied; retrying it
    /// with the same idempotency key is safe.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// The client is closed (by [`crate::Client::close`] or after reconnecting failed).
    #[error("the client is closed: {0}")]
    Closed(String),
    /// The connection was lost after the request was sent and the request is not safe to
    /// repeat: it may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The node sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The stable protocol error code, for errors the node reported.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}
