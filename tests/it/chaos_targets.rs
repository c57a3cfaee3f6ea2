//! Webhook targets that misbehave on purpose, one listener on 127.0.0.1 per behaviour, for the receiver-chaos
//! suite (`tests/it/chaos.rs`) and its long form (`bench/chaos.rs`, which includes this file):
//!
//! - `healthy` answers 200 at once and notes when each organization event arrived (latency);
//! - `slow` answers 200 after a delay shorter than hsda's delivery timeout;
//! - `hang` (raw TCP) reads the request and never answers, until hsda hangs up;
//! - `reset` (raw TCP) reads the request head and resets the connection (`SO_LINGER` 0: RST, not FIN);
//! - `huge` answers 200 with an endless body and notes how much it had produced when hsda hung up;
//! - `redirect` answers 301/302/303/307/308 to `/elsewhere` (which counts visits: redirects must not be followed);
//! - `flaky` answers 500/502/503/504 or 200 at random, from a seeded generator (the run can be replayed).
//!
//! Every target notes, per `webhook-id`, what it answered to each request, so a test can compare hsda's
//! attempt log with what the targets really did.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One kind of target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Behaviour {
    Healthy,
    Slow,
    Hang,
    Reset,
    Huge,
    Redirect,
    Flaky,
}

impl Behaviour {
    pub const ALL: [Behaviour; 7] = [
        Behaviour::Healthy,
        Behaviour::Slow,
        Behaviour::Hang,
        Behaviour::Reset,
        Behaviour::Huge,
        Behaviour::Redirect,
        Behaviour::Flaky,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Healthy => "healthy",
            Behaviour::Slow => "slow",
            Behaviour::Hang => "hang",
            Behaviour::Reset => "reset",
            Behaviour::Huge => "huge",
            Behaviour::Redirect => "redirect",
            Behaviour::Flaky => "flaky",
        }
    }
}

/// What a target did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answered with this status.
    Status(u16),
    /// Reset the connection after reading the request head.
    Reset,
    /// Never answered; hsda hung up after this long (`None`: still open when the target stopped waiting).
    Hung(Option<Duration>),
}

/// How the targets behave.
#[derive(Debug, Clone, Copy)]
pub struct ChaosSettings {
    /// Seed of the `flaky` and `redirect` targets' choices.
    pub seed: u64,
    /// How long `slow` waits before answering.
    pub slow_delay: Duration,
    /// The share of `flaky` answers that are 5xx.
    pub flaky_failure_rate: f64,
    /// How long `hang` keeps a connection before giving up itself (hsda must hang up long before).
    pub hang_limit: Duration,
    /// The most `huge` ever sends in one body (it is "endless" in practice).
    pub huge_limit_bytes: u64,
}

impl Default for ChaosSettings {
    fn default() -> Self {
        ChaosSettings {
            seed: 4,
            slow_delay: Duration::from_millis(300),
            flaky_failure_rate: 0.5,
            hang_limit: Duration::from_secs(120),
            huge_limit_bytes: 8 << 30,
        }
    }
}

/// One endless body that hsda stopped reading: how much had been produced, and after how long.
#[derive(Debug, Clone, Copy)]
pub struct HugeBody {
    pub bytes: u64,
    pub open_for: Duration,
}

#[derive(Default)]
struct Log {
    answers: Mutex<HashMap<(Behaviour, String), Vec<Answer>>>,
    /// `healthy`: when each organization event arrived, by organization id (first arrival only).
    arrivals: Mutex<HashMap<String, Instant>>,
    huge_bodies: Mutex<Vec<HugeBody>>,
    elsewhere: AtomicU64,
    /// Requests received so far (counted on arrival, before any answer), per target.
    arrived: Mutex<HashMap<Behaviour, usize>>,
}

impl Log {
    fn arrive(&self, behaviour: Behaviour) {
        *self.arrived.lock().unwrap().entry(behaviour).or_default() += 1;
    }

    fn note(&self, behaviour: Behaviour, webhook_id: String, answer: Answer) {
        self.answers.lock().unwrap().entry((behaviour, webhook_id)).or_default().push(answer);
    }
}

