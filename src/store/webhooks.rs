//! Webhook tables: subscriptions, deliveries (one per subscription and event, the durable work queue) and
//! the attempt log. Deliveries are created by the dispatcher in the same transaction that advances its
//! cursor over the event log, and claimed by delivery workers with a lease (and `FOR UPDATE SKIP LOCKED`
//! on PostgreSQL), so a crash at any point loses nothing and several processes share the work.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value, json};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::events::{Event, NewEvent};
use super::sql::{Arg, Conn};
use super::{Backend, Db, now_text, timestamp_text};

/// A subscription as stored. Its `Debug` form leaves out the signing secrets and the custom headers (which
/// may carry the target's credentials), so that logging one by accident leaks neither.
#[derive(Clone, Serialize)]
pub struct Subscription {
    pub id: String,
    /// Whose it is: an admin key lists every tenant's.
    pub tenant: String,
    pub url: String,
    pub events: Vec<String>,
    pub payload: String,
    pub filter: Map<String, Value>,
    pub schedule: Option<String>,
    pub description: String,
    #[serde(skip)]
    pub secret: String,
    #[serde(skip)]
    pub previous_secret: Option<String>,
    #[serde(skip)]
    pub previous_secret_until: Option<String>,
    pub signing: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub max_concurrency: i64,
    pub rate_limit_per_second: Option<i64>,
    pub ordered: bool,
    pub headers: Map<String, Value>,
    pub metadata: Value,
    pub verify: bool,
    /// Made with an admin key: hears every tenant's operational events (`webhook.failing` ...), not only its own.
    pub all_tenants: bool,
    pub status: String,
    pub disabled_reason: Option<String>,
    pub last_success_at: Option<String>,
    pub last_failure_at: Option<String>,
    pub consecutive_failures: i64,
    #[serde(skip)]
    pub failing_since: Option<String>,
    #[serde(skip)]
    pub disabled_at: Option<String>,
    #[serde(skip)]
    pub start_sequence: i64,
    /// When a digest subscription next fires.
    pub next_digest_at: Option<String>,
    /// The last event sequence a digest has covered.
    #[serde(skip)]
    pub digest_after_sequence: i64,
    /// Where the next digest's window starts (the previous digest's `until`, or the creation time).
    #[serde(skip)]
    pub digest_since: Option<String>,
    /// When a `pending` subscription is next sent a verification challenge.
    #[serde(skip)]
    pub verification_due_at: Option<String>,
    /// Why the last verification failed (null once verified).
    pub verification_error: Option<String>,
    pub verified_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("signing", &self.signing)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

fn json_text(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

impl Subscription {
    /// Whether deliveries are sent to it now (not while `pending` verification or `disabled`).
    pub fn receives_deliveries(&self) -> bool {
        self.status == "active" || self.status == "failing"
    }

    /// Whether the two agree on everything an owner's change writes (its status aside, which such a change
    /// sets only when it means to): a change made to one of them, written over the other, loses nothing.
    pub fn same_settings(&self, other: &Subscription) -> bool {
        // Every field is named, so that a new one must be placed on one side or the other to compile.
        let Subscription {
            id: _,
            tenant: _,
            url,
            events,
            payload,
            filter,
            schedule,
            description,
            secret,
            previous_secret,
            previous_secret_until,
            signing,
            public_key,
            max_concurrency,
            rate_limit_per_second,
            ordered,
            headers,
            metadata,
            verify,
            // Set at creation only; the rest is the delivery state and bookkeeping, not settings.
            all_tenants: _,
            status: _,
            disabled_reason: _,
            last_success_at: _,
            last_failure_at: _,
            consecutive_failures: _,
            failing_since: _,
            disabled_at: _,
            start_sequence: _,
            next_digest_at: _,
            digest_after_sequence: _,
            digest_since: _,
            verification_due_at: _,
            verification_error: _,
            verified_at: _,
            created_at: _,
            updated_at: _,
        } = self;
        (url, events, payload, filter, schedule, description)
            == (&other.url, &other.events, &other.payload, &other.filter, &other.schedule, &other.description)
            && (secret, previous_secret, previous_secret_until, signing, public_key)
                == (
                    &other.secret,
                    &other.previous_secret,
                    &other.previous_secret_until,
                    &other.signing,
                    &other.public_key,
                )
            && (*max_concurrency, *rate_limit_per_second, *ordered, *verify)
                == (other.max_concurrency, other.rate_limit_per_second, other.ordered, other.verify)
            && (headers, metadata) == (&other.headers, &other.metadata)
    }
}

fn from_row(row: &AnyRow) -> sqlx::Result<Subscription> {
    let parse = |s: String| serde_json::from_str::<Value>(&s).unwrap_or(Value::Null);
    Ok(Subscription {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        url: row.try_get("url")?,
        events: serde_json::from_str(&row.try_get::<String, _>("events")?).unwrap_or_default(),
        payload: row.try_get("payload")?,
        filter: parse(row.try_get("filter")?).as_object().cloned().unwrap_or_default(),
        schedule: row.try_get("schedule")?,
        description: row.try_get("description")?,
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_secret_until: row.try_get("previous_secret_until")?,
        signing: row.try_get("signing")?,
        public_key: row.try_get("public_key")?,
        max_concurrency: row.try_get("max_concurrency")?,
        rate_limit_per_second: row.try_get("rate_limit_per_second")?,
        ordered: row.try_get::<i64, _>("ordered")? != 0,
        headers: parse(row.try_get("headers")?).as_object().cloned().unwrap_or_default(),
        metadata: parse(row.try_get("metadata")?),
        verify: row.try_get::<i64, _>("verify")? != 0,
        all_tenants: row.try_get::<i64, _>("all_tenants")? != 0,
        status: row.try_get("status")?,
        disabled_reason: row.try_get("disabled_reason")?,
        last_success_at: row.try_get("last_success_at")?,
        last_failure_at: row.try_get("last_failure_at")?,
        consecutive_failures: row.try_get("consecutive_failures")?,
        failing_since: row.try_get("failing_since")?,
        disabled_at: row.try_get("disabled_at")?,
        start_sequence: row.try_get("start_sequence")?,
        next_digest_at: row.try_get("next_digest_at")?,
        digest_after_sequence: row.try_get("digest_after_sequence")?,
        digest_since: row.try_get("digest_since")?,
        verification_due_at: row.try_get("verification_due_at")?,
        verification_error: row.try_get("verification_error")?,
        verified_at: row.try_get("verified_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A delivery as listed and shown.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    pub id: String,
    pub subscription_id: String,
    #[serde(skip)]
    pub tenant: String,
    pub event_id: String,
    pub event_sequence: i64,
    pub event_type: String,
    pub object_id: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub body: String,
    /// Set on deliveries handed straight to the worker by the dispatcher (see [`Db::dispatch_batch`]).
    #[serde(skip)]
    pub lease_until: Option<String>,
    /// How many of `attempts` were asked for by hand (a retry or a replay): they do not count against the
    /// automatic schedule.
    #[serde(skip)]
    pub manual_attempts: i64,
    /// Whether the next attempt is one asked for by hand.
    #[serde(skip)]
    pub manual_due: bool,
}

impl Delivery {
    /// The place in the retry schedule of the attempt about to be made: the automatic attempts made so far,
    /// plus this one if it is automatic. An attempt asked for by hand takes no place of its own: should it
    /// fail, the schedule goes on where it stood.
    pub fn schedule_position(&self) -> u32 {
        let automatic = (self.attempts - self.manual_attempts).max(0);
        (automatic + i64::from(!self.manual_due)).try_into().unwrap_or(u32::MAX)
    }

    /// A sentinel (empty id) that tells the attempt recorder to finish.
    pub fn stop_marker() -> Delivery {
        Delivery::default()
    }
}

const DELIVERY_COLUMNS: &str = "id, subscription_id, tenant, event_id, event_sequence, event_type, object_id, status, \
     attempts, next_attempt_at, last_status_code, last_error, created_at, updated_at, body, lease_until, \
     manual_attempts, manual_due";

fn delivery_from_row(row: &AnyRow) -> sqlx::Result<Delivery> {
    let status: String = row.try_get("status")?;
    let next: String = row.try_get("next_attempt_at")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        subscription_id: row.try_get("subscription_id")?,
        tenant: row.try_get("tenant")?,
        event_id: row.try_get("event_id")?,
        event_sequence: row.try_get("event_sequence")?,
        event_type: row.try_get("event_type")?,
        object_id: row.try_get("object_id")?,
        next_attempt_at: matches!(status.as_str(), "pending" | "retrying").then_some(next),
        status,
        attempts: row.try_get("attempts")?,
        last_status_code: row.try_get("last_status_code")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        body: row.try_get("body")?,
        lease_until: row.try_get("lease_until")?,
        manual_attempts: row.try_get("manual_attempts")?,
        manual_due: row.try_get::<i64, _>("manual_due")? != 0,
    })
}

impl AttemptRecord {
    pub fn stop_marker() -> AttemptRecord {
        AttemptRecord {
            attempt: Attempt {
                at: String::new(),
                status_code: None,
                duration_ms: 0,
                error: None,
                error_class: None,
                response_body: None,
            },
            outcome: AttemptOutcome::Failed,
        }
    }
}

/// One recorded attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub at: String,
    pub status_code: Option<i64>,
    pub duration_ms: i64,
    pub error: Option<String>,
    pub error_class: Option<String>,
    pub response_body: Option<String>,
}

/// What happened when a delivery was attempted, and what to do next.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: Attempt,
    pub outcome: AttemptOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    Succeeded,
    /// Try again at this time. With `held_until`, the process that made the attempt keeps the delivery's
    /// lease until then and sends the retry itself (see `webhook::worker`), so no claim is needed for it.
    Retry {
        at: String,
        held_until: Option<String>,
    },
    /// Give up (schedule exhausted).
    Failed,
    /// The target answered 410 Gone: give up and disable the subscription.
    Gone,
}

/// Filters of the delivery history.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    pub status: Option<String>,
    pub event_type: Option<String>,
    pub object_id: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// The wire body of a delivery of `event` for a subscription wanting `payload` (`full` or `thin`).
pub fn delivery_body(event: &Event, payload: &str, public_url: &str) -> String {
    delivery_value(event, payload, public_url).to_string()
}

/// The wire body of a full payload: a function of the event alone (see [`BODY_IN_EVENT`]).
fn full_body(event: &Event) -> String {
    delivery_body(event, "full", "")
}

/// [`delivery_body`] as a JSON value (digests embed it).
pub fn delivery_value(event: &Event, payload: &str, public_url: &str) -> Value {
    let data = if payload == "thin" {
        // Operational events are about a subscription, at `/webhooks/{id}`.
        let plural = match crate::hsds::catalog::table(&event.object) {
            Some(t) => t.plural,
            None if event.object == "webhook" => "webhooks",
            None => event.object.as_str(),
        };
        json!({
            "object": event.object,
            "id": event.object_id,
            "url": format!("{public_url}/{plural}/{}", event.object_id),
            "last_modified": event.occurred_at,
        })
    } else {
        event.data.clone()
    };
    json!({
        "id": event.id,
        "sequence": event.sequence,
        "type": event.event_type,
        "timestamp": event.occurred_at,
        "data": data,
    })
}

/// Whether a subscription wants an event: its type matches a pattern, every filter matches a facet, and
/// operational `webhook.*` events only go to their own tenant.
pub fn wants(sub: &Subscription, event: &Event) -> bool {
    if event.sequence <= sub.start_sequence {
        return false;
    }
    let type_ok = sub.events.iter().any(|p| {
        p == "*"
            || p == &event.event_type
            || p.strip_suffix(".*").is_some_and(|t| event.event_type.split('.').next() == Some(t))
    });
    if !type_ok {
        return false;
    }
    if event.event_type.starts_with("webhook.")
        && !sub.all_tenants
        && !event.facets.iter().any(|(k, v)| k == "tenant" && *v == sub.tenant)
    {
        return false;
    }
    sub.filter.iter().all(|(key, value)| {
        let Some(value) = value.as_str() else { return true };
        event.facets.iter().any(|(k, v)| k == key && v == value)
    })
}

/// Every subscription as last read from the store, shared by the worker's hot paths (one query per change
/// instead of several per delivery). On SQLite this process makes every change, each of which bumps the
/// generation, so the snapshot is exact. On PostgreSQL other processes change them too: a snapshot carries the
/// store's subscriptions version it was read at (migration 12), and a dispatcher that finds the version
/// unchanged uses it without reading the subscriptions again; the worker's own use sees other processes'
/// changes within [`SNAPSHOT_MAX_AGE`] (then one row tells whether anything changed).
#[derive(Default)]
pub struct SubscriptionCache {
    generation: AtomicU64,
    snapshot: std::sync::Mutex<Option<Snapshot>>,
}

impl std::fmt::Debug for SubscriptionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionCache").field("generation", &self.generation).finish_non_exhaustive()
    }
}

/// What the cache keeps: every subscription by id, and when and at which versions it was read.
struct Snapshot {
    /// This process's [`SubscriptionCache::generation`] when read.
    generation: u64,
    /// When read, or last found current (PostgreSQL).
    checked: Instant,
    /// The same, as a store timestamp (compared with deliveries' creation times).
    read_at: String,
    /// The store's subscriptions version it shows (PostgreSQL only).
    version: Option<i64>,
    subscriptions: Arc<HashMap<String, Subscription>>,
}

impl SubscriptionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `subscriptions`, read at `read_at` while the generation was `generation`, unless a change of this
    /// process came since (it would hide that change) or a later read is kept already.
    fn offer(
        &self,
        generation: u64,
        read_at: String,
        version: Option<i64>,
        subscriptions: Arc<HashMap<String, Subscription>>,
    ) {
        let mut kept = self.lock();
        let newer = kept.as_ref().is_none_or(|k| k.generation != generation || k.read_at <= read_at);
        if self.generation.load(Ordering::Acquire) == generation && newer {
            *kept = Some(Snapshot { generation, checked: Instant::now(), read_at, version, subscriptions });
        }
    }

    /// The kept snapshot if it shows the store's subscriptions at `version`, which was read after `read_at`
    /// while the generation was `generation`; it then counts as read then. Every change the pipeline sees bumps
    /// the version in its own transaction (this process's ones before they bump the generation), so an equal
    /// version means nothing changed since the snapshot was read.
    fn at_version(&self, generation: u64, version: i64, read_at: &str) -> Option<Arc<HashMap<String, Subscription>>> {
        let mut kept = self.lock();
        let snapshot = kept.as_mut().filter(|k| k.version == Some(version))?;
        if self.generation.load(Ordering::Acquire) == generation {
            snapshot.generation = generation;
        }
        snapshot.checked = Instant::now();
        if snapshot.read_at.as_str() < read_at {
            snapshot.read_at = read_at.to_string();
        }
        Some(snapshot.subscriptions.clone())
    }
}

fn subscriptions_of(rows: &[sqlx::any::AnyRow]) -> sqlx::Result<HashMap<String, Subscription>> {
    rows.iter().map(from_row).map(|s| s.map(|s| (s.id.clone(), s))).collect()
}

