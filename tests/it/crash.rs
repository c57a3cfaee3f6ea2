//! Durability: the real `hsda` binary is killed with SIGKILL in the middle of a burst of writes with a
//! live subscription, then restarted; every committed change still reaches the receiver (at least once,
//! duplicates counted) and the event log has no gap.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Store, first_attempt_recorded, fresh_database};
use crate::real_server::RealServer;
use crate::receiver::Receiver;

/// A real server over `database_url` (with `env`), an admin key for it (made through the store, so it stays
/// valid across restarts), and a client.
async fn real_server(
    database_url: &str,
    env: &[(&str, &str)],
) -> (RealServer, hsda::store::Db, String, reqwest::Client) {
    let server = RealServer::start_for_test(database_url, env).await;
    let db = hsda::store::Db::connect(database_url).await.unwrap();
    let key = db.create_key("acme", hsda::store::keys::Scope::Admin).await.unwrap().secret;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    (server, db, key, client)
}

/// Subscribes `url` to `events`; returns the subscription's id.
async fn subscribe(server: &RealServer, client: &reqwest::Client, key: &str, url: &str, events: &[&str]) -> String {
    subscribe_with(server, client, key, &json!({"url": url, "events": events})).await
}

/// Creates the subscription `body` describes; returns its id.
async fn subscribe_with(server: &RealServer, client: &reqwest::Client, key: &str, body: &Value) -> String {
    let sub: Value =
        client.post(server.url("/webhooks")).bearer_auth(key).json(body).send().await.unwrap().json().await.unwrap();
    sub["id"].as_str().unwrap_or_else(|| panic!("no subscription: {sub}")).to_string()
}

