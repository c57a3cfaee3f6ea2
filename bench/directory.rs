//! The directory benchmark: generate an N-service package, import it into a fresh SQLite database (and a
//! fresh PostgreSQL database when one is given), then drive the real server with an in-process load driver
//! and compare its rates with the same driver against a trivial endpoint (the loopback/driver ceiling).
//!
//! `cargo bench --bench directory -- [--services N] [--database-url postgres://...] [--seconds S]
//! [--concurrency C] [--max-requests M] [--seed SEED]`; `HSDA_BENCH_POSTGRES_URL` stands in for
//! `--database-url`. Prints markdown tables; BENCHMARKS.md records the runs.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hsda::config::Config;
use hsda::generate::{GenerateOptions, generate};
use hsda::startup::Application;
use hsda::store::Db;
use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::Value;
use sqlx::{Connection, Executor, Row};

/// Options from the command line (cargo passes `--bench` too, which is ignored).
struct Options {
    services: usize,
    seed: u64,
    seconds: u64,
    concurrency: usize,
    max_requests: u64,
    postgres_url: Option<String>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut o = Options {
        services: 100_000,
        seed: 1,
        seconds: 10,
        concurrency: 32,
        max_requests: 2_000_000,
        postgres_url: std::env::var("HSDA_BENCH_POSTGRES_URL").ok().filter(|s| !s.is_empty()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--services" => o.services = value("--services")?.replace('_', "").parse()?,
            "--seed" => o.seed = value("--seed")?.parse()?,
            "--seconds" => o.seconds = value("--seconds")?.parse()?,
            "--concurrency" => o.concurrency = value("--concurrency")?.parse()?,
            "--max-requests" => o.max_requests = value("--max-requests")?.parse()?,
            "--database-url" => o.postgres_url = Some(value("--database-url")?),
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    if let Some(url) = &o.postgres_url
        && !url.starts_with("postgres")
    {
        bail!("--database-url must be a postgres:// URL (SQLite is always measured)");
    }
    Ok(o)
}

/// What the generated package offers the load driver: service ids and words to search for.
struct Corpus {
    service_ids: Vec<String>,
    words: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = parse_options()?;
    let dir = tempfile::tempdir()?;
    let package = dir.path().join("package");

    // (a) Generate.
    let started = Instant::now();
    let mut corpus = Corpus { service_ids: Vec::with_capacity(o.services), words: Vec::new() };
    let mut words = BTreeSet::new();
    let mut rows = 0u64;
    let opts = GenerateOptions { services: o.services, seed: o.seed, ..Default::default() };
    let stream = generate(&opts).inspect(|(table, row)| {
        rows += 1;
        if table.name == "service" {
            if let Some(id) = row.get("id").and_then(Value::as_str) {
                corpus.service_ids.push(id.to_string());
            }
            if let Some(name) = row.get("name").and_then(Value::as_str) {
                words.extend(hsda::store::read::search_words(name).into_iter().filter(|w| w.len() > 3));
            }
        }
    });
    hsda::bulk::write_datapackage(&package, stream).context("writing the package")?;
    let generate_secs = started.elapsed().as_secs_f64();
    corpus.words = words.into_iter().collect();
    println!("## hsda directory benchmark\n");
    println!(
        "services {}, rows {rows}, seed {}, concurrency {}, {} s per workload, {} CPUs\n",
        o.services,
        o.seed,
        o.concurrency,
        o.seconds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("generate + write package: {generate_secs:.1} s ({:.0} rows/s)\n", rows as f64 / generate_secs);

    // (b) Import into each store, then (c) load it.
    let mut stores = vec![("SQLite", format!("sqlite://{}", dir.path().join("bench.db").display()), None)];
    if let Some(admin_url) = &o.postgres_url {
        let (url, name) = create_postgres_database(admin_url).await?;
        stores.push(("PostgreSQL", url, Some(name)));
    }
    let ceiling = measure_ceiling(&o).await?;
    let mut results = Vec::new();
    for (label, url, pg_name) in &stores {
        let outcome = bench_store(&o, label, url, &package, rows, &corpus).await;
        if let (Some(name), Some(admin_url)) = (pg_name, &o.postgres_url) {
            drop_postgres_database(admin_url, name).await?;
        }
        results.push((label, outcome?));
    }

    println!("\n### Load (requests/s over {} s, {} workers, keep-alive)\n", o.seconds, o.concurrency);
    println!("| store | workload | requests | errors | req/s | p50 ms | p99 ms | % of ceiling |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    print_row("loopback", &ceiling, ceiling.rate());
    for (label, r) in &results {
        for w in &r.workloads {
            print_row(label, w, ceiling.rate());
        }
    }
    println!("\n### Import\n");
    println!("| store | rows | services | seconds | rows/s | services/s | read+validate s | phases |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (label, r) in &results {
        println!(
            "| {label} | {rows} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {} |",
            o.services,
            r.import_secs,
            rows as f64 / r.import_secs,
            o.services as f64 / r.import_secs,
            r.read_secs,
            r.phases
        );
    }
    println!("\n### Search query plan\n");
    for (label, r) in &results {
        println!("{label}:\n```\n{}\n```", r.plan);
    }
    Ok(())
}

fn print_row(label: &str, w: &Workload, ceiling: f64) {
    println!(
        "| {label} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1}% |",
        w.name,
        w.requests,
        w.errors,
        w.rate(),
        w.p50_ms(),
        w.p99_ms(),
        100.0 * w.rate() / ceiling
    );
}

struct StoreResult {
    import_secs: f64,
    read_secs: f64,
    phases: String,
    plan: String,
    workloads: Vec<Workload>,
}

async fn bench_store(
    o: &Options,
    label: &str,
    url: &str,
    package: &Path,
    rows: u64,
    corpus: &Corpus,
) -> anyhow::Result<StoreResult> {
    eprintln!("[{label}] importing {rows} rows ...");
    let db = Db::connect(url).await?;
    // `import_path` is `read_path` + `Db::import`; they are called apart here to time each phase.
    let started = Instant::now();
    let labelled = hsda::bulk::import::read_path(package)?;
    let read_secs = started.elapsed().as_secs_f64();
    let phases = PhaseClock::new();
    let progress = |phase: &str, done: u64, total: u64| phases.tick(phase, done, total);
    db.import(labelled, false, &progress).await.map_err(|e| anyhow::anyhow!("import failed: {e}"))?;
    let import_secs = started.elapsed().as_secs_f64();
    let phases = phases.summary();
    eprintln!("[{label}] imported in {import_secs:.1} s: read+validate {read_secs:.1} s, {phases}");

    let plan = explain_search(url, &corpus.words[0]).await?;
    eprintln!("[{label}] search plan:\n{plan}");

    let config = Config { database_url: url.to_string(), bind: "127.0.0.1:0".parse()?, ..Config::default() };
    let app = Application::build_with_db(config, db).await?;
    let base = format!("http://{}", app.local_addr());
    let token = app.shutdown_token();
    let server = tokio::spawn(app.run());

    let pages = (o.services as u64).div_ceil(50).max(1);
    let ids = Arc::new(corpus.service_ids.clone());
    let words = Arc::new(corpus.words.clone());
    let mut workloads = Vec::new();
    let b = base.clone();
    workloads.push(
        drive(o, "GET /services?page=P", move |rng| {
            format!("{b}/services?page={}&per_page=50", rng.gen_range(1..=pages))
        })
        .await?,
    );
    let b = base.clone();
    workloads.push(
        drive(o, "GET /services?search=W", move |rng| {
            format!("{b}/services?search={}&per_page=50", words.choose(rng).map(String::as_str).unwrap_or("food"))
        })
        .await?,
    );
    let b = base.clone();
    workloads.push(
        drive(o, "GET /services/{id}", move |rng| {
            format!("{b}/services/{}", ids.choose(rng).map(String::as_str).unwrap_or("none"))
        })
        .await?,
    );
    token.cancel();
    server.await??;
    Ok(StoreResult { import_secs, read_secs, phases, plan, workloads })
}

/// Records when each phase the import reports (`rows`, then one per root table) finishes.
struct PhaseClock {
    started: Instant,
    marks: Mutex<Vec<(String, Instant)>>,
}

impl PhaseClock {
    fn new() -> Self {
        PhaseClock { started: Instant::now(), marks: Mutex::new(Vec::new()) }
    }

    fn tick(&self, phase: &str, _done: u64, _total: u64) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        match marks.last_mut() {
            Some((p, at)) if p == phase => *at = Instant::now(),
            _ => marks.push((phase.to_string(), Instant::now())),
        }
    }

    /// `rows 40.1 s, <gap> s, service 12.0 s, ...`: each phase's time from the end of the one before.
    fn summary(&self) -> String {
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = self.started;
        let mut parts = Vec::new();
        for (phase, at) in marks.iter() {
            parts.push(format!("{phase} {:.1} s", at.duration_since(last).as_secs_f64()));
            last = *at;
        }
        parts.push(format!("commit {:.1} s", last.elapsed().as_secs_f64()));
        parts.join(", ")
    }
}

/// The plan of the list-with-search query `store::read` runs (same SQL text, same parameters).
async fn explain_search(url: &str, word: &str) -> anyhow::Result<String> {
    let mut lines = Vec::new();
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await?;
        let sql = "EXPLAIN QUERY PLAN SELECT r.id, r.modified_at, COALESCE(r.doc, r.data) FROM records r \
                   WHERE r.kind = $1 AND r.rid IN (SELECT rowid FROM records_fts WHERE records_fts MATCH $2) \
                   ORDER BY r.sort_key, r.id LIMIT $3 OFFSET $4";
        let rows = sqlx::query(sql)
            .bind("service")
            .bind(format!("\"{word}\""))
            .bind(50i64)
            .bind(0i64)
            .fetch_all(&mut conn)
            .await?;
        for row in rows {
            let id: i64 = row.try_get(0)?;
            let parent: i64 = row.try_get(1)?;
            let detail: String = row.try_get(3)?;
            lines.push(format!("{id}|{parent}|{detail}"));
        }
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        conn.execute("ANALYZE records").await?;
        // Literals instead of parameters so that the plan is the one for these values (the word is
        // alphanumeric, from `search_words`).
        let sql = format!(
            "EXPLAIN SELECT r.id, r.modified_at, COALESCE(r.doc, r.data) FROM records r \
             WHERE r.kind = 'service' AND r.search_vector @@ plainto_tsquery('simple', '{word}') \
             ORDER BY r.sort_key, r.id LIMIT 50 OFFSET 0"
        );
        let rows = sqlx::query(&sql).fetch_all(&mut conn).await?;
        for row in rows {
            lines.push(row.try_get::<String, _>(0)?);
        }
    }
    Ok(format!("-- search word {word:?}\n{}", lines.join("\n")))
}

/// One workload's outcome.
struct Workload {
    name: String,
    requests: u64,
    errors: u64,
    secs: f64,
    /// Latencies of successful requests, in microseconds, sorted.
    latencies: Vec<u64>,
}

impl Workload {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i] as f64 / 1000.0
    }

