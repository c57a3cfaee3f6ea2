//! Sustained load (RELIABILITY.md, suite 7): the real release `hsda` binary under concurrent writers and
//! readers for a bounded time, with one live subscription. Every interval (a minute by default) it prints
//! the requests, errors and p50/p99 per kind, the process's resident memory and the deliveries outstanding;
//! at the end a least-squares fit of memory over time (growth per minute) and the spread of the per-interval
//! p99s. Exits non-zero on any error or if the deliveries do not drain.
//!
//! `cargo bench --bench soak -- [--minutes 10] [--store sqlite|postgres] [--interval-seconds 60]
//! [--write-rate 20] [--read-rate 100] [--writers 8] [--readers 8] [--demo-services 2000] [--log FILE]
//! [--env NAME=VALUE]...`
//!
//! - writers (paced, seeded): PUT new organizations and services (a service with a nested phone), PATCH
//!   services and organizations (merge patch), PUT existing organizations again, DELETE services and, once
//!   they own no service, organizations; each writer keeps its own bounded working set;
//! - readers (paced, seeded): service pages, services by id, full-text search, organization pages, and a
//!   tail of `/events`;
//! - one subscription to every event type, delivered to a receiver on 127.0.0.1 that answers 200.

// Shared with the integration tests; not every helper is used here.
#[allow(dead_code)]
#[path = "../tests/it/real_server.rs"]
mod real_server;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use real_server::{RealServer, rss_kib};

const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MAX_MINUTES: f64 = 60.0;
const SEARCH_WORDS: [&str; 8] = ["food", "housing", "health", "legal", "shelter", "youth", "job", "clinic"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Put,
    Patch,
    Delete,
    List,
    ById,
    Search,
    Events,
}

impl Kind {
    const ALL: [Kind; 7] = [Kind::Put, Kind::Patch, Kind::Delete, Kind::List, Kind::ById, Kind::Search, Kind::Events];

    fn name(self) -> &'static str {
        match self {
            Kind::Put => "PUT",
            Kind::Patch => "PATCH",
            Kind::Delete => "DELETE",
            Kind::List => "list",
            Kind::ById => "by id",
            Kind::Search => "search",
            Kind::Events => "/events",
        }
    }
}

/// Latencies and errors of one interval.
#[derive(Default)]
struct Interval {
    latencies: BTreeMap<Kind, Vec<Duration>>,
    errors: BTreeMap<Kind, u64>,
    first_errors: Vec<String>,
}

#[derive(Default)]
struct Stats {
    current: Mutex<Interval>,
}

impl Stats {
    fn note(&self, kind: Kind, took: Duration, error: Option<String>) {
        let mut current = self.current.lock().unwrap();
        current.latencies.entry(kind).or_default().push(took);
        if let Some(e) = error {
            *current.errors.entry(kind).or_default() += 1;
            if current.first_errors.len() < 5 {
                current.first_errors.push(format!("{}: {e}", kind.name()));
            }
        }
    }

    fn take(&self) -> Interval {
        std::mem::take(&mut *self.current.lock().unwrap())
    }
}

struct Target {
    base: String,
    key: String,
    client: reqwest::Client,
    stats: Arc<Stats>,
}

