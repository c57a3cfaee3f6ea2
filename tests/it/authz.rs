//! Authorization: every endpoint the OpenAPI document lists, called by every kind of caller — no key, a
//! malformed key, an unknown key, and keys of every scope of tenant A (the owner) and of tenant B — with the
//! status each must get (401 without a valid key, 403 for a scope that does not allow it, 404 for another
//! tenant's subscriptions, deliveries and `webhook.*` events, exactly as for ids that do not exist), and no
//! response to an outsider carrying anything of tenant A's. Plus: API keys are stored hashed only, and the real
//! binary logging at `trace` never writes a signing secret, an API key or an Authorization header.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use hsda::store::keys::Scope;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Store, TestApp, fresh_database};
use crate::receiver::Receiver;

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    NoKey,
    /// `Authorization` present but not a bearer key.
    Malformed,
    /// A well-formed key that was never issued.
    Unknown,
    /// Tenant A, the owner of everything the requests name.
    A(Scope),
    /// Tenant B.
    B(Scope),
}

const CALLERS: [Who; 9] = [
    Who::NoKey,
    Who::Malformed,
    Who::Unknown,
    Who::A(Scope::Subscribe),
    Who::A(Scope::Publish),
    Who::A(Scope::Admin),
    Who::B(Scope::Subscribe),
    Who::B(Scope::Publish),
    Who::B(Scope::Admin),
];

impl Who {
    /// Callers that may see nothing of tenant A's: everyone but A's own keys and admin keys (an admin key is
    /// admin of every tenant, as the contract says).
    fn outsider(self) -> bool {
        !matches!(self, Who::A(_) | Who::B(Scope::Admin))
    }

    fn without_valid_key(self) -> bool {
        matches!(self, Who::NoKey | Who::Malformed | Who::Unknown)
    }
}

/// What an endpoint is, for the expectations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    /// `/`, `/openapi.json`, `/event-types`, `/health`: public documents that ignore keys.
    Meta,
    /// `GET|POST /{table}`.
    DirectoryList,
    /// `GET /{table}/{id}`.
    DirectoryGet,
    /// `PUT|PATCH|DELETE /{table}/{id}`.
    DirectoryWrite,
    /// `GET /events`.
    EventFeed,
    /// `GET /events/{id}` of one of tenant A's `webhook.*` events.
    EventGet,
    /// `POST /webhooks`.
    WebhookCreate,
    /// `GET /webhooks`.
    WebhookList,
    /// An endpoint naming one of tenant A's subscriptions or deliveries; the owner gets this status.
    Owned(u16),
    /// `GET /metrics`: any tenant's admin key.
    AdminOnly,
}

/// The endpoints that name a subscription or a delivery, and what their owner gets.
const OWNED: [(&str, &str, u16); 11] = [
    ("GET", "/webhooks/{id}", 200),
    ("PATCH", "/webhooks/{id}", 200),
    ("DELETE", "/webhooks/{id}", 204),
    ("POST", "/webhooks/{id}/test", 200),
    ("POST", "/webhooks/{id}/rotate-secret", 200),
    ("POST", "/webhooks/{id}/replay", 202),
    ("POST", "/webhooks/{id}/enable", 200),
    ("POST", "/webhooks/{id}/verify", 200),
    ("GET", "/webhooks/{id}/deliveries", 200),
    ("GET", "/deliveries/{id}", 200),
    ("POST", "/deliveries/{id}/retry", 202),
];

/// The expectation row of a documented endpoint; `None` means the endpoint is new and this suite must learn it.
fn row_of(method: &str, template: &str) -> Option<Row> {
    let row = match (method, template) {
        ("GET", "/" | "/openapi.json" | "/event-types" | "/health") => Row::Meta,
        ("GET", "/metrics" | "/follow") => Row::AdminOnly,
        ("GET", "/events") => Row::EventFeed,
        ("GET", "/events/{id}") => Row::EventGet,
        ("POST", "/webhooks") => Row::WebhookCreate,
        ("GET", "/webhooks") => Row::WebhookList,
        _ => {
            if let Some((_, _, code)) = OWNED.iter().find(|(m, t, _)| *m == method && *t == template) {
                return Some(Row::Owned(*code));
            }
            let parts: Vec<&str> = template.trim_start_matches('/').split('/').collect();
            hsda::hsds::catalog::table_by_plural(parts[0])?;
            match (method, &parts[1..]) {
                ("GET" | "POST", []) => Row::DirectoryList,
                ("GET", ["{id}"]) => Row::DirectoryGet,
                ("PUT" | "PATCH" | "DELETE", ["{id}"]) => Row::DirectoryWrite,
                _ => return None,
            }
        }
    };
    Some(row)
}

