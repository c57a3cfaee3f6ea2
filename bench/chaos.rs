//! Receiver chaos, long form (RELIABILITY.md, suite 3; the CI-sized test is `tests/it/chaos.rs`): the real
//! release `hsda` binary delivers paced writes to a healthy target alone, then to the healthy target beside
//! six misbehaving ones (slow, hang, reset, endless body, redirect, random 5xx: see
//! `tests/it/chaos_targets.rs`). Reports the healthy target's latency in both phases and their ratio, hsda's
//! resident memory and CPU, and audits every delivery's final state and attempts against what the targets did
//! and the retry schedule. Exits non-zero on any discrepancy.
//!
//! `cargo bench --bench chaos -- [--seconds 60] [--rate 10] [--store sqlite|postgres] [--timeout 2]
//! [--schedule 1,2,4] [--seed 4] [--slow-ms 500] [--log FILE]`

// Shared with the integration tests; not every helper is used here.
#[allow(dead_code)]
#[path = "../tests/it/chaos_targets.rs"]
mod chaos_targets;
#[allow(dead_code)]
#[path = "../tests/it/real_server.rs"]
mod real_server;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;

use chaos_targets::{
    Behaviour, ChaosSettings, ChaosTargets, Expectations, audit, paced_writes, percentile, unfinished,
};
use real_server::{RealServer, sample_rss};

const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MAX_SECONDS: f64 = 1800.0;

struct Args {
    seconds: f64,
    rate: f64,
    postgres: bool,
    timeout: u64,
    schedule: String,
    seed: u64,
    slow: Duration,
    log: Option<std::path::PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 60.0,
        rate: 10.0,
        postgres: false,
        timeout: 2,
        schedule: "1,2,4".into(),
        seed: 4,
        slow: Duration::from_millis(500),
        log: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => args.seconds = value()?.parse()?,
            "--rate" => args.rate = value()?.parse()?,
            "--store" => args.postgres = value()? == "postgres",
            "--timeout" => args.timeout = value()?.parse()?,
            "--schedule" => args.schedule = value()?,
            "--seed" => args.seed = value()?.parse()?,
            "--slow-ms" => args.slow = Duration::from_millis(value()?.parse()?),
            "--log" => args.log = Some(value()?.into()),
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    anyhow::ensure!(args.seconds > 0.0 && args.seconds <= MAX_SECONDS, "--seconds must be in (0, {MAX_SECONDS}]");
    anyhow::ensure!(args.rate > 0.0 && args.rate <= 1000.0, "--rate must be in (0, 1000]");
    anyhow::ensure!(args.timeout >= 1, "--timeout must be at least 1 second");
    anyhow::ensure!(args.slow < Duration::from_secs(args.timeout), "--slow-ms must be below the timeout");
    Ok(args)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let (database_url, _dir, pg_name) = if args.postgres {
        let name = format!("hsda_chaos_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL).await?;
        sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str()).await?;
        let base = POSTGRES_ADMIN_URL.rsplit_once('/').map(|(b, _)| b).unwrap_or(POSTGRES_ADMIN_URL);
        (format!("{base}/{name}"), None, Some(name))
    } else {
        let dir = tempfile::tempdir()?;
        (format!("sqlite://{}", dir.path().join("chaos.db").display()), Some(dir), None)
    };
    let outcome = run(&args, &database_url).await;
    if let Some(name) = pg_name
        && let Ok(mut conn) = sqlx::PgConnection::connect(POSTGRES_ADMIN_URL).await
    {
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        if let Err(e) = sqlx::Executor::execute(&mut conn, sql.as_str()).await {
            eprintln!("warning: could not drop {name}: {e}");
        }
    }
    outcome
}

async fn subscribe(
    client: &reqwest::Client,
    server: &RealServer,
    url: &str,
    concurrency: u32,
) -> anyhow::Result<String> {
    let body = json!({"url": url, "events": ["organization.*"], "max_concurrency": concurrency});
    let r = client.post(format!("{}/webhooks", server.base)).bearer_auth(&server.admin_key).json(&body).send().await?;
    let v: Value = r.error_for_status()?.json().await?;
    Ok(v["id"].as_str().ok_or_else(|| anyhow::anyhow!("no subscription id: {v}"))?.to_string())
}

