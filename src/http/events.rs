//! The pull feed of the event log (`GET /events`) and single events (`GET /events/{id}`).

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::store::events::{Event, TypeFilter};
use crate::store::keys::{Principal, Scope};

/// Directory events are public; operational `webhook.*` events describe a tenant's subscriptions, so only
/// that tenant's keys and admin keys see them.
fn visible(event: &Event, viewer: Option<&Principal>) -> bool {
    if !event.event_type.starts_with("webhook.") {
        return true;
    }
    match viewer {
        Some(p) if p.scope == Scope::Admin => true,
        Some(p) => event.facets.iter().any(|(k, v)| k == "tenant" && *v == p.tenant),
        None => false,
    }
}

/// The longest `wait` a feed request may ask for: the answer comes within it even when nothing happened, so
/// proxies' idle timeouts (often 60 s) are not reached.
const MAX_WAIT_SECONDS: u64 = 30;

pub fn router() -> Router<AppState> {
    Router::new().route("/events", get(feed)).route("/events/{id}", get(one))
}

/// The stand-in for an event the caller may not see (another tenant's `webhook.*` event): its place in the
/// log and nothing else (not even its id), so that a reader can still tell the sequence has no gaps.
pub const REDACTED_TYPE: &str = "webhook.redacted";

fn redacted(event: &Event) -> Value {
    json!({
        "id": null, "sequence": event.sequence, "type": REDACTED_TYPE, "occurred_at": null,
        "object": "webhook", "object_id": null, "origin": null, "changed_inside_only": null, "data": null,
    })
}

/// One entry of the feed, serialized as it is (an event's document is not copied into a `Value` first).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum FeedItem {
    Event(Event),
    Redacted(Value),
}

async fn feed(
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    // `types` may be repeated (`types=a&types=b`) as well as comma-separated; the other parameters are single.
    let mut params: HashMap<String, String> = HashMap::new();
    for (key, value) in pairs {
        match params.get_mut(&key) {
            Some(types) if key == "types" => {
                types.push(',');
                types.push_str(&value);
            }
            Some(_) => return Err(ApiError::parameter(&key, "may be given only once")),
            None => {
                params.insert(key, value);
            }
        }
    }
    let viewer = state.check_read_access(&headers).await?;
    let after = match params.get("after") {
        None => 0,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::parameter("after", "must be a sequence number (0 or more)"))?,
    };
    let limit = match params.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::parameter("limit", "must be an integer from 1 to 1000"))?,
    };
    let types: Vec<String> = params
        .get("types")
        .map(|t| t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    for t in &types {
        if !crate::events::is_known_pattern(t) {
            return Err(ApiError::parameter("types", format!("{t} is not a known event type or pattern")));
        }
    }
    // Only a feed of everything shows stand-ins: under a type filter one would tell the hidden event's type
    // (and a filtered feed skips sequence numbers anyway).
    let everything = types.is_empty() || types.iter().any(|t| t == "*");
    let wait = match params.get("wait") {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= MAX_WAIT_SECONDS)
            .ok_or_else(|| ApiError::parameter("wait", format!("must be seconds from 0 to {MAX_WAIT_SECONDS}")))?,
    };
    let filter = TypeFilter(types);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut changes = state.db.watch_changes();
    let mut first_look = true;
    let (events, next_after) = loop {
        let (events, next_after) = state.db.events_scanned(after, &filter, limit).await?;
        if events.is_empty() && after > 0 && first_look {
            // A cursor past the newest event comes from another directory or from before this one's log was
            // restored: said so (at once, not after the wait), rather than answering "nothing yet" forever.
            let last = state.db.last_sequence().await?;
            if after > last {
                return Err(ApiError::parameter("after", format!("is past the newest event, {last}")));
            }
        }
        first_look = false;
        let now = tokio::time::Instant::now();
        if !events.is_empty() || next_after != after || now >= deadline || state.shutdown.is_cancelled() {
            break (events, next_after);
        }
        // Woken by this process's commits (of anything: deliveries too), a waiter looks again only once an
        // event past its cursor was appended here. Another process's commit (PostgreSQL) sends no signal
        // here, so it looks again at least every second.
        let look_again = now + (deadline - now).min(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(look_again) => break,
                _ = state.shutdown.cancelled() => break,
            }
            if state.db.appended_through() > after {
                break;
            }
        }
    };
    let events: Vec<FeedItem> = events
        .into_iter()
        .filter_map(|e| match visible(&e, viewer.as_ref()) {
            true => Some(FeedItem::Event(e)),
            false => everything.then(|| FeedItem::Redacted(redacted(&e))),
        })
        .collect();
    Ok(Json(json!({ "events": events, "next_after": next_after })))
}

async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let viewer = state.check_read_access(&headers).await?;
    let event = state
        .db
        .event(&id)
        .await?
        .filter(|e| visible(e, viewer.as_ref()))
        .ok_or_else(|| ApiError::NotFound(format!("event {id}")))?;
    Ok(Json(serde_json::to_value(event).map_err(anyhow::Error::from)?))
}
