//! The subscriptions API (`/webhooks`) and the delivery history (`/deliveries`). Every subscription belongs
//! to the tenant of the key that created it; other tenants get 404 for it, its deliveries and attempts.
//! Admin keys see every tenant's.

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::AppState;
use super::directory::{not_modified, page_envelope, parse_timestamp, with_etag};
use super::error::ApiError;
use super::extract::{Caller, JsonBody, Params};
use crate::hsds::validate::FieldError;
use crate::store::events::Event;
use crate::store::keys::{Principal, Scope};
use crate::store::now_text;
use crate::store::webhooks::{DeliveryQuery, Subscription};
use crate::webhook::signature::{Ed25519SigningKey, WebhookSecret};
use crate::webhook::ssrf::resolve_checked;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks", post(create).get(list))
        .route("/webhooks/{id}", get(show).patch(update).delete(remove))
        .route("/webhooks/{id}/test", post(test))
        .route("/webhooks/{id}/rotate-secret", post(rotate))
        .route("/webhooks/{id}/replay", post(replay))
        .route("/webhooks/{id}/enable", post(enable))
        .route("/webhooks/{id}/verify", post(verify))
        .route("/webhooks/{id}/deliveries", get(deliveries))
        .route("/deliveries/{id}", get(delivery))
        .route("/deliveries/{id}/retry", post(retry))
}

const OPERATIONAL: [&str; 4] = ["webhook.ping", "webhook.failing", "webhook.recovered", "webhook.disabled"];
/// The largest `metadata` taken, as JSON text.
const MAX_METADATA_BYTES: usize = 16 * 1024;
const FILTER_KEYS: [&str; 4] = ["organization_id", "service_id", "location_id", "taxonomy_term_id"];

/// The fields of a subscription that hsda sets and shows (see `apply_fields`).
pub(crate) const READ_ONLY: [&str; 15] = [
    "id",
    "tenant",
    "all_tenants",
    "public_key",
    "previous_public_key",
    "previous_secret_expires_at",
    "disabled_reason",
    "last_success_at",
    "last_failure_at",
    "consecutive_failures",
    "next_digest_at",
    "verified_at",
    "verification_error",
    "created_at",
    "updated_at",
];

/// The read-only fields that never change after creation.
const FIXED: [&str; 4] = ["id", "tenant", "all_tenants", "created_at"];

fn known_pattern(p: &str) -> bool {
    crate::events::is_known_pattern(p) || OPERATIONAL.contains(&p) || p == "webhook.*"
}

