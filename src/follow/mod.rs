//! Following another hsda: every change in a source directory's event log is applied here, in order, exactly
//! once, so that many directories can share one body of data without polling each other's lists.
//!
//! The feed is the whole protocol. `GET {source}/events?after=N` gives the source's changes in commit order
//! with gap-free sequence numbers; each event carries the row as it stood right after that change. So a
//! follower that applies every `{table}.created|updated|deleted` event, row by row, in sequence order ends with
//! the source's rows, whatever it missed while it was away: nothing is pushed that the pull does not repair.
//! Once caught up the follower asks with `wait=`, and the source answers as soon as a change commits (a long
//! poll): changes arrive within milliseconds without an inbound connection, a subscription, or a public URL
//! on the follower's side.
//!
//! Only a row's own fields are applied ([`own_fields`]): a change to a phone is the phone's event, and the
//! `service.updated` it causes says `changed_inside_only` and is passed over (its own fields are the service's
//! as the source had them: applied, they could take back a newer change made here or at another source). Each
//! of the source's writes (its events share an origin and a time) is applied as one write here, with the
//! source's time and the origin it carries, and moves the source's cursor in the same transaction
//! ([`crate::store::write::FollowMark`]). The follower's own events then tell its subscribers (and its own
//! followers) of the change; an event whose origin is this directory is its own change coming back (two
//! directories following each other) and is skipped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::hsds::catalog::{self, Table};
use crate::hsds::document;
use crate::store::Db;
use crate::store::follow::FollowCursor;
use crate::store::write::{FollowMark, Op, WriteError, WriteOptions};

/// Events asked for per page of the source's feed (the feed's own maximum).
const PAGE: usize = 1000;
/// How long a caught-up follower's request waits at the source for the next change.
const WAIT_SECONDS: u64 = 25;
/// A caught-up follower whose source answered "nothing new" at once asks again no sooner than this.
const NO_SOONER_THAN: Duration = Duration::from_secs(1);
/// Pauses after a failure grow to this.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// `url` as a source's base URL: http(s), with a host, no query or fragment, no trailing `/`.
/// The URL is normalized (`HTTP://Host:80/` is `http://host`): a source's cursor is stored under it.
pub fn source_url(url: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("{url} is not a URL: {e}"))?;
    anyhow::ensure!(matches!(parsed.scheme(), "http" | "https"), "{url}: only http and https sources can be followed");
    anyhow::ensure!(parsed.host_str().is_some_and(|h| !h.is_empty()), "{url} names no host");
    anyhow::ensure!(parsed.query().is_none() && parsed.fragment().is_none(), "{url}: give the base URL alone");
    // It is shown (`GET /follow`, logs) and stored: a password in it would be too. Keys go in `follow_key`.
    anyhow::ensure!(
        parsed.username().is_empty() && parsed.password().is_none(),
        "{url}: no user name or password in the URL (give a key with --follow-key)"
    );
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// Where following a source stands.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Starting,
    /// Pages of changes are waiting at the source.
    CatchingUp,
    /// Caught up, waiting for the next change.
    Following,
    /// The last request or write failed (see `last_error`); retried with growing pauses.
    Failing,
    /// Another process on this database applied the changes first (or, in `GET /follow`, a stored cursor of
    /// a source this process does not follow).
    Elsewhere,
}

/// How following one source goes, as `GET /follow` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceStatus {
    pub source: String,
    pub state: State,
    /// The last sequence of the source's log applied here.
    pub after_sequence: i64,
    /// Events of the source applied by this process since it started (including those that changed nothing).
    pub events_applied: u64,
    /// When the source last answered.
    pub last_contact_at: Option<String>,
    /// The last failure, kept after the follower recovered (`state` says how it goes now).
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// The state of every source this process follows, shared with the HTTP API.
#[derive(Clone, Default)]
pub struct Following {
    sources: Arc<Mutex<BTreeMap<String, SourceStatus>>>,
}

impl SourceStatus {
    fn new(source: String, state: State, after_sequence: i64) -> SourceStatus {
        SourceStatus {
            source,
            state,
            after_sequence,
            events_applied: 0,
            last_contact_at: None,
            last_error: None,
            last_error_at: None,
        }
    }
}