async fn kill9_mid_burst_loses_nothing(store: Store) {
    let Some((database_url, _dir)) = fresh_database(store).await else { return };
    let rx = Receiver::start().await;
    let (mut server, db, key, client) = real_server(&database_url, &[]).await;
    let base = server.url("");
    subscribe(&server, &client, &key, &rx.url, &["organization.created"]).await;

    const WRITES: usize = 200;
    let ids: Vec<String> = (0..WRITES).map(|i| format!("00000000-0000-4000-8000-{:012}", i + 1)).collect();
    let mut kills = 0;
    for (i, id) in ids.iter().enumerate() {
        if i == 60 || i == 140 {
            server.kill9().await;
            kills += 1;
            server.restart().await;
        }
        let body = json!({"name": format!("Org {i}"), "description": "crash test"});
        // A write whose answer was lost may or may not have committed; PUT is idempotent, so retry.
        let mut tries = 0;
        loop {
            let r = client.put(format!("{base}/organizations/{id}")).bearer_auth(&key).json(&body).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tries += 1;
            assert!(tries < 50, "write {i} never succeeded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(kills, 2);
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let got = rx
        // A lease held by the killed process runs out after the delivery timeout + 15 s (PostgreSQL); the
        // test server uses a 5 s timeout.
        .wait_for_within("every organization.created", Duration::from_secs(60), |r| {
            let seen = Receiver::object_ids(r, "organization.created");
            want.iter().all(|id| seen.contains(*id))
        })
        .await;
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for r in Receiver::of_type(&got, "organization.created") {
        *per_event.entry(r.json()["id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let duplicates: usize = per_event.values().map(|n| n - 1).sum();
    eprintln!("kill -9 x{kills}: {} events delivered, {duplicates} duplicate deliveries", per_event.len());
    assert_eq!(per_event.len(), WRITES, "one organization.created per organization");

    let sequences: Vec<i64> = {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = db.events_after(after, &Default::default(), 1000).await.unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().unwrap().sequence;
            all.extend(page.into_iter().map(|e| e.sequence));
        }
        all
    };
    let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
    assert_eq!(sequences, expected, "the event log has no gap");
}

crate::each_store!(kill9_mid_burst_loses_nothing);

/// A real server whose first attempt (a subscription's ping) failed and whose retry, due after `schedule`
/// seconds, it holds.
struct HeldRetry {
    server: RealServer,
    db: hsda::store::Db,
    rx: Receiver,
    held: hsda::store::webhooks::Delivery,
    _dir: Option<tempfile::TempDir>,
}

async fn a_held_retry(store: Store, schedule: &str) -> Option<HeldRetry> {
    let (database_url, _dir) = fresh_database(store).await?;
    let rx = Receiver::start().await;
    rx.script(&[(500, None)]);
    let (server, db, key, client) = real_server(&database_url, &[("HSDA_RETRY_SCHEDULE", schedule)]).await;
    let sub_id = subscribe(&server, &client, &key, &rx.url, &["webhook.ping"]).await;
    let held = first_attempt_recorded(&db, &sub_id).await;
    Some(HeldRetry { server, db, rx, held, _dir })
}

/// A retry the failing process kept for itself (its delivery leased to it past the retry's time) is not lost
/// with the process, nor late: the next start gives the lease back at once and sends the retry when due
/// (about 5 s after the failure), not when the lease would have run out (the retry's time plus the 5 s
/// delivery timeout plus 15 s). On SQLite the start owns the file; on PostgreSQL it finds the killed worker's
/// liveness lock free.
async fn a_held_retry_survives_kill9_and_goes_when_due(store: Store) {
    let Some(HeldRetry { mut server, db, rx, held, _dir }) = a_held_retry(store, "5").await else { return };
    // Killed once the failed attempt is recorded and its retry held (due 4-6 s later).
    server.kill9().await;
    let killed = std::time::Instant::now();
    assert_eq!(rx.received().len(), 1, "killed before the held retry was due");
    let lease = db.delivery(&held.id).await.unwrap().unwrap().lease_until;
    assert!(lease.is_some(), "the killed process held the retry");
    server.restart().await;
    let got = rx.wait_for("the held retry, sent after the restart", |r| r.len() >= 2).await;
    assert_eq!(got[1].header("webhook-id"), held.id, "the same delivery");
    let late = killed.elapsed();
    assert!(late < Duration::from_secs(15), "sent {late:?} after the kill: the killed worker's lease ran out first");
}

crate::each_store!(a_held_retry_survives_kill9_and_goes_when_due);

/// SIGTERM (how systemd, Docker and Kubernetes stop a service) is a graceful stop: the process exits 0 and
/// gives back the retry it held, so that another process (or the next start) sends it when due instead of
/// after the lease has run out. Before, SIGTERM killed the process as SIGKILL would.
async fn sigterm_stops_gracefully_and_gives_back_held_retries(store: Store) {
    let Some(HeldRetry { mut server, db, held, _dir, .. }) = a_held_retry(store, "30").await else { return };
    assert!(db.delivery(&held.id).await.unwrap().unwrap().lease_until.is_some(), "the retry is held");
    let status = server.terminate().await;
    assert!(status.success(), "exited 0 after SIGTERM, not killed by it: {status:?}");
    let after = db.delivery(&held.id).await.unwrap().unwrap();
    assert_eq!((after.status.as_str(), after.lease_until), ("retrying", None), "its lease given back");
}

crate::each_store!(sigterm_stops_gracefully_and_gives_back_held_retries);

/// A verification challenge out when its process is killed is sent again right after the restart, not when
/// its lease would have run out (the 5 s delivery timeout plus 15 s): the subscription turns active then.
async fn a_challenge_out_at_kill9_goes_again_after_the_restart(store: Store) {
    let Some((database_url, _dir)) = fresh_database(store).await else { return };
    let rx = Receiver::start().await;
    rx.answer_challenges(crate::receiver::Challenges::Echo);
    rx.hold();
    let (mut server, _db, key, client) = real_server(&database_url, &[]).await;
    let body = json!({"url": rx.url, "events": ["organization.created"], "verify": true});
    let id = subscribe_with(&server, &client, &key, &body).await;
    rx.wait_for("the challenge, held at the target", |r| r.len() == 1).await;
    server.kill9().await;
    let killed = std::time::Instant::now();
    rx.open();
    server.restart().await;
    let status = || async {
        let shown: Value = client
            .get(server.url(&format!("/webhooks/{id}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (shown["status"] == "active").then_some(()).ok_or_else(|| shown.to_string())
    };
    crate::helpers::eventually("the subscription verified after the restart", Duration::from_secs(30), status).await;
    let late = killed.elapsed();
    assert!(
        late < Duration::from_secs(15),
        "verified {late:?} after the kill: the killed worker's lease ran out first"
    );
}

crate::each_store!(a_challenge_out_at_kill9_goes_again_after_the_restart);

/// A SIGTERM gives back at once what the process had leased but not started (deliveries waiting behind an
/// attempt held at a slow target), so that another process need not wait for the attempts in flight to end
/// (up to the delivery timeout) before it sends them.
async fn sigterm_gives_back_waiting_deliveries_before_the_attempts_in_flight_end(store: Store) {
    let Some((database_url, _dir)) = fresh_database(store).await else { return };
    let rx = Receiver::start().await;
    let (mut server, db, key, client) = real_server(&database_url, &[]).await;
    let body = json!({"url": rx.url, "events": ["organization.created"], "max_concurrency": 1});
    let sub_id = subscribe_with(&server, &client, &key, &body).await;
    rx.wait_for("the ping", |r| r.len() == 1).await;
    rx.hold();
    for i in 1..=3 {
        let id = format!("00000000-0000-4000-8000-0000000000f{i}");
        let r = client.put(server.url(&format!("/organizations/{id}"))).bearer_auth(&key);
        let r = r.json(&json!({"name": format!("Org {i}"), "description": "waits"})).send().await.unwrap();
        assert!(r.status().is_success());
    }
    rx.wait_for("the first event, held at the target", |r| r.len() == 2).await;
    let waiting_given_back = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let given_back = loop {
            let (_, page) = db.deliveries(&sub_id, &Default::default(), 1, 10).await.unwrap();
            let unleased =
                page.iter().filter(|d| d.event_type == "organization.created" && d.lease_until.is_none()).count();
            if unleased == 2 {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        rx.open();
        given_back
    };
    let (status, given_back) = tokio::join!(server.terminate(), waiting_given_back);
    assert!(status.success(), "exited 0: {status:?}");
    assert!(given_back, "the two waiting deliveries were given back while the first was still out");
}

crate::each_store!(sigterm_gives_back_waiting_deliveries_before_the_attempts_in_flight_end);