const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(1);

/// PostgreSQL: the subscriptions' version (migration 12).
const SUBSCRIPTIONS_VERSION: &str = "SELECT value FROM counters WHERE name = 'subscriptions_version'";

/// PostgreSQL: every subscription and the version they are at, read in one statement (one snapshot).
async fn versioned_subscriptions<'c>(
    conn: impl sqlx::Executor<'c, Database = sqlx::Any>,
) -> sqlx::Result<(i64, HashMap<String, Subscription>)> {
    let rows = sqlx::query(
        "SELECT v.value AS subscriptions_version, s.* FROM counters v LEFT JOIN subscriptions s ON TRUE \
         WHERE v.name = 'subscriptions_version'",
    )
    .fetch_all(conn)
    .await?;
    let version = match rows.first() {
        Some(row) => row.try_get("subscriptions_version")?,
        None => return Err(sqlx::Error::RowNotFound),
    };
    // No subscription at all: one row, the version's, with every subscription column NULL.
    let subscriptions = rows.iter().filter(|row| row.try_get::<Option<String>, _>("id").is_ok_and(|id| id.is_some()));
    Ok((version, subscriptions.map(from_row).map(|s| s.map(|s| (s.id.clone(), s))).collect::<sqlx::Result<_>>()?))
}

/// PostgreSQL: the subscriptions as committed now, from `cache` when its snapshot is at the store's version
/// (one row read), else read again and offered to it. `read_at` is a time before this call.
async fn current_subscriptions(
    cache: &SubscriptionCache,
    conn: &mut sqlx::AnyConnection,
    read_at: &str,
) -> sqlx::Result<Arc<HashMap<String, Subscription>>> {
    let generation = cache.generation.load(Ordering::Acquire);
    let version: i64 = sqlx::query_scalar(SUBSCRIPTIONS_VERSION).fetch_one(&mut *conn).await?;
    if let Some(snapshot) = cache.at_version(generation, version, read_at) {
        return Ok(snapshot);
    }
    let (version, subscriptions) = versioned_subscriptions(&mut *conn).await?;
    let snapshot = Arc::new(subscriptions);
    cache.offer(generation, read_at.to_string(), Some(version), snapshot.clone());
    Ok(snapshot)
}

impl Db {
    /// Every subscription, keyed by id, from the cache when it is current.
    pub async fn subscription_snapshot(&self) -> sqlx::Result<Arc<HashMap<String, Subscription>>> {
        let cache = &self.subscription_cache;
        // Read before the query: a change committed meanwhile bumps it, and the next call reloads.
        let generation = cache.generation.load(Ordering::Acquire);
        if let Some(kept) = cache.lock().as_ref()
            && kept.generation == generation
            && (self.backend == Backend::Sqlite || kept.checked.elapsed() < SNAPSHOT_MAX_AGE)
        {
            return Ok(kept.subscriptions.clone());
        }
        let read_at = now_text();
        if self.backend == Backend::Sqlite {
            let rows = sqlx::query("SELECT * FROM subscriptions").fetch_all(&self.pool).await?;
            let snapshot = Arc::new(subscriptions_of(&rows)?);
            cache.offer(generation, read_at, None, snapshot.clone());
            return Ok(snapshot);
        }
        // Aged, or this process changed one: one row tells whether to read them all.
        current_subscriptions(cache, &mut *self.pool.acquire().await?, &read_at).await
    }

    /// PostgreSQL: whether the cached snapshot was read before `created_at` (a delivery's creation). Another
    /// process may have changed a subscription (its secret, its URL) and answered its owner before that
    /// delivery was created; a delivery must not go out as the subscription was before such a change.
    /// (Within one process every change makes the next snapshot read the store.)
    pub(crate) fn subscription_snapshot_predates(&self, created_at: &str) -> bool {
        if self.backend != Backend::Postgres {
            return false;
        }
        match self.subscription_cache.lock().as_ref() {
            Some(kept) => kept.read_at.as_str() < created_at,
            None => true,
        }
    }

    /// Makes the next [`Db::subscription_snapshot`] read the store.
    pub fn forget_subscription_snapshot(&self) {
        self.subscriptions_changed();
    }

    /// Called after every committed change of a subscription row.
    fn subscriptions_changed(&self) {
        self.subscription_cache.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl Db {
    /// Stores a new subscription and, in the same transaction, the delivery of its `ping` (a crash leaves
    /// both or neither).
    pub async fn insert_subscription(&self, s: &Subscription, ping: &Event, public_url: &str) -> sqlx::Result<()> {
        let (mut tx, _guard) = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO subscriptions (id, tenant, url, events, payload, filter, schedule, description, secret, \
             signing, public_key, max_concurrency, rate_limit_per_second, ordered, headers, metadata, verify, status, \
             start_sequence, created_at, updated_at, next_digest_at, digest_after_sequence, digest_since, \
             verification_due_at, all_tenants) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
             (SELECT COALESCE(MAX(sequence), 0) FROM events), $19, $20, $21, \
             (SELECT COALESCE(MAX(sequence), 0) FROM events), $19, $22, $23)",
        )
        .bind(&s.id)
        .bind(&s.tenant)
        .bind(&s.url)
        .bind(json_text(&s.events))
        .bind(&s.payload)
        .bind(json_text(&s.filter))
        .bind(&s.schedule)
        .bind(&s.description)
        .bind(&s.secret)
        .bind(&s.signing)
        .bind(&s.public_key)
        .bind(s.max_concurrency)
        .bind(s.rate_limit_per_second)
        .bind(s.ordered as i64)
        .bind(json_text(&s.headers))
        .bind(json_text(&s.metadata))
        .bind(s.verify as i64)
        .bind(&s.status)
        .bind(&s.created_at)
        .bind(&s.updated_at)
        .bind(&s.next_digest_at)
        .bind(&s.verification_due_at)
        .bind(s.all_tenants as i64)
        .execute(&mut *tx)
        .await?;
        let body = delivery_body(ping, &s.payload, public_url);
        insert_delivery(&mut tx, s, ping, &body, &now_text()).await?;
        tx.commit().await?;
        self.subscriptions_changed();
        self.notify_changed();
        Ok(())
    }