/// Applies the fields of a create or update body to `sub`, collecting every problem with its pointer.
async fn apply_fields(
    state: &AppState,
    sub: &mut Subscription,
    body: &Map<String, Value>,
    creating: bool,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |p: &str, d: String| errors.push(FieldError::new(p, d));
    const FIELDS: [&str; 15] = [
        "url",
        "events",
        "payload",
        "filter",
        "schedule",
        "description",
        "secret",
        "signing",
        "max_concurrency",
        "rate_limit_per_second",
        "ordered",
        "headers",
        "metadata",
        "verify",
        "status",
    ];
    // What hsda sets and shows is read-only: a create may give none of it; a PATCH may send it back as read.
    // What never changes must be sent back as it is (an `id` naming another subscription is a mistake worth
    // saying); what hsda changes on its own (counters, times) is ignored, as a copy read a moment ago may
    // already be behind.
    let shown = output(sub, None);
    for (key, value) in body {
        if FIELDS.contains(&key.as_str()) {
            continue;
        }
        if !READ_ONLY.contains(&key.as_str()) {
            err(&format!("/{key}"), "unknown field".into());
        } else if creating {
            err(&format!("/{key}"), "is read-only: hsda sets it".into());
        } else if FIXED.contains(&key.as_str()) && shown.get(key).unwrap_or(&Value::Null) != value {
            err(&format!("/{key}"), "is read-only and cannot change".into());
        }
    }
    if creating && !body.contains_key("url") {
        err("/url", "is required".into());
    }
    if let Some(v) = body.get("url") {
        match v.as_str() {
            None => err("/url", "must be a string".into()),
            Some(url) => match state.guard.parse_target_url(url) {
                Err(e) => err("/url", e.to_string()),
                Ok(parsed) => {
                    let host = parsed.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
                    let port = parsed.port_or_known_default().unwrap_or(443);
                    match resolve_checked(&state.guard, &host, port).await {
                        Ok(_) => sub.url = url.to_string(),
                        Err(e) => err("/url", e.to_string()),
                    }
                }
            },
        }
    }
    if let Some(v) = body.get("events") {
        match v.as_array() {
            Some(items) if !items.is_empty() => {
                let mut patterns = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(p) if known_pattern(p) => patterns.push(p.to_string()),
                        _ => err(
                            &format!("/events/{i}"),
                            "is not a known event type or pattern (service.updated, service.*, *)".into(),
                        ),
                    }
                }
                sub.events = patterns;
            }
            _ => err("/events", "must be a non-empty array of event types or patterns".into()),
        }
    }
    if let Some(v) = body.get("payload") {
        match v.as_str() {
            Some(p @ ("full" | "thin")) => sub.payload = p.to_string(),
            _ => err("/payload", "must be full or thin".into()),
        }
    }
    if let Some(v) = body.get("filter") {
        match v {
            Value::Null => sub.filter = Map::new(),
            Value::Object(map) => {
                for (k, value) in map {
                    if !FILTER_KEYS.contains(&k.as_str()) {
                        err(&format!("/filter/{k}"), format!("unknown filter; use one of {}", FILTER_KEYS.join(", ")));
                    } else if value.as_str().and_then(crate::hsds::validate::parse_uuid).is_none() {
                        err(&format!("/filter/{k}"), "must be a UUID (8-4-4-4-12 hex digits)".into());
                    }
                }
                // Ids are stored in lowercase; a filter compares with them as text.
                sub.filter = map
                    .iter()
                    .map(|(k, v)| match v.as_str() {
                        Some(s) => (k.clone(), Value::String(crate::hsds::validate::canonical_id(s).into_owned())),
                        None => (k.clone(), v.clone()),
                    })
                    .collect();
            }
            _ => err("/filter", "must be an object".into()),
        }
    }
    if let Some(v) = body.get("schedule") {
        match v {
            Value::Null => {
                sub.schedule = None;
                sub.next_digest_at = None;
            }
            Value::String(s) => {
                match crate::webhook::schedule::DigestSchedule::parse_with_minimum(s, state.config.min_digest_seconds) {
                    Err(e) => err("/schedule", e.to_string()),
                    Ok(schedule) if sub.schedule.as_deref() == Some(schedule.as_str()) => {}
                    Ok(schedule) => {
                        sub.schedule = Some(schedule.as_str().to_string());
                        sub.next_digest_at = crate::webhook::worker::next_digest_at(sub, chrono::Utc::now());
                    }
                }
            }
            _ => err("/schedule", "must be null, an ISO-8601 duration or a cron expression".into()),
        }
    }
    if let Some(v) = body.get("description") {
        match v.as_str() {
            Some(d) if d.len() <= 1000 => sub.description = d.to_string(),
            _ => err("/description", "must be a string of at most 1000 characters".into()),
        }
    }
    if let Some(v) = body.get("signing") {
        match v.as_str() {
            Some(s @ ("hmac-sha256" | "ed25519")) if creating => sub.signing = s.to_string(),
            Some(s) if s == sub.signing => {}
            Some("hmac-sha256" | "ed25519") => err("/signing", "cannot change after creation".into()),
            _ => err("/signing", "must be hmac-sha256 or ed25519".into()),
        }
    }
    if let Some(v) = body.get("secret") {
        match (v.as_str(), sub.signing.as_str()) {
            (Some(s), "ed25519") => match Ed25519SigningKey::parse(s) {
                Ok(key) => {
                    sub.public_key = Some(key.public_key().to_string());
                    sub.secret = key.expose();
                }
                Err(e) => err("/secret", e.to_string()),
            },
            (Some(s), _) => match WebhookSecret::parse(s) {
                Ok(secret) => sub.secret = secret.expose(),
                Err(e) => err("/secret", e.to_string()),
            },
            (None, _) => err("/secret", "must be a string".into()),
        }
    }
    if let Some(v) = body.get("max_concurrency") {
        match v.as_i64() {
            Some(n @ 1..=100) => sub.max_concurrency = n,
            _ => err("/max_concurrency", "must be an integer from 1 to 100".into()),
        }
    }
    if let Some(v) = body.get("rate_limit_per_second") {
        match (v, v.as_i64()) {
            (Value::Null, _) => sub.rate_limit_per_second = None,
            (_, Some(n @ 1..=10_000)) => sub.rate_limit_per_second = Some(n),
            _ => err("/rate_limit_per_second", "must be null or an integer from 1 to 10000".into()),
        }
    }
    if let Some(v) = body.get("ordered") {
        match v.as_bool() {
            Some(ordered) => sub.ordered = ordered,
            None => err("/ordered", "must be a boolean".into()),
        }
    }
    if let Some(v) = body.get("verify") {
        match v.as_bool() {
            Some(verify) if creating => sub.verify = verify,
            Some(verify) if verify == sub.verify => {}
            Some(_) => err("/verify", "can only be set at creation".into()),
            None => err("/verify", "must be a boolean".into()),
        }
    }
    if let Some(v) = body.get("headers") {
        match v.as_object() {
            Some(map) => {
                let mut seen = std::collections::HashSet::new();
                for (k, value) in map {
                    let lower = k.to_ascii_lowercase();
                    if !seen.insert(lower.clone()) {
                        // Names are case-insensitive: both would go, and which one a target reads is its guess.
                        err(
                            &format!("/headers/{k}"),
                            "names a header given already (names compare without case)".into(),
                        );
                    } else if crate::webhook::client::is_reserved_header(&lower) {
                        err(&format!("/headers/{k}"), "is set by hsda and cannot be overridden".into());
                    } else if axum::http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                        err(&format!("/headers/{k}"), "is not a valid header name".into());
                    } else if value.as_str().and_then(|s| axum::http::HeaderValue::from_str(s).ok()).is_none() {
                        err(&format!("/headers/{k}"), "must be a string valid as a header value".into());
                    }
                }
                sub.headers = map.clone();
            }
            None => err("/headers", "must be an object of header names to values".into()),
        }
    }
    if let Some(v) = body.get("metadata") {
        match v {
            // The owner's notes, shown with every read of the subscription: bounded as other APIs bound theirs.
            Value::Object(_) if v.to_string().len() > MAX_METADATA_BYTES => {
                err("/metadata", format!("must be at most {MAX_METADATA_BYTES} bytes as JSON"))
            }
            Value::Object(_) => sub.metadata = v.clone(),
            _ => err("/metadata", "must be an object".into()),
        }
    }
    if let Some(v) = body.get("status") {
        match v.as_str() {
            // Sent back as read: nothing changes. `failing` is an active subscription whose attempts fail,
            // which only hsda says; a copy read before it began to fail says `active` and changes nothing either
            // (`POST .../enable` is how an owner restarts a subscription).
            Some(status) if !creating && (status == sub.status || (status == "active" && sub.status == "failing")) => {}
            Some("disabled") if !creating => {
                sub.status = "disabled".into();
                sub.disabled_reason = Some("disabled by the owner".into());
            }
            Some("active") if !creating && awaiting_verification(sub) => err(
                "/status",
                "the target has not echoed the verification challenge yet; see verification_error and POST /webhooks/{id}/verify"
                    .into(),
            ),
            Some("active") if !creating => {
                sub.status = "active".into();
                sub.disabled_reason = None;
                sub.consecutive_failures = 0;
                sub.failing_since = None;
            }
            _ => err("/status", "can only be set to active or disabled, after creation".into()),
        }
    }
    errors
}

