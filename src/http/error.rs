//! One error type for every handler, rendered as RFC 9457 `application/problem+json`. Internal errors are
//! logged with their cause and answered with a generic 500; nothing from inside leaks to clients.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::hsds::validate::FieldError;
use crate::store::fault::{self, FaultKind};
use crate::store::write::WriteError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid query parameter")]
    BadParameter { parameter: String, detail: String },
    #[error("authentication required")]
    Unauthorized,
    /// A key was sent, but it is unknown, revoked, or not sent as `Bearer <key>`.
    #[error("the API key is not valid")]
    InvalidKey,
    #[error("this key's scope does not allow it")]
    Forbidden,
    #[error("not found")]
    NotFound(String),
    #[error("{message}")]
    Conflict { message: String, referenced_by: Vec<String> },
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("validation failed")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(pointer: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError::Invalid(vec![FieldError::new(pointer, detail)])
    }

    pub fn parameter(parameter: &str, detail: impl Into<String>) -> ApiError {
        ApiError::BadParameter { parameter: parameter.to_string(), detail: detail.into() }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Invalid(errors) => ApiError::Invalid(errors),
            WriteError::NotFound(what) => ApiError::NotFound(what),
            WriteError::PreconditionFailed => ApiError::PreconditionFailed,
            WriteError::Conflict { message, referenced_by } => ApiError::Conflict { message, referenced_by },
            message @ WriteError::FollowCursorMoved(_) => {
                ApiError::Conflict { message: message.to_string(), referenced_by: Vec::new() }
            }
            WriteError::Database(e) => e.into(),
        }
    }
}

/// A problem+json response with the given status, title, detail and extra members.
pub fn problem(status: StatusCode, title: &str, detail: &str, extra: Value) -> Response {
    let mut body = json!({
        "type": format!("https://hsda.dev/problems/{}", status.as_u16()),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Some(map), Value::Object(extra)) = (body.as_object_mut(), extra) {
        map.extend(extra);
    }
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

/// A database fault as the client sees it: what happened, that nothing was changed, when to try again.
/// A full disk is 507 (it needs an operator); a locked or unreachable database is 503.
fn fault_response(kind: FaultKind) -> Response {
    let (status, title, detail, retry_after) = match kind {
        FaultKind::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Database busy",
            "the database is locked by another process and did not free it in time; nothing was changed, retry shortly",
            "2",
        ),
        FaultKind::StorageFull => (
            StatusCode::INSUFFICIENT_STORAGE,
            "Insufficient storage",
            "the database's disk is full, so nothing was changed; reads still work, and writes resume once space is freed",
            "30",
        ),
        FaultKind::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Database unavailable",
            "the database cannot be reached or is restarting; retry shortly",
            "2",
        ),
    };
    let mut response = problem(status, title, detail, json!({ "fault": kind.as_str() }));
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest(detail) => problem(StatusCode::BAD_REQUEST, "Bad request", &detail, json!({})),
            ApiError::BadParameter { parameter, detail } => problem(
                StatusCode::BAD_REQUEST,
                "Invalid query parameter",
                &format!("{parameter}: {detail}"),
                json!({ "errors": [{ "parameter": parameter, "detail": detail }] }),
            ),
            ApiError::Unauthorized => {
                let mut r = problem(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "send an API key as `Authorization: Bearer <key>`",
                    json!({}),
                );
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            ApiError::InvalidKey => {
                let mut r = problem(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "the API key sent is not valid: unknown, revoked, or not sent as `Authorization: Bearer <key>`",
                    json!({}),
                );
                // RFC 6750, 3.1: a token was presented and refused.
                let challenge = HeaderValue::from_static(r#"Bearer error="invalid_token""#);
                r.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
                r
            }
            ApiError::Forbidden => {
                problem(StatusCode::FORBIDDEN, "Forbidden", "this API key's scope does not allow this", json!({}))
            }
            ApiError::NotFound(what) => {
                problem(StatusCode::NOT_FOUND, "Not found", &format!("{what} not found"), json!({}))
            }
            ApiError::Conflict { message, referenced_by } => {
                // `referenced_by` only where rows refer to what was to be deleted.
                let extra = match referenced_by.is_empty() {
                    true => json!({}),
                    false => json!({ "referenced_by": referenced_by }),
                };
                problem(StatusCode::CONFLICT, "Conflict", &message, extra)
            }
            ApiError::PreconditionFailed => problem(
                StatusCode::PRECONDITION_FAILED,
                "Precondition failed",
                "the resource does not meet the request's If-Match or If-None-Match: it changed since that ETag was read, or (If-None-Match) it exists; read it again",
                json!({}),
            ),
            ApiError::PayloadTooLarge => {
                let mut r = problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Payload too large",
                    "the request body is too large",
                    json!({}),
                );
                // The rest of the body is never read: the connection cannot carry another request, and says so.
                r.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
                r
            }
            ApiError::UnsupportedMediaType => problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                "send the body as application/json (or application/merge-patch+json for PATCH)",
                json!({}),
            ),
            ApiError::Invalid(errors) => {
                let detail = errors
                    .iter()
                    .take(3)
                    .map(|e| format!("{}: {}", if e.pointer.is_empty() { "/" } else { &e.pointer }, e.detail))
                    .collect::<Vec<_>>()
                    .join("; ");
                let list: Vec<Value> =
                    errors.iter().map(|e| json!({ "pointer": e.pointer, "detail": e.detail })).collect();
                problem(StatusCode::UNPROCESSABLE_ENTITY, "Validation failed", &detail, json!({ "errors": list }))
            }
            ApiError::Internal(e) => {
                if let Some(kind) = e.chain().find_map(|c| c.downcast_ref::<sqlx::Error>()).and_then(fault::classify) {
                    tracing::warn!(fault = kind.as_str(), error = %format!("{e:#}"), "request failed: database fault");
                    return fault_response(kind);
                }
                tracing::error!(error = ?e, "internal error");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "something went wrong on our side",
                    json!({}),
                )
            }
        }
    }
}

/// Turns an error response in plain text or without a body (axum's own: 405 with its `Allow`, a query string
/// or body it could not parse, a body over the size limit) into problem+json, keeping its status, headers and text as
/// the detail: every error the API gives has the same shape.
pub async fn plain_errors_as_problems(response: Response) -> Response {
    let status = response.status();
    // Only plain text or nothing: problems are already problems, and a JSON body (the health check's 503) is
    // an answer of its own.
    let plain = response.headers().get(header::CONTENT_TYPE).is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_string();
    let title = status.canonical_reason().unwrap_or("Error");
    let detail = if detail.is_empty() { title.to_lowercase() } else { detail };
    let problem = problem(status, title, &detail, json!({}));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    Response::from_parts(parts, problem.into_body())
}