async fn run(args: &Args, database_url: &str) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let store = if args.postgres { "postgres" } else { "sqlite" };
    println!(
        "# hsda receiver chaos: {store}, {} s per phase at {} writes/s, timeout {} s, schedule {}, seed {} \
         ({cores} cores; {})",
        args.seconds,
        args.rate,
        args.timeout,
        args.schedule,
        args.seed,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let settings = ChaosSettings { seed: args.seed, slow_delay: args.slow, ..Default::default() };
    let targets = ChaosTargets::start(settings).await?;
    let env = [
        ("HSDA_ALLOW_TARGETS", "127.0.0.0/8".to_string()),
        ("HSDA_RETRY_SCHEDULE", args.schedule.clone()),
        ("HSDA_DELIVERY_TIMEOUT_SECONDS", args.timeout.to_string()),
    ];
    let binary = env!("CARGO_BIN_EXE_hsda");
    let server = RealServer::start(binary, database_url, &env, args.log.as_deref(), Duration::from_secs(60)).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let rss = sample_rss(server.pid(), Duration::from_millis(250), stop.clone());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let writes = (args.seconds * args.rate).ceil() as usize;
    let limit = Duration::from_secs(120);

    let healthy = subscribe(&client, &server, targets.url(Behaviour::Healthy), 10).await?;
    let cpu0 = server.cpu_time().unwrap_or_default();
    let t0 = Instant::now();
    let (alone, missing_alone) =
        paced_writes(&client, &server.base, &server.admin_key, &targets, writes, args.rate, limit).await?;
    let cpu_alone = server.cpu_time().unwrap_or_default() - cpu0;
    let alone_for = t0.elapsed();
    let rss_alone = real_server::rss_kib(server.pid()).unwrap_or(0);

    // The hanging target needs enough slots to get through its attempts (each costs the timeout).
    let mut subs = vec![(Behaviour::Healthy, healthy)];
    for behaviour in Behaviour::ALL.into_iter().filter(|b| *b != Behaviour::Healthy) {
        subs.push((behaviour, subscribe(&client, &server, targets.url(behaviour), 100).await?));
    }
    let cpu1 = server.cpu_time().unwrap_or_default();
    let t1 = Instant::now();
    let (beside, missing_beside) =
        paced_writes(&client, &server.base, &server.admin_key, &targets, writes, args.rate, limit).await?;
    let written_for = t1.elapsed();
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds * 3.0 + 600.0);
    for (behaviour, sub) in &subs {
        while unfinished(&client, &server.base, &server.admin_key, sub).await? > 0 {
            anyhow::ensure!(Instant::now() < deadline, "{} never finished its deliveries", behaviour.name());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let cpu_beside = server.cpu_time().unwrap_or_default() - cpu1;
    let beside_for = t1.elapsed();
    stop.cancel();
    let rss = rss.await?;

    let expect = Expectations {
        delays: args
            .schedule
            .split(',')
            .map(|s| s.trim().parse().map(Duration::from_secs_f64))
            .collect::<Result<_, _>>()?,
        timeout: Duration::from_secs(args.timeout),
        slow_delay: args.slow,
    };
    println!("\n| target | deliveries | succeeded | failed | unfinished | attempts | error classes | target saw |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut problems = Vec::new();
    for (behaviour, sub) in &subs {
        let (s, found) = audit(&client, &server.base, &server.admin_key, sub, *behaviour, &targets, &expect).await?;
        let classes: Vec<String> = s.error_classes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} requests |",
            behaviour.name(),
            s.deliveries,
            s.succeeded,
            s.failed,
            s.unfinished,
            s.attempts,
            if classes.is_empty() { "-".to_string() } else { classes.join(", ") },
            targets.requests(*behaviour)
        );
        problems.extend(found);
    }
    let huge = targets.huge_bodies();
    let huge_max = huge.iter().map(|b| b.bytes).max().unwrap_or(0);
    let huge_open = huge.iter().map(|b| b.open_for).max().unwrap_or_default();
    let peak = rss.iter().map(|(_, kib)| *kib).max().unwrap_or(0);
    let first = rss.first().map(|(_, kib)| *kib).unwrap_or(0);
    let last = rss.last().map(|(_, kib)| *kib).unwrap_or(0);
    let (p50a, p99a) = (percentile(&alone, 0.5), percentile(&alone, 0.99));
    let (p50b, p99b) = (percentile(&beside, 0.5), percentile(&beside, 0.99));
    println!("\n| healthy target | writes | p50 ms | p99 ms | max ms | hsda CPU | phase length |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| alone | {writes} ({missing_alone} missing) | {:.1} | {:.1} | {:.1} | {:.1} s ({:.0} %) | {:.1} s |",
        ms(p50a),
        ms(p99a),
        ms(alone.last().copied().unwrap_or_default()),
        cpu_alone.as_secs_f64(),
        100.0 * cpu_alone.as_secs_f64() / alone_for.as_secs_f64(),
        alone_for.as_secs_f64()
    );
    println!(
        "| beside chaos | {writes} ({missing_beside} missing) | {:.1} | {:.1} | {:.1} | {:.1} s ({:.0} %) | {:.1} s \
         written, {:.1} s until every delivery was final |",
        ms(p50b),
        ms(p99b),
        ms(beside.last().copied().unwrap_or_default()),
        cpu_beside.as_secs_f64(),
        100.0 * cpu_beside.as_secs_f64() / beside_for.as_secs_f64(),
        written_for.as_secs_f64(),
        beside_for.as_secs_f64()
    );
    println!("| ratio | | {:.2} | {:.2} | | | |", ms(p50b) / ms(p50a).max(0.001), ms(p99b) / ms(p99a).max(0.001));
    println!(
        "\nRSS: {:.1} MiB at start, {:.1} MiB after the healthy phase, peak {:.1} MiB, {:.1} MiB at the end. \
         Endless bodies: {} cut off, at most {:.1} MiB produced and {:.2} s open. Redirects followed: {}.",
        first as f64 / 1024.0,
        rss_alone as f64 / 1024.0,
        peak as f64 / 1024.0,
        last as f64 / 1024.0,
        huge.len(),
        huge_max as f64 / (1024.0 * 1024.0),
        huge_open.as_secs_f64(),
        targets.redirects_followed()
    );
    if !problems.is_empty() {
        println!("\n{} discrepancies:", problems.len());
        for p in problems.iter().take(50) {
            println!("- {p}");
        }
    }
    server.stop().await;
    anyhow::ensure!(problems.is_empty(), "{} discrepancies between hsda's log and the targets", problems.len());
    anyhow::ensure!(missing_alone + missing_beside == 0, "events never reached the healthy target");
    anyhow::ensure!(targets.redirects_followed() == 0, "a redirect was followed");
    Ok(())
}