/// A subscription created with `verify: true` whose target has not yet echoed a challenge.
fn awaiting_verification(sub: &Subscription) -> bool {
    sub.verify && sub.verified_at.is_none()
}

fn output(sub: &Subscription, secret: Option<&str>) -> Value {
    let mut value = serde_json::to_value(sub).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        if let Some(secret) = secret {
            map.insert("secret".into(), Value::String(secret.to_string()));
        }
        // During an ed25519 rotation's grace period the old key signs too: its public half stays retrievable.
        if let Some(previous) = crate::webhook::worker::previous_ed25519_key(sub) {
            map.insert("previous_public_key".into(), Value::String(previous.public_key().to_string()));
        }
        // Until when the previous secret still signs: receivers that have not switched yet know their deadline.
        if crate::webhook::worker::in_grace(sub) {
            map.insert("previous_secret_expires_at".into(), json!(sub.previous_secret_until));
        }
    }
    value
}

async fn owned(state: &AppState, caller: &Principal, id: &str) -> Result<Subscription, ApiError> {
    match state.db.subscription(id).await? {
        Some(sub) if caller.scope == Scope::Admin || sub.tenant == caller.tenant => Ok(sub),
        _ => Err(ApiError::NotFound(format!("webhook {id}"))),
    }
}

/// Refuses fields an action does not know (a typo must not be ignored silently), naming the first.
fn known_fields(body: &Value, fields: &[&str]) -> Result<(), ApiError> {
    let Some(map) = body.as_object() else { return Err(ApiError::invalid("", "must be a JSON object")) };
    match map.keys().find(|k| !fields.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::invalid(crate::hsds::validate::pointer_join("", unknown), "unknown field")),
        None => Ok(()),
    }
}

/// An optional boolean field (absent or null: `false`).
fn flag(body: &Value, name: &str) -> Result<bool, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(format!("/{name}"), "must be true or false")),
    }
}

