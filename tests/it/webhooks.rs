//! The webhook engine end to end against a real receiver: subscriptions, signed deliveries verified
//! independently, retries, 410, tenant isolation, validation, SSRF refusal, filters and thin payloads,
//! rate limits, ordered delivery, intent verification and digests.

use serde_json::{Value, json};

use crate::helpers::{Store, TestApp};
use crate::receiver::{Challenges, Receiver};

const O1: &str = "00000000-0000-4000-8000-000000000001";
const O2: &str = "00000000-0000-4000-8000-000000000002";

async fn subscribe(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.post_as(key, "/webhooks", Some(&body)).await
}

/// The subscription `body` creates for the test's subscribe key, as answered.
async fn subscribed(app: &TestApp, body: Value) -> Value {
    subscribe(app, &app.subscribe_key, body).await.json().await.unwrap()
}

async fn spawn(store: Store) -> Option<TestApp> {
    TestApp::spawn_with(store, |c| {
        c.retry_schedule = Some("0.2,0.2,0.2".into());
    })
    .await
}

/// Waits half a second for anything that should not come, then asserts `rx` got nothing but verification
/// challenges: a subscription waiting for its target's echo sends nothing else.
async fn only_challenges_arrive(rx: &Receiver, when: &str) {
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let types: Vec<Value> = rx.received().iter().map(|r| r.json()["type"].clone()).collect();
    assert!(types.iter().all(|t| t == "webhook.verification"), "nothing but challenges {when}: {types:?}");
}

/// Asserts that a message's `data` matches the schema `/event-types` publishes for its type.
async fn assert_data_as_published(app: &TestApp, message: &Value) {
    let name = message["type"].as_str().unwrap();
    let catalog = app.get_json("/event-types").await;
    let entry = catalog["event_types"].as_array().unwrap().iter().find(|t| t["name"] == name).cloned();
    let schema = entry.unwrap_or_else(|| panic!("{name} is in the catalog"))["schema"].clone();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&message["data"]).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{name} as published: {errors:?} in {message}");
}

async fn put_org(app: &TestApp, id: &str, name: &str) {
    app.put_ok(&format!("/organizations/{id}"), &json!({"id": id, "name": name, "description": "helps"})).await;
}

macro_rules! webhook_test {
    ($name:ident, |$app:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some($app) = spawn(Store::Sqlite).await {
                    $body.await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some($app) = spawn(Store::Postgres).await {
                    $body.await;
                }
            }
        }
    };
}

webhook_test!(a_subscription_gets_a_ping_then_signed_events, |app| async move {
    let rx = Receiver::start().await;
    let r = subscribe(&app, &app.subscribe_key, json!({"url": rx.url, "events": ["organization.*"]})).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let sub: Value = r.json().await.unwrap();
    let id = sub["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sub_"));
    assert_eq!(location, format!("/webhooks/{id}"));
    assert_eq!(sub["status"], "active");
    let secret = sub["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));

    let got = rx.wait_for("the ping", |r| !Receiver::of_type(r, "webhook.ping").is_empty()).await;
    assert!(got[0].verify(&secret), "ping signature verifies independently");
    assert_eq!(got[0].header("content-type"), "application/json");
    assert!(got[0].header("user-agent").starts_with("hsda/"));

    put_org(&app, O1, "Food Bank").await;
    let got = rx.wait_for("organization.created", |r| !Receiver::of_type(r, "organization.created").is_empty()).await;
    let created = &Receiver::of_type(&got, "organization.created")[0];
    assert!(created.verify(&secret));
    let body = created.json();
    assert_eq!(body["data"]["name"], "Food Bank", "full payload carries the object");
    assert!(body["id"].as_str().unwrap().starts_with("evt_"));
    assert!(body["sequence"].as_i64().unwrap() > 0);
    assert!(body["timestamp"].is_string());

    // The secret is not shown again; history shows the deliveries with their attempts.
    let shown: Value = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await;
    assert!(shown.get("secret").is_none());
    // Attempts are recorded in batches just after they are made: wait (bounded) for both to show.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let page = loop {
        let page: Value = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}/deliveries?status=succeeded")).await;
        if page["total_items"].as_u64().unwrap() >= 2 && page["size"].as_u64().unwrap() >= 2 {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let delivery_id = page["contents"][0]["id"].as_str().unwrap();
    let d: Value = app.get_as(&app.subscribe_key, &format!("/deliveries/{delivery_id}")).await;
    assert_eq!(d["attempts"][0]["status_code"], 200);
    assert!(d["attempts"][0]["duration_ms"].is_number());
});

webhook_test!(failures_are_retried_with_the_same_webhook_id_until_success, |app| async move {
    let rx = Receiver::start().await;
    rx.script(&[(500, None), (503, Some("0")), (200, None)]);
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["webhook.ping"]})).await;
    let got = rx.wait_for("three attempts", |r| r.len() >= 3).await;
    let ids: Vec<String> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "stable webhook-id: {ids:?}");
    let id = sub["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page: Value = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}/deliveries")).await;
        if page["contents"][0]["status"] == "succeeded" {
            assert_eq!(page["contents"][0]["attempts"], 3);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "delivery never succeeded: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let shown: Value = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await;
    assert_eq!(shown["status"], "active", "recovered after success: {shown}");
    assert_eq!(shown["consecutive_failures"], 0);
    assert!(shown["last_failure_at"].is_string());
});

