//! The webhook engine end to end against a real receiver: subscriptions, signed deliveries verified
//! independently, retries, 410, tenant isolation, validation, SSRF refusal, filters and thin payloads.

use serde_json::{Value, json};

use crate::helpers::{Store, TestApp};
use crate::receiver::Receiver;

const O1: &str = "00000000-0000-4000-8000-000000000001";
const O2: &str = "00000000-0000-4000-8000-000000000002";

async fn subscribe(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.client.post(app.url("/webhooks")).bearer_auth(key).json(&body).send().await.unwrap()
}

async fn spawn(store: Store) -> Option<TestApp> {
    TestApp::spawn_with(store, |c| c.retry_schedule = Some("0.2,0.2,0.2".into())).await
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
    let sub: Value = r.json().await.unwrap();
    let id = sub["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sub_"));
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
    let shown: Value = app
        .client
        .get(app.url(&format!("/webhooks/{id}")))
        .bearer_auth(&app.subscribe_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(shown.get("secret").is_none());
    // Attempts are recorded in batches just after they are made: wait (bounded) for both to show.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let page = loop {
        let page: Value = app
            .client
            .get(app.url(&format!("/webhooks/{id}/deliveries?status=succeeded")))
            .bearer_auth(&app.subscribe_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["total_items"].as_u64().unwrap() >= 2 && page["size"].as_u64().unwrap() >= 2 {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let delivery_id = page["contents"][0]["id"].as_str().unwrap();
    let d: Value = app
        .client
        .get(app.url(&format!("/deliveries/{delivery_id}")))
        .bearer_auth(&app.subscribe_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["attempts"][0]["status_code"], 200);
    assert!(d["attempts"][0]["duration_ms"].is_number());
});

webhook_test!(failures_are_retried_with_the_same_webhook_id_until_success, |app| async move {
    let rx = Receiver::start().await;
    rx.script(&[(500, None), (503, Some("0")), (200, None)]);
    let sub: Value = subscribe(&app, &app.subscribe_key, json!({"url": rx.url, "events": ["webhook.ping"]}))
        .await
        .json()
        .await
        .unwrap();
    let got = rx.wait_for("three attempts", |r| r.len() >= 3).await;
    let ids: Vec<String> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "stable webhook-id: {ids:?}");
    let id = sub["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page: Value = app
            .client
            .get(app.url(&format!("/webhooks/{id}/deliveries")))
            .bearer_auth(&app.subscribe_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["contents"][0]["status"] == "succeeded" {
            assert_eq!(page["contents"][0]["attempts"], 3);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "delivery never succeeded: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let shown: Value = app
        .client
        .get(app.url(&format!("/webhooks/{id}")))
        .bearer_auth(&app.subscribe_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "active", "recovered after success: {shown}");
    assert_eq!(shown["consecutive_failures"], 0);
    assert!(shown["last_failure_at"].is_string());
});

webhook_test!(gone_disables_the_subscription_and_says_so_as_an_event, |app| async move {
    let rx = Receiver::start().await;
    rx.script(&[(410, None)]);
    let sub: Value = subscribe(&app, &app.subscribe_key, json!({"url": rx.url})).await.json().await.unwrap();
    let id = sub["id"].as_str().unwrap().to_string();
    rx.wait_for("the ping", |r| !r.is_empty()).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let shown: Value = app
            .client
            .get(app.url(&format!("/webhooks/{id}")))
            .bearer_auth(&app.subscribe_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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
    let r = app
        .client
        .post(app.url(&format!("/webhooks/{id}/enable")))
        .bearer_auth(&app.subscribe_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let shown: Value = r.json().await.unwrap();
    assert_eq!(shown["status"], "active");
});

webhook_test!(tenants_never_see_each_other, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribe(&app, &app.subscribe_key, json!({"url": rx.url})).await.json().await.unwrap();
    let id = sub["id"].as_str().unwrap();
    let other = app.db.create_key("globex", hsda::store::keys::Scope::Subscribe).await.unwrap().secret;
    for path in [format!("/webhooks/{id}"), format!("/webhooks/{id}/deliveries")] {
        let r = app.client.get(app.url(&path)).bearer_auth(&other).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = app.client.delete(app.url(&format!("/webhooks/{id}"))).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r =
        app.client.post(app.url(&format!("/webhooks/{id}/rotate-secret"))).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let list: Value =
        app.client.get(app.url("/webhooks")).bearer_auth(&other).send().await.unwrap().json().await.unwrap();
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
    let admin: Value =
        app.client.get(app.url("/webhooks")).bearer_auth(&app.admin_key).send().await.unwrap().json().await.unwrap();
    assert_eq!(admin["total_items"], 1);
    let r = app.client.get(app.url("/webhooks")).bearer_auth(&app.publish_key).send().await.unwrap();
    assert_eq!(r.status(), 403, "a publish key cannot manage subscriptions");
});

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
    ];
    for (body, pointer) in cases {
        let r = subscribe(&app, &app.subscribe_key, body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let problem: Value = r.json().await.unwrap();
        let pointers: Vec<&str> =
            problem["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
        assert!(pointers.contains(&pointer), "{body}: {problem}");
    }
    let list: Value = app
        .client
        .get(app.url("/webhooks"))
        .bearer_auth(&app.subscribe_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total_items"], 0);
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
});

webhook_test!(rotation_signs_with_both_secrets_during_the_grace_period, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribe(&app, &app.subscribe_key, json!({"url": rx.url, "events": ["organization.*"]}))
        .await
        .json()
        .await
        .unwrap();
    let id = sub["id"].as_str().unwrap();
    let old = sub["secret"].as_str().unwrap().to_string();
    let rotated: Value = app
        .client
        .post(app.url(&format!("/webhooks/{id}/rotate-secret")))
        .bearer_auth(&app.subscribe_key)
        .json(&json!({"grace_seconds": 3600}))
        .send()
        .await
        .unwrap()
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
});

webhook_test!(test_endpoint_sends_now_and_reports_the_attempt, |app| async move {
    let rx = Receiver::start().await;
    let sub: Value = subscribe(&app, &app.subscribe_key, json!({"url": rx.url, "events": ["organization.*"]}))
        .await
        .json()
        .await
        .unwrap();
    let id = sub["id"].as_str().unwrap();
    put_org(&app, O1, "Food Bank").await;
    rx.script(&[(202, None)]);
    let result: Value = app
        .client
        .post(app.url(&format!("/webhooks/{id}/test")))
        .bearer_auth(&app.subscribe_key)
        .json(&json!({"event_type": "organization.updated", "object_id": O1}))
        .send()
        .await
        .unwrap()
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
});