/// An optional string field (absent or null: `None`).
fn optional_text<'a>(body: &'a Value, name: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ApiError::invalid(format!("/{name}"), "must be a string")),
    }
}

/// A JSON object body that may be absent (empty means `{}`).
fn optional_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON at line {} column {}: {e}", e.line(), e.column())))?;
    super::extract::refuse_nul(&value)?;
    if value.is_object() { Ok(value) } else { Err(ApiError::invalid("", "must be a JSON object")) }
}

fn body_object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid("", "must be a JSON object")),
    }
}

async fn create(State(state): State<AppState>, caller: Caller, JsonBody(body): JsonBody) -> Result<Response, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?.clone();
    let body = body_object(body)?;
    let now = now_text();
    let mut sub = Subscription {
        id: format!("sub_{}", uuid::Uuid::new_v4().simple()),
        tenant: principal.tenant.clone(),
        url: String::new(),
        events: vec!["*".into()],
        payload: "full".into(),
        filter: Map::new(),
        schedule: None,
        description: String::new(),
        secret: String::new(),
        previous_secret: None,
        previous_secret_until: None,
        signing: "hmac-sha256".into(),
        public_key: None,
        max_concurrency: 10,
        rate_limit_per_second: None,
        ordered: false,
        headers: Map::new(),
        metadata: json!({}),
        verify: false,
        all_tenants: principal.scope == Scope::Admin,
        status: "active".into(),
        disabled_reason: None,
        last_success_at: None,
        last_failure_at: None,
        consecutive_failures: 0,
        failing_since: None,
        disabled_at: None,
        start_sequence: 0,
        next_digest_at: None,
        digest_after_sequence: 0,
        digest_since: None,
        verification_due_at: None,
        verification_error: None,
        verified_at: None,
        created_at: now.clone(),
        updated_at: now,
    };
    if let Some(s) = body.get("signing").and_then(Value::as_str) {
        sub.signing = s.to_string();
    }
    let errors = apply_fields(&state, &mut sub, &body, true).await;
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    if sub.verify {
        // Held (events queue up, the ping included) until the target echoes the worker's challenge.
        sub.status = "pending".into();
        sub.verification_due_at = Some(now_text());
    }
    if sub.secret.is_empty() {
        if sub.signing == "ed25519" {
            let key = Ed25519SigningKey::generate();
            sub.public_key = Some(key.public_key().to_string());
            sub.secret = key.expose();
        } else {
            sub.secret = WebhookSecret::generate().expose();
        }
    }
    let data = json!({ "id": sub.id, "url": sub.url, "events": sub.events, "message": "hsda will send the events you subscribed to here" });
    let ping = synthetic_event(&state, "evt_ping", "webhook.ping".into(), "webhook".into(), sub.id.clone(), data);
    state.db.insert_subscription(&sub, &ping, &state.config.public_url()).await?;
    let secret = sub.secret.clone();
    let stored = state.db.subscription(&sub.id).await?.unwrap_or(sub);
    let location = state.location(&format!("/webhooks/{}", stored.id));
    Ok((StatusCode::CREATED, [(axum::http::header::LOCATION, location)], Json(output(&stored, Some(&secret))))
        .into_response())
}

/// An event that is sent but never written to the event log (pings, tests): sequence 0, a prefixed id.
fn synthetic_event(
    state: &AppState,
    id_prefix: &str,
    event_type: String,
    object: String,
    object_id: String,
    data: Value,
) -> Event {
    Event {
        id: format!("{id_prefix}_{}", uuid::Uuid::new_v4().simple()),
        sequence: 0,
        event_type,
        occurred_at: now_text(),
        object,
        object_id,
        origin: state.db.instance_id().to_string(),
        changed_inside_only: false,
        data,
        facets: Vec::new(),
    }
}

/// The last page number a list accepts, as on the directory's lists: the row offset it leads to,
/// `(page - 1) * per_page`, stays far inside the database's 64-bit signed range.
const MAX_PAGE: u64 = u32::MAX as u64;

fn page_params(params: &HashMap<String, String>) -> Result<(u64, u64), ApiError> {
    let page = match params.get("page") {
        None => 1,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::parameter("page", format!("must be an integer from 1 to {MAX_PAGE}")))?,
    };
    let per_page = match params.get("per_page") {
        None => 50,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::parameter("per_page", "must be an integer from 1 to 1000"))?,
    };
    Ok((page, per_page))
}

