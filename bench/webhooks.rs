//! Webhook delivery benchmark: hsda in-process (real HTTP API, real worker, signatures on, every attempt
//! recorded), a real axum receiver on 127.0.0.1, and a keep-alive reqwest driver, all in one tokio runtime.
//!
//! `cargo bench --bench webhooks -- [--store sqlite|postgres|both] [--workload W1|W2|W3|W4|W5|W6|W7|W0|U0|C0|all]
//! [--max-concurrency N] [--keep-db DIR]`
//!
//! - W0: writes only, no subscription (the write path's own ceiling).
//! - U0: as W0, but each write changes one of 2 000 existing organizations (on PostgreSQL such writes take
//!   the document lock, `store::write::lock_documents`). Not part of `all`.
//! - C0: as W0, but each write changes one of 1 000 phones of 200 services of 10 organizations: writes of
//!   one group then often meet in an organization's document, and the group runs again one write at a time
//!   (`store::group_commit`). Not part of `all`; prints how many groups ran again.
//! - W1: one subscription, 20k changes from 50 concurrent writers -> deliveries/s and writes/s.
//! - W2: ten subscriptions, 2k changes -> deliveries/s (20k deliveries).
//! - W3: 100 changes/s for 10 s -> end-to-end latency (just before the PUT -> arrival at the receiver).
//! - W4: W3 beside a second subscription whose target fails (500) or hangs (30 s) -> the healthy p99.
//! - W5: W1 beside 500 more subscriptions (other partners), each filtered to an organization no write
//!   touches -> deliveries/s: what following partners who want none of these changes costs. Not part of `all`.
//! - W6: W1's writes (5k changes) to one `ordered` subscription -> deliveries/s: one delivery in flight at a
//!   time, while a backlog of thousands waits behind it. Not part of `all`.
//! - W7: W1 beside a partner whose target hangs (30 s) with a backlog of 20k deliveries waiting (made first,
//!   untimed, from location changes W1's subscription does not follow) -> deliveries/s to the healthy target:
//!   what a dead partner's queue costs everyone else. Not part of `all`. `HSDA_BENCH_W7_BACKLOG=N` sets the backlog.
//! - ceiling: the same driver POSTing 1 KB JSON straight to the same receiver, same concurrency.
//!
//! The machine is shared, so every figure is printed beside the loopback ceiling measured in the same run.
//! For W1 and W2 a sampler reads the pipeline's progress from the database every 100 ms (events written,
//! dispatch cursor, deliveries finished) so the report shows which phase finishes last, and the bytes this
//! process wrote to disk meanwhile (`/proc/self/io`: with SQLite, the store's WAL and checkpoints).
//! `HSDA_BENCH_NO_SAMPLER=1` leaves the sampler out (phases "not reached").
//! `--keep-db DIR` copies each SQLite W0-W2 database and its WAL there before stopping
//! (`scripts/wal_pages.py` then tells which table or index the WAL's pages belong to).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hsda::config::Config;
use hsda::startup::Application;
use hsda::store::keys::Scope;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Connection;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WRITERS: usize = 50;
const W1_CHANGES: usize = 20_000;
/// U0 changes this many existing organizations, each W1_CHANGES / U0_ORGANIZATIONS times.
const U0_ORGANIZATIONS: usize = 2_000;
const W2_CHANGES: usize = 2_000;
const W2_SUBSCRIPTIONS: usize = 10;
/// W5 runs W1 beside this many other partners' subscriptions, each filtered to an organization the writes
/// never touch: the cost of being one directory many partners follow, none of whom wants these changes.
const W5_PARTNERS: usize = 500;
/// W6's changes, delivered one at a time in order (20k would take minutes).
const W6_CHANGES: usize = 5_000;
/// W7's hanging partner has this many deliveries waiting before the timed writes start.
const W7_BACKLOG: usize = 20_000;

/// W7's backlog: `HSDA_BENCH_W7_BACKLOG` if set (to see how its cost grows), else [`W7_BACKLOG`].
fn w7_backlog() -> usize {
    std::env::var("HSDA_BENCH_W7_BACKLOG").ok().and_then(|n| n.parse().ok()).unwrap_or(W7_BACKLOG)
}
const PACED_RATE: u64 = 100;
const PACED_SECONDS: u64 = 10;
const CEILING_REQUESTS: usize = 20_000;
const WORKLOAD_LIMIT: Duration = Duration::from_secs(120);
const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

// ---------------------------------------------------------------------------------------------------------
// The receiver

/// What one receiver path has seen.
#[derive(Default)]
struct PathStats {
    /// Distinct `webhook-id`s of `organization.*` deliveries (at-least-once: duplicates are not counted).
    unique: Mutex<HashSet<String>>,
    arrivals: AtomicU64,
    last_arrival: Mutex<Option<Instant>>,
    pings: AtomicU64,
    secret: Mutex<Option<String>>,
    verified: AtomicU64,
    bad_signatures: AtomicU64,
}