impl Following {
    /// Every followed source's status, by URL, with the cursors `stored` in the database: a source another
    /// process follows (on a shared PostgreSQL database), or one no longer configured, shows with its stored
    /// cursor and state `elsewhere`; one this process follows, with the further of its own and the stored.
    pub fn statuses(&self, stored: Vec<FollowCursor>) -> Vec<SourceStatus> {
        let mut sources: Vec<SourceStatus> =
            self.sources.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for cursor in stored {
            match sources.iter_mut().find(|s| s.source == cursor.source) {
                Some(status) => status.after_sequence = status.after_sequence.max(cursor.after_sequence),
                None => sources.push(SourceStatus::new(cursor.source, State::Elsewhere, cursor.after_sequence)),
            }
        }
        sources
    }

    fn update(&self, source: &str, change: impl FnOnce(&mut SourceStatus)) {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let status = sources
            .entry(source.to_string())
            .or_insert_with(|| SourceStatus::new(source.to_string(), State::Starting, 0));
        change(status);
    }

    fn failed(&self, source: &str, error: &str) {
        tracing::warn!(source, error, "following a directory failed; trying again");
        self.update(source, |s| {
            s.state = State::Failing;
            s.last_error = Some(error.to_string());
            s.last_error_at = Some(crate::store::now_text());
        });
    }
}

