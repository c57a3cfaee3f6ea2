//! The HTTP layer: one router per resource, merged here, over one shared [`AppState`]. Handlers parse and
//! authorize, then call the store; request and response shapes stay in this layer.

pub mod directory;
pub mod error;
pub mod events;
pub mod extract;
pub mod meta;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, Request};
use tower_http::cors::CorsLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::store::Db;
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: Arc<Config>,
    /// Decides which webhook targets may be called (checked at subscription time too).
    pub guard: Arc<crate::webhook::ssrf::Guard>,
    /// The outbound client, shared with the delivery worker (used directly by `POST /webhooks/{id}/test`).
    pub webhook_client: crate::webhook::client::WebhookClient,
    /// Counted by the delivery worker and by every request; shown at `GET /metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The `public_url` the operator configured, if any: where the API documents say the API is (behind a
    /// proxy, the `Host` a request came with is not it). Without one, the request's `Host` tells.
    pub configured_public_url: Option<String>,
    /// Cancelled when the server stops: long requests (a feed waiting for changes) end then.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The directories this one follows, and how that goes (`GET /follow`).
    pub following: crate::follow::Following,
}

impl AppState {
    /// The `Location` of `path` (`/organizations/{id}`): under the configured `public_url`, path included (behind
    /// a proxy at `https://example.org/directory`, a bare path would leave `/directory` out), else the path.
    pub fn location(&self, path: &str) -> String {
        match &self.configured_public_url {
            Some(base) => format!("{}{path}", base.trim_end_matches('/')),
            None => path.to_string(),
        }
    }

    /// The caller if a key was presented (an invalid key is refused, no key is `None`).
    pub async fn principal(&self, headers: &HeaderMap) -> Result<Option<crate::store::keys::Principal>, ApiError> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else { return Ok(None) };
        // The scheme is case-insensitive (RFC 9110, 11.1): `bearer` and `BEARER` are the same.
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or(ApiError::InvalidKey)?;
        self.db.authenticate(token.trim()).await?.map(Some).ok_or(ApiError::InvalidKey)
    }

    /// The reader of a read request. Reads are public unless the operator requires a key for them; a key that
    /// is presented must be valid either way, so a mistyped key is told rather than silently read as anonymous.
    pub async fn check_read_access(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<crate::store::keys::Principal>, ApiError> {
        match self.principal(headers).await? {
            None if self.config.require_key_for_reads => Err(ApiError::Unauthorized),
            reader => Ok(reader),
        }
    }
}

/// A percent-encoded NUL (`%00`) in a path or query string names nothing hsda holds, and PostgreSQL refuses
/// it in any text: a 400 before any handler.
async fn refuse_nul_in_uri(req: Request<axum::body::Body>, next: axum::middleware::Next) -> axum::response::Response {
    let uri = req.uri().path_and_query().map_or("", |p| p.as_str());
    if uri.contains("%00") {
        return axum::response::IntoResponse::into_response(ApiError::BadRequest(
            "the path or query string holds a NUL character (%00)".into(),
        ));
    }
    next.run(req).await
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let metrics = state.metrics.clone();
    Router::new()
        .merge(meta::router())
        .merge(events::router())
        .merge(webhooks::router())
        .merge(directory::router())
        .fallback(|| async { ApiError::NotFound("this path".into()) })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(refuse_nul_in_uri))
        .layer(axum::middleware::map_response(error::plain_errors_as_problems))
        .layer(axum::middleware::from_fn(move |req: Request<axum::body::Body>, next: axum::middleware::Next| {
            let metrics = metrics.clone();
            async move {
                let started = std::time::Instant::now();
                let method = req.method().to_string();
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or("(no route)", |p| p.as_str())
                    .to_string();
                let response = next.run(req).await;
                metrics.request(method, route, response.status().as_u16(), started.elapsed());
                response
            }
        }))
        // Request headers are echoed rather than `*`: a browser never lets `*` cover `Authorization`.
        .layer(
            CorsLayer::permissive()
                .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
                .expose_headers([axum::http::header::ETAG, axum::http::header::LOCATION]),
        )
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let route = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            tracing::info_span!("http", method = %req.method(), route, path = %req.uri().path())
        }))
        .with_state(state)
}