#[derive(Default)]
struct Receiver {
    paths: Mutex<HashMap<usize, Arc<PathStats>>>,
    /// W3/W4: write-start instants by organization id, and the latencies of arrivals on path 0.
    started: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    ceiling: AtomicU64,
    failed: AtomicU64,
    hung: AtomicU64,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type")]
    event_type: String,
    data: ProbeData,
}

#[derive(Deserialize)]
struct ProbeData {
    id: Option<String>,
}

impl Receiver {
    fn path(&self, n: usize) -> Arc<PathStats> {
        self.paths.lock().unwrap().entry(n).or_default().clone()
    }
}

async fn hook(State(rx): State<Arc<Receiver>>, Path(n): Path<usize>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = Instant::now();
    let stats = rx.path(n);
    let Ok(probe) = serde_json::from_slice::<Probe>(&body) else { return StatusCode::BAD_REQUEST };
    if probe.event_type == "webhook.ping" {
        stats.pings.fetch_add(1, Ordering::Relaxed);
        return StatusCode::OK;
    }
    if !probe.event_type.starts_with("organization.") {
        return StatusCode::OK;
    }
    if n == 0
        && let Some(id) = &probe.data.id
        && let Some(start) = rx.started.lock().unwrap().remove(id)
    {
        rx.latencies.lock().unwrap().push(now - start);
    }
    let arrivals = stats.arrivals.fetch_add(1, Ordering::Relaxed);
    // Check a sample of signatures with the independent `standardwebhooks` crate.
    if arrivals % 1000 == 0 {
        let secret = stats.secret.lock().unwrap().clone();
        if let Some(secret) = secret {
            let ok = standardwebhooks::Webhook::new(&secret).is_ok_and(|wh| wh.verify(&body, &headers).is_ok());
            let counter = if ok { &stats.verified } else { &stats.bad_signatures };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if stats.unique.lock().unwrap().insert(id) {
        *stats.last_arrival.lock().unwrap() = Some(now);
    }
    StatusCode::OK
}

async fn ceiling(State(rx): State<Arc<Receiver>>, _body: Bytes) -> StatusCode {
    rx.ceiling.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

async fn fail(State(rx): State<Arc<Receiver>>, _body: Bytes) -> StatusCode {
    rx.failed.fetch_add(1, Ordering::Relaxed);
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn hang(State(rx): State<Arc<Receiver>>, _body: Bytes) -> StatusCode {
    rx.hung.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(30)).await;
    StatusCode::OK
}

async fn start_receiver() -> (Arc<Receiver>, String) {
    let rx = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/hook/{n}", post(hook))
        .route("/ceiling", post(ceiling))
        .route("/fail", post(fail))
        .route("/hang", post(hang))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
    let base = format!("http://{}", listener.local_addr().expect("receiver address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (rx, base)
}

// ---------------------------------------------------------------------------------------------------------
// hsda under test

#[derive(Debug, Clone, Copy, PartialEq)]
enum Store {
    Sqlite,
    Postgres,
}

struct Hsda {
    base: String,
    database_url: String,
    publish_key: String,
    subscribe_key: String,
    shutdown: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
    db: hsda::store::Db,
}

impl Hsda {
    async fn start(store: Store) -> anyhow::Result<Hsda> {
        let (database_url, dir, pg_name) = match store {
            Store::Sqlite => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                (url, Some(dir), None)
            }
            Store::Postgres => {
                let name = format!("hsda_bench_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL).await?;
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str()).await?;
                let base = POSTGRES_ADMIN_URL.rsplit_once('/').map(|(b, _)| b).unwrap_or(POSTGRES_ADMIN_URL);
                (format!("{base}/{name}"), None, Some(name))
            }
        };
        let config = Config {
            database_url: database_url.clone(),
            bind: "127.0.0.1:0".parse()?,
            allow_targets: "127.0.0.0/8".into(),
            retry_schedule: Some("1,1,1".into()),
            ..Config::default()
        };
        let app = Application::build(config).await?;
        let db = app.db().clone();
        let base = format!("http://{}", app.local_addr());
        let shutdown = app.shutdown_token();
        let server = tokio::spawn(app.run());
        let publish_key = db.create_key("bench", Scope::Publish).await?.secret;
        let subscribe_key = db.create_key("bench", Scope::Subscribe).await?.secret;
        Ok(Hsda { base, database_url, publish_key, subscribe_key, shutdown, server, dir, pg_name, db })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        // A hanging target keeps deliveries in flight for up to the delivery timeout: do not wait for it.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        if let Some(name) = self.pg_name
            && let Ok(mut conn) = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL).await
        {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            if let Err(e) = sqlx::Executor::execute(&mut conn, sql.as_str()).await {
                eprintln!("warning: could not drop {name}: {e}");
            }
        }
    }

    /// Creates a subscription to `url`; returns its secret.
    async fn subscribe(
        &self,
        client: &reqwest::Client,
        url: &str,
        max_concurrency: Option<i64>,
        ordered: bool,
    ) -> String {
        let mut body = json!({"url": url, "events": ["organization.*"], "ordered": ordered});
        if let Some(n) = max_concurrency {
            body["max_concurrency"] = json!(n);
        }
        self.subscribe_with(client, &body).await
    }

    /// Creates the subscription `body` describes; returns its secret.
    async fn subscribe_with(&self, client: &reqwest::Client, body: &Value) -> String {
        let r = client
            .post(format!("{}/webhooks", self.base))
            .bearer_auth(&self.subscribe_key)
            .json(body)
            .send()
            .await
            .expect("POST /webhooks");
        assert_eq!(r.status(), 201, "creating a subscription");
        let v: Value = r.json().await.expect("subscription JSON");
        v["secret"].as_str().expect("secret").to_string()
    }

    async fn put(&self, client: &reqwest::Client, path: &str, body: &Value) {
        let r = client
            .put(format!("{}/{path}", self.base))
            .bearer_auth(&self.publish_key)
            .json(body)
            .send()
            .await
            .expect("PUT");
        assert!(r.status().is_success(), "PUT {path} -> {}", r.status());
    }

    async fn put_org(&self, client: &reqwest::Client, id: &str, i: usize) {
        let body = json!({"id": id, "name": format!("Organization {i}"), "description": "bench"});
        self.put(client, &format!("organizations/{id}"), &body).await;
    }
}

fn driver() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(WRITERS * 2).build().expect("HTTP client")
}

// ---------------------------------------------------------------------------------------------------------
// Progress sampler (phase timings)

#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    written: i64,
    dispatched: i64,
    /// Deliveries not finished yet: read through the partial index of open deliveries, so the sampler's
    /// cost does not grow with the table (counting every delivery did; no throughput change was measurable).
    open: i64,
}

/// The pipeline's progress; the open deliveries counted only if `count_open` (with a backlog of thousands
/// beside, W7, counting them every 100 ms cost PostgreSQL's W7 about 10 %).
async fn progress(conn: &mut sqlx::AnyConnection, count_open: bool) -> Progress {
    let open =
        if count_open { "(SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'retrying'))" } else { "0" };
    let row: Result<(i64, i64, i64), _> = sqlx::query_as(&format!(
        "SELECT (SELECT value FROM counters WHERE name = 'event_sequence'), \
         (SELECT value FROM counters WHERE name = 'dispatch_cursor'), CAST({open} AS BIGINT)"
    ))
    .fetch_one(&mut *conn)
    .await;
    match row {
        Ok((written, dispatched, open)) => Progress { written, dispatched, open },
        Err(e) => {
            // Said, not swallowed: the phase table then shows "not reached".
            eprintln!("progress sample failed: {e}");
            Progress::default()
        }
    }
}

/// When each phase completed, in seconds after t0.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    written: Option<f64>,
    dispatched: Option<f64>,
    recorded: Option<f64>,
}

