//! How deliveries behave against awkward targets: a hanging target does not hold up a healthy one,
//! timeouts / redirects / huge bodies are recorded as such, ed25519 signatures verify with the public key,
//! a target that keeps failing gets its subscription disabled, and two processes on one PostgreSQL share
//! the work without sending anything twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

use crate::helpers::{Store, TestApp, first_attempt_recorded, fresh_database};
use crate::receiver::Receiver;

type Hits = Arc<Mutex<HashMap<&'static str, usize>>>;
/// When each request reached a target, and what it carried.
type Arrivals = Arc<Mutex<Vec<(tokio::time::Instant, String)>>>;

/// Targets that misbehave on purpose: `/hang` never answers in time, `/redirect` points elsewhere,
/// `/big` answers with a megabyte, `/fail` always 500, `/elsewhere` counts visits (redirects must not come).
async fn awkward_targets() -> (String, Hits) {
    let hits: Hits = Arc::default();
    async fn hit(State(h): State<Hits>, name: &'static str) {
        *h.lock().unwrap().entry(name).or_default() += 1;
    }
    let app = Router::new()
        .route(
            "/hang",
            post(|State(h): State<Hits>| async move {
                hit(State(h), "hang").await;
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/redirect",
            post(|State(h): State<Hits>| async move {
                hit(State(h), "redirect").await;
                (StatusCode::FOUND, [("location", "/elsewhere")], "moved")
            }),
        )
        .route(
            "/nul",
            post(|State(h): State<Hits>| async move {
                hit(State(h), "nul").await;
                (StatusCode::INTERNAL_SERVER_ERROR, "a\0b")
            }),
        )
        .route(
            "/trickle",
            post(|State(h): State<Hits>| async move {
                hit(State(h), "trickle").await;
                // A 200 whose body comes a byte every 300 ms, for 9 s.
                let bytes = futures::StreamExt::then(futures::stream::iter(0..30), |_| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::io::Error>(Bytes::from_static(b"x"))
                });
                axum::body::Body::from_stream(bytes)
            }),
        )
        .route(
            "/elsewhere",
            post(|State(h): State<Hits>| async move {
                hit(State(h), "elsewhere").await;
                "followed"
            }),
        )
        .route(
            "/big",
            post(|State(h): State<Hits>| async move {
                hit(State(h), "big").await;
                "x".repeat(1 << 20)
            }),
        )
        .route(
            "/fail",
            post(|State(h): State<Hits>, _h: HeaderMap, _b: Bytes| async move {
                hit(State(h), "fail").await;
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }),
        )
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

/// A target at `{base}/slow` that answers every request after `delay`, noting when each arrived and what it
/// carried (the object's `name`, or "ping").
async fn slow_target(delay: Duration) -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let target = Router::new()
        .route(
            "/slow",
            post(move |State(a): State<Arrivals>, body: Bytes| async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                let what = v["data"]["name"].as_str().unwrap_or("ping").to_string();
                a.lock().unwrap().push((tokio::time::Instant::now(), what));
                tokio::time::sleep(delay).await;
                "ok"
            }),
        )
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, target).await });
    (base, arrivals)
}

