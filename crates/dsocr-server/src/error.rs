//! API errors: an HTTP status and an OpenAI-shaped JSON body,
//! `{"error": {"message", "type", "code"}}`, plus `Retry-After` for a full queue.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dsocr::input::PromptError;
use dsocr::{OcrError, SubmitError};
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// A short machine-readable kind: `invalid_request`, `unsupported_media`, `too_large`,
    /// `unauthorized`, `queue_full`, `shutting_down`, `timeout`, `model_error`, `not_found`.
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key: send `Authorization: Bearer <key>`",
        )
    }

    /// The OpenAI error type of the status.
    fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({ "error": { "message": self.message, "type": self.error_type(), "code": self.code } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull { retry_after, .. } => Self {
                retry_after: Some(retry_after),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", format!("server busy: {e}"))
            },
            SubmitError::ShuttingDown => Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", e.to_string()),
        }
    }
}

impl From<OcrError> for ApiError {
    fn from(e: OcrError) -> Self {
        let message = e.to_string();
        match &e {
            OcrError::Options(_) | OcrError::PageSelection { .. } => Self::invalid(message),
            OcrError::TooManyPages { .. } => Self::too_large(message),
            OcrError::Image { source, .. } => match source {
                PromptError::TooManyPixels { .. } => Self::too_large(message),
                PromptError::UnknownFormat { .. } | PromptError::UnsupportedFormat { .. } => {
                    Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media", message)
                }
                PromptError::TooManyImagePlaceholders { .. }
                | PromptError::MissingImagePlaceholder
                | PromptError::UnexpectedImagePlaceholder => Self::invalid(message),
                _ => Self::new(StatusCode::BAD_REQUEST, "bad_image", message),
            },
            OcrError::Pdf { .. } => Self::new(StatusCode::BAD_REQUEST, "bad_pdf", message),
            OcrError::TimedOut { .. } => Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
            OcrError::Cancelled { .. } => Self::new(StatusCode::SERVICE_UNAVAILABLE, "cancelled", message),
            OcrError::Panicked { .. } => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message),
            OcrError::PdfPage { .. } | OcrError::Model { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "model_error", message)
            }
            OcrError::Backend(_) | OcrError::Hub(_) | OcrError::Load { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
            }
        }
    }
}