    fn p50_ms(&self) -> f64 {
        self.percentile_ms(0.50)
    }

    fn p99_ms(&self) -> f64 {
        self.percentile_ms(0.99)
    }
}

/// Runs `concurrency` keep-alive workers for `seconds` (or until `max_requests` in all), each requesting
/// the URLs `next_url` draws; a request counts as an error unless it answers 200 with a body that was read.
async fn drive<F>(o: &Options, name: &str, next_url: F) -> anyhow::Result<Workload>
where
    F: Fn(&mut rand::rngs::StdRng) -> String + Send + Sync + 'static,
{
    eprintln!("  driving {name} ...");
    let client = reqwest::Client::builder().pool_max_idle_per_host(o.concurrency).build()?;
    let next_url = Arc::new(next_url);
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..o.concurrency {
        let client = client.clone();
        let next_url = next_url.clone();
        let issued = issued.clone();
        let max = o.max_requests;
        workers.push(tokio::spawn(async move {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline && issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < max {
                let url = next_url(&mut rng);
                let t = Instant::now();
                let ok = match client.get(&url).send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => r.bytes().await.is_ok(),
                    Ok(r) => {
                        let _ = r.bytes().await;
                        false
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await?;
        latencies.extend(l);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(Workload { name: name.to_string(), requests: latencies.len() as u64 + errors, errors, secs, latencies })
}

/// The same driver against an in-process axum endpoint that returns a fixed 2 KB JSON body.
async fn measure_ceiling(o: &Options) -> anyhow::Result<Workload> {
    let body: &'static str =
        Box::leak(serde_json::json!({ "padding": "x".repeat(2048 - 14) }).to_string().into_boxed_str());
    let app = axum::Router::new().route(
        "/fixed",
        axum::routing::get(move || async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let token = tokio_util::sync::CancellationToken::new();
    let stop = token.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await
    });
    let w = drive(o, "GET /fixed (2 KB)", move |_| format!("{base}/fixed")).await?;
    token.cancel();
    server.await??;
    Ok(w)
}

async fn create_postgres_database(admin_url: &str) -> anyhow::Result<(String, String)> {
    let name = format!("hsda_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin_url).await.context("connecting to PostgreSQL")?;
    conn.execute(format!("CREATE DATABASE {name}").as_str()).await?;
    let base = admin_url.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or_else(|| admin_url.to_string());
    Ok((format!("{base}/{name}"), name))
}

async fn drop_postgres_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await?;
    Ok(())
}
