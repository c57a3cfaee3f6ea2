//! The test harness: starts the real server on 127.0.0.1:0 over a fresh SQLite file or a fresh
//! PostgreSQL database, with API keys of every scope, and an HTTP client.

use std::path::PathBuf;

use hsda::config::Config;
use hsda::startup::Application;
use hsda::store::Db;
use hsda::store::keys::Scope;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub base: String,
    /// The database the server runs on (a fresh SQLite file or PostgreSQL database).
    pub database_url: String,
    pub client: reqwest::Client,
    pub db: Db,
    pub admin_key: String,
    pub publish_key: String,
    pub subscribe_key: String,
    _dir: Option<tempfile::TempDir>,
    shutdown: tokio_util::sync::CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The PostgreSQL server tests use, from `HSDA_TEST_POSTGRES_URL` (e.g. postgres://postgres@127.0.0.1:5432/test).
pub fn postgres_url() -> Option<String> {
    std::env::var("HSDA_TEST_POSTGRES_URL").ok().filter(|s| !s.is_empty())
}

/// A fresh, empty database URL for `store`; `None` (with a message) when that store is not configured.
pub async fn fresh_database(store: Store) -> Option<(String, Option<tempfile::TempDir>)> {
    match store {
        Store::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let path: PathBuf = dir.path().join("hsda.db");
            Some((format!("sqlite://{}", path.display()), Some(dir)))
        }
        Store::Postgres => {
            let Some(admin_url) = postgres_url() else {
                eprintln!("skipped: set HSDA_TEST_POSTGRES_URL to run the PostgreSQL variant of this test");
                return None;
            };
            let name = format!("hsda_test_{}", uuid::Uuid::new_v4().simple());
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&admin_url).await.expect("connect to PostgreSQL");
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create database");
            let base = admin_url.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin_url);
            Some((format!("{base}/{name}"), None))
        }
    }
}

impl TestApp {
    /// Starts a server over a fresh database of `store`; `None` when that store is not available here.
    pub async fn spawn(store: Store) -> Option<TestApp> {
        Self::spawn_with(store, |_| {}).await
    }

    pub async fn spawn_with(store: Store, configure: impl FnOnce(&mut Config)) -> Option<TestApp> {
        let (database_url, dir) = fresh_database(store).await?;
        let mut config = Config {
            database_url: database_url.clone(),
            bind: "127.0.0.1:0".parse().expect("address"),
            allow_targets: "127.0.0.0/8,::1/128".into(),
            ..Config::default()
        };
        configure(&mut config);
        // `configure` may point it at another database (one an earlier app left, say).
        let database_url = config.database_url.clone();
        let app = Application::build(config).await.expect("build app");
        let db = app.db().clone();
        let base = format!("http://{}", app.local_addr());
        let shutdown = app.shutdown_token();
        let running = Some(tokio::spawn(app.run()));
        let admin_key = db.create_key("acme", Scope::Admin).await.expect("key").secret;
        let publish_key = db.create_key("acme", Scope::Publish).await.expect("key").secret;
        let subscribe_key = db.create_key("acme", Scope::Subscribe).await.expect("key").secret;
        Some(TestApp {
            base,
            database_url,
            client: reqwest::Client::new(),
            db,
            admin_key,
            publish_key,
            subscribe_key,
            _dir: dir,
            shutdown,
            running,
        })
    }

    /// Stops the server as a shutdown would, and waits (bounded) until it has; its database stays (its own
    /// pool is closed: reconnect to look at it).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(std::time::Duration::from_secs(20), running)
                .await
                .expect("the server stops")
                .expect("the server task")
                .expect("the server ends cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.expect("json")
    }

    /// `POST path` with a JSON body and no key, as JSON (a 200 expected): the directory's search by POST.
    pub async fn post_json(&self, path: &str, body: &Value) -> Value {
        let r = self.client.post(self.url(path)).json(body).send().await.expect("POST");
        assert_eq!(r.status(), 200, "POST {path}");
        r.json().await.expect("json")
    }

    /// `GET path` with `key`, as JSON (whatever the status).
    pub async fn get_as(&self, key: &str, path: impl AsRef<str>) -> Value {
        self.get_response_as(key, path).await.json().await.expect("json")
    }

    /// `GET path` with `key`: the response itself, for its status and headers.
    pub async fn get_response_as(&self, key: &str, path: impl AsRef<str>) -> reqwest::Response {
        self.client.get(self.url(path.as_ref())).bearer_auth(key).send().await.expect("GET")
    }