/// The running targets; they stop when this is dropped.
pub struct ChaosTargets {
    urls: HashMap<Behaviour, String>,
    log: Arc<Log>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ChaosTargets {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct Shared {
    log: Arc<Log>,
    settings: ChaosSettings,
    rng: Arc<Mutex<ChaCha8Rng>>,
}

fn webhook_id(headers: &HeaderMap) -> String {
    headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

async fn healthy(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = Instant::now();
    s.log.arrive(Behaviour::Healthy);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        && v["type"].as_str().is_some_and(|t| t.starts_with("organization."))
        && let Some(id) = v["data"]["id"].as_str()
    {
        s.log.arrivals.lock().unwrap().entry(id.to_string()).or_insert(now);
    }
    s.log.note(Behaviour::Healthy, webhook_id(&headers), Answer::Status(200));
    StatusCode::OK
}

async fn slow(State(s): State<Shared>, headers: HeaderMap, _body: Bytes) -> StatusCode {
    s.log.arrive(Behaviour::Slow);
    tokio::time::sleep(s.settings.slow_delay).await;
    s.log.note(Behaviour::Slow, webhook_id(&headers), Answer::Status(200));
    StatusCode::OK
}

/// Notes, when dropped (hsda hung up, or the limit was reached), how much of an endless body was produced.
struct HugeGuard {
    log: Arc<Log>,
    bytes: u64,
    started: Instant,
}

impl Drop for HugeGuard {
    fn drop(&mut self) {
        let body = HugeBody { bytes: self.bytes, open_for: self.started.elapsed() };
        self.log.huge_bodies.lock().unwrap().push(body);
    }
}

async fn huge(State(s): State<Shared>, headers: HeaderMap, _body: Bytes) -> Response {
    const CHUNK: usize = 64 * 1024;
    s.log.arrive(Behaviour::Huge);
    s.log.note(Behaviour::Huge, webhook_id(&headers), Answer::Status(200));
    let limit = s.settings.huge_limit_bytes;
    let guard = HugeGuard { log: s.log.clone(), bytes: 0, started: Instant::now() };
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures::stream::unfold(guard, move |mut guard| {
        let chunk = chunk.clone();
        async move {
            if guard.bytes >= limit {
                return None;
            }
            guard.bytes += chunk.len() as u64;
            Some((Ok::<_, Infallible>(chunk), guard))
        }
    });
    (StatusCode::OK, [("content-type", "text/plain")], Body::from_stream(stream)).into_response()
}

async fn redirect(State(s): State<Shared>, headers: HeaderMap, _body: Bytes) -> Response {
    const CODES: [u16; 5] = [301, 302, 303, 307, 308];
    s.log.arrive(Behaviour::Redirect);
    let code = CODES[s.rng.lock().unwrap().gen_range(0..CODES.len())];
    s.log.note(Behaviour::Redirect, webhook_id(&headers), Answer::Status(code));
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::FOUND);
    (status, [("location", "/elsewhere")], "moved").into_response()
}

async fn elsewhere(State(s): State<Shared>, _body: Bytes) -> StatusCode {
    s.log.elsewhere.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

async fn flaky(State(s): State<Shared>, headers: HeaderMap, _body: Bytes) -> StatusCode {
    const FAILURES: [u16; 4] = [500, 502, 503, 504];
    s.log.arrive(Behaviour::Flaky);
    let code = {
        let mut rng = s.rng.lock().unwrap();
        if rng.gen_bool(s.settings.flaky_failure_rate) { FAILURES[rng.gen_range(0..FAILURES.len())] } else { 200 }
    };
    s.log.note(Behaviour::Flaky, webhook_id(&headers), Answer::Status(code));
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Reads a request head (bounded in size and time); returns its `webhook-id` header, if any.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(2048);
    let mut buf = [0u8; 4096];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    let text = String::from_utf8_lossy(&head);
    text.lines()
        .find_map(|line| line.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("webhook-id")))
        .map(|(_, v)| v.trim().to_string())
}

async fn hang_connection(mut stream: TcpStream, log: Arc<Log>, limit: Duration) {
    let accepted = Instant::now();
    let id = read_head(&mut stream).await.unwrap_or_default();
    log.arrive(Behaviour::Hang);
    let mut buf = [0u8; 4096];
    // Swallow whatever comes until hsda hangs up (EOF or error), but never past `limit`.
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    log.note(Behaviour::Hang, id, Answer::Hung(closed.then(|| accepted.elapsed())));
}

async fn reset_connection(mut stream: TcpStream, log: Arc<Log>) {
    let id = read_head(&mut stream).await.unwrap_or_default();
    log.arrive(Behaviour::Reset);
    log.note(Behaviour::Reset, id, Answer::Reset);
    // Linger 0: closing sends RST instead of FIN, and does not block.
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn raw_listener(
    behaviour: Behaviour,
    log: Arc<Log>,
    settings: ChaosSettings,
) -> std::io::Result<(String, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let log = log.clone();
                    match behaviour {
                        Behaviour::Hang => connections.spawn(hang_connection(stream, log, settings.hang_limit)),
                        _ => connections.spawn(reset_connection(stream, log)),
                    };
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok((url, task))
}

impl ChaosTargets {
    pub async fn start(settings: ChaosSettings) -> std::io::Result<ChaosTargets> {
        let log = Arc::new(Log::default());
        let shared =
            Shared { log: log.clone(), settings, rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(settings.seed))) };
        let mut urls = HashMap::new();
        let mut tasks = Vec::new();
        for behaviour in Behaviour::ALL {
            let (url, task) = match behaviour {
                Behaviour::Hang | Behaviour::Reset => raw_listener(behaviour, log.clone(), settings).await?,
                _ => {
                    let route = match behaviour {
                        Behaviour::Healthy => post(healthy),
                        Behaviour::Slow => post(slow),
                        Behaviour::Huge => post(huge),
                        Behaviour::Redirect => post(redirect),
                        _ => post(flaky),
                    };
                    let app = Router::new()
                        .route("/hook", route)
                        .route("/elsewhere", post(elsewhere).get(elsewhere))
                        .with_state(shared.clone());
                    let listener = TcpListener::bind("127.0.0.1:0").await?;
                    let url = format!("http://{}/hook", listener.local_addr()?);
                    let task = tokio::spawn(async move {
                        let _ = axum::serve(listener, app).await;
                    });
                    (url, task)
                }
            };
            urls.insert(behaviour, url);
            tasks.push(task);
        }
        Ok(ChaosTargets { urls, log, tasks })
    }

    pub fn url(&self, behaviour: Behaviour) -> &str {
        &self.urls[&behaviour]
    }

    /// What `behaviour` answered to each request of the delivery `webhook_id`, in order.
    pub fn answers(&self, behaviour: Behaviour, webhook_id: &str) -> Vec<Answer> {
        self.log.answers.lock().unwrap().get(&(behaviour, webhook_id.to_string())).cloned().unwrap_or_default()
    }

    /// How many requests `behaviour` received in all (answered or not yet).
    pub fn requests(&self, behaviour: Behaviour) -> usize {
        self.log.arrived.lock().unwrap().get(&behaviour).copied().unwrap_or(0)
    }

    /// When the healthy target first received an event about organization `id`.
    pub fn arrival(&self, id: &str) -> Option<Instant> {
        self.log.arrivals.lock().unwrap().get(id).copied()
    }

    /// The endless bodies hsda stopped reading so far.
    pub fn huge_bodies(&self) -> Vec<HugeBody> {
        self.log.huge_bodies.lock().unwrap().clone()
    }

    /// Visits to `/elsewhere`, where every redirect points.
    pub fn redirects_followed(&self) -> u64 {
        self.log.elsewhere.load(Ordering::Relaxed)
    }
}

/// The `p`-quantile (0..=1) of sorted durations (nearest rank); zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

// ---------------------------------------------------------------------------------------------------------
// Auditing hsda's delivery log against what the targets did

/// What the audit expects of hsda.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// hsda's retry schedule (`HSDA_RETRY_SCHEDULE`), before jitter.
    pub delays: Vec<Duration>,
    /// hsda's delivery timeout.
    pub timeout: Duration,
    pub slow_delay: Duration,
}

