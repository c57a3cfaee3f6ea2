//! Receiver chaos (RELIABILITY.md, suite 3), CI-sized: the real `hsda` binary delivers to targets that answer
//! slowly, hang, reset the connection, send endless bodies, redirect and fail at random, beside one healthy
//! target. Every delivery must end succeeded or failed exactly as the targets' answers and the retry schedule
//! say (attempt by attempt, with the right error classes), the process's memory must stay bounded, and the
//! healthy target's latency must stay close to what it was before the chaos targets were subscribed.
//! `bench/chaos.rs` is the long form, with figures.

use std::time::Duration;

use serde_json::{Value, json};

use crate::chaos_targets::{Behaviour, ChaosSettings, ChaosTargets, Expectations, audit, paced_writes, percentile};
use crate::helpers::{Store, fresh_database};
use crate::real_server::{RealServer, sample_rss};

const SCHEDULE: &str = "0.2,0.4";
const TIMEOUT: Duration = Duration::from_secs(1);
const WRITES: usize = 20;
const RATE: f64 = 20.0;
/// The real binary (a debug build here) must stay below this resident size while it copes with the chaos.
const RSS_LIMIT_KIB: u64 = 200 * 1024;

async fn subscribe(client: &reqwest::Client, server: &RealServer, url: &str) -> String {
    let body = json!({"url": url, "events": ["organization.*"]});
    let r = client.post(format!("{}/webhooks", server.base)).bearer_auth(&server.admin_key).json(&body).send().await;
    let v: Value = r.expect("POST /webhooks").json().await.expect("subscription");
    v["id"].as_str().unwrap_or_else(|| panic!("no subscription id: {v}")).to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn receiver_chaos(store: Store) {
    let Some((database_url, _dir)) = fresh_database(store).await else { return };
    // 70 % failures: with three attempts about a third of the flaky deliveries fail for good, so both outcomes
    // show up among 21 whatever order the deliveries arrive in.
    let settings = ChaosSettings {
        seed: 3,
        slow_delay: Duration::from_millis(300),
        flaky_failure_rate: 0.7,
        ..Default::default()
    };
    let targets = ChaosTargets::start(settings).await.expect("chaos targets");
    let env = [
        ("HSDA_ALLOW_TARGETS", "127.0.0.0/8".to_string()),
        ("HSDA_RETRY_SCHEDULE", SCHEDULE.to_string()),
        ("HSDA_DELIVERY_TIMEOUT_SECONDS", TIMEOUT.as_secs().to_string()),
    ];
    let server = RealServer::start(env!("CARGO_BIN_EXE_hsda"), &database_url, &env, None, Duration::from_secs(60))
        .await
        .expect("start hsda");
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let rss = sample_rss(server.pid(), Duration::from_millis(100), stop_sampling.clone());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    // Before: the healthy target alone.
    let healthy = subscribe(&client, &server, targets.url(Behaviour::Healthy)).await;
    let (alone, missing) =
        paced_writes(&client, &server.base, &server.admin_key, &targets, WRITES, RATE, Duration::from_secs(20))
            .await
            .expect("writes");
    assert_eq!(missing, 0, "every event reached the healthy target");

    // During: the same writes with every chaos target subscribed too.
    let mut subs = vec![(Behaviour::Healthy, healthy)];
    for behaviour in Behaviour::ALL.into_iter().filter(|b| *b != Behaviour::Healthy) {
        subs.push((behaviour, subscribe(&client, &server, targets.url(behaviour)).await));
    }
    let cpu_before = server.cpu_time();
    let (beside, missing) =
        paced_writes(&client, &server.base, &server.admin_key, &targets, WRITES, RATE, Duration::from_secs(20))
            .await
            .expect("writes");
    assert_eq!(missing, 0, "every event reached the healthy target beside the chaos");

    // Every delivery reaches a final state (bounded wait: the hanging target costs a timeout per attempt).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    for (behaviour, sub) in &subs {
        loop {
            let left = crate::chaos_targets::unfinished(&client, &server.base, &server.admin_key, sub).await.unwrap();
            if left == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} still has {left} unfinished deliveries",
                behaviour.name()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let cpu = server.cpu_time().zip(cpu_before).map(|(after, before)| after - before).unwrap_or_default();

    let expect = Expectations {
        delays: SCHEDULE.split(',').map(|s| Duration::from_secs_f64(s.parse().unwrap())).collect(),
        timeout: TIMEOUT,
        slow_delay: settings.slow_delay,
    };
    let mut problems = Vec::new();
    for (behaviour, sub) in &subs {
        let (summary, found) =
            audit(&client, &server.base, &server.admin_key, sub, *behaviour, &targets, &expect).await.unwrap();
        eprintln!("{:>8}: {summary:?}", behaviour.name());
        let expected = if *behaviour == Behaviour::Healthy { 2 * WRITES + 1 } else { WRITES + 1 };
        assert_eq!(summary.deliveries, expected, "{}: one delivery per event and the ping", behaviour.name());
        problems.extend(found);
        match behaviour {
            Behaviour::Healthy | Behaviour::Slow | Behaviour::Huge => assert_eq!(summary.succeeded, expected),
            Behaviour::Hang | Behaviour::Reset | Behaviour::Redirect => assert_eq!(summary.failed, expected),
            Behaviour::Flaky => assert!(summary.succeeded > 0 && summary.failed > 0, "{summary:?}"),
        }
    }
    assert!(problems.is_empty(), "{} discrepancies:\n{}", problems.len(), problems.join("\n"));
    assert_eq!(targets.redirects_followed(), 0, "redirects are never followed");
    for body in targets.huge_bodies() {
        assert!(body.bytes < 64 << 20, "hsda read {} bytes of an endless body", body.bytes);
        assert!(body.open_for < TIMEOUT + Duration::from_secs(1), "an endless body stayed open {:?}", body.open_for);
    }

    stop_sampling.cancel();
    let rss = rss.await.unwrap();
    let peak = rss.iter().map(|(_, kib)| *kib).max().unwrap_or(0);
    let first = rss.first().map(|(_, kib)| *kib).unwrap_or(0);
    let (p50a, p99a, p50b, p99b) =
        (percentile(&alone, 0.5), percentile(&alone, 0.99), percentile(&beside, 0.5), percentile(&beside, 0.99));
    eprintln!(
        "healthy latency alone p50 {:.1} ms p99 {:.1} ms; beside chaos p50 {:.1} ms p99 {:.1} ms (p99 ratio {:.2}); \
         RSS first {first} KiB peak {peak} KiB; CPU during chaos {cpu:?}",
        ms(p50a),
        ms(p99a),
        ms(p50b),
        ms(p99b),
        ms(p99b) / ms(p99a).max(0.001),
    );
    assert!(peak > 0 && peak < RSS_LIMIT_KIB, "hsda's resident memory peaked at {peak} KiB");
    // Loose on a shared CI machine: chaos may cost some latency, never the chaos targets' seconds. The median
    // carries the claim: a healthy delivery queued behind a hanging one would wait out its 1 s timeout, and
    // that is systematic. The p99 of 20 samples is their maximum, which one stall of the machine (the rest of
    // the suite runs beside this test) can push past any tight bound: it only has to stay short of waiting
    // behind a chaos target's whole schedule of attempts.
    assert!(p50b < p50a * 5 + Duration::from_millis(250), "healthy p50 {p50b:?} beside chaos, {p50a:?} alone");
    assert!(p99b < TIMEOUT * 3, "healthy p99 {p99b:?} beside chaos, {p99a:?} alone");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_targets_end_as_scheduled_sqlite() {
    receiver_chaos(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_targets_end_as_scheduled_postgres() {
    receiver_chaos(Store::Postgres).await;
}

/// While a hanging target holds every slot it may use (its subscription's, or the process's in-flight permits)
/// and more of its deliveries are due, the worker has nothing it may start: it must wait for a slot to be freed
/// or another delivery to fall due, not poll in a loop (which cost a core on SQLite before this was fixed).
async fn a_blocked_backlog_leaves_the_worker_idle(store: Store, max_concurrency: u32, max_in_flight: u32) {
    let Some((database_url, _dir)) = fresh_database(store).await else { return };
    let targets = ChaosTargets::start(ChaosSettings::default()).await.expect("chaos targets");
    let env = [
        ("HSDA_ALLOW_TARGETS", "127.0.0.0/8".to_string()),
        ("HSDA_RETRY_SCHEDULE", "60".to_string()),
        ("HSDA_DELIVERY_TIMEOUT_SECONDS", "30".to_string()),
        ("HSDA_MAX_IN_FLIGHT", max_in_flight.to_string()),
    ];
    let server = RealServer::start(env!("CARGO_BIN_EXE_hsda"), &database_url, &env, None, Duration::from_secs(60))
        .await
        .expect("start hsda");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let body =
        json!({"url": targets.url(Behaviour::Hang), "events": ["organization.*"], "max_concurrency": max_concurrency});
    let r = client.post(format!("{}/webhooks", server.base)).bearer_auth(&server.admin_key).json(&body).send().await;
    assert_eq!(r.expect("POST /webhooks").status(), 201);
    for i in 0..10 {
        let id = format!("00000000-0000-4000-8000-{:012}", i + 1);
        let body = json!({"name": format!("Org {i}"), "description": "backlog"});
        let r = client.put(format!("{}/organizations/{id}", server.base)).bearer_auth(&server.admin_key).json(&body);
        assert!(r.send().await.expect("PUT").status().is_success());
    }
    // The ping and the first deliveries hold what may be used for 30 s; the rest are due now. (The pause lets
    // PostgreSQL's statistics take in the writes' transactions, which it reports up to a few seconds late.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = (server.cpu_time().expect("cpu time"), transactions(store, &database_url).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = server.cpu_time().expect("cpu time") - before.0;
    let queries = transactions(store, &database_url).await - before.1;
    eprintln!(
        "max_concurrency {max_concurrency}, max_in_flight {max_in_flight}: {used:?} of CPU in 3 s, {queries} transactions"
    );
    // On PostgreSQL a spinning loop costs the database more than hsda: count its transactions too (an idle
    // worker makes under ten a second, at its one-second fallback tick; a spinning one made hundreds).
    assert!(queries < 100, "the worker spins while the backlog waits: {queries} transactions in 3 s");
    assert!(used < Duration::from_millis(300), "the worker spins while the backlog waits: {used:?} of CPU in 3 s");
    let hung = targets.requests(Behaviour::Hang);
    assert_eq!(hung, max_concurrency.min(max_in_flight) as usize, "only what may be in flight was started");
    server.stop().await;
}

/// Transactions committed in the database so far (PostgreSQL's statistics; always 0 on SQLite).
async fn transactions(store: Store, database_url: &str) -> i64 {
    use sqlx::Connection;
    if store != Store::Postgres {
        return 0;
    }
    let mut conn = sqlx::PgConnection::connect(database_url).await.expect("connect");
    let n: i64 = sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_database");
    let _ = conn.close().await;
    n
}

async fn blocked_backlogs(store: Store) {
    a_blocked_backlog_leaves_the_worker_idle(store, 1, 512).await; // the subscription's one slot is taken
    a_blocked_backlog_leaves_the_worker_idle(store, 5, 1).await; // the process's one in-flight permit is taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_blocked_backlog_leaves_the_worker_idle_sqlite() {
    blocked_backlogs(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_blocked_backlog_leaves_the_worker_idle_postgres() {
    blocked_backlogs(Store::Postgres).await;
}
