//! The webhook worker: the dispatcher turns new events into deliveries (one per matching subscription),
//! and the delivery loop claims due deliveries and attempts them — each subscription with its own bounded
//! concurrency, so a slow or hanging target only ever holds its own slots. Woken by commits (no polling
//! sleeps in the hot path); a one-second fallback tick covers changes made by other processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::client::WebhookClient;
use super::retry::{RetrySchedule, retry_after};
use super::signature::{Ed25519SigningKey, Signer, WebhookSecret, signature_header};
use crate::store::webhooks::{Attempt, AttemptOutcome, AttemptRecord, Delivery, Subscription};
use crate::store::{Db, now_text, timestamp_text};

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The base URL thin payloads point at.
    pub public_url: String,
    pub retry: RetrySchedule,
    /// A subscription failing for this long is disabled.
    pub disable_after_seconds: i64,
    /// How long a claimed delivery stays ours before another worker may take it.
    pub lease_seconds: i64,
    /// Deliveries in flight in this process, over all subscriptions.
    pub max_in_flight: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            public_url: "http://127.0.0.1:8080".into(),
            retry: RetrySchedule::default(),
            disable_after_seconds: 5 * 24 * 3600,
            lease_seconds: 120,
            max_in_flight: 512,
        }
    }
}

pub struct Worker {
    db: Db,
    client: WebhookClient,
    config: WorkerConfig,
    per_subscription: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Arc<Semaphore>,
    /// Attempt results on their way to the recorder, which commits them in batches.
    results: tokio::sync::mpsc::UnboundedSender<(Delivery, AttemptRecord)>,
    results_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(Delivery, AttemptRecord)>>>,
}

const CLAIM_BATCH: i64 = 256;
const DISPATCH_BATCH: i64 = 500;

impl Worker {
    pub fn new(db: Db, client: WebhookClient, config: WorkerConfig) -> Arc<Worker> {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
        let (results, results_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Worker {
            db,
            client,
            config,
            per_subscription: Mutex::new(HashMap::new()),
            in_flight,
            results,
            results_rx: Mutex::new(Some(results_rx)),
        })
    }

    pub fn client(&self) -> &WebhookClient {
        &self.client
    }

    /// Runs until `stop` is cancelled, then waits for deliveries in flight to finish.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let recorder = self.results_rx.lock().unwrap_or_else(|p| p.into_inner()).take().map(|rx| {
            let db = self.db.clone();
            let disable_after = self.config.disable_after_seconds;
            tokio::spawn(record_in_batches(db, rx, disable_after))
        });
        if let Err(e) = self.db.release_leases_if_sole_worker().await {
            tracing::warn!(error = %e, "could not release leases left by a previous run");
        }
        let mut changes = self.db.watch_changes();
        loop {
            if stop.is_cancelled() {
                break;
            }
            let busy = match self.step().await {
                Ok(busy) => busy,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook worker step failed; retrying shortly");
                    false
                }
            };
            if busy {
                continue;
            }
            let wait = self.until_next_due().await;
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
        }
        // Drain: every permit back means nothing is in flight; then the recorder writes what is left.
        let _ = self.in_flight.acquire_many(self.config.max_in_flight as u32).await;
        if let Some(recorder) = recorder {
            let _ = self.results.send((Delivery::stop_marker(), AttemptRecord::stop_marker()));
            let _ = recorder.await;
        }
    }

    /// One round: dispatch new events, then claim and start due deliveries. True if there may be more.
    pub async fn step(self: &Arc<Self>) -> anyhow::Result<bool> {
        let subscriptions = self.db.live_subscriptions().await?;
        let (read, _) = self.db.dispatch_batch(&subscriptions, &self.config.public_url, DISPATCH_BATCH).await?;
        let free = self.in_flight.available_permits() as i64;
        let claimed = if free > 0 {
            self.db.claim_due(free.min(CLAIM_BATCH), self.config.lease_seconds).await?
        } else {
            Vec::new()
        };
        let count = claimed.len() as i64;
        for delivery in claimed {
            let Ok(permit) = self.in_flight.clone().acquire_owned().await else { break };
            let worker = self.clone();
            tokio::spawn(async move {
                worker.attempt(delivery).await;
                drop(permit);
            });
        }
        Ok(read as i64 == DISPATCH_BATCH || count == CLAIM_BATCH)
    }

    async fn until_next_due(&self) -> Duration {
        let fallback = Duration::from_secs(1);
        let Ok(Some(next)) = self.db.next_due().await else { return fallback };
        match chrono::DateTime::parse_from_rfc3339(&next) {
            Ok(t) => {
                (t.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO).min(fallback)
            }
            Err(_) => fallback,
        }
    }

    fn slots_of(&self, sub: &Subscription) -> Arc<Semaphore> {
        let mut map = self.per_subscription.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(sub.id.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(sub.max_concurrency.clamp(1, 1000) as usize)))
            .clone()
    }

    /// Attempts one claimed delivery and records the outcome.
    async fn attempt(&self, delivery: Delivery) {
        let sub = match self.db.subscription(&delivery.subscription_id).await {
            Ok(Some(sub)) => sub,
            Ok(None) => return, // deleted meanwhile; its deliveries went with it
            Err(e) => {
                tracing::warn!(error = %e, "loading subscription failed");
                return;
            }
        };
        if sub.status == "disabled" || sub.status == "pending" {
            // Held until the owner enables (or verifies) it; the lease expiring makes it claimable again.
            return;
        }
        let slots = self.slots_of(&sub);
        let Ok(_slot) = slots.acquire().await else { return };
        let response = send(&self.client, &sub, &delivery.id, &delivery.body).await;
        let record = self.judge(&delivery, response);
        if self.results.send((delivery, record)).is_err() {
            tracing::error!("the attempt recorder stopped; the lease will expire and the delivery will be retried");
        }
    }

    fn judge(&self, delivery: &Delivery, r: super::client::Response) -> AttemptRecord {
        let now = chrono::Utc::now();
        let attempt = Attempt {
            at: timestamp_text(now),
            status_code: r.status_code.map(i64::from),
            duration_ms: r.duration.as_millis() as i64,
            error: r.error.clone(),
            error_class: r.error_class.map(str::to_string),
            response_body: r.body_excerpt.clone(),
        };
        let outcome = match r.status_code {
            Some(code) if (200..300).contains(&code) => AttemptOutcome::Succeeded,
            Some(410) => AttemptOutcome::Gone,
            code => {
                let made = (delivery.attempts + 1) as u32;
                let honoured = match (code, &r.retry_after) {
                    (Some(429 | 503), Some(v)) => retry_after(v, std::time::SystemTime::now()),
                    _ => None,
                };
                let delay = match honoured {
                    Some(d) if (made as usize) < self.config.retry.max_attempts() => Some(d),
                    _ => self.config.retry.next_delay(made, &mut rand::thread_rng()),
                };
                match delay {
                    Some(d) => AttemptOutcome::Retry {
                        at: timestamp_text(
                            now + chrono::Duration::from_std(d).unwrap_or_else(|_| chrono::Duration::seconds(1)),
                        ),
                    },
                    None => AttemptOutcome::Failed,
                }
            }
        };
        AttemptRecord { attempt, outcome }
    }
}