webhook_test!(gone_disables_the_subscription_and_says_so_as_an_event, |app| async move {
    let rx = Receiver::start().await;
    rx.script(&[(410, None)]);
    let sub: Value = subscribed(&app, json!({"url": rx.url})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| !r.is_empty()).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let shown: Value = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await;
        if shown["status"] == "disabled" {
            assert!(shown["disabled_reason"].as_str().unwrap().contains("410"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not disabled: {shown}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let events = app.events_after(0).await;
    assert!(events.iter().any(|e| e["type"] == "webhook.disabled" && e["object_id"] == id.as_str()));
    // Re-enabling works and the subscription is live again.
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/enable"), None).await;
    assert_eq!(r.status(), 200);
    let shown: Value = r.json().await.unwrap();
    assert_eq!(shown["status"], "active");
});

webhook_test!(tenants_never_see_each_other, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribed(&app, json!({"url": rx.url})).await;
    let id = sub["id"].as_str().unwrap();
    let other = app.db.create_key("globex", hsda::store::keys::Scope::Subscribe).await.unwrap().secret;
    for path in [format!("/webhooks/{id}"), format!("/webhooks/{id}/deliveries")] {
        let r = app.client.get(app.url(&path)).bearer_auth(&other).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = app.client.delete(app.url(&format!("/webhooks/{id}"))).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app.post_as(&other, &format!("/webhooks/{id}/rotate-secret"), None).await;
    assert_eq!(r.status(), 404);
    let list: Value = app.get_as(&other, "/webhooks").await;
    assert_eq!(list["total_items"], 0);
    let delivery = rx.wait_for("ping", |r| !r.is_empty()).await[0].header("webhook-id");
    let r = app.client.get(app.url(&format!("/deliveries/{delivery}"))).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .get(app.url(&format!("/deliveries/{delivery}")))
        .bearer_auth(&app.subscribe_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let admin: Value = app.get_as(&app.admin_key, "/webhooks").await;
    assert_eq!(admin["total_items"], 1);
    let r = app.client.get(app.url("/webhooks")).bearer_auth(&app.publish_key).send().await.unwrap();
    assert_eq!(r.status(), 403, "a publish key cannot manage subscriptions");
});

/// Digests may come as often as every second by default; an operator's higher floor refuses shorter ones.
#[tokio::test]
async fn an_operators_digest_floor_refuses_shorter_schedules() {
    let Some(app) = TestApp::spawn_with(Store::Sqlite, |c| c.min_digest_seconds = 60).await else { return };
    let r = subscribe(&app, &app.subscribe_key, json!({"url": "http://127.0.0.1:9/x", "schedule": "PT30S"})).await;
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["pointer"], "/schedule", "{problem}");
    let r = subscribe(&app, &app.subscribe_key, json!({"url": "http://127.0.0.1:9/x", "schedule": "PT1M"})).await;
    assert_eq!(r.status(), 201);
}

webhook_test!(bad_subscriptions_are_422_naming_the_field_and_create_nothing, |app| async move {
    let cases = [
        (json!({"url": "ftp://127.0.0.1/x"}), "/url"),
        (json!({}), "/url"),
        (json!({"url": "http://127.0.0.1:9/x", "events": ["servce.updated"]}), "/events/0"),
        (json!({"url": "http://127.0.0.1:9/x", "filter": {"colour": "red"}}), "/filter/colour"),
        (json!({"url": "http://127.0.0.1:9/x", "filter": {"organization_id": "nope"}}), "/filter/organization_id"),
        (json!({"url": "http://127.0.0.1:9/x", "secret": "not-a-secret"}), "/secret"),
        (json!({"url": "http://127.0.0.1:9/x", "payload": "fat"}), "/payload"),
        (json!({"url": "http://127.0.0.1:9/x", "schedule": "every tuesday"}), "/schedule"),
        (json!({"url": "http://127.0.0.1:9/x", "max_concurrency": 0}), "/max_concurrency"),
        (json!({"url": "http://127.0.0.1:9/x", "headers": {"webhook-id": "x"}}), "/headers/webhook-id"),
        (json!({"url": "http://no-such-host.invalid/x"}), "/url"),
        (json!({"url": " http://127.0.0.1:9/x"}), "/url"),
        (json!({"url": "http://127.0.0.1:0/x"}), "/url"),
        (json!({"url": format!("http://127.0.0.1:9/{}", "x".repeat(4096))}), "/url"),
        (json!({"url": "http://127.0.0.1:9/x", "headers": {"X-Api-Key": "a", "x-api-key": "b"}}), "/headers/x-api-key"),
        (json!({"url": "http://127.0.0.1:9/x", "metadata": {"notes": "x".repeat(17_000)}}), "/metadata"),
        // A fragment is never sent: the target would not get the URL it was given.
        (json!({"url": "http://127.0.0.1:9/x?t=1#part"}), "/url"),
        // What says how the body is encoded is hsda's, and hop-by-hop headers are the connection's.
        (json!({"url": "http://127.0.0.1:9/x", "headers": {"Content-Encoding": "gzip"}}), "/headers/Content-Encoding"),
        (json!({"url": "http://127.0.0.1:9/x", "headers": {"Connection": "close"}}), "/headers/Connection"),
        (json!({"url": "http://127.0.0.1:9/x", "headers": {"upgrade": "websocket"}}), "/headers/upgrade"),
        // What hsda sets is read-only, said as such.
        (json!({"url": "http://127.0.0.1:9/x", "id": "sub_mine"}), "/id"),
        (json!({"url": "http://127.0.0.1:9/x", "all_tenants": true}), "/all_tenants"),
    ];
    for (body, pointer) in cases {
        let r = subscribe(&app, &app.subscribe_key, body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let problem: Value = r.json().await.unwrap();
        let pointers: Vec<&str> =
            problem["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
        assert!(pointers.contains(&pointer), "{body}: {problem}");
    }
    let list: Value = app.get_as(&app.subscribe_key, "/webhooks").await;
    assert_eq!(list["total_items"], 0);

    // The actions on a subscription refuse what they do not know, too.
    let rx = Receiver::start().await;
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let id = sub["id"].as_str().unwrap();
    let actions = [
        ("replay", json!({"since": "2026-01-01T00:00:00Z", "only_faild": true}), "/only_faild"),
        ("replay", json!({"since": "2026-01-01T00:00:00Z", "only_failed": "yes"}), "/only_failed"),
        ("enable", json!({"replay": true}), "/replay"),
        ("enable", json!({"replay_missed": 1}), "/replay_missed"),
        ("test", json!({"event": "organization.created"}), "/event"),
        // A test sends what it is asked for, or nothing: a field of the wrong type is not taken as absent.
        ("test", json!({"event_type": 5}), "/event_type"),
        ("test", json!({"event_type": ["organization.created"]}), "/event_type"),
        ("test", json!({"event_type": "organization.created", "object_id": 5}), "/object_id"),
        ("test", json!({"event_type": "webhook.digest"}), "/event_type"),
        ("replay", json!({"since": "2027-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}), "/until"),
        // Without `until` (now), a start in the future is what is wrong.
        ("replay", json!({"since": "2999-01-01T00:00:00Z"}), "/since"),
        ("replay", json!([]), ""),
        ("replay", json!({"since": 5}), "/since"),
        // Every field's problem at once: the missing `since` and the flag that is not one.
        ("replay", json!({"only_failed": "yes"}), "/since"),
        ("replay", json!({"only_failed": "yes"}), "/only_failed"),
    ];
    for (action, body, pointer) in actions {
        let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/{action}"), Some(&body)).await;
        crate::helpers::assert_problem_at(r, 422, pointer).await;
    }
    // An id may be sent back as read, not changed.
    let path = app.url(&format!("/webhooks/{id}"));
    let r = app.client.patch(&path).bearer_auth(&app.subscribe_key).json(&json!({"id": "sub_other"})).send().await;
    crate::helpers::assert_problem_at(r.unwrap(), 422, "/id").await;
    let r = app.client.patch(&path).bearer_auth(&app.subscribe_key).json(&json!({"id": id, "description": "x"})).send();
    assert_eq!(r.await.unwrap().status(), 200);
    // So may everything else hsda sets: a PATCH of the subscription as read (and changed) is taken whole.
    let mut read: Value = app.get_as(&app.subscribe_key, format!("/webhooks/{id}")).await;
    assert_eq!(read["tenant"], "acme", "{read}");
    read["description"] = json!("as read");
    let r = app.client.patch(&path).bearer_auth(&app.subscribe_key).json(&read).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let r = app.client.patch(&path).bearer_auth(&app.subscribe_key).json(
        &json!({"consecutive_failures": 7, "updated_at": "2020-01-01T00:00:00Z", "created_at": "2020-01-01T00:00:00Z"}),
    );
    // What never changes is refused changed; what hsda changes on its own (a counter, a time) is taken as sent
    // back from an older read, and changes nothing.
    let problem = crate::helpers::assert_problem_at(r.send().await.unwrap(), 422, "/created_at").await;
    assert_eq!(problem["errors"].as_array().map(Vec::len), Some(1), "only created_at: {problem}");
    let r = app.client.patch(&path).bearer_auth(&app.subscribe_key).json(&json!({"consecutive_failures": 7})).send();
    assert_eq!(r.await.unwrap().status(), 200);
    let now: Value = app.get_as(&app.subscribe_key, format!("/webhooks/{id}")).await;
    assert_eq!(now["consecutive_failures"], 0, "{now}");
});

// A subscription stored before a #fragment or a header name was refused keeps its deliveries: the fragment
// was never sent, and the header is left out now.
webhook_test!(a_subscription_stored_with_what_is_now_refused_still_gets_its_deliveries, |app| async move {
    let rx = Receiver::start().await;
    let sub = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"], "headers": {"X-Ok": "1"}})).await;
    let id = sub["id"].as_str().unwrap();
    rx.wait_for("the ping", |r| r.len() == 1).await;
    let pool = sqlx::AnyPool::connect(&app.database_url).await.unwrap();
    let stored = json!({"X-Ok": "1", "Content-Encoding": "gzip", "Connection": "close"}).to_string();
    sqlx::query("UPDATE subscriptions SET url = $1, headers = $2 WHERE id = $3")
        .bind(format!("{}#part", rx.url))
        .bind(stored)
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let body = json!({"event_type": "organization.created"});
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/test"), Some(&body)).await;
    let attempt: Value = r.json().await.unwrap();
    assert_eq!(attempt["status_code"], 200, "{attempt}");
    let received = rx.wait_for("the test", |r| r.len() == 2).await;
    assert_eq!(received[1].header("x-ok"), "1");
    assert_eq!(received[1].header("content-encoding"), "", "a refused header stored earlier is not sent");
});

#[tokio::test]
async fn private_targets_are_refused_without_an_allow_list() {
    let Some(app) = TestApp::spawn_with(Store::Sqlite, |c| c.allow_targets = String::new()).await else { return };
    for url in [
        "http://127.0.0.1:8080/x",
        "http://[::1]/x",
        "http://169.254.169.254/latest",
        "http://10.0.0.1/",
        "http://2130706433/",
        "http://0177.0.0.1/",
    ] {
        let r = subscribe(&app, &app.subscribe_key, json!({"url": url})).await;
        assert_eq!(r.status(), 422, "{url}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["errors"][0]["pointer"], "/url", "{url}: {problem}");
    }
}

webhook_test!(filters_and_thin_payloads, |app| async move {
    let rx = Receiver::start().await;
    let r = subscribe(
        &app,
        &app.subscribe_key,
        json!({
            "url": rx.url, "events": ["service.*"], "payload": "thin", "filter": {"organization_id": O2}
        }),
    )
    .await;
    assert_eq!(r.status(), 201);
    put_org(&app, O1, "One").await;
    put_org(&app, O2, "Two").await;
    let s1 = "00000000-0000-4000-8000-000000000011";
    let s2 = "00000000-0000-4000-8000-000000000012";
    app.put_ok(&format!("/services/{s1}"), &json!({"organization_id": O1, "name": "A", "status": "active"})).await;
    app.put_ok(&format!("/services/{s2}"), &json!({"organization_id": O2, "name": "B", "status": "active"})).await;
    let got = rx.wait_for("service.created of org two", |r| !Receiver::of_type(r, "service.created").is_empty()).await;
    // Give a wrong delivery the chance to show up before asserting it did not.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let created = Receiver::of_type(&rx.received(), "service.created");
    assert_eq!(created.len(), 1, "only the service of the filtered organization: {:?}", got.len());
    let data = &created[0].json()["data"];
    assert_eq!(data["object"], "service");
    assert_eq!(data["id"], s2);
    assert!(data["url"].as_str().unwrap().ends_with(&format!("/services/{s2}")));
    assert!(data.get("name").is_none(), "thin payload has no object body");
    // The event type catalog describes it (beside the full object's schema).
    let catalog = app.get_json("/event-types").await;
    let entry = catalog["event_types"].as_array().unwrap().iter().find(|e| e["name"] == "service.created").unwrap();
    let thin = jsonschema::validator_for(&entry["thin_schema"]).expect("a schema");
    assert!(thin.is_valid(data), "{data} against {}", entry["thin_schema"]);
    let ping_entry = catalog["event_types"].as_array().unwrap().iter().find(|e| e["name"] == "webhook.ping").unwrap();
    let ping = Receiver::of_type(&rx.received(), "webhook.ping");
    assert!(jsonschema::validator_for(&ping_entry["thin_schema"]).unwrap().is_valid(&ping[0].json()["data"]));
    // An operational event's thin link is the subscription's own path in the API.
    let sub: Value = r.json().await.unwrap();
    let ping = Receiver::of_type(&rx.received(), "webhook.ping");
    let url = ping[0].json()["data"]["url"].as_str().unwrap().to_string();
    assert!(url.ends_with(&format!("/webhooks/{}", sub["id"].as_str().unwrap())), "{url}");
});

webhook_test!(real_payloads_full_thin_and_deleted_are_what_the_openapi_webhooks_say, |app| async move {
    let (full_rx, thin_rx) = (Receiver::start().await, Receiver::start().await);
    let events = json!(["organization.*", "url.*"]);
    subscribed(&app, json!({"url": full_rx.url, "events": events})).await;
    subscribed(&app, json!({"url": thin_rx.url, "events": events, "payload": "thin"})).await;
    put_org(&app, O1, "Food Bank").await;
    // A url row needs only an id and a url: its thin payload is a valid url row too, told apart by `object`.
    let url = "00000000-0000-4000-8000-000000000021";
    app.put_ok(&format!("/urls/{url}"), &json!({"url": "https://food.example", "organization_id": O1})).await;
    assert_eq!(app.delete(&format!("/urls/{url}")).await.status(), 204);
    assert_eq!(app.delete(&format!("/organizations/{O1}")).await.status(), 204);
    let wanted = ["organization.created", "url.created", "url.deleted", "organization.deleted"];
    let all_arrived = |r: &[crate::receiver::Received]| wanted.iter().all(|t| !Receiver::of_type(r, t).is_empty());
    let full = full_rx.wait_for("every full payload", all_arrived).await;
    let thin = thin_rx.wait_for("every thin payload", all_arrived).await;
    let deleted = Receiver::of_type(&full, "organization.deleted")[0].json();
    assert_eq!(deleted["data"], json!({"id": O1, "deleted": true}), "a deletion's full payload is a tombstone");
    assert_eq!(Receiver::of_type(&thin, "url.created")[0].json()["data"]["object"], "url");

    let openapi = app.get_json("/openapi.json").await;
    for received in full.iter().chain(&thin) {
        let message = received.json();
        let Some(name) = message["type"].as_str().filter(|t| wanted.contains(t)) else { continue };
        let pointer = format!("/webhooks/{name}/post/requestBody/content/application~1json/schema");
        let errors = crate::helpers::openapi_violations(&openapi, &pointer, &message);
        assert!(errors.is_empty(), "{name} as the OpenAPI says: {errors:?} in {message}");
    }

    // hsda's own answers too, their list items typed (a client generated from the document gets them).
    let subscriptions = app.get_as(&app.subscribe_key, "/webhooks").await;
    let id = subscriptions["contents"][0]["id"].as_str().unwrap().to_string();
    let deliveries = app.get_as(&app.subscribe_key, format!("/webhooks/{id}/deliveries")).await;
    let delivery = deliveries["contents"][0]["id"].as_str().unwrap().to_string();
    let responses = |path: &str, method: &str| {
        format!("/paths/{}/{method}/responses/200/content/application~1json/schema", path.replace('/', "~1"))
    };
    for (pointer, answer) in [
        (responses("/webhooks", "get"), subscriptions),
        (responses("/webhooks/{id}/deliveries", "get"), deliveries),
        (responses("/deliveries/{id}", "get"), app.get_as(&app.subscribe_key, format!("/deliveries/{delivery}")).await),
        (responses("/health", "get"), app.get_json("/health").await),
        (responses("/follow", "get"), app.get_as(&app.admin_key, "/follow").await),
    ] {
        let errors = crate::helpers::openapi_violations(&openapi, &pointer, &answer);
        assert!(errors.is_empty(), "{pointer}: {errors:?} in {answer}");
    }
    for (pointer, item) in [("/webhooks", "Subscription"), ("/webhooks/{id}/deliveries", "Delivery")] {
        let schema =
            &openapi.pointer(&responses(pointer, "get")).unwrap()["allOf"][1]["properties"]["contents"]["items"];
        assert_eq!(schema["$ref"], format!("#/components/schemas/{item}"), "{pointer}");
    }
});

webhook_test!(rotation_signs_with_both_secrets_during_the_grace_period, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let id = sub["id"].as_str().unwrap();
    let old = sub["secret"].as_str().unwrap().to_string();
    let rotated: Value = app
        .post_as(&app.subscribe_key, &format!("/webhooks/{id}/rotate-secret"), Some(&json!({"grace_seconds": 3600})))
        .await
        .json()
        .await
        .unwrap();
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    put_org(&app, O1, "Food Bank").await;
    let got = rx.wait_for("organization.created", |r| !Receiver::of_type(r, "organization.created").is_empty()).await;
    let event = &Receiver::of_type(&got, "organization.created")[0];
    assert!(event.verify(&new), "new secret verifies");
    assert!(event.verify(&old), "old secret still verifies during the grace period");
    assert_eq!(event.header("webhook-signature").split(' ').count(), 2);

    // The caller may bring the new secret; a bad one, or a field the action does not know, changes nothing.
    let path = format!("/webhooks/{id}/rotate-secret");
    let own = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    for (body, pointer) in [
        (json!({"secret": "whsec_not base64!", "grace_seconds": 0}), "/secret"),
        (json!({"secret": own, "grace": 0}), "/grace"),
        (json!({"secret": 42}), "/secret"),
    ] {
        let r = app.post_as(&app.subscribe_key, &path, Some(&body)).await;
        crate::helpers::assert_problem_at(r, 422, pointer).await;
    }
    let r = app.post_as(&app.subscribe_key, &path, Some(&json!({"secret": own, "grace_seconds": 0}))).await;
    assert_eq!(r.status(), 200);
    let rotated: Value = r.json().await.unwrap();
    assert_eq!(rotated["secret"], own, "the caller's secret is the new one");
    put_org(&app, O2, "Pantry").await;
    let got = rx
        .wait_for("the second organization.created", |r| Receiver::of_type(r, "organization.created").len() >= 2)
        .await;
    let event = &Receiver::of_type(&got, "organization.created")[1];
    assert!(event.verify(own), "signed with the caller's secret");
    assert!(!event.verify(&new), "the previous one no longer signs (no grace)");
});

webhook_test!(test_endpoint_sends_now_and_reports_the_attempt, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let id = sub["id"].as_str().unwrap();
    put_org(&app, O1, "Food Bank").await;
    rx.script(&[(202, None)]);
    let result: Value = app
        .post_as(
            &app.subscribe_key,
            &format!("/webhooks/{id}/test"),
            Some(&json!({"event_type": "organization.updated", "object_id": O1})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(result["status_code"].is_number(), "{result}");
    assert!(result["duration_ms"].is_number());
    let got = rx
        .wait_for("the test", |r| {
            r.iter()
                .any(|x| x.json()["type"] == "organization.updated" && x.header("webhook-id").starts_with("msg_test_"))
        })
        .await;
    let t = got.iter().find(|x| x.header("webhook-id").starts_with("msg_test_")).unwrap();
    assert_eq!(t.json()["data"]["name"], "Food Bank", "a real object");
    assert!(t.verify(sub["secret"].as_str().unwrap()));
    // The ping every subscription gets first is what /event-types says of webhook.ping.
    let catalog = app.get_json("/event-types").await;
    let entry = catalog["event_types"].as_array().unwrap().iter().find(|e| e["name"] == "webhook.ping").unwrap();
    let got = rx.wait_for("the ping", |r| !Receiver::of_type(r, "webhook.ping").is_empty()).await;
    let ping = &Receiver::of_type(&got, "webhook.ping")[0];
    assert!(jsonschema::validator_for(&entry["schema"]).unwrap().is_valid(&ping.json()["data"]), "{}", ping.json());
    // A delete of a real object sends what a real delete does: its tombstone.
    let body = json!({"event_type": "organization.deleted", "object_id": O1});
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/test"), Some(&body)).await;
    assert_eq!(r.status(), 200);
    let got = rx.wait_for("the test delete", |r| !Receiver::of_type(r, "organization.deleted").is_empty()).await;
    assert_eq!(Receiver::of_type(&got, "organization.deleted")[0].json()["data"], json!({"id": O1, "deleted": true}));
});

webhook_test!(a_disabled_subscription_is_sent_no_test, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let id = sub["id"].as_str().unwrap();
    rx.wait_for("the ping", has_ping).await;
    let r = app.patch_as(&app.subscribe_key, &format!("/webhooks/{id}"), &json!({"status": "disabled"})).await;
    assert_eq!(r.status(), 200);
    let body = json!({"event_type": "organization.updated"});
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/test"), Some(&body)).await;
    assert_eq!(r.status(), 409);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 1, "the ping only");
});

webhook_test!(a_subscription_has_an_etag_that_its_changes_can_be_conditional_on, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let path = format!("/webhooks/{}", sub["id"].as_str().unwrap());
    // The tag covers the delivery counters too: read it once the ping's success is recorded.
    crate::helpers::eventually("the ping recorded", std::time::Duration::from_secs(10), || async {
        let shown = app.get_as(&app.subscribe_key, &path).await;
        shown["last_success_at"].as_str().map(|_| ()).ok_or_else(|| shown.to_string())
    })
    .await;
    let read = app.get_response_as(&app.subscribe_key, &path).await;
    let tag = read.headers()["etag"].to_str().unwrap().to_string();
    let unchanged =
        app.client.get(app.url(&path)).bearer_auth(&app.subscribe_key).header("if-none-match", &tag).send().await;
    assert_eq!(unchanged.unwrap().status(), 304);

    let conditional = |method: reqwest::Method, header: &'static str, tag: String, body: Option<Value>| {
        let mut request =
            app.client.request(method, app.url(&path)).bearer_auth(&app.subscribe_key).header(header, tag);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move { request.send().await.unwrap() }
    };
    let stale = "\"not-its-tag\"".to_string();
    let r = conditional(reqwest::Method::PATCH, "if-match", stale.clone(), Some(json!({"description": "lost"}))).await;
    assert_eq!(r.status(), 412);
    assert_eq!(show(&app, sub["id"].as_str().unwrap()).await["description"], "", "a refused change changes nothing");
    let r = conditional(reqwest::Method::PATCH, "if-match", tag.clone(), Some(json!({"description": "kept"}))).await;
    assert_eq!(r.status(), 200);
    let new_tag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(new_tag, tag, "a change makes a new tag");
    assert_eq!(app.get_response_as(&app.subscribe_key, &path).await.headers()["etag"].to_str().unwrap(), new_tag);
    // The old tag no longer names it: a delete conditional on it is refused and deletes nothing.
    assert_eq!(conditional(reqwest::Method::DELETE, "if-match", tag, None).await.status(), 412);
    assert_eq!(conditional(reqwest::Method::DELETE, "if-none-match", "*".into(), None).await.status(), 412);
    assert_eq!(app.get_response_as(&app.subscribe_key, &path).await.status(), 200, "not deleted");
    assert_eq!(conditional(reqwest::Method::DELETE, "if-match", new_tag, None).await.status(), 204);
    assert_eq!(app.get_response_as(&app.subscribe_key, &path).await.status(), 404);
});

webhook_test!(concurrent_changes_of_one_subscription_each_apply, |app| async move {
    // Each PATCH changes what it read: without a check that nothing changed in between, concurrent ones
    // wrote over each other's metadata and all but one key was lost.
    let rx = Receiver::start().await;
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let path = format!("/webhooks/{}", sub["id"].as_str().unwrap());
    let app = &app;
    let patches = (0..12).map(|i| {
        let path = path.clone();
        async move {
            let r = app.patch_as(&app.subscribe_key, &path, &json!({"metadata": {format!("k{i}"): i}})).await;
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    });
    futures::future::join_all(patches).await;
    let metadata = app.get_as(&app.subscribe_key, &path).await["metadata"].clone();
    assert_eq!(metadata.as_object().map(|m| m.len()), Some(12), "{metadata}");
});

/// Creates a subscription, asserting 201.
async fn create(app: &TestApp, body: Value) -> Value {
    let r = subscribe(app, &app.subscribe_key, body.clone()).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 201, "{body}: {text}");
    serde_json::from_str(&text).unwrap()
}

async fn show(app: &TestApp, id: &str) -> Value {
    app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await
}

fn org(i: usize) -> String {
    format!("00000000-0000-4000-8000-{:012}", 100 + i)
}

fn has_ping(r: &[crate::receiver::Received]) -> bool {
    !Receiver::of_type(r, "webhook.ping").is_empty()
}

webhook_test!(a_rate_limit_spaces_out_one_subscription_without_slowing_others, |app| async move {
    let slow = Receiver::start().await;
    let fast = Receiver::start().await;
    create(&app, json!({"url": slow.url, "events": ["organization.*"], "rate_limit_per_second": 5})).await;
    create(&app, json!({"url": fast.url, "events": ["organization.*"]})).await;
    slow.wait_for("the ping", has_ping).await;
    fast.wait_for("the ping", has_ping).await;
    let app = &app;
    futures::future::join_all((0..10).map(|i| async move { put_org(app, &org(i), "Org").await })).await;
    let ten = |r: &[crate::receiver::Received]| Receiver::of_type(r, "organization.created").len() == 10;
    let fast_got = Receiver::of_type(&fast.wait_for("ten events, unlimited", ten).await, "organization.created");
    let slow_got = Receiver::of_type(&slow.wait_for("ten events, limited", ten).await, "organization.created");
    let spread = slow_got[9].at - slow_got[0].at;
    assert!(spread >= std::time::Duration::from_millis(1600), "5/s: 10 starts take >= 1.8 s, got {spread:?}");
    assert!(
        fast_got[9].at < slow_got[5].at,
        "the unlimited subscription is not held back: its last arrived {:?} after the limited one's first",
        fast_got[9].at.saturating_duration_since(slow_got[0].at)
    );
});

webhook_test!(an_ordered_subscription_holds_later_events_until_the_earlier_one_succeeds, |app| async move {
    let rx = Receiver::start().await;
    create(&app, json!({"url": rx.url, "events": ["organization.*"], "ordered": true})).await;
    rx.wait_for("the ping", has_ping).await;
    rx.script(&[(500, None), (500, None)]);
    for i in 0..5 {
        put_org(&app, &org(i), "Org").await;
    }
    let seven = |r: &[crate::receiver::Received]| Receiver::of_type(r, "organization.created").len() >= 7;
    rx.wait_for("the first event three times, then the other four", seven).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sequences: Vec<i64> = Receiver::of_type(&rx.received(), "organization.created")
        .iter()
        .map(|r| r.json()["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences.len(), 7, "{sequences:?}");
    assert!(sequences[0] == sequences[1] && sequences[1] == sequences[2], "retried first: {sequences:?}");
    assert!(sequences[2..].windows(2).all(|w| w[0] < w[1]), "then in sequence order: {sequences:?}");
});

webhook_test!(an_ordered_subscription_sends_the_next_delivery_as_soon_as_the_last_is_done, |app| async move {
    // Each success lets the next delivery go at once: the worker is woken when the outcome is recorded, not
    // by its one-second fallback tick (which made twelve changes take about twelve seconds to arrive).
    let rx = Receiver::start().await;
    create(&app, json!({"url": rx.url, "events": ["organization.*"], "ordered": true})).await;
    rx.wait_for("the ping", has_ping).await;
    for i in 0..12 {
        put_org(&app, &org(i), "Org").await;
    }
    let written = std::time::Instant::now();
    let all = |r: &[crate::receiver::Received]| Receiver::of_type(r, "organization.created").len() == 12;
    rx.wait_for_within("the twelve, one after the other", std::time::Duration::from_secs(6), all).await;
    assert!(written.elapsed() < std::time::Duration::from_secs(6));
});

webhook_test!(a_subscription_made_ordered_or_unordered_takes_its_waiting_deliveries_along, |app| async move {
    // The deliveries waiting behind an in-flight one change queues with the flag: made unordered, the four
    // waiting in the ordered queue go (they waited there for good before: that queue is only read for
    // ordered subscriptions); made ordered again, new ones wait in order.
    let rx = Receiver::start().await;
    let sub = create(&app, json!({"url": rx.url, "events": ["organization.*"], "ordered": true})).await;
    let path = format!("/webhooks/{}", sub["id"].as_str().unwrap());
    rx.wait_for("the ping", has_ping).await;
    rx.hold();
    for i in 0..5 {
        put_org(&app, &org(i), "Org").await;
    }
    rx.wait_for("the first, held", |r| Receiver::of_type(r, "organization.created").len() == 1).await;
    let patched = app.patch_as(&app.subscribe_key, &path, &json!({"ordered": false})).await;
    assert_eq!(patched.status(), 200);
    rx.open();
    let five = |r: &[crate::receiver::Received]| Receiver::of_type(r, "organization.created").len() >= 5;
    rx.wait_for("all five", five).await;

    let patched = app.patch_as(&app.subscribe_key, &path, &json!({"ordered": true})).await;
    assert_eq!(patched.status(), 200);
    rx.script(&[(500, None)]);
    for i in 5..9 {
        put_org(&app, &org(i), "Org").await;
    }
    let nine = |r: &[crate::receiver::Received]| Receiver::of_type(r, "organization.created").len() >= 10;
    rx.wait_for("the first of four twice, then the others", nine).await;
    let sequences: Vec<i64> = Receiver::of_type(&rx.received(), "organization.created")[5..]
        .iter()
        .map(|r| r.json()["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences[0], sequences[1], "retried first: {sequences:?}");
    assert!(sequences[1..].windows(2).all(|w| w[0] < w[1]), "then in sequence order: {sequences:?}");
});

webhook_test!(verify_holds_a_subscription_until_the_target_echoes_the_challenge, |app| async move {
    let rx = Receiver::start().await;
    rx.answer_challenges(Challenges::EchoWrong);
    let sub = create(&app, json!({"url": rx.url, "events": ["organization.*"], "verify": true})).await;
    assert_eq!(sub["status"], "pending");
    let id = sub["id"].as_str().unwrap().to_string();
    let secret = sub["secret"].as_str().unwrap().to_string();
    let got = rx.wait_for("the challenge", |r| !Receiver::of_type(r, "webhook.verification").is_empty()).await;
    let challenge = &Receiver::of_type(&got, "webhook.verification")[0];
    assert!(challenge.verify(&secret), "the challenge is signed like any delivery");
    assert!(challenge.json()["challenge"].as_str().unwrap().len() >= 32);
    assert_data_as_published(&app, &challenge.json()).await;

    // A wrong echo leaves it pending, with the reason shown.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let shown = loop {
        let shown = show(&app, &id).await;
        if shown["verification_error"].is_string() {
            break shown;
        }
        assert!(tokio::time::Instant::now() < deadline, "no verification error shown: {shown}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(shown["status"], "pending");
    assert!(shown["verification_error"].as_str().unwrap().contains("different challenge"), "{shown}");
    assert!(shown["last_failure_at"].is_string());
    let r = app.patch_as(&app.subscribe_key, &format!("/webhooks/{id}"), &json!({"status": "active"})).await;
    assert_eq!(r.status(), 422, "cannot skip verification");
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/test"), None).await;
    assert_eq!(r.status(), 409, "no test sends to an unverified target");

    // Events while pending are held, not dropped.
    put_org(&app, O1, "Food Bank").await;
    only_challenges_arrive(&rx, "while pending").await;

    rx.answer_challenges(Challenges::Echo);
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/verify"), None).await;
    assert_eq!(r.status(), 200);
    let verified: Value = r.json().await.unwrap();
    assert_eq!(verified["status"], "active", "{verified}");
    assert_eq!(verified["verification"]["success"], true);
    assert!(verified["verification_error"].is_null());
    assert!(verified["verified_at"].is_string());
    let got = rx
        .wait_for("the held ping and event", |r| {
            has_ping(r) && !Receiver::of_type(r, "organization.created").is_empty()
        })
        .await;
    let created = &Receiver::of_type(&got, "organization.created")[0];
    assert!(created.verify(&secret));
    assert_eq!(created.json()["data"]["name"], "Food Bank");
    // A challenge has the shape of every delivery (CONTRACT.md 5), with sequence 0 as it is no logged event.
    let challenge = Receiver::of_type(&got, "webhook.verification").pop().expect("a challenge").json();
    for field in ["id", "type", "timestamp", "data"] {
        assert!(challenge.get(field).is_some(), "{field} in {challenge}");
    }
    assert_eq!(challenge["sequence"], 0, "{challenge}");
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/verify"), None).await;
    assert_eq!(r.status(), 409, "already verified");
});

webhook_test!(a_new_url_is_verified_before_anything_is_sent_even_one_set_while_disabled, |app| async move {
    let first = Receiver::start().await;
    first.answer_challenges(Challenges::Echo);
    let sub = create(&app, json!({"url": first.url, "events": ["organization.*"], "verify": true})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while show(&app, &id).await["status"] != "active" {
        assert!(tokio::time::Instant::now() < deadline, "the first target was never verified");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Moved to a target that never echoes, while disabled, then enabled: it must echo first.
    let second = Receiver::start().await;
    let patch = |body: Value| {
        app.client.patch(app.url(&format!("/webhooks/{id}"))).bearer_auth(&app.subscribe_key).json(&body).send()
    };
    assert_eq!(patch(json!({"url": second.url, "status": "disabled"})).await.unwrap().status(), 200);
    assert!(show(&app, &id).await["verified_at"].is_null(), "a new URL is not verified");
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/enable"), None).await;
    assert_eq!(r.status(), 200);
    let enabled: Value = r.json().await.unwrap();
    assert_eq!(enabled["status"], "pending", "{enabled}");
    put_org(&app, O1, "Food Bank").await;
    only_challenges_arrive(&second, "before the echo").await;
    // Moved again while active: held `pending` in the same step, nothing sent before the echo either.
    second.answer_challenges(Challenges::Echo);
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/verify"), None).await;
    assert_eq!(r.status(), 200);
    let third = Receiver::start().await;
    let r = patch(json!({"url": third.url})).await.unwrap();
    let shown: Value = r.json().await.unwrap();
    assert_eq!(shown["status"], "pending", "{shown}");
    put_org(&app, O2, "Legal Aid").await;
    only_challenges_arrive(&third, "after the move").await;
});

webhook_test!(an_echo_from_a_url_the_subscription_left_verifies_nothing, |app| async move {
    // The challenge went to the old URL; the owner moved the subscription before its echo was recorded.
    let rx = Receiver::start().await;
    let sub = create(&app, json!({"url": rx.url, "events": ["organization.*"], "verify": true})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let moved = Receiver::start().await;
    let r = app.patch_as(&app.subscribe_key, &format!("/webhooks/{id}"), &json!({"url": moved.url})).await;
    assert_eq!(r.status(), 200);
    app.db.record_verification(&id, &rx.url, Ok(())).await.unwrap();
    let shown = show(&app, &id).await;
    assert_eq!(shown["status"], "pending", "{shown}");
    assert!(shown["verified_at"].is_null(), "{shown}");
    // The echo of the URL it has now does verify it.
    app.db.record_verification(&id, &moved.url, Ok(())).await.unwrap();
    assert_eq!(show(&app, &id).await["status"], "active");
});

webhook_test!(a_digest_subscription_gets_one_delivery_per_period_and_nothing_when_quiet, |app| async move {
    let rx = Receiver::start().await;
    let sub =
        create(&app, json!({"url": rx.url, "events": ["organization.*"], "schedule": "PT1S", "payload": "thin"})).await;
    assert_eq!(sub["schedule"], "PT1S");
    assert!(sub["next_digest_at"].is_string(), "{sub}");
    let secret = sub["secret"].as_str().unwrap().to_string();
    rx.wait_for("the ping", has_ping).await;
    put_org(&app, O1, "One").await;
    put_org(&app, O2, "Two").await;
    put_org(&app, O1, "One again").await;
    let covered = |r: &[crate::receiver::Received]| -> usize {
        Receiver::of_type(r, "webhook.digest")
            .iter()
            .map(|d| d.json()["data"]["events"].as_array().unwrap().len())
            .sum()
    };
    rx.wait_for("digests covering the three events", |r| covered(r) >= 3).await;
    // A quiet period sends nothing; the events are never sent one by one.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let received = rx.received();
    assert_eq!(covered(&received), 3);
    assert!(Receiver::of_type(&received, "organization.created").is_empty());
    assert!(Receiver::of_type(&received, "organization.updated").is_empty());
    let digests = Receiver::of_type(&received, "webhook.digest");
    assert!((1..=3).contains(&digests.len()), "one digest per period with events: {}", digests.len());
    let mut events = Vec::new();
    for digest in &digests {
        assert!(digest.verify(&secret));
        let body = digest.json();
        let data = &body["data"];
        assert!(data["since"].as_str().unwrap() < data["until"].as_str().unwrap(), "{body}");
        assert!(body["timestamp"].is_string());
        assert_data_as_published(&app, &body).await;
        events.extend(data["events"].as_array().unwrap().iter().cloned());
    }
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["organization.created", "organization.created", "organization.updated"]);
    assert!(events.windows(2).all(|w| w[0]["sequence"].as_i64() < w[1]["sequence"].as_i64()));
    assert_eq!(events[0]["data"]["object"], "organization", "thin, as it would have been sent");
    assert_eq!(events[0]["data"]["id"], O1);
    // Immediate again: no digest is due any more.
    let id = sub["id"].as_str().unwrap();
    let r = app
        .client
        .patch(app.url(&format!("/webhooks/{id}")))
        .bearer_auth(&app.subscribe_key)
        .json(&json!({"schedule": null}));
    let shown: Value = r.send().await.unwrap().json().await.unwrap();
    assert!(shown["schedule"].is_null() && shown["next_digest_at"].is_null(), "{shown}");
});

webhook_test!(replay_requeues_a_time_range_and_enable_replays_what_was_missed, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    put_org(&app, O1, "One").await;
    rx.wait_for("organization.created", |r| Receiver::of_type(r, "organization.created").len() == 1).await;
    // Wait until the recorder has marked it succeeded, then replay the range: it is sent once more.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page: Value = app
            .get_as(
                &app.subscribe_key,
                &format!("/webhooks/{id}/deliveries?status=succeeded&event_type=organization.created"),
            )
            .await;
        if page["total_items"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let replay = |only_failed: bool| {
        app.client
            .post(app.url(&format!("/webhooks/{id}/replay")))
            .bearer_auth(&app.subscribe_key)
            .json(&json!({"since": since, "only_failed": only_failed}))
            .send()
    };
    let r: Value = replay(true).await.unwrap().json().await.unwrap();
    assert_eq!(r["requeued"], 0, "nothing failed");
    let r: Value = replay(false).await.unwrap().json().await.unwrap();
    assert!(r["requeued"].as_u64().unwrap() >= 1, "{r}");
    let got = rx.wait_for("the replay", |r| Receiver::of_type(r, "organization.created").len() == 2).await;
    let sent = Receiver::of_type(&got, "organization.created");
    assert_eq!(sent[0].header("webhook-id"), sent[1].header("webhook-id"), "a replay is the same message");

    // Disabled by its owner, the subscription misses an event; enabling with replay_missed sends it.
    let r = app.patch_as(&app.subscribe_key, &format!("/webhooks/{id}"), &json!({"status": "disabled"})).await;
    assert_eq!(r.status(), 200);
    put_org(&app, O2, "Two").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(Receiver::of_type(&rx.received(), "organization.created").iter().all(|r| r.json()["data"]["id"] != O2));
    let r: Value = app
        .post_as(&app.subscribe_key, &format!("/webhooks/{id}/enable"), Some(&json!({"replay_missed": true})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "active", "{r}");
    rx.wait_for("the missed event", |r| {
        Receiver::of_type(r, "organization.created").iter().any(|x| x.json()["data"]["id"] == O2)
    })
    .await;
});

webhook_test!(authorization_matrix_of_the_webhook_endpoints, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribed(&app, json!({"url": rx.url})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let delivery = rx.wait_for("ping", |r| !r.is_empty()).await[0].header("webhook-id");
    let other = app.db.create_key("globex", hsda::store::keys::Scope::Subscribe).await.unwrap().secret;
    let other_admin = app.db.create_key("globex", hsda::store::keys::Scope::Admin).await.unwrap().secret;
    // (method, path, body) for every endpoint that names a subscription or a delivery
    let endpoints: Vec<(&str, String, Value)> = vec![
        ("GET", format!("/webhooks/{id}"), Value::Null),
        ("PATCH", format!("/webhooks/{id}"), json!({"description": "x"})),
        ("GET", format!("/webhooks/{id}/deliveries"), Value::Null),
        ("POST", format!("/webhooks/{id}/test"), json!({})),
        ("POST", format!("/webhooks/{id}/rotate-secret"), json!({"grace_seconds": 0})),
        ("POST", format!("/webhooks/{id}/replay"), json!({"since": "2020-01-01T00:00:00Z"})),
        ("POST", format!("/webhooks/{id}/enable"), json!({})),
        ("GET", format!("/deliveries/{delivery}"), Value::Null),
        ("POST", format!("/deliveries/{delivery}/retry"), Value::Null),
    ];
    let call = |method: &str, path: &str, body: &Value, key: Option<&str>| {
        let mut rq = app.client.request(method.parse().unwrap(), app.url(path));
        if let Some(key) = key {
            rq = rq.bearer_auth(key);
        }
        if !body.is_null() {
            rq = rq.json(body);
        }
        rq.send()
    };
    for (method, path, body) in &endpoints {
        let code = |r: reqwest::Response| r.status().as_u16();
        assert_eq!(code(call(method, path, body, None).await.unwrap()), 401, "{method} {path} without a key");
        assert_eq!(
            code(call(method, path, body, Some(&app.publish_key)).await.unwrap()),
            403,
            "{method} {path} publish"
        );
        let r = call(method, path, body, Some(&other)).await.unwrap();
        assert_eq!(r.status(), 404, "{method} {path} other tenant");
        let text = r.text().await.unwrap();
        assert!(!text.contains("whsec_") && !text.contains(&rx.url), "nothing of the subscription leaks: {text}");
        // An admin key is admin of every tenant.
        let r = call(method, path, body, Some(&other_admin)).await.unwrap();
        assert!(r.status().is_success(), "{method} {path} admin: {}", r.status());
        let r = call(method, path, body, Some(&app.subscribe_key)).await.unwrap();
        assert!(r.status().is_success(), "{method} {path} owner: {}", r.status());
    }
    // Deleting: other tenants cannot, the owner can.
    let r = call("DELETE", &format!("/webhooks/{id}"), &Value::Null, Some(&other)).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = call("DELETE", &format!("/webhooks/{id}"), &Value::Null, Some(&app.subscribe_key)).await.unwrap();
    assert_eq!(r.status(), 204);
    let r = call("GET", &format!("/deliveries/{delivery}"), &Value::Null, Some(&app.subscribe_key)).await.unwrap();
    assert_eq!(r.status(), 404, "history goes with the subscription");
});

webhook_test!(operational_events_are_visible_only_to_their_tenant_and_admins, |app| async move {
    let rx = Receiver::start().await;
    rx.script(&[(410, None)]);
    let sub: Value = subscribed(&app, json!({"url": rx.url})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let disabled = loop {
        let events = app.events_after(0).await;
        if let Some(e) = events.iter().find(|e| e["type"] == "webhook.disabled") {
            break e.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no webhook.disabled event");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(disabled["object_id"], id.as_str());
    let event_id = disabled["id"].as_str().unwrap();
    let other = app.db.create_key("globex", hsda::store::keys::Scope::Subscribe).await.unwrap().secret;
    put_org(&app, O1, "Food Bank").await;
    let public = app.get_json("/events?after=0&limit=1000").await;
    let as_other = app.get_as(&other, "/events?after=0&limit=1000").await;
    let as_owner = app.get_as(&app.subscribe_key, "/events?after=0&limit=1000").await;
    let has = |page: &Value| page["events"].as_array().unwrap().iter().any(|e| e["type"] == "webhook.disabled");
    assert!(!has(&public), "the public feed does not show a tenant's subscriptions");
    assert!(!has(&as_other), "another tenant does not see them");
    assert!(has(&as_owner), "the owner does");
    // Whoever reads, the sequence has no gaps: what a reader may not see is there as a redacted stand-in.
    for page in [&public, &as_other, &as_owner] {
        let events = page["events"].as_array().unwrap();
        let sequences: Vec<i64> = events.iter().map(|e| e["sequence"].as_i64().unwrap()).collect();
        assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>(), "gap-free");
        assert_eq!(page["next_after"], sequences.len() as i64);
    }
    let stand_in = &public["events"][disabled["sequence"].as_u64().unwrap() as usize - 1];
    assert_eq!(stand_in["sequence"], disabled["sequence"]);
    assert_eq!(stand_in["type"], "webhook.redacted", "{stand_in}");
    for field in ["id", "data", "object_id", "occurred_at", "origin"] {
        assert!(stand_in[field].is_null(), "nothing of it shows: {stand_in}");
    }
    // Under a type filter the hidden events are left out, not stood in for: a stand-in would tell their type.
    for types in ["webhook.disabled", "webhook.*", "webhook.disabled&types=organization.created"] {
        let page = app.get_json(&format!("/events?after=0&limit=1000&types={types}")).await;
        let shown: Vec<&str> = page["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert!(shown.iter().all(|t| !t.starts_with("webhook.")), "{types}: {shown:?}");
    }
    // A filter that matches nothing still moves the reader on, to the head of the log.
    let rare = app.get_json("/events?after=0&limit=10&types=unit.created").await;
    assert_eq!(rare["events"].as_array().unwrap().len(), 0);
    assert_eq!(rare["next_after"], app.db.last_sequence().await.unwrap(), "{rare}");
    // A type filter still leaves out what it does not match; `types` may be repeated.
    let filtered = app.get_json("/events?after=0&limit=1000&types=organization.created&types=webhook.ping").await;
    let types: Vec<&str> = filtered["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"organization.created"), "{types:?}");
    assert!(types.iter().all(|t| *t == "organization.created"), "{types:?}");
    assert_eq!(app.get(&format!("/events/{event_id}")).await.status(), 404);
    let r =
        app.client.get(app.url(&format!("/events/{event_id}"))).bearer_auth(&app.subscribe_key).send().await.unwrap();
    assert_eq!(r.status(), 200);
});

webhook_test!(an_admin_subscription_hears_every_tenants_operational_events, |app| async move {
    let operator = Receiver::start().await;
    let neighbour = Receiver::start().await;
    let globex = app.db.create_key("globex", hsda::store::keys::Scope::Subscribe).await.unwrap().secret;
    let watching = json!({"url": operator.url, "events": ["webhook.*"]});
    let r = subscribe(&app, &app.admin_key, watching).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["all_tenants"], true);
    let r = subscribe(&app, &globex, json!({"url": neighbour.url, "events": ["webhook.*"]})).await;
    assert_eq!(r.json::<Value>().await.unwrap()["all_tenants"], false);
    operator.wait_for("the ping", has_ping).await;
    neighbour.wait_for("the ping", has_ping).await;
    // A subscription of a third tenant (the admin key is acme's), disabled by its target's 410 at the ping.
    let initech = app.db.create_key("initech", hsda::store::keys::Scope::Subscribe).await.unwrap().secret;
    let gone = Receiver::start().await;
    gone.script(&[(410, None)]);
    let sub: Value = subscribe(&app, &initech, json!({"url": gone.url})).await.json().await.unwrap();
    let got = operator
        .wait_for("another tenant's webhook.disabled", |r| !Receiver::of_type(r, "webhook.disabled").is_empty())
        .await;
    let disabled = Receiver::of_type(&got, "webhook.disabled")[0].json();
    assert_eq!(disabled["data"]["id"], sub["id"]);
    assert_eq!(disabled["data"]["tenant"], "initech", "whose it is: {disabled}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(neighbour.received().len(), 1, "a third tenant hears only its own: the ping");
});

webhook_test!(a_change_and_its_deliveries_commit_together, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| !Receiver::of_type(r, "webhook.ping").is_empty()).await;
    put_org(&app, O1, "Food Bank").await;
    let history = format!("/webhooks/{id}/deliveries?object_id={O1}");
    // The group committer dispatched the event in the write's own transaction: the delivery exists the
    // moment the write is acknowledged, with no worker round in between. (On PostgreSQL the committer
    // leaves the events to the worker when the worker's dispatcher holds the cursor at that moment, so
    // there the delivery is only certain after the arrival below.)
    if app.db.backend() == hsda::store::Backend::Sqlite {
        let page: Value = app.get_as(&app.subscribe_key, &history).await;
        assert_eq!(page["total_items"], 1, "{page}");
    }
    let got = rx.wait_for("organization.created", |r| !Receiver::of_type(r, "organization.created").is_empty()).await;
    let page: Value = app.get_as(&app.subscribe_key, &history).await;
    assert_eq!(page["total_items"], 1, "one delivery per event and subscription: {page}");
    let delivery = page["contents"][0]["id"].as_str().unwrap();
    let sent = &Receiver::of_type(&got, "organization.created")[0];
    assert_eq!(sent.header("webhook-id"), delivery, "the delivery that was sent is the one recorded");
    assert!(sent.verify(sub["secret"].as_str().unwrap()));
});

/// Disabling a subscription (its owner, or a 410 from its target) ends its open deliveries as failed, with
/// the reason; a plain `enable` leaves them so, `enable` with `replay_missed` sends them again.
async fn disabling_ends_open_deliveries(store: Store) {
    let Some(app) = TestApp::spawn_with(store, |c| c.retry_schedule = Some("30,30".into())).await else { return };
    let key = app.subscribe_key.clone();
    let count = |id: String, status: &'static str| {
        let app = &app;
        let key = key.clone();
        async move {
            let page = app
                .get_as(&key, &format!("/webhooks/{id}/deliveries?status={status}&event_type=organization.created"))
                .await;
            page["total_items"].as_u64().unwrap()
        }
    };
    let wait_until = |what: &'static str, id: String, status: &'static str, n: u64| {
        let count = &count;
        crate::helpers::eventually(what, std::time::Duration::from_secs(10), move || {
            let id = id.clone();
            async move {
                let found = count(id, status).await;
                (found == n).then_some(()).ok_or_else(|| format!("{found} {status}"))
            }
        })
    };

    // The owner disables it while a delivery waits for its retry.
    let rx = Receiver::start().await;
    rx.script(&[(200, None), (500, None)]);
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| !r.is_empty()).await;
    put_org(&app, O1, "One").await;
    wait_until("the first attempt failed", id.clone(), "retrying", 1).await;
    let r =
        app.client.patch(app.url(&format!("/webhooks/{id}"))).bearer_auth(&key).json(&json!({"status": "disabled"}));
    assert_eq!(r.send().await.unwrap().status(), 200);
    assert_eq!(count(id.clone(), "retrying").await, 0, "nothing stays open");
    let failed =
        app.get_as(&key, &format!("/webhooks/{id}/deliveries?status=failed&event_type=organization.created")).await;
    assert_eq!(failed["total_items"], 1, "{failed}");
    assert_eq!(failed["contents"][0]["last_error"], hsda::store::webhooks::FAILED_BY_DISABLE, "{failed}");

    let r = app.post_as(&key, &format!("/webhooks/{id}/enable"), Some(&json!({}))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(count(id.clone(), "failed").await, 1, "a plain enable leaves what the disable ended");
    assert_eq!(count(id.clone(), "retrying").await + count(id.clone(), "pending").await, 0);

    // Again with another delivery waiting for its retry; this time enabled with `replay_missed`: that one goes
    // out again (the same message), the one the earlier disable ended does not.
    rx.script(&[(500, None)]);
    put_org(&app, O2, "Two").await;
    wait_until("the second change's first attempt failed", id.clone(), "retrying", 1).await;
    let r =
        app.client.patch(app.url(&format!("/webhooks/{id}"))).bearer_auth(&key).json(&json!({"status": "disabled"}));
    assert_eq!(r.send().await.unwrap().status(), 200);
    assert_eq!(count(id.clone(), "failed").await, 2);
    let r = app.post_as(&key, &format!("/webhooks/{id}/enable"), Some(&json!({"replay_missed": true}))).await;
    assert_eq!(r.status(), 200);
    let got = rx.wait_for("the delivery the second disable ended", |r| r.len() >= 4).await;
    assert_eq!(got[3].json()["data"]["id"], O2);
    assert_eq!(got[3].header("webhook-id"), got[2].header("webhook-id"), "the same message");
    wait_until("it succeeded", id.clone(), "succeeded", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let o1 = rx.received().iter().filter(|r| r.json()["data"]["id"] == O1).count();
    assert_eq!(o1, 1, "the first disable's delivery stays ended");
    assert_eq!(count(id.clone(), "failed").await, 1);

    // A 410 disables it while another delivery waits for its retry: that one ends too.
    let rx = Receiver::start().await;
    rx.script(&[(200, None), (500, None), (410, None)]);
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.updated"]})).await;
    let gone = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| !r.is_empty()).await;
    put_org(&app, O1, "One, renamed").await;
    let page = format!("/webhooks/{gone}/deliveries?status=retrying");
    crate::helpers::eventually("the first update's attempt failed", std::time::Duration::from_secs(10), || async {
        let shown = app.get_as(&key, &page).await;
        (shown["total_items"] == 1).then_some(()).ok_or_else(|| shown.to_string())
    })
    .await;
    put_org(&app, O1, "One, renamed again").await;
    crate::helpers::eventually("410 disables", std::time::Duration::from_secs(10), || async {
        let shown = app.get_as(&key, &format!("/webhooks/{gone}")).await;
        (shown["status"] == "disabled").then_some(()).ok_or_else(|| shown.to_string())
    })
    .await;
    let open = app.get_as(&key, &format!("/webhooks/{gone}/deliveries?status=retrying")).await;
    assert_eq!(open["total_items"], 0, "{open}");
    let failed = app.get_as(&key, &format!("/webhooks/{gone}/deliveries?status=failed")).await;
    let errors: Vec<&str> =
        failed["contents"].as_array().unwrap().iter().map(|d| d["last_error"].as_str().unwrap_or("")).collect();
    assert!(errors.contains(&hsda::store::webhooks::FAILED_BY_DISABLE), "{failed}");
    assert!(errors.contains(&hsda::store::webhooks::GONE_DISABLED), "{failed}");
    // The target is back: `replay_missed` sends both again, the one its 410 refused included.
    let r = app.post_as(&key, &format!("/webhooks/{gone}/enable"), Some(&json!({"replay_missed": true}))).await;
    assert_eq!(r.status(), 200);
    crate::helpers::eventually("both missed deliveries", std::time::Duration::from_secs(15), || async {
        let failed = app.get_as(&key, &format!("/webhooks/{gone}/deliveries?status=failed")).await;
        (failed["total_items"] == 0).then_some(()).ok_or_else(|| failed.to_string())
    })
    .await;
}

crate::each_store!(disabling_ends_open_deliveries);

webhook_test!(metrics_count_attempts_requests_and_what_the_store_holds, |app| async move {
    let rx = Receiver::start().await;
    rx.script(&[(200, None), (503, None)]);
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
    assert_eq!(sub["status"], "active");
    put_org(&app, O1, "One").await;
    rx.wait_for("the ping, the 503 and its retry", |r| r.len() >= 3).await;
    let wanted = [
        r#"hsda_delivery_attempts_total{outcome="succeeded",error_class=""} 2"#,
        r#"hsda_delivery_attempts_total{outcome="retry",error_class="http_status"} 1"#,
        r#"hsda_http_requests_total{method="POST",route="/webhooks",status="201"} 1"#,
        r#"hsda_http_requests_total{method="PUT",route="/{plural}/{id}",status="201"} 1"#,
        r#"hsda_subscriptions{status="active"} 1"#,
        "hsda_deliveries_open 0",
        "hsda_deliveries_in_flight 0",
        "hsda_store_degraded 0",
    ];
    let text = crate::helpers::eventually("the metrics", std::time::Duration::from_secs(10), || async {
        let r = app.client.get(app.url("/metrics")).bearer_auth(&app.admin_key).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
        let text = r.text().await.unwrap();
        let all = wanted.iter().all(|w| text.lines().any(|l| l == *w));
        if all { Ok(text) } else { Err(format!("{wanted:?} in:\n{text}")) }
    })
    .await;
    let sequence = app.db.last_sequence().await.unwrap();
    assert!(text.lines().any(|l| l == format!("hsda_event_sequence {sequence}")), "{text}");
    assert!(!text.contains(O1) && !text.contains(sub["id"].as_str().unwrap()), "no ids, only routes: {text}");
    // The figures tell every tenant's volumes: admin keys only.
    let r = app.client.get(app.url("/metrics")).bearer_auth(&app.subscribe_key).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(app.get("/metrics").await.status(), 401);
});

webhook_test!(filters_match_child_and_cascade_deleted_events_by_their_roots, |app| async move {
    // A service of organization ORG at location LOC, tagged with term TT; one subscription per filter.
    let id = |n: u32| format!("00000000-0000-4000-8000-{:012}", 100 + n);
    let (org, tax, term, loc, svc, sal, phone) = (id(1), id(2), id(3), id(4), id(5), id(6), id(7));
    app.put_ok(&format!("/organizations/{org}"), &json!({"name": "Org", "description": "d"})).await;
    app.put_ok(&format!("/taxonomies/{tax}"), &json!({"name": "Tax", "description": "d"})).await;
    app.put_ok(&format!("/taxonomy_terms/{term}"), &json!({"name": "Food", "description": "d", "taxonomy_id": tax}))
        .await;
    app.put_ok(&format!("/locations/{loc}"), &json!({"location_type": "physical", "organization_id": org})).await;
    let service = json!({"name": "Pantry", "status": "active", "organization_id": org,
        "attributes": [{"id": id(8), "taxonomy_term_id": term, "link_type": "service", "link_entity": "service"}]});
    app.put_ok(&format!("/services/{svc}"), &service).await;
    app.put_ok(&format!("/service_at_locations/{sal}"), &json!({"service_id": svc, "location_id": loc})).await;
    let filters = [("organization_id", &org), ("service_id", &svc), ("location_id", &loc), ("taxonomy_term_id", &term)];
    let mut receivers = Vec::new();
    for (field, value) in filters {
        let rx = Receiver::start().await;
        let body = json!({"url": rx.url, "events": ["phone.*", "service.*", "service_at_location.*", "attribute.*"], "filter": {field: value}});
        assert_eq!(subscribed(&app, body).await["status"], "active");
        rx.wait_for("the ping", |r| !r.is_empty()).await;
        receivers.push((field, rx));
    }

    // A phone of the service: created, changed, deleted; then the service goes, and its location link with it.
    app.put_ok(&format!("/phones/{phone}"), &json!({"number": "1", "service_id": svc})).await;
    let r = app
        .client
        .patch(app.url(&format!("/phones/{phone}")))
        .bearer_auth(&app.publish_key)
        .json(&json!({"number": "2"}));
    assert!(r.send().await.unwrap().status().is_success());
    let r = app.client.delete(app.url(&format!("/phones/{phone}"))).bearer_auth(&app.publish_key).send().await.unwrap();
    assert!(r.status().is_success());
    let r = app.client.delete(app.url(&format!("/services/{svc}"))).bearer_auth(&app.publish_key).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    // The service's attribute goes with it: its event matches by the service it belonged to.
    let wanted = [
        "phone.created",
        "phone.updated",
        "phone.deleted",
        "service.deleted",
        "service_at_location.deleted",
        "attribute.deleted",
    ];
    for (field, rx) in &receivers {
        let got = rx
            .wait_for(&format!("the {field} subscription's events"), |r| {
                wanted.iter().all(|w| !Receiver::of_type(r, w).is_empty())
            })
            .await;
        let types: Vec<String> = got.iter().map(|r| r.json()["type"].as_str().unwrap().to_string()).collect();
        for w in wanted {
            assert!(types.iter().any(|t| t == w), "{field}: {w} in {types:?}");
        }
    }
});

webhook_test!(a_service_that_leaves_a_filter_is_announced_to_it, |app| async move {
    // A service tagged with a term and linked to a location; subscriptions filtering by each. Dropping the
    // tag, then the link, changes the service: each subscription hears the change that took it out of its
    // filter (as one filtering by organization hears of a service moved away).
    let id = |n: u32| format!("00000000-0000-4000-8000-{:012}", 300 + n);
    let (term, loc, svc, sal, attribute) = (id(1), id(2), id(3), id(4), id(5));
    app.put_tagged_and_located_service(&svc, &term, &loc, &attribute, &sal).await;
    let mut receivers = Vec::new();
    for (field, value) in [("taxonomy_term_id", &term), ("location_id", &loc)] {
        let rx = Receiver::start().await;
        let body = json!({"url": rx.url, "events": ["service.updated"], "filter": {field: value}});
        assert_eq!(subscribed(&app, body).await["status"], "active");
        rx.wait_for("the ping", |r| !r.is_empty()).await;
        receivers.push(rx);
    }
    assert_eq!(app.delete(&format!("/attributes/{attribute}")).await.status(), 204);
    assert_eq!(app.delete(&format!("/service_at_locations/{sal}")).await.status(), 204);
    for (rx, emptied) in receivers.iter().zip(["attributes", "service_at_locations"]) {
        let got = rx
            .wait_for(&format!("the service without its {emptied}"), |r| {
                Receiver::of_type(r, "service.updated")
                    .iter()
                    .any(|d| d.json()["data"][emptied].as_array().is_some_and(Vec::is_empty))
            })
            .await;
        assert!(!got.is_empty());
    }
});

webhook_test!(patch_is_a_json_merge_patch_of_the_subscription, |app| async move {
    let rx = Receiver::start().await;
    let sub = subscribed(
        &app,
        json!({"url": rx.url, "events": ["organization.*"], "description": "first",
               "filter": {"organization_id": O1, "service_id": O2},
               "headers": {"X-A": "1", "X-B": "2"}, "metadata": {"a": 1, "b": 2}}),
    )
    .await;
    let id = sub["id"].as_str().unwrap();
    let patch = json!({"filter": {"service_id": null}, "headers": {"X-A": null, "X-C": "3"},
                       "metadata": {"a": null}, "description": null});
    let r = app.patch_as(&app.subscribe_key, &format!("/webhooks/{id}"), &patch).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let now = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await;
    assert_eq!(now["filter"], json!({"organization_id": O1}), "a null member is removed, the rest kept: {now}");
    assert_eq!(now["headers"], json!({"X-B": "2", "X-C": "3"}), "{now}");
    assert_eq!(now["metadata"], json!({"b": 2}), "{now}");
    assert_eq!(now["description"], "", "{now}");
    // Header names compare without case: `x-b` replaces `X-B`.
    let r = app.patch_as(&app.subscribe_key, &format!("/webhooks/{id}"), &json!({"headers": {"x-b": "9"}})).await;
    assert_eq!(r.status(), 200);
    let now = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await;
    assert_eq!(now["headers"], json!({"x-b": "9", "X-C": "3"}), "{now}");
    // A null object field clears it.
    let r =
        app.patch_as(&app.subscribe_key, &format!("/webhooks/{id}"), &json!({"headers": null, "filter": null})).await;
    assert_eq!(r.status(), 200);
    let now = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}")).await;
    assert_eq!((now["headers"].clone(), now["filter"].clone()), (json!({}), json!({})), "{now}");
});

webhook_test!(an_import_announces_a_service_that_leaves_a_filter_to_it, |app| async move {
    // A service of one organization, tagged with one term and at one location; a subscription filtering by
    // each. An import moves it to another organization, term and location in one go: every subscription
    // hears of the change that took the service out of its filter (events match by what the document held
    // before the import, as a write's do).
    let id = |n: u32| format!("00000000-0000-4000-8000-{:012}", 400 + n);
    let (term, other_term, loc, other_loc, svc, sal, attribute) = (id(1), id(2), id(3), id(4), id(5), id(6), id(7));
    put_org(&app, O1, "One").await;
    put_org(&app, O2, "Two").await;
    for t in [&term, &other_term] {
        app.put_ok(&format!("/taxonomy_terms/{t}"), &json!({"name": "Food", "description": "d"})).await;
    }
    for l in [&loc, &other_loc] {
        app.put_ok(&format!("/locations/{l}"), &json!({"location_type": "physical", "name": "Hall"})).await;
    }
    let service = |org: &str, term: &str, loc: &str| {
        json!({"id": svc, "name": "Pantry", "status": "active", "organization_id": org,
               "attributes": [{"id": attribute, "taxonomy_term_id": term}],
               "service_at_locations": [{"id": sal, "location_id": loc}]})
    };
    app.put_ok(&format!("/services/{svc}"), &service(O1, &term, &loc)).await;
    let mut receivers = Vec::new();
    for (field, value) in [("organization_id", O1), ("taxonomy_term_id", &term), ("location_id", &loc)] {
        let rx = Receiver::start().await;
        let body = json!({"url": rx.url, "events": ["service.updated"], "filter": {field: value}});
        assert_eq!(subscribed(&app, body).await["status"], "active");
        rx.wait_for("the ping", has_ping).await;
        receivers.push((field, rx));
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("moved.ndjson");
    std::fs::write(&file, format!("{}\n", service(O2, &other_term, &other_loc))).unwrap();
    hsda::bulk::import::import_path(&app.db, &file, Default::default()).await.expect("imports");
    let now = app.get_json(&format!("/services/{svc}")).await;
    assert_eq!(now["organization_id"], O2, "{now}");
    assert_eq!(now["attributes"][0]["taxonomy_term_id"], other_term.as_str(), "{now}");
    assert_eq!(now["service_at_locations"][0]["location"]["id"], other_loc.as_str(), "{now}");

    let what = "the moved service at each subscription filtering by what it held";
    crate::helpers::eventually(what, std::time::Duration::from_secs(10), || async {
        let missed: Vec<&str> = receivers
            .iter()
            .filter(|(_, rx)| {
                let updated = Receiver::of_type(&rx.received(), "service.updated");
                !updated.iter().any(|d| d.json()["data"]["organization_id"] == O2)
            })
            .map(|(field, _)| *field)
            .collect();
        missed.is_empty().then_some(()).ok_or_else(|| format!("not heard filtering by {missed:?}"))
    })
    .await;
});

/// The sum of the `hsda_delivery_attempts_total` counters with this `outcome`.
async fn attempts_counted(app: &TestApp, outcome: &str) -> u64 {
    let r = app.client.get(app.url("/metrics")).bearer_auth(&app.admin_key).send().await.unwrap();
    let text = r.text().await.unwrap();
    let prefix = format!("hsda_delivery_attempts_total{{outcome=\"{outcome}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Another connection holding what the attempt recorder must lock for `subscription` (SQLite: the file's write
/// lock; PostgreSQL: the subscription's row), so that its next batch waits, and whatever attempts finish
/// meanwhile queue up for the batch after it.
enum StoreLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl StoreLock {
    async fn take(app: &TestApp, subscription: &str) -> StoreLock {
        use sqlx::Connection;
        match app.db.backend() {
            hsda::store::Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&app.database_url).await.unwrap();
                sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.unwrap();
                StoreLock::Sqlite(conn)
            }
            hsda::store::Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
                sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
                sqlx::query("SELECT id FROM subscriptions WHERE id = $1 FOR UPDATE")
                    .bind(subscription)
                    .execute(&mut conn)
                    .await
                    .unwrap();
                StoreLock::Postgres(conn)
            }
        }
    }

    async fn release(self) {
        match self {
            StoreLock::Sqlite(mut conn) => sqlx::query("ROLLBACK").execute(&mut conn).await.map(drop).unwrap(),
            StoreLock::Postgres(mut conn) => sqlx::query("ROLLBACK").execute(&mut conn).await.map(drop).unwrap(),
        }
    }
}

webhook_test!(every_delivery_a_410_refused_in_one_recorded_batch_is_replayed, |app| async move {
    // Three deliveries at the target together, all refused with 410, their results recorded in one batch: the
    // first disables the subscription, and the other two were refused just the same. Once the target is
    // back, `replay_missed` sends all three again, not only the one that disabled it.
    let rx = Receiver::start().await;
    rx.hold();
    rx.script(&[(200, None), (410, None), (410, None), (410, None)]);
    let sub = create(&app, json!({"url": rx.url, "events": ["organization.created"]})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping, held", |r| r.len() == 1).await;
    let orgs: Vec<String> = (0..3).map(org).collect();
    for o in &orgs {
        put_org(&app, o, "Org").await;
    }
    rx.wait_for("the three deliveries, held at the target together", |r| r.len() == 4).await;

    // The ping's success goes first, into a batch that waits for the lock; the three 410s arrive meanwhile
    // and make the next batch together.
    let lock = StoreLock::take(&app, &id).await;
    rx.let_through(1);
    crate::helpers::eventually("the ping answered", std::time::Duration::from_secs(10), || async {
        let n = attempts_counted(&app, "succeeded").await;
        (n == 1).then_some(()).ok_or_else(|| format!("{n} succeeded"))
    })
    .await;
    // (The recorder takes the ping's result into its batch within microseconds.)
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    rx.let_through(3);
    crate::helpers::eventually("the three 410s", std::time::Duration::from_secs(10), || async {
        let n = attempts_counted(&app, "gone").await;
        (n == 3).then_some(()).ok_or_else(|| format!("{n} gone"))
    })
    .await;
    lock.release().await;

    crate::helpers::eventually("410 disables", std::time::Duration::from_secs(10), || async {
        let shown = show(&app, &id).await;
        (shown["status"] == "disabled").then_some(()).ok_or_else(|| shown.to_string())
    })
    .await;
    let failed = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}/deliveries?status=failed")).await;
    let errors: Vec<&str> =
        failed["contents"].as_array().unwrap().iter().map(|d| d["last_error"].as_str().unwrap_or("")).collect();
    assert_eq!(errors, [hsda::store::webhooks::GONE_DISABLED; 3], "each one a 410 refused, in one batch: {failed}");

    // The target is back.
    rx.open();
    let body = json!({"replay_missed": true});
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/enable"), Some(&body)).await;
    assert_eq!(r.status(), 200);
    let got = rx
        .wait_for_within("the three refused deliveries again", std::time::Duration::from_secs(10), |r| {
            orgs.iter().all(|o| {
                Receiver::of_type(r, "organization.created")
                    .iter()
                    .filter(|d| d.json()["data"]["id"] == o.as_str())
                    .count()
                    == 2
            })
        })
        .await;
    for sent in Receiver::of_type(&got, "organization.created") {
        let id = sent.header("webhook-id");
        let again =
            Receiver::of_type(&got, "organization.created").iter().filter(|d| d.header("webhook-id") == id).count();
        assert_eq!(again, 2, "the same message, sent again: {id}");
    }
    crate::helpers::eventually("all delivered", std::time::Duration::from_secs(10), || async {
        let page = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}/deliveries?status=succeeded")).await;
        (page["total_items"] == 4).then_some(()).ok_or_else(|| page.to_string())
    })
    .await;
});

/// A subscription of `rx` (which holds what it gets from now on; its ping is let through) and the delivery of
/// an organization created then, held unanswered at `rx`: (subscription id, delivery id).
async fn a_delivery_held_at_the_target(app: &TestApp, rx: &Receiver) -> (String, String) {
    rx.hold();
    let sub = create(app, json!({"url": rx.url, "events": ["organization.created"]})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping, held", |r| r.len() == 1).await;
    rx.let_through(1);
    put_org(app, O1, "One").await;
    rx.wait_for("the delivery, held at the target", |r| r.len() == 2).await;
    let delivery = delivery_of(app, &id, "organization.created").await;
    (id, delivery)
}

/// A subscription to `rx` (whose script answers its ping and fails the next request) and the delivery of an
/// organization's creation to it, once that first attempt failed: (subscription id, delivery id).
async fn a_retrying_delivery(app: &TestApp, rx: &Receiver) -> (String, String) {
    let sub = create(app, json!({"url": rx.url, "events": ["organization.created"]})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| r.len() == 1).await;
    put_org(app, O1, "One").await;
    let delivery = delivery_of(app, &id, "organization.created").await;
    delivery_reaches(app, &delivery, "retrying").await;
    (id, delivery)
}

/// One `ordered` subscription per `(events pattern, filter field, value)`, each to a receiver of its own, with
/// its ping received: (receiver, subscription id). Ordered, so that what each gets comes in sequence order and
/// an event it should not have got shows before a later one it should.
async fn ordered_subscribers(app: &TestApp, filters: &[(&str, &str, &String)]) -> Vec<(Receiver, String)> {
    let mut subscribers = Vec::new();
    for (events, field, value) in filters {
        let rx = Receiver::start().await;
        let body = json!({"url": rx.url, "events": [events], "filter": {*field: value}, "ordered": true});
        let sub = create(app, body).await["id"].as_str().unwrap().to_string();
        rx.wait_for("the ping", |r| r.len() == 1).await;
        subscribers.push((rx, sub));
    }
    subscribers
}

/// Delivery `id` as shown once its status is `status` (within 10 s).
async fn delivery_reaches(app: &TestApp, id: &str, status: &str) -> Value {
    crate::helpers::eventually(&format!("delivery {id} {status}"), std::time::Duration::from_secs(10), || async {
        let d = app.get_as(&app.subscribe_key, &format!("/deliveries/{id}")).await;
        (d["status"] == status).then(|| d.clone()).ok_or_else(|| d.to_string())
    })
    .await
}

/// A connection of the test's own to the server's database.
async fn database_of(app: &TestApp) -> sqlx::AnyConnection {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(&app.database_url).await.expect("the database")
}

/// The id of the one delivery of `event_type` on subscription `id`.
async fn delivery_of(app: &TestApp, id: &str, event_type: &str) -> String {
    let page = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}/deliveries?event_type={event_type}")).await;
    assert_eq!(page["total_items"], 1, "{page}");
    page["contents"][0]["id"].as_str().unwrap().to_string()
}

/// A retry asked for while the next one is held for later goes at once, and its failure is retried on
/// schedule (the held timer of the earlier failure used to take the new hold with it: the delivery then
/// waited for its lease to run out, about 30 s).
async fn a_retry_asked_for_while_one_is_held_keeps_the_schedule(store: Store) {
    let Some(app) = TestApp::spawn_with(store, |c| c.retry_schedule = Some("2,2,2,2".into())).await else { return };
    let rx = Receiver::start().await;
    rx.script(&[(200, None), (500, None), (500, None), (500, None)]);
    let (_, delivery) = a_retrying_delivery(&app, &rx).await;
    let r = app.post_as(&app.subscribe_key, &format!("/deliveries/{delivery}/retry"), None).await;
    assert_eq!(r.status(), 202);
    let asked = std::time::Instant::now();
    rx.wait_for_within("the retry asked for", std::time::Duration::from_secs(2), |r| r.len() == 3).await;
    // Its failure is retried about 2 s later (jittered), well before a lease would run out.
    let got =
        rx.wait_for_within("the scheduled retry after it", std::time::Duration::from_secs(8), |r| r.len() == 4).await;
    assert!(got[3].at.duration_since(got[2].at) >= std::time::Duration::from_millis(500), "on schedule, not at once");
    assert!(asked.elapsed() < std::time::Duration::from_secs(10));
    let ids: std::collections::HashSet<String> = got[1..].iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "one delivery, sent three times");
}

crate::each_store!(a_retry_asked_for_while_one_is_held_keeps_the_schedule);

/// An attempt asked for by hand is an extra one: it takes no place in the automatic retry schedule, so a
/// failing delivery still gets every automatic retry after it (as a manual retry in Stripe or Svix leaves
/// the schedule alone). Once the schedule is spent, a retry by hand that fails ends the delivery failed
/// again after that one attempt.
async fn a_retry_asked_for_uses_up_no_automatic_retry(store: Store) {
    let Some(app) = TestApp::spawn_with(store, |c| c.retry_schedule = Some("1,1".into())).await else { return };
    let rx = Receiver::start().await;
    let mut script = vec![(200, None)];
    script.extend([(500, None); 8]);
    rx.script(&script);
    let (_, delivery) = a_retrying_delivery(&app, &rx).await;
    let r = app.post_as(&app.subscribe_key, &format!("/deliveries/{delivery}/retry"), None).await;
    assert_eq!(r.status(), 202);
    let failed = delivery_reaches(&app, &delivery, "failed").await;
    // Three automatic attempts (the first and two retries) and the one asked for.
    assert_eq!(failed["attempts"].as_array().map(Vec::len), Some(4), "{failed}");
    assert_eq!(rx.received().len(), 5);

    let r = app.post_as(&app.subscribe_key, &format!("/deliveries/{delivery}/retry"), None).await;
    assert_eq!(r.status(), 202);
    rx.wait_for("the retry asked for", |r| r.len() == 6).await;
    let failed = delivery_reaches(&app, &delivery, "failed").await;
    assert_eq!(failed["attempts"].as_array().map(Vec::len), Some(5), "{failed}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(rx.received().len(), 6, "no automatic retry after a spent schedule");
}

crate::each_store!(a_retry_asked_for_uses_up_no_automatic_retry);

/// A delivery shown while its attempts are being recorded lists exactly the attempts its count and status
/// reflect (one snapshot): read in two statements, an attempt recorded between them showed in one only.
async fn a_delivery_is_shown_as_of_one_moment(store: Store) {
    let schedule = vec!["0"; 40].join(",");
    let Some(app) = TestApp::spawn_with(store, |c| c.retry_schedule = Some(schedule)).await else { return };
    let rx = Receiver::start().await;
    let mut script = vec![(200, None)];
    script.extend([(500, None); 41]);
    rx.script(&script);
    let sub = create(&app, json!({"url": rx.url, "events": ["organization.created"]})).await;
    rx.wait_for("the ping", |r| r.len() == 1).await;
    put_org(&app, O1, "One").await;
    let delivery = delivery_of(&app, sub["id"].as_str().unwrap(), "organization.created").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut reads = 0;
    loop {
        let d = app.get_as(&app.subscribe_key, &format!("/deliveries/{delivery}")).await;
        reads += 1;
        assert_eq!(d["attempts"].as_array().map(|a| a.len() as u64), d["attempt_count"].as_u64(), "read {reads}: {d}");
        if d["status"] == "failed" || std::time::Instant::now() > deadline {
            assert_eq!(d["status"], "failed", "{d}");
            assert_eq!(d["attempt_count"], 41, "{d}");
            break;
        }
    }
}

crate::each_store!(a_delivery_is_shown_as_of_one_moment);

// A page of the delivery history counts what it lists: read while deliveries are being made, `total_items`
// and the rows come from one snapshot (two reads let a delivery made between them show in one only).
webhook_test!(a_delivery_history_page_counts_what_it_lists, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribed(&app, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let path = format!("/webhooks/{}/deliveries?per_page=1000", sub["id"].as_str().unwrap());
    let app = &app;
    let writes = async {
        for i in 0..120 {
            put_org(app, &org(i), "Org").await;
        }
    };
    let reads = async {
        let mut checked = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while checked < 2000 && std::time::Instant::now() < deadline {
            let page = app.get_as(&app.subscribe_key, &path).await;
            let listed = page["contents"].as_array().map_or(0, Vec::len) as u64;
            assert_eq!(Some(listed), page["total_items"].as_u64(), "read {checked}");
            if listed == 121 {
                break;
            }
            checked += 1;
        }
    };
    futures::future::join(writes, reads).await;
});

webhook_test!(a_retry_asked_for_during_an_attempt_sends_no_second_copy, |app| async move {
    // Asked for (twice) while the first attempt waits at the target, a retry leaves that attempt to finish:
    // no second copy goes out beside it, and the attempts counted are the attempts recorded.
    let rx = Receiver::start().await;
    let (id, delivery) = a_delivery_held_at_the_target(&app, &rx).await;
    for _ in 0..2 {
        let r = app.post_as(&app.subscribe_key, &format!("/deliveries/{delivery}/retry"), None).await;
        assert_eq!(r.status(), 202);
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(rx.received().len(), 2, "no second copy while the first is at the target");
    rx.open();
    crate::helpers::eventually("the delivery succeeded", std::time::Duration::from_secs(10), || async {
        let d = app.get_as(&app.subscribe_key, &format!("/deliveries/{delivery}")).await;
        (d["status"] == "succeeded").then_some(()).ok_or_else(|| d.to_string())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 2, "sent once");
    let shown = app.get_as(&app.subscribe_key, &format!("/deliveries/{delivery}")).await;
    let listed =
        app.get_as(&app.subscribe_key, &format!("/webhooks/{id}/deliveries?event_type=organization.created")).await;
    assert_eq!(shown["attempts"].as_array().map(Vec::len), Some(1), "{shown}");
    assert_eq!(listed["contents"][0]["attempts"], 1, "{listed}");
});

/// A retry asked for while an attempt is out, which then fails, goes at once (not on the schedule, 30 s here),
/// and still as one copy at a time.
async fn a_retry_asked_for_during_a_failing_attempt_goes_at_once(store: Store) {
    let Some(app) = TestApp::spawn_with(store, |c| c.retry_schedule = Some("30,30".into())).await else { return };
    let rx = Receiver::start().await;
    rx.script(&[(200, None), (500, None), (200, None)]);
    let (id, delivery) = a_delivery_held_at_the_target(&app, &rx).await;
    let r = app.post_as(&app.subscribe_key, &format!("/deliveries/{delivery}/retry"), None).await;
    assert_eq!(r.status(), 202);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 2, "no second copy while the first is at the target");
    rx.open(); // the first attempt fails (500)
    let got = rx.wait_for_within("the retry asked for", std::time::Duration::from_secs(5), |r| r.len() == 3).await;
    assert_eq!(got[2].header("webhook-id"), got[1].header("webhook-id"));
    crate::helpers::eventually("the retry succeeded", std::time::Duration::from_secs(10), || async {
        let d = app.get_as(&app.subscribe_key, &format!("/deliveries/{delivery}")).await;
        (d["status"] == "succeeded" && d["attempts"].as_array().map(Vec::len) == Some(2))
            .then_some(())
            .ok_or_else(|| d.to_string())
    })
    .await;
    let listed =
        app.get_as(&app.subscribe_key, &format!("/webhooks/{id}/deliveries?event_type=organization.created")).await;
    assert_eq!(listed["contents"][0]["attempts"], 2, "{listed}");
}

crate::each_store!(a_retry_asked_for_during_a_failing_attempt_goes_at_once);

webhook_test!(deliveries_filter_by_type_or_pattern_and_refuse_what_names_nothing, |app| async move {
    let rx = Receiver::start().await;
    let sub = create(&app, json!({"url": rx.url, "events": ["*"]})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    put_org(&app, O1, "One").await;
    put_org(&app, &org(2), "Two").await;
    put_org(&app, O1, "One renamed").await;
    rx.wait_for("the ping and three changes", |r| r.len() == 4).await;
    let listed = |query: &str| app.get_response_as(&app.subscribe_key, format!("/webhooks/{id}/deliveries?{query}"));
    for (query, expected) in [
        ("event_type=organization.created", 2),
        ("event_type=organization.*", 3),
        ("event_type=*", 4),
        ("event_type=webhook.ping", 1),
        ("event_type=service_at_location.*", 0),
    ] {
        let page: Value = listed(query).await.json().await.unwrap();
        assert_eq!(page["total_items"], expected, "{query}: {page}");
    }
    // A pattern is a table's own prefix: `service.*` is no `service_at_location.*`, nor the reverse.
    let (s, l, link) = (org(20), org(21), org(22));
    app.put_ok(&format!("/services/{s}"), &json!({"id": s, "name": "S", "status": "active", "organization_id": O1}))
        .await;
    app.put_ok(&format!("/locations/{l}"), &json!({"id": l, "name": "L", "location_type": "physical"})).await;
    let body = json!({"id": link, "service_id": s, "location_id": l});
    app.put_ok(&format!("/service_at_locations/{link}"), &body).await;
    rx.wait_for("the link's event", |r| !Receiver::of_type(r, "service_at_location.created").is_empty()).await;
    for prefix in ["service.", "service_at_location."] {
        let query = format!("event_type={prefix}*&per_page=100");
        let page: Value = app.get_as(&app.subscribe_key, &format!("/webhooks/{id}/deliveries?{query}")).await;
        let types: Vec<&str> =
            page["contents"].as_array().unwrap().iter().filter_map(|d| d["event_type"].as_str()).collect();
        assert!(!types.is_empty() && types.iter().all(|t| t.starts_with(prefix)), "{query}: {types:?}");
    }
    for (query, parameter) in [
        ("event_type=organisation.created", "event_type"),
        ("event_type=bogus", "event_type"),
        ("since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
    ] {
        let r = listed(query).await;
        assert_eq!(r.status(), 400, "{query}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["errors"][0]["parameter"], parameter, "{query}: {problem}");
    }
});

/// PostgreSQL, two processes on one database: a secret rotated (no grace) and a URL moved through one are
/// what the other signs and sends to for a delivery it creates right after the owner got the answer, though
/// its snapshot of subscriptions is younger than a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_process_holds_for_what_another_sends_right_after_postgres() {
    let Some(a) = TestApp::spawn(Store::Postgres).await else { return };
    let shared = a.database_url.clone();
    let Some(b) = TestApp::spawn_with(Store::Postgres, |c| c.database_url = shared).await else { return };
    let (rx, moved_to) = (Receiver::start().await, Receiver::start().await);
    let sub = create(&a, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| r.len() == 1).await;
    for round in 0..3 {
        // B sends one, so that it holds a snapshot of the subscription just read.
        put_org(&b, &org(round * 2), "Before").await;
        rx.wait_for("B's delivery", |r| r.len() == 2 + round * 2).await;
        let path = format!("/webhooks/{id}/rotate-secret");
        let rotated: Value =
            a.post_as(&a.subscribe_key, &path, Some(&json!({"grace_seconds": 0}))).await.json().await.unwrap();
        let new = rotated["secret"].as_str().unwrap().to_string();
        put_org(&b, &org(round * 2 + 1), "After").await;
        let got = rx.wait_for("the delivery after the rotation", |r| r.len() == 3 + round * 2).await;
        let last = got.last().unwrap();
        assert_eq!(last.json()["data"]["name"], "After");
        assert!(last.verify(&new), "round {round}: signed with the secret rotated in through the other process");
        assert_eq!(last.header("webhook-signature").split(' ').count(), 1, "no grace: the new secret alone");
    }
    let r = a
        .client
        .patch(a.url(&format!("/webhooks/{id}")))
        .bearer_auth(&a.subscribe_key)
        .json(&json!({"url": moved_to.url}));
    assert_eq!(r.send().await.unwrap().status(), 200);
    put_org(&b, &org(10), "Moved").await;
    moved_to.wait_for("the delivery at the new URL", |r| Receiver::of_type(r, "organization.created").len() == 1).await;
    assert_eq!(
        Receiver::of_type(&rx.received(), "organization.created")
            .iter()
            .filter(|d| d.json()["data"]["name"] == "Moved")
            .count(),
        0
    );
}

/// PostgreSQL, two processes on one database: who gets a change is decided by the subscriptions as they are
/// when it is dispatched, though a dispatcher reads them all again only when their version moved (migration
/// 12). A filter, a new subscription, a disable and a delete made through one process hold for the other's
/// very next write; an attempt's bookkeeping (last success, failure streak) moves no version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_decides_who_gets_a_change_through_one_process_holds_for_the_next_write_of_another_postgres() {
    let Some(a) = TestApp::spawn(Store::Postgres).await else { return };
    let shared = a.database_url.clone();
    let Some(b) = TestApp::spawn_with(Store::Postgres, |c| c.database_url = shared).await else { return };
    let mut db = database_of(&a).await;
    let mut version = async || -> i64 {
        sqlx::query_scalar("SELECT value FROM counters WHERE name = 'subscriptions_version'")
            .fetch_one(&mut db)
            .await
            .unwrap()
    };
    let rx = Receiver::start().await;
    let sub = create(&a, json!({"url": rx.url, "events": ["organization.*"]})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| r.len() == 1).await;
    put_org(&b, &org(0), "First").await;
    delivery_reaches(&a, &delivery_of(&a, &id, "organization.created").await, "succeeded").await;
    let before = version().await;
    put_org(&b, &org(0), "Second").await;
    delivery_reaches(&a, &delivery_of(&a, &id, "organization.updated").await, "succeeded").await;
    assert_eq!(version().await, before, "recording a success changes nothing a dispatcher goes by");

    let path = format!("/webhooks/{id}");
    let patched = a.patch_as(&a.subscribe_key, &path, &json!({"filter": {"organization_id": org(2)}})).await;
    assert_eq!(patched.status(), 200);
    assert!(version().await > before, "a new filter is a new version");
    put_org(&b, &org(3), "Elsewhere").await;
    put_org(&b, &org(2), "Here").await;
    rx.wait_for("the filtered-in change", |r| r.iter().any(|d| d.json()["data"]["name"] == "Here")).await;
    // Dispatched in sequence order: the change before it was fanned out by then.
    let deliveries_of = async |db: &mut sqlx::AnyConnection, sub: &str, object: &str| -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE subscription_id = $1 AND object_id = $2")
            .bind(sub)
            .bind(object)
            .fetch_one(db)
            .await
            .unwrap()
    };
    assert_eq!(deliveries_of(&mut db, &id, &org(3)).await, 0, "the filter set through A held for B's write");

    let (everything, deleted) = (Receiver::start().await, Receiver::start().await);
    let sentinel = create(&a, json!({"url": everything.url, "events": ["*"]})).await;
    let doomed = create(&a, json!({"url": deleted.url, "events": ["*"]})).await;
    put_org(&b, &org(4), "New").await;
    everything.wait_for("a new subscription's first change", |r| has_created(r, &org(4))).await;
    deleted.wait_for("the other new subscription's first change", |r| has_created(r, &org(4))).await;

    assert_eq!(a.patch_as(&a.subscribe_key, &path, &json!({"status": "disabled"})).await.status(), 200);
    let doomed_id = doomed["id"].as_str().unwrap().to_string();
    let removed = a.client.delete(a.url(&format!("/webhooks/{doomed_id}"))).bearer_auth(&a.subscribe_key).send();
    assert_eq!(removed.await.unwrap().status(), 204);
    put_org(&b, &org(2), "After").await;
    everything.wait_for("the change after", |r| r.iter().any(|d| d.json()["data"]["name"] == "After")).await;
    assert_eq!(deliveries_of(&mut db, &id, &org(2)).await, 1, "disabled through A: only the change before it");
    assert_eq!(deliveries_of(&mut db, &doomed_id, &org(2)).await, 0, "deleted through A: nothing made for it");
    assert!(sentinel["id"].is_string());
}

fn has_created(received: &[crate::receiver::Received], id: &str) -> bool {
    Receiver::of_type(received, "organization.created").iter().any(|d| d.json()["data"]["id"] == id)
}

/// A full payload is not stored a second time with its delivery: the row keeps an empty body, and an attempt
/// claimed from the store (a retry asked for, an ordered subscription's) sends the event's payload built again,
/// byte for byte what the first attempt sent from memory, floats and non-ASCII text included, signed. A thin
/// payload is stored as it is.
async fn a_full_payload_is_built_again_from_its_event_to_the_same_bytes(store: Store) {
    // The retry is not due for two minutes: not held in memory, it is claimed when asked for.
    let Some(app) = TestApp::spawn_with(store, |c| c.retry_schedule = Some("120".into())).await else { return };
    let (full, ordered_rx, thin) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    full.script(&[(200, None), (500, None), (200, None)]);
    let sub = create(&app, json!({"url": full.url, "events": ["location.created"]})).await;
    let ordered = create(&app, json!({"url": ordered_rx.url, "events": ["location.created"], "ordered": true})).await;
    let skinny = create(&app, json!({"url": thin.url, "events": ["location.created"], "payload": "thin"})).await;
    for rx in [&full, &ordered_rx, &thin] {
        rx.wait_for("the ping", |r| r.len() == 1).await;
    }
    let place = "00000000-0000-4000-8000-0000000000c1";
    let body = json!({"id": place, "name": "Café ☕ «Zürich» 東京", "location_type": "physical",
        "latitude": 40.712_776, "longitude": -74.005_974_1});
    app.put_ok(&format!("/locations/{place}"), &body).await;
    full.wait_for("the event, failed once", |r| r.len() == 2).await;
    let delivery = delivery_of(&app, sub["id"].as_str().unwrap(), "location.created").await;
    delivery_reaches(&app, &delivery, "retrying").await;
    let r = app.post_as(&app.subscribe_key, &format!("/deliveries/{delivery}/retry"), None).await;
    assert_eq!(r.status(), 202);
    let got = full.wait_for("the retry asked for", |r| r.len() == 3).await;

    let (first, again) = (&got[1], &got[2]);
    assert_eq!(first.header("webhook-id"), again.header("webhook-id"));
    assert_eq!(first.body, again.body, "the retry sends the same bytes");
    assert!(again.verify(sub["secret"].as_str().unwrap()), "signed");
    let message = first.json();
    assert_eq!(message["data"]["name"], body["name"]);
    assert_eq!(message["data"]["latitude"], body["latitude"]);
    assert_data_as_published(&app, &message).await;
    let shown = app.get_as(&app.subscribe_key, &format!("/deliveries/{delivery}")).await;
    assert_eq!(shown["payload"], message, "the delivery shows the payload it sends");
    // An ordered subscription's deliveries are always claimed: the same payload.
    let claimed = ordered_rx.wait_for("the ordered delivery", |r| r.len() == 2).await;
    assert_eq!(claimed[1].json(), message);
    assert!(claimed[1].verify(ordered["secret"].as_str().unwrap()), "signed");

    thin.wait_for("the thin event", |r| r.len() == 2).await;
    let thin_delivery = delivery_of(&app, skinny["id"].as_str().unwrap(), "location.created").await;
    let mut conn = database_of(&app).await;
    for (delivery, stored_empty) in [(&delivery, true), (&thin_delivery, false)] {
        let (body,): (String,) = sqlx::query_as("SELECT body FROM deliveries WHERE id = $1")
            .bind(delivery)
            .fetch_one(&mut conn)
            .await
            .expect("the delivery row");
        assert_eq!(body.is_empty(), stored_empty, "{delivery}: {body}");
    }
}

crate::each_store!(a_full_payload_is_built_again_from_its_event_to_the_same_bytes);

/// A delivery whose body cannot be built again (its event is gone from the log: only a damaged or partly
/// restored database) is failed with the reason, never sent with an empty body.
async fn a_delivery_whose_event_is_gone_fails_instead_of_sending_nothing(store: Store) {
    let Some(app) = TestApp::spawn_with(store, |c| c.retry_schedule = Some("120".into())).await else { return };
    let rx = Receiver::start().await;
    rx.script(&[(200, None), (500, None)]);
    let sub = create(&app, json!({"url": rx.url, "events": ["organization.created"]})).await;
    rx.wait_for("the ping", |r| r.len() == 1).await;
    put_org(&app, O1, "One").await;
    rx.wait_for("the event, failed once", |r| r.len() == 2).await;
    let delivery = delivery_of(&app, sub["id"].as_str().unwrap(), "organization.created").await;
    delivery_reaches(&app, &delivery, "retrying").await;
    let mut conn = database_of(&app).await;
    sqlx::query("DELETE FROM events WHERE type = 'organization.created'").execute(&mut conn).await.unwrap();
    let r = app.post_as(&app.subscribe_key, &format!("/deliveries/{delivery}/retry"), None).await;
    assert_eq!(r.status(), 202);
    let failed = delivery_reaches(&app, &delivery, "failed").await;
    assert!(failed["last_error"].as_str().unwrap().contains("missing from the event log"), "{failed}");
    assert_eq!(rx.received().len(), 2, "nothing more was sent");
}

crate::each_store!(a_delivery_whose_event_is_gone_fails_instead_of_sending_nothing);

webhook_test!(a_filter_by_a_service_or_location_hears_of_the_organization_that_gets_it, |app| async move {
    // An organization's `updated` event matches a filter by a service, location or term when the write changed
    // that service, location or tag inside it (its creation, a phone of it), as the organization's own
    // identity does; not because the organization lists it: a change of a sibling service reaches none of them,
    // even once the filtered service has rows of its own that name it deep in the organization's document.
    let id = |n: u32| format!("00000000-0000-4000-8000-0000000000{n:02x}");
    let (service, location, other, term) = (id(0xd1), id(0xd2), id(0xd3), id(0xd4));
    put_org(&app, O1, "One").await;
    app.put_ok(&format!("/taxonomy_terms/{term}"), &json!({"name": "Food", "description": "d"})).await;
    let organizations = "organization.*";
    let subscribers = ordered_subscribers(
        &app,
        &[
            (organizations, "service_id", &service),
            (organizations, "location_id", &location),
            (organizations, "taxonomy_term_id", &term),
            ("service.*", "service_id", &service),
        ],
    )
    .await;
    let body = json!({"name": "A service", "organization_id": O1, "status": "active",
        "attributes": [{"id": id(0xe1), "taxonomy_term_id": term}]});
    app.put_ok(&format!("/services/{service}"), &body).await;
    let body = json!({"name": "A place", "organization_id": O1, "location_type": "physical"});
    app.put_ok(&format!("/locations/{location}"), &body).await;
    app.put_ok(&format!("/phones/{}", id(0xe2)), &json!({"number": "1", "service_id": service})).await;

    // A sibling service: created, given a phone, renamed. Nothing of it is news of the filtered service,
    // location or term. Nor is the organization's rename, though every service's document shows its name: the
    // filtered service's `updated` event goes to the `service.*` subscriber, the sibling's does not.
    let body = json!({"name": "Another service", "organization_id": O1, "status": "active"});
    app.put_ok(&format!("/services/{other}"), &body).await;
    app.put_ok(&format!("/phones/{}", id(0xe3)), &json!({"number": "2", "service_id": other})).await;
    assert!(app.patch(&format!("/services/{other}"), &json!({"name": "Renamed too"})).await.status().is_success());
    assert!(app.patch(&format!("/organizations/{O1}"), &json!({"name": "Renamed org"})).await.status().is_success());

    assert!(app.patch(&format!("/services/{service}"), &json!({"name": "Renamed"})).await.status().is_success());
    let tag = json!({"taxonomy_term_id": term, "link_id": location, "link_type": "location",
        "link_entity": "location"});
    app.put_ok(&format!("/attributes/{}", id(0xe5)), &tag).await;

    // What each got, in order after its ping: (which service or location the change was about, what it shows).
    let (by_service, by_location, by_term, services) =
        (&subscribers[0], &subscribers[1], &subscribers[2], &subscribers[3]);
    let got = by_term.0.wait_for("the tag of the location", |r| r.len() >= 5).await;
    // The last write's event is dispatched: every subscription's deliveries are all there is to get.
    for ((rx, sub), count) in subscribers.iter().zip([4, 3, 5, 5]) {
        let page = app.get_as(&app.subscribe_key, &format!("/webhooks/{sub}/deliveries")).await;
        assert_eq!(page["total_items"], count, "{page}");
        rx.wait_for("all of them", |r| r.len() == count).await;
    }
    let service_in = |doc: &Value| doc["services"].as_array().unwrap().iter().find(|s| s["id"] == service).cloned();
    // The term's subscriber hears of everything about the tagged service (its creation, its phone, its
    // rename) and of the location's tag.
    assert_eq!(got[1].json()["data"]["services"][0]["attributes"][0]["taxonomy_term"]["id"], term.as_str());
    let tagged = |m: &Value| m["data"]["services"].as_array().unwrap().iter().find(|s| s["id"] == service).cloned();
    assert_eq!(tagged(&got[2].json()).unwrap()["phones"][0]["number"], "1");
    assert_eq!(tagged(&got[3].json()).unwrap()["name"], "Renamed");
    assert_eq!(got[4].json()["data"]["locations"][0]["attributes"][0]["id"], id(0xe5));
    let got: Vec<Value> = by_service.0.received().iter().skip(1).map(|r| r.json()["data"].clone()).collect();
    assert!(service_in(&got[0]).is_some(), "its creation: {}", got[0]);
    assert_eq!(service_in(&got[1]).unwrap()["phones"][0]["number"], "1", "its phone: {}", got[1]);
    assert_eq!(service_in(&got[2]).unwrap()["name"], "Renamed", "its rename: {}", got[2]);
    let got: Vec<Value> = by_location.0.received().iter().skip(1).map(|r| r.json()["data"].clone()).collect();
    assert_eq!(got[0]["locations"][0]["id"], location, "its creation: {}", got[0]);
    assert_eq!(got[1]["locations"][0]["attributes"][0]["id"], id(0xe5), "its tag: {}", got[1]);
    let got: Vec<Value> = services.0.received().iter().skip(1).map(|r| r.json()).collect();
    let seen: Vec<(&str, &str)> =
        got.iter().map(|m| (m["type"].as_str().unwrap(), m["data"]["id"].as_str().unwrap())).collect();
    let s = service.as_str();
    let wanted = [("service.created", s), ("service.updated", s), ("service.updated", s), ("service.updated", s)];
    assert_eq!(seen, wanted, "{got:?}");
    assert_eq!(got[2]["data"]["organization"]["name"], "Renamed org");
});

webhook_test!(a_deleted_service_is_news_of_its_organization_to_its_term_and_location, |app| async move {
    // Service S of O is tagged with T and at L, its link to L tagged with T2. A phone of L (not of S) is news
    // of L, not of S; deleting S (its tag and its link go with it) is news of S, T, L and T2 to the
    // organization's subscribers.
    let id = |n: u32| format!("00000000-0000-4000-8000-0000000006{n:02}");
    let (service, term, location, link_term) = (id(1), id(2), id(3), id(8));
    put_org(&app, O1, "One").await;
    for t in [&term, &link_term] {
        app.put_ok(&format!("/taxonomy_terms/{t}"), &json!({"name": "Food", "description": "d"})).await;
    }
    let place = json!({"name": "Hall", "organization_id": O1, "location_type": "physical"});
    app.put_ok(&format!("/locations/{location}"), &place).await;
    let body = json!({"name": "Pantry", "organization_id": O1, "status": "active",
        "attributes": [{"id": id(4), "taxonomy_term_id": term}],
        "service_at_locations": [{"id": id(5), "location_id": location,
            "attributes": [{"id": id(7), "taxonomy_term_id": link_term}]}]});
    app.put_ok(&format!("/services/{service}"), &body).await;
    let updated = "organization.updated";
    let subscribers = ordered_subscribers(
        &app,
        &[
            (updated, "service_id", &service),
            (updated, "taxonomy_term_id", &term),
            (updated, "location_id", &location),
            (updated, "taxonomy_term_id", &link_term),
        ],
    )
    .await;
    app.put_ok(&format!("/phones/{}", id(6)), &json!({"number": "1", "location_id": location})).await;
    assert_eq!(app.delete(&format!("/services/{service}")).await.status(), 204);
    let wanted = [("service_id", 2), ("taxonomy_term_id", 2), ("location_id", 3), ("the link's taxonomy_term_id", 2)];
    for ((rx, _), (field, count)) in subscribers.iter().zip(wanted) {
        let got = rx.wait_for(&format!("{field}: the deletion"), |r| r.len() >= count).await;
        let last = got[count - 1].json();
        assert_eq!(last["data"]["services"], json!([]), "{field}: the organization without the service: {last}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(rx.received().len(), count, "{field}");
    }
});

webhook_test!(a_document_that_shows_a_change_matches_what_the_change_was_inside, |app| async move {
    // S (tagged T1) is at L1 (tagged T4) through link SL1, all of O. A phone of S is news of S to SL1's
    // document (which shows S): it matches T1 there. A phone of L1 is news of L1 to S's document (which shows
    // L1 through SL1): it matches T4 there; but to O it is news of L1 only, not of S.
    let id = |n: u32| format!("00000000-0000-4000-8000-0000000007{n:02}");
    let (service, t1, location, t4, link) = (id(1), id(2), id(3), id(4), id(5));
    put_org(&app, O1, "One").await;
    for t in [&t1, &t4] {
        app.put_ok(&format!("/taxonomy_terms/{t}"), &json!({"name": "Term", "description": "d"})).await;
    }
    let place = json!({"name": "Hall", "organization_id": O1, "location_type": "physical",
        "attributes": [{"id": id(6), "taxonomy_term_id": t4}]});
    app.put_ok(&format!("/locations/{location}"), &place).await;
    let body = json!({"name": "Pantry", "organization_id": O1, "status": "active",
        "attributes": [{"id": id(7), "taxonomy_term_id": t1}],
        "service_at_locations": [{"id": link, "location_id": location}]});
    app.put_ok(&format!("/services/{service}"), &body).await;
    let subscribers = ordered_subscribers(
        &app,
        &[
            ("service_at_location.updated", "taxonomy_term_id", &t1),
            ("service.updated", "taxonomy_term_id", &t4),
            ("organization.updated", "service_id", &service),
        ],
    )
    .await;
    app.put_ok(&format!("/phones/{}", id(8)), &json!({"number": "1", "service_id": service})).await;
    app.put_ok(&format!("/phones/{}", id(9)), &json!({"number": "2", "location_id": location})).await;
    let by_t4 = subscribers[1].0.wait_for("S showing L1's phone", |r| r.len() >= 2).await;
    assert_eq!(by_t4[1].json()["data"]["id"], service);
    // The last write's events are dispatched: the deliveries each subscription has are all it gets.
    for (rx, sub) in &subscribers {
        let page = app.get_as(&app.subscribe_key, &format!("/webhooks/{sub}/deliveries")).await;
        assert_eq!(page["total_items"], 2, "{page}");
        rx.wait_for("its one event", |r| r.len() == 2).await;
    }
    assert_eq!(subscribers[0].0.received()[1].json()["data"]["id"], link);
    let org = subscribers[2].0.received()[1].json();
    let phones_of_s = org["data"]["services"][0]["phones"].as_array().map(Vec::len);
    assert_eq!(phones_of_s, Some(1), "the organization update of S's phone: {org}");
});

webhook_test!(a_change_at_one_link_of_a_service_is_no_news_of_its_other_links, |app| async move {
    // S is at L1 through K1 and at L2 through K2. A link shows its service without the service's links, so a
    // phone of K1 changes nothing K2 shows: K2 gets no `updated` event, and a filter by L2 hears nothing of it.
    let id = |n: u32| format!("00000000-0000-4000-8000-0000000008{n:02}");
    let (service, l1, l2, k1, k2) = (id(1), id(2), id(3), id(4), id(5));
    put_org(&app, O1, "One").await;
    for l in [&l1, &l2] {
        let place = json!({"name": "Hall", "organization_id": O1, "location_type": "physical"});
        app.put_ok(&format!("/locations/{l}"), &place).await;
    }
    let body = json!({"name": "Pantry", "organization_id": O1, "status": "active",
        "service_at_locations": [{"id": k1, "location_id": l1}, {"id": k2, "location_id": l2}]});
    app.put_ok(&format!("/services/{service}"), &body).await;
    let rx = Receiver::start().await;
    let body = json!({"url": rx.url, "events": ["service_at_location.updated"], "filter": {"location_id": l2},
        "ordered": true});
    let sub = create(&app, body).await["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| r.len() == 1).await;
    app.put_ok(&format!("/phones/{}", id(6)), &json!({"number": "1", "service_at_location_id": k1})).await;
    app.put_ok(&format!("/phones/{}", id(7)), &json!({"number": "2", "service_at_location_id": k2})).await;
    let got = rx.wait_for("K2 with its phone", |r| r.len() >= 2).await;
    assert_eq!(got[1].json()["data"]["id"], k2, "K1's phone was not sent as news of K2 first");
    let page = app.get_as(&app.subscribe_key, &format!("/webhooks/{sub}/deliveries")).await;
    assert_eq!(page["total_items"], 2, "{page}");
});

webhook_test!(an_import_tells_a_service_filter_only_of_the_organization_updates_about_that_service, |app| async move {
    // An import knows documents, not the rows it touched: an organization's update it makes matches a filter by
    // a service when that service changed inside the organization, not when a sibling did.
    let id = |n: u32| format!("00000000-0000-4000-8000-0000000005{n:02}");
    let (service, other) = (id(1), id(2));
    put_org(&app, O1, "One").await;
    let doc = |service: &str, phone: &str, number: &str| {
        json!({"id": service, "name": "A service", "organization_id": O1, "status": "active",
            "phones": [{"id": phone, "number": number}]})
    };
    app.put_ok(&format!("/services/{service}"), &doc(&service, &id(3), "1")).await;
    app.put_ok(&format!("/services/{other}"), &doc(&other, &id(4), "2")).await;
    let rx = Receiver::start().await;
    let body = json!({"url": rx.url, "events": ["organization.updated"], "filter": {"service_id": service},
        "ordered": true});
    let sub = create(&app, body).await["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| r.len() == 1).await;

    let dir = tempfile::tempdir().unwrap();
    let renamed = json!({"id": O1, "name": "Renamed", "description": "helps"});
    let lines =
        [("renamed", renamed), ("sibling", doc(&other, &id(4), "20")), ("filtered", doc(&service, &id(3), "10"))];
    for (name, line) in lines {
        let file = dir.path().join(format!("{name}.ndjson"));
        std::fs::write(&file, format!("{line}\n")).unwrap();
        hsda::bulk::import::import_path(&app.db, &file, Default::default()).await.expect("imports");
    }
    let got = rx.wait_for("the organization with the filtered service's new number", |r| r.len() >= 2).await;
    let services = got[1].json()["data"]["services"].clone();
    let changed = services.as_array().unwrap().iter().find(|s| s["id"] == service.as_str()).unwrap().clone();
    assert_eq!(changed["phones"][0]["number"], "10", "neither the rename nor the sibling was sent first: {services}");
    let page = app.get_as(&app.subscribe_key, &format!("/webhooks/{sub}/deliveries")).await;
    assert_eq!(page["total_items"], 2, "{page}");
});

/// A retry asked for while the schedule's last attempt is out, which then fails, still goes (it was accepted):
/// the delivery is retried at once, not ended failed with the retry dropped.
async fn a_retry_asked_for_during_the_last_attempt_is_not_dropped(store: Store) {
    let Some(app) = TestApp::spawn_with(store, |c| c.retry_schedule = Some("1".into())).await else { return };
    let rx = Receiver::start().await;
    rx.script(&[(200, None), (500, None), (500, None), (500, None)]);
    let (_, delivery) = a_delivery_held_at_the_target(&app, &rx).await;
    rx.let_through(1); // the first attempt fails; the schedule's one retry follows
    rx.wait_for("the last attempt, held at the target", |r| r.len() == 3).await;
    let r = app.post_as(&app.subscribe_key, &format!("/deliveries/{delivery}/retry"), None).await;
    assert_eq!(r.status(), 202);
    rx.open(); // the last attempt fails
    rx.wait_for_within("the retry asked for", std::time::Duration::from_secs(5), |r| r.len() == 4).await;
    let failed = delivery_reaches(&app, &delivery, "failed").await;
    assert_eq!(failed["attempts"].as_array().map(Vec::len), Some(3), "{failed}");
}

crate::each_store!(a_retry_asked_for_during_the_last_attempt_is_not_dropped);

webhook_test!(a_disabled_subscription_refuses_retries_and_replays, |app| async move {
    // Nothing would send them: they would wait as `retrying`, and an enable without replay_missed would then
    // send them after all. The owner is told to enable it instead; nothing is queued.
    let rx = Receiver::start().await;
    rx.script(&[(200, None), (500, None)]);
    let (id, delivery) = a_retrying_delivery(&app, &rx).await;
    let r = app.patch_as(&app.subscribe_key, &format!("/webhooks/{id}"), &json!({"status": "disabled"})).await;
    assert_eq!(r.status(), 200);
    delivery_reaches(&app, &delivery, "failed").await;
    let body = json!({"since": "2020-01-01T00:00:00Z"});
    for (path, body) in
        [(format!("/deliveries/{delivery}/retry"), None), (format!("/webhooks/{id}/replay"), Some(&body))]
    {
        let r = app.post_as(&app.subscribe_key, &path, body).await;
        assert_eq!(r.status(), 409, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let problem: Value = r.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains("enable"), "{problem}");
        assert!(problem.get("referenced_by").is_none(), "{problem}");
    }
    assert_eq!(delivery_reaches(&app, &delivery, "failed").await["attempts"].as_array().map(Vec::len), Some(1));
    // Enabled again without replay_missed, it sends nothing of before.
    let r = app.post_as(&app.subscribe_key, &format!("/webhooks/{id}/enable"), None).await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 2);
    assert_eq!(delivery_reaches(&app, &delivery, "failed").await["status"], "failed");
});

webhook_test!(deliveries_waiting_behind_a_slow_target_go_as_the_subscription_is_when_they_start, |app| async move {
    // One at a time to a target that holds each request: the others wait in the worker. A secret rotated
    // without grace and a new URL hold for every one that starts after the owner's answer, and after a
    // disable none starts at all (the acceptance run saw a backlog go out the old way for seconds).
    let (slow, moved_to) = (Receiver::start().await, Receiver::start().await);
    let sub = create(&app, json!({"url": slow.url, "events": ["organization.created"], "max_concurrency": 1})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    slow.wait_for("the ping", |r| r.len() == 1).await;
    slow.hold();
    for i in 0..5 {
        put_org(&app, &org(i), "Queued").await;
    }
    slow.wait_for("the first, held at the target", |r| r.len() == 2).await;
    let path = format!("/webhooks/{id}/rotate-secret");
    let rotated: Value =
        app.post_as(&app.subscribe_key, &path, Some(&json!({"grace_seconds": 0}))).await.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap().to_string();
    let path = format!("/webhooks/{id}");
    assert_eq!(app.patch_as(&app.subscribe_key, &path, &json!({"url": moved_to.url})).await.status(), 200);
    slow.open();
    let got = moved_to.wait_for("the four waiting ones, at the new URL", |r| r.len() == 4).await;
    for d in &got {
        assert!(d.verify(&new), "signed with the new secret");
        assert_eq!(d.header("webhook-signature").split(' ').count(), 1, "and with it alone");
    }
    assert_eq!(slow.received().len(), 2, "only the one already out went to the old URL");

    moved_to.hold();
    for i in 5..8 {
        put_org(&app, &org(i), "Queued").await;
    }
    moved_to.wait_for("the first, held at the target", |r| r.len() == 5).await;
    assert_eq!(app.patch_as(&app.subscribe_key, &path, &json!({"status": "disabled"})).await.status(), 200);
    moved_to.open();
    let failed = crate::helpers::eventually("two ended by the disable", std::time::Duration::from_secs(10), || async {
        let page = app.get_as(&app.subscribe_key, format!("/webhooks/{id}/deliveries?status=failed")).await;
        (page["total_items"] == 2).then_some(()).ok_or_else(|| page.to_string())
    });
    failed.await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(moved_to.received().len(), 5, "nothing started after the disable");
});

/// PostgreSQL: an app with a subscription to `organization.created` (its ping arrived) and a connection of
/// the test's own holding the `counter` row's lock in an open transaction (`COMMIT` on it lets go).
async fn subscribed_with_a_counter_held(counter: &str) -> Option<(TestApp, Receiver, String, sqlx::AnyConnection)> {
    let app = TestApp::spawn(Store::Postgres).await?;
    let rx = Receiver::start().await;
    let sub = create(&app, json!({"url": rx.url, "events": ["organization.created"]})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| r.len() == 1).await;
    let mut db = database_of(&app).await;
    sqlx::query("BEGIN").execute(&mut db).await.unwrap();
    let lock = sqlx::query("SELECT value FROM counters WHERE name = $1 FOR UPDATE").bind(counter);
    lock.execute(&mut db).await.unwrap();
    Some((app, rx, id, db))
}

/// PostgreSQL: a write that commits just before a disable but is dispatched after it (here the dispatch
/// cursor is held while the disable and the write queue up behind it) gets no delivery then, though it
/// happened before the disable; `enable` with `replay_missed` sends it (the acceptance run lost 2-13 of 120
/// such changes: the replay went by the time of the disable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_dispatched_after_a_disable_it_preceded_is_replayed_postgres() {
    let Some((app, rx, id, mut db)) = subscribed_with_a_counter_held("dispatch_cursor").await else { return };
    let path = format!("/webhooks/{id}");
    let off = json!({"status": "disabled"});
    let disable = app.patch_as(&app.subscribe_key, &path, &off);
    let meanwhile = async {
        // The disable waits for the cursor first; then the write commits, its dispatch left to the worker.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        put_org(&app, &org(0), "Just before").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        sqlx::query("COMMIT").execute(&mut db).await.unwrap();
    };
    let (disabled, ()) = tokio::join!(disable, meanwhile);
    assert_eq!(disabled.status(), 200);
    let shown = show(&app, &id).await;
    assert_eq!(shown["status"], "disabled");
    let body = json!({"replay_missed": true});
    let enabled: Value =
        app.post_as(&app.subscribe_key, format!("{path}/enable"), Some(&body)).await.json().await.unwrap();
    assert_eq!(enabled["replayed"], 1, "{enabled}");
    rx.wait_for("the change, replayed", |r| Receiver::of_type(r, "organization.created").len() == 1).await;
}

/// PostgreSQL: a change whose write began before a digest's window and committed in it (here the event
/// counter is held while the subscription switches to a schedule) is in that digest, and the digest's
/// `since` covers it: no event in a digest is older than its `since`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_covers_a_change_whose_write_began_before_its_window_postgres() {
    let Some((app, rx, id, mut db)) = subscribed_with_a_counter_held("event_sequence").await else { return };
    let path = format!("/webhooks/{id}");
    let organization = org(0);
    let write = put_org(&app, &organization, "Began before");
    let meanwhile = async {
        // The write has taken its time and waits for the event counter; the schedule starts now.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let r = app.patch_as(&app.subscribe_key, &path, &json!({"schedule": "PT1S"})).await;
        assert_eq!(r.status(), 200);
        sqlx::query("COMMIT").execute(&mut db).await.unwrap();
    };
    tokio::join!(write, meanwhile);
    let got = rx.wait_for("the digest", |r| !Receiver::of_type(r, "webhook.digest").is_empty()).await;
    let digest = Receiver::of_type(&got, "webhook.digest")[0].json();
    let events = digest["data"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{digest}");
    let since = digest["data"]["since"].as_str().unwrap();
    assert!(events[0]["timestamp"].as_str().unwrap() >= since, "since covers the event: {digest}");
    assert!(Receiver::of_type(&got, "organization.created").is_empty(), "sent in the digest only");
}

webhook_test!(a_backlog_disabled_and_enabled_with_replay_is_sent_once, |app| async move {
    // Deliveries waiting in the worker behind a held one when the subscription is disabled, then enabled with
    // `replay_missed` before they start: the replay queues them again in the store, and the copies that
    // waited must not go too (the acceptance run got 64 of 120 changes twice).
    let rx = Receiver::start().await;
    let sub = create(&app, json!({"url": rx.url, "events": ["organization.created"], "max_concurrency": 1})).await;
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| r.len() == 1).await;
    rx.hold();
    for i in 0..5 {
        put_org(&app, &org(i), "Queued").await;
    }
    rx.wait_for("the first, held at the target", |r| r.len() == 2).await;
    let path = format!("/webhooks/{id}");
    assert_eq!(app.patch_as(&app.subscribe_key, &path, &json!({"status": "disabled"})).await.status(), 200);
    let body = json!({"replay_missed": true});
    let enabled = app.post_as(&app.subscribe_key, format!("{path}/enable"), Some(&body)).await;
    assert_eq!(enabled.status(), 200);
    rx.open();
    let all_five = |r: &[crate::receiver::Received]| Receiver::object_ids(r, "organization.created").len() == 5;
    rx.wait_for("every change", all_five).await;
    // Whatever is still due goes within the retry schedule's first step; give it that long.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let got = Receiver::of_type(&rx.received(), "organization.created");
    // The held one was out when the disable came: its answer, recorded after the replay queued it again, may
    // send it once more (same webhook-id). Those that waited go once.
    let held = got[0].json()["data"]["id"].clone();
    for waited in (0..5).map(org).filter(|o| held != o.as_str()) {
        let times = got.iter().filter(|d| d.json()["data"]["id"] == waited.as_str()).count();
        assert_eq!(times, 1, "{waited} waited behind {held} and went {times} times");
    }
});

webhook_test!(a_backlog_longer_than_a_digest_goes_as_digests_whose_windows_meet, |app| async move {
    use futures::StreamExt;
    let rx = Receiver::start().await;
    // Hourly at first, so that the whole backlog waits; then every second, so that it goes at once.
    let body = json!({"url": rx.url, "events": ["organization.created"], "schedule": "PT1H", "payload": "thin"});
    let sub = create(&app, body).await;
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", has_ping).await;
    const BACKLOG: usize = 1100; // more than one digest holds (1 000 events)
    futures::stream::iter(0..BACKLOG)
        .map(|i| {
            let app = &app;
            async move {
                let org = uuid::Uuid::new_v4().to_string();
                put_org(app, &org, &format!("Organization {i}")).await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let r = app
        .client
        .patch(app.url(&format!("/webhooks/{id}")))
        .bearer_auth(&app.subscribe_key)
        .json(&json!({"schedule": "PT1S"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let covered = |r: &[crate::receiver::Received]| -> usize {
        Receiver::of_type(r, "webhook.digest")
            .iter()
            .map(|d| d.json()["data"]["events"].as_array().unwrap().len())
            .sum()
    };
    let received = rx.wait_for("digests covering the backlog", |r| covered(r) >= BACKLOG).await;
    let mut digests: Vec<Value> = Receiver::of_type(&received, "webhook.digest").iter().map(|d| d.json()).collect();
    assert!(digests.len() >= 2, "split: {} digests", digests.len());
    digests.sort_by_key(|d| d["data"]["events"][0]["sequence"].as_i64());
    let mut sequences = Vec::new();
    for (i, digest) in digests.iter().enumerate() {
        let data = &digest["data"];
        let events = data["events"].as_array().unwrap();
        sequences.extend(events.iter().map(|e| e["sequence"].as_i64().unwrap()));
        let latest = events.iter().map(|e| e["data"]["last_modified"].as_str().unwrap()).max().unwrap();
        let until = data["until"].as_str().unwrap();
        assert!(latest <= until, "digest {i} covers its events: {latest} > {until}");
        if let Some(next) = digests.get(i + 1) {
            // Each piece ends at its own last events, where the next one begins: windows meet, not overlap.
            assert_eq!(until, latest, "digest {i} ends at its last event");
            // (Or earlier, at its own first event, when that write began before it: times follow the order
            // writes began, sequences the order they committed.)
            let next_events = next["data"]["events"].as_array().unwrap();
            let earliest = next_events.iter().map(|e| e["data"]["last_modified"].as_str().unwrap()).min().unwrap();
            let since = next["data"]["since"].as_str().unwrap();
            assert!(
                since == until || (since == earliest && earliest < until),
                "digest {} begins where {i} ends",
                i + 1
            );
        }
    }
    assert_eq!(sequences.len(), BACKLOG, "each event in one digest");
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
});
