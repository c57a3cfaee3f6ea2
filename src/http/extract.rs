//! Request extractors that answer in problem+json: a JSON body parser with clear messages, query parameters
//! each given once, and the API key of the caller with its scope.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use crate::store::keys::{Principal, Scope};

/// A JSON body (any JSON value); malformed JSON or a wrong content type gets a problem+json answer.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_ascii_lowercase();
        let essence = content_type.split(';').next().unwrap_or("").trim().to_string();
        // A JSON Patch (RFC 6902, a list of operations) is JSON too, but not what any endpoint here takes: its
        // operations would be read as a body and refused field by field.
        let json = essence == "application/json" || essence.ends_with("+json");
        if !json || essence == "application/json-patch+json" {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::BadRequest("the request body is empty; send a JSON object".into()));
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::BadRequest(format!("malformed JSON at line {} column {}: {e}", e.line(), e.column()))
        })?;
        refuse_nul(&value)?;
        Ok(JsonBody(value))
    }
}

/// The query parameters, each given at most once: a repeated one (`per_page=1&per_page=2`) is a 400 naming
/// it, rather than one of its values taken silently.
pub struct Params(pub std::collections::HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut params = std::collections::HashMap::new();
        let query = parts.uri.query().unwrap_or_default();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if params.insert(key.to_string(), value.into_owned()).is_some() {
                return Err(ApiError::parameter(&key, "may be given only once"));
            }
        }
        Ok(Params(params))
    }
}

/// Refuses a JSON value holding the NUL character anywhere (a member name or a string), naming where: valid
/// JSON, but no text PostgreSQL stores (nor anything HSDS means).
pub fn refuse_nul(value: &Value) -> Result<(), ApiError> {
    fn find(value: &Value, pointer: String) -> Option<String> {
        match value {
            Value::String(s) if s.contains('\0') => Some(pointer),
            Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| find(v, format!("{pointer}/{i}"))),
            Value::Object(map) => map.iter().find_map(|(key, v)| {
                let at = crate::hsds::validate::pointer_join(&pointer, key);
                if key.contains('\0') { Some(at) } else { find(v, at) }
            }),
            _ => None,
        }
    }
    match find(value, String::new()) {
        Some(pointer) => Err(ApiError::invalid(pointer, "must not contain the NUL character (U+0000)")),
        None => Ok(()),
    }
}

/// The caller, authenticated by `Authorization: Bearer <key>`; requests without a valid key are refused.
pub struct Caller(pub Principal);

impl<S> FromRequestParts<S> for Caller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        match optional_principal(parts, &state).await? {
            Some(p) => Ok(Caller(p)),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// The caller if a key was presented; an invalid key is an error, no key is `None`.
pub async fn optional_principal(parts: &Parts, state: &AppState) -> Result<Option<Principal>, ApiError> {
    state.principal(&parts.headers).await
}

impl Caller {
    /// Refuses unless the key has one of `scopes` (admin is always allowed).
    pub fn require(&self, scopes: &[Scope]) -> Result<&Principal, ApiError> {
        if self.0.scope == Scope::Admin || scopes.contains(&self.0.scope) {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden)
        }
    }
}