impl Target {
    /// Sends one request, times it and notes it; returns the JSON body of a success.
    async fn call(&self, kind: Kind, request: reqwest::RequestBuilder) -> Option<Value> {
        let started = Instant::now();
        let outcome = match request.bearer_auth(&self.key).send().await {
            Ok(r) if r.status().is_success() => {
                let status = r.status();
                let body = r.bytes().await;
                match body {
                    Ok(b) if status == StatusCode::NO_CONTENT || b.is_empty() => Ok(Value::Null),
                    Ok(b) => serde_json::from_slice::<Value>(&b).map_err(|e| format!("{status}: {e}")),
                    Err(e) => Err(format!("reading the body: {e}")),
                }
            }
            Ok(r) => {
                let status = r.status();
                Err(format!("{status}: {}", r.text().await.unwrap_or_default().chars().take(300).collect::<String>()))
            }
            Err(e) => Err(e.to_string()),
        };
        let took = started.elapsed();
        match outcome {
            Ok(v) => {
                self.stats.note(kind, took, None);
                Some(v)
            }
            Err(e) => {
                self.stats.note(kind, took, Some(e));
                None
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Writers and readers

struct Service {
    id: String,
    organization: String,
}

/// One writer's own organizations and services (bounded), so deletes never hit what others use.
#[derive(Default)]
struct WorkingSet {
    organizations: Vec<String>,
    services: Vec<Service>,
}

const MAX_ORGANIZATIONS: usize = 10;
const MAX_SERVICES: usize = 40;

async fn write_once(t: &Target, own: &mut WorkingSet, rng: &mut StdRng, n: u64) {
    let roll: f64 = rng.gen_range(0.0..1.0);
    if own.organizations.is_empty() || (roll < 0.10 && own.organizations.len() < MAX_ORGANIZATIONS) {
        let id = uuid::Uuid::new_v4().to_string();
        let body = json!({"name": format!("Soak organization {n}"), "description": "Sustained load"});
        if t.call(Kind::Put, t.client.put(t.url(&format!("/organizations/{id}"))).json(&body)).await.is_some() {
            own.organizations.push(id);
        }
    } else if roll < 0.40 && own.services.len() < MAX_SERVICES {
        let id = uuid::Uuid::new_v4().to_string();
        let organization = own.organizations.choose(rng).cloned().unwrap_or_default();
        let body = json!({
            "name": format!("Soak service {n}"), "status": "active", "organization_id": organization,
            "description": "A service written by the soak benchmark",
            "phones": [{"id": uuid::Uuid::new_v4().to_string(), "number": format!("555-{:04}", n % 10_000)}],
        });
        if t.call(Kind::Put, t.client.put(t.url(&format!("/services/{id}"))).json(&body)).await.is_some() {
            own.services.push(Service { id, organization });
        }
    } else if roll < 0.70 && !own.services.is_empty() {
        let s = &own.services[rng.gen_range(0..own.services.len())];
        let body = json!({"description": format!("Patched {n}"), "email": format!("desk{n}@example.org")});
        let request = t
            .client
            .patch(t.url(&format!("/services/{}", s.id)))
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string());
        t.call(Kind::Patch, request).await;
    } else if roll < 0.80 {
        let id = own.organizations.choose(rng).cloned().unwrap_or_default();
        let body = json!({"description": format!("Patched {n}")});
        let request = t
            .client
            .patch(t.url(&format!("/organizations/{id}")))
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string());
        t.call(Kind::Patch, request).await;
    } else if roll < 0.85 {
        let id = own.organizations.choose(rng).cloned().unwrap_or_default();
        let body = json!({"name": format!("Soak organization {n} (replaced)"), "description": "Replaced"});
        t.call(Kind::Put, t.client.put(t.url(&format!("/organizations/{id}"))).json(&body)).await;
    } else if !own.services.is_empty() && (roll < 0.97 || own.services.len() >= MAX_SERVICES) {
        let s = own.services.swap_remove(rng.gen_range(0..own.services.len()));
        if t.call(Kind::Delete, t.client.delete(t.url(&format!("/services/{}", s.id)))).await.is_none() {
            own.services.push(s);
        }
    } else if own.organizations.len() > 1 {
        // Only an organization none of our services points at: hsda refuses to delete a referenced one.
        let used: HashSet<&str> = own.services.iter().map(|s| s.organization.as_str()).collect();
        if let Some(i) = own.organizations.iter().position(|o| !used.contains(o.as_str())) {
            let id = own.organizations.swap_remove(i);
            if t.call(Kind::Delete, t.client.delete(t.url(&format!("/organizations/{id}")))).await.is_none() {
                own.organizations.push(id);
            }
        }
    }
}

/// A ticker at `per_second` that skips the ticks a slow round missed (a steady rate, no bursts).
fn paced(per_second: f64) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker
}

async fn writer(t: Arc<Target>, seed: u64, per_second: f64, stop: CancellationToken, counter: Arc<AtomicU64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut own = WorkingSet::default();
    let mut ticker = paced(per_second);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let n = counter.fetch_add(1, Ordering::Relaxed);
        write_once(&t, &mut own, &mut rng, n).await;
    }
}