impl Expectations {
    pub fn max_attempts(&self) -> usize {
        self.delays.len() + 1
    }
}

/// One subscription's deliveries, summed up.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    pub deliveries: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub unfinished: usize,
    pub attempts: usize,
    /// `error_class` of every failed attempt, counted.
    pub error_classes: std::collections::BTreeMap<String, usize>,
}

/// Every delivery of subscription `sub` (paged) as listed (`attempts` is the counter) and as shown (`attempts`
/// is the log).
async fn deliveries_of(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    sub: &str,
) -> anyhow::Result<Vec<(Value, Value)>> {
    let mut all = Vec::new();
    for page in 1..=1000 {
        let url = format!("{base}/webhooks/{sub}/deliveries?per_page=1000&page={page}");
        let v: Value = client.get(url).bearer_auth(key).send().await?.error_for_status()?.json().await?;
        let contents = v["contents"].as_array().cloned().unwrap_or_default();
        if contents.is_empty() {
            break;
        }
        for d in contents {
            let url = format!("{base}/deliveries/{}", d["id"].as_str().unwrap_or_default());
            let shown = client.get(url).bearer_auth(key).send().await?.error_for_status()?.json().await?;
            all.push((d, shown));
        }
    }
    Ok(all)
}

/// Whether deliveries of `sub` are still waiting for an attempt (`pending` or `retrying`).
pub async fn unfinished(client: &reqwest::Client, base: &str, key: &str, sub: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for status in ["pending", "retrying"] {
        let url = format!("{base}/webhooks/{sub}/deliveries?status={status}&per_page=1");
        let v: Value = client.get(url).bearer_auth(key).send().await?.error_for_status()?.json().await?;
        total += v["total_items"].as_u64().unwrap_or(0);
    }
    Ok(total)
}