async fn list(State(state): State<AppState>, caller: Caller, Params(params): Params) -> Result<Json<Value>, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let (page, per_page) = page_params(&params)?;
    let tenant = (principal.scope != Scope::Admin).then_some(principal.tenant.as_str());
    let (total, subs) = state.db.subscriptions(tenant, page, per_page).await?;
    Ok(Json(page_envelope(total, page, per_page, subs.iter().map(|s| output(s, None)).collect())))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let sub = owned(&state, principal, &id).await?;
    let tag = subscription_etag(&sub);
    Ok(not_modified(&headers, &tag).unwrap_or_else(|| with_etag(StatusCode::OK, output(&sub, None), &tag)))
}

/// A subscription's ETag: a hash of its representation (GET's body), so it changes with anything shown,
/// the delivery counters included.
fn subscription_etag(sub: &Subscription) -> String {
    crate::hsds::document::etag(&output(sub, None))
}

/// Whether the request's `If-Match` (strong comparison) and `If-None-Match` (weak) let a change of `sub`
/// go ahead (RFC 9110 13.1.1-2); absent, they do.
fn preconditions_hold(headers: &HeaderMap, sub: &Subscription) -> bool {
    let listed = |name| {
        let lines: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::trim).collect();
        (!lines.is_empty()).then(|| lines.join(", "))
    };
    let tag = subscription_etag(sub);
    listed(header::IF_MATCH).is_none_or(|list| crate::hsds::document::etag_listed(&list, &tag, false))
        && !listed(header::IF_NONE_MATCH).is_some_and(|list| crate::hsds::document::etag_listed(&list, &tag, true))
}

/// A change of a subscription, made to a copy of it: the copy changed, or why it cannot be.
type Changed<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Subscription, ApiError>> + Send + 'a>>;

/// Locks that serialize this process's changes of one subscription (striped: a subscription id picks one).
static CHANGE_LOCKS: [tokio::sync::Mutex<()>; 64] = [const { tokio::sync::Mutex::const_new(()) }; 64];

fn stripe_of(id: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id) as usize % CHANGE_LOCKS.len()
}

/// How many times a change is made again when an owner's other change came in between.
const CHANGE_TRIES: usize = 5;

/// Makes `change` to subscription `id` as it stands, within the request's preconditions: read, changed,
/// written only if no other change came in between (else made again on what that one left), so that
/// concurrent changes each apply, none lost. Returns the subscription before and after.
async fn change_subscription<'a>(
    state: &AppState,
    principal: &Principal,
    id: &str,
    headers: &HeaderMap,
    status_edited: bool,
    mut change: impl FnMut(Subscription) -> Changed<'a>,
) -> Result<(Subscription, Subscription), ApiError> {
    // One change of a subscription at a time in this process (most come through one); the check in the
    // store's transaction covers changes made through other processes, which are then made again.
    let _one_at_a_time = CHANGE_LOCKS[stripe_of(id)].lock().await;
    for _ in 0..CHANGE_TRIES {
        let before = owned(state, principal, id).await?;
        if !preconditions_hold(headers, &before) {
            return Err(ApiError::PreconditionFailed);
        }
        let after = change(before.clone()).await?;
        // A status sent back as it was is no edit of it: the counters and times the attempt recorder keeps
        // beside it are left to the recorder (written from this copy, a failure recorded meanwhile would be
        // lost). One that changes it is written only over the status it was read with.
        let status_edited = status_edited && after.status != before.status;
        let unchanged = |stored: &Subscription| {
            stored.same_settings(&before)
                && (!status_edited || stored.status == before.status)
                && preconditions_hold(headers, stored)
        };
        if state.db.update_subscription(&after, status_edited, &state.config.public_url(), unchanged).await? {
            return Ok((before, after));
        }
    }
    Err(conflict("the subscription kept changing while this change was being made: try again"))
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let patch = body_object(body)?;
    let edits_status = patch.contains_key("status");
    let (before, sub) = change_subscription(&state, principal, &id, &headers, edits_status, |mut sub| {
        let (state, patch) = (&state, &patch);
        Box::pin(async move {
            let mut body = patch.clone();
            as_merge_patch(&sub, &mut body);
            let errors = apply_fields(state, &mut sub, &body, false).await;
            if errors.is_empty() { Ok(sub) } else { Err(ApiError::Invalid(errors)) }
        })
    })
    .await?;
    if sub.verify && sub.url != before.url && sub.status != "disabled" {
        // Intent verification is of a URL: a new one must prove it wants the events too.
        state.db.request_verification(&sub.id).await?;
    }
    let now = owned(&state, principal, &id).await?;
    Ok(with_etag(StatusCode::OK, output(&now, None), &subscription_etag(&now)))
}