/// Waits (bounded: 20 s) until `n` requests reached a [`slow_target`].
async fn arrived(arrivals: &Arrivals, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while arrivals.lock().unwrap().len() < n {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {n} arrived", arrivals.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn subscribe(app: &TestApp, body: Value) -> Value {
    let r = app.post_as(&app.subscribe_key, "/webhooks", Some(&body)).await;
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

/// Waits (bounded) until a delivery of `sub` for the ping has `attempts` recorded; returns its details.
async fn ping_delivery(app: &TestApp, sub: &str, attempts: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = app.get_as(&app.subscribe_key, &format!("/webhooks/{sub}/deliveries?event_type=webhook.ping")).await;
        if let Some(id) = page["contents"][0]["id"].as_str() {
            let d = app.get_as(&app.subscribe_key, &format!("/deliveries/{id}")).await;
            if d["attempts"].as_array().map(Vec::len).unwrap_or(0) as u64 >= attempts {
                return d;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no attempt recorded for {sub}: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

macro_rules! both_stores {
    ($name:ident, $configure:expr, |$app:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some($app) = TestApp::spawn_with(Store::Sqlite, $configure).await {
                    $body.await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some($app) = TestApp::spawn_with(Store::Postgres, $configure).await {
                    $body.await;
                }
            }
        }
    };
}

both_stores!(
    a_hanging_target_does_not_hold_up_a_healthy_one,
    |c| {
        c.retry_schedule = Some("60".into());
        c.delivery_timeout_seconds = 30;
    },
    |app| async move {
        let (base, hits) = awkward_targets().await;
        let rx = Receiver::start().await;
        let hang =
            subscribe(&app, json!({"url": format!("{base}/hang"), "events": ["organization.*"], "max_concurrency": 2}))
                .await;
        subscribe(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
        for i in 0..200 {
            let id = format!("00000000-0000-4000-8000-{:012}", i + 1);
            app.put_ok(&format!("/organizations/{id}"), &json!({"name": format!("Org {i}"), "description": "x"})).await;
        }
        // All reach the healthy target while the hanging one still holds its two slots (it answers after 30 s).
        rx.wait_for("200 organization.created", |r| Receiver::of_type(r, "organization.created").len() >= 200).await;
        let hanging = hits.lock().unwrap().get("hang").copied().unwrap_or(0);
        assert!(hanging <= 2 + 1, "the hanging target got at most its own slots (and the ping): {hanging}");
        // Its backlog waits in the store, not in this process: few of its deliveries are leased to it (its
        // slots, its lane, and what was dispatched before the lane was known full), and none is lost.
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&app.database_url).await.expect("connect");
        let count = |sql: &'static str| {
            let (pool, id) = (pool.clone(), hang["id"].as_str().unwrap().to_string());
            async move { sqlx::query_scalar::<_, i64>(sql).bind(id).fetch_one(&pool).await.expect("count") }
        };
        let leased =
            count("SELECT COUNT(*) FROM deliveries WHERE subscription_id = $1 AND lease_until IS NOT NULL").await;
        let all = count("SELECT COUNT(*) FROM deliveries WHERE subscription_id = $1").await;
        assert!(leased <= 2 + 2 * 4 * 4, "{leased} of the hanging target's deliveries are held by this process");
        assert_eq!(all, 201, "every change and the ping");
        // Most were never leased: dispatch left them in the store once the lane was full (a delivery given back
        // keeps the name of its last holder).
        let never = count("SELECT COUNT(*) FROM deliveries WHERE subscription_id = $1 AND lease_holder IS NULL").await;
        assert!(never >= 201 - (2 + 2 * 4 * 4), "only {never} were never leased to this process");
        pool.close().await;
    }
);

// A busy target that keeps answering is handed its deliveries at dispatch past its lane's depth (they go out
// from memory), not left in the store to be claimed and rebuilt one claim at a time: ten such targets got a
// third fewer deliveries a second on PostgreSQL (W2) when only a hanging one should be held to its depth.
both_stores!(
    a_busy_target_that_keeps_up_is_handed_its_deliveries_at_dispatch,
    |c| c.retry_schedule = Some("60".into()),
    |app| async move {
        let (base, arrivals) = slow_target(Duration::from_millis(30)).await;
        let sub =
            subscribe(&app, json!({"url": format!("{base}/slow"), "events": ["organization.*"], "max_concurrency": 1}))
                .await;
        // Heard from, at its pace (about 30 answers a second): its ping and 40 changes answered.
        for i in 0..40 {
            let id = format!("00000000-0000-4000-8000-{:012}", 0x4000 + i);
            app.put_ok(&format!("/organizations/{id}"), &json!({"name": format!("Warm {i}"), "description": "x"}))
                .await;
        }
        arrived(&arrivals, 41).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in 0..60 {
            let id = format!("00000000-0000-4000-8000-{:012}", 0x5000 + i);
            app.put_ok(&format!("/organizations/{id}"), &json!({"name": format!("Org {i}"), "description": "x"})).await;
        }
        // Its lane is 4 deep (16 handed over): held to that, the rest would wait in the store, unleased; keeping
        // up, it is handed about 5 s of its answers (some 150).
        let pool = sqlx::AnyPool::connect(&app.database_url).await.expect("connect");
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE subscription_id = $1 AND lease_until IS NULL AND status <> 'succeeded'",
        )
        .bind(sub["id"].as_str().unwrap())
        .fetch_one(&pool)
        .await
        .expect("count");
        assert!(left <= 2, "{left} of 60 left in the store for claims");
        arrived(&arrivals, 101).await;
        pool.close().await;
    }
);

both_stores!(
    timeouts_redirects_and_huge_bodies_are_recorded_as_such,
    |c| {
        c.retry_schedule = Some("60".into());
        c.delivery_timeout_seconds = 1;
    },
    |app| async move {
        let (base, hits) = awkward_targets().await;
        let hang = subscribe(&app, json!({"url": format!("{base}/hang"), "events": ["webhook.ping"]})).await;
        let redirect = subscribe(&app, json!({"url": format!("{base}/redirect"), "events": ["webhook.ping"]})).await;
        let big = subscribe(&app, json!({"url": format!("{base}/big"), "events": ["webhook.ping"]})).await;
        let nul = subscribe(&app, json!({"url": format!("{base}/nul"), "events": ["webhook.ping"]})).await;

        let d = ping_delivery(&app, hang["id"].as_str().unwrap(), 1).await;
        assert_eq!(d["attempts"][0]["error_class"], "timeout", "{d}");
        assert!(d["attempts"][0]["status_code"].is_null());
        // `at` is when the request went out: right after the delivery was queued, not a timeout later.
        let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
        let waited = time(&d["attempts"][0]["at"]) - time(&d["created_at"]);
        assert!(waited < chrono::Duration::milliseconds(900), "sent {waited} after it was queued: {d}");
        assert!(d["attempts"][0]["duration_ms"].as_i64().unwrap() >= 900, "{d}");
        assert_eq!(d["status"], "retrying");

        let d = ping_delivery(&app, redirect["id"].as_str().unwrap(), 1).await;
        assert_eq!(d["attempts"][0]["status_code"], 302, "{d}");
        assert_eq!(d["status"], "retrying", "a redirect is not a success");
        assert_eq!(hits.lock().unwrap().get("elsewhere").copied().unwrap_or(0), 0, "redirects are not followed");

        let d = ping_delivery(&app, big["id"].as_str().unwrap(), 1).await;
        assert_eq!(d["status"], "succeeded");
        let excerpt = d["attempts"][0]["response_body"].as_str().unwrap();
        assert!(!excerpt.is_empty() && excerpt.len() <= 4096, "response body truncated: {} bytes", excerpt.len());

        // A NUL in the answer is kept as U+FFFD: PostgreSQL would refuse the record (and its whole batch).
        let d = ping_delivery(&app, nul["id"].as_str().unwrap(), 1).await;
        assert_eq!(
            (d["attempts"][0]["status_code"].as_i64(), d["attempts"][0]["response_body"].as_str()),
            (Some(500), Some("a\u{FFFD}b"))
        );
    }
);

// A 2xx is a success as soon as it comes: a body that trickles in after it is read for its excerpt for a
// second, not until the timeout, which would hold the lane's slot meanwhile.
both_stores!(
    a_success_whose_body_trickles_in_is_not_held_until_the_timeout,
    |c| c.delivery_timeout_seconds = 8,
    |app| async move {
        let (base, _) = awkward_targets().await;
        let trickle = subscribe(&app, json!({"url": format!("{base}/trickle"), "events": ["webhook.ping"]})).await;
        let d = ping_delivery(&app, trickle["id"].as_str().unwrap(), 1).await;
        let attempt = &d["attempts"][0];
        assert_eq!((d["status"].as_str(), attempt["status_code"].as_i64()), (Some("succeeded"), Some(200)), "{d}");
        let took = attempt["duration_ms"].as_i64().unwrap();
        assert!((900..4000).contains(&took), "{took} ms: {d}");
        let excerpt = attempt["response_body"].as_str().unwrap();
        assert!(!excerpt.is_empty() && excerpt.len() < 15 && excerpt.bytes().all(|b| b == b'x'), "{d}");
    }
);

both_stores!(
    a_target_failing_past_the_limit_gets_its_subscription_disabled,
    |c| {
        c.retry_schedule = Some("0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3".into());
        c.disable_after_seconds = 1;
    },
    |app| async move {
        let (base, _hits) = awkward_targets().await;
        let sub = subscribe(&app, json!({"url": format!("{base}/fail")})).await;
        let id = sub["id"].as_str().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let shown = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await;
            if shown["status"] == "disabled" {
                assert!(shown["disabled_reason"].as_str().unwrap().contains("failing for more than"), "{shown}");
                assert!(shown["consecutive_failures"].as_i64().unwrap() >= 2);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never disabled: {shown}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let types: Vec<String> =
            app.events_after(0).await.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
        assert!(types.contains(&"webhook.failing".to_string()), "{types:?}");
        assert!(types.contains(&"webhook.disabled".to_string()), "{types:?}");
    }
);

both_stores!(
    a_failed_attempt_keeps_its_retry_leased_and_the_same_process_sends_it_when_due,
    |c| c.retry_schedule = Some("4".into()),
    |app| async move {
        let rx = Receiver::start().await;
        rx.script(&[(500, None)]);
        let sub = subscribe(&app, json!({"url": rx.url, "events": ["webhook.ping"]})).await;
        let sub_id = sub["id"].as_str().unwrap();
        let failed = ping_delivery(&app, sub_id, 1).await;
        let id = failed["id"].as_str().unwrap();
        // The retry is due in 3.2-4.8 s; until well past then the delivery stays leased to this process, so
        // no claim (no write transaction) is needed to send it, and no other process can take it.
        let held = app.db.delivery(id).await.unwrap().expect("the delivery");
        assert_eq!((held.status.as_str(), held.attempts), ("retrying", 1), "{held:?}");
        let (retry_at, lease) = (held.next_attempt_at.clone().unwrap(), held.lease_until.clone().expect("leased"));
        assert!(lease > retry_at, "held past its retry time: lease {lease}, retry {retry_at}");
        assert!(app.db.claim_due(10, 60, &[]).await.unwrap().is_empty(), "nothing is claimable meanwhile");

        let got = rx.wait_for("the retry", |r| r.len() >= 2).await;
        assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"), "a retry keeps its webhook-id");
        let done = ping_delivery(&app, sub_id, 2).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert!(app.db.delivery(id).await.unwrap().unwrap().lease_until.is_none(), "released once done");
    }
);

both_stores!(a_late_failed_attempt_never_reopens_a_delivery_that_succeeded, |_| {}, |app| async move {
    use hsda::store::webhooks::AttemptOutcome;
    let rx = Receiver::start().await;
    let sub = subscribe(&app, json!({"url": rx.url, "events": ["webhook.ping"]})).await;
    let done = ping_delivery(&app, sub["id"].as_str().unwrap(), 1).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let id = done["id"].as_str().unwrap();
    let delivery = app.db.delivery(id).await.unwrap().unwrap();
    // An attempt that was still in flight when the delivery was sent again (a retry asked for meanwhile, say)
    // fails after the other one succeeded: it is recorded, and the delivery stays done.
    let at = hsda::store::now_text();
    let late = answered(at.clone(), 500, AttemptOutcome::Retry { at, held_until: None });
    app.db.record_attempts(vec![(delivery, late)], 3600).await.unwrap();
    let after = app.get_as(&app.subscribe_key, &format!("/deliveries/{id}")).await;
    assert_eq!(after["status"], "succeeded", "{after}");
    assert_eq!(after["attempts"].as_array().map(Vec::len), Some(2), "the late attempt is in the history: {after}");
    let shown = app.get_as(&app.subscribe_key, &format!("/webhooks/{}", sub["id"].as_str().unwrap())).await;
    assert_eq!(
        (shown["status"].as_str(), shown["consecutive_failures"].as_i64()),
        (Some("active"), Some(0)),
        "{shown}"
    );
});

// A PATCH that sends the status back as it read it (`active` from before the target began to fail, or
// `failing` itself) changes the other fields and leaves the status, its counters and its clock to hsda.
both_stores!(
    a_status_sent_back_as_read_leaves_a_failing_subscription_failing,
    |c| c.retry_schedule = Some("60".into()),
    |app| async move {
        let rx = Receiver::start().await;
        rx.script(&[(500, None)]);
        let sub = subscribe(&app, json!({"url": rx.url, "events": ["webhook.ping"]})).await;
        let sub_id = sub["id"].as_str().unwrap();
        assert_eq!(sub["status"], "active");
        ping_delivery(&app, sub_id, 1).await;
        let path = format!("/webhooks/{sub_id}");
        let failing: Value = app.get_as(&app.subscribe_key, &path).await;
        assert_eq!((failing["status"].as_str(), failing["consecutive_failures"].as_i64()), (Some("failing"), Some(1)));
        for (status, description) in [("active", "renamed"), ("failing", "renamed again")] {
            let r =
                app.patch_as(&app.subscribe_key, &path, &json!({"status": status, "description": description})).await;
            assert_eq!(r.status(), 200, "{status}");
            let now: Value = app.get_as(&app.subscribe_key, &path).await;
            assert_eq!(now["description"], description);
            for field in ["status", "consecutive_failures", "last_failure_at"] {
                assert_eq!(now[field], failing[field], "{field} after sending back {status}: {now}");
            }
        }
    }
);

both_stores!(
    an_attempt_older_than_the_last_one_recorded_leaves_the_status_alone,
    |c| c.retry_schedule = Some("60".into()),
    |app| async move {
        use hsda::store::webhooks::AttemptOutcome;
        let rx = Receiver::start().await;
        rx.script(&[(500, None)]);
        let sub = subscribe(&app, json!({"url": rx.url, "events": ["webhook.ping", "organization.created"]})).await;
        let sub_id = sub["id"].as_str().unwrap();
        let ping_id = ping_delivery(&app, sub_id, 1).await["id"].as_str().unwrap().to_string();
        let ping = app.db.delivery(&ping_id).await.unwrap().expect("the ping");
        // Sent before the next delivery went out (its answer comes in a later batch, or through another process).
        let sent_before = hsda::store::now_text();
        let (app, path) = (&app, format!("/webhooks/{sub_id}"));
        let shown = || app.get_as(&app.subscribe_key, &path);
        assert_eq!(shown().await["status"], "failing");
        let org = "00000000-0000-4000-8000-00000000f1a9";
        app.put_ok(
            &format!("/organizations/{org}"),
            &json!({"id": org, "name": "Flap Pantry", "description": "Food for all."}),
        )
        .await;
        rx.wait_for("the organization", |r| r.iter().any(|r| r.json()["type"] == "organization.created")).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while shown().await["status"] != "active" {
            assert!(tokio::time::Instant::now() < deadline, "never recovered: {}", shown().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let failing_events =
            || async move { app.events_after(0).await.iter().filter(|e| e["type"] == "webhook.failing").count() };
        assert_eq!(failing_events().await, 1);

        let far = "2999-01-01T00:00:00.000000Z";
        let failure =
            |at: String| answered(at, 500, AttemptOutcome::Retry { at: far.into(), held_until: Some(far.into()) });
        // The ping's retry failed, sent before the organization's delivery succeeded: the target answered
        // since, so the subscription stays recovered and no second `webhook.failing` goes out.
        app.db.record_attempts(vec![(ping, failure(sent_before.clone()))], 3600).await.unwrap();
        let now = shown().await;
        assert_eq!((now["status"].as_str(), now["consecutive_failures"].as_i64()), (Some("active"), Some(0)), "{now}");
        assert_eq!(failing_events().await, 1);
        let ping = app.db.delivery(&ping_id).await.unwrap().expect("the ping");
        assert_eq!((ping.status.as_str(), ping.attempts), ("retrying", 2), "the delivery takes it: {ping:?}");

        // A failure sent after that success is news: failing again.
        app.db.record_attempts(vec![(ping, failure(hsda::store::now_text()))], 3600).await.unwrap();
        let now = shown().await;
        assert_eq!((now["status"].as_str(), now["consecutive_failures"].as_i64()), (Some("failing"), Some(1)), "{now}");
        assert_eq!(failing_events().await, 2);

        // And a success sent before that failure, recorded after it, does not recover it.
        let ping = app.db.delivery(&ping_id).await.unwrap().expect("the ping");
        let success = answered(sent_before, 200, AttemptOutcome::Succeeded);
        app.db.record_attempts(vec![(ping, success)], 3600).await.unwrap();
        let now = shown().await;
        assert_eq!((now["status"].as_str(), now["consecutive_failures"].as_i64()), (Some("failing"), Some(1)), "{now}");
        let recovered = app.events_after(0).await.iter().filter(|e| e["type"] == "webhook.recovered").count();
        assert_eq!(recovered, 1, "only the real recovery");
    }
);

/// The record of an attempt sent `at` that the target answered with `status_code` (a failure unless 2xx),
/// and what the recorder is to do next: as the worker hands it over.
fn answered(
    at: String,
    status_code: i64,
    outcome: hsda::store::webhooks::AttemptOutcome,
) -> hsda::store::webhooks::AttemptRecord {
    let failed = !(200..300).contains(&status_code);
    hsda::store::webhooks::AttemptRecord {
        attempt: hsda::store::webhooks::Attempt {
            at,
            status_code: Some(status_code),
            duration_ms: 2,
            error: failed.then(|| format!("HTTP {status_code}")),
            error_class: failed.then(|| "http_status".into()),
            response_body: None,
        },
        outcome,
    }
}

both_stores!(
    a_retry_asked_for_while_one_is_held_is_sent_once,
    |c| c.retry_schedule = Some("3".into()),
    |app| async move {
        let rx = Receiver::start().await;
        rx.script(&[(500, None)]);
        let sub = subscribe(&app, json!({"url": rx.url, "events": ["webhook.ping"]})).await;
        let failed = ping_delivery(&app, sub["id"].as_str().unwrap(), 1).await;
        let id = failed["id"].as_str().unwrap();
        assert!(app.db.delivery(id).await.unwrap().unwrap().lease_until.is_some(), "held");
        // The target is fixed; the user asks for the retry now instead of in 2.4-3.6 s.
        let r = app.post_as(&app.subscribe_key, format!("/deliveries/{id}/retry"), None).await;
        assert!(r.status().is_success(), "{}", r.status());
        rx.wait_for("the retry asked for", |r| r.len() >= 2).await;
        // Past the held retry's time: the process that held it finds the delivery done and sends nothing.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(rx.received().len(), 2, "the failed attempt and the retry asked for, nothing more");
        let done = app.get_as(&app.subscribe_key, &format!("/deliveries/{id}")).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
);

both_stores!(ed25519_subscriptions_sign_v1a_with_a_retrievable_public_key, |_| {}, |app| async move {
    use base64::Engine;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let rx = Receiver::start().await;
    let sub = subscribe(&app, json!({"url": rx.url, "signing": "ed25519"})).await;
    assert!(sub["secret"].as_str().unwrap().starts_with("whsk_"));
    let public =
        app.get_as(&app.subscribe_key, &format!("/webhooks/{}", sub["id"].as_str().unwrap())).await["public_key"]
            .as_str()
            .unwrap()
            .to_string();
    let b64 = base64::engine::general_purpose::STANDARD;
    let key_bytes: [u8; 32] = b64.decode(public.strip_prefix("whpk_").unwrap()).unwrap().try_into().unwrap();
    let key = VerifyingKey::from_bytes(&key_bytes).unwrap();
    let got = rx.wait_for("the ping", |r| !r.is_empty()).await;
    let ping = &got[0];
    let signed = format!(
        "{}.{}.{}",
        ping.header("webhook-id"),
        ping.header("webhook-timestamp"),
        String::from_utf8_lossy(&ping.body)
    );
    let header = ping.header("webhook-signature");
    let sig = header.strip_prefix("v1a,").expect("v1a signature");
    let sig: [u8; 64] = b64.decode(sig).unwrap().try_into().unwrap();
    key.verify(signed.as_bytes(), &Signature::from_bytes(&sig))
        .expect("ed25519 signature verifies with the public key");
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_share_the_work_without_double_sending() {
    let Some((url, _)) = fresh_database(Store::Postgres).await else { return };
    let rx = Receiver::start().await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        let config = hsda::config::Config {
            database_url: url.clone(),
            bind: "127.0.0.1:0".parse().unwrap(),
            allow_targets: "127.0.0.0/8".into(),
            ..Default::default()
        };
        let app = hsda::startup::Application::build(config).await.unwrap();
        let base = format!("http://{}", app.local_addr());
        let token = app.shutdown_token();
        let db = app.db().clone();
        tokio::spawn(app.run());
        apps.push((base, token, db));
    }
    let key = apps[0].2.create_key("acme", hsda::store::keys::Scope::Admin).await.unwrap().secret;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/webhooks", apps[0].0))
        .bearer_auth(&key)
        .json(&json!({"url": rx.url, "events": ["organization.created"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    const N: usize = 100;
    let writes = (0..N).map(|i| {
        let base = apps[i % 2].0.clone();
        let client = client.clone();
        let key = key.clone();
        async move {
            let id = format!("00000000-0000-4000-8000-{:012}", i + 1);
            let r = client
                .put(format!("{base}/organizations/{id}"))
                .bearer_auth(&key)
                .json(&json!({"name": format!("Org {i}"), "description": "x"}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    });
    futures::future::join_all(writes).await;
    let got =
        rx.wait_for("every organization.created", |r| Receiver::of_type(r, "organization.created").len() >= N).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // room for a duplicate to show, if there were one
    let created = Receiver::of_type(&rx.received(), "organization.created");
    let mut ids: Vec<String> = created.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "{} deliveries", got.len());
    assert_eq!(created.len(), N, "no delivery sent twice");
    for (_, token, _) in &apps {
        token.cancel();
    }
}

/// The worker sleeps until the earliest time it can claim something: a due delivery that no process holds,
/// or a lease that runs out. Deliveries held (leased), finished, or of subscriptions it leaves out (busy) do
/// not count; and a claim takes only what is due and free, earliest first.
async fn the_next_claimable_time_skips_held_finished_and_busy_deliveries(store: Store) {
    let Some((url, _dir)) = fresh_database(store).await else { return };
    let db = hsda::store::Db::connect(&url).await.unwrap();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let at = |seconds: i64| hsda::store::timestamp_text(chrono::Utc::now() + chrono::Duration::seconds(seconds));
    for sub in ["sub_a", "sub_b"] {
        sqlx::query(
            "INSERT INTO subscriptions (id, tenant, url, events, payload, filter, secret, signing, max_concurrency, \
             headers, metadata, status, created_at, updated_at) \
             VALUES ($1, 'acme', 'http://127.0.0.1:9/', '[\"*\"]', 'full', '{}', 'whsec_x', 'hmac-sha256', 10, \
             '{}', '{}', 'active', $2, $2)",
        )
        .bind(sub)
        .bind(at(0))
        .execute(&pool)
        .await
        .unwrap();
    }
    // (id, subscription, status, due in s, leased for s)
    let rows: [(&str, &str, &str, i64, Option<i64>); 5] = [
        ("msg_free_later", "sub_a", "pending", 10, None),
        ("msg_held", "sub_a", "pending", -5, Some(60)),
        ("msg_lease_over_soon", "sub_a", "retrying", -5, Some(30)),
        ("msg_other", "sub_b", "retrying", 20, None),
        ("msg_done", "sub_a", "succeeded", -100, None),
    ];
    for (i, (id, sub, status, due, lease)) in rows.iter().enumerate() {
        sqlx::query(
            "INSERT INTO deliveries (id, subscription_id, tenant, event_id, event_sequence, event_type, object_id, \
             body, status, next_attempt_at, lease_until, created_at, updated_at) \
             VALUES ($1, $2, 'acme', $3, $4, 'organization.created', 'o', '{}', $5, $6, $7, $6, $6)",
        )
        .bind(*id)
        .bind(*sub)
        .bind(format!("evt_{i}"))
        .bind(i as i64)
        .bind(*status)
        .bind(at(*due))
        .bind(lease.map(at))
        .execute(&pool)
        .await
        .unwrap();
    }
    let due_of = |id: &str| {
        let (_, _, _, due, lease) = rows.iter().find(|r| r.0 == id).unwrap();
        lease.unwrap_or(*due)
    };
    let next = db.next_due(&[]).await.unwrap().expect("something is claimable later");
    let expected = at(due_of("msg_free_later"));
    assert!(next <= expected && next > at(due_of("msg_free_later") - 2), "{next} vs {expected}");
    let next = db.next_due(&["sub_a".to_string()]).await.unwrap().expect("sub_b's delivery");
    assert!(next > at(due_of("msg_free_later") + 5) && next <= at(due_of("msg_other")), "{next}");
    assert!(db.claim_due(10, 60, &[]).await.unwrap().is_empty(), "nothing due is free yet");

    sqlx::query("UPDATE deliveries SET next_attempt_at = $1 WHERE id IN ('msg_free_later', 'msg_other')")
        .bind(at(-1))
        .execute(&pool)
        .await
        .unwrap();
    let claimed: Vec<String> = db.claim_due(10, 60, &[]).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(claimed.len(), 2, "the two due and free ones: {claimed:?}");
    assert!(claimed.contains(&"msg_free_later".to_string()) && claimed.contains(&"msg_other".to_string()));
    // Now held in turn, they move to their lease's end; the earliest time left is the soonest lease's end.
    let next = db.next_due(&[]).await.unwrap().unwrap();
    assert!(next > at(25) && next <= at(30), "the lease of msg_lease_over_soon: {next}");
    pool.close().await;
}

crate::each_store!(the_next_claimable_time_skips_held_finished_and_busy_deliveries);

both_stores!(
    a_stopping_worker_releases_the_retries_it_held,
    |c| c.retry_schedule = Some("30".into()),
    |app| async move {
        // Given back to the store at once, another process (or the next start) claims them when due rather
        // than when the lease would have run out.
        let mut app = app;
        let rx = Receiver::start().await;
        rx.script(&[(500, None)]);
        let sub = subscribe(&app, json!({"url": rx.url, "events": ["webhook.ping"]})).await;
        let held = first_attempt_recorded(&app.db, sub["id"].as_str().unwrap()).await;
        assert!(held.lease_until.is_some(), "held for its retry in 24-36 s: {held:?}");
        app.stop().await;
        let db = hsda::store::Db::connect(&app.database_url).await.unwrap();
        let after = db.delivery(&held.id).await.unwrap().unwrap();
        assert_eq!((after.status.as_str(), after.lease_until.as_deref()), ("retrying", None), "released: {after:?}");
    }
);

both_stores!(
    a_delivery_that_waited_too_long_in_its_lane_renews_its_lease_and_goes_in_turn,
    |c| c.delivery_timeout_seconds = 20,
    |app| async move {
        // One slot, a target taking 8 s per request: the ping holds the slot, A waits up to 8 s (started), B
        // about 16 s, past the 10 s a delivery may wait before its lease could run out mid-attempt. B's lease
        // is renewed then and B goes in its turn, instead of being dropped until its 35 s lease runs out.
        let (base, arrivals) = slow_target(Duration::from_secs(8)).await;

        let sub =
            subscribe(&app, json!({"url": format!("{base}/slow"), "events": ["organization.*"], "max_concurrency": 1}))
                .await;
        let arrived = |what: &str| -> Vec<tokio::time::Instant> {
            arrivals.lock().unwrap().iter().filter(|(_, w)| w == what).map(|(t, _)| *t).collect()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while arrived("ping").is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the ping never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let written = tokio::time::Instant::now();
        for name in ["A", "B"] {
            let id = if name == "A" {
                "00000000-0000-4000-8000-00000000000a"
            } else {
                "00000000-0000-4000-8000-00000000000b"
            };
            app.put_ok(&format!("/organizations/{id}"), &json!({"name": name, "description": "x"})).await;
        }
        let b_written = tokio::time::Instant::now();
        let b_query = hsda::store::webhooks::DeliveryQuery {
            object_id: Some("00000000-0000-4000-8000-00000000000b".into()),
            ..Default::default()
        };
        // On PostgreSQL a write may be dispatched just after its answer (by the worker, when the dispatch at
        // commit gave way): B's delivery is waited for.
        let b_lease = || {
            crate::helpers::eventually("B's delivery, leased", Duration::from_secs(10), || async {
                let (_, found) = app.db.deliveries(sub["id"].as_str().unwrap(), &b_query, 1, 1).await.unwrap();
                found.first().and_then(|b| b.lease_until.clone()).ok_or_else(|| format!("{found:?}"))
            })
        };
        let handed_over = b_lease().await;
        let deadline = written + Duration::from_secs(30);
        let b = loop {
            let b = arrived("B");
            if !b.is_empty() || tokio::time::Instant::now() > deadline {
                break b;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let a = arrived("A");
        assert_eq!(a.len(), 1, "A was started within its wait and sent once");
        assert_eq!(b.len(), 1, "B arrived once within 30 s");
        let waited = b[0] - written;
        assert!(
            waited < Duration::from_secs(20),
            "B was sent {waited:?} after its write: in its turn, not after its lease ran out"
        );
        assert!(b[0] > a[0], "one slot: B after A");
        // Otherwise B never waited long enough for this test to show anything (a machine too slow to PUT twice
        // within 6 s).
        assert!(b[0] - b_written >= Duration::from_secs(10), "B waited past the limit: {:?}", b[0] - b_written);
        // ... and went under a renewed lease (B is still at the target, 8 s per request).
        let renewed = b_lease().await;
        assert!(renewed > handed_over, "B's lease was renewed before it started: {handed_over} -> {renewed}");
    }
);

both_stores!(a_stopping_worker_gives_back_the_deliveries_waiting_in_its_lanes, |_| {}, |app| async move {
    // One slot, held by the ping for 5 s: the two changes wait in the lane, leased to this process. Stopped,
    // it gives their leases back, so another process claims them at once rather than when they run out.
    let mut app = app;
    // Long enough that the writes and the look at their leases all happen while the ping holds the slot.
    let (base, _) = slow_target(Duration::from_secs(5)).await;
    let sub =
        subscribe(&app, json!({"url": format!("{base}/slow"), "events": ["organization.*"], "max_concurrency": 1}))
            .await;
    for i in 1..=2 {
        let id = format!("00000000-0000-4000-8000-{i:012}");
        app.put_ok(&format!("/organizations/{id}"), &json!({"name": format!("Org {i}"), "description": "x"})).await;
    }
    let created =
        hsda::store::webhooks::DeliveryQuery { event_type: Some("organization.created".into()), ..Default::default() };
    let sub_id = sub["id"].as_str().unwrap();
    // On PostgreSQL a write leaves its events to the worker's dispatcher when that holds the cursor: wait
    // for both deliveries to be dispatched (well within the ping's 5 s).
    crate::helpers::eventually("both deliveries leased, waiting", Duration::from_secs(3), || async {
        let (_, waiting) = app.db.deliveries(sub_id, &created, 1, 10).await.unwrap();
        let leased = waiting.iter().filter(|d| d.lease_until.is_some()).count();
        (leased == 2).then_some(()).ok_or_else(|| format!("{waiting:?}"))
    })
    .await;
    app.stop().await;
    let db = hsda::store::Db::connect(&app.database_url).await.unwrap();
    let (_, after) = db.deliveries(sub_id, &created, 1, 10).await.unwrap();
    assert_eq!(after.len(), 2);
    for d in after {
        assert_eq!((d.status.as_str(), d.lease_until.as_deref()), ("pending", None), "given back: {d:?}");
    }
});

both_stores!(an_ed25519_rotation_signs_with_both_keys_during_the_grace_period, |_| {}, |app| async move {
    use base64::Engine;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let b64 = base64::engine::general_purpose::STANDARD;
    let verifying_key = |public: &str| {
        let bytes: [u8; 32] = b64.decode(public.strip_prefix("whpk_").unwrap()).unwrap().try_into().unwrap();
        VerifyingKey::from_bytes(&bytes).unwrap()
    };
    let rx = Receiver::start().await;
    let sub = subscribe(&app, json!({"url": rx.url, "events": ["webhook.ping"], "signing": "ed25519"})).await;
    let id = sub["id"].as_str().unwrap();
    rx.wait_for("the ping", |r| !r.is_empty()).await;
    let old =
        app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await["public_key"].as_str().unwrap().to_string();
    let r = app
        .post_as(&app.subscribe_key, &format!("/webhooks/{id}/rotate-secret"), Some(&json!({"grace_seconds": 3600})))
        .await;
    assert_eq!(r.status(), 200);
    let shown = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await;
    let new = shown["public_key"].as_str().unwrap().to_string();
    assert_ne!(new, old, "a new key pair");
    assert_eq!(shown["previous_public_key"], old.as_str(), "the old public key stays retrievable meanwhile");
    let deadline = shown["previous_secret_expires_at"].as_str().expect("the grace period's end is shown");
    assert!(deadline > shown["updated_at"].as_str().unwrap(), "{shown}");

    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/test"), Some(&json!({}))).await;
    assert_eq!(r.status(), 200);
    let got = rx.wait_for("the test delivery", |r| r.len() >= 2).await;
    let test = &got[1];
    let signed = format!(
        "{}.{}.{}",
        test.header("webhook-id"),
        test.header("webhook-timestamp"),
        String::from_utf8_lossy(&test.body)
    );
    let signatures: Vec<Signature> = test
        .header("webhook-signature")
        .split(' ')
        .map(|s| Signature::from_bytes(&b64.decode(s.strip_prefix("v1a,").expect("v1a")).unwrap().try_into().unwrap()))
        .collect();
    assert_eq!(signatures.len(), 2, "both keys sign: {}", test.header("webhook-signature"));
    for (public, which) in [(&old, "old"), (&new, "new")] {
        let key = verifying_key(public);
        assert!(
            signatures.iter().any(|s| key.verify(signed.as_bytes(), s).is_ok()),
            "the {which} key's signature verifies"
        );
    }

    // Without a grace period only the new key signs, and no previous key is shown.
    let r = app
        .post_as(&app.subscribe_key, &format!("/webhooks/{id}/rotate-secret"), Some(&json!({"grace_seconds": 0})))
        .await;
    assert_eq!(r.status(), 200);
    let shown = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await;
    assert!(shown.get("previous_public_key").is_none(), "{shown}");
    assert!(shown.get("previous_secret_expires_at").is_none(), "{shown}");
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/test"), Some(&json!({}))).await;
    assert_eq!(r.status(), 200);
    let got = rx.wait_for("the second test delivery", |r| r.len() >= 3).await;
    assert_eq!(got[2].header("webhook-signature").split(' ').count(), 1);
});

both_stores!(
    an_owners_edit_keeps_the_failures_recorded_while_it_was_made,
    |c| c.retry_schedule = Some("60".into()),
    |app| async move {
        // The owner's PATCH read the subscription before an attempt failed and saves after: the failure's
        // status and counters stay (only a status the owner set replaces them).
        let rx = Receiver::start().await;
        rx.script(&[(500, None)]);
        let stale = {
            let created =
                subscribe(&app, json!({"url": rx.url, "events": ["webhook.ping"], "max_concurrency": 1})).await;
            let id = created["id"].as_str().unwrap().to_string();
            let mut stale = app.db.subscription(&id).await.unwrap().unwrap();
            // As stored before the ping's attempt was recorded.
            stale.status = "active".into();
            stale.consecutive_failures = 0;
            stale.failing_since = None;
            first_attempt_recorded(&app.db, &id).await;
            stale
        };
        let failing = app.db.subscription(&stale.id).await.unwrap().unwrap();
        assert_eq!((failing.status.as_str(), failing.consecutive_failures), ("failing", 1));

        let mut edit = stale.clone();
        edit.description = "edited".into();
        assert!(app.db.update_subscription(&edit, false, "http://127.0.0.1", |_| true).await.unwrap());
        let after = app.db.subscription(&stale.id).await.unwrap().unwrap();
        assert_eq!(after.description, "edited");
        assert_eq!((after.status.as_str(), after.consecutive_failures), ("failing", 1), "the failure stays");
        assert_eq!(after.failing_since, failing.failing_since);

        // `enable` (a status edit) does reset them.
        let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{}/enable", stale.id), None).await;
        assert_eq!(r.status(), 200);
        let enabled = app.db.subscription(&stale.id).await.unwrap().unwrap();
        assert_eq!((enabled.status.as_str(), enabled.consecutive_failures), ("active", 0));
    }
);

both_stores!(a_delivery_of_a_subscription_the_worker_has_not_seen_is_sent, |_| {}, |app| async move {
    // Another process (here: SQL beside the server) adds a subscription and a delivery for it. The worker's
    // subscription snapshot predates both: claiming the delivery must make it read the subscriptions again,
    // not drop the delivery (on SQLite nothing else would ever refresh that snapshot).
    let rx = Receiver::start().await;
    let warm = subscribe(&app, json!({"url": rx.url, "events": ["webhook.ping"]})).await;
    assert_eq!(warm["status"], "active");
    rx.wait_for("the first ping, after which the worker has a snapshot", |r| !r.is_empty()).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.database_url).await.unwrap();
    let now = hsda::store::timestamp_text(chrono::Utc::now());
    sqlx::query(
        "INSERT INTO subscriptions (id, tenant, url, events, payload, filter, secret, signing, max_concurrency, \
             headers, metadata, status, created_at, updated_at) \
             VALUES ('sub_from_elsewhere', 'acme', $1, '[\"*\"]', 'full', '{}', $2, 'hmac-sha256', 10, \
             '{}', '{}', 'active', $3, $3)",
    )
    .bind(&rx.url)
    .bind(secret)
    .bind(&now)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (id, subscription_id, tenant, event_id, event_sequence, event_type, object_id, \
             body, status, next_attempt_at, created_at, updated_at) \
             VALUES ('msg_from_elsewhere', 'sub_from_elsewhere', 'acme', 'evt_elsewhere', 0, 'organization.created', \
             'o', '{\"type\":\"organization.created\"}', 'pending', $1, $1, $1)",
    )
    .bind(&now)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let got = rx.wait_for("the delivery added beside the server", |r| r.len() >= 2).await;
    let sent = got.iter().find(|r| r.header("webhook-id") == "msg_from_elsewhere").expect("msg_from_elsewhere");
    assert!(sent.verify(secret), "signed with the subscription's secret, as read from the store");
    // Its attempt is recorded a moment after the target answered.
    crate::helpers::eventually("the delivery succeeded", Duration::from_secs(10), || async {
        let shown = app.get_as(&app.admin_key, "/deliveries/msg_from_elsewhere").await;
        (shown["status"] == "succeeded").then_some(()).ok_or_else(|| shown.to_string())
    })
    .await;
});

/// An owner's disable takes the subscription row, then ends its open deliveries; a batch of attempt results
/// must take the same rows in the same order, or the two deadlock on PostgreSQL (the batch held the delivery
/// and waited for the subscription). Here a transaction holds the subscription row as the disable does, the
/// batch starts, and the transaction then ends the delivery: it must go through, and the batch after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_and_a_batch_of_attempts_take_rows_in_one_order() {
    use hsda::store::webhooks::{Attempt, AttemptOutcome, AttemptRecord, Delivery};
    use sqlx::Connection;
    let Some((url, _)) = fresh_database(Store::Postgres).await else { return };
    let db = hsda::store::Db::connect(&url).await.unwrap();
    let at = |seconds: i64| hsda::store::timestamp_text(chrono::Utc::now() + chrono::Duration::seconds(seconds));
    let lease = at(60);
    let mut setup = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO subscriptions (id, tenant, url, events, payload, filter, secret, signing, max_concurrency, \
         headers, metadata, status, created_at, updated_at) \
         VALUES ('sub_x', 'acme', 'http://127.0.0.1:9/', '[\"*\"]', 'full', '{}', 'whsec_x', 'hmac-sha256', 10, \
         '{}', '{}', 'active', $1, $1)",
    )
    .bind(at(0))
    .execute(&mut setup)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (id, subscription_id, tenant, event_id, event_sequence, event_type, object_id, \
         body, status, next_attempt_at, lease_until, created_at, updated_at) \
         VALUES ('msg_x', 'sub_x', 'acme', 'evt_x', 1, 'organization.created', 'o', '{}', 'pending', $1, $2, $1, $1)",
    )
    .bind(at(0))
    .bind(&lease)
    .execute(&mut setup)
    .await
    .unwrap();

    let mut disable = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut tx = disable.begin().await.unwrap();
    sqlx::query("SELECT id FROM subscriptions WHERE id = 'sub_x' FOR UPDATE").execute(&mut *tx).await.unwrap();
    let delivery = Delivery {
        id: "msg_x".into(),
        subscription_id: "sub_x".into(),
        tenant: "acme".into(),
        event_id: "evt_x".into(),
        event_sequence: 1,
        event_type: "organization.created".into(),
        object_id: "o".into(),
        status: "pending".into(),
        attempts: 0,
        next_attempt_at: Some(at(0)),
        last_status_code: None,
        last_error: None,
        created_at: at(0),
        updated_at: at(0),
        body: "{}".into(),
        lease_until: Some(lease),
        ..Delivery::default()
    };
    let record = AttemptRecord {
        attempt: Attempt {
            at: at(0),
            status_code: Some(500),
            duration_ms: 3,
            error: Some("the target answered 500".into()),
            error_class: Some("http_status".into()),
            response_body: Some(String::new()),
        },
        outcome: AttemptOutcome::Retry { at: at(30), held_until: None },
    };
    let recorder = db.clone();
    let recording = tokio::spawn(async move { recorder.record_attempts(vec![(delivery, record)], 3600).await });
    tokio::time::sleep(Duration::from_millis(500)).await; // the batch is under way, waiting for a row
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query("UPDATE deliveries SET status = 'failed' WHERE subscription_id = 'sub_x' AND status = 'pending'")
            .execute(&mut *tx),
    )
    .await
    .expect("the disable's update waited past 10 s");
    assert_eq!(ended.expect("no deadlock").rows_affected(), 1, "the delivery was still open");
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), recording)
        .await
        .expect("the batch waited past 10 s")
        .unwrap()
        .expect("the batch is recorded");
    let (status, attempts): (String, i64) = sqlx::query_as(
        "SELECT status, (SELECT COUNT(*) FROM attempts WHERE delivery_id = 'msg_x') FROM deliveries WHERE id = 'msg_x'",
    )
    .fetch_one(&mut setup)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("failed", 1), "the attempt is in the history; the delivery stays ended");
}

both_stores!(
    a_delivery_acknowledged_after_its_subscription_was_disabled_counts_as_delivered,
    |_| {},
    |app| async move {
        // The ping is at the target (which answers 200 after a second) when the owner disables the subscription:
        // the disable ends it as failed, then the target's answer arrives. It got it, so it is not failed.
        let (base, arrivals) = slow_target(Duration::from_secs(1)).await;
        let sub = subscribe(&app, json!({"url": format!("{base}/slow"), "events": ["organization.*"]})).await;
        let id = sub["id"].as_str().unwrap().to_string();
        crate::helpers::eventually("the ping at the target", Duration::from_secs(10), || async {
            (!arrivals.lock().unwrap().is_empty()).then_some(()).ok_or_else(|| "not yet".to_string())
        })
        .await;
        let r = app.patch_as(&app.subscribe_key, &format!("/webhooks/{id}"), &json!({"status": "disabled"})).await;
        assert_eq!(r.status(), 200);
        let delivery = ping_delivery(&app, &id, 1).await;
        assert_eq!(delivery["status"], "succeeded", "{delivery}");
        assert_eq!(delivery["last_status_code"], 200, "{delivery}");
        let after = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await;
        assert_eq!(after["status"], "disabled", "the owner's disable stands: {after}");
    }
);
