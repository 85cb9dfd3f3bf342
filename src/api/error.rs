//! The one error type of the API and its JSON shape, `{"error": {"status", "message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// Everything a request can fail with. Client mistakes are 4xx with a message naming what is
/// wrong; internal errors are logged and answered 500 without details.
#[derive(Debug)]
pub enum ApiError {
    /// A parameter, path or body the API does not accept (400).
    BadRequest(String),
    /// No such entity, killmail or route (404).
    NotFound(String),
    MethodNotAllowed,
    /// A body over the limit (413).
    PayloadTooLarge(String),
    /// A URI over the limit (414).
    UriTooLong(String),
    /// A limit answered instead of a handler: in-flight requests or reads (503).
    Overloaded(String),
    /// The request was not answered within `api.request-timeout-ms` (503).
    Timeout,
    /// In a cluster: the process that owns the answer did not give it (503).
    Cluster(String),
    /// A bug or a storage failure; the details go to the log only (500).
    Internal,
    /// An error the framework produced by itself, kept with its status.
    Framework(StatusCode, String),
}

impl ApiError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::NotFound(message.into())
    }
    pub(crate) fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "api: internal error");
        ApiError::Internal
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::Overloaded(_) | ApiError::Timeout | ApiError::Cluster(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Framework(status, _) => *status,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::UriTooLong(m)
            | ApiError::Overloaded(m)
            | ApiError::Cluster(m)
            | ApiError::Framework(_, m) => m.clone(),
            ApiError::MethodNotAllowed => "method not allowed".into(),
            ApiError::Timeout => "the request timed out; retry later".into(),
            ApiError::Internal => "internal error".into(),
        }
    }
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The HTTP status, repeated.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong, naming the parameter and the values allowed where there is one.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                status: status.as_u16(),
                message: self.message(),
            },
        };
        (status, Json(body)).into_response()
    }
}
