//! Fuzz target: the JSON write path. The input is a byte picking a table and one of four ids, then the body
//! of `PUT /{table}/{id}`, sent through hsda's real router (the JSON extractor, key check, flattening,
//! validation and the store's write transaction) on one SQLite store that lives as long as the process, so
//! later inputs replace, extend and collide with what earlier ones wrote.
//!
//! Oracle: no panic; never a 5xx; every answer is JSON; an error answer is problem+json naming its own
//! status and appends no event; a success is readable right after with the id of the path.

#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hsda::config::Config;
use hsda::hsds::catalog::TABLES;
use hsda::http::{AppState, router};
use hsda::store::Db;
use hsda::store::keys::Scope;
use hsda::webhook::client::WebhookClient;
use hsda::webhook::ssrf::Guard;
use hsda_fuzz::{fresh_store, runtime, scratch_dir};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt as _;

const IDS: [&str; 4] = [
    "6f1c3b0e-0b8a-4f39-9a40-0d3d3f0c0001",
    "6f1c3b0e-0b8a-4f39-9a40-0d3d3f0c0002",
    "00000000-0000-0000-0000-000000000000",
    "FFFFFFFF-FFFF-4FFF-BFFF-FFFFFFFFFFFF",
];

struct Server {
    app: axum::Router,
    db: Db,
    key: String,
    _dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        runtime().block_on(async {
            let dir = scratch_dir();
            let db = fresh_store(dir.path()).await;
            let key = db.create_key("fuzz", Scope::Publish).await.expect("a publish key").secret;
            let guard = Guard::default();
            let client = WebhookClient::new(guard.clone(), std::time::Duration::from_secs(1)).expect("a client");
            let config =
                Config { database_url: hsda_fuzz::sqlite_url(&dir.path().join("hsda.db")), ..Config::default() };
            let state = AppState {
                db: db.clone(),
                config: std::sync::Arc::new(config),
                guard: std::sync::Arc::new(guard),
                webhook_client: client,
                metrics: std::sync::Arc::default(),
                configured_public_url: None,
                shutdown: Default::default(),
                following: Default::default(),
            };
            Server { app: router(state), db, key, _dir: dir }
        })
    })
}

async fn send(server: &Server, request: Request<Body>) -> (StatusCode, Option<String>, Vec<u8>) {
    let response = server.app.clone().oneshot(request).await.expect("the router is infallible");
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("a readable body");
    (status, content_type, body.to_vec())
}

async fn check(server: &Server, pick: u8, body: &[u8]) {
    let table = &TABLES[usize::from(pick) % TABLES.len()];
    let id = IDS[usize::from(pick) / TABLES.len() % IDS.len()];
    let path = format!("/{}/{id}", table.plural);
    let before = server.db.last_sequence().await.expect("read the event sequence");
    let request = Request::put(&path)
        .header(header::AUTHORIZATION, format!("Bearer {}", server.key))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    let (status, content_type, answer) = send(server, request).await;
    let shown = String::from_utf8_lossy(body);
    assert!(!status.is_server_error(), "PUT {path} answered {status}: {shown}");
    let answer: Value = serde_json::from_slice(&answer).expect("every answer is JSON");
    if status.is_success() {
        assert_eq!(answer["id"].as_str().map(str::to_lowercase), Some(id.to_lowercase()), "PUT {path}: {shown}");
        let get = Request::get(&path).body(Body::empty()).expect("a request");
        let (read_status, _, _) = send(server, get).await;
        assert_eq!(read_status, StatusCode::OK, "GET {path} after a successful PUT of {shown}");
    } else {
        assert_eq!(content_type.as_deref(), Some("application/problem+json"), "PUT {path}: {shown}");
        assert_eq!(answer["status"], u16::from(status), "PUT {path}: {shown}");
        let after = server.db.last_sequence().await.expect("read the event sequence");
        assert_eq!(after, before, "PUT {path} failed with {status} but appended events: {shown}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    // Set up outside `block_on`: the set-up blocks on the runtime itself.
    let server = server();
    runtime().block_on(check(server, pick, body));
});
