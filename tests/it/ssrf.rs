//! SSRF through the API, with an allow-list narrowed to 127.0.0.1/32 so that every other loopback address
//! counts as forbidden: the full table of forbidden target forms is refused at creation and on update (422
//! naming `/url`); a name that resolves to the allowed address at creation and to a forbidden one at delivery
//! (DNS rebinding, through hsda's `dns_server` setting and a local responder) is refused at every attempt; and
//! a redirect to a forbidden address is never followed. Forbidden addresses that must never be reached are
//! real listeners on 127.0.0.2 counting connections. Nothing here connects outside 127.0.0.0/8.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::dns::DnsServer;
use crate::helpers::{Store, TestApp};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A server whose allow-list admits 127.0.0.1 only and whose target names are resolved at `dns`; three
/// attempts per delivery, 0.2 s apart.
async fn spawn(store: Store, dns: &DnsServer) -> Option<TestApp> {
    let server = dns.addr;
    TestApp::spawn_with(store, move |c| {
        c.allow_targets = "127.0.0.1/32".into();
        c.dns_server = Some(server);
        c.retry_schedule = Some("0.2,0.2".into());
    })
    .await
}

const ATTEMPTS: usize = 3;

/// A listener on a forbidden address that accepts and counts connections; hsda must never make one.
struct Trap {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Trap {
    fn from_listener(listener: TcpListener) -> Trap {
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Trap { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An allowed target on 127.0.0.1: `POST /r/{code}` answers `code` with `Location: {location}`, any other
/// path 200. Counts requests per path.
struct Target {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

#[derive(Clone)]
struct TargetState {
    hits: Arc<Mutex<HashMap<String, usize>>>,
    location: String,
}

async fn redirect(State(s): State<TargetState>, Path(code): Path<u16>) -> impl IntoResponse {
    *s.hits.lock().unwrap().entry(format!("/r/{code}")).or_default() += 1;
    (StatusCode::from_u16(code).unwrap(), [(header::LOCATION, s.location.clone())], "moved")
}

async fn accept(State(s): State<TargetState>, uri: axum::http::Uri) -> impl IntoResponse {
    *s.hits.lock().unwrap().entry(uri.path().to_string()).or_default() += 1;
    "ok"
}

impl Target {
    fn from_listener(listener: TcpListener, location: String) -> Target {
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let state = TargetState { hits: hits.clone(), location };
        let app = Router::new().route("/r/{code}", post(redirect)).fallback(post(accept)).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Target { base, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A trap on 127.0.0.2 and an allowed target on 127.0.0.1 listening on the same port, so that only the address
/// a name resolves to decides which one a delivery would reach.
async fn trap_and_target_on_one_port() -> (Trap, Target) {
    for _ in 0..20 {
        let trap = TcpListener::bind("127.0.0.2:0").await.expect("bind 127.0.0.2");
        let port = trap.local_addr().unwrap().port();
        if let Ok(target) = TcpListener::bind(("127.0.0.1", port)).await {
            return (Trap::from_listener(trap), Target::from_listener(target, String::new()));
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

async fn create(app: &TestApp, url: &str) -> reqwest::Response {
    // Only the ping and test deliveries go out: no directory event is written and none is subscribed to.
    let body = json!({ "url": url, "events": ["organization.created"] });
    app.post_as(&app.subscribe_key, "/webhooks", Some(&body)).await
}

async fn create_ok(app: &TestApp, url: &str) -> String {
    let r = create(app, url).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{url}: {body}");
    body["id"].as_str().unwrap().to_string()
}

/// The refusal of a URL: 422 whose errors all point at `/url`.
async fn assert_refused(r: reqwest::Response, what: &str) {
    let status = r.status();
    let problem: Value = r.json().await.unwrap();
    assert_eq!(status, 422, "{what}: {problem}");
    let pointers: Vec<&str> =
        problem["errors"].as_array().unwrap().iter().filter_map(|e| e["pointer"].as_str()).collect();
    assert_eq!(pointers, ["/url"], "{what}: {problem}");
}

/// The subscription's first delivery (its ping) once it has failed for good, with its attempts.
async fn failed_ping(app: &TestApp, sub: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = app.get_as(&app.subscribe_key, format!("/webhooks/{sub}/deliveries?event_type=webhook.ping")).await;
        if let Some(d) = page["contents"].as_array().and_then(|c| c.first())
            && d["status"] == "failed"
        {
            return app.get_as(&app.subscribe_key, format!("/deliveries/{}", d["id"].as_str().unwrap())).await;
        }
        assert!(tokio::time::Instant::now() < deadline, "the ping of {sub} did not fail for good: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forbidden_target_form_is_refused_at_creation_and_on_update() {
    let dns = DnsServer::start().await;
    dns.set("allowed.test", &[&[ip("127.0.0.1")]]);
    dns.set("loopback2.test", &[&[ip("127.0.0.2")]]);
    dns.set("private.test", &[&[ip("10.0.0.1")]]);
    dns.set("metadata.google.internal", &[&[ip("169.254.169.254")]]);
    dns.set("ula.test", &[&[ip("fd00::1")]]);
    dns.set("mapped.test", &[&[ip("::ffff:10.0.0.1")]]);
    dns.set("forbidden-only.test", &[&[ip("127.0.0.2"), ip("10.0.0.1")]]);
    let Some(app) = spawn(Store::Sqlite, &dns).await else { return };
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = Target::from_listener(target, String::new());
    let p = target.base.rsplit(':').next().unwrap().to_string();

    // Controls: the allowed address in plain, named and decimal form is accepted, so the refusals below are
    // about the address and not about the form.
    let accepted = [
        format!("{}/hook", target.base),
        format!("http://allowed.test:{p}/hook"),
        format!("http://2130706433:{p}/hook"),
        format!("http://ALLOWED.test.:{p}/hook"),
    ];
    let mut ids = Vec::new();
    for url in &accepted {
        ids.push(create_ok(&app, url).await);
    }

    let refused: Vec<(&str, String)> = vec![
        ("loopback", format!("http://127.0.0.2:{p}/hook")),
        ("loopback", "http://127.255.255.254/".into()),
        ("loopback", format!("http://[::1]:{p}/hook")),
        ("loopback by name", format!("http://loopback2.test:{p}/hook")),
        ("a name with only forbidden addresses", format!("http://forbidden-only.test:{p}/hook")),
        ("private", "http://10.0.0.1/".into()),
        ("private", "http://172.16.0.1/".into()),
        ("private", "http://172.31.255.255/".into()),
        ("private", "http://192.168.0.1/".into()),
        ("private by name", "http://private.test/".into()),
        ("link-local", "http://169.254.0.1/".into()),
        ("link-local", "http://[fe80::1]/".into()),
        ("link-local with a zone", "http://[fe80::1%25eth0]/".into()),
        ("CGNAT", "http://100.64.0.1/".into()),
        ("CGNAT", "http://100.127.255.254/".into()),
        ("multicast", "http://224.0.0.1/".into()),
        ("multicast", "http://239.255.255.250/".into()),
        ("multicast", "http://[ff02::1]/".into()),
        ("broadcast", "http://255.255.255.255/".into()),
        ("unspecified", format!("http://0.0.0.0:{p}/hook")),
        ("unspecified", format!("http://0:{p}/hook")),
        ("unspecified", "http://[::]/".into()),
        ("cloud metadata", "http://169.254.169.254/latest/meta-data/".into()),
        ("cloud metadata", "http://[fd00:ec2::254]/latest/meta-data/".into()),
        ("cloud metadata by name", "http://metadata.google.internal/computeMetadata/v1/".into()),
        ("cloud metadata by name", "http://metadata.google.internal./computeMetadata/v1/".into()),
        ("IPv6 ULA", "http://[fd12:3456:789a::1]/".into()),
        ("IPv6 ULA", "http://[fc00::1]/".into()),
        ("IPv6 ULA by name", "http://ula.test/".into()),
        ("IPv6 site-local", "http://[fec0::1]/".into()),
        ("IPv4-mapped", "http://[::ffff:127.0.0.2]/".into()),
        ("IPv4-mapped", "http://[::ffff:10.0.0.1]/".into()),
        ("IPv4-mapped", "http://[::ffff:a9fe:a9fe]/".into()),
        ("IPv4-mapped by name", "http://mapped.test/".into()),
        ("IPv4-translated", "http://[::ffff:0:a00:1]/".into()),
        ("IPv4-translated", "http://[::ffff:0:127.0.0.2]/".into()),
        ("IPv4-compatible", "http://[::127.0.0.2]/".into()),
        ("IPv4-compatible", "http://[::a00:1]/".into()),
        ("NAT64", "http://[64:ff9b::10.0.0.1]/".into()),
        ("6to4", "http://[2002:a00:1::1]/".into()),
        ("decimal", format!("http://2130706434:{p}/hook")),
        ("decimal", "http://167772161/".into()),
        ("decimal", "http://2852039166/".into()),
        ("octal", format!("http://0177.0.0.2:{p}/hook")),
        ("octal", "http://012.0.0.1/".into()),
        ("octal", "http://0251.0376.0251.0376/".into()),
        ("hex", format!("http://0x7f.2:{p}/hook")),
        ("hex", "http://0x7f000002/".into()),
        ("hex", "http://0xa9.0xfe.0xa9.0xfe/".into()),
        ("short form", format!("http://127.2:{p}/hook")),
        ("short form", "http://10.1/".into()),
        ("short form", "http://169.254.43518/".into()),
        ("trailing dot", format!("http://127.0.0.2.:{p}/hook")),
        ("trailing dot", "http://10.0.0.1./".into()),
        ("trailing dot", format!("http://loopback2.test.:{p}/hook")),
        ("percent-encoded host", "http://%31%30.0.0.1/".into()),
        ("full-width digits", "http://１２７.０.０.２/".into()),
        ("userinfo", "http://allowed@10.0.0.1/".into()),
        ("userinfo", "http://127.0.0.1@10.0.0.1/".into()),
        ("userinfo", format!("http://allowed.test@127.0.0.2:{p}/hook")),
        ("userinfo on an allowed host", format!("http://user:pw@127.0.0.1:{p}/hook")),
        ("fragment trick", "http://10.0.0.1#@127.0.0.1/".into()),
        ("query trick", "http://10.0.0.1?@127.0.0.1/".into()),
        ("scheme", format!("ftp://127.0.0.1:{p}/")),
        ("scheme", "file:///etc/passwd".into()),
        ("scheme", format!("gopher://127.0.0.1:{p}/_x")),
        ("scheme", format!("ws://127.0.0.1:{p}/hook")),
        ("scheme", "dict://127.0.0.1:11211/stat".into()),
        ("scheme", "ldap://127.0.0.1/".into()),
        ("scheme", "javascript:alert(1)".into()),
        ("scheme", "data:text/plain,hello".into()),
        ("scheme", "unix:/var/run/docker.sock".into()),
        ("no scheme", format!("127.0.0.1:{p}/hook")),
        ("no host", "http://".into()),
    ];
    for (what, url) in &refused {
        assert_refused(create(&app, url).await, &format!("creating {what}: {url}")).await;
        let r = app
            .client
            .patch(app.url(&format!("/webhooks/{}", ids[0])))
            .bearer_auth(&app.subscribe_key)
            .json(&json!({ "url": url }))
            .send()
            .await
            .unwrap();
        assert_refused(r, &format!("updating to {what}: {url}")).await;
    }
    let shown = app.get_as(&app.subscribe_key, format!("/webhooks/{}", ids[0])).await;
    assert_eq!(shown["url"].as_str(), Some(accepted[0].as_str()), "no refused update was stored");
    let list = app.get_as(&app.subscribe_key, "/webhooks").await;
    assert_eq!(list["total_items"], accepted.len(), "no refused subscription was stored");
    // Names were looked up at the configured DNS server (once at creation and once per update).
    for name in ["metadata.google.internal", "private.test", "ula.test", "mapped.test", "forbidden-only.test"] {
        assert!(dns.lookups(name) >= 2, "{name} looked up {} times", dns.lookups(name));
    }
    eprintln!(
        "SSRF table: {} forbidden forms refused on create and update, {} controls accepted",
        refused.len(),
        accepted.len()
    );
}

async fn dns_rebinding_is_refused_at_delivery(store: Store) {
    let dns = DnsServer::start().await;
    let (trap, target) = trap_and_target_on_one_port().await;
    let port = trap.port;
    dns.set("stable.test", &[&[ip("127.0.0.1")]]);
    dns.set("rebind.test", &[&[ip("127.0.0.1")], &[ip("127.0.0.2")]]);
    let Some(app) = spawn(store, &dns).await else { return };

    // Control: a name that keeps resolving to the allowed address is delivered to.
    create_ok(&app, &format!("http://stable.test:{port}/stable")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while target.hits("/stable") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the control subscription got no ping");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The rebinding name is allowed at creation (first answer: 127.0.0.1) ...
    let sub = create_ok(&app, &format!("http://rebind.test:{port}/rebound")).await;
    // ... and refused at every delivery attempt (every later answer: 127.0.0.2).
    let delivery = failed_ping(&app, &sub).await;
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), ATTEMPTS, "{delivery}");
    for a in attempts {
        assert_eq!(a["error_class"], "ssrf", "{a}");
        assert!(a["status_code"].is_null(), "{a}");
        assert!(a["error"].as_str().unwrap().contains("127.0.0.2"), "{a}");
    }
    assert_eq!(delivery["last_status_code"], Value::Null);
    // Every attempt asked DNS again: no cached answer from the creation check was trusted.
    assert!(dns.lookups("rebind.test") > ATTEMPTS, "lookups: {}", dns.lookups("rebind.test"));
    // The test endpoint goes through the same resolver.
    let r = app.post_as(&app.subscribe_key, format!("/webhooks/{sub}/test"), Some(&json!({}))).await;
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(outcome["error_class"], "ssrf", "{outcome}");
    assert_eq!(outcome["success"], false);

    assert_eq!(trap.connections(), 0, "nothing reached the forbidden address");
    assert_eq!(target.hits("/rebound"), 0, "nor the allowed one, since the name no longer resolves there");
    eprintln!(
        "DNS rebinding ({store:?}): {} refused attempts (ssrf), {} lookups, {} connections to 127.0.0.2",
        attempts.len(),
        dns.lookups("rebind.test"),
        trap.connections()
    );
}

/// A name with a permitted and a forbidden address (as `localhost` is 127.0.0.1 and ::1 where only
/// 127.0.0.0/8 is allowed) is accepted, and hsda connects only to the permitted one, whichever comes first.
async fn a_name_with_a_forbidden_address_too_is_delivered_to_the_permitted_one(store: Store) {
    let dns = DnsServer::start().await;
    let (trap, target) = trap_and_target_on_one_port().await;
    let port = trap.port;
    dns.set("mixed.test", &[&[ip("127.0.0.2"), ip("127.0.0.1"), ip("10.0.0.1")]]);
    let Some(app) = spawn(store, &dns).await else { return };
    let sub = create_ok(&app, &format!("http://mixed.test:{port}/mixed")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while target.hits("/mixed") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the ping never reached 127.0.0.1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = app.post_as(&app.subscribe_key, format!("/webhooks/{sub}/test"), Some(&json!({}))).await;
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(outcome["success"], true, "{outcome}");
    assert_eq!(target.hits("/mixed"), 2, "the ping and the test");
    assert_eq!(trap.connections(), 0, "nothing reached the forbidden address");
}

crate::each_store!(a_name_with_a_forbidden_address_too_is_delivered_to_the_permitted_one);

crate::each_store!(dns_rebinding_is_refused_at_delivery);

async fn redirects_to_forbidden_addresses_are_not_followed(store: Store) {
    let trap = Trap::from_listener(TcpListener::bind("127.0.0.2:0").await.expect("bind 127.0.0.2"));
    let location = format!("http://127.0.0.2:{}/steal", trap.port);
    let target = Target::from_listener(TcpListener::bind("127.0.0.1:0").await.unwrap(), location);
    let dns = DnsServer::start().await;
    let Some(app) = spawn(store, &dns).await else { return };
    let codes = [301u16, 302, 303, 307, 308];
    let mut subs = Vec::new();
    for code in codes {
        subs.push(create_ok(&app, &format!("{}/r/{code}", target.base)).await);
    }
    for (code, sub) in codes.iter().zip(&subs) {
        let delivery = failed_ping(&app, sub).await;
        let attempts = delivery["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), ATTEMPTS, "{delivery}");
        for a in attempts {
            assert_eq!(a["status_code"], *code, "{a}");
            assert_eq!(a["error_class"], "http_status", "{a}");
        }
        let r = app.post_as(&app.subscribe_key, format!("/webhooks/{sub}/test"), Some(&json!({}))).await;
        let outcome: Value = r.json().await.unwrap();
        assert_eq!(outcome["status_code"], *code, "{outcome}");
        assert_eq!(outcome["success"], false);
        // One request per attempt and one for the test: the redirect was not followed, not even to the target.
        assert_eq!(target.hits(&format!("/r/{code}")), ATTEMPTS + 1);
    }
    assert_eq!(target.hits("/steal"), 0);
    assert_eq!(trap.connections(), 0, "no redirect was followed to the forbidden address");
    eprintln!("redirects ({store:?}): {codes:?} recorded with their status, 0 connections to 127.0.0.2");
}

crate::each_store!(redirects_to_forbidden_addresses_are_not_followed);