/// The signers of a subscription right now: its secret, plus the previous one during a rotation's grace.
pub fn signers(sub: &Subscription) -> Vec<Signer> {
    let mut out = Vec::new();
    if sub.signing == "ed25519" {
        if let Ok(key) = Ed25519SigningKey::parse(&sub.secret) {
            out.push(Signer::Ed25519(key));
        }
        return out;
    }
    if let Ok(secret) = WebhookSecret::parse(&sub.secret) {
        out.push(Signer::Hmac(secret));
    }
    let in_grace = sub.previous_secret_until.as_deref().is_some_and(|until| until > now_text().as_str());
    if in_grace && let Some(previous) = sub.previous_secret.as_deref().and_then(|s| WebhookSecret::parse(s).ok()) {
        out.push(Signer::Hmac(previous));
    }
    out
}

/// Signs and POSTs one delivery body to a subscription's target.
pub async fn send(client: &WebhookClient, sub: &Subscription, message_id: &str, body: &str) -> super::client::Response {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = signature_header(&signers(sub), message_id, timestamp, body.as_bytes());
    let mut headers: Vec<(String, String)> =
        sub.headers.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect();
    headers.push(("webhook-id".into(), message_id.to_string()));
    headers.push(("webhook-timestamp".into(), timestamp.to_string()));
    headers.push(("webhook-signature".into(), signature));
    client.post(&sub.url, &headers, body.to_string()).await
}

/// Commits attempt results in batches: whatever arrived while the previous batch was being written goes
/// into the next transaction. A failed batch is not retried here: its deliveries' leases expire and they
/// are attempted again (at-least-once).
async fn record_in_batches(
    db: Db,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(Delivery, AttemptRecord)>,
    disable_after_seconds: i64,
) {
    const MAX_BATCH: usize = 1000;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        let mut stop = first.0.id.is_empty();
        if !stop {
            batch.push(first);
        }
        while batch.len() < MAX_BATCH
            && let Ok(next) = rx.try_recv()
        {
            if next.0.id.is_empty() {
                stop = true;
                continue;
            }
            batch.push(next);
        }
        if let Err(e) = db.record_attempts(&batch, disable_after_seconds).await {
            tracing::error!(error = %e, attempts = batch.len(), "recording attempts failed; their deliveries will be retried");
        }
        batch.clear();
        if stop {
            break;
        }
    }
}