/// Reads a PATCH body as the JSON merge patch (RFC 7386) it is declared to be: an object field (`filter`,
/// `headers`, `metadata`) merges into the current one, a member set to `null` removing it, and `null` for the
/// whole field (or for `description`) clears it.
fn as_merge_patch(sub: &Subscription, body: &mut Map<String, Value>) {
    let current = [
        ("filter", Value::Object(sub.filter.clone())),
        ("headers", Value::Object(sub.headers.clone())),
        ("metadata", sub.metadata.clone()),
    ];
    for (key, mut merged) in current {
        match body.get(key) {
            Some(patch @ Value::Object(members)) => {
                if !merged.is_object() {
                    merged = json!({});
                }
                // Header names are case-insensitive: `x-a` replaces (or, null, removes) a current `X-A`.
                if let (Some(current), "headers") = (merged.as_object_mut(), key) {
                    current.retain(|name, _| {
                        !members.keys().any(|given| given != name && given.eq_ignore_ascii_case(name))
                    });
                }
                crate::hsds::merge_patch::merge_patch(&mut merged, patch);
                body.insert(key.into(), merged);
            }
            Some(Value::Null) => drop(body.insert(key.into(), json!({}))),
            _ => {}
        }
    }
    if body.get("description").is_some_and(Value::is_null) {
        body.insert("description".into(), Value::String(String::new()));
    }
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let sub = owned(&state, principal, &id).await?;
    if !preconditions_hold(&headers, &sub) {
        return Err(ApiError::PreconditionFailed);
    }
    if !state.db.delete_subscription(&id, |stored| preconditions_hold(&headers, stored)).await? {
        // Gone meanwhile (404), or changed so that the precondition no longer holds.
        owned(&state, principal, &id).await?;
        return Err(ApiError::PreconditionFailed);
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let body = optional_json(&body)?;
    known_fields(&body, &["grace_seconds", "secret"])?;
    let grace = match body.get("grace_seconds") {
        None | Some(Value::Null) => 86_400,
        Some(v) => v
            .as_i64()
            .filter(|n| (0..=7 * 86_400).contains(n))
            .ok_or_else(|| ApiError::invalid("/grace_seconds", "must be an integer from 0 to 604800"))?,
    };
    // The new secret may be the caller's own (in the form creation takes), or is generated.
    let chosen = optional_text(&body, "secret")?;
    let (_, sub) = change_subscription(&state, principal, &id, &headers, false, |sub| {
        Box::pin(std::future::ready(rotated(sub, chosen, grace)))
    })
    .await?;
    let mut out = output(&sub, Some(&sub.secret));
    // A grace of 0 s ends at once; the answer still says when.
    out["previous_secret_expires_at"] = json!(sub.previous_secret_until);
    Ok(Json(out))
}

/// `sub` with a new secret (`chosen`, or generated), the current one still signing for `grace` seconds.
fn rotated(mut sub: Subscription, chosen: Option<&str>, grace: i64) -> Result<Subscription, ApiError> {
    // Both keys sign until the grace period ends (`v1a,` signatures by the old and the new private key), so
    // receivers can switch to the new public key whenever they like within it.
    let new_secret = if sub.signing == "ed25519" {
        let key = match chosen {
            Some(s) => Ed25519SigningKey::parse(s).map_err(|e| ApiError::invalid("/secret", e.to_string()))?,
            None => Ed25519SigningKey::generate(),
        };
        sub.public_key = Some(key.public_key().to_string());
        key.expose()
    } else {
        match chosen {
            Some(s) => WebhookSecret::parse(s).map_err(|e| ApiError::invalid("/secret", e.to_string()))?,
            None => WebhookSecret::generate(),
        }
        .expose()
    };
    let until = chrono::Utc::now() + chrono::Duration::seconds(grace);
    sub.previous_secret = Some(std::mem::replace(&mut sub.secret, new_secret));
    sub.previous_secret_until = Some(crate::store::timestamp_text(until));
    Ok(sub)
}

async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let sub = owned(&state, principal, &id).await?;
    known_fields(&body, &["since", "until", "only_failed"])?;
    if sub.status == "disabled" {
        return Err(disabled_conflict());
    }
    // Every field's problem at once. `since` is required: a replay of everything ever sent is rarely meant,
    // and `enable` with `replay_missed` covers a disabled subscription's gap.
    let mut errors = Vec::new();
    let mut time = |name: &str, required: bool| match body.get(name) {
        None | Some(Value::Null) if required => {
            errors.push(FieldError::new(format!("/{name}"), "is required"));
            None
        }
        None | Some(Value::Null) => None,
        Some(value) => {
            let parsed = value.as_str().and_then(|s| parse_timestamp(name, s).ok());
            if parsed.is_none() {
                errors.push(FieldError::new(format!("/{name}"), "must be an RFC 3339 date-time"));
            }
            parsed
        }
    };
    let (since, until) = (time("since", true), time("until", false));
    let only_failed = match flag(&body, "only_failed") {
        Ok(only_failed) => Some(only_failed),
        Err(_) => {
            errors.push(FieldError::new("/only_failed", "must be true or false"));
            None
        }
    };
    let (Some(since), Some(only_failed)) = (since, only_failed) else { return Err(ApiError::Invalid(errors)) };
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    match until {
        Some(until) if until < since => return Err(ApiError::invalid("/until", "must not be before since")),
        // The end defaults to now: a start after it is the field to fix.
        None if since > now_text() => return Err(ApiError::invalid("/since", "must not be in the future")),
        _ => {}
    }
    let until = until.unwrap_or_else(now_text);
    let requeued = state.db.replay(&sub.id, &since, &until, only_failed).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "requeued": requeued }))).into_response())
}