/// Starts following each of `sources` (until `stop`); their progress shows in `following`.
pub fn start(
    db: &Db,
    sources: &[String],
    key: Option<&str>,
    following: &Following,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("hsda/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(WAIT_SECONDS + 30))
        // A source's feed is where the operator said: a redirect elsewhere (with the key) is not followed.
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    Ok(sources
        .iter()
        .map(|source| {
            following.update(source, |_| {});
            let source = Source {
                db: db.clone(),
                client: client.clone(),
                url: source.clone(),
                key: key.map(str::to_string),
                following: following.clone(),
            };
            tokio::spawn(source.follow(stop.clone()))
        })
        .collect())
}

struct Source {
    db: Db,
    client: reqwest::Client,
    url: String,
    key: Option<String>,
    following: Following,
}

/// One page of a source's feed.
#[derive(Debug, Deserialize)]
struct Page {
    events: Vec<FeedEvent>,
    next_after: i64,
}

/// An event as the feed serves it (a stand-in for another tenant's operational event has only some fields).
#[derive(Debug, Deserialize)]
struct FeedEvent {
    sequence: i64,
    #[serde(rename = "type")]
    event_type: String,
    occurred_at: Option<String>,
    object: Option<String>,
    object_id: Option<String>,
    origin: Option<String>,
    /// A document's `updated` event caused by a change inside it (absent from older hsda's feeds: false).
    #[serde(default)]
    changed_inside_only: Option<bool>,
    data: Option<Value>,
}

/// Why a page was not applied whole (and the follower reads the cursor again).
enum Halt {
    /// Another process moved the cursor (it follows the same source): read it again.
    Moved,
    Failed(String),
}

impl Source {
    async fn follow(self, stop: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        let mut caught_up = false;
        while !stop.is_cancelled() {
            let asked = tokio::time::Instant::now();
            let mut waited = false;
            let outcome = async {
                let after = self.db.follow_cursor(&self.url).await.map_err(|e| Halt::Failed(e.to_string()))?;
                let wait = if caught_up { WAIT_SECONDS } else { 0 };
                let page = tokio::select! {
                    _ = stop.cancelled() => return Ok(true),
                    page = self.fetch(after, wait) => page.map_err(Halt::Failed)?,
                };
                waited = wait > 0 && page.events.is_empty();
                caught_up = page.events.len() < PAGE;
                self.apply(after, page, &stop).await?;
                Ok(caught_up)
            }
            .await;
            let pause = match outcome {
                Ok(caught_up) => {
                    backoff = Duration::from_secs(1);
                    self.following.update(&self.url, |s| {
                        s.state = if caught_up { State::Following } else { State::CatchingUp };
                        s.last_contact_at = Some(crate::store::now_text());
                    });
                    // Nothing new, answered at once: a source that does not wait (an older hsda ignores `wait`,
                    // a proxy may cut it short) must not be asked again and again without a pause.
                    if !waited || asked.elapsed() >= NO_SOONER_THAN {
                        continue;
                    }
                    NO_SOONER_THAN
                }
                Err(Halt::Moved) => {
                    // Another process (on this PostgreSQL database) applied these changes first.
                    self.following.update(&self.url, |s| {
                        s.state = State::Elsewhere;
                        s.last_contact_at = Some(crate::store::now_text());
                    });
                    Duration::from_millis(100)
                }
                Err(Halt::Failed(error)) => {
                    caught_up = false;
                    self.following.failed(&self.url, &error);
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    pause
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The source's events after `after`, waiting up to `wait` seconds there for one if there are none yet.
    async fn fetch(&self, after: i64, wait: u64) -> Result<Page, String> {
        let url = format!("{}/events?after={after}&limit={PAGE}&wait={wait}", self.url);
        let mut request = self.client.get(&url);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| format!("GET {url}: {}", crate::webhook::client::chain(&e)))?;
        // It answered, whatever it said.
        self.following.update(&self.url, |s| s.last_contact_at = Some(crate::store::now_text()));
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let detail = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| Some(v.get("detail")?.as_str()?.to_string()))
                .unwrap_or(body)
                .chars()
                .take(300)
                .collect::<String>();
            return Err(format!("GET {url}: {status}: {detail}"));
        }
        response.json().await.map_err(|e| format!("GET {url}: the answer is not a page of events: {e}"))
    }

    /// Applies `page` (the events after `after`): each of the source's writes as one write here, each moving
    /// the cursor past it.
    async fn apply(&self, after: i64, page: Page, stop: &CancellationToken) -> Result<(), Halt> {
        let mut from = after;
        // The writes before an event that cannot be applied are applied all the same: the follower stops at it.
        let (runs, bad_event) = runs(&page, self.db.instance_id());
        for run in runs {
            if stop.is_cancelled() {
                return Ok(()); // the next start goes on from the cursor
            }
            let options = WriteOptions {
                origin: Some(run.origin),
                at: run.at,
                followed: Some(Box::new(FollowMark { source: self.url.clone(), from, to: run.to })),
                ..WriteOptions::default()
            };
            match self.db.apply(run.ops, options).await {
                Ok(_) => {}
                Err(WriteError::FollowCursorMoved(_)) => return Err(Halt::Moved),
                Err(WriteError::Invalid(errors)) => {
                    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    return Err(Halt::Failed(format!(
                        "the source's events {}..={} cannot be applied here: {}",
                        from + 1,
                        run.to,
                        errors.join("; ")
                    )));
                }
                Err(e) => {
                    return Err(Halt::Failed(format!("applying the source's events {}..={}: {e}", from + 1, run.to)));
                }
            }
            self.following.update(&self.url, |s| {
                s.after_sequence = run.to;
                s.events_applied += (run.to - from) as u64;
            });
            from = run.to;
        }
        bad_event.map_or(Ok(()), |error| Err(Halt::Failed(error)))
    }
}

/// What one of the source's writes comes to here: its rows' changes, with its origin and time, and the
/// sequence the cursor moves to.
#[derive(Debug)]
struct Run {
    origin: String,
    at: Option<String>,
    ops: Vec<Op>,
    to: i64,
}

/// The writes `page` comes to: consecutive events with one origin and time are one write of the source.
/// Events that change no row here (operational events, stand-ins, this directory's own changes coming back)
/// are passed over, the cursor moving past them with the write before or after them; a page of nothing else
/// is one write that only moves the cursor.
fn runs(page: &Page, own_origin: &str) -> (Vec<Run>, Option<String>) {
    let mut runs: Vec<Run> = Vec::new();
    for event in &page.events {
        let origin = event.origin.clone().unwrap_or_default();
        let ops = match origin != own_origin {
            true => match ops_of(event) {
                Ok(ops) => ops,
                // The writes before it, whole: the rest of its own write waits with it.
                Err(error) => {
                    if runs.last().is_some_and(|last| last.origin == origin && last.at == event.occurred_at) {
                        runs.pop();
                    }
                    return (own_origins(runs, own_origin), Some(error));
                }
            },
            false => None,
        };
        let ops = match ops {
            Some(ops) => ops,
            None => {
                if let Some(last) = runs.last_mut() {
                    last.to = event.sequence;
                }
                continue;
            }
        };
        match runs.last_mut() {
            Some(last) if last.origin == origin && last.at == event.occurred_at => {
                last.ops.extend(ops);
                last.to = event.sequence;
            }
            _ => runs.push(Run { origin, at: event.occurred_at.clone(), ops, to: event.sequence }),
        }
    }
    let end = page.events.last().map_or(page.next_after, |e| e.sequence.max(page.next_after));
    match runs.last_mut() {
        Some(last) => last.to = last.to.max(end),
        None if !page.events.is_empty() => {
            runs.push(Run { origin: String::new(), at: None, ops: Vec::new(), to: end });
        }
        None => {}
    }
    (own_origins(runs, own_origin), None)
}

/// `runs` with a write of no origin of its own (a page of passed-over events) made this directory's.
fn own_origins(mut runs: Vec<Run>, own_origin: &str) -> Vec<Run> {
    for run in &mut runs {
        if run.origin.is_empty() {
            run.origin = own_origin.to_string();
        }
    }
    runs
}

/// The change `event` makes to the row it is about (`None`: it is about no row: an operational event, a
/// stand-in, an event type this build does not apply).
fn ops_of(event: &FeedEvent) -> Result<Option<Vec<Op>>, String> {
    let (Some(object), Some(id)) = (&event.object, &event.object_id) else { return Ok(None) };
    let Some(table) = catalog::table(object) else { return Ok(None) };
    if event.changed_inside_only == Some(true) {
        // Its own fields are the document's as they were, not a change: the rows that changed inside it come in
        // their own events. (Applied, a copy made before a newer change of them here would take it back.)
        return Ok(None);
    }
    match event.event_type.rsplit_once('.').map(|(_, action)| action) {
        Some("deleted") => {
            // As an upsert's id is stored (a UUID in lowercase), so that the delete finds the row.
            let id = crate::hsds::validate::canonical_id(id).into_owned();
            Ok(Some(vec![Op::Delete { table, id }]))
        }
        Some("created" | "updated") => {
            let Some(Value::Object(data)) = &event.data else {
                return Err(format!("event {} ({}) carries no object", event.sequence, event.event_type));
            };
            let flat = document::flatten(table, &Value::Object(own_fields(table, data)), "").map_err(|errors| {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                format!("event {} ({} {id}) is not a valid row here: {}", event.sequence, table.name, errors.join("; "))
            })?;
            Ok(Some(Op::all_of(flat)))
        }
        _ => Ok(None),
    }
}

/// The row's own fields in an event's object: what it nests (children, related objects) comes in those rows'
/// own events.
fn own_fields(table: &Table, data: &Map<String, Value>) -> Map<String, Value> {
    data.iter().filter(|(key, _)| table.field(key).is_some()).map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(sequence: i64, event_type: &str, origin: &str, at: &str, data: Value) -> FeedEvent {
        let object = event_type.split('.').next().map(str::to_string);
        let object_id = data.get("id").and_then(Value::as_str).map(str::to_string);
        FeedEvent {
            sequence,
            event_type: event_type.into(),
            occurred_at: Some(at.into()),
            object,
            object_id,
            origin: Some(origin.into()),
            changed_inside_only: None,
            data: Some(data),
        }
    }

    const ORG: &str = "11111111-1111-4111-8111-111111111111";
    const SERVICE: &str = "22222222-2222-4222-8222-222222222222";

    #[test]
    fn each_of_the_sources_writes_is_one_run_and_passed_over_events_move_the_cursor_with_it() {
        let org = json!({"id": ORG, "name": "Org", "description": "d", "services": [{"id": SERVICE, "name": "S"}]});
        let service = json!({"id": SERVICE, "name": "S", "status": "active", "organization_id": ORG,
                             "organization": {"id": ORG, "name": "Org"}, "phones": []});
        let stand_in = FeedEvent {
            sequence: 3,
            event_type: "webhook.redacted".into(),
            occurred_at: None,
            object: Some("webhook".into()),
            object_id: None,
            origin: None,
            changed_inside_only: None,
            data: None,
        };
        let page = Page {
            events: vec![
                event(1, "organization.created", "hsda_a", "t1", org.clone()),
                event(2, "service.created", "hsda_a", "t2", service.clone()),
                stand_in,
                event(4, "organization.updated", "hsda_a", "t2", org.clone()),
                event(5, "service.updated", "hsda_me", "t3", service.clone()),
            ],
            next_after: 5,
        };
        let (runs, bad) = runs(&page, "hsda_me");
        assert!(bad.is_none());
        let summary: Vec<(&str, Option<&str>, usize, i64)> =
            runs.iter().map(|r| (r.origin.as_str(), r.at.as_deref(), r.ops.len(), r.to)).collect();
        // The stand-in goes with the write before it; this directory's own change coming back, with the last.
        assert_eq!(summary, [("hsda_a", Some("t1"), 1, 1), ("hsda_a", Some("t2"), 2, 5)]);
        // Only own fields: the organization's services and the service's organization are not written here.
        for run in &runs {
            for op in &run.ops {
                let Op::Upsert { row, .. } = op else { panic!("only upserts: {op:?}") };
                assert!(!row.contains_key("services") && !row.contains_key("organization"), "{row:?}");
            }
        }
    }

    #[test]
    fn a_page_of_nothing_to_apply_only_moves_the_cursor() {
        let page = Page {
            events: vec![event(7, "service.updated", "hsda_me", "t", json!({"id": SERVICE, "name": "S"}))],
            // (Not a valid service, and never read: this directory's own change coming back.)
            next_after: 7,
        };
        let (runs, bad) = runs(&page, "hsda_me");
        assert!(bad.is_none());
        assert_eq!(runs.len(), 1);
        assert!(runs[0].ops.is_empty());
        assert_eq!((runs[0].to, runs[0].origin.as_str()), (7, "hsda_me"));
        assert!(super::runs(&Page { events: vec![], next_after: 7 }, "hsda_me").0.is_empty());
    }

    #[test]
    fn a_documents_update_caused_inside_it_changes_no_own_field() {
        let org = json!({"id": ORG, "name": "Stale name", "description": "d"});
        let mut inside = event(1, "organization.updated", "hsda_a", "t", org.clone());
        inside.changed_inside_only = Some(true);
        assert!(ops_of(&inside).unwrap().is_none());
        let own = event(2, "organization.updated", "hsda_a", "t", org);
        assert!(ops_of(&own).unwrap().is_some(), "its own change is applied");
    }

    #[test]
    fn a_delete_is_a_delete_and_a_row_that_breaks_the_rules_is_said() {
        let gone = event(1, "phone.deleted", "hsda_a", "t", json!({"id": SERVICE}));
        assert!(matches!(ops_of(&gone).unwrap().unwrap().as_slice(), [Op::Delete { .. }]));
        let bad = event(2, "service.created", "hsda_a", "t", json!({"id": SERVICE, "name": "S", "status": "bogus"}));
        let error = ops_of(&bad).unwrap_err();
        assert!(error.contains("event 2") && error.contains("/status"), "{error}");
    }

    #[test]
    fn the_writes_before_an_event_that_cannot_be_applied_are_applied_and_its_own_write_waits() {
        let org = json!({"id": ORG, "name": "Org", "description": "d"});
        let bad = json!({"id": SERVICE, "name": "S", "status": "bogus", "organization_id": ORG});
        let page = |events| Page { events, next_after: 3 };
        let (runs, error) = runs(
            &page(vec![
                event(1, "organization.created", "hsda_a", "t1", org.clone()),
                event(2, "organization.updated", "hsda_a", "t2", org.clone()),
                event(3, "service.created", "hsda_a", "t2", bad.clone()),
            ]),
            "hsda_me",
        );
        assert!(error.is_some_and(|e| e.contains("event 3")));
        // The first write goes; the second, whose last event is the bad one, waits whole.
        assert_eq!(runs.iter().map(|r| r.to).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn the_status_shows_stored_cursors_too_and_the_further_of_two() {
        let following = Following::default();
        following.update("http://a", |s| s.after_sequence = 5);
        let stored = |source: &str, after_sequence| FollowCursor {
            source: source.into(),
            after_sequence,
            updated_at: "t".into(),
        };
        let statuses = following.statuses(vec![stored("http://a", 9), stored("http://b", 3)]);
        let seen: Vec<(&str, State, i64)> =
            statuses.iter().map(|s| (s.source.as_str(), s.state, s.after_sequence)).collect();
        // Another process moved a's cursor further; b is followed elsewhere (or no longer configured).
        assert_eq!(seen, [("http://a", State::Starting, 9), ("http://b", State::Elsewhere, 3)]);
    }

    #[test]
    fn only_http_base_urls_are_sources() {
        assert_eq!(source_url("http://127.0.0.1:8080/").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(source_url("https://example.org/directory").unwrap(), "https://example.org/directory");
        assert_eq!(source_url("HTTP://Example.org:80/").unwrap(), "http://example.org", "one source, one cursor");
        for bad in [
            "ftp://example.org",
            "example.org",
            "http://example.org/?after=3",
            "http://example.org/#x",
            "https://user:secret@example.org",
        ] {
            assert!(source_url(bad).is_err(), "{bad}");
        }
    }
}
