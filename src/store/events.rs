//! The event log: appended only inside a write transaction ([`append_events`]), read by the pull feed,
//! the webhook dispatcher and followers. Sequence numbers come from one counter row that each write
//! transaction increments just before it commits, so they are gap-free and commit in order: a reader that
//! has seen sequence N will never later find an event below N appear.

use std::collections::BTreeSet;

use super::sql::{Arg, Conn};
use serde::Serialize;
use serde_json::Value;

use super::Db;

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub object: &'static str,
    pub object_id: String,
    pub data: Value,
    /// `(facet, value)` pairs subscriptions filter on: the object's own ids and those of its roots.
    pub facets: BTreeSet<(String, String)>,
    /// A document's `updated` event that a change inside it caused, its own row unchanged.
    pub changed_inside_only: bool,
}

/// An event as stored and served.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub id: String,
    pub sequence: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: String,
    pub object: String,
    pub object_id: String,
    pub origin: String,
    /// See [`NewEvent::changed_inside_only`]: a follower takes no own fields of the document from it.
    pub changed_inside_only: bool,
    pub data: Value,
    #[serde(skip)]
    pub facets: Vec<(String, String)>,
}

/// What [`append_events`] appended: the sequences it used and the ids it gave, in order.
pub(crate) struct Appended {
    pub first: i64,
    pub last: i64,
    pub ids: Vec<String>,
}

impl Appended {
    /// What appending no events gives (and costs no statement).
    fn nothing() -> Appended {
        Appended { first: 0, last: -1, ids: Vec::new() }
    }

    /// The appended events as the log now holds them (`events` as given to [`append_events`]).
    pub(crate) fn into_events(self, events: Vec<NewEvent>, origin: &str, occurred_at: &str) -> Vec<Event> {
        events
            .into_iter()
            .zip(self.ids)
            .zip(self.first..)
            .map(|((e, id), sequence)| Event {
                id,
                sequence,
                event_type: e.event_type,
                occurred_at: occurred_at.to_string(),
                object: e.object.to_string(),
                object_id: e.object_id,
                origin: origin.to_string(),
                changed_inside_only: e.changed_inside_only,
                data: e.data,
                facets: e.facets.into_iter().collect(),
            })
            .collect()
    }
}

/// The events of one write (or of one batch of attempt results): they share an origin and a time.
pub(crate) struct Batch<'a> {
    pub events: &'a [NewEvent],
    pub origin: &'a str,
    pub occurred_at: &'a str,
}

/// Appends events with the next sequence numbers.
pub(crate) async fn append_events(
    conn: &mut Conn<'_>,
    events: &[NewEvent],
    origin: &str,
    occurred_at: &str,
) -> sqlx::Result<Appended> {
    let batch = Batch { events, origin, occurred_at };
    let mut appended = append_batches(conn, std::slice::from_ref(&batch)).await?;
    Ok(appended.pop().unwrap_or_else(Appended::nothing))
}

/// Appends the events of several writes, in order, with the next sequence numbers: one counter update and
/// one multi-row insert per 50 events for the whole group, however many writes it holds. (A group commit
/// used to pay two statements per write here, every one of them while holding the counter row.)
pub(crate) async fn append_batches(conn: &mut Conn<'_>, batches: &[Batch<'_>]) -> sqlx::Result<Vec<Appended>> {
    let count: usize = batches.iter().map(|b| b.events.len()).sum();
    if count == 0 {
        return Ok(batches.iter().map(|_| Appended::nothing()).collect());
    }
    // Taking the counter row last keeps the time it is locked (PostgreSQL) short.
    let (last,): (i64,) = conn
        .fetch_one(
            "UPDATE counters SET value = value + $1 WHERE name = 'event_sequence' RETURNING value",
            &[(count as i64).into()],
        )
        .await?;
    let first = last - count as i64 + 1;
    // (batch, event) in log order, each with its id and texts made first: the arguments only borrow them.
    let rows: Vec<(&Batch, &NewEvent, [String; 3])> = batches
        .iter()
        .flat_map(|batch| batch.events.iter().map(move |event| (batch, event)))
        .map(|(batch, event)| {
            let facets: Vec<[&str; 2]> = event.facets.iter().map(|(k, v)| [k.as_str(), v.as_str()]).collect();
            let texts = [
                // Time-ordered (UUIDv7): a new id lands on the id index's last page, not a random one.
                format!("evt_{}", uuid::Uuid::now_v7().simple()),
                event.data.to_string(),
                serde_json::to_string(&facets).unwrap_or_else(|_| "[]".into()),
            ];
            (batch, event, texts)
        })
        .collect();
    let mut sequence = first;
    for chunk in rows.chunks(50) {
        let values: Vec<String> =
            super::row_placeholders(1, chunk.len(), 10).into_iter().map(|p| format!("({p})")).collect();
        let sql = format!(
            "INSERT INTO events (occurred_at, origin, sequence, id, type, object, object_id, data, facets, \
             changed_inside_only) VALUES {}",
            values.join(", ")
        );
        let mut args: Vec<Arg> = Vec::with_capacity(10 * chunk.len());
        for (batch, event, [id, data, facets]) in chunk {
            args.extend([
                Arg::from(batch.occurred_at),
                Arg::from(batch.origin),
                Arg::from(sequence),
                id.into(),
                event.event_type.as_str().into(),
                event.object.into(),
                event.object_id.as_str().into(),
                data.into(),
                facets.into(),
                i64::from(event.changed_inside_only).into(),
            ]);
            sequence += 1;
        }
        conn.execute(&sql, &args).await?;
    }
    let mut ids = rows.into_iter().map(|(_, _, [id, _, _])| id);
    let mut next = first;
    Ok(batches
        .iter()
        .map(|batch| {
            let n = batch.events.len() as i64;
            let appended = Appended { first: next, last: next + n - 1, ids: ids.by_ref().take(n as usize).collect() };
            next += n;
            appended
        })
        .collect())
}

