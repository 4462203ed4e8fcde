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
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(Body {
                code: self.code.as_str(),
                message: &self.message,
            }),
        )
            .into_response()
    }
}

impl From<chorus_cluster::ClusterError> for ApiError {
    fn from(err: chorus_cluster::ClusterError) -> Self {
        ApiError::new(err.code(), err.to_string())
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(err: crate::auth::AuthError) -> Self {
        ApiError::new(err.code(), err.to_string())
    }
}

impl From<chorus_core::ChannelNameError> for ApiError {
    fn from(err: chorus_core::ChannelNameError) -> Self {
        ApiError::new(ErrorCode::InvalidChannel, err.to_string())
    }
}
