//! Crash suite (RELIABILITY.md, suite 1): the real `hsda` release binary is killed with SIGKILL at random
//! moments during a burst of writes from concurrent writers, with live subscriptions, and restarted each time.
//! After the last restart it waits (bounded) until every committed event has reached every subscription it
//! matches, then reports per subscription: expected, delivered, missing (must be 0), duplicates; and checks
//! that the event log is gap-free and that every acknowledged write is in it.
//!
//! `cargo bench --bench crash -- [--store sqlite|postgres|both] [--writes 20000] [--kills 20] [--writers 16]
//! [--seed N] [--drain-seconds 900]`
//!
//! A bench target (not a test) because cargo then builds the `hsda` binary with the optimised profile and hands
//! its path over (`CARGO_BIN_EXE_hsda`), the run stays out of `cargo test`, and clippy still checks it.
//!
//! - Receiver: axum on 127.0.0.1, one path per subscription; every request's signature is checked with the
//!   independent `standardwebhooks` crate; arrivals are counted per event id, so duplicates show.
//! - Subscriptions: `organization.*` (full payload), `service.*` filtered on one organization (full), and
//!   `*` (thin). Which events each should get is worked out from the event log itself
//!   (type pattern, and the service's `organization_id` in the event's data), not from hsda's matcher.
//! - Writes: PUT of new services under ten organizations, of new organizations, and of updates of those
//!   organizations; each carries a unique marker in its description. A write refused at connect (hsda is
//!   down) is sent again; a write sent but unanswered (killed mid-request) may or may not have committed and
//!   is only counted. Every acknowledged write must be in the log, with its marker.
//! - Kills: at `--kills` write counts drawn from a seeded RNG (plus 0-50 ms), SIGKILL, then restart on the
//!   same port and database. The seed is printed; `--seed` replays the same kill points.
//! - PostgreSQL: a fresh `hsda_test_crash_*` database on `HSDA_TEST_POSTGRES_URL` (default the local test
//!   server), dropped afterwards. Deliveries leased by a killed process are retried when the lease runs out
//!   (delivery timeout 5 s + 15 s); on SQLite a restart releases them at once.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use sqlx::Connection;

const BASE_ORGANIZATIONS: usize = 10;
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