async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let body = optional_json(&body)?;
    known_fields(&body, &["replay_missed"])?;
    let replay_missed = flag(&body, "replay_missed")?;
    let (before, sub) =
        change_subscription(&state, principal, &id, &headers, true, |sub| Box::pin(std::future::ready(enabled(sub))))
            .await?;
    if awaiting_verification(&sub) {
        state.db.request_verification(&sub.id).await?;
    }
    let mut replayed = 0usize;
    if replay_missed && let Some(since) = &before.disabled_at {
        replayed = state.db.queue_missed(&sub, since, &state.config.public_url()).await?;
    }
    let mut out = output(&owned(&state, principal, &id).await?, None);
    out["replayed"] = json!(replayed);
    Ok(Json(out))
}

/// `sub` enabled: active, its failure streak forgotten; `pending` if its target has not echoed a challenge
/// (its URL changed while disabled): nothing is sent to it before.
fn enabled(mut sub: Subscription) -> Result<Subscription, ApiError> {
    if sub.status == "pending" {
        return Err(conflict("this subscription is awaiting verification: POST /webhooks/{id}/verify"));
    }
    sub.consecutive_failures = 0;
    sub.failing_since = None;
    sub.disabled_reason = None;
    sub.status = if awaiting_verification(&sub) { "pending" } else { "active" }.into();
    Ok(sub)
}

fn conflict(message: &str) -> ApiError {
    ApiError::Conflict { message: message.to_string(), referenced_by: Vec::new() }
}

/// A retry or replay for a disabled subscription: nothing would send it.
fn disabled_conflict() -> ApiError {
    conflict(
        "the subscription is disabled: enable it first (POST /webhooks/{id}/enable, with replay_missed to send \
         what it missed)",
    )
}

/// Sends a `pending` subscription's verification challenge now and answers with the subscription and the
/// outcome (`verification.success`, `verification.error`); on success it is `active` and held events flow.
async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let sub = owned(&state, principal, &id).await?;
    if sub.status != "pending" {
        return Err(conflict(&format!(
            "only a pending subscription (created with verify: true, not yet verified) can be verified; this one is {}",
            sub.status
        )));
    }
    let outcome = crate::webhook::worker::verify(&state.db, &state.webhook_client, &sub).await?;
    let mut out = output(&owned(&state, principal, &id).await?, None);
    out["verification"] = json!({ "success": outcome.is_ok(), "error": outcome.err() });
    Ok(Json(out))
}

