//! About the API itself: `GET /` (HSDS API metadata with hsda's profile), `GET /openapi.json`,
//! `GET /event-types`, `GET /health`, `GET /metrics` and `GET /follow`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;

/// The URI naming hsda's HSDS profile (HSDS plus writes, events and webhooks).
pub const PROFILE_URI: &str = "https://github.com/hsda-project/hsda/tree/main/profile";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(root))
        .route("/openapi.json", get(openapi))
        .route("/event-types", get(event_types))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/follow", get(follow))
}

/// The directories this one follows and how that goes ([`crate::follow::Following::statuses`]); an admin key
/// is required (it names the sources).
async fn follow(
    State(state): State<AppState>,
    caller: super::extract::Caller,
) -> Result<Json<Value>, super::error::ApiError> {
    caller.require(&[])?;
    let sources = state.following.statuses(state.db.follow_cursors().await?);
    Ok(Json(json!({ "sources": sources })))
}

/// OpenMetrics text for Prometheus; an admin key is required (the figures tell every tenant's volumes).
async fn metrics(
    State(state): State<AppState>,
    caller: super::extract::Caller,
) -> Result<impl IntoResponse, super::error::ApiError> {
    caller.require(&[])?;
    let store = state.db.store_figures().await?;
    let text = state.metrics.render(&store);
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text))
}

/// Where this API is: the operator's `public_url` when one is configured, else the `Host` of the request.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.configured_public_url {
        return url.clone();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("http://{host}")
}

async fn root(State(state): State<AppState>, headers: HeaderMap) -> Json<Value> {
    Json(json!({
        "version": "3.1",
        "profile": PROFILE_URI,
        "openapi_url": format!("{}/openapi.json", base_url(&state, &headers)),
        "hsda_version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn openapi(State(state): State<AppState>, headers: HeaderMap) -> Json<Value> {
    Json(crate::openapi::document(&base_url(&state, &headers)))
}

async fn event_types() -> Json<Value> {
    Json(crate::events::catalog())
}

/// `ok`; `degraded` (200: reads work, writes fail with the `fault` shown); or 503 `unavailable` when the
/// database does not answer at all. `last_fault` is the previous fault, once it is over.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let answers = state.db.ping().await;
    let (current, last) = state.db.condition().snapshot();
    let (status, label) = match (answers, &current) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, Some(_)) => (StatusCode::OK, "degraded"),
        (true, None) => (StatusCode::OK, "ok"),
    };
    let mut body = json!({ "status": label, "database": if answers { "answers" } else { "does not answer" } });
    if let Some(fault) = current {
        body["fault"] = json!(fault);
    }
    if let Some(fault) = last {
        body["last_fault"] = json!(fault);
    }
    (status, Json(body))
}