    /// Saves the owner-editable fields and secrets of a subscription, and its status with `status_edited`
    /// (the owner disabled or enabled it). Otherwise the status, its reason and the failure counters stay as
    /// stored now: attempts recorded since `s` was read keep their effect. A change of `schedule` moves
    /// the subscription between the dispatcher and the digest builder without losing or repeating events:
    /// it takes the dispatch cursor's lock, so no dispatch runs in between; events the digest had not yet
    /// covered when it turns immediate are queued as individual deliveries.
    ///
    /// The change is made only if the subscription as stored, read in its transaction, passes `unchanged`
    /// (the caller's check that it is the one it changed, and its precondition): false if it did not, or if
    /// it is gone; nothing is written then.
    pub async fn update_subscription(
        &self,
        s: &Subscription,
        status_edited: bool,
        public_url: &str,
        unchanged: impl Fn(&Subscription) -> bool,
    ) -> sqlx::Result<bool> {
        let (mut tx, _guard) = self.begin_write().await?;
        let cursor: i64 =
            sqlx::query_scalar("UPDATE counters SET value = value WHERE name = 'dispatch_cursor' RETURNING value")
                .fetch_one(&mut *tx)
                .await?;
        let before =
            sqlx::query("SELECT * FROM subscriptions WHERE id = $1").bind(&s.id).fetch_optional(&mut *tx).await?;
        let Some(before) = before.as_ref().map(from_row).transpose()? else { return Ok(false) };
        if !unchanged(&before) {
            return Ok(false);
        }
        let (next_digest_at, after, since) = match (&before.schedule, &s.schedule) {
            (None, Some(_)) => (s.next_digest_at.clone(), cursor, Some(now_text())),
            (Some(old), Some(new)) if old != new => {
                (s.next_digest_at.clone(), before.digest_after_sequence, before.digest_since.clone())
            }
            // Immediate (again): no digest is due any more.
            (_, None) => (None, before.digest_after_sequence, before.digest_since.clone()),
            _ => (before.next_digest_at.clone(), before.digest_after_sequence, before.digest_since.clone()),
        };
        if before.schedule.is_some() && s.schedule.is_none() && before.digest_after_sequence < cursor {
            let rows = sqlx::query(
                "SELECT sequence, id, type, object, object_id, occurred_at, origin, data, facets, changed_inside_only FROM events \
                 WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence",
            )
            .bind(before.digest_after_sequence)
            .bind(cursor)
            .fetch_all(&mut *tx)
            .await?;
            let now = now_text();
            for row in &rows {
                let event = super::events::event_from_any_row(row)?;
                if wants(s, &event) {
                    let body = delivery_body(&event, &s.payload, public_url);
                    insert_delivery(&mut tx, s, &event, &body, &now).await?;
                }
            }
        }
        sqlx::query(
            "UPDATE subscriptions SET next_digest_at = $1, digest_after_sequence = $2, digest_since = $3 WHERE id = $4",
        )
        .bind(&next_digest_at)
        .bind(after)
        .bind(&since)
        .bind(&s.id)
        .execute(&mut *tx)
        .await?;
        // An owner's status never skips verification: a subscription waiting for its target's echo stays
        // `pending` (the owner's copy may predate a URL change that asked for it).
        let status = if status_edited && before.status != "pending" { s } else { &before };
        // A verified target is a verified URL: a new one must echo a challenge before anything is sent to it,
        // whatever the status now (a disabled subscription is asked when it is enabled).
        let url_changed = s.url != before.url;
        // ... and nothing goes to it meanwhile: held `pending` in this same transaction.
        let status_text =
            if url_changed && s.verify && status.status != "disabled" { "pending" } else { status.status.as_str() };
        sqlx::query(
            "UPDATE subscriptions SET url = $1, events = $2, payload = $3, filter = $4, schedule = $5, description = $6, \
             secret = $7, previous_secret = $8, previous_secret_until = $9, max_concurrency = $10, \
             rate_limit_per_second = $11, ordered = $12, headers = $13, metadata = $14, status = $15, \
             disabled_reason = $16, consecutive_failures = $17, failing_since = $18, updated_at = $19, \
             disabled_at = $21, verified_at = CASE WHEN $22 THEN NULL ELSE verified_at END, public_key = $23 \
             WHERE id = $20",
        )
        .bind(&s.url)
        .bind(json_text(&s.events))
        .bind(&s.payload)
        .bind(json_text(&s.filter))
        .bind(&s.schedule)
        .bind(&s.description)
        .bind(&s.secret)
        .bind(&s.previous_secret)
        .bind(&s.previous_secret_until)
        .bind(s.max_concurrency)
        .bind(s.rate_limit_per_second)
        .bind(s.ordered as i64)
        .bind(json_text(&s.headers))
        .bind(json_text(&s.metadata))
        .bind(status_text)
        .bind(&status.disabled_reason)
        .bind(status.consecutive_failures)
        .bind(&status.failing_since)
        .bind(now_text())
        .bind(&s.id)
        // When the subscription stopped receiving events: kept while disabled, for `enable` to replay from.
        .bind(match (before.status.as_str(), status_text) {
            ("disabled", "disabled") => before.disabled_at.clone(),
            (_, "disabled") => Some(now_text()),
            _ => None,
        })
        .bind(url_changed && s.verify)
        // An ed25519 rotation changes the shown public key together with the private one.
        .bind(&s.public_key)
        .execute(&mut *tx)
        .await?;
        // Its deliveries move to the other kind of queue, in the transaction that changes the flag: dispatches
        // (which copy it onto new deliveries) wait for the cursor's lock, so none is left in the wrong one.
        // Finished ones too, which a replay may open again.
        if s.ordered != before.ordered {
            sqlx::query("UPDATE deliveries SET in_order = $1 WHERE subscription_id = $2 AND in_order <> $1")
                .bind(s.ordered as i64)
                .bind(&s.id)
                .execute(&mut *tx)
                .await?;
        }
        if status_text == "disabled" && before.status != "disabled" {
            sqlx::query(FAIL_OPEN_DELIVERIES)
                .bind(FAILED_BY_DISABLE)
                .bind(now_text())
                .bind(&s.id)
                .execute(&mut *tx)
                .await?;
            // Under the cursor's lock: every event after it is dispatched with the subscription disabled.
            sqlx::query("UPDATE subscriptions SET disabled_after_sequence = $1 WHERE id = $2")
                .bind(cursor)
                .bind(&s.id)
                .execute(&mut *tx)
                .await?;
        }
        // Enabled again: a dispatcher (of another process) that read the subscription before it was disabled
        // may have queued deliveries after the disable ended the open ones. They end the same way, so that
        // only `replay_missed` sends what came while it was disabled.
        if before.status == "disabled"
            && status_text != "disabled"
            && let Some(disabled_at) = &before.disabled_at
        {
            sqlx::query(&format!("{FAIL_OPEN_DELIVERIES} AND created_at >= $4"))
                .bind(FAILED_BY_DISABLE)
                .bind(now_text())
                .bind(&s.id)
                .bind(disabled_at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.subscriptions_changed();
        self.notify_changed();
        Ok(true)
    }

    pub async fn subscription(&self, id: &str) -> sqlx::Result<Option<Subscription>> {
        let row = sqlx::query("SELECT * FROM subscriptions WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(from_row).transpose()
    }

    /// A page of subscriptions, of one tenant or (admin) of all.
    pub async fn subscriptions(
        &self,
        tenant: Option<&str>,
        page: u64,
        per_page: u64,
    ) -> sqlx::Result<(u64, Vec<Subscription>)> {
        let (filter, bind) = match tenant {
            Some(t) => ("WHERE tenant = $1", Some(t)),
            None => ("WHERE $1 IS NULL", None),
        };
        // One snapshot, so the page's `total_items` counts the subscriptions it lists (one made or deleted
        // between two reads showed in one and not the other).
        let mut tx = self.read_snapshot().await?;
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM subscriptions {filter}"))
            .bind(bind)
            .fetch_one(&mut *tx)
            .await?;
        let rows =
            sqlx::query(&format!("SELECT * FROM subscriptions {filter} ORDER BY created_at, id LIMIT $2 OFFSET $3"))
                .bind(bind)
                .bind(per_page as i64)
                .bind(((page.max(1) - 1) * per_page) as i64)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok((total.max(0) as u64, rows.iter().map(from_row).collect::<sqlx::Result<_>>()?))
    }

    /// Deletes a subscription with its deliveries and their attempts, if the subscription as stored passes
    /// `unchanged` (the caller's precondition), read in the same transaction: false if it did not or is gone.
    pub async fn delete_subscription(&self, id: &str, unchanged: impl Fn(&Subscription) -> bool) -> sqlx::Result<bool> {
        let (mut tx, _guard) = self.begin_write().await?;
        // The subscription row first, as the attempt recorder takes it before its deliveries: deleting the
        // deliveries first deadlocked with a batch of attempts on PostgreSQL (and the owner got a 503).
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let stored = sqlx::query(&format!("SELECT * FROM subscriptions WHERE id = $1{lock}"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if !stored.as_ref().map(from_row).transpose()?.is_some_and(|stored| unchanged(&stored)) {
            return Ok(false);
        }
        sqlx::query("DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE subscription_id = $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM deliveries WHERE subscription_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM subscriptions WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        self.subscriptions_changed();
        Ok(true)
    }

    /// Fans the next events out into deliveries and advances the dispatch cursor, in one transaction.
    /// Returns how many events were read (0 when the log is drained) and the new deliveries already leased
    /// to the caller for `lease_seconds`, so it can send them at once without claiming them first. Deliveries
    /// of `ordered` subscriptions are left unleased: they go through [`Db::claim_due`], which keeps the order.
    /// Immediate subscriptions get deliveries; pending ones too (held until verified); digest subscriptions
    /// are served by [`Db::build_digest`] instead.
    pub async fn dispatch_batch(
        &self,
        public_url: &str,
        limit: i64,
        lease_seconds: i64,
    ) -> sqlx::Result<(usize, Vec<Delivery>)> {
        let result = self.dispatch_in_tx(public_url, limit, lease_seconds).await;
        self.condition.observe(result)
    }

    async fn dispatch_in_tx(
        &self,
        public_url: &str,
        limit: i64,
        lease_seconds: i64,
    ) -> sqlx::Result<(usize, Vec<Delivery>)> {
        let (mut tx, _guard) = self.begin_write().await?;
        // Updating the cursor row first takes its lock (PostgreSQL): one dispatcher at a time, any process.
        let cursor: i64 =
            sqlx::query_scalar("UPDATE counters SET value = value WHERE name = 'dispatch_cursor' RETURNING value")
                .fetch_one(&mut *tx)
                .await?;
        // Read under the cursor lock, so a schedule change (which takes it too) is seen by the next batch. On
        // SQLite the snapshot is exact (every change is this process's and bumps it; the lock is held here).
        let immediate = |s: &Subscription| s.status != "disabled" && s.schedule.is_none();
        // The deliveries are dated when the subscriptions are read (before), as at commit (`dispatch_appended`).
        let now = now_text();
        let snapshot = match self.backend {
            Backend::Sqlite => self.subscription_snapshot().await?,
            Backend::Postgres => current_subscriptions(&self.subscription_cache, &mut tx, &now).await?,
        };
        let mut subscriptions: Vec<&Subscription> = snapshot.values().filter(|s| immediate(s)).collect();
        subscriptions.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        let rows = sqlx::query(
            "SELECT sequence, id, type, object, object_id, occurred_at, origin, data, facets, changed_inside_only FROM events \
             WHERE sequence > $1 ORDER BY sequence LIMIT $2",
        )
        .bind(cursor)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let events: Vec<Event> = rows.iter().map(super::events::event_from_any_row).collect::<sqlx::Result<_>>()?;
        let last = events.last().map_or(cursor, |e| e.sequence);
        let lease = timestamp_text(chrono::Utc::now() + chrono::Duration::seconds(lease_seconds));
        let deliveries = {
            let full = self.dispatch.full_lanes.read().unwrap_or_else(|p| p.into_inner());
            fan_out(&events, &subscriptions, public_url, &now, &lease, &full)
        };
        let created = insert_new_deliveries(&mut Conn::from(&mut *tx), deliveries, &now, &self.lease_holder).await?;
        if last != cursor {
            sqlx::query("UPDATE counters SET value = $1 WHERE name = 'dispatch_cursor'")
                .bind(last)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.dispatch.dispatched_through.fetch_max(last, Ordering::AcqRel);
        // No wake-up for the worker: the deliveries go back to the worker that dispatched them, and ones it
        // must claim (ordered subscriptions) are claimed in the same round.
        let leased = created.into_iter().filter(|d| d.lease_until.is_some()).collect();
        Ok((rows.len(), leased))
    }

    /// Claims up to `limit` due deliveries for `lease_seconds`; each is then attempted by this process only.
    ///
    /// Deliveries of the subscriptions in `busy` (those whose every slot this process already uses) are left
    /// for later, so a hanging target's backlog never fills this process's in-flight capacity.
    pub async fn claim_due(&self, limit: i64, lease_seconds: i64, busy: &[String]) -> sqlx::Result<Vec<Delivery>> {
        let now = chrono::Utc::now();
        let now_s = timestamp_text(now);
        let lease = timestamp_text(now + chrono::Duration::seconds(lease_seconds));
        // How to get past busy subscriptions' deliveries: read before the write lock.
        let past_busy = match busy.is_empty() {
            true => PastBusy::Walk,
            false => self.past_busy(busy, limit, &now_s).await?,
        };
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let mut conn = self.pool.acquire().await?;
        let mut claimed = Vec::new();
        let mut failed = None;
        // The heads of ordered queues first: at most one per subscription, never starved by a large backlog.
        for claimable in [ORDERED_HEADS, UNORDERED_CLAIMABLE] {
            let room = limit - claimed.len() as i64;
            if room <= 0 {
                break;
            }
            let rows = if let (true, PastBusy::Of(due)) = (claimable == UNORDERED_CLAIMABLE, &past_busy) {
                self.claim_of(&mut conn, due, room, &lease, &now_s).await
            } else {
                let sql = claim_sql(self.backend, claimable, busy.len());
                let mut query = sqlx::query(&sql).bind(&lease).bind(&now_s);
                for id in busy {
                    query = query.bind(id);
                }
                query.bind(room).bind(&*self.lease_holder).fetch_all(&mut *conn).await
            };
            match rows.and_then(|rows| rows.iter().map(delivery_from_row).collect::<sqlx::Result<Vec<_>>>()) {
                Ok(rows) => claimed.extend(rows),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(guard);
        let leases: Vec<(String, String)> =
            claimed.iter().filter_map(|d| Some((d.id.clone(), d.lease_until.clone()?))).collect();
        let bodies = match failed {
            Some(e) => Err(e),
            None => with_event_bodies(&mut conn, claimed).await,
        };
        let claimed = match bodies {
            Ok(claimed) => claimed,
            Err(e) => {
                // Claimed (committed) but not started: given back, not left to wait for their leases.
                drop(conn);
                if let Err(e) = self.release_own_leases(&leases).await {
                    tracing::warn!(error = %e, "claimed deliveries wait for their leases to run out");
                }
                return Err(e);
            }
        };
        // A body that cannot be built (its event is gone from the log) is never sent empty: the delivery fails.
        let (claimed, bodiless): (Vec<Delivery>, Vec<Delivery>) =
            claimed.into_iter().partition(|d| d.body != BODY_IN_EVENT);
        if !bodiless.is_empty() {
            let ids: Vec<&str> = bodiless.iter().map(|d| d.id.as_str()).collect();
            tracing::error!(deliveries = ?ids, "the events of these deliveries are missing; they fail");
            let sql = format!(
                "UPDATE deliveries SET status = 'failed', last_error = $1, lease_until = NULL, updated_at = $2 \
                 WHERE id IN ({})",
                super::placeholders(2, ids.len())
            );
            let mut query = sqlx::query(&sql).bind("its event is missing from the event log").bind(&now_s);
            for id in ids {
                query = query.bind(id);
            }
            let _guard = match &self.write_lock {
                Some(lock) => Some(lock.lock().await),
                None => None,
            };
            query.execute(&mut *conn).await?;
        }
        Ok(claimed)
    }

    /// The earliest time the worker has something to do: a claimable delivery becomes due (or its lease
    /// expires), a digest fires, or a verification challenge is due. Deliveries of the subscriptions in `busy`
    /// are left out, as [`Db::claim_due`] leaves them: they wait for a slot, not for a time.
    pub async fn next_due(&self, busy: &[String]) -> sqlx::Result<Option<String>> {
        let window = if busy.is_empty() { 1 } else { DUE_WINDOW };
        let sql = next_due_sql(busy.len(), window);
        let mut query = sqlx::query_as::<_, (Option<String>, Option<String>)>(&sql);
        for id in busy {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        // Of the window, those of busy subscriptions are left out; the rows of no subscription all count.
        let due = rows.into_iter().filter_map(|(at, subscription)| match subscription {
            Some(subscription) if busy.contains(&subscription) => None,
            _ => at,
        });
        Ok(due.min())
    }

    /// How [`Db::claim_due`] gets past the deliveries of `busy` subscriptions to `limit` others due by `now`.
    async fn past_busy(&self, busy: &[String], limit: i64, now: &str) -> sqlx::Result<PastBusy> {
        let window = limit.max(DUE_WINDOW);
        let mut conn = self.pool.acquire().await?;
        let front: Vec<(String, String)> = sqlx::query_as(&front_sql(window)).fetch_all(&mut *conn).await?;
        if !front.iter().any(|(_, subscription)| busy.contains(subscription)) {
            return Ok(PastBusy::Walk);
        }
        let earliest = earliest_by_subscription(&mut conn, busy).await?;
        Ok(PastBusy::Of(earliest.into_iter().filter(|(at, _)| at.as_str() <= now).map(|(_, id)| id).collect()))
    }

    /// Claims up to `room` due unordered deliveries of the subscriptions `due` (earliest first), through each
    /// one's own index range ([`claim_of_sql`]), [`CLAIM_SUBSCRIPTIONS`] subscriptions a statement until `room`
    /// is filled.
    async fn claim_of(
        &self,
        conn: &mut sqlx::AnyConnection,
        due: &[String],
        room: i64,
        lease: &str,
        now: &str,
    ) -> sqlx::Result<Vec<AnyRow>> {
        let mut claimed = Vec::new();
        for subscriptions in due.chunks(CLAIM_SUBSCRIPTIONS) {
            let left = room - claimed.len() as i64;
            if left <= 0 {
                break;
            }
            let sql = claim_of_sql(self.backend, subscriptions.len());
            let mut query = sqlx::query(&sql).bind(lease).bind(now);
            for id in subscriptions {
                query = query.bind(id);
            }
            claimed.extend(query.bind(left).bind(&*self.lease_holder).fetch_all(&mut *conn).await?);
        }
        Ok(claimed)
    }

    /// Whether the store still has `delivery` unfinished under the lease this process holds for it (not
    /// ended by a disable, reopened by a replay, or taken over after its lease ran out).
    pub async fn still_ours(&self, delivery: &Delivery) -> sqlx::Result<bool> {
        let stored: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, lease_until FROM deliveries WHERE id = $1")
                .bind(&delivery.id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(matches!(stored, Some((status, lease))
            if matches!(status.as_str(), "pending" | "retrying") && lease == delivery.lease_until))
    }

    /// Releases leases this process holds (`(delivery id, lease)`), where they are still the ones it set: what
    /// a stopping worker held for retries or had waiting in its lanes.
    pub async fn release_own_leases(&self, leases: &[(String, String)]) -> sqlx::Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        // One statement per lease given (a claim's, a dispatch's share one) and 500 deliveries.
        let mut by_lease: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
        for (id, until) in leases {
            by_lease.entry(until.as_str()).or_default().push(id.as_str());
        }
        let (mut tx, _guard) = self.begin_write().await?;
        for (until, ids) in by_lease {
            for chunk in ids.chunks(500) {
                let sql = format!(
                    "UPDATE deliveries SET lease_until = NULL WHERE lease_until = $1 AND id IN ({})",
                    super::placeholders(1, chunk.len())
                );
                let mut query = sqlx::query(&sql).bind(until);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await
    }

    /// Extends this process's lease `held` on an unfinished delivery to `lease_seconds` from now; returns the
    /// new lease, or None if the delivery is finished, no longer under that lease, or its subscription does
    /// not receive deliveries now (disabled, or waiting for verification).
    pub async fn renew_lease(&self, id: &str, held: Option<&str>, lease_seconds: i64) -> sqlx::Result<Option<String>> {
        let Some(held) = held else { return Ok(None) };
        let lease = timestamp_text(chrono::Utc::now() + chrono::Duration::seconds(lease_seconds));
        let (mut tx, _guard) = self.begin_write().await?;
        let renewed = sqlx::query(
            "UPDATE deliveries SET lease_until = $1 \
             WHERE id = $2 AND lease_until = $3 AND status IN ('pending', 'retrying') \
             AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = deliveries.subscription_id \
                 AND s.status IN ('active', 'failing'))",
        )
        .bind(&lease)
        .bind(id)
        .bind(held)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok((renewed == 1).then_some(lease))
    }

    /// Moves deliveries the rate limiter could not start yet to a later time, releasing their lease.
    pub async fn defer_deliveries(&self, until: &[(String, String)]) -> sqlx::Result<()> {
        if until.is_empty() {
            return Ok(());
        }
        let (mut tx, _guard) = self.begin_write().await?;
        for (id, at) in until {
            sqlx::query(
                "UPDATE deliveries SET next_attempt_at = $1, lease_until = NULL \
                 WHERE id = $2 AND status IN ('pending', 'retrying')",
            )
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Records a batch of attempts and their consequences for the deliveries and their subscriptions in ONE
    /// transaction (one commit, one fsync, however many attempts); appends `webhook.failing|recovered|disabled`
    /// events when a subscription's status changes.
    pub async fn record_attempts(
        &self,
        batch: Vec<(Delivery, AttemptRecord)>,
        disable_after_seconds: i64,
    ) -> sqlx::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let result = super::group_commit::submit_record(self, batch, disable_after_seconds).await;
        self.condition.observe(result)
    }

    /// After a commit that recorded attempts (their `webhook.*` events are announced with the commit's).
    pub(crate) fn attempts_recorded(&self, recorded: &Recorded) {
        // The worker's snapshot routes by status (counters do not matter to it), and the worker needs waking
        // only for new events, a retry to schedule or an ordered subscription's next delivery: other plain
        // successes change none of them.
        if recorded.statuses_changed {
            self.subscriptions_changed();
        }
        if recorded.next_in_order {
            self.dispatch.next_in_order.store(true, Ordering::Release);
        }
        // (`webhook.*` events only come with a status change.)
        if recorded.statuses_changed || recorded.retries || recorded.next_in_order {
            self.notify_changed();
        }
    }

    /// A page of a subscription's deliveries, newest first.
    pub async fn deliveries(
        &self,
        subscription_id: &str,
        q: &DeliveryQuery,
        page: u64,
        per_page: u64,
    ) -> sqlx::Result<(u64, Vec<Delivery>)> {
        let mut clauses = vec!["subscription_id = $1".to_string()];
        let mut binds: Vec<String> = vec![subscription_id.to_string()];
        let mut add = |clause: &str, value: &Option<String>| {
            if let Some(v) = value {
                binds.push(v.clone());
                clauses.push(clause.replace('?', &format!("${}", binds.len())));
            }
        };
        add("status = ?", &q.status);
        // An exact type, or a pattern: `table.*` (by its prefix; `LIKE` would read a table name's `_` as a
        // wildcard) or `*` (every type).
        match q.event_type.as_deref() {
            Some("*") | None => {}
            Some(pattern) if pattern.ends_with(".*") => {
                let prefix = &pattern[..pattern.len() - 1];
                add(&format!("substr(event_type, 1, {}) = ?", prefix.len()), &Some(prefix.to_string()));
            }
            Some(_) => add("event_type = ?", &q.event_type),
        }
        add("object_id = ?", &q.object_id);
        add("created_at >= ?", &q.since);
        add("created_at < ?", &q.until);
        let filter = clauses.join(" AND ");
        let count_sql = format!("SELECT COUNT(*) FROM deliveries WHERE {filter}");
        let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
        for b in &binds {
            count = count.bind(b);
        }
        // The count and the page from one snapshot: a delivery made between two reads showed in one only.
        let mut tx = self.read_snapshot().await?;
        let total = count.fetch_one(&mut *tx).await?;
        let n = binds.len();
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE {filter} ORDER BY created_at DESC, id DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        );
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b);
        }
        let rows = query.bind(per_page as i64).bind(((page.max(1) - 1) * per_page) as i64).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok((total.max(0) as u64, rows.iter().map(delivery_from_row).collect::<sqlx::Result<_>>()?))
    }

    pub async fn delivery(&self, id: &str) -> sqlx::Result<Option<Delivery>> {
        delivery_on(&mut *self.pool.acquire().await?, id).await
    }

    /// A read-only transaction whose reads all see one state of the store (repeatable read on PostgreSQL; a
    /// SQLite transaction reads one snapshot of the WAL).
    async fn read_snapshot(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// Delivery `id` and its attempt log as of one moment. Read in one snapshot (a read transaction; repeatable
    /// read on PostgreSQL), so the attempts listed are the ones its status and count reflect: two reads let an
    /// attempt recorded between them show in one and not the other.
    pub async fn delivery_with_attempts(&self, id: &str) -> sqlx::Result<Option<(Delivery, Vec<Attempt>)>> {
        let mut tx = self.read_snapshot().await?;
        let Some(delivery) = delivery_on(&mut tx, id).await? else { return Ok(None) };
        let attempts = attempts_on(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Some((delivery, attempts)))
    }

    /// Makes a finished or waiting delivery due now again (idempotent: a queued one stays queued). False if
    /// there is no such delivery or its subscription is disabled (nothing would send it).
    pub async fn retry_now(&self, delivery_id: &str) -> sqlx::Result<bool> {
        // An attempt in flight (leased, and due: claimed, or a held retry whose time came) keeps its lease:
        // releasing it let a claim send a second copy beside it, and the two results raced on the delivery's
        // attempt count. Its due time moves to now instead, which the recorder reads as "asked for": should
        // the attempt fail, the retry is due at once, not on the schedule. A retry held for later (leased, not
        // due yet) is brought forward; the worker's timer then finds its lease gone.
        let done = sqlx::query(&format!(
            "UPDATE deliveries SET status = CASE WHEN status = 'pending' THEN 'pending' ELSE 'retrying' END, \
             manual_due = CASE WHEN status IN ('failed', 'succeeded') OR next_attempt_at > $1 \
             OR (lease_until IS NOT NULL AND lease_until > $1) THEN 1 ELSE manual_due END, \
             lease_until = CASE WHEN lease_until IS NOT NULL AND lease_until > $1 AND next_attempt_at <= $1 \
             THEN lease_until ELSE NULL END, next_attempt_at = $1 WHERE id = $2 AND {}",
            not_disabled(self.backend)
        ))
        .bind(now_text())
        .bind(delivery_id)
        .execute(&self.pool)
        .await?;
        self.notify_changed();
        Ok(done.rows_affected() > 0)
    }

    /// Re-queues a subscription's deliveries created in [since, until) (only failed ones if asked); none of a
    /// disabled subscription.
    pub async fn replay(
        &self,
        subscription_id: &str,
        since: &str,
        until: &str,
        only_failed: bool,
    ) -> sqlx::Result<u64> {
        let status_filter = if only_failed { "status = 'failed'" } else { "status IN ('failed', 'succeeded')" };
        let done = sqlx::query(&format!(
            "UPDATE deliveries SET status = 'retrying', next_attempt_at = $1, lease_until = NULL, manual_due = 1 \
             WHERE subscription_id = $2 AND created_at >= $3 AND created_at < $4 AND {status_filter} AND {}",
            not_disabled(self.backend)
        ))
        .bind(now_text())
        .bind(subscription_id)
        .bind(since)
        .bind(until)
        .execute(&self.pool)
        .await?;
        self.notify_changed();
        Ok(done.rows_affected())
    }
}

/// That the subscription of the `deliveries` row being updated is not disabled: a delivery queued for one would
/// wait unsent, and an `enable` without `replay_missed` would then send it. On PostgreSQL the subscription row is
/// share-locked, so a disable (which locks it for update, then ends the open deliveries) either sees the
/// delivery queued and ends it, or commits first and this sees it disabled.
fn not_disabled(backend: Backend) -> String {
    let lock = if backend == Backend::Postgres { " FOR SHARE" } else { "" };
    format!(
        "EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = deliveries.subscription_id AND s.status <> 'disabled'{lock})"
    )
}

/// The deliveries of subscriptions that are not `ordered` that may be claimed (`d`, joined with their
/// subscription `s`): unfinished, of a live subscription. Read in the order of the partial index
/// `deliveries_unordered_claimable_at` (migration 14), which holds no ordered subscription's backlog.
const UNORDERED_CLAIMABLE: &str = "deliveries d JOIN subscriptions s ON s.id = d.subscription_id \
     WHERE d.status IN ('pending', 'retrying') AND d.in_order = 0 AND s.status IN ('active', 'failing')";

/// The one delivery of each live `ordered` subscription that may be claimed (`d`, with its subscription `s`):
/// the head of its queue, its earliest unfinished delivery by event sequence, so a failing delivery holds back
/// the later ones until it succeeds or fails for good. Found per subscription through the partial index
/// `deliveries_in_order_queue` (one probe each, whatever the backlog): testing every open delivery against
/// all earlier ones made each claim read the whole backlog. The head's own state is tested again on `d`:
/// PostgreSQL re-checks only those conditions on the newest version of a row it waited for (`FOR UPDATE`),
/// and the subquery's answer may be a delivery finished meanwhile.
const ORDERED_HEADS: &str = "subscriptions s JOIN deliveries d ON d.id = (SELECT e.id FROM deliveries e \
     WHERE e.subscription_id = s.id AND e.status IN ('pending', 'retrying') AND e.in_order = 1 \
     ORDER BY e.event_sequence, e.id LIMIT 1) \
     WHERE s.ordered = 1 AND s.status IN ('active', 'failing') AND d.status IN ('pending', 'retrying') \
     AND d.in_order = 1";

/// When a delivery can be claimed next: when due, or when its lease runs out if that is later. Written exactly
/// as the expression of the partial index `deliveries_unordered_claimable_at` (migration 14), which serves the
/// claim and [`Db::next_due`] in this order.
const CLAIMABLE_AT: &str = "(CASE WHEN d.lease_until IS NOT NULL AND d.lease_until > d.next_attempt_at THEN d.lease_until ELSE d.next_attempt_at END)";

/// Leaves out the deliveries of `busy` subscriptions, whose ids are bound from `$first` on.
fn skip_busy(first: usize, busy: usize) -> String {
    match busy {
        0 => String::new(),
        n => format!("AND d.subscription_id NOT IN ({})", super::placeholders(first, n)),
    }
}

/// [`Db::claim_due`]'s statements, one over `claimable` ([`ORDERED_HEADS`] or [`UNORDERED_CLAIMABLE`]): `$1` the
/// lease, `$2` now, then the busy subscriptions, then the limit and the lease holder.
fn claim_sql(backend: Backend, claimable: &str, busy: usize) -> String {
    let lock = if backend == Backend::Postgres { "FOR UPDATE OF d SKIP LOCKED" } else { "" };
    format!(
        "UPDATE deliveries SET lease_until = $1, lease_holder = ${} WHERE id IN (SELECT d.id FROM {claimable} \
         AND {CLAIMABLE_AT} <= $2 AND (d.lease_until IS NULL OR d.lease_until < $2) {} \
         ORDER BY {CLAIMABLE_AT} LIMIT ${} {lock}) RETURNING {DELIVERY_COLUMNS}",
        4 + busy,
        skip_busy(2, busy),
        3 + busy
    )
}

/// How many of the earliest claimable unordered deliveries [`Db::next_due`] reads when some subscriptions are
/// busy, before it asks every other subscription for its own earliest instead.
const DUE_WINDOW: i64 = 64;

/// At most this many subscriptions' due deliveries are claimed in one statement past busy subscriptions.
const CLAIM_SUBSCRIPTIONS: usize = 16;

/// How [`Db::claim_due`] gets past busy subscriptions' deliveries.
enum PastBusy {
    /// In the claimable order ([`claim_sql`]): none of the first `limit` is busy, so the claim takes its
    /// deliveries from those (no subscription is busy, or their deliveries come later).
    Walk,
    /// Through each of these subscriptions' own range, earliest first: their deliveries are due, and the
    /// claimable order holds busy ones among the first (a hanging target's backlog: thousands).
    Of(Vec<String>),
}

/// The `window` earliest claimable unordered deliveries: their claimable time and subscription, whether busy
/// or not (a busy subscription's entries are skipped by the caller, not walked past by the database).
fn front_sql(window: i64) -> String {
    format!(
        "SELECT {CLAIMABLE_AT} AS t, d.subscription_id FROM {UNORDERED_CLAIMABLE} ORDER BY {CLAIMABLE_AT} LIMIT {window}"
    )
}

/// [`Db::next_due`]'s query, the busy subscriptions bound from `$1`: the first `window` rows of [`front_sql`]
/// (claimable time, subscription), then rows with no subscription whose least is the earliest of everything
/// else: the head of each ordered queue (busy ones left out), digests and challenges, and, only when the
/// window is full of busy subscriptions' deliveries, each other subscription's earliest
/// ([`earliest_by_subscription_sql`]). It reads in the order of the index on the claimable time and stops
/// after `window` rows, not a minimum over all open deliveries (with 20 000 open, work in flight, that took
/// 35-42 ms, and it runs every round of the worker), nor a walk past every busy subscription's delivery to the
/// first other one (a hanging target's backlog: 2-8 ms a round with 20 000 waiting on PostgreSQL). One
/// statement: a second one for the subscriptions cost PostgreSQL's worker rounds 8 % of W7.
fn next_due_sql(busy: usize, window: i64) -> String {
    let skip = skip_busy(0, busy);
    let front = front_sql(window);
    let past_busy = match busy {
        0 => String::new(),
        n => format!(
            " UNION ALL SELECT MIN(t), NULL FROM ({}) each_one WHERE (SELECT COUNT(*) FROM front) >= {window} \
             AND NOT EXISTS (SELECT 1 FROM front WHERE subscription_id NOT IN ({}))",
            earliest_by_subscription_sql(busy),
            super::placeholders(0, n)
        ),
    };
    format!(
        "WITH front AS ({front}) SELECT t, subscription_id FROM front \
         UNION ALL SELECT MIN(t), NULL FROM (\
         SELECT MIN({CLAIMABLE_AT}) AS t FROM {ORDERED_HEADS} {skip} \
         UNION ALL SELECT MIN(next_digest_at) AS t FROM subscriptions \
         WHERE schedule IS NOT NULL AND status IN ('active', 'failing') \
         UNION ALL SELECT MIN(verification_due_at) AS t FROM subscriptions WHERE status = 'pending') other{past_busy}"
    )
}

/// Each receiving unordered subscription not busy (bound from `$1`) with the claimable time of its earliest
/// open delivery (`NULL` when it has none): one probe of `deliveries_open_by_subscription_claimable_at`
/// (migration 15) per subscription, however long any backlog is.
fn earliest_by_subscription_sql(busy: usize) -> String {
    let skip = match busy {
        0 => String::new(),
        n => format!("AND s.id NOT IN ({})", super::placeholders(0, n)),
    };
    format!(
        "SELECT s.id, (SELECT {CLAIMABLE_AT} FROM deliveries d WHERE d.subscription_id = s.id \
         AND d.status IN ('pending', 'retrying') AND d.in_order = 0 ORDER BY {CLAIMABLE_AT} LIMIT 1) AS t \
         FROM subscriptions s WHERE s.ordered = 0 AND s.status IN ('active', 'failing') {skip}"
    )
}

/// The receiving unordered subscriptions not `busy` that have an open delivery, with its earliest claimable
/// time, earliest first ([`earliest_by_subscription_sql`]).
async fn earliest_by_subscription(
    conn: &mut sqlx::AnyConnection,
    busy: &[String],
) -> sqlx::Result<Vec<(String, String)>> {
    let sql = earliest_by_subscription_sql(busy.len());
    let mut query = sqlx::query_as::<_, (String, Option<String>)>(&sql);
    for id in busy {
        query = query.bind(id);
    }
    let mut earliest: Vec<(String, String)> =
        query.fetch_all(&mut *conn).await?.into_iter().filter_map(|(id, at)| Some((at?, id))).collect();
    earliest.sort_unstable();
    Ok(earliest)
}

/// [`Db::claim_of`]'s statement: up to `$n` (after the `subscriptions` ids bound from `$3`) of the earliest due
/// deliveries of those subscriptions, each subscription's read through its own index range; `$1` the lease,
/// `$2` now, then the limit and the lease holder, as [`claim_sql`]. The candidates are then looked up by id,
/// tested again and locked: joined to `deliveries`, PostgreSQL's planner preferred reading every open delivery
/// to hash them, so it gets an array of ids (its primary key alone); SQLite looks each one up by its key either
/// way. On PostgreSQL four times the limit are candidates and the earliest `$n` of them not locked are taken:
/// processes claiming at once then share them rather than one finding all it chose locked by another.
fn claim_of_sql(backend: Backend, subscriptions: usize) -> String {
    let limit = 3 + subscriptions;
    let due = format!("{CLAIMABLE_AT} <= $2 AND (d.lease_until IS NULL OR d.lease_until < $2)");
    let each: Vec<String> = (0..subscriptions)
        .map(|i| {
            format!(
                "SELECT id, t FROM (SELECT d.id, {CLAIMABLE_AT} AS t FROM deliveries d WHERE d.subscription_id = ${} \
                 AND d.status IN ('pending', 'retrying') AND d.in_order = 0 AND {due} \
                 ORDER BY {CLAIMABLE_AT} LIMIT ${limit}) of_{i}",
                3 + i
            )
        })
        .collect();
    let every = each.join(" UNION ALL ");
    let chosen = match backend {
        Backend::Postgres => format!(
            "d.id = ANY(ARRAY(SELECT id FROM ({every}) every ORDER BY t LIMIT 4 * ${limit})) AND {due} \
             ORDER BY {CLAIMABLE_AT} LIMIT ${limit} FOR UPDATE OF d SKIP LOCKED"
        ),
        Backend::Sqlite => format!("d.id IN (SELECT id FROM ({every}) every ORDER BY t LIMIT ${limit}) AND {due}"),
    };
    format!(
        "UPDATE deliveries SET lease_until = $1, lease_holder = ${} WHERE id IN (SELECT d.id FROM \
         {UNORDERED_CLAIMABLE} AND {chosen}) RETURNING {DELIVERY_COLUMNS}",
        limit + 1
    )
}

/// What recording a batch of attempts did: the `webhook.*` events it still has to append (in the same
/// transaction), and whom to tell once committed.
pub(crate) struct Recorded {
    pub events: Vec<NewEvent>,
    pub statuses_changed: bool,
    retries: bool,
    /// Whether an ordered subscription's delivery was done with (its next one may be claimed now).
    next_in_order: bool,
}

/// Records a batch of attempt results in the open transaction on `conn`: the attempt rows, each delivery's
/// new state, and each subscription's status and counters (applied in order). Multi-row statements: a batch
/// costs a few statements, not two per attempt.
pub(crate) async fn record_in(
    conn: &mut Conn<'_>,
    backend: Backend,
    batch: &[(Delivery, AttemptRecord)],
    disable_after_seconds: i64,
    lease_holder: &str,
) -> sqlx::Result<Recorded> {
    // Subscription rows first, in id order, as an owner's update takes them (before the deliveries it may end
    // as failed): the other order would let a PATCH and a batch of attempts deadlock on PostgreSQL.
    if backend == Backend::Postgres {
        let mut subscriptions: Vec<&str> = batch.iter().map(|(d, _)| d.subscription_id.as_str()).collect();
        subscriptions.sort_unstable();
        subscriptions.dedup();
        for chunk in subscriptions.chunks(100) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id FROM subscriptions WHERE id IN ({}) ORDER BY id FOR UPDATE",
                placeholders.join(", ")
            );
            let args: Vec<Arg> = chunk.iter().map(|id| Arg::from(*id)).collect();
            conn.fetch_all::<(String,)>(&sql, &args).await?;
        }
    }
    let mut applied_ids = std::collections::HashSet::new();
    for chunk in batch.chunks(100) {
        let values: Vec<String> =
            super::row_placeholders(1, chunk.len(), 8).into_iter().map(|p| format!("({p})")).collect();
        let sql = format!(
            "INSERT INTO attempts (id, delivery_id, at, status_code, duration_ms, error, error_class, response_body) \
             VALUES {}",
            values.join(", ")
        );
        // Time-ordered, like event ids: appended to the index, not scattered through it.
        let ids: Vec<String> = chunk.iter().map(|_| format!("att_{}", uuid::Uuid::now_v7().simple())).collect();
        let mut args: Vec<Arg> = Vec::with_capacity(8 * chunk.len());
        for ((delivery, record), id) in chunk.iter().zip(&ids) {
            let a = &record.attempt;
            args.extend([
                Arg::from(id),
                (&delivery.id).into(),
                (&a.at).into(),
                a.status_code.into(),
                a.duration_ms.into(),
                a.error.as_deref().into(),
                a.error_class.as_deref().into(),
                a.response_body.as_deref().into(),
            ]);
        }
        conn.execute(&sql, &args).await?;

        let values: Vec<String> =
            super::row_placeholders(1, chunk.len(), 10).into_iter().map(|p| format!("({p})")).collect();
        // Only a delivery still unfinished under the lease the attempt was made with takes its outcome. A late
        // attempt (one sent again because a retry was asked for while it was out, or whose lease ran out
        // and another process took the delivery over) is kept in the history, and changes nothing else: it
        // never turns a delivery that succeeded back into a retry, nor counts against its subscription.
        // One exception: a success the target acknowledged after a disable ended its delivery as failed
        // (FAILED_BY_DISABLE) makes it succeeded, so that nothing it got is sent again as missed.
        // A retry asked for while the attempt was out moved the delivery's due time past the attempt's start
        // (`Db::retry_now`): a failure is then due at once, unleased (not held), instead of on the schedule,
        // even one that spent the schedule (the retry was accepted; a 410 still ends it), and counts as asked
        // for (`manual_due` stays set for it).
        let asked = "(deliveries.next_attempt_at > v.at AND v.status <> 'succeeded' AND COALESCE(v.code, 0) <> 410)";
        let sql = format!(
            "WITH v (id, status, next_at, code, error, at, lease, ran_under, holder, manual) AS (VALUES {}) \
             UPDATE deliveries SET status = CASE WHEN {asked} THEN 'retrying' ELSE v.status END, \
             attempts = attempts + 1, lease_holder = v.holder, manual_attempts = manual_attempts + v.manual, \
             manual_due = CASE WHEN v.status = 'succeeded' THEN 0 WHEN {asked} THEN manual_due \
             WHEN v.manual = 1 THEN 0 ELSE manual_due END, \
             next_attempt_at = CASE WHEN {asked} THEN deliveries.next_attempt_at ELSE v.next_at END, \
             lease_until = CASE WHEN {asked} THEN NULL ELSE v.lease END, \
             last_status_code = v.code, last_error = v.error, updated_at = v.at \
             FROM v WHERE deliveries.id = v.id AND ((deliveries.status IN ('pending', 'retrying') \
             AND (deliveries.lease_until = v.ran_under OR (deliveries.lease_until IS NULL AND v.ran_under IS NULL))) \
             OR (v.status = 'succeeded' AND deliveries.status = 'failed' AND deliveries.last_error = '{FAILED_BY_DISABLE}')) \
             RETURNING deliveries.id",
            values.join(", ")
        );
        let mut args: Vec<Arg> = Vec::with_capacity(10 * chunk.len());
        for (delivery, record) in chunk {
            let a = &record.attempt;
            let (status, next, lease) = match &record.outcome {
                AttemptOutcome::Succeeded => ("succeeded", &a.at, None),
                AttemptOutcome::Retry { at, held_until } => ("retrying", at, held_until.as_deref()),
                AttemptOutcome::Failed | AttemptOutcome::Gone => ("failed", &a.at, None),
            };
            args.extend([
                Arg::from(&delivery.id),
                status.into(),
                next.into(),
                a.status_code.into(),
                a.error.as_deref().into(),
                (&a.at).into(),
                lease.into(),
                delivery.lease_until.as_deref().into(),
                lease.is_some().then_some(lease_holder).into(),
                i64::from(delivery.manual_due).into(),
            ]);
        }
        let taken: Vec<(String,)> = conn.fetch_all(&sql, &args).await?;
        applied_ids.extend(taken.into_iter().map(|(id,)| id));
    }
    // Only the outcomes the deliveries took count for their subscriptions.
    let applied: Vec<&(Delivery, AttemptRecord)> = batch.iter().filter(|(d, _)| applied_ids.contains(&d.id)).collect();

    // Each subscription once, its attempts applied in order.
    let mut order: Vec<&str> = Vec::new();
    for (d, _) in &applied {
        if !order.contains(&d.subscription_id.as_str()) {
            order.push(&d.subscription_id);
        }
    }
    let mut events = Vec::new();
    let mut statuses_changed = false;
    let mut next_in_order = false;
    for sub_id in order {
        type StatusRow =
            (String, String, String, Option<String>, i64, Option<String>, Option<String>, Option<String>, i64);
        let row: Option<StatusRow> = conn
            .fetch_optional(
                "SELECT tenant, url, status, disabled_reason, consecutive_failures, failing_since, last_success_at, \
                 last_failure_at, ordered FROM subscriptions WHERE id = $1",
                &[sub_id.into()],
            )
            .await?;
        let Some((
            tenant,
            url,
            was,
            was_reason,
            mut failures,
            mut failing_since,
            mut success_at,
            mut failure_at,
            ordered,
        )) = row
        else {
            continue;
        };
        let mut status = was.clone();
        let mut reason = was_reason.clone();
        // The deliveries a 410 ended (one disabled the subscription): missed like the ones the disable ended.
        let mut gone = Vec::new();
        let recorded_at = now_text();
        for (delivery, record) in applied.iter().filter(|(d, _)| d.subscription_id == sub_id) {
            // An ordered subscription's next delivery can go once this one is done (succeeded or failed for
            // good): the claim must not wait for the worker's fallback tick (a second per delivery), nor for
            // the spacing between claims. A retry releases nothing: its queue stays behind it.
            next_in_order |= ordered != 0 && !matches!(record.outcome, AttemptOutcome::Retry { .. });
            let a = &record.attempt;
            let before = status.clone();
            // The status follows the attempts in the order they were sent. A success sent before the last
            // failure recorded, or a failure sent before the last success (answered while the other went
            // out, recorded in a later batch or by another process), says nothing newer about the target:
            // applied, a failure sent before a success flipped a recovered subscription back to failing, and
            // out of order both ways it emitted failing/recovered pairs. It still counts for its delivery.
            // A 410 is final, whenever it was asked. A time later than now here (a process whose clock runs
            // ahead recorded it) overrules nothing.
            let trusted = |t: &Option<String>| t.clone().filter(|t| t.as_str() <= recorded_at.as_str());
            let newer = match record.outcome {
                AttemptOutcome::Succeeded => trusted(&failure_at),
                _ => trusted(&success_at),
            };
            if newer.is_some_and(|newer| a.at < newer) && record.outcome != AttemptOutcome::Gone {
                continue;
            }
            let later = |t: Option<String>| Some(t.map_or_else(|| a.at.clone(), |t| t.max(a.at.clone())));
            if record.outcome == AttemptOutcome::Succeeded {
                failures = 0;
                failing_since = None;
                if status == "failing" {
                    status = "active".into();
                }
                success_at = later(success_at);
            } else {
                failures += 1;
                // The first failure of the run, whichever was recorded first.
                failing_since = Some(failing_since.map_or_else(|| a.at.clone(), |since| since.min(a.at.clone())));
                if status == "active" {
                    status = "failing".into();
                }
                failure_at = later(failure_at);
            }
            if record.outcome == AttemptOutcome::Gone {
                gone.push(delivery.id.clone());
            }
            if record.outcome == AttemptOutcome::Gone && status != "disabled" {
                status = "disabled".into();
                reason = Some("the target answered 410 Gone".into());
            } else if status == "failing"
                && failing_since.as_deref().is_some_and(|since| {
                    chrono::DateTime::parse_from_rfc3339(since)
                        .map(|t| {
                            (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds() >= disable_after_seconds
                        })
                        .unwrap_or(false)
                })
            {
                status = "disabled".into();
                reason = Some(format!("failing for more than {disable_after_seconds} seconds"));
            }
            let change = match (before.as_str(), status.as_str()) {
                ("active", "failing") => Some("webhook.failing"),
                ("failing", "active") => Some("webhook.recovered"),
                (from, "disabled") if from != "disabled" => Some("webhook.disabled"),
                _ => None,
            };
            if let Some(event_type) = change {
                let mut facets = std::collections::BTreeSet::new();
                facets.insert(("tenant".to_string(), tenant.clone()));
                facets.insert(("subscription_id".to_string(), sub_id.to_string()));
                let data = json!({
                    "id": sub_id, "tenant": tenant, "url": url, "status": status, "disabled_reason": reason,
                    "consecutive_failures": failures, "last_error": a.error,
                });
                events.push(NewEvent {
                    event_type: event_type.into(),
                    object: "webhook",
                    object_id: sub_id.to_string(),
                    data,
                    facets,
                    changed_inside_only: false,
                });
            }
        }
        statuses_changed |= status != was || reason != was_reason;
        let now = now_text();
        conn.execute(
            "UPDATE subscriptions SET status = $1, disabled_reason = $2, consecutive_failures = $3, \
             failing_since = $4, last_success_at = $5, last_failure_at = $6, \
             disabled_at = CASE WHEN $7 = 'disabled' AND status <> 'disabled' THEN $8 ELSE disabled_at END, \
             disabled_after_sequence = CASE WHEN $7 = 'disabled' AND status <> 'disabled' \
             THEN (SELECT value FROM counters WHERE name = 'dispatch_cursor') ELSE disabled_after_sequence END \
             WHERE id = $9",
            &[
                (&status).into(),
                reason.as_deref().into(),
                failures.into(),
                failing_since.as_deref().into(),
                success_at.as_deref().into(),
                failure_at.as_deref().into(),
                (&status).into(),
                (&now).into(),
                sub_id.into(),
            ],
        )
        .await?;
        // Disabled now, or already (an attempt that was in flight meanwhile may just have asked for a retry).
        if status == "disabled" {
            conn.execute(FAIL_OPEN_DELIVERIES, &[FAILED_BY_DISABLE.into(), (&now).into(), sub_id.into()]).await?;
        }
        for delivery in gone.into_iter().filter(|_| status == "disabled") {
            conn.execute(
                "UPDATE deliveries SET last_error = $1, updated_at = $2 WHERE id = $3 AND status = 'failed'",
                &[GONE_DISABLED.into(), (&now).into(), (&delivery).into()],
            )
            .await?;
        }
    }
    let retries = applied.iter().any(|(_, record)| record.outcome != AttemptOutcome::Succeeded);
    Ok(Recorded { events, statuses_changed, retries, next_in_order })
}

/// Why a delivery failed that was still open when its subscription was disabled. `enable` with
/// `replay_missed` reopens exactly these (with the events that occurred while disabled).
pub const FAILED_BY_DISABLE: &str = "the subscription was disabled before this was delivered";

/// Why the delivery failed whose 410 disabled its subscription; `replay_missed` reopens it too (the target
/// never took it).
pub const GONE_DISABLED: &str = "the target answered 410 Gone, which disabled the subscription";

/// Ends a disabled subscription's open deliveries as failed (nothing is sent to it any more; without this
/// they would show `retrying`, due, for as long as it stays disabled). Leases go too: an attempt still in
/// flight is kept in the history when it ends, but changes nothing.
const FAIL_OPEN_DELIVERIES: &str = "UPDATE deliveries SET status = 'failed', last_error = $1, lease_until = NULL, \
     updated_at = $2 WHERE subscription_id = $3 AND status IN ('pending', 'retrying')";

/// Deliveries have stable ids derived from (subscription, event), so a replayed dispatch cannot duplicate.
pub fn delivery_id(subscription_id: &str, event_id: &str) -> String {
    // The event's id first: event ids are time-ordered, so new deliveries append to the id index instead of
    // landing on random pages (a random id per delivery cost a page write each). Deterministic either way,
    // so a re-dispatched event maps onto the delivery it already has.
    let event = event_id.strip_prefix("evt_").unwrap_or(event_id);
    let sub = subscription_id.strip_prefix("sub_").unwrap_or(subscription_id);
    let plain = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if plain(event) && plain(sub) {
        return format!("msg_{event}_{sub}");
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{subscription_id}/{event_id}").as_bytes());
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// The multi-row insert of `rows` new deliveries: `$1` is the time; each row's eleven values (id, subscription,
/// tenant, event id, sequence, type, object id, body, lease, lease holder, in order) are numbered from `$first`
/// on.
fn insert_deliveries_sql(rows: usize, first: usize) -> String {
    let values: Vec<String> =
        super::row_placeholders(first, rows, 11).into_iter().map(|p| format!("({p}, 'pending', $1, $1, $1)")).collect();
    format!(
        "INSERT INTO deliveries (id, subscription_id, tenant, event_id, event_sequence, event_type, object_id, \
         body, lease_until, lease_holder, in_order, status, next_attempt_at, created_at, updated_at) VALUES {}",
        values.join(", ")
    )
}

/// One delivery per event and subscription that wants it, in event order, then in the order of `subs`.
/// Subscriptions with the same payload form get the same bytes, serialized once per event. Deliveries of
/// subscriptions that are not `ordered` and are receiving are leased (until `lease`) to the caller, but for
/// those whose lane in the caller is `full`.
fn fan_out(
    events: &[Event],
    subs: &[&Subscription],
    public_url: &str,
    now: &str,
    lease: &str,
    full: &std::collections::HashSet<String>,
) -> Vec<NewDelivery> {
    let mut out = Vec::new();
    for event in events {
        let mut bodies: Vec<(&str, String)> = Vec::with_capacity(2);
        for sub in subs.iter().filter(|s| wants(s, event)) {
            let body_in_event = sub.payload != "thin";
            let body = match bodies.iter().find(|(payload, _)| *payload == sub.payload) {
                Some((_, body)) => body.clone(),
                None => {
                    let body = match body_in_event {
                        true => full_body(event),
                        false => delivery_body(event, &sub.payload, public_url),
                    };
                    bodies.push((&sub.payload, body.clone()));
                    body
                }
            };
            let leased = !sub.ordered && sub.receives_deliveries() && !full.contains(&sub.id);
            let delivery = Delivery {
                id: delivery_id(&sub.id, &event.id),
                subscription_id: sub.id.clone(),
                tenant: sub.tenant.clone(),
                event_id: event.id.clone(),
                event_sequence: event.sequence,
                event_type: event.event_type.clone(),
                object_id: event.object_id.clone(),
                status: "pending".into(),
                attempts: 0,
                next_attempt_at: Some(now.to_string()),
                last_status_code: None,
                last_error: None,
                created_at: now.to_string(),
                updated_at: now.to_string(),
                body,
                lease_until: leased.then(|| lease.to_string()),
                ..Delivery::default()
            };
            out.push(NewDelivery { delivery, body_in_event, in_order: sub.ordered });
        }
    }
    out
}

/// A delivery [`fan_out`] made, and whether its body is its event's full payload (see [`BODY_IN_EVENT`]).
struct NewDelivery {
    delivery: Delivery,
    body_in_event: bool,
    /// Its subscription is `ordered`: it waits in its subscription's queue ([`ORDERED_HEADS`]).
    in_order: bool,
}

/// Stored as a delivery's body when the body is its event's full payload. That payload is the event's data,
/// which the log already holds: stored with every delivery it was most of the row's bytes, written at its
/// insert and again by each attempt's update (a new row version), and once per subscription. The body is
/// built again from the event when the delivery is read ([`with_event_bodies`]): [`delivery_body`] of the
/// stored event gives the same bytes, since the log is append-only and its JSON text reads back to the value it
/// was written from. Never a real body: every body is a JSON object.
const BODY_IN_EVENT: &str = "";

async fn delivery_on(conn: &mut sqlx::AnyConnection, id: &str) -> sqlx::Result<Option<Delivery>> {
    let row = sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(delivery) = row.as_ref().map(delivery_from_row).transpose()? else { return Ok(None) };
    Ok(with_event_bodies(conn, vec![delivery]).await?.pop())
}

async fn attempts_on(conn: &mut sqlx::AnyConnection, delivery_id: &str) -> sqlx::Result<Vec<Attempt>> {
    let rows = sqlx::query(
        "SELECT at, status_code, duration_ms, error, error_class, response_body FROM attempts \
         WHERE delivery_id = $1 ORDER BY at",
    )
    .bind(delivery_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Attempt {
                at: r.try_get("at")?,
                status_code: r.try_get("status_code")?,
                duration_ms: r.try_get("duration_ms")?,
                error: r.try_get("error")?,
                error_class: r.try_get("error_class")?,
                response_body: r.try_get("response_body")?,
            })
        })
        .collect()
}

/// `deliveries` with the bodies stored as [`BODY_IN_EVENT`] built again from their events, read in one
/// statement per 500. One whose event is missing (only a damaged or partly restored database) keeps an empty
/// body: [`Db::claim_due`] fails it rather than send it.
async fn with_event_bodies(
    conn: &mut sqlx::AnyConnection,
    mut deliveries: Vec<Delivery>,
) -> sqlx::Result<Vec<Delivery>> {
    let mut wanted: Vec<i64> =
        deliveries.iter().filter(|d| d.body == BODY_IN_EVENT).map(|d| d.event_sequence).collect();
    if wanted.is_empty() {
        return Ok(deliveries);
    }
    wanted.sort_unstable();
    wanted.dedup();
    let mut events: HashMap<i64, Event> = HashMap::with_capacity(wanted.len());
    for chunk in wanted.chunks(500) {
        let sql = format!(
            "SELECT sequence, id, type, object, object_id, occurred_at, origin, data, facets, changed_inside_only FROM events \
             WHERE sequence IN ({})",
            super::placeholders(0, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for sequence in chunk {
            query = query.bind(*sequence);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let event = super::events::event_from_any_row(&row)?;
            events.insert(event.sequence, event);
        }
    }
    for d in deliveries.iter_mut().filter(|d| d.body == BODY_IN_EVENT) {
        if let Some(event) = events.get(&d.event_sequence) {
            d.body = full_body(event);
        }
    }
    Ok(deliveries)
}

/// Inserts `deliveries` (created at `now`) with multi-row statements, skipping any that exist (a dispatch
/// run again after a crash); returns the ones inserted now.
async fn insert_new_deliveries(
    conn: &mut Conn<'_>,
    deliveries: Vec<NewDelivery>,
    now: &str,
    lease_holder: &str,
) -> sqlx::Result<Vec<Delivery>> {
    let mut inserted = std::collections::HashSet::new();
    for chunk in deliveries.chunks(50) {
        let sql = format!("{} ON CONFLICT DO NOTHING RETURNING id", insert_deliveries_sql(chunk.len(), 2));
        let mut args: Vec<Arg> = Vec::with_capacity(1 + 11 * chunk.len());
        args.push(now.into());
        for NewDelivery { delivery: d, body_in_event, in_order } in chunk {
            args.extend([
                Arg::from(&d.id),
                (&d.subscription_id).into(),
                (&d.tenant).into(),
                (&d.event_id).into(),
                d.event_sequence.into(),
                (&d.event_type).into(),
                (&d.object_id).into(),
                if *body_in_event { BODY_IN_EVENT.into() } else { (&d.body).into() },
                d.lease_until.as_deref().into(),
                d.lease_until.is_some().then_some(lease_holder).into(),
                (*in_order as i64).into(),
            ]);
        }
        let ids: Vec<(String,)> = conn.fetch_all(&sql, &args).await?;
        inserted.extend(ids.into_iter().map(|(id,)| id));
    }
    Ok(deliveries.into_iter().map(|new| new.delivery).filter(|d| inserted.contains(&d.id)).collect())
}

/// Inserts one delivery of `event` to `sub` (a ping, a digest, a missed or undigested event). Its `in_order`
/// is read from the stored subscription, not `sub`: the callers hold that row's lock (or made it in this
/// transaction), and a copy read before may predate a change of `ordered` (its delivery would then wait in a
/// queue no claim reads).
async fn insert_delivery(
    conn: &mut sqlx::AnyConnection,
    sub: &Subscription,
    event: &Event,
    body: &str,
    now: &str,
) -> sqlx::Result<usize> {
    let done = sqlx::query(
        "INSERT INTO deliveries (id, subscription_id, tenant, event_id, event_sequence, event_type, object_id, body, \
         in_order, status, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, COALESCE((SELECT ordered FROM subscriptions WHERE id = $2), 0), \
         'pending', $9, $9, $9) ON CONFLICT DO NOTHING",
    )
    .bind(delivery_id(&sub.id, &event.id))
    .bind(&sub.id)
    .bind(&sub.tenant)
    .bind(&event.id)
    .bind(event.sequence)
    .bind(&event.event_type)
    .bind(&event.object_id)
    .bind(body)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() as usize)
}

impl Db {
    /// Queues deliveries of the events that occurred since `since` and that `sub` wants (after re-enabling).
    /// The deliveries the disable ended ([`FAILED_BY_DISABLE`]) are reopened first.
    pub async fn queue_missed(&self, sub: &Subscription, since: &str, public_url: &str) -> sqlx::Result<usize> {
        // A digest resumes from its own cursor: no events to queue, only what the disable ended.
        let rows = match sub.schedule {
            Some(_) => Vec::new(),
            None => {
                // Every event dispatched while it was disabled: after the cursor at the disable (a write may
                // commit just before the disable and be dispatched after it), or, for a store disabled before
                // that was kept, since the disable. Those that got their delivery anyway are not queued twice.
                let after: Option<i64> =
                    sqlx::query_scalar("SELECT disabled_after_sequence FROM subscriptions WHERE id = $1")
                        .bind(&sub.id)
                        .fetch_optional(&self.pool)
                        .await?
                        .flatten();
                sqlx::query(
                    "SELECT sequence, id, type, object, object_id, occurred_at, origin, data, facets, changed_inside_only FROM events \
                     WHERE occurred_at >= $1 OR sequence > $2 ORDER BY sequence LIMIT 100000",
                )
                .bind(since)
                .bind(after.unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?
            }
        };
        let (mut tx, _guard) = self.begin_write().await?;
        // The subscription's row first, as a batch of attempt results takes it before its deliveries: reopening
        // them in the other order deadlocked with such a batch on PostgreSQL (an acceptance run's enable got a
        // 503 about once in 1 600 disable/enable cycles under a burst; the server log showed the cycle).
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT id FROM subscriptions WHERE id = $1 FOR UPDATE")
                .bind(&sub.id)
                .execute(&mut *tx)
                .await?;
        }
        let now = now_text();
        // What was still owed when the subscription was last disabled goes out again first (not what an earlier
        // disable ended and a plain enable left so).
        let reopened = sqlx::query(
            "UPDATE deliveries SET status = 'retrying', next_attempt_at = $1, lease_until = NULL, updated_at = $1, \
             manual_due = 0 \
             WHERE subscription_id = $2 AND status = 'failed' AND last_error IN ($3, $4) AND updated_at >= $5",
        )
        .bind(&now)
        .bind(&sub.id)
        .bind(FAILED_BY_DISABLE)
        .bind(GONE_DISABLED)
        .bind(since)
        .execute(&mut *tx)
        .await?;
        let mut count = reopened.rows_affected() as usize;
        let mut wanting = sub.clone();
        wanting.start_sequence = 0;
        for row in &rows {
            let event = super::events::event_from_any_row(row)?;
            if wants(&wanting, &event) {
                let body = delivery_body(&event, &sub.payload, public_url);
                count += insert_delivery(&mut tx, sub, &event, &body, &now).await?;
            }
        }
        tx.commit().await?;
        self.notify_changed();
        Ok(count)
    }
}

/// At most this many events are read into one digest; a longer backlog is sent as several digests in a row.
pub const DIGEST_MAX_EVENTS: i64 = 1000;

impl Db {
    /// Digest subscriptions whose next digest is due at `now`.
    pub async fn due_digests(&self, now: &str) -> sqlx::Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT id FROM subscriptions WHERE schedule IS NOT NULL AND status IN ('active', 'failing') \
             AND next_digest_at IS NOT NULL AND next_digest_at <= $1 ORDER BY next_digest_at",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
    }

    /// Builds the due digest of one subscription, in one transaction: reads the events after its digest
    /// cursor, queues one `webhook.digest` delivery of those it wants (none when there are none), advances
    /// the cursor and sets the next firing time (`next_after`, or now again while a backlog remains).
    /// Returns the queued delivery's id, if any.
    pub async fn build_digest(
        &self,
        subscription_id: &str,
        public_url: &str,
        next_after: impl FnOnce(&Subscription, chrono::DateTime<chrono::Utc>) -> Option<String>,
    ) -> sqlx::Result<Option<String>> {
        let (mut tx, _guard) = self.begin_write().await?;
        let now = chrono::Utc::now();
        let until = timestamp_text(now);
        let lock = if self.backend == Backend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
        let row = sqlx::query(&format!(
            "SELECT * FROM subscriptions WHERE id = $1 AND schedule IS NOT NULL AND status IN ('active', 'failing') \
             AND next_digest_at IS NOT NULL AND next_digest_at <= $2 {lock}"
        ))
        .bind(subscription_id)
        .bind(&until)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(sub) = row.as_ref().map(from_row).transpose()? else {
            tx.commit().await?;
            self.subscriptions_changed();
            return Ok(None); // Another worker built it, or it changed meanwhile.
        };
        let rows = sqlx::query(
            "SELECT sequence, id, type, object, object_id, occurred_at, origin, data, facets, changed_inside_only FROM events \
             WHERE sequence > $1 ORDER BY sequence LIMIT $2",
        )
        .bind(sub.digest_after_sequence)
        .bind(DIGEST_MAX_EVENTS)
        .fetch_all(&mut *tx)
        .await?;
        let mut last = sub.digest_after_sequence;
        let mut events = Vec::new();
        let mut last_included = None;
        let mut since = sub.digest_since.clone().unwrap_or_else(|| sub.created_at.clone());
        let mut facets = std::collections::BTreeSet::new();
        // A backlog longer than one digest goes as several, and each covers the time up to its own last events
        // (not up to now), so that the next one's window starts where this one's ends.
        let backlog = rows.len() as i64 == DIGEST_MAX_EVENTS;
        let mut latest = String::new();
        for row in &rows {
            let event = super::events::event_from_any_row(row)?;
            last = event.sequence;
            if event.occurred_at > latest {
                latest.clone_from(&event.occurred_at);
            }
            if wants(&sub, &event) {
                last_included = Some(event.sequence);
                // A write that began before the window and committed in it: the digest still covers it.
                if event.occurred_at < since {
                    since = event.occurred_at.clone();
                }
                facets.extend(event.facets.iter().cloned());
                events.push(delivery_value(&event, &sub.payload, public_url));
            }
        }
        let covered_until = if backlog && latest < until { latest } else { until.clone() };
        let mut queued = None;
        if let Some(sequence) = last_included {
            let digest = Event {
                id: format!("dig_{}", uuid::Uuid::new_v4().simple()),
                sequence,
                event_type: "webhook.digest".into(),
                occurred_at: until.clone(),
                object: "webhook".into(),
                object_id: sub.id.clone(),
                origin: self.instance_id().to_string(),
                changed_inside_only: false,
                data: json!({ "since": since, "until": covered_until, "events": events }),
                facets: facets.into_iter().collect(),
            };
            let body = json!({
                "id": digest.id, "sequence": sequence, "type": digest.event_type, "timestamp": until, "data": digest.data,
            })
            .to_string();
            insert_delivery(&mut tx, &sub, &digest, &body, &until).await?;
            queued = Some(delivery_id(&sub.id, &digest.id));
        }
        let next = if backlog { Some(until.clone()) } else { next_after(&sub, now) };
        sqlx::query(
            "UPDATE subscriptions SET next_digest_at = $1, digest_after_sequence = $2, digest_since = $3 WHERE id = $4",
        )
        .bind(&next)
        .bind(last)
        .bind(&covered_until)
        .bind(&sub.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if queued.is_some() {
            self.notify_changed();
        }
        Ok(queued)
    }

    /// Claims the `pending` subscriptions whose verification challenge is due, leasing them for
    /// `lease_seconds` (a crash mid-verification only delays the next challenge).
    pub async fn claim_verifications(&self, lease_seconds: i64) -> sqlx::Result<Vec<Subscription>> {
        let (mut tx, _guard) = self.begin_write().await?;
        let now = chrono::Utc::now();
        let lock = if self.backend == Backend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
        let rows = sqlx::query(&format!(
            "SELECT * FROM subscriptions WHERE status = 'pending' AND verification_due_at IS NOT NULL \
             AND verification_due_at <= $1 ORDER BY verification_due_at LIMIT 64 {lock}"
        ))
        .bind(timestamp_text(now))
        .fetch_all(&mut *tx)
        .await?;
        let subs = rows.iter().map(from_row).collect::<sqlx::Result<Vec<_>>>()?;
        let lease = timestamp_text(now + chrono::Duration::seconds(lease_seconds));
        for sub in &subs {
            sqlx::query("UPDATE subscriptions SET verification_due_at = $1, verification_holder = $2 WHERE id = $3")
                .bind(&lease)
                .bind(&*self.lease_holder)
                .bind(&sub.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if !subs.is_empty() {
            self.subscriptions_changed();
        }
        Ok(subs)
    }

    /// Records the outcome of a verification challenge sent to `url`: success makes a `pending` subscription
    /// `active` (its held deliveries, the ping first, then flow); failure keeps it `pending` with the reason
    /// shown. Only while the subscription still has that URL: an echo from a URL it has just left verifies
    /// nothing.
    pub async fn record_verification(&self, id: &str, url: &str, outcome: Result<(), String>) -> sqlx::Result<()> {
        let (mut tx, _guard) = self.begin_write().await?;
        let now = now_text();
        match outcome {
            Ok(()) => {
                sqlx::query(
                    "UPDATE subscriptions SET status = 'active', verified_at = $1, verification_error = NULL, \
                     verification_due_at = NULL, last_success_at = $1, updated_at = $1 \
                     WHERE id = $2 AND status = 'pending' AND url = $3",
                )
                .bind(&now)
                .bind(id)
                .bind(url)
                .execute(&mut *tx)
                .await?;
            }
            Err(reason) => {
                sqlx::query(
                    "UPDATE subscriptions SET verification_error = $1, verification_due_at = NULL, \
                     last_failure_at = $2, updated_at = $2 WHERE id = $3 AND status = 'pending' AND url = $4",
                )
                .bind(&reason)
                .bind(&now)
                .bind(id)
                .bind(url)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        self.subscriptions_changed();
        self.notify_changed();
        Ok(())
    }

    /// Puts a subscription back to `pending` and asks the worker to send it a challenge now.
    pub async fn request_verification(&self, id: &str) -> sqlx::Result<()> {
        let (mut tx, _guard) = self.begin_write().await?;
        let now = now_text();
        sqlx::query(
            "UPDATE subscriptions SET status = 'pending', verification_due_at = $1, verification_error = NULL, \
             verified_at = NULL, disabled_reason = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(&now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.subscriptions_changed();
        self.notify_changed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{
        Backend, DUE_WINDOW, Db, ORDERED_HEADS, UNORDERED_CLAIMABLE, claim_of_sql, claim_sql, delivery_id,
        earliest_by_subscription_sql, front_sql, next_due_sql,
    };

    /// The worker's two reads of due deliveries go through the index on the claimable time (migration 14),
    /// busy subscriptions left out or not: without it, each read every round went through all open deliveries.
    /// Ordered subscriptions' queues are read a head per subscription, never delivery by delivery.
    #[tokio::test]
    async fn due_deliveries_are_found_through_the_claimable_time_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("plan.db").display())).await.expect("connect");
        let plan_of = |sql: String| {
            let db = &db;
            async move {
                let plan: Vec<(i64, i64, i64, String)> =
                    sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}")).fetch_all(&db.pool).await.expect("plan");
                plan.into_iter().map(|(.., detail)| detail).collect::<Vec<String>>()
            }
        };
        for (busy, window) in [(0, 1), (2, DUE_WINDOW)] {
            for sql in [next_due_sql(busy, window), claim_sql(Backend::Sqlite, UNORDERED_CLAIMABLE, 0)] {
                let plan = plan_of(sql.clone()).await;
                let uses = |index: &str| plan.iter().any(|detail| detail.contains(index));
                assert!(uses("deliveries_unordered_claimable_at"), "{sql}\n{plan:#?}");
            }
            for sql in [next_due_sql(busy, window), claim_sql(Backend::Sqlite, ORDERED_HEADS, busy)] {
                let plan = plan_of(sql.clone()).await;
                let uses = |index: &str| plan.iter().any(|detail| detail.contains(index));
                assert!(uses("deliveries_in_order_queue"), "{sql}\n{plan:#?}");
                assert!(uses("subscriptions_receiving_in_order"), "{sql}\n{plan:#?}");
            }
        }
        // Past busy subscriptions, each other one is read through its own range of open deliveries.
        for sql in [earliest_by_subscription_sql(2), claim_of_sql(Backend::Sqlite, 3)] {
            let plan = plan_of(sql.clone()).await;
            let uses = |index: &str| plan.iter().any(|detail| detail.contains(index));
            assert!(uses("SEARCH d USING INDEX deliveries_open_by_subscription_claimable_at"), "{sql}\n{plan:#?}");
        }
        // Nor does it read every subscription for the next digest or challenge (hundreds of partners).
        let plan = plan_of(next_due_sql(0, 1)).await;
        for index in ["subscriptions_digests_due", "subscriptions_verifications_due"] {
            assert!(plan.iter().any(|detail| detail.contains(index)), "{index}\n{plan:#?}");
        }
        assert!(!plan.iter().any(|detail| detail.starts_with("SCAN subscriptions")), "{plan:#?}");
        // No read of deliveries goes through the table or its history by subscription.
        for sql in [
            next_due_sql(0, 1),
            next_due_sql(2, DUE_WINDOW),
            claim_sql(Backend::Sqlite, ORDERED_HEADS, 0),
            earliest_by_subscription_sql(2),
            claim_of_sql(Backend::Sqlite, 3),
        ] {
            let plan = plan_of(sql).await;
            let whole = |detail: &&String| {
                let scanned = detail.strip_prefix("SCAN ").and_then(|rest| rest.split(' ').next());
                matches!(scanned, Some("d" | "e")) && !detail.contains("claimable_at")
            };
            assert!(!plan.iter().any(|detail| whole(&detail)), "{plan:#?}");
        }
        db.close().await;
    }

    /// Active subscriptions `sub_1` to `sub_{count}` of one tenant, the first `ordered` of them ordered.
    async fn insert_subscriptions(db: &Db, count: i64, ordered: i64) {
        sqlx::query(
            "INSERT INTO subscriptions (id, tenant, url, events, payload, filter, secret, signing, \
             max_concurrency, ordered, headers, metadata, verify, status, created_at, updated_at) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
             SELECT 'sub_' || i, 't', 'http://127.0.0.1:9/', '[\"*\"]', 'full', '{}', 'whsec_x', 'hmac', 4, \
             CASE WHEN i <= $2 THEN 1 ELSE 0 END, '{}', '{}', 0, 'active', '2026-01-01', '2026-01-01' FROM n",
        )
        .bind(count)
        .bind(ordered)
        .execute(&db.pool)
        .await
        .expect("subscriptions");
    }

    /// `sql` run for real under `EXPLAIN ANALYZE` in a transaction rolled back after: the plan as executed, with
    /// rows counted. A claim (`UPDATE`) gets a lease and `now` first, then `subscriptions`, then a limit of 100 and
    /// a lease holder; a read gets `subscriptions` alone. Prints the execution time (the figures BENCHMARKS.md
    /// quotes, `-- --nocapture`), and the plan with `HSDA_SHOW_PLANS` set.
    async fn explain_analyze(db: &Db, sql: &str, subscriptions: &[String]) -> String {
        let mut conn = db.pool.acquire().await.expect("connection");
        let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
        let explain = format!("EXPLAIN (ANALYZE, FORMAT TEXT) {sql}");
        let mut query = sqlx::query_scalar::<_, String>(&explain);
        let claim = sql.starts_with("UPDATE");
        if claim {
            query = query.bind("2999-01-01").bind("2027-01-01");
        }
        for id in subscriptions {
            query = query.bind(id);
        }
        if claim {
            query = query.bind(100i64).bind("prc_test");
        }
        let plan = query.fetch_all(&mut *tx).await.expect("explain").join("\n");
        tx.rollback().await.expect("rollback");
        let took = plan.lines().find(|l| l.trim_start().starts_with("Execution Time")).unwrap_or_default();
        eprintln!("{took}: {}", &sql[..sql.len().min(160)]);
        if std::env::var_os("HSDA_SHOW_PLANS").is_some() {
            eprintln!("{plan}");
        }
        plan
    }

    /// On PostgreSQL, with an ordered subscription's backlog of thousands of deliveries beside a long history
    /// (the planner's statistics taken), a claim reads the head of the queue through its index: it used to
    /// test every open delivery against all earlier ones, each a scan of the table (seconds per claim).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ordered_backlog_is_claimed_from_its_head_on_postgres() {
        crate::store::tests::on_fresh_postgres(|url| async move {
            let db = Db::connect(&url).await.expect("connect");
            insert_subscriptions(&db, 20, 2).await;
            // 40 000 deliveries, a seventh finished; the ordered subscriptions' open ones are the backlog.
            sqlx::query(
                "INSERT INTO deliveries (id, subscription_id, tenant, event_id, event_sequence, event_type, \
                 object_id, body, in_order, status, next_attempt_at, created_at, updated_at) \
                 SELECT 'msg_' || n, 'sub_' || (n % 20 + 1), 't', 'evt_' || n, n, 'service.updated', 'x', '{}', \
                 CASE WHEN n % 20 + 1 <= 2 THEN 1 ELSE 0 END, \
                 CASE WHEN n % 7 = 0 THEN 'succeeded' ELSE 'pending' END, \
                 '2026-01-01', '2026-01-01', '2026-01-01' FROM generate_series(1, 40000) n",
            )
            .execute(&db.pool)
            .await
            .expect("deliveries");
            sqlx::query("ANALYZE").execute(&db.pool).await.expect("analyze");
            for sql in [
                claim_sql(Backend::Postgres, ORDERED_HEADS, 0),
                claim_sql(Backend::Postgres, UNORDERED_CLAIMABLE, 0),
                claim_sql(Backend::Postgres, ORDERED_HEADS, 1),
                next_due_sql(0, 1),
            ] {
                let busy = if sql.contains("NOT IN") { vec!["sub_3".to_string()] } else { Vec::new() };
                let plan = explain_analyze(&db, &sql, &busy).await;
                assert!(!plan.contains("Seq Scan on deliveries"), "{sql}\n{plan}");
                if sql.contains("e.in_order = 1") {
                    assert!(plan.contains("deliveries_in_order_queue"), "{sql}\n{plan}");
                }
            }
            // And the claim takes the head of each ordered queue: one delivery each, the earliest.
            let claimed = db.claim_due(100, 30, &[]).await.expect("claim");
            let mut heads: Vec<&str> = claimed
                .iter()
                .filter(|d| ["sub_1", "sub_2"].contains(&d.subscription_id.as_str()))
                .map(|d| d.id.as_str())
                .collect();
            heads.sort_unstable();
            assert_eq!(heads, ["msg_1", "msg_20"], "{claimed:?}");
            db.close().await;
        })
        .await;
    }

    /// A subscription whose lane is full (its target hangs) with 20 000 deliveries due ([`insert_busy_backlog`]),
    /// beside 60 others, most with fewer than a claim takes: what is due next, and the claims, leave the
    /// backlog to it and find all the others' (a claim is not cut short at a few subscriptions), never one
    /// twice. Run on both stores.
    async fn a_busy_backlog_is_passed_over(db: &Db) {
        let busy = ["sub_1".to_string()];
        // sub_61's ten come before the backlog: the window holds both kinds.
        assert_eq!(db.next_due(&[]).await.expect("next due").as_deref(), Some("2025-12-31T00:00:00Z"));
        assert_eq!(db.next_due(&busy).await.expect("next due").as_deref(), Some("2025-12-31T00:00:00Z"));
        let claimed = db.claim_due(256, 30, &busy).await.expect("claim");
        assert_eq!(claimed.len(), 256, "a full claim past the busy backlog");
        assert!(claimed.iter().all(|d| d.subscription_id != "sub_1"), "{claimed:?}");
        let of = |d: &&super::Delivery| d.subscription_id.trim_start_matches("sub_").parse::<u32>().unwrap_or(0);
        assert_eq!(claimed.iter().filter(|d| of(d) == 61).count(), 10, "the earliest first");
        assert_eq!(claimed.iter().filter(|d| (21..=60).contains(&of(d))).count(), 40, "one of each of 40");
        // Claimed ones are leased: the rest are found on the next claims (the window now holds the backlog
        // alone), never one twice, until none is left.
        let mut seen: std::collections::HashSet<String> = claimed.into_iter().map(|d| d.id).collect();
        assert_eq!(db.next_due(&busy).await.expect("next due").as_deref(), Some("2026-01-03T00:00:00Z"));
        for _ in 0..20 {
            let more = db.claim_due(100, 30, &busy).await.expect("claim");
            if more.is_empty() {
                break;
            }
            assert!(more.iter().all(|d| d.subscription_id != "sub_1" && seen.insert(d.id.clone())), "{more:?}");
        }
        assert_eq!(seen.len(), 1950, "every open delivery of the 60 others");
        // Only the busy backlog is due now: the others' next is when their leases run out; without a busy list
        // the backlog is claimed.
        let next = db.next_due(&busy).await.expect("next due").expect("leases run out");
        assert!(next > crate::store::now_text(), "{next}");
        let claimed = db.claim_due(10, 30, &[]).await.expect("claim");
        assert!(claimed.len() == 10 && claimed.iter().all(|d| d.subscription_id == "sub_1"), "{claimed:?}");
    }

    /// [`a_busy_backlog_is_passed_over`]'s subscriptions and deliveries, statistics taken: sub_1's 20 000 due on
    /// 2026-01-01; sub_2 to sub_20 about 100 each on 2026-01-03 (1 900 open, the rest finished); sub_21 to sub_60
    /// one each on 2026-01-02; sub_61 ten on 2025-12-31.
    async fn insert_busy_backlog(db: &Db) {
        insert_subscriptions(db, 61, 0).await;
        sqlx::query(
            "INSERT INTO deliveries (id, subscription_id, tenant, event_id, event_sequence, event_type, \
             object_id, body, in_order, status, next_attempt_at, created_at, updated_at) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 22050) \
             SELECT 'msg_' || i, CASE WHEN i <= 20000 THEN 'sub_1' WHEN i <= 22000 THEN 'sub_' || (i % 19 + 2) \
             WHEN i <= 22040 THEN 'sub_' || (i - 22000 + 20) ELSE 'sub_61' END, 't', \
             'evt_' || i, i, 'service.updated', 'x', '{}', 0, \
             CASE WHEN i > 20000 AND i <= 22000 AND i % 20 = 0 THEN 'succeeded' ELSE 'pending' END, \
             CASE WHEN i <= 20000 THEN '2026-01-01T00:00:00Z' WHEN i <= 22000 THEN '2026-01-03T00:00:00Z' \
             WHEN i <= 22040 THEN '2026-01-02T00:00:00Z' ELSE '2025-12-31T00:00:00Z' END, \
             '2026-01-01', '2026-01-01' FROM n",
        )
        .execute(&db.pool)
        .await
        .expect("deliveries");
        sqlx::query("ANALYZE").execute(&db.pool).await.expect("analyze");
    }

    #[tokio::test]
    async fn a_busy_backlog_is_passed_over_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("busy.db").display())).await.expect("connect");
        insert_busy_backlog(&db).await;
        a_busy_backlog_is_passed_over(&db).await;
        db.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_backlog_is_passed_over_on_postgres() {
        crate::store::tests::on_fresh_postgres(|url| async move {
            let db = Db::connect(&url).await.expect("connect");
            insert_busy_backlog(&db).await;
            // The statements as they run past the backlog, with rows counted: none walks it, the old ones did.
            let busy = vec!["sub_1".to_string()];
            let others: Vec<String> = (2..18).map(|i| format!("sub_{i}")).collect();
            for (sql, subscriptions, walks) in [
                (next_due_sql(1, DUE_WINDOW), &busy, false),
                (front_sql(256), &Vec::new(), false),
                (earliest_by_subscription_sql(1), &busy, false),
                (claim_of_sql(Backend::Postgres, 16), &others, false),
                (claim_sql(Backend::Postgres, UNORDERED_CLAIMABLE, 1), &busy, true),
            ] {
                let plan = explain_analyze(&db, &sql, subscriptions).await;
                // The most rows any step over `deliveries` read: rows returned (times loops) or filtered out.
                let number_after = |line: &str, key: &str| -> u64 {
                    line.split(key).nth(1).and_then(|r| r.split([' ', ')']).next()?.parse().ok()).unwrap_or(0)
                };
                let mut most_read = 0;
                let mut over_deliveries = false;
                for line in plan.lines() {
                    if line.contains("->") || !line.starts_with(' ') {
                        over_deliveries = line.contains(" on deliveries");
                        if over_deliveries {
                            let actual = line.split("(actual").nth(1).unwrap_or_default();
                            most_read = most_read.max(number_after(actual, "rows=") * number_after(actual, "loops="));
                        }
                    } else if over_deliveries && line.contains("Rows Removed by Filter") {
                        most_read = most_read.max(number_after(line, "Rows Removed by Filter: "));
                    }
                }
                assert!(!plan.contains("Seq Scan on deliveries"), "{sql}\n{plan}");
                assert_eq!(most_read >= 20_000, walks, "read {most_read} rows: {sql}\n{plan}");
            }
            a_busy_backlog_is_passed_over(&db).await;
            db.close().await;
        })
        .await;
    }

    /// Two processes claiming past the same busy backlog at once on PostgreSQL: between them every other
    /// subscription's open delivery is claimed, none twice (each re-tests and locks what it chose, skipping what
    /// the other locked).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_claims_past_a_busy_backlog_take_each_delivery_once_on_postgres() {
        crate::store::tests::on_fresh_postgres(|url| async move {
            let first = Db::connect(&url).await.expect("connect");
            insert_busy_backlog(&first).await;
            let second = Db::connect(&url).await.expect("connect");
            let claim_all = |db: Db| async move {
                let busy = ["sub_1".to_string()];
                let mut ids = Vec::new();
                for _ in 0..60 {
                    let claimed = db.claim_due(50, 30, &busy).await.expect("claim");
                    if claimed.is_empty()
                        && db.next_due(&busy).await.expect("next due") > Some(crate::store::now_text())
                    {
                        break;
                    }
                    ids.extend(claimed.into_iter().map(|d| (d.id, d.subscription_id)));
                }
                db.close().await;
                ids
            };
            let (a, b) = tokio::join!(claim_all(first), claim_all(second));
            let all: Vec<&(String, String)> = a.iter().chain(&b).collect();
            let distinct: std::collections::HashSet<&String> = all.iter().map(|(id, _)| id).collect();
            assert_eq!(distinct.len(), all.len(), "no delivery claimed twice");
            assert_eq!(all.len(), 1950, "every open delivery of the 60 others ({} and {})", a.len(), b.len());
            assert!(all.iter().all(|(_, subscription)| subscription != "sub_1"));
        })
        .await;
    }

    #[test]
    fn delivery_ids_are_stable_distinct_and_ordered_by_event() {
        let (sub_a, sub_b) = ("sub_0123456789abcdef0123456789abcdef", "sub_fedcba9876543210fedcba9876543210");
        let first = format!("evt_{}", uuid::Uuid::now_v7().simple());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = format!("evt_{}", uuid::Uuid::now_v7().simple());
        assert_eq!(delivery_id(sub_a, &first), delivery_id(sub_a, &first), "the same pair, the same id");
        assert_ne!(delivery_id(sub_a, &first), delivery_id(sub_b, &first));
        assert_ne!(delivery_id(sub_a, &first), delivery_id(sub_a, &second));
        assert!(delivery_id(sub_b, &first) < delivery_id(sub_a, &second), "later events sort after earlier ones");
        // Ids that are not plain (from elsewhere, odd characters) still map to a stable, header-safe id.
        let odd = delivery_id(sub_a, "evt_with spaces/and;semicolons");
        assert_eq!(odd, delivery_id(sub_a, "evt_with spaces/and;semicolons"));
        assert!(odd.starts_with("msg_") && odd[4..].bytes().all(|b| b.is_ascii_hexdigit()), "{odd}");
    }
}

/// Dispatching in the transaction that appends the events (the group committers), and the hints that let
/// the worker skip a dispatch transaction that would find nothing.
///
/// Why: dispatching afterwards costs the worker a second transaction (and a second WAL flush) per group of
/// writes, and puts it on the path of every change to its subscribers. Done at commit, a change's deliveries
/// are durable with the change itself and go to the worker's lanes the moment the commit returns.
#[derive(Default)]
pub(crate) struct DispatchState {
    settings: Mutex<Option<Arc<CommitDispatch>>>,
    /// Deliveries dispatched at commit, leased to this process, waiting for the worker to take them.
    handed: Mutex<Vec<Delivery>>,
    /// The last event sequence this process appended, and the last one either dispatcher covered.
    appended_through: AtomicI64,
    dispatched_through: AtomicI64,
    /// An ordered subscription's delivery was done with since the worker last asked: the next one in its
    /// queue may be claimed now.
    next_in_order: std::sync::atomic::AtomicBool,
    /// The subscriptions whose lane in this process's worker is full (a hanging target's): their new
    /// deliveries are not leased to this process at dispatch, but wait in the store to be claimed when there
    /// is room (here or in another process). Leased, they all went to the lane in memory: a target that hangs
    /// while the directory changes made it grow without bound.
    full_lanes: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
}

/// What dispatching needs that the store does not know: how thin payloads link back, and the lease.
#[derive(Debug, Clone)]
pub(crate) struct CommitDispatch {
    pub public_url: String,
    pub lease_seconds: i64,
    /// Who the deliveries it leases are leased to ([`Db::lease_holder`]).
    pub lease_holder: String,
    /// The process's subscription snapshot, which a dispatch's own read of the subscriptions renews.
    pub cache: Arc<SubscriptionCache>,
    /// The subscriptions whose lane is full ([`DispatchState::full_lanes`]).
    pub full_lanes: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
}

impl Db {
    /// Lets the group committers dispatch each group's events in the group's own transaction; called by the
    /// webhook worker when it starts (without a worker, events wait in the log for one).
    pub fn dispatch_at_commit(&self, public_url: &str, lease_seconds: i64) {
        let settings = CommitDispatch {
            public_url: public_url.to_string(),
            lease_seconds,
            lease_holder: self.lease_holder.to_string(),
            cache: self.subscription_cache.clone(),
            full_lanes: self.dispatch.full_lanes.clone(),
        };
        self.set_full_lanes(Default::default());
        *self.dispatch.settings.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(settings));
    }

    /// Group commits stop dispatching (a stopping worker would only hold their deliveries until their leases
    /// ran out): their events wait at the cursor for the next dispatcher, here or in another process.
    pub fn stop_dispatch_at_commit(&self) {
        *self.dispatch.settings.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.set_full_lanes(Default::default());
    }

    pub(crate) fn commit_dispatch(&self) -> Option<Arc<CommitDispatch>> {
        self.dispatch.settings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records that this process committed events up to `last`.
    pub(crate) fn events_appended(&self, last: i64) {
        self.dispatch.appended_through.fetch_max(last, Ordering::AcqRel);
    }

    /// The last event sequence this process appended (0 before its first): long polls of the feed look again
    /// only past it.
    pub fn appended_through(&self) -> i64 {
        self.dispatch.appended_through.load(Ordering::Acquire)
    }

    /// Whether this process committed events no dispatcher has covered yet. Only a hint: events of other
    /// processes do not show here (the worker dispatches on its timer too).
    pub(crate) fn dispatch_pending(&self) -> bool {
        self.dispatch.appended_through.load(Ordering::Acquire)
            > self.dispatch.dispatched_through.load(Ordering::Acquire)
    }

    /// Hands deliveries dispatched at commit (covering events up to `last`) to the worker.
    pub(crate) fn hand_over(&self, last: i64, deliveries: Vec<Delivery>) {
        if !deliveries.is_empty() {
            self.dispatch.handed.lock().unwrap_or_else(|p| p.into_inner()).extend(deliveries);
        }
        self.dispatch.dispatched_through.fetch_max(last, Ordering::AcqRel);
    }

    /// The deliveries dispatched at commit since the last call.
    pub(crate) fn take_handed_over(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.dispatch.handed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether an ordered subscription's delivery was done with (here) since the last call: its next one
    /// waits for a claim.
    pub(crate) fn take_next_in_order(&self) -> bool {
        self.dispatch.next_in_order.swap(false, Ordering::AcqRel)
    }

    /// Whether dispatch leaves `subscription`'s new deliveries in the store (its lane was full when last told).
    pub(crate) fn is_full_lane(&self, subscription: &str) -> bool {
        self.dispatch.full_lanes.read().unwrap_or_else(|p| p.into_inner()).contains(subscription)
    }

    /// Whether `subscription`'s lane is full now (see [`Db::set_full_lanes`]), told as it changes.
    pub(crate) fn set_full_lane(&self, subscription: &str, full: bool) {
        if self.is_full_lane(subscription) != full {
            let mut current = self.dispatch.full_lanes.write().unwrap_or_else(|p| p.into_inner());
            match full {
                true => drop(current.insert(subscription.to_string())),
                false => drop(current.remove(subscription)),
            }
        }
    }

    /// The subscriptions whose lane in this process is full now: dispatch stops leasing their new deliveries
    /// to this process ([`DispatchState::full_lanes`]).
    pub(crate) fn set_full_lanes(&self, full: std::collections::HashSet<String>) {
        let mut current = self.dispatch.full_lanes.write().unwrap_or_else(|p| p.into_inner());
        if *current != full {
            *current = full;
        }
    }
}

/// Dispatches `events`, just appended in this transaction, as [`Db::dispatch_batch`] would: one delivery per
/// matching immediate subscription, the cursor moved past them. Does nothing (returns `None`) unless the
/// cursor stands right before them: older undispatched events are the worker's, in order. Returns the last
/// sequence covered and the deliveries leased to this process.
///
/// `subscriptions` is the caller's exact snapshot (SQLite, under the write lock); without one they are read
/// here, under the cursor's row lock, as the worker's dispatcher does (PostgreSQL: other processes change
/// them too).
pub(crate) async fn dispatch_appended(
    conn: &mut Conn<'_>,
    events: &[Event],
    subscriptions: Option<&HashMap<String, Subscription>>,
    settings: &CommitDispatch,
) -> sqlx::Result<Option<(i64, Vec<Delivery>)>> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else { return Ok(None) };
    // PostgreSQL: take the cursor's row lock only if it is free. Waiting for it here, with the event counter
    // held, closes a deadlock cycle: the worker's dispatcher (holding the cursor) can wait on an attempt
    // recorder's delivery rows, and the recorder waits for the event counter to append `webhook.*` events.
    // A busy cursor leaves these events to the worker. SQLite: this committer holds the only write lock.
    let lock = match conn {
        Conn::Pooled(_) => "SELECT value FROM counters WHERE name = 'dispatch_cursor' FOR UPDATE SKIP LOCKED",
        Conn::Direct(_) => "SELECT value FROM counters WHERE name = 'dispatch_cursor'",
    };
    let Some((cursor,)): Option<(i64,)> = conn.fetch_optional(lock, &[]).await? else { return Ok(None) };
    if cursor != first.sequence - 1 {
        return Ok(None);
    }
    // The deliveries are dated when the subscriptions are read (before), so that the worker, which signs them
    // with its snapshot, finds that read (kept as its snapshot) no older than they are.
    let now = now_text();
    let read;
    let subscriptions = match (subscriptions, &mut *conn) {
        (Some(subscriptions), _) => subscriptions,
        (None, Conn::Pooled(pooled)) => {
            // Committed rows only (this transaction changes no subscription): a snapshot like any other.
            read = current_subscriptions(&settings.cache, pooled, &now).await?;
            &*read
        }
        (None, Conn::Direct(_)) => return Ok(None),
    };
    let mut subs: Vec<&Subscription> =
        subscriptions.values().filter(|s| s.status != "disabled" && s.schedule.is_none()).collect();
    subs.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    let lease = timestamp_text(chrono::Utc::now() + chrono::Duration::seconds(settings.lease_seconds));
    let deliveries = {
        let full = settings.full_lanes.read().unwrap_or_else(|p| p.into_inner());
        fan_out(events, &subs, &settings.public_url, &now, &lease, &full)
    };
    let created = insert_new_deliveries(conn, deliveries, &now, &settings.lease_holder).await?;
    conn.execute("UPDATE counters SET value = $1 WHERE name = 'dispatch_cursor'", &[last.sequence.into()]).await?;
    Ok(Some((last.sequence, created.into_iter().filter(|d| d.lease_until.is_some()).collect())))
}