fn millis_between(a: &Value, b: &Value) -> Option<i64> {
    let parse = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok();
    Some((parse(b)? - parse(a)?).num_milliseconds())
}

/// Checks every delivery of the subscription `sub` to `behaviour`'s target against what that target did and
/// what the retry schedule allows; returns the summary and every discrepancy found (empty: all as expected).
pub async fn audit(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    sub: &str,
    behaviour: Behaviour,
    targets: &ChaosTargets,
    expect: &Expectations,
) -> anyhow::Result<(Audit, Vec<String>)> {
    let mut summary = Audit::default();
    let mut problems = Vec::new();
    let name = behaviour.name();
    for (listed, d) in deliveries_of(client, base, key, sub).await? {
        summary.deliveries += 1;
        let id = d["id"].as_str().unwrap_or_default().to_string();
        let status = d["status"].as_str().unwrap_or_default();
        let attempts = d["attempts"].as_array().cloned().unwrap_or_default();
        summary.attempts += attempts.len();
        match status {
            "succeeded" => summary.succeeded += 1,
            "failed" => summary.failed += 1,
            _ => summary.unfinished += 1,
        }
        let mut problem = |what: String| problems.push(format!("{name} {id}: {what}"));
        if listed["attempts"].as_i64() != Some(attempts.len() as i64) {
            problem(format!("attempts counter {} but {} attempts logged", listed["attempts"], attempts.len()));
        }
        for a in &attempts {
            if let Some(class) = a["error_class"].as_str() {
                *summary.error_classes.entry(class.to_string()).or_default() += 1;
            }
        }
        // What hsda logged must be what the target did, attempt by attempt.
        let answers = targets.answers(behaviour, &id);
        if answers.len() != attempts.len() {
            problem(format!("{} attempts logged, the target saw {} requests", attempts.len(), answers.len()));
        }
        for (i, (a, answer)) in attempts.iter().zip(&answers).enumerate() {
            let code = a["status_code"].as_u64().map(|c| c as u16);
            let class = a["error_class"].as_str();
            let duration = Duration::from_millis(a["duration_ms"].as_u64().unwrap_or(0));
            let ok = match answer {
                Answer::Status(s) => code == Some(*s) && (class.is_none() == (200..300).contains(s)),
                // The connection was made, then dropped: `read`, not `connect` (nobody reached).
                Answer::Reset => code.is_none() && class == Some("read"),
                Answer::Hung(_) => {
                    code.is_none()
                        && class == Some("timeout")
                        && duration >= expect.timeout.mul_f64(0.9)
                        && duration < expect.timeout + Duration::from_secs(2)
                }
            };
            if !ok {
                let logged = format!("{code:?} {class:?} {duration:?}");
                problem(format!("attempt {} logged {logged} but the target did {answer:?}", i + 1));
            }
        }
        // The final state follows from the answers and the schedule.
        let last_ok = matches!(answers.last(), Some(Answer::Status(s)) if (200..300).contains(s));
        let want = if last_ok { "succeeded" } else { "failed" };
        if status != want {
            problem(format!("status {status}, expected {want} after {answers:?}"));
        }
        if want == "failed" && attempts.len() != expect.max_attempts() {
            problem(format!("failed after {} attempts, the schedule allows {}", attempts.len(), expect.max_attempts()));
        }
        if last_ok
            && answers[..answers.len() - 1].iter().any(|a| matches!(a, Answer::Status(s) if (200..300).contains(s)))
        {
            problem("attempted again after a success".into());
        }
        // Each retry waited at least its (jittered: -20 %) pause; `at` is when an attempt ended.
        for (i, pair) in attempts.windows(2).enumerate() {
            let (Some(gap), Some(pause)) = (millis_between(&pair[0]["at"], &pair[1]["at"]), expect.delays.get(i))
            else {
                continue;
            };
            let least = (pause.as_secs_f64() * 800.0) as i64 - 5;
            if gap < least {
                problem(format!("retry {} came {gap} ms after the previous attempt, before its pause", i + 1));
            }
        }
        match behaviour {
            Behaviour::Slow if status == "succeeded" => {
                let took = attempts.last().and_then(|a| a["duration_ms"].as_u64()).unwrap_or(0);
                if took < expect.slow_delay.as_millis() as u64 * 9 / 10 {
                    problem(format!("a slow answer took only {took} ms"));
                }
            }
            Behaviour::Huge => {
                let kept = attempts.last().and_then(|a| a["response_body"].as_str()).map(str::len).unwrap_or(0);
                if kept == 0 || kept > 4096 {
                    problem(format!("kept {kept} bytes of an endless body (an excerpt of at most 4096 expected)"));
                }
            }
            _ => {}
        }
    }
    Ok((summary, problems))
}