/// The status `who` must get. `success` is what an authorized call gets (it depends on the request: a write
/// of a row that does not exist is a 404, a body with the wrong id a 422).
fn expected(row: Row, who: Who, require_key_for_reads: bool, success: u16) -> u16 {
    let bad_key = matches!(who, Who::Malformed | Who::Unknown);
    let read_refused = bad_key || (require_key_for_reads && who == Who::NoKey);
    match row {
        Row::Meta => 200,
        Row::DirectoryList | Row::DirectoryGet | Row::EventFeed if read_refused => 401,
        Row::DirectoryList | Row::DirectoryGet | Row::EventFeed => success,
        Row::EventGet if read_refused => 401,
        Row::EventGet => match who {
            Who::A(_) | Who::B(Scope::Admin) => 200,
            _ => 404,
        },
        _ if who.without_valid_key() => 401,
        Row::AdminOnly => match who {
            Who::A(Scope::Admin) | Who::B(Scope::Admin) => 200,
            _ => 403,
        },
        Row::DirectoryWrite => match who {
            Who::A(Scope::Subscribe) | Who::B(Scope::Subscribe) => 403,
            _ => success,
        },
        Row::WebhookCreate | Row::WebhookList | Row::Owned(_)
            if matches!(who, Who::A(Scope::Publish) | Who::B(Scope::Publish)) =>
        {
            403
        }
        Row::WebhookCreate => 201,
        Row::WebhookList => 200,
        Row::Owned(_) if who == Who::B(Scope::Subscribe) => 404,
        Row::Owned(code) => code,
    }
}

/// Tenant A's things, B's keys, and everything of A's an outsider must never see.
struct World {
    app: TestApp,
    rx: Receiver,
    keys: BTreeMap<Who, String>,
    /// A marker in A's subscription URLs, descriptions, metadata and custom headers.
    marker: String,
    sub: String,
    pending: String,
    delivery: String,
    event: String,
    org: String,
    /// Every id of A's (subscriptions, deliveries, events) and every secret A's subscriptions had.
    private: Vec<String>,
}