type EventRow = (i64, String, String, String, String, String, String, String, String, i64);

/// The columns [`event_from_any_row`] reads, in its order.
pub(crate) const EVENT_COLUMNS: &str =
    "sequence, id, type, object, object_id, occurred_at, origin, data, facets, changed_inside_only";

/// An event from a row of `SELECT {EVENT_COLUMNS}`.
pub(crate) fn event_from_any_row(row: &sqlx::any::AnyRow) -> sqlx::Result<Event> {
    use sqlx::Row;
    Ok(from_row((
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get(6)?,
        row.try_get(7)?,
        row.try_get(8)?,
        row.try_get(9)?,
    )))
}

fn from_row(row: EventRow) -> Event {
    let (sequence, id, event_type, object, object_id, occurred_at, origin, data, facets, changed_inside_only) = row;
    let facets: Vec<[String; 2]> = serde_json::from_str(&facets).unwrap_or_default();
    Event {
        id,
        sequence,
        event_type,
        occurred_at,
        object,
        object_id,
        origin,
        changed_inside_only: changed_inside_only != 0,
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
        facets: facets.into_iter().map(|[k, v]| (k, v)).collect(),
    }
}

/// A filter on event types: exact names, `table.*` or `*`.
#[derive(Debug, Clone, Default)]
pub struct TypeFilter(pub Vec<String>);

impl TypeFilter {
    pub fn matches(&self, event_type: &str) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|p| {
                p == "*"
                    || p == event_type
                    || p.strip_suffix(".*").is_some_and(|t| event_type.split('.').next() == Some(t))
            })
    }
}

impl Db {
    /// Events after `after`, oldest first, at most `limit`, of the types `types` matches.
    pub async fn events_after(&self, after: i64, types: &TypeFilter, limit: usize) -> sqlx::Result<Vec<Event>> {
        Ok(self.events_scanned(after, types, limit).await?.0)
    }

    /// [`Db::events_after`], and the last sequence read: where the next page starts, past events the type
    /// filter left out (a filter that matches nothing still moves the reader on to the head of the log).
    pub async fn events_scanned(
        &self,
        after: i64,
        types: &TypeFilter,
        limit: usize,
    ) -> sqlx::Result<(Vec<Event>, i64)> {
        let mut out = Vec::with_capacity(limit.min(1000));
        let mut cursor = after;
        // Type filters are applied here rather than in SQL so that patterns stay one definition; pages are
        // read in batches until `limit` matches or the log ends.
        loop {
            let batch: Vec<EventRow> = sqlx::query_as(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2"
            ))
            .bind(cursor)
            .bind(500_i64)
            .fetch_all(&self.pool)
            .await?;
            let done = batch.len() < 500;
            for row in batch {
                cursor = row.0;
                let event = from_row(row);
                if types.matches(&event.event_type) {
                    out.push(event);
                    if out.len() >= limit {
                        return Ok((out, cursor));
                    }
                }
            }
            if done {
                return Ok((out, cursor));
            }
        }
    }

    /// What `GET /metrics` shows of the store: the newest event, open deliveries, subscriptions by status,
    /// this process's group commits and whether writes fail with a fault.
    pub async fn store_figures(&self) -> sqlx::Result<crate::metrics::StoreFigures> {
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'retrying')")
            .fetch_one(&self.pool)
            .await?;
        let subscriptions: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM subscriptions GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
                .await?;
        Ok(crate::metrics::StoreFigures {
            last_event_sequence: self.last_sequence().await?,
            open_deliveries: open,
            subscriptions,
            group_commits: self.group_commit_stats(),
            group_reruns: self.group_commit_reruns(),
            degraded: self.condition().snapshot().0.is_some(),
        })
    }

    /// The sequence of the newest event (0 when the log is empty).
    pub async fn last_sequence(&self) -> sqlx::Result<i64> {
        let value: Option<i64> = sqlx::query_scalar("SELECT MAX(sequence) FROM events").fetch_one(&self.pool).await?;
        Ok(value.unwrap_or(0))
    }

    pub async fn event(&self, id: &str) -> sqlx::Result<Option<Event>> {
        let row: Option<EventRow> = sqlx::query_as(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(from_row))
    }
}

#[cfg(test)]
mod tests {
    use super::TypeFilter;

    #[test]
    fn type_filters_match_exact_wildcard_and_table() {
        let f = TypeFilter(vec!["service.*".into(), "phone.deleted".into()]);
        assert!(f.matches("service.updated"));
        assert!(f.matches("phone.deleted"));
        assert!(!f.matches("phone.updated"));
        assert!(!f.matches("service_area.updated"));
        assert!(TypeFilter(vec!["*".into()]).matches("anything.created"));
        assert!(TypeFilter::default().matches("x.y"));
    }
}