// ---------------------------------------------------------------------------------------------------------
// Driving writes and timing the healthy target

/// PUTs `count` new organizations at `per_second`, then waits (bounded by `limit`) until the healthy target
/// received each one's event; returns the latencies (just before the PUT -> arrival), sorted, and how many
/// never arrived. A write that fails is an error.
pub async fn paced_writes(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    targets: &ChaosTargets,
    count: usize,
    per_second: f64,
    limit: Duration,
) -> anyhow::Result<(Vec<Duration>, usize)> {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second.max(0.1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..count {
        ticker.tick().await;
        let (client, base, key) = (client.clone(), base.to_string(), key.to_string());
        writes.spawn(async move {
            let id = uuid::Uuid::new_v4().to_string();
            let started = Instant::now();
            let body = serde_json::json!({"name": format!("Chaos organization {i}"), "description": "chaos"});
            let r = client.put(format!("{base}/organizations/{id}")).bearer_auth(&key).json(&body).send().await?;
            anyhow::ensure!(r.status().is_success(), "PUT /organizations/{id} -> {}", r.status());
            Ok((id, started))
        });
    }
    let mut started = Vec::with_capacity(count);
    while let Some(done) = writes.join_next().await {
        started.push(done??);
    }
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && started.iter().any(|(id, _)| targets.arrival(id).is_none()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies: Vec<Duration> =
        started.iter().filter_map(|(id, at)| targets.arrival(id).map(|arrived| arrived - *at)).collect();
    latencies.sort();
    let missing = count - latencies.len();
    Ok((latencies, missing))
}