async fn test(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let sub = owned(&state, principal, &id).await?;
    if sub.status == "pending" {
        // Nothing but the challenge goes to a target that has not agreed to receive events.
        return Err(conflict("this subscription is awaiting verification: POST /webhooks/{id}/verify"));
    }
    if sub.status == "disabled" {
        // Nothing is sent to a disabled subscription, a test neither (a 410 may have asked for exactly that).
        return Err(disabled_conflict());
    }
    let body = optional_json(&body)?;
    known_fields(&body, &["event_type", "object_id"])?;
    let event_type = optional_text(&body, "event_type")?.unwrap_or("webhook.ping").to_string();
    if !(OPERATIONAL.contains(&event_type.as_str()) || crate::events::event_types().contains(&event_type)) {
        let detail = if matches!(event_type.as_str(), "webhook.digest" | "webhook.verification") {
            "cannot be tested: digests and verification challenges are sent on their own schedule"
        } else if event_type.contains('*') {
            "must be one event type, not a pattern"
        } else {
            "is not a known event type"
        };
        return Err(ApiError::invalid("/event_type", detail));
    }
    let object = event_type.split('.').next().unwrap_or_default().to_string();
    let (object_id, data) = match optional_text(&body, "object_id")? {
        Some(object_id) => {
            let object_id = &*crate::hsds::validate::canonical_id(object_id);
            let table = crate::hsds::catalog::table(&object)
                .ok_or_else(|| ApiError::invalid("/object_id", "this event type has no HSDS object"))?;
            let data = state
                .db
                .get(table, object_id)
                .await?
                .ok_or_else(|| ApiError::invalid("/object_id", format!("no {object} has this id")))?;
            // A delete sends what a real one does: the tombstone (the object must exist to be named, though).
            let data =
                if event_type.ends_with(".deleted") { json!({ "id": object_id, "deleted": true }) } else { data };
            (object_id.to_string(), data)
        }
        // A ping is about the subscription itself, as the one sent at creation is.
        None if object == "webhook" => (
            sub.id.clone(),
            json!({ "id": sub.id, "url": sub.url, "events": sub.events, "message": "a test of this subscription", "sample": true }),
        ),
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            let table = crate::hsds::catalog::table(&object)
                .ok_or_else(|| ApiError::invalid("/event_type", "this event type has no HSDS object"))?;
            let action = event_type.rsplit('.').next().unwrap_or_default();
            (id.clone(), crate::events::sample_object(table, action, &id, &crate::store::now_text()))
        }
    };
    let event = synthetic_event(&state, "evt_test", event_type, object, object_id, data);
    let payload = crate::store::webhooks::delivery_body(&event, &sub.payload, &state.config.public_url());
    let message_id = format!("msg_test_{}", uuid::Uuid::new_v4().simple());
    let r = crate::webhook::worker::send(&state.webhook_client, &sub, &message_id, &payload).await;
    Ok(Json(json!({
        "webhook_id": message_id,
        "status_code": r.status_code,
        "response_body": r.body_excerpt,
        "duration_ms": r.duration.as_millis() as u64,
        "error": r.error,
        "error_class": r.error_class,
        "success": r.status_code.is_some_and(|c| (200..300).contains(&c)),
    })))
}

async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Params(params): Params,
) -> Result<Json<Value>, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let sub = owned(&state, principal, &id).await?;
    let (page, per_page) = page_params(&params)?;
    let status = params.get("status").cloned();
    if let Some(s) = &status
        && !["pending", "succeeded", "failed", "retrying"].contains(&s.as_str())
    {
        return Err(ApiError::parameter("status", "must be pending, succeeded, failed or retrying"));
    }
    let event_type = params.get("event_type").cloned();
    if let Some(t) = &event_type
        && !crate::events::is_known_pattern(t)
        && !crate::events::SYSTEM_MESSAGES.iter().any(|(name, _)| name == t)
    {
        // As `GET /events?types=` does: a typo would otherwise look like a subscription with no deliveries.
        return Err(ApiError::parameter("event_type", format!("{t} is not a known event type or pattern")));
    }
    let time = |name: &str| params.get(name).map(|v| parse_timestamp(name, v)).transpose();
    let q = DeliveryQuery {
        status,
        event_type,
        object_id: params.get("object_id").map(|id| crate::hsds::validate::canonical_id(id).into_owned()),
        since: time("since")?,
        until: time("until")?,
    };
    if let (Some(since), Some(until)) = (&q.since, &q.until)
        && until < since
    {
        return Err(ApiError::parameter("until", "must not be before since"));
    }
    let (total, rows) = state.db.deliveries(&sub.id, &q, page, per_page).await?;
    let contents = rows.iter().map(|d| serde_json::to_value(d).unwrap_or(Value::Null)).collect();
    Ok(Json(page_envelope(total, page, per_page, contents)))
}

async fn delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let (d, attempts) =
        state.db.delivery_with_attempts(&id).await?.ok_or_else(|| ApiError::NotFound(format!("delivery {id}")))?;
    if principal.scope != Scope::Admin && d.tenant != principal.tenant {
        return Err(ApiError::NotFound(format!("delivery {id}")));
    }
    let mut out = serde_json::to_value(&d).map_err(anyhow::Error::from)?;
    out["payload"] = serde_json::from_str(&d.body).unwrap_or(Value::Null);
    out["attempt_count"] = json!(d.attempts);
    out["attempts"] = serde_json::to_value(attempts).map_err(anyhow::Error::from)?;
    Ok(Json(out))
}

async fn retry(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let principal = caller.require(&[Scope::Subscribe])?;
    let d = state.db.delivery(&id).await?.ok_or_else(|| ApiError::NotFound(format!("delivery {id}")))?;
    if principal.scope != Scope::Admin && d.tenant != principal.tenant {
        return Err(ApiError::NotFound(format!("delivery {id}")));
    }
    if !state.db.retry_now(&id).await? {
        return Err(disabled_conflict());
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "status": "retrying" }))).into_response())
}