    /// `POST path` with `key` and an optional JSON body.
    pub async fn post_as(&self, key: &str, path: impl AsRef<str>, body: Option<&Value>) -> reqwest::Response {
        let mut request = self.client.post(self.url(path.as_ref())).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("POST")
    }

    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.put(self.url(path)).bearer_auth(&self.publish_key).json(body).send().await.expect("PUT")
    }

    pub async fn put_ok(&self, path: &str, body: &Value) -> Value {
        let r = self.put(path, body).await;
        let status = r.status();
        let text = r.text().await.expect("body");
        assert!(status.is_success(), "PUT {path} -> {status}: {text}");
        serde_json::from_str(&text).expect("json")
    }

    /// A term, a location, and `service` tagged with the term (by attribute `attribute`) and linked to the
    /// location (by service_at_location `link`).
    pub async fn put_tagged_and_located_service(
        &self,
        service: &str,
        term: &str,
        location: &str,
        attribute: &str,
        link: &str,
    ) {
        self.put_ok(&format!("/taxonomy_terms/{term}"), &serde_json::json!({"name": "Food", "description": "d"})).await;
        let hall = serde_json::json!({"location_type": "physical", "name": "Hall"});
        self.put_ok(&format!("/locations/{location}"), &hall).await;
        let body = serde_json::json!({"name": "Pantry", "status": "active",
            "attributes": [{"id": attribute, "taxonomy_term_id": term}],
            "service_at_locations": [{"id": link, "location_id": location}]});
        self.put_ok(&format!("/services/{service}"), &body).await;
    }

    pub async fn patch(&self, path: &str, body: &Value) -> reqwest::Response {
        self.patch_as(&self.publish_key, path, body).await
    }

    /// `PATCH path` with `key` and a JSON merge patch.
    pub async fn patch_as(&self, key: &str, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(key)
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
            .await
            .expect("PATCH")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).bearer_auth(&self.publish_key).send().await.expect("DELETE")
    }

    /// All events after `after`, as an admin sees them (operational `webhook.*` events included).
    pub async fn events_after(&self, after: i64) -> Vec<Value> {
        let v = self.get_as(&self.admin_key, format!("/events?after={after}&limit=1000")).await;
        v["events"].as_array().cloned().unwrap_or_default()
    }

    /// Imports the official HSDS example data package; `None` (with a message) where it is absent.
    pub async fn import_example(&self) -> Option<()> {
        let path = hsds_dir()?.join("examples/csv");
        hsda::bulk::import::import_path(&self.db, &path, Default::default()).await.expect("import example package");
        Some(())
    }
}

/// The first delivery of `subscription_id` with an attempt recorded, once there is one (waits up to 20 s).
pub async fn first_attempt_recorded(db: &Db, subscription_id: &str) -> hsda::store::webhooks::Delivery {
    eventually(&format!("an attempt recorded for {subscription_id}"), std::time::Duration::from_secs(20), || async {
        let (_, page) = db.deliveries(subscription_id, &Default::default(), 1, 10).await.expect("deliveries");
        page.into_iter().find(|d| d.attempts >= 1).ok_or_else(String::new)
    })
    .await
}

/// Polls `check` every 20 ms until it succeeds, and returns what it found; after `limit`, fails the test with
/// `what` and the last state `check` described in its `Err`.
pub async fn eventually<T, F, Fut>(what: &str, limit: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match check().await {
            Ok(found) => return found,
            Err(last) => assert!(tokio::time::Instant::now() < deadline, "not within {limit:?}: {what}; {last}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs `async fn name(store: Store)` as two tests, `name::sqlite` and `name::postgres` (the latter a no-op
/// where PostgreSQL is not configured: `fresh_database` says so).
#[macro_export]
macro_rules! each_store {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Store::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Store::Postgres).await;
            }
        }
    };
}

/// `../shared/hsds`, the official HSDS reference files, when present.
pub fn hsds_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/hsds");
    if dir.join("schema").is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: ../shared/hsds (the official HSDS schemas and examples) is not present");
        None
    }
}

/// Runs a test body against SQLite and, where configured, PostgreSQL: `store_test!(name, |app| async move {...})`.
#[macro_export]
macro_rules! store_test {
    ($name:ident, |$app:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                if let Some($app) = $crate::helpers::TestApp::spawn($crate::helpers::Store::Sqlite).await {
                    $body.await;
                }
            }

            #[tokio::test]
            async fn postgres() {
                if let Some($app) = $crate::helpers::TestApp::spawn($crate::helpers::Store::Postgres).await {
                    $body.await;
                }
            }
        }
    };
}

/// Asserts a problem+json answer with `status` whose `errors[]` name `pointer`.
pub async fn assert_problem_at(r: reqwest::Response, status: u16, pointer: &str) -> serde_json::Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = r.json().await.expect("problem json");
    let pointers: Vec<&str> =
        problem["errors"].as_array().into_iter().flatten().filter_map(|e| e["pointer"].as_str()).collect();
    assert!(pointers.contains(&pointer), "{pointer} in {problem}");
    problem
}

/// What `value` breaks of the schema at `pointer` in the served OpenAPI document `openapi` (its `$ref`s
/// resolved against that document): empty when it is valid.
pub fn openapi_violations(openapi: &serde_json::Value, pointer: &str, value: &serde_json::Value) -> Vec<String> {
    assert!(openapi.pointer(pointer).is_some_and(|s| s.is_object()), "the OpenAPI document has a schema at {pointer}");
    // The whole document is the root schema (its other members are no keywords), so `#/components/...`
    // references resolve as a client's validator resolves them.
    let mut root = openapi.clone();
    // (A path template's braces are not allowed in a URI: percent-encoded, as RFC 6901 says for fragments.)
    let fragment = pointer.replace('{', "%7B").replace('}', "%7D");
    root["$ref"] = serde_json::Value::String(format!("#{fragment}"));
    let validator = jsonschema::validator_for(&root).expect("the OpenAPI schema compiles");
    validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path)).collect()
}