/// Samples the pipeline every 100 ms until `stop`; a phase is complete when `events` more events were written,
/// the dispatch cursor passed them all, and (when deliveries are expected) no delivery is open any more once
/// the cursor passed them: each dispatched event's deliveries are created with the cursor's move.
fn sample(
    database_url: String,
    t0: Instant,
    events: i64,
    expect_deliveries: bool,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Phases> {
    tokio::spawn(async move {
        let mut phases = Phases::default();
        if std::env::var_os("HSDA_BENCH_NO_SAMPLER").is_some() {
            return phases;
        }
        let mut conn = match sqlx::AnyConnection::connect(&database_url).await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("the progress sampler could not connect: {e}");
                return phases;
            }
        };
        let base = progress(&mut conn, expect_deliveries).await;
        loop {
            // Read before the sample: once stopped, one last sample still counts (a fast run could end between
            // two samples, and its phases showed "not reached").
            let stopping = stop.is_cancelled();
            let p = progress(&mut conn, expect_deliveries).await;
            let at = t0.elapsed().as_secs_f64();
            if phases.written.is_none() && p.written - base.written >= events {
                phases.written = Some(at);
            }
            if phases.dispatched.is_none() && p.dispatched >= base.written + events {
                phases.dispatched = Some(at);
            }
            if expect_deliveries && phases.dispatched.is_some() && phases.recorded.is_none() && p.open == 0 {
                phases.recorded = Some(at);
            }
            let done = phases.written.is_some() && phases.dispatched.is_some() && (!expect_deliveries || p.open == 0);
            if done || stopping {
                return phases;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

// ---------------------------------------------------------------------------------------------------------
// Workloads

/// `write(i)` for each `i` below `n`, from `WRITERS` concurrent writers, none started once `limit` has passed;
/// returns how many were made, when all were answered.
async fn with_writers<F, Fut>(n: usize, limit: Duration, write: F) -> usize
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (next, write) = (next.clone(), write.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || started.elapsed() > limit {
                    break;
                }
                write(i).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    next.load(Ordering::Relaxed).min(n)
}

/// `n` PUTs from `WRITERS` concurrent writers; returns when all were answered. Each creates a new organization,
/// or, given `existing` ids, changes the name of one of those in turn.
async fn write_concurrently(
    hsda: &Arc<Hsda>,
    client: &reqwest::Client,
    n: usize,
    existing: Arc<Vec<String>>,
    first_name: usize,
) {
    let (hsda, client) = (hsda.clone(), client.clone());
    with_writers(n, Duration::MAX, move |i| {
        let (hsda, client, existing) = (hsda.clone(), client.clone(), existing.clone());
        async move {
            let id = match existing.is_empty() {
                true => uuid::Uuid::new_v4().to_string(),
                false => existing[i % existing.len()].clone(),
            };
            hsda.put_org(&client, &id, first_name + i).await;
        }
    })
    .await;
}

/// Waits (bounded by `deadline`) until every path in `paths` saw `n` distinct deliveries; returns the
/// instant of the last new arrival and how many arrived in all.
async fn wait_for_arrivals(rx: &Receiver, paths: &[usize], n: usize, deadline: Instant) -> (Option<Instant>, usize) {
    loop {
        let stats: Vec<_> = paths.iter().map(|p| rx.path(*p)).collect();
        let got: usize = stats.iter().map(|s| s.unique.lock().unwrap().len()).sum();
        if got >= n * paths.len() || Instant::now() >= deadline {
            let last = stats.iter().filter_map(|s| *s.last_arrival.lock().unwrap()).max();
            return (last, got);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_for_pings(rx: &Receiver, paths: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && paths.iter().any(|p| rx.path(*p).pings.load(Ordering::Relaxed) == 0) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Throughput {
    /// Bytes this process wrote to disk from the first write until all was recorded (None off Linux).
    disk_bytes: Option<u64>,
    deliveries: usize,
    arrived: usize,
    deliveries_per_s: f64,
    writes_per_s: f64,
    phases: Phases,
    seconds: f64,
    verified: u64,
    bad: u64,
    /// Write transactions committed and the directory writes they carried (see `store::group_commit`).
    groups: (u64, u64),
    /// This process's resident memory once all arrived (Linux `/proc/self/status`; hsda, driver and receiver).
    resident_bytes: Option<u64>,
}

/// What a throughput workload has besides its subscriptions and changes.
#[derive(Default, Clone, Copy)]
struct Extras {
    /// Organizations created first (untimed), which the timed writes then change (U0).
    existing: usize,
    /// Other partners' subscriptions, each filtered to an organization no write touches (W5).
    partners: usize,
    /// The subscriptions are `ordered` (W6).
    ordered: bool,
    /// Deliveries waiting for a partner whose target hangs, made before the timed writes (W7).
    hanging_backlog: usize,
}

/// W1 (one subscription) and W2 (several), and W0 (none: writes only); U0 is W0 changing `existing` (created
/// first, untimed) organizations instead of creating new ones. W5 is W1 with `partners` more subscriptions
/// beside, each filtered to an organization no write touches (they get their pings, then nothing). W6 is W1
/// with its subscription `ordered`. W7 is W1 beside a hanging partner with a backlog.
async fn throughput(
    store: Store,
    subscriptions: usize,
    changes: usize,
    max_concurrency: Option<i64>,
    Extras { existing, partners, ordered, hanging_backlog }: Extras,
) -> anyhow::Result<Throughput> {
    let (rx, rx_base) = start_receiver().await;
    let hsda = Arc::new(Hsda::start(store).await?);
    let client = driver();
    if hanging_backlog > 0 {
        make_hanging_backlog(&hsda, &client, &rx_base, hanging_backlog).await?;
    }
    let existing: Arc<Vec<String>> = Arc::new((0..existing).map(|_| uuid::Uuid::new_v4().to_string()).collect());
    if !existing.is_empty() {
        // Each created once (untimed), so that the timed writes only change them.
        // Named apart from every timed write, so that none of those is a no-op.
        write_concurrently(&hsda, &client, existing.len(), existing.clone(), changes).await;
    }
    let paths: Vec<usize> = (0..subscriptions).collect();
    for &p in &paths {
        let secret = hsda.subscribe(&client, &format!("{rx_base}/hook/{p}"), max_concurrency, ordered).await;
        *rx.path(p).secret.lock().unwrap() = Some(secret);
    }
    let partner_paths: Vec<usize> = (0..partners).map(|p| 10_000 + p).collect();
    for &p in &partner_paths {
        let filter = json!({"organization_id": uuid::Uuid::new_v4().to_string()});
        let body = json!({"url": format!("{rx_base}/hook/{p}"), "events": ["*"], "filter": filter});
        hsda.subscribe_with(&client, &body).await;
    }
    wait_for_pings(&rx, &paths).await;
    wait_for_pings(&rx, &partner_paths).await;

    let t0 = Instant::now();
    let written_before = disk_bytes_written();
    let groups_before = hsda.db.group_commit_stats();
    let stop = tokio_util::sync::CancellationToken::new();
    // The hanging partner's deliveries stay open: "all recorded" is not measured beside them.
    let expect_deliveries = subscriptions > 0 && hanging_backlog == 0;
    let sampler = sample(hsda.database_url.clone(), t0, changes as i64, expect_deliveries, stop.clone());
    write_concurrently(&hsda, &client, changes, existing, 0).await;
    let written = t0.elapsed();
    let (last, arrived) = wait_for_arrivals(&rx, &paths, changes, t0 + WORKLOAD_LIMIT).await;
    // Give the recorder (bounded) time to commit the last batch, so the phase table is complete.
    let record_deadline = Instant::now() + Duration::from_secs(if subscriptions == 0 { 1 } else { 15 });
    while !sampler.is_finished() && Instant::now() < record_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let phases = sampler.await.unwrap_or_default();
    let disk_bytes = written_before.zip(disk_bytes_written()).map(|(before, after)| after - before);
    let resident_bytes = resident_bytes();
    let groups = hsda.db.group_commit_stats();
    let groups = (groups.0 - groups_before.0, groups.1 - groups_before.1);
    if let (Some(to), Some(dir)) = (KEEP_DB.get(), hsda.dir.as_ref()) {
        for (from, name) in [("bench.db", "db"), ("bench.db-wal", "db-wal")] {
            let target = to.join(format!("subscriptions-{subscriptions}.{name}"));
            if let Err(e) = std::fs::copy(dir.path().join(from), &target) {
                eprintln!("could not keep {}: {e}", target.display());
            }
        }
    }
    let end = last.map(|l| l - t0).unwrap_or(t0.elapsed());
    let (verified, bad) = paths.iter().fold((0, 0), |(v, b), p| {
        let s = rx.path(*p);
        (v + s.verified.load(Ordering::Relaxed), b + s.bad_signatures.load(Ordering::Relaxed))
    });
    if let Ok(hsda) = Arc::try_unwrap(hsda) {
        hsda.stop().await;
    }
    Ok(Throughput {
        disk_bytes,
        deliveries: changes * subscriptions,
        arrived,
        deliveries_per_s: arrived as f64 / end.as_secs_f64(),
        writes_per_s: changes as f64 / written.as_secs_f64(),
        phases,
        seconds: end.as_secs_f64(),
        verified,
        bad,
        groups,
        resident_bytes,
    })
}

/// W7's untimed start: a partner following `location.*` whose target hangs, and `backlog` new locations, so
/// that (once dispatched) `backlog` deliveries wait for it, due now, behind the few its lane holds.
async fn make_hanging_backlog(
    hsda: &Arc<Hsda>,
    client: &reqwest::Client,
    rx_base: &str,
    backlog: usize,
) -> anyhow::Result<()> {
    hsda.subscribe_with(client, &json!({"url": format!("{rx_base}/hang"), "events": ["location.*"]})).await;
    let writer = (hsda.clone(), client.clone());
    with_writers(backlog, Duration::MAX, move |_| {
        let (hsda, client) = writer.clone();
        async move {
            let id = uuid::Uuid::new_v4().to_string();
            let body = json!({"id": id, "name": "bench", "location_type": "physical"});
            hsda.put(&client, &format!("locations/{id}"), &body).await;
        }
    })
    .await;
    let mut conn = sqlx::AnyConnection::connect(&hsda.database_url).await?;
    let deadline = Instant::now() + WORKLOAD_LIMIT;
    loop {
        let p = progress(&mut conn, true).await;
        if p.dispatched >= p.written && p.open as usize >= backlog / 2 {
            eprintln!("W7: {} deliveries open for the hanging partner", p.open);
            // A backlog grows over hours, with the store's upkeep keeping up; not the aftermath of writing
            // it just now (PostgreSQL's autovacuum and a checkpoint would fall into the timed writes).
            let upkeep: &[&str] = match hsda.db.backend() {
                hsda::store::Backend::Postgres => &["VACUUM ANALYZE", "CHECKPOINT"],
                hsda::store::Backend::Sqlite => &["PRAGMA wal_checkpoint(TRUNCATE)"],
            };
            for sql in upkeep {
                sqlx::query(sql).execute(&mut conn).await?;
            }
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the backlog was not dispatched in time ({p:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// C0: 1 000 phones of 200 services of 10 organizations (created first, untimed) changed by 50 writers, no
/// subscription -> writes/s, and the groups that ran again one write at a time (their writes met in a
/// document) or behind savepoints. (Phones created instead would grow the organizations' documents, which
/// every write recompiles, and measure that.)
async fn clustered(store: Store) -> anyhow::Result<(f64, (u64, u64), (u64, u64))> {
    const ORGANIZATIONS: usize = 10;
    const SERVICES: usize = 200;
    let hsda = Arc::new(Hsda::start(store).await?);
    let client = driver();
    let organizations: Vec<String> = (0..ORGANIZATIONS).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for (i, id) in organizations.iter().enumerate() {
        hsda.put_org(&client, id, i).await;
    }
    let services: Arc<Vec<String>> = Arc::new((0..SERVICES).map(|_| uuid::Uuid::new_v4().to_string()).collect());
    const PHONES: usize = 1_000;
    let phones: Arc<Vec<(String, String)>> =
        Arc::new((0..PHONES).map(|i| (uuid::Uuid::new_v4().to_string(), services[i % SERVICES].clone())).collect());
    for (i, id) in services.iter().enumerate() {
        let body = json!({"id": id, "name": format!("Service {i}"), "status": "active",
                          "organization_id": organizations[i % ORGANIZATIONS]});
        hsda.put(&client, &format!("services/{id}"), &body).await;
    }
    for (i, (id, service)) in phones.iter().enumerate() {
        let body = json!({"id": id, "number": format!("555-{i:04}"), "service_id": service});
        hsda.put(&client, &format!("phones/{id}"), &body).await;
    }
    let (groups_before, reruns_before) = (hsda.db.group_commit_stats(), hsda.db.group_commit_reruns());
    let t0 = Instant::now();
    let writer = (hsda.clone(), client.clone());
    let writes = with_writers(W1_CHANGES, WORKLOAD_LIMIT, move |i| {
        let ((hsda, client), phones) = (writer.clone(), phones.clone());
        async move {
            let (id, service) = &phones[i % PHONES];
            // Numbered apart from the untimed creations, so that no write is a no-op.
            let body = json!({"id": id, "number": format!("556-{i:05}"), "service_id": service});
            hsda.put(&client, &format!("phones/{id}"), &body).await;
        }
    })
    .await;
    let writes_per_s = writes as f64 / t0.elapsed().as_secs_f64();
    let (groups, reruns) = (hsda.db.group_commit_stats(), hsda.db.group_commit_reruns());
    if let Ok(hsda) = Arc::try_unwrap(hsda) {
        hsda.stop().await;
    }
    Ok((
        writes_per_s,
        (groups.0 - groups_before.0, groups.1 - groups_before.1),
        (reruns.0 - reruns_before.0, reruns.1 - reruns_before.1),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Beside {
    Nothing,
    Failing,
    Hanging,
}

struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
    arrived: usize,
    sent: usize,
    write_p50: Duration,
    write_p99: Duration,
    bad_target_hits: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// W3 (nothing beside) and W4 (a failing or hanging subscription beside the healthy one).
async fn latency(store: Store, beside: Beside, max_concurrency: Option<i64>) -> anyhow::Result<Latency> {
    let (rx, rx_base) = start_receiver().await;
    let hsda = Arc::new(Hsda::start(store).await?);
    let client = driver();
    let secret = hsda.subscribe(&client, &format!("{rx_base}/hook/0"), max_concurrency, false).await;
    *rx.path(0).secret.lock().unwrap() = Some(secret);
    match beside {
        Beside::Nothing => {}
        Beside::Failing => drop(hsda.subscribe(&client, &format!("{rx_base}/fail"), max_concurrency, false).await),
        Beside::Hanging => drop(hsda.subscribe(&client, &format!("{rx_base}/hang"), max_concurrency, false).await),
    }
    wait_for_pings(&rx, &[0]).await;

    let n = (PACED_RATE * PACED_SECONDS) as usize;
    let write_times = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / PACED_RATE));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        ticker.tick().await;
        let (hsda, client, rx, write_times) = (hsda.clone(), client.clone(), rx.clone(), write_times.clone());
        tasks.push(tokio::spawn(async move {
            let id = uuid::Uuid::new_v4().to_string();
            let start = Instant::now();
            rx.started.lock().unwrap().insert(id.clone(), start);
            hsda.put_org(&client, &id, i).await;
            write_times.lock().unwrap().push(start.elapsed());
        }));
    }
    for t in tasks {
        t.await.expect("paced writer");
    }
    let (_, arrived) = wait_for_arrivals(&rx, &[0], n, t0 + WORKLOAD_LIMIT).await;
    let mut lat = rx.latencies.lock().unwrap().clone();
    lat.sort();
    let mut writes = write_times.lock().unwrap().clone();
    writes.sort();
    let bad_target_hits = rx.failed.load(Ordering::Relaxed) + rx.hung.load(Ordering::Relaxed);
    if let Ok(hsda) = Arc::try_unwrap(hsda) {
        hsda.stop().await;
    }
    Ok(Latency {
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        max: lat.last().copied().unwrap_or_default(),
        arrived,
        sent: n,
        write_p50: percentile(&writes, 0.50),
        write_p99: percentile(&writes, 0.99),
        bad_target_hits,
    })
}

/// The loopback ceiling: the same driver POSTing 1 KB of JSON to the same kind of receiver.
async fn loopback_ceiling() -> f64 {
    let (rx, rx_base) = start_receiver().await;
    let client = driver();
    let body = Bytes::from(json!({"type": "ceiling", "data": {"pad": "x".repeat(1000)}}).to_string());
    let url = format!("{rx_base}/ceiling");
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (client, next, body, url) = (client.clone(), next.clone(), body.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < CEILING_REQUESTS {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("POST");
                assert!(r.status().is_success());
            }
        }));
    }
    for t in tasks {
        t.await.expect("ceiling task");
    }
    let got = rx.ceiling.load(Ordering::Relaxed) as f64;
    got / t0.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------------------
// Report

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn at(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "not reached".into())
}

/// Where `--keep-db` copies the SQLite databases of W0-W2.
static KEEP_DB: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// This process's resident memory now (Linux `/proc/self/status`).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// The bytes this process has written to storage so far (Linux `/proc/self/io`).
fn disk_bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok())
}

struct Args {
    stores: Vec<Store>,
    workloads: Vec<String>,
    max_concurrency: Option<i64>,
}

fn parse_args() -> Args {
    let mut args = Args { stores: vec![Store::Sqlite], workloads: vec!["all".into()], max_concurrency: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--store" => {
                args.stores = match it.next().as_deref() {
                    Some("postgres") => vec![Store::Postgres],
                    Some("both") => vec![Store::Sqlite, Store::Postgres],
                    _ => vec![Store::Sqlite],
                }
            }
            "--workload" => {
                args.workloads = it.next().unwrap_or_default().split(',').map(|w| w.trim().to_uppercase()).collect()
            }
            "--max-concurrency" => args.max_concurrency = it.next().and_then(|n| n.parse().ok()),
            "--keep-db" => {
                if let Some(dir) = it.next() {
                    let _ = KEEP_DB.set(dir.into());
                }
            }
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    if args.workloads.iter().any(|w| w == "ALL") {
        args.workloads = ["W0", "W1", "W2", "W3", "W4"].map(String::from).to_vec();
    }
    args
}

fn throughput_rows(name: &str, t: &Throughput, ceiling: f64, rows: &mut Vec<String>, phases: &mut Vec<String>) {
    if t.deliveries == 0 {
        rows.push(format!(
            "| {name} writes only | writes/s | {:.0} | {:.0} | {:.2} |",
            t.writes_per_s,
            ceiling,
            t.writes_per_s / ceiling
        ));
        phases.push(format!(
            "| {name} | {} | {} | - | - | {} written to disk; {} |",
            at(t.phases.written),
            at(t.phases.dispatched),
            megabytes(t.disk_bytes),
            group_sizes(t.groups)
        ));
        return;
    }
    let partial = if t.arrived < t.deliveries {
        format!(" (only {}/{} arrived)", t.arrived, t.deliveries)
    } else {
        String::new()
    };
    rows.push(format!(
        "| {name} | deliveries/s{partial} | {:.0} | {:.0} | {:.2} |",
        t.deliveries_per_s,
        ceiling,
        t.deliveries_per_s / ceiling
    ));
    rows.push(format!(
        "| {name} | writes/s | {:.0} | {:.0} | {:.2} |",
        t.writes_per_s,
        ceiling,
        t.writes_per_s / ceiling
    ));
    phases.push(format!(
        "| {name} | {} | {} | {:.2} s | {} | signatures checked {} ok, {} bad; {} written to disk; {} resident; {} |",
        at(t.phases.written),
        at(t.phases.dispatched),
        t.seconds,
        at(t.phases.recorded),
        t.verified,
        t.bad,
        megabytes(t.disk_bytes),
        megabytes(t.resident_bytes),
        group_sizes(t.groups),
    ));
}

/// "N write transactions, M writes each": how well writes shared their commits.
fn group_sizes((transactions, writes): (u64, u64)) -> String {
    format!("{transactions} write transactions, {:.1} writes each", writes as f64 / transactions.max(1) as f64)
}

fn megabytes(bytes: Option<u64>) -> String {
    bytes.map_or("?".into(), |b| format!("{:.0} MB", b as f64 / 1e6))
}

fn latency_row(name: &str, l: &Latency, ceiling: f64) -> String {
    let partial = if l.arrived < l.sent { format!(" (only {}/{} arrived)", l.arrived, l.sent) } else { String::new() };
    format!(
        "| {name} | p50 / p99 / max{partial} | {} / {} / {} (PUT p50 {} p99 {}; bad target hit {}x) | {:.0} | - |",
        ms(l.p50),
        ms(l.p99),
        ms(l.max),
        ms(l.write_p50),
        ms(l.write_p99),
        l.bad_target_hits,
        ceiling
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("# hsda webhook delivery bench ({cores} cores; {})", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
    for store in args.stores.clone() {
        let label = format!("{store:?}").to_lowercase();
        let ceiling = loopback_ceiling().await;
        eprintln!("[{label}] loopback ceiling {ceiling:.0} req/s");
        let mut rows = vec![format!("| ceiling | loopback requests/s | {ceiling:.0} | {ceiling:.0} | 1.00 |")];
        let mut phases = Vec::new();
        let mc = args.max_concurrency;
        for w in &args.workloads {
            eprintln!("[{label}] {w} ...");
            match w.as_str() {
                "W0" => throughput_rows(
                    "W0",
                    &throughput(store, 0, W1_CHANGES, mc, Extras::default()).await?,
                    ceiling,
                    &mut rows,
                    &mut phases,
                ),
                "C0" => {
                    let (writes_per_s, groups, (one_at_a_time, guarded)) = clustered(store).await?;
                    rows.push(format!(
                        "| C0 writes only | writes/s | {writes_per_s:.0} | {ceiling:.0} | {:.2} |",
                        writes_per_s / ceiling
                    ));
                    phases.push(format!(
                        "| C0 | - | - | - | - | {}; {one_at_a_time} groups ran again one write at a time, {guarded} behind savepoints |",
                        group_sizes(groups)
                    ));
                }
                "U0" => throughput_rows(
                    "U0",
                    &throughput(store, 0, W1_CHANGES, mc, Extras { existing: U0_ORGANIZATIONS, ..Extras::default() })
                        .await?,
                    ceiling,
                    &mut rows,
                    &mut phases,
                ),
                "W1" => throughput_rows(
                    "W1",
                    &throughput(store, 1, W1_CHANGES, mc, Extras::default()).await?,
                    ceiling,
                    &mut rows,
                    &mut phases,
                ),
                "W2" => throughput_rows(
                    "W2",
                    &throughput(store, W2_SUBSCRIPTIONS, W2_CHANGES, mc, Extras::default()).await?,
                    ceiling,
                    &mut rows,
                    &mut phases,
                ),
                "W5" => throughput_rows(
                    "W5",
                    &throughput(store, 1, W1_CHANGES, mc, Extras { partners: W5_PARTNERS, ..Extras::default() })
                        .await?,
                    ceiling,
                    &mut rows,
                    &mut phases,
                ),
                "W6" => throughput_rows(
                    "W6",
                    &throughput(store, 1, W6_CHANGES, mc, Extras { ordered: true, ..Extras::default() }).await?,
                    ceiling,
                    &mut rows,
                    &mut phases,
                ),
                "W7" => throughput_rows(
                    "W7",
                    &throughput(
                        store,
                        1,
                        W1_CHANGES,
                        mc,
                        Extras { hanging_backlog: w7_backlog(), ..Extras::default() },
                    )
                    .await?,
                    ceiling,
                    &mut rows,
                    &mut phases,
                ),
                "W3" => rows.push(latency_row("W3", &latency(store, Beside::Nothing, mc).await?, ceiling)),
                "W4" => {
                    rows.push(latency_row(
                        "W4 failing (500) beside",
                        &latency(store, Beside::Failing, mc).await?,
                        ceiling,
                    ));
                    rows.push(latency_row(
                        "W4 hanging (30 s) beside",
                        &latency(store, Beside::Hanging, mc).await?,
                        ceiling,
                    ));
                }
                other => eprintln!("unknown workload {other}"),
            }
            eprintln!("{}", rows.last().cloned().unwrap_or_default());
        }
        let concurrency = mc.map(|n| n.to_string()).unwrap_or_else(|| "default".into());
        println!("\n## {label} (per-subscription max_concurrency: {concurrency})\n");
        println!("| workload | measure | value | loopback ceiling (req/s) | ratio |");
        println!("|---|---|---|---|---|");
        for r in &rows {
            println!("{r}");
        }
        if !phases.is_empty() {
            println!("\nPhase completion after the first write (database sampled every 100 ms):\n");
            println!("| workload | all written | all dispatched | last arrival | all recorded | |");
            println!("|---|---|---|---|---|---|");
            for p in &phases {
                println!("{p}");
            }
        }
    }
    Ok(())
}