impl World {
    async fn build(app: TestApp) -> World {
        let mut keys = BTreeMap::new();
        keys.insert(Who::A(Scope::Subscribe), app.subscribe_key.clone());
        keys.insert(Who::A(Scope::Publish), app.publish_key.clone());
        keys.insert(Who::A(Scope::Admin), app.admin_key.clone());
        for scope in [Scope::Subscribe, Scope::Publish, Scope::Admin] {
            keys.insert(Who::B(scope), app.db.create_key("globex", scope).await.unwrap().secret);
        }
        let rx = Receiver::start().await;
        let marker = format!("acme-private-{}", uuid::Uuid::new_v4().simple());
        let mut world = World {
            app,
            rx,
            keys,
            marker,
            sub: String::new(),
            pending: String::new(),
            delivery: String::new(),
            event: String::new(),
            org: uuid::Uuid::new_v4().to_string(),
            private: Vec::new(),
        };
        world.sub = world.subscribe(json!({})).await;
        world.delivery = world.rx.wait_for("the ping", |r| !r.is_empty()).await[0].header("webhook-id");
        world.private.push(world.delivery.clone());
        world.pending = world.subscribe(json!({"verify": true})).await;
        // A target answering 410 disables its subscription: a `webhook.disabled` event private to A.
        let gone = Receiver::start().await;
        gone.script(&[(410, None)]);
        let url = format!("{}?m={}", gone.url, world.marker);
        let disabled = world.subscribe(json!({"url": url})).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        world.event = loop {
            let events = world.app.events_after(0).await;
            if let Some(e) =
                events.iter().find(|e| e["type"] == "webhook.disabled" && e["object_id"] == disabled.as_str())
            {
                break e["id"].as_str().unwrap().to_string();
            }
            assert!(tokio::time::Instant::now() < deadline, "no webhook.disabled event");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        world.private.push(world.event.clone());
        let org = world.org.clone();
        world
            .app
            .put_ok(&format!("/organizations/{org}"), &json!({"name": "Acme Food Bank", "description": "x"}))
            .await;
        world
    }

    /// A new subscription of A's (fields of `extra` over a URL, description, metadata and header carrying the
    /// marker); its id and secret join the private list.
    async fn subscribe(&mut self, extra: Value) -> String {
        let mut body = json!({
            "url": format!("{}?m={}", self.rx.url, self.marker),
            "events": ["organization.created"],
            "description": self.marker,
            "metadata": {"note": self.marker},
            "headers": {"x-acme-token": self.marker},
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self.app.post_as(&self.app.subscribe_key, "/webhooks", Some(&body)).await;
        assert_eq!(r.status(), 201);
        let sub: Value = r.json().await.unwrap();
        let id = sub["id"].as_str().unwrap().to_string();
        // A subscription logged by accident shows neither its secret nor its custom headers.
        let stored = self.app.db.subscription(&id).await.unwrap().expect("stored");
        let shown = format!("{stored:?}");
        assert!(shown.contains(&id) && !shown.contains(&stored.secret) && !shown.contains("x-acme-token"), "{shown}");
        self.private.push(id.clone());
        self.private.push(sub["secret"].as_str().unwrap().to_string());
        id
    }

    /// Sends one request as `who`; returns the status and the raw body.
    async fn call(&self, who: Who, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let mut rq = self.app.client.request(method.parse().unwrap(), self.app.url(path));
        rq = match who {
            Who::NoKey => rq,
            Who::Malformed => rq.header("authorization", format!("Basic {}", self.keys[&Who::A(Scope::Admin)])),
            Who::Unknown => rq.bearer_auth(format!("hsda_admin_{}", "0f".repeat(24))),
            _ => rq.bearer_auth(&self.keys[&who]),
        };
        if let Some(body) = body {
            rq = rq.json(body);
        }
        let r = rq.send().await.expect("request");
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The concrete request for a documented endpoint as `who` calls it: path, body, the id put in the path,
    /// and the status an authorized caller gets. Rows that delete get a fresh object of A's each time.
    async fn request(&mut self, row: Row, method: &str, template: &str) -> (String, Option<Value>, String, u16) {
        let table = template.trim_start_matches('/').split('/').next().unwrap_or_default();
        let uuid = uuid::Uuid::new_v4().to_string();
        match row {
            Row::Meta | Row::AdminOnly => (template.to_string(), None, String::new(), 200),
            Row::DirectoryList if method == "GET" => (format!("/{table}?per_page=1"), None, String::new(), 200),
            Row::DirectoryList => (format!("/{table}"), Some(json!({"per_page": 1})), String::new(), 200),
            Row::DirectoryGet if table == "organizations" => {
                (format!("/{table}/{}", self.org), None, self.org.clone(), 200)
            }
            Row::DirectoryGet => (format!("/{table}/{uuid}"), None, uuid, 404),
            Row::DirectoryWrite if table == "organizations" => match method {
                "PUT" => (format!("/{table}/{uuid}"), Some(json!({"name": "New", "description": "x"})), uuid, 201),
                "PATCH" => {
                    (format!("/{table}/{}", self.org), Some(json!({"description": "patched"})), self.org.clone(), 200)
                }
                _ => {
                    self.app
                        .put_ok(&format!("/organizations/{uuid}"), &json!({"name": "Doomed", "description": "x"}))
                        .await;
                    (format!("/{table}/{uuid}"), None, uuid, 204)
                }
            },
            // Other tables: the answer past authorization is the handler's own (no such row, or a body whose id
            // is not the path's).
            Row::DirectoryWrite => match method {
                "PUT" => (format!("/{table}/{uuid}"), Some(json!({"id": uuid::Uuid::new_v4().to_string()})), uuid, 422),
                "PATCH" => (format!("/{table}/{uuid}"), Some(json!({})), uuid, 404),
                _ => (format!("/{table}/{uuid}"), None, uuid, 404),
            },
            Row::EventFeed => ("/events?after=0&limit=1000".into(), None, String::new(), 200),
            Row::EventGet => (format!("/events/{}", self.event), None, self.event.clone(), 200),
            Row::WebhookCreate => (
                "/webhooks".into(),
                Some(json!({"url": self.rx.url, "events": ["organization.created"]})),
                String::new(),
                201,
            ),
            Row::WebhookList => ("/webhooks?per_page=1000".into(), None, String::new(), 200),
            Row::Owned(code) => {
                let id = match template {
                    "/webhooks/{id}" if method == "DELETE" => self.subscribe(json!({})).await,
                    "/webhooks/{id}/verify" => self.pending.clone(),
                    t if t.starts_with("/deliveries/") => self.delivery.clone(),
                    _ => self.sub.clone(),
                };
                let body = match template {
                    "/webhooks/{id}" if method == "PATCH" => Some(json!({"description": self.marker})),
                    "/webhooks/{id}/test" | "/webhooks/{id}/enable" => Some(json!({})),
                    "/webhooks/{id}/rotate-secret" => Some(json!({"grace_seconds": 60})),
                    "/webhooks/{id}/replay" => Some(json!({"since": "2020-01-01T00:00:00Z"})),
                    _ => None,
                };
                (template.replace("{id}", &id), body, id, code)
            }
        }
    }
}

/// A's subscription as stored, in the fields a refused call must not change.
async fn stored(world: &World) -> Value {
    let s = world.app.db.subscription(&world.sub).await.unwrap().expect("A's subscription");
    json!([s.url, s.description, s.secret, s.previous_secret, s.headers, s.metadata, s.events])
}

/// An id of the same shape as `id` that names nothing.
fn absent_like(id: &str) -> String {
    match id.split_once('_') {
        Some((prefix, rest)) => format!("{prefix}_{}", "0".repeat(rest.len())),
        None => uuid::Uuid::new_v4().to_string(),
    }
}

async fn matrix(store: Store, require_key_for_reads: bool) {
    let Some(app) = TestApp::spawn_with(store, |c| {
        c.require_key_for_reads = require_key_for_reads;
        c.retry_schedule = Some("0.2,0.2".into());
    })
    .await
    else {
        return;
    };
    let mut world = World::build(app).await;

    // Every documented endpoint has a row; a new one fails here until its expectations are written.
    let doc: Value = world.call(Who::NoKey, "GET", "/openapi.json", None).await.1.parse().unwrap();
    let mut endpoints = Vec::new();
    let mut missing = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                let method = method.to_uppercase();
                match row_of(&method, template) {
                    Some(row) => endpoints.push((method, template.clone(), row)),
                    None => missing.push(format!("{method} {template}")),
                }
            }
        }
    }
    assert!(missing.is_empty(), "documented endpoints without an expectation row: {missing:?}");
    for (m, t, _) in &OWNED {
        assert!(
            endpoints.iter().any(|(method, template, _)| method == m && template == t),
            "{m} {t} is not documented"
        );
    }

    // Outsiders first (and A's publish key), so that A's subscription is known unchanged before the owner and
    // admins change it.
    let before = stored(&world).await;
    let mut outsider_bodies: Vec<(String, Row, String, String)> = Vec::new();
    let mut calls = 0usize;
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for phase in [true, false] {
        for who in CALLERS.into_iter().filter(|w| (w.outsider() || *w == Who::A(Scope::Publish)) == phase) {
            for (method, template, row) in &endpoints {
                let (path, body, id, success) = world.request(*row, method, template).await;
                let want = expected(*row, who, require_key_for_reads, success);
                let (status, text) = world.call(who, method, &path, body.as_ref()).await;
                calls += 1;
                *by_status.entry(status).or_default() += 1;
                assert_eq!(status, want, "{who:?} {method} {path}: {text}");
                if *row == Row::Owned(200) && template.ends_with("/rotate-secret") && status == 200 {
                    let rotated: Value = serde_json::from_str(&text).unwrap();
                    world.private.push(rotated["secret"].as_str().unwrap().to_string());
                }
                if who.outsider() {
                    if status == 404 && matches!(row, Row::Owned(_) | Row::EventGet) {
                        // Indistinguishable from an id that does not exist: no existence oracle.
                        let other = absent_like(&id);
                        let (s2, t2) = world.call(who, method, &path.replace(&id, &other), body.as_ref()).await;
                        assert_eq!((s2, t2.replace(&other, &id)), (status, text.clone()), "{who:?} {method} {path}");
                    }
                    outsider_bodies.push((format!("{who:?} {method} {path}"), *row, id.clone(), text));
                }
                // A refused delete or create left the object as it was.
                if status == 401 || status == 403 || status == 404 {
                    match (*row, method.as_str()) {
                        (Row::Owned(_), "DELETE") => {
                            assert!(world.app.db.subscription(&id).await.unwrap().is_some(), "{who:?} deleted {id}");
                        }
                        (Row::DirectoryWrite, "DELETE") if template.starts_with("/organizations/") => {
                            assert_eq!(world.app.get_as(&world.app.admin_key, &path).await["id"], id.as_str());
                        }
                        (Row::DirectoryWrite, "PUT") => {
                            let r = world.call(Who::A(Scope::Admin), "GET", &path, None).await;
                            assert_eq!(r.0, 404, "{who:?} {method} {path} wrote: {}", r.1);
                        }
                        _ => {}
                    }
                }
            }
        }
        if phase {
            assert_eq!(stored(&world).await, before, "an outsider changed A's subscription");
        }
    }

    // Everything of A's, including what exists only now, then the raw text of every outsider answer.
    let all = world.app.get_as(&world.app.admin_key, "/webhooks?per_page=1000").await;
    let subs: Vec<String> = all["contents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["description"] == world.marker.as_str())
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    for sub in &subs {
        let page = world.app.get_as(&world.app.admin_key, format!("/webhooks/{sub}/deliveries?per_page=1000")).await;
        world
            .private
            .extend(page["contents"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()));
    }
    world.private.push(world.marker.clone());
    for (call, row, id, text) in &outsider_bodies {
        let text = if id.is_empty() { text.clone() } else { text.replace(id.as_str(), "{id}") };
        for secret in &world.private {
            assert!(!text.contains(secret.as_str()), "{call} shows {secret}: {text}");
        }
        // No secret at all, except that of the subscription B just created for itself (and the API document,
        // which describes secrets' forms: `whsec_...`).
        if *row != Row::WebhookCreate && !call.ends_with(" /openapi.json") {
            assert!(!text.contains("whsec_") && !text.contains("whsk_"), "{call}: {text}");
        }
    }
    eprintln!(
        "authz matrix ({store:?}, require_key_for_reads={require_key_for_reads}): {} endpoints x {} callers = {calls} calls, statuses {by_status:?}; {} outsider answers free of {} private strings",
        endpoints.len(),
        CALLERS.len(),
        outsider_bodies.len(),
        world.private.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_matrix_sqlite() {
    matrix(Store::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_matrix_postgres() {
    matrix(Store::Postgres, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_matrix_reads_require_a_key_sqlite() {
    matrix(Store::Sqlite, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_matrix_reads_require_a_key_postgres() {
    matrix(Store::Postgres, true).await;
}

/// A path that names no table is 404 for every key, writes included: the scope guards only what exists, so a
/// subscribe key learns nothing more from a write than a publish key does.
#[tokio::test]
async fn a_write_to_no_table_is_not_found_whatever_the_scope() {
    let Some(app) = TestApp::spawn(Store::Sqlite).await else { return };
    let path = app.url("/unicorns/3e1f2c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b");
    for (scope, key) in [("subscribe", &app.subscribe_key), ("publish", &app.publish_key), ("admin", &app.admin_key)] {
        for method in [reqwest::Method::PUT, reqwest::Method::PATCH, reqwest::Method::DELETE] {
            let r = app.client.request(method.clone(), &path).bearer_auth(key).json(&json!({"name": "x"})).send();
            let r = r.await.expect("request");
            assert_eq!(r.status(), 404, "{method} with a {scope} key");
        }
    }
    // Nor does a POST to it say more than 404 (to a row of a table that exists: 405, what is allowed).
    let r = app.client.post(&path).bearer_auth(&app.admin_key).json(&json!({"name": "x"})).send().await;
    assert_eq!(r.expect("request").status(), 404);
    let row = app.url("/services/3e1f2c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b");
    let r =
        app.client.post(&row).bearer_auth(&app.admin_key).json(&json!({"name": "x"})).send().await.expect("request");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET,HEAD,PUT,PATCH,DELETE");
    // A table that exists still answers a subscribe key's write with 403.
    let service = app.url("/services/3e1f2c4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b");
    let r = app.client.put(&service).bearer_auth(&app.subscribe_key).json(&json!({"name": "x"})).send().await;
    assert_eq!(r.expect("request").status(), 403);
}

/// Every text column of every table of the database at `url` that contains `needle`, as `table.column`.
async fn columns_containing(url: &str, needle: &str) -> Vec<String> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect to the test database");
    let sqlite = url.starts_with("sqlite:");
    let columns: Vec<(String, String)> = if sqlite {
        sqlx::query(
            "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
        )
    } else {
        sqlx::query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns WHERE table_schema = 'public'",
        )
    }
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
    .collect();
    assert!(columns.iter().any(|(t, c)| t == "api_keys" && c == "key_hash"), "{columns:?}");
    let mut hits = Vec::new();
    for (table, column) in columns {
        let test = if sqlite {
            format!("instr(CAST(\"{column}\" AS TEXT), $1) > 0")
        } else {
            format!("strpos(\"{column}\"::text, $1) > 0")
        };
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{table}\" WHERE {test}"))
            .bind(needle)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("scanning {table}.{column}: {e}"));
        if n > 0 {
            hits.push(format!("{table}.{column}"));
        }
    }
    pool.close().await;
    hits
}

async fn api_keys_are_stored_hashed(store: Store) {
    let Some(app) = TestApp::spawn(store).await else { return };
    let mut keys = vec![app.admin_key.clone(), app.publish_key.clone(), app.subscribe_key.clone()];
    keys.push(app.db.create_key("globex", Scope::Subscribe).await.unwrap().secret);
    for key in &keys {
        // Used once, so that whatever a request does with a key has happened.
        let r = app.client.get(app.url("/webhooks")).bearer_auth(key).send().await.unwrap();
        assert_ne!(r.status(), 401, "{key} authenticates");
    }
    for key in &keys {
        let hash = hex::encode(Sha256::digest(key.as_bytes()));
        // The random part of the key (after `hsda_<scope>_`).
        let random = key.rsplit('_').next().unwrap();
        assert_eq!(random.len(), 48, "{key}");
        assert_eq!(columns_containing(&app.database_url, &hash).await, ["api_keys.key_hash"], "the SHA-256 is stored");
        assert!(columns_containing(&app.database_url, key).await.is_empty(), "{key} is stored in plain");
        assert!(columns_containing(&app.database_url, random).await.is_empty(), "the random part of {key} is stored");
    }
    if let Some(path) = app.database_url.strip_prefix("sqlite://") {
        // The bytes of the database and its WAL: the hash is there (so the scan sees the data), the key is not.
        let path = std::path::Path::new(path);
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(path.parent().unwrap()).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        let found = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        for key in &keys {
            assert!(found(&hex::encode(Sha256::digest(key.as_bytes()))), "the hash of {key} is in the files");
            assert!(!found(key) && !found(key.rsplit('_').next().unwrap()), "{key} is in the database files");
        }
        eprintln!("keys hashed (SQLite): {} keys, {} bytes of database files scanned", keys.len(), bytes.len());
    }
}

#[tokio::test]
async fn api_keys_are_stored_hashed_sqlite() {
    api_keys_are_stored_hashed(Store::Sqlite).await;
}

#[tokio::test]
async fn api_keys_are_stored_hashed_postgres() {
    api_keys_are_stored_hashed(Store::Postgres).await;
}

/// The real binary, logging everything (`RUST_LOG=trace`) to files.
struct Logged {
    child: std::process::Child,
    base: String,
    stdout: std::path::PathBuf,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_logged(database_url: &str, dir: &std::path::Path) -> Logged {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let child = Command::new(env!("CARGO_BIN_EXE_hsda"))
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .env("HSDA_DATABASE_URL", database_url)
        .env("HSDA_ALLOW_TARGETS", "127.0.0.0/8")
        .env("HSDA_RETRY_SCHEDULE", "0.2,0.2")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
        .spawn()
        .expect("start hsda");
    let logged = Logged { child, base: format!("http://127.0.0.1:{port}"), stdout };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let up = client.get(format!("{}/health", logged.base)).send().await.is_ok_and(|r| r.status() == 200);
        if up && std::fs::read_to_string(&logged.stdout).unwrap_or_default().contains("admin API key") {
            return logged;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("hsda did not start");
}

async fn secrets_are_never_logged(store: Store) {
    let Some((database_url, _db_dir)) = fresh_database(store).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = start_logged(&database_url, dir.path()).await;
    let banner = "admin API key (shown once): ";
    let printed = std::fs::read_to_string(&server.stdout).unwrap();
    let admin = printed.lines().find_map(|l| l.strip_prefix(banner)).expect("the admin key line").trim().to_string();
    let db = hsda::store::Db::connect(&database_url).await.unwrap();
    let subscribe = db.create_key("acme", Scope::Subscribe).await.unwrap().secret;
    let publish = db.create_key("acme", Scope::Publish).await.unwrap().secret;
    let unknown = format!("hsda_admin_{}", "7e".repeat(24));
    let receiver_token = format!("receiver-token-{}", uuid::Uuid::new_v4().simple());
    let given_secret = {
        use base64::Engine;
        format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>()))
    };
    let client = reqwest::Client::new();
    let post = |key: &str, path: &str, body: Value| {
        client.post(format!("{}{path}", server.base)).bearer_auth(key).json(&body).send()
    };
    let rx = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.script(&[(500, None); 20]);
    let events = json!(["organization.created"]);
    let mut secrets = vec![given_secret.clone()];
    let created = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()
    };
    let hmac = created(
        post(
            &subscribe,
            "/webhooks",
            json!({"url": rx.url, "events": events, "secret": given_secret,
            "headers": {"Authorization": format!("Bearer {receiver_token}")}}),
        )
        .await
        .unwrap(),
    )
    .await;
    let ed = created(
        post(&admin, "/webhooks", json!({"url": rx.url, "events": events, "signing": "ed25519"})).await.unwrap(),
    )
    .await;
    let fail =
        created(post(&subscribe, "/webhooks", json!({"url": failing.url, "events": events})).await.unwrap()).await;
    secrets.extend([&ed, &fail].map(|s| s["secret"].as_str().unwrap().to_string()));
    let rotated: Value =
        post(&subscribe, &format!("/webhooks/{}/rotate-secret", hmac["id"].as_str().unwrap()), json!({}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    secrets.push(rotated["secret"].as_str().expect("rotated").to_string());
    let r = post(&subscribe, &format!("/webhooks/{}/test", hmac["id"].as_str().unwrap()), json!({})).await.unwrap();
    assert_eq!(r.status(), 200);
    let org = uuid::Uuid::new_v4();
    let r = client
        .put(format!("{}/organizations/{org}", server.base))
        .bearer_auth(&publish)
        .json(&json!({"name": "Logged Org", "description": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client.get(format!("{}/webhooks", server.base)).bearer_auth(&unknown).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Delivered to the good receiver (both subscriptions), failed for good at the failing one.
    let got = rx
        .wait_for("organization.created for both subscriptions", |r| {
            Receiver::of_type(r, "organization.created").len() >= 2
        })
        .await;
    assert!(
        Receiver::of_type(&got, "organization.created").iter().any(|r| r.verify(&secrets[3])),
        "signed with the new secret"
    );
    let fail_id = fail["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page: Value = client
            .get(format!("{}/webhooks/{fail_id}/deliveries?event_type=organization.created&status=failed", server.base))
            .bearer_auth(&subscribe)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["total_items"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the failing delivery did not fail for good: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server); // stops it; the log files stay
    let out = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(err.lines().count() > 100 && err.contains("TRACE"), "trace logging was on: {} lines", err.lines().count());
    assert!(err.contains("webhook") || err.contains("http"), "the logs cover requests and deliveries");
    for (name, text) in [("stdout", &out), ("stderr", &err)] {
        for secret in &secrets {
            let raw = secret.split_once('_').unwrap().1;
            assert!(!text.contains(secret.as_str()) && !text.contains(raw), "{name} shows a signing secret");
        }
        assert!(!text.contains("whsec_") && !text.contains("whsk_"), "{name} shows a signing secret");
        for key in [&subscribe, &publish, &unknown] {
            assert!(!text.contains(key.as_str()), "{name} shows an API key");
        }
        assert!(!text.contains(&receiver_token), "{name} shows a subscription's Authorization header");
        assert!(!text.to_ascii_lowercase().contains("bearer"), "{name} shows an Authorization header");
    }
    // The admin key `serve` makes is printed once, on purpose, on its own line of stdout, and logged nowhere.
    assert_eq!(out.matches(admin.as_str()).count(), 1);
    assert!(!err.contains(&admin));
    eprintln!(
        "secrets not logged ({store:?}): {} lines ({} bytes) of trace logs, {} secrets and 4 keys absent",
        err.lines().count(),
        err.len(),
        secrets.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_never_logged_sqlite() {
    secrets_are_never_logged(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_never_logged_postgres() {
    secrets_are_never_logged(Store::Postgres).await;
}