// ---------------------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
struct Options {
    stores: Vec<Store>,
    writes: usize,
    kills: usize,
    writers: usize,
    seed: u64,
    drain: Duration,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        stores: vec![Store::Sqlite],
        writes: 20_000,
        kills: 20,
        writers: 16,
        seed: rand::random::<u32>() as u64,
        drain: Duration::from_secs(900),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |v: String, name: &str| v.parse::<u64>().map_err(|_| format!("{name}: not a number: {v}"));
        match arg.as_str() {
            "--store" => {
                o.stores = match value("--store")?.as_str() {
                    "sqlite" => vec![Store::Sqlite],
                    "postgres" => vec![Store::Postgres],
                    "both" => vec![Store::Sqlite, Store::Postgres],
                    other => return Err(format!("--store sqlite|postgres|both, not {other}")),
                }
            }
            "--writes" => o.writes = number(value("--writes")?, "--writes")?.max(100) as usize,
            "--kills" => o.kills = number(value("--kills")?, "--kills")? as usize,
            "--writers" => o.writers = number(value("--writers")?, "--writers")?.clamp(1, 256) as usize,
            "--seed" => o.seed = number(value("--seed")?, "--seed")?,
            "--drain-seconds" => o.drain = Duration::from_secs(number(value("--drain-seconds")?, "--drain-seconds")?),
            "--bench" => {} // cargo bench passes it
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------------------
// The receiver

/// What one subscription's path has received.
#[derive(Default)]
struct Inbox {
    secret: String,
    /// Arrivals per event id (the body's `id`).
    arrivals: HashMap<String, u32>,
    pings: u32,
    bad_signatures: u32,
}

type Inboxes = Arc<Vec<Mutex<Inbox>>>;

async fn hook(State(inboxes): State<Inboxes>, Path(n): Path<usize>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Some(inbox) = inboxes.get(n) else { return StatusCode::NOT_FOUND };
    let mut inbox = inbox.lock().unwrap();
    let verified = standardwebhooks::Webhook::new(&inbox.secret).is_ok_and(|wh| wh.verify(&body, &headers).is_ok());
    if !verified {
        inbox.bad_signatures += 1;
        return StatusCode::BAD_REQUEST;
    }
    let Ok(message) = serde_json::from_slice::<Value>(&body) else { return StatusCode::BAD_REQUEST };
    if message["type"] == "webhook.ping" {
        inbox.pings += 1;
    } else if let Some(id) = message["id"].as_str() {
        *inbox.arrivals.entry(id.to_string()).or_default() += 1;
    }
    StatusCode::OK
}

async fn start_receiver(secrets: Vec<String>) -> (String, Inboxes) {
    let inboxes: Inboxes =
        Arc::new(secrets.into_iter().map(|secret| Mutex::new(Inbox { secret, ..Inbox::default() })).collect());
    let app = Router::new().route("/hook/{n}", post(hook)).with_state(inboxes.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
    let base = format!("http://{}", listener.local_addr().expect("receiver address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, inboxes)
}

// ---------------------------------------------------------------------------------------------------------
// The hsda process

struct Hsda {
    child: Option<Child>,
    port: u16,
    database_url: String,
    log: PathBuf,
}

impl Hsda {
    fn spawn(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_hsda"))
            .args(["serve", "--bind", &format!("127.0.0.1:{}", self.port)])
            .env("HSDA_DATABASE_URL", &self.database_url)
            .env("HSDA_ALLOW_TARGETS", "127.0.0.0/8")
            .env("HSDA_RETRY_SCHEDULE", "0.5,1,2,2,5,5,10,10,10,10,10,10")
            .env("HSDA_DELIVERY_TIMEOUT_SECONDS", "5")
            .env("RUST_LOG", "hsda=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start hsda");
        self.child = Some(child);
    }

    /// Starts it and waits (bounded) until `/health` answers.
    async fn start(&mut self, client: &reqwest::Client) -> Result<Duration, String> {
        let started = Instant::now();
        self.spawn();
        let deadline = started + Duration::from_secs(60);
        while Instant::now() < deadline {
            let health = client.get(self.url("/health")).send().await;
            if health.is_ok_and(|r| r.status() == 200) {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("hsda did not answer /health within 60 s; log {}", self.log.display()))
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Hsda {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------------------------------------
// Writes

fn uuid_of(kind: u32, n: usize) -> String {
    format!("00000000-0000-4000-{kind:04x}-{n:012}")
}

fn base_organization(k: usize) -> String {
    uuid_of(0xb0, k)
}

/// Write `i` of the burst: (path, object type, id, body). The description is its unique marker.
fn write_of(i: usize) -> (String, &'static str, String, Value) {
    let marker = format!("crash write {i}");
    match i % 4 {
        0 | 1 => {
            let id = uuid_of(0x5e, i);
            let organization_id = base_organization((i / 4) % BASE_ORGANIZATIONS);
            let body = json!({ "name": format!("Service {i}"), "description": marker, "status": "active",
                               "organization_id": organization_id });
            (format!("/services/{id}"), "service", id, body)
        }
        2 => {
            let id = uuid_of(0x0a, i);
            (
                format!("/organizations/{id}"),
                "organization",
                id,
                json!({ "name": format!("Org {i}"), "description": marker }),
            )
        }
        _ => {
            // An update of the organization the previous write created (a creation if that one was lost).
            let id = uuid_of(0x0a, i - 1);
            let body = json!({ "name": format!("Org {}", i - 1), "description": marker });
            (format!("/organizations/{id}"), "organization", id, body)
        }
    }
}

#[derive(Default)]
struct Tally {
    /// Writes acknowledged with 2xx: (object type, id, marker).
    acknowledged: Mutex<Vec<(&'static str, String, String)>>,
    /// Sent but answered by no one (the process died): may or may not have committed.
    unanswered: AtomicUsize,
    /// Answered, but not 2xx, by status.
    refused: Mutex<BTreeMap<u16, usize>>,
    /// Sends refused at connect (hsda down) and sent again.
    reconnects: AtomicUsize,
    /// Writes finished one way or another (the killer's clock).
    done: AtomicUsize,
}

async fn writer(
    client: reqwest::Client,
    base: String,
    key: String,
    next: Arc<AtomicUsize>,
    total: usize,
    tally: Arc<Tally>,
) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            return;
        }
        let (path, object, id, body) = write_of(i);
        let marker = body["description"].as_str().unwrap_or_default().to_string();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match client.put(format!("{base}{path}")).bearer_auth(&key).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    tally.acknowledged.lock().unwrap().push((object, id, marker));
                    break;
                }
                Ok(r) => {
                    *tally.refused.lock().unwrap().entry(r.status().as_u16()).or_default() += 1;
                    break;
                }
                Err(e) if e.is_connect() && Instant::now() < deadline => {
                    tally.reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => {
                    tally.unanswered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        tally.done.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------------------
// The event log and what each subscription should get

#[derive(Debug, Clone)]
struct LoggedEvent {
    sequence: i64,
    id: String,
    event_type: String,
    object_id: String,
    description: Option<String>,
    organization_id: Option<String>,
}

/// Reads the log after `after` as admin (all of it, page by page).
async fn read_log(
    client: &reqwest::Client,
    hsda: &Hsda,
    key: &str,
    mut after: i64,
) -> Result<Vec<LoggedEvent>, String> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let url = hsda.url(&format!("/events?after={after}&limit=1000"));
        let r = client.get(url).bearer_auth(key).send().await.map_err(|e| format!("GET /events: {e}"))?;
        let page: Value = r.json().await.map_err(|e| format!("GET /events: {e}"))?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            break;
        }
        after = page["next_after"].as_i64().ok_or("GET /events: no next_after")?;
        out.extend(events.iter().map(|e| LoggedEvent {
            sequence: e["sequence"].as_i64().unwrap_or(-1),
            id: e["id"].as_str().unwrap_or_default().to_string(),
            event_type: e["type"].as_str().unwrap_or_default().to_string(),
            object_id: e["object_id"].as_str().unwrap_or_default().to_string(),
            description: e["data"]["description"].as_str().map(str::to_string),
            organization_id: e["data"]["organization_id"].as_str().map(str::to_string),
        }));
    }
    Ok(out)
}

/// A subscription of the run and the oracle of which logged events it must receive.
struct Sub {
    name: &'static str,
    request: Value,
    wants: fn(&LoggedEvent) -> bool,
}

fn subscriptions() -> Vec<Sub> {
    vec![
        Sub {
            name: "organization.* (full)",
            request: json!({ "events": ["organization.*"], "payload": "full", "max_concurrency": 32 }),
            wants: |e| e.event_type.starts_with("organization."),
        },
        Sub {
            name: "service.* of one organization (full)",
            request: json!({ "events": ["service.*"], "payload": "full", "max_concurrency": 8,
                             "filter": { "organization_id": base_organization(0) } }),
            wants: |e| e.event_type.starts_with("service.") && e.organization_id == Some(base_organization(0)),
        },
        Sub {
            name: "* (thin)",
            request: json!({ "events": ["*"], "payload": "thin", "max_concurrency": 32 }),
            wants: |_| true,
        },
    ]
}

#[derive(Debug, Default)]
struct Delivered {
    expected: usize,
    delivered: usize,
    missing: usize,
    duplicates: usize,
    unexpected: usize,
    pings: u32,
    bad_signatures: u32,
}

fn compare(subs: &[Sub], inboxes: &Inboxes, log: &[LoggedEvent], head: i64) -> Vec<Delivered> {
    subs.iter()
        .zip(inboxes.iter())
        .map(|(sub, inbox)| {
            let inbox = inbox.lock().unwrap();
            let expected: Vec<&str> =
                log.iter().filter(|e| e.sequence > head && (sub.wants)(e)).map(|e| e.id.as_str()).collect();
            let delivered = expected.iter().filter(|id| inbox.arrivals.contains_key(**id)).count();
            let duplicates: u32 =
                expected.iter().filter_map(|id| inbox.arrivals.get(*id)).map(|n| n.saturating_sub(1)).sum();
            let expected_set: std::collections::HashSet<&str> = expected.iter().copied().collect();
            Delivered {
                expected: expected.len(),
                delivered,
                missing: expected.len() - delivered,
                duplicates: duplicates as usize,
                unexpected: inbox.arrivals.keys().filter(|id| !expected_set.contains(id.as_str())).count(),
                pings: inbox.pings,
                bad_signatures: inbox.bad_signatures,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// One run

struct Database {
    url: String,
    /// PostgreSQL: (admin URL, database name) to drop afterwards.
    drop: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

async fn fresh_database(store: Store) -> Result<Database, String> {
    match store {
        Store::Sqlite => {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let url = format!("sqlite://{}", dir.path().join("crash.db").display());
            Ok(Database { url, drop: None, _dir: Some(dir) })
        }
        Store::Postgres => {
            let admin = std::env::var("HSDA_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
            let name = format!("hsda_test_crash_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin).await.map_err(|e| format!("connect {admin}: {e}"))?;
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.map_err(|e| e.to_string())?;
            let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin.clone());
            Ok(Database { url: format!("{base}/{name}"), drop: Some((admin, name)), _dir: None })
        }
    }
}

async fn drop_database(db: &Database) {
    if let Some((admin, name)) = &db.drop
        && let Ok(mut conn) = sqlx::PgConnection::connect(admin).await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
    }
}

/// `hsda keys create` (which also migrates the database); the key is the last line it prints.
fn admin_key(database_url: &str) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_hsda"))
        .args(["keys", "create", "--scope", "admin", "--tenant", "crash"])
        .env("HSDA_DATABASE_URL", database_url)
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(key) if out.status.success() => Ok(key.trim().to_string()),
        _ => Err(format!("hsda keys create failed: {}", String::from_utf8_lossy(&out.stderr))),
    }
}

async fn run(store: Store, o: &Options) -> Result<bool, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let db = fresh_database(store).await?;
    let result = run_on(store, o, &db, &mut rng).await;
    drop_database(&db).await;
    result
}

async fn run_on(store: Store, o: &Options, db: &Database, rng: &mut ChaCha8Rng) -> Result<bool, String> {
    let key = admin_key(&db.url)?;
    let logs = tempfile::Builder::new().prefix("hsda-crash-").tempdir().map_err(|e| e.to_string())?.keep();
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let mut hsda = Hsda { child: None, port, database_url: db.url.clone(), log: logs.join("hsda.log") };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(o.writers)
        .build()
        .map_err(|e| e.to_string())?;
    hsda.start(&client).await?;

    // Ten organizations the services belong to, then the subscriptions (with secrets we know, so the
    // receiver can check the very first request), then the log head: what comes after is the burst's.
    for k in 0..BASE_ORGANIZATIONS {
        let body = json!({ "name": format!("Base organization {k}"), "description": "owns the burst's services" });
        let r = client
            .put(hsda.url(&format!("/organizations/{}", base_organization(k))))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await;
        if !r.as_ref().is_ok_and(|r| r.status().is_success()) {
            return Err(format!("creating base organization {k}: {r:?}"));
        }
    }
    let subs = subscriptions();
    let secrets: Vec<String> = (0..subs.len())
        .map(|_| format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(rng.r#gen::<[u8; 32]>())))
        .collect();
    let (receiver, inboxes) = start_receiver(secrets.clone()).await;
    let mut sub_ids = Vec::new();
    for (n, (sub, secret)) in subs.iter().zip(&secrets).enumerate() {
        let mut request = sub.request.clone();
        request["url"] = json!(format!("{receiver}/hook/{n}"));
        request["secret"] = json!(secret);
        let r = client
            .post(hsda.url("/webhooks"))
            .bearer_auth(&key)
            .json(&request)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != 201 {
            return Err(format!("POST /webhooks {}: {} {}", sub.name, r.status(), r.text().await.unwrap_or_default()));
        }
        let created: Value = r.json().await.map_err(|e| e.to_string())?;
        sub_ids.push(created["id"].as_str().unwrap_or_default().to_string());
    }
    let head = read_log(&client, &hsda, &key, 0).await?.last().map(|e| e.sequence).unwrap_or(0);

    // Kill points: distinct write counts between 2% and 98% of the burst.
    let mut kill_points: Vec<usize> = Vec::new();
    while kill_points.len() < o.kills.min(o.writes / 4) {
        let at = rng.gen_range(o.writes / 50..o.writes * 49 / 50);
        if !kill_points.contains(&at) {
            kill_points.push(at);
        }
    }
    kill_points.sort_unstable();
    println!("  kill points (writes done): {kill_points:?}");

    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let burst_started = Instant::now();
    let writers: Vec<_> = (0..o.writers)
        .map(|_| tokio::spawn(writer(client.clone(), hsda.url(""), key.clone(), next.clone(), o.writes, tally.clone())))
        .collect();
    let mut restarts = Vec::new();
    for &at in &kill_points {
        while tally.done.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..50))).await;
        hsda.kill9();
        restarts.push(hsda.start(&client).await?);
    }
    let last_kill = Instant::now();
    for w in writers {
        w.await.map_err(|e| e.to_string())?;
    }
    let burst = burst_started.elapsed();
    let burst_ended = Instant::now();

    // Wait (bounded) until every committed event reached every subscription that matches it.
    let mut log = read_log(&client, &hsda, &key, 0).await?;
    let mut report = compare(&subs, &inboxes, &log, head);
    let mut last_print = Instant::now();
    while report.iter().any(|d| d.missing > 0) && burst_ended.elapsed() < o.drain {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = log.last().map(|e| e.sequence).unwrap_or(0);
        log.extend(read_log(&client, &hsda, &key, after).await?);
        report = compare(&subs, &inboxes, &log, head);
        if last_print.elapsed() > Duration::from_secs(10) {
            let missing: Vec<usize> = report.iter().map(|d| d.missing).collect();
            println!("  draining: missing {missing:?} after {:.0} s", burst_ended.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
    }
    let (drained, since_kill) = (burst_ended.elapsed(), last_kill.elapsed());
    // Deliveries still in flight settle, so late duplicates are counted too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    report = compare(&subs, &inboxes, &log, head);

    // The log: gap-free, and every acknowledged write in it with its marker.
    let gaps = log.iter().enumerate().filter(|(i, e)| e.sequence != *i as i64 + 1).count();
    let logged: std::collections::HashSet<(&str, &str)> =
        log.iter().filter_map(|e| Some((e.object_id.as_str(), e.description.as_deref()?))).collect();
    let acknowledged = tally.acknowledged.lock().unwrap().clone();
    let lost: Vec<&(&str, String, String)> =
        acknowledged.iter().filter(|(_, id, marker)| !logged.contains(&(id.as_str(), marker.as_str()))).collect();
    let markers: std::collections::HashSet<&str> = log.iter().filter_map(|e| e.description.as_deref()).collect();
    let unanswered = tally.unanswered.load(Ordering::Relaxed);
    let committed_unanswered = (0..o.writes).filter(|i| markers.contains(format!("crash write {i}").as_str())).count()
        - (acknowledged.len() - lost.len());

    println!(
        "  burst: {} writes by {} writers in {:.1} s ({:.0}/s), {} SIGKILLs, restart to healthy median {:.0} ms, max {:.0} ms",
        o.writes,
        o.writers,
        burst.as_secs_f64(),
        o.writes as f64 / burst.as_secs_f64(),
        restarts.len(),
        median_ms(&restarts),
        restarts.iter().max().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
    );
    println!(
        "  writes: {} acknowledged, {} unanswered (killed mid-request; {} of them committed anyway), refused {:?}, {} connects refused and sent again",
        acknowledged.len(),
        unanswered,
        committed_unanswered,
        tally.refused.lock().unwrap(),
        tally.reconnects.load(Ordering::Relaxed),
    );
    println!(
        "  event log: {} events, {} out of sequence (gaps), {} acknowledged writes missing from it",
        log.len(),
        gaps,
        lost.len()
    );
    println!(
        "  {} {:.1} s after the burst ended ({:.1} s after the last restart)",
        if report.iter().all(|d| d.missing == 0) { "all delivered" } else { "drain limit reached" },
        drained.as_secs_f64(),
        since_kill.as_secs_f64()
    );
    println!(
        "  | subscription | expected | delivered | missing | duplicates | unexpected | pings | bad signatures | still queued |"
    );
    println!("  |---|---|---|---|---|---|---|---|---|");
    for ((sub, d), id) in subs.iter().zip(&report).zip(&sub_ids) {
        // Missing ones still in hsda's queue are late, not lost (the drain limit was too short).
        let mut queued = 0;
        for status in ["pending", "retrying"] {
            let url = hsda.url(&format!("/webhooks/{id}/deliveries?status={status}&per_page=1"));
            if let Ok(r) = client.get(url).bearer_auth(&key).send().await
                && let Ok(page) = r.json::<Value>().await
            {
                queued += page["total_items"].as_u64().unwrap_or(0);
            }
        }
        println!(
            "  | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            sub.name, d.expected, d.delivered, d.missing, d.duplicates, d.unexpected, d.pings, d.bad_signatures, queued
        );
    }
    let search_ok = match store {
        Store::Sqlite => {
            let verdict = search_index_check(&db.url).await;
            println!(
                "  search index after the kills: {}",
                verdict.as_ref().err().map_or("consistent, nothing queued", |e| e)
            );
            verdict.is_ok()
        }
        Store::Postgres => true, // a generated column of the row itself: nothing to fall out of step
    };
    let ok = gaps == 0
        && search_ok
        && lost.is_empty()
        && report.iter().all(|d| d.missing == 0 && d.unexpected == 0 && d.bad_signatures == 0)
        && restarts.len() == kill_points.len();
    if !ok {
        println!("  FAILED ({store:?}); hsda's log: {}", hsda.log.display());
    }
    Ok(ok)
}

/// SQLite: FTS5's own check of its index against `records`, and no index change left queued (each commit
/// applies its queue, so a kill can leave none behind).
async fn search_index_check(database_url: &str) -> Result<(), String> {
    let mut conn = sqlx::SqliteConnection::connect(database_url).await.map_err(|e| e.to_string())?;
    sqlx::query("INSERT INTO records_fts (records_fts, rank) VALUES ('integrity-check', 1)")
        .execute(&mut conn)
        .await
        .map_err(|e| format!("FTS5 integrity check failed: {e}"))?;
    let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records_fts_queue")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    match queued {
        0 => Ok(()),
        n => Err(format!("{n} index changes left queued")),
    }
}

fn median_ms(durations: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms.get(ms.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "crash suite: seed {} (replay with --seed {}), {} writes, {} writers, {} kills, drain limit {} s",
        o.seed,
        o.seed,
        o.writes,
        o.writers,
        o.kills,
        o.drain.as_secs()
    );
    let mut all_ok = true;
    for &store in &o.stores {
        println!("{store:?}:");
        match run(store, &o).await {
            Ok(ok) => all_ok &= ok,
            Err(e) => {
                println!("  ERROR: {e}");
                all_ok = false;
            }
        }
    }
    println!("{}", if all_ok { "PASS" } else { "FAIL" });
    if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