async fn reader(t: Arc<Target>, seed: u64, per_second: f64, ids: Arc<Vec<String>>, stop: CancellationToken) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut after: i64 = 0;
    let mut ticker = paced(per_second);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let roll: f64 = rng.gen_range(0.0..1.0);
        if roll < 0.30 {
            let page = rng.gen_range(1..=50);
            t.call(Kind::List, t.client.get(t.url(&format!("/services?page={page}&per_page=20")))).await;
        } else if roll < 0.60 && !ids.is_empty() {
            let id = &ids[rng.gen_range(0..ids.len())];
            t.call(Kind::ById, t.client.get(t.url(&format!("/services/{id}")))).await;
        } else if roll < 0.75 {
            let word = SEARCH_WORDS[rng.gen_range(0..SEARCH_WORDS.len())];
            t.call(Kind::Search, t.client.get(t.url(&format!("/services?search={word}&per_page=20")))).await;
        } else if roll < 0.85 {
            let page = rng.gen_range(1..=20);
            t.call(Kind::List, t.client.get(t.url(&format!("/organizations?page={page}&per_page=20")))).await;
        } else {
            let v = t.call(Kind::Events, t.client.get(t.url(&format!("/events?after={after}&limit=100")))).await;
            if let Some(next) = v.as_ref().and_then(|v| v["next_after"].as_i64()) {
                after = next;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The receiver of the live subscription

#[derive(Default)]
struct Received {
    ids: Mutex<HashSet<String>>,
    requests: AtomicU64,
}

async fn receive(State(rx): State<Arc<Received>>, headers: HeaderMap, _body: Bytes) -> StatusCode {
    rx.requests.fetch_add(1, Ordering::Relaxed);
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    rx.ids.lock().unwrap().insert(id);
    StatusCode::OK
}

async fn start_receiver() -> anyhow::Result<(Arc<Received>, String, tokio::task::JoinHandle<()>)> {
    let rx = Arc::new(Received::default());
    let app = Router::new().route("/hook", post(receive)).with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((rx, url, task))
}

/// Deliveries of `sub` not yet finished (pending or retrying), and all of them.
async fn deliveries(t: &Target, sub: &str) -> anyhow::Result<(u64, u64)> {
    let mut outstanding = 0;
    for status in ["pending", "retrying"] {
        let url = t.url(&format!("/webhooks/{sub}/deliveries?status={status}&per_page=1"));
        let v: Value = t.client.get(url).bearer_auth(&t.key).send().await?.error_for_status()?.json().await?;
        outstanding += v["total_items"].as_u64().unwrap_or(0);
    }
    let url = t.url(&format!("/webhooks/{sub}/deliveries?per_page=1"));
    let v: Value = t.client.get(url).bearer_auth(&t.key).send().await?.error_for_status()?.json().await?;
    Ok((outstanding, v["total_items"].as_u64().unwrap_or(0)))
}

// ---------------------------------------------------------------------------------------------------------
// Arguments, set-up, report

struct Args {
    minutes: f64,
    interval: Duration,
    postgres: bool,
    writers: usize,
    readers: usize,
    write_rate: f64,
    read_rate: f64,
    demo_services: usize,
    log: Option<std::path::PathBuf>,
    /// Extra environment of the hsda process (`--env NAME=VALUE`, repeatable), e.g. `MALLOC_ARENA_MAX=2`.
    env: Vec<(String, String)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        minutes: 10.0,
        interval: Duration::from_secs(60),
        postgres: false,
        writers: 8,
        readers: 8,
        write_rate: 20.0,
        read_rate: 100.0,
        demo_services: 2000,
        log: None,
        env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--minutes" => args.minutes = value()?.parse()?,
            "--interval-seconds" => args.interval = Duration::from_secs_f64(value()?.parse()?),
            "--store" => args.postgres = value()? == "postgres",
            "--writers" => args.writers = value()?.parse()?,
            "--readers" => args.readers = value()?.parse()?,
            "--write-rate" => args.write_rate = value()?.parse()?,
            "--read-rate" => args.read_rate = value()?.parse()?,
            "--demo-services" => args.demo_services = value()?.parse()?,
            "--log" => args.log = Some(value()?.into()),
            "--env" => {
                let pair = value()?;
                let (k, v) = pair.split_once('=').ok_or_else(|| anyhow::anyhow!("--env wants NAME=VALUE"))?;
                args.env.push((k.to_string(), v.to_string()));
            }
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    anyhow::ensure!(args.minutes > 0.0 && args.minutes <= MAX_MINUTES, "--minutes must be in (0, {MAX_MINUTES}]");
    anyhow::ensure!(args.interval >= Duration::from_secs(1), "--interval-seconds must be at least 1");
    anyhow::ensure!(args.writers >= 1 && args.readers >= 1, "at least one writer and one reader");
    anyhow::ensure!(args.write_rate > 0.0 && args.read_rate > 0.0, "rates must be positive");
    Ok(args)
}

/// A fresh database: a temporary SQLite file or a new PostgreSQL database (dropped at the end).
async fn database(postgres: bool) -> anyhow::Result<(String, Option<tempfile::TempDir>, Option<String>)> {
    if !postgres {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("soak.db").display());
        return Ok((url, Some(dir), None));
    }
    let name = format!("hsda_soak_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL).await?;
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str()).await?;
    let base = POSTGRES_ADMIN_URL.rsplit_once('/').map(|(b, _)| b).unwrap_or(POSTGRES_ADMIN_URL);
    Ok((format!("{base}/{name}"), None, Some(name)))
}

async fn drop_database(name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL).await {
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        if let Err(e) = sqlx::Executor::execute(&mut conn, sql.as_str()).await {
            eprintln!("warning: could not drop {name}: {e}");
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) =
        points.iter().fold((0.0, 0.0), |(num, den), (x, y)| (num + (x - mx) * (y - my), den + (x - mx).powi(2)));
    if den == 0.0 { 0.0 } else { num / den }
}

/// The service ids the readers fetch by id: the demo directory's, which no writer touches.
async fn demo_ids(t: &Target) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for page in 1..=5 {
        let v: Value = t
            .client
            .get(t.url(&format!("/services?page={page}&per_page=200&minimal=true")))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let contents = v["contents"].as_array().cloned().unwrap_or_default();
        if contents.is_empty() {
            break;
        }
        ids.extend(contents.iter().filter_map(|s| s["id"].as_str().map(str::to_string)));
    }
    Ok(ids)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let store = if args.postgres { "postgres" } else { "sqlite" };
    println!(
        "# hsda soak: {store}, {} min, {} writers at {}/s, {} readers at {}/s, {} demo services ({cores} cores; {})",
        args.minutes,
        args.writers,
        args.write_rate,
        args.readers,
        args.read_rate,
        args.demo_services,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let (database_url, _dir, pg_name) = database(args.postgres).await?;
    let (received, hook_url, receiver_task) = start_receiver().await?;
    let mut env = vec![
        ("HSDA_ALLOW_TARGETS", "127.0.0.0/8".to_string()),
        ("HSDA_RETRY_SCHEDULE", "1,2,5".to_string()),
        ("HSDA_DEMO", "true".to_string()),
        ("HSDA_DEMO_SERVICES", args.demo_services.to_string()),
    ];
    env.extend(args.env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let server = RealServer::start(
        env!("CARGO_BIN_EXE_hsda"),
        &database_url,
        &env,
        args.log.as_deref(),
        Duration::from_secs(600),
    )
    .await?;
    let outcome = run(&args, &server, &received, &hook_url).await;
    if let Some(path) = database_url.strip_prefix("sqlite://") {
        let size = |p: &str| std::fs::metadata(p).map(|m| m.len() as f64 / (1024.0 * 1024.0)).unwrap_or(0.0);
        println!("SQLite file {:.0} MiB (+ WAL {:.0} MiB)", size(path), size(&format!("{path}-wal")));
    }
    server.stop().await;
    receiver_task.abort();
    if let Some(name) = pg_name {
        drop_database(&name).await;
    }
    outcome
}

async fn run(args: &Args, server: &RealServer, received: &Received, hook_url: &str) -> anyhow::Result<()> {
    let stats = Arc::new(Stats::default());
    let pool = (args.writers + args.readers) * 2;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(pool).build()?;
    let t = Arc::new(Target { base: server.base.clone(), key: server.admin_key.clone(), client, stats: stats.clone() });

    // A write makes two or three events (the row's, and the root documents embedding it): 50 slots keep up.
    let body = json!({"url": hook_url, "events": ["*"], "max_concurrency": 50});
    let v: Value = t
        .client
        .post(t.url("/webhooks"))
        .bearer_auth(&t.key)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let sub = v["id"].as_str().ok_or_else(|| anyhow::anyhow!("no subscription id: {v}"))?.to_string();
    let ids = Arc::new(demo_ids(&t).await?);
    eprintln!("hsda pid {} ready, {} demo service ids, subscription {sub}", server.pid(), ids.len());

    let stop = CancellationToken::new();
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.writers {
        let rate = args.write_rate / args.writers as f64;
        tasks.spawn(writer(t.clone(), 1000 + w as u64, rate, stop.clone(), counter.clone()));
    }
    for r in 0..args.readers {
        let rate = args.read_rate / args.readers as f64;
        tasks.spawn(reader(t.clone(), 2000 + r as u64, rate, ids.clone(), stop.clone()));
    }

    let started = Instant::now();
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let pid = server.pid();
    let mut rss_points: Vec<(f64, f64)> = Vec::new();
    let mut p99s: BTreeMap<Kind, Vec<Duration>> = BTreeMap::new();
    let mut all_errors = 0u64;
    let mut all_requests = 0u64;
    let mut rows = Vec::new();
    let mut sampler = tokio::time::interval(Duration::from_secs(5));
    let mut next_report = started + args.interval;
    let mut header = String::from("| min | requests | errors |");
    let mut rule = String::from("|---|---|---|");
    for k in Kind::ALL {
        header.push_str(&format!(" {} p50/p99 ms |", k.name()));
        rule.push_str("---|");
    }
    header.push_str(" RSS MiB | deliveries outstanding | delivered |");
    rule.push_str("---|---|---|");
    println!("\n{header}\n{rule}");
    while started.elapsed() < total {
        sampler.tick().await;
        if let Some(kib) = rss_kib(pid) {
            rss_points.push((started.elapsed().as_secs_f64() / 60.0, kib as f64 / 1024.0));
        } else {
            anyhow::bail!("hsda is gone");
        }
        if Instant::now() < next_report && started.elapsed() < total {
            continue;
        }
        next_report += args.interval;
        let interval = stats.take();
        let requests: u64 = interval.latencies.values().map(|v| v.len() as u64).sum();
        let errors: u64 = interval.errors.values().sum();
        all_requests += requests;
        all_errors += errors;
        let mut row = format!("| {:.1} | {requests} | {errors} |", started.elapsed().as_secs_f64() / 60.0);
        for k in Kind::ALL {
            let mut l = interval.latencies.get(&k).cloned().unwrap_or_default();
            l.sort();
            let p99 = percentile(&l, 0.99);
            if !l.is_empty() {
                p99s.entry(k).or_default().push(p99);
            }
            row.push_str(&format!(" {}/{} |", ms(percentile(&l, 0.5)), ms(p99)));
        }
        let (outstanding, _) = deliveries(&t, &sub).await.unwrap_or((u64::MAX, 0));
        let rss = rss_points.last().map(|(_, mib)| *mib).unwrap_or(0.0);
        let delivered = received.ids.lock().unwrap().len();
        row.push_str(&format!(" {rss:.1} | {outstanding} | {delivered} |"));
        println!("{row}");
        for e in &interval.first_errors {
            eprintln!("  error: {e}");
        }
        rows.push(row);
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let tail = stats.take();
    all_requests += tail.latencies.values().map(|v| v.len() as u64).sum::<u64>();
    all_errors += tail.errors.values().sum::<u64>();

    // Drain: every delivery of the run reaches the receiver (bounded wait).
    let drain_started = Instant::now();
    let mut drained = (u64::MAX, 0);
    while drain_started.elapsed() < Duration::from_secs(300) {
        drained = deliveries(&t, &sub).await.unwrap_or((u64::MAX, 0));
        if drained.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let delivered = received.ids.lock().unwrap().len() as u64;
    let duplicates = received.requests.load(Ordering::Relaxed).saturating_sub(delivered);

    let growth_all = slope(&rss_points);
    let warm: Vec<(f64, f64)> =
        rss_points.iter().copied().filter(|(m, _)| *m >= args.interval.as_secs_f64() / 60.0).collect();
    let growth_warm = slope(&warm);
    let half = args.minutes / 2.0;
    let growth_late = slope(&rss_points.iter().copied().filter(|(m, _)| *m >= half).collect::<Vec<_>>());
    let first = rss_points.first().map(|p| p.1).unwrap_or(0.0);
    let peak = rss_points.iter().map(|p| p.1).fold(0.0, f64::max);
    let last = rss_points.last().map(|p| p.1).unwrap_or(0.0);
    println!("\nrequests {all_requests}, errors {all_errors}, writes {}", counter.load(Ordering::Relaxed));
    println!(
        "RSS first {first:.1} MiB, peak {peak:.1} MiB, last {last:.1} MiB; linear fit {growth_all:+.2} MiB/min over \
         the run, {growth_warm:+.2} MiB/min after the first interval, {growth_late:+.2} MiB/min over the second half"
    );
    let mut spread = String::from("per-interval p99 (min..max):");
    for (k, v) in &p99s {
        let min = v.iter().min().copied().unwrap_or_default();
        let max = v.iter().max().copied().unwrap_or_default();
        spread.push_str(&format!(" {} {}..{} ms;", k.name(), ms(min), ms(max)));
    }
    println!("{spread}");
    println!(
        "deliveries: {} in all, {} outstanding after {:.1} s of drain, {delivered} distinct received, \
         {duplicates} duplicates",
        drained.1,
        drained.0,
        drain_started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(all_errors == 0, "{all_errors} requests failed");
    anyhow::ensure!(drained.0 == 0, "{} deliveries still outstanding", drained.0);
    anyhow::ensure!(delivered == drained.1, "{delivered} of {} deliveries received", drained.1);
    Ok(())
}
