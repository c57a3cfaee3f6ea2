//! A real HTTP receiver on 127.0.0.1 for webhook tests: records every request (with its arrival time) and
//! answers with a scripted sequence of statuses (then 200). Verification challenges
//! (`webhook.verification`) are answered as [`Challenges`] says. A receiver can also hold requests unanswered
//! until the test lets them through ([`Receiver::hold`]). Signatures are checked with the independent
//! `standardwebhooks` crate, never with hsda's own signing code.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    }

    /// Verifies the Standard Webhooks signature with an independent implementation.
    pub fn verify(&self, secret: &str) -> bool {
        let Ok(wh) = standardwebhooks::Webhook::new(secret) else { return false };
        wh.verify(&self.body, &self.headers).is_ok()
    }
}

/// How the receiver answers a `webhook.verification` challenge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Challenges {
    /// Like any request: the script, then 200 "ok" (which does not verify).
    #[default]
    Ignore,
    /// 200 with `{"challenge": "<the challenge>"}`.
    Echo,
    /// 200 with a different challenge.
    EchoWrong,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    script: VecDeque<(u16, Option<String>)>,
    challenges: Challenges,
    /// While set, each request waits for a permit before it is answered (in arrival order).
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    pub url: String,
}

async fn record(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let challenge = serde_json::from_slice::<Value>(&body)
        .ok()
        .filter(|v| v["type"] == "webhook.verification")
        .and_then(|v| v["challenge"].as_str().map(str::to_string));
    let gate = {
        let mut guard = inner.lock().unwrap();
        guard.received.push(Received { headers, body, at: Instant::now() });
        guard.gate.clone()
    };
    if let Some(gate) = gate {
        gate.acquire_owned().await.expect("the gate stays open").forget();
    }
    let mut guard = inner.lock().unwrap();
    match (guard.challenges, challenge) {
        (Challenges::Echo, Some(c)) => return axum::Json(serde_json::json!({ "challenge": c })).into_response(),
        (Challenges::EchoWrong, Some(_)) => {
            return axum::Json(serde_json::json!({ "challenge": "not-the-one" })).into_response();
        }
        _ => {}
    }
    let (status, retry_after) = guard.script.pop_front().unwrap_or((200, None));
    let mut response = (StatusCode::from_u16(status).unwrap(), "ok").into_response();
    if let Some(v) = retry_after {
        response.headers_mut().insert("retry-after", v.parse().unwrap());
    }
    response
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().route("/hook", post(record)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { inner, url }
    }

    /// The next requests get these statuses (with an optional Retry-After), in order.
    pub fn script(&self, statuses: &[(u16, Option<&str>)]) {
        let mut guard = self.inner.lock().unwrap();
        guard.script = statuses.iter().map(|(s, r)| (*s, r.map(str::to_string))).collect();
    }

    /// From now on requests are recorded on arrival but wait unanswered until [`Receiver::let_through`] or
    /// [`Receiver::open`] lets them go.
    pub fn hold(&self) {
        self.inner.lock().unwrap().gate = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Lets the next `n` held requests (in arrival order) be answered.
    pub fn let_through(&self, n: usize) {
        if let Some(gate) = &self.inner.lock().unwrap().gate {
            gate.add_permits(n);
        }
    }

    /// Answers every held request and holds no more.
    pub fn open(&self) {
        if let Some(gate) = self.inner.lock().unwrap().gate.take() {
            gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
        }
    }

    pub fn answer_challenges(&self, how: Challenges) {
        self.inner.lock().unwrap().challenges = how;
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Waits (bounded) until `pred` holds for what was received; returns it.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        self.wait_for_within(what, Duration::from_secs(20), pred).await
    }

    pub async fn wait_for_within(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; received {} requests",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn of_type(received: &[Received], event_type: &str) -> Vec<Received> {
        received.iter().filter(|r| r.json()["type"] == event_type).cloned().collect()
    }

    /// The `data.id`s of the received events of `event_type`.
    pub fn object_ids(received: &[Received], event_type: &str) -> std::collections::HashSet<String> {
        Receiver::of_type(received, event_type)
            .iter()
            .filter_map(|x| x.json()["data"]["id"].as_str().map(str::to_string))
            .collect()
    }
}
