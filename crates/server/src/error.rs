//! API errors: a JSON body with a stable code and a message a person can act
//! on, the right status, and `Retry-After` for overload and draining.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use anyaccel_batcher::{AdmissionError, ErrorCode, JobError};
use anyaccel_pipeline::ValidationError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub retry_after: Option<u64>,
}

/// OpenAI's error envelope, which every endpoint uses.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_value`, `queue_full`.
    pub code: String,
    pub message: String,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// OpenAI's error class: `invalid_request_error`, `rate_limit_error`, `server_error`...
    #[serde(rename = "type")]
    pub kind: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        let message = message.into();
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_value",
            message: format!("{param}: {message}"),
            param: Some(param),
            retry_after: None,
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

impl From<AdmissionError> for ApiError {
    fn from(e: AdmissionError) -> Self {
        let (status, code, retry) = match &e {
            AdmissionError::QueueFull {
                retry_after_secs, ..
            } => (
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                Some(*retry_after_secs),
            ),
            AdmissionError::TooLarge => (StatusCode::BAD_REQUEST, "request_too_large", None),
            AdmissionError::Draining { retry_after_secs } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                Some(*retry_after_secs),
            ),
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
            param: None,
            retry_after: retry,
        }
    }
}

impl From<anyaccel_queue::QueueError> for ApiError {
    fn from(e: anyaccel_queue::QueueError) -> Self {
        match e {
            anyaccel_queue::QueueError::Unavailable(_) => {
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_unavailable",
                    format!(
                        "the job queue is unreachable ({e}); synchronous generation still works; retry jobs shortly"
                    ),
                );
                err.retry_after = Some(2);
                err
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        let status = match e.code {
            ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::ShuttingDown | ErrorCode::ExecutorUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::GenerationFailed | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut err = ApiError::new(status, e.code.as_str(), e.message);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Another replica (or this one, once the device is back) can serve it.
            err.retry_after = Some(5);
        }
        err
    }
}

impl ApiError {
    /// The JSON envelope clients see (also sent as a streamed `error` event).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                param: self.param.clone(),
                kind: self.kind().to_string(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Refusals while draining are expected by the thousand; real failures are not.
        if self.status.is_server_error() && self.code != "draining" {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(v) = self
            .retry_after
            .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Parses a JSON body, naming the offending field on failure.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_json",
                message: format!("the body is not valid JSON: {msg}"),
                param: None,
                retry_after: None,
            };
        }
        // "unknown field `x`" and "missing field `x`" name their field themselves.
        let field = if path == "." {
            msg.split('`').nth(1).unwrap_or("body").to_string()
        } else {
            path
        };
        ApiError::invalid(field, msg)
    })
}
