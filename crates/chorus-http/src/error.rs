//! API errors as JSON `{"code", "message"}` with the HTTP status of their code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chorus_core::ErrorCode;
use serde::Serialize;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// With `rate_limited`: when to try again (the `Retry-After` header, and in the body).
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, message)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Json(Body {
            code: self.code.as_str(),
            message: &self.message,
            retry_after_ms: self.retry_after_ms,
        });
        let mut response = match self.retry_after_ms {
            // Retry-After counts whole seconds: rounded up, so that a client that honours it
            // is not refused again.
            Some(ms) => (
                status,
                [(axum::http::header::RETRY_AFTER, ms.div_ceil(1000).to_string())],
                body,
            )
                .into_response(),
            None => (status, body).into_response(),
        };
        // For the audit middleware: what was refused and why, without reading the body back.
        response.extensions_mut().insert(self);
        response
    }
}

impl From<chorus_cluster::ClusterError> for ApiError {
    fn from(err: chorus_cluster::ClusterError) -> Self {
        ApiError::new(err.code(), err.to_string())
    }
}

impl From<chorus_access::AuthError> for ApiError {
    fn from(err: chorus_access::AuthError) -> Self {
        let mut api = ApiError::new(err.code(), err.to_string());
        if let chorus_access::AuthError::RateLimited { retry_after_ms, .. } = err {
            api.retry_after_ms = Some(retry_after_ms);
        }
        api
    }
}

impl From<chorus_core::ChannelNameError> for ApiError {
    fn from(err: chorus_core::ChannelNameError) -> Self {
        ApiError::new(ErrorCode::InvalidChannel, err.to_string())
    }
}
