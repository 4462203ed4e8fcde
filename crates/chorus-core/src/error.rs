//! Stable error codes shared by every face of Chorus.
//!
//! The same code names a failure on the HTTP API (`{"code", "message"}`), in gRPC statuses
//! between nodes and in the client protocol (`Error.code`, `Disconnect.code`). Codes are part of the public contract:
//! never renumber or rename one.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed (bad JSON, missing field, bad query parameter).
    BadRequest,
    /// A channel name breaks the naming rules.
    InvalidChannel,
    /// A payload is larger than the configured maximum.
    PayloadTooLarge,
    /// No credentials, or credentials that do not verify (bad signature, expired).
    Unauthorized,
    /// Valid credentials that do not allow this operation.
    Forbidden,
    /// The thing asked for does not exist.
    NotFound,
    /// The shard has no leader right now, or this node is not ready.
    Unavailable,
    /// The operation did not finish in time; it may or may not have been applied.
    Timeout,
    /// A bug or an unexpected storage failure.
    Internal,
    /// A client broke the wire protocol (undecodable, oversized or unexpected frame); the
    /// connection is closed.
    Protocol,
    /// The connection's token expired and was not refreshed in time; the connection is closed.
    TokenExpired,
    /// Nothing arrived on the connection for the idle timeout; the connection is closed.
    IdleTimeout,
    /// The client read so slowly that even its most important frames could not be queued.
    SlowConsumer,
    /// The write conflicts with the current state (a session operation based on an outdated
    /// version under the `reject` policy, or a session that exists already).
    Conflict,
    /// Too many requests of this kind from this user: try again after the time the error
    /// gives (`retry_after_ms`, or HTTP's `Retry-After`).
    RateLimited,
    /// The user's events already hold their share of the history (`[history]
    /// max_bytes_per_user`): room comes back as retention drops their older events.
    QuotaExceeded,
}

impl ErrorCode {
    /// The code as it appears on the wire (`"invalid_channel"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Protocol => "protocol_error",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
        }
    }

    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidChannel | ErrorCode::Protocol => 400,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => 401,
            ErrorCode::IdleTimeout => 408,
            ErrorCode::SlowConsumer | ErrorCode::RateLimited | ErrorCode::QuotaExceeded => 429,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
