//! The webhook worker: the dispatcher turns new events into deliveries (one per matching immediate
//! subscription), the digest builder turns a scheduled subscription's events into one delivery per period,
//! pending subscriptions are sent their verification challenge, and the delivery loop claims due deliveries
//! and attempts them — each subscription with its own bounded concurrency and optional rate limit, so a
//! slow, hanging or throttled target only ever holds its own slots. Woken by commits (no polling sleeps in
//! the hot path); a one-second fallback tick covers changes made by other processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::client::WebhookClient;
use super::rate::{Decision, RateLimiter};
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
    /// Each subscription's deliveries in this process: its slots and its claimed deliveries waiting for one.
    lanes: Mutex<HashMap<String, Lane>>,
    /// Set when the worker stops: lanes start nothing more.
    stopping: std::sync::atomic::AtomicBool,
    limiter: Mutex<RateLimiter>,
    in_flight: Arc<Semaphore>,
    /// Woken whenever an attempt gives back its slot and in-flight permit: what waited for them may start.
    slot_freed: tokio::sync::Notify,
    /// Attempt results on their way to the recorder, which commits them in batches.
    results: tokio::sync::mpsc::UnboundedSender<(Delivery, AttemptRecord)>,
    results_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(Delivery, AttemptRecord)>>>,
    /// When this worker last claimed (see [`CLAIM_SPACING`]).
    last_claim: Mutex<Option<tokio::time::Instant>>,
    /// Retries this process keeps to send itself (see [`HOLD_RETRIES_WITHIN`]): delivery id -> the lease
    /// it holds. Reserved when an attempt is judged; gone when its timer fires, or when its result could not
    /// be recorded; those left when the worker stops have their leases released.
    held: Mutex<HashMap<String, String>>,
    metrics: Arc<crate::metrics::Metrics>,
}

const CLAIM_BATCH: i64 = 256;
/// Claims are at least this far apart. What a claim takes is mostly retries (this process's new deliveries
/// come handed over, unclaimed), whose times are jittered apart: claiming each as it came due made a write
/// transaction per retry, each one holding up the writes beside it (a failing target's 340 retries a second
/// raised a healthy target's p99 by half). A retry starting up to this much later costs nothing.
const CLAIM_SPACING: Duration = Duration::from_millis(25);
/// A retry due within this long is kept by the process whose attempt failed: recording the failure leases
/// the delivery to it until the retry is due plus a lease, and it sends the retry from memory when due. A
/// claim is a write transaction (holding SQLite's write lock, and an fsync on both stores), and a failing
/// target's jittered retries came due one by one, each wanting a claim. Should the process die, the lease
/// runs out and any process claims the retry then (on SQLite, the next start releases it at once).
const HOLD_RETRIES_WITHIN: Duration = Duration::from_secs(60);
/// At most this many retries are held in memory at once (bodies included); the rest are left to claims.
const MAX_HELD: usize = 4096;
/// A lane keeps at most this many times its `max_concurrency` claimed deliveries waiting for a slot.
const LANE_DEPTH: usize = 4;
/// A lane holds at most this many times its claimable depth of deliveries handed over by dispatch (those
/// dispatched before it was known full); more go back to the store, so that a hanging target's lane never
/// grows with the directory's changes. Claimed deliveries fill a lane to its depth only.
const LANE_OVERFLOW: usize = 4;
/// A lane whose target keeps up holds at most this many deliveries handed over by dispatch (see
/// [`Lane::keeps_up`]).
const HANDED_OVER_MAX: usize = 2048;
/// A target keeps up while it answered an attempt of its lane this recently, ...
const KEEPING_UP: Duration = Duration::from_secs(1);
/// ... within this long (a timeout, a refused connection or a slow answer is no sign of keeping up).
const ANSWERS_WITHIN: Duration = Duration::from_millis(250);
/// A lane that keeps up holds about this many seconds of its target's answers handed over.
const HANDED_OVER_SECONDS: usize = 5;

/// How deliveries came to the worker ([`Worker::start`]).
#[derive(Clone, Copy)]
enum Came {
    /// Leased to this process by dispatch, before it knew the lane full.
    HandedOver,
    /// Claimed from the store (or a held retry).
    Claimed,
}
/// A delivery that waited in its lane longer than this after its claim has its lease renewed before it is
/// started: the lease (the delivery timeout plus 15 s) could otherwise run out mid-attempt and another process
/// could send it too. (Dropping it instead left it to wait for the lease to run out: a held retry behind a
/// slow target was sent about 30 s late.)
const START_WITHIN: Duration = Duration::from_secs(10);

/// A subscription's deliveries in this process: at most `max_concurrency` in flight, the next few claimed ones
/// waiting, so that a finished attempt starts the next at once instead of after another claim.
struct Lane {
    slots: Arc<Semaphore>,
    size: usize,
    waiting: std::collections::VecDeque<Waiting>,
    /// When its target last answered an attempt promptly (never: `None`).
    answered_at: Option<tokio::time::Instant>,
    /// Prompt answers in the second that began at `second_began`, and in the second before it.
    answers_this_second: usize,
    answers_last_second: usize,
    second_began: tokio::time::Instant,
}

impl Lane {
    /// Its claimable depth: claims fill it to this many waiting, and past it nothing more is claimed.
    fn depth(&self) -> usize {
        self.size * LANE_DEPTH
    }

    /// Whether its target keeps up (it answered an attempt within [`ANSWERS_WITHIN`], in the last
    /// [`KEEPING_UP`]): a busy lane that keeps up is handed deliveries at dispatch up to its
    /// [`Lane::handed_over_cap`]; one that does not (a hanging or slow target, or one not yet heard from), up
    /// to its handed-over allowance only, and past its depth dispatch leaves its deliveries in the store. Deliveries in memory go out at once; claimed from the store they cost a
    /// claim and their bodies rebuilt (ten busy targets: a third fewer deliveries a second on PostgreSQL).
    fn keeps_up(&self) -> bool {
        self.answered_at.is_some_and(|at| at.elapsed() < KEEPING_UP)
    }

    /// What it counts of the claim budget (`max_in_flight`): its waiting deliveries up to its depth. What a lane
    /// that keeps up holds past it was handed over, and must not keep other lanes' claims (retries, ordered
    /// subscriptions, backlogs in the store) from being made.
    fn claimed_waiting(&self) -> usize {
        self.waiting.len().min(self.depth())
    }

    /// Notes a prompt answer of its target.
    fn answered(&mut self) {
        let now = tokio::time::Instant::now();
        if now.duration_since(self.second_began) >= Duration::from_secs(1) {
            let whole_second_ago = now.duration_since(self.second_began) < Duration::from_secs(2);
            self.answers_last_second = if whole_second_ago { self.answers_this_second } else { 0 };
            self.answers_this_second = 0;
            self.second_began = now;
        }
        self.answers_this_second += 1;
        self.answered_at = Some(now);
    }

    /// What a lane that keeps up may hold handed over: about [`HANDED_OVER_SECONDS`] of its target's recent
    /// answers, so that each starts well within [`START_WITHIN`] of its lease (at least its handed-over
    /// allowance, at most [`HANDED_OVER_MAX`]).
    fn handed_over_cap(&self) -> usize {
        let rate = self.answers_last_second.max(self.answers_this_second);
        (rate * HANDED_OVER_SECONDS)
            .clamp(self.depth() * LANE_OVERFLOW, HANDED_OVER_MAX.max(self.depth() * LANE_OVERFLOW))
    }

    /// How many deliveries it keeps waiting, by how they came.
    fn keeps(&self, came: Came) -> usize {
        match came {
            Came::Claimed => self.depth(),
            Came::HandedOver if self.keeps_up() => self.handed_over_cap(),
            Came::HandedOver => self.depth() * LANE_OVERFLOW,
        }
    }

    /// Whether dispatch leaves this subscription's new deliveries in the store.
    fn full_for_dispatch(&self) -> bool {
        let waiting = self.waiting.len();
        (waiting >= self.depth() && !self.keeps_up()) || waiting >= self.handed_over_cap()
    }
}

struct Waiting {
    delivery: Delivery,
    /// Its subscription's `updated_at` when it was queued: an owner's change since (a disable and an enable,
    /// a replay) may have ended or reopened it in the store.
    queued_under: String,
    /// When the rate limiter lets it start (None: now).
    start_at: Option<tokio::time::Instant>,
    claimed_at: tokio::time::Instant,
}
const DISPATCH_BATCH: i64 = 500;

/// Why the worker loop woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The timer, the start, or more work than one round took: dispatch whatever the log holds (another
    /// process's events too) and claim due deliveries.
    Everything,
    /// A commit in this process: take what was dispatched at commit, dispatch only if some events of this
    /// process are not yet, and claim.
    Commit,
    /// An attempt finished and freed capacity: only claiming can find something new.
    SlotFreed,
}

impl Worker {
    pub fn new(
        db: Db,
        client: WebhookClient,
        config: WorkerConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Worker> {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
        let (results, results_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Worker {
            db,
            client,
            config,
            lanes: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            in_flight,
            slot_freed: tokio::sync::Notify::new(),
            last_claim: Mutex::new(None),
            held: Mutex::new(HashMap::new()),
            results,
            results_rx: Mutex::new(Some(results_rx)),
            limiter: Mutex::new(RateLimiter::default()),
            metrics,
        })
    }

    pub fn client(&self) -> &WebhookClient {
        &self.client
    }

    /// Runs until `stop` is cancelled, then waits for deliveries in flight to finish.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let recorder = self
            .results_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|rx| tokio::spawn(record_in_batches(self.clone(), rx)));
        if let Err(e) = self.db.release_leases_if_sole_worker().await {
            tracing::warn!(error = %e, "could not release leases left by a previous run");
        }
        // PostgreSQL: shows this worker alive to the others, and gives back the leases of dead ones.
        let alive_until = CancellationToken::new();
        let alive = tokio::spawn({
            let (db, until) = (self.db.clone(), alive_until.clone());
            async move { db.keep_alive(until).await }
        });
        let mut changes = self.db.watch_changes();
        // From now on, the group committers dispatch each group's events in the group's own transaction.
        self.db.dispatch_at_commit(&self.config.public_url, self.config.lease_seconds);
        let mut wake = Wake::Everything;
        loop {
            if stop.is_cancelled() {
                break;
            }
            let (more, next_due) = match self.step(wake).await {
                Ok(round) => round,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook worker step failed; retrying shortly");
                    (false, None)
                }
            };
            if more {
                wake = Wake::Everything;
                continue;
            }
            let wait = self.wait_until(next_due);
            wake = tokio::select! {
                _ = changes.changed() => Wake::Commit,
                _ = self.slot_freed.notified() => Wake::SlotFreed,
                _ = tokio::time::sleep(wait) => Wake::Everything,
                _ = stop.cancelled() => break,
            };
        }
        // Drain: commits hand over nothing more; lanes start nothing more; what is leased to this worker but not
        // started goes back to the store at once (another process claims it now, not after the attempts in
        // flight, which may take up to the delivery timeout); every permit back means nothing is in flight;
        // then the recorder writes what is left, and the retries those last results held go back too.
        self.db.stop_dispatch_at_commit();
        self.stopping.store(true, std::sync::atomic::Ordering::Release);
        self.give_back_unstarted().await;
        let _ = self.in_flight.acquire_many(self.config.max_in_flight as u32).await;
        if let Some(recorder) = recorder {
            let _ = self.results.send((Delivery::stop_marker(), AttemptRecord::stop_marker()));
            let _ = recorder.await;
        }
        self.give_back_unstarted().await;
        alive_until.cancel();
        let _ = alive.await;
    }

    /// Gives back to the store the leases of retries held for later and of deliveries still waiting in lanes
    /// (or handed over and not yet in one): another process (or the next start) claims them when due instead of
    /// when their leases would have run out.
    async fn give_back_unstarted(&self) {
        let mut leases: Vec<(String, String)> = self.held.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        // Handed over by a commit after this worker's last round: leased to it, never started.
        leases.extend(self.db.take_handed_over().into_iter().filter_map(|d| Some((d.id, d.lease_until?))));
        for lane in self.lanes.lock().unwrap_or_else(|p| p.into_inner()).values_mut() {
            let waiting = std::mem::take(&mut lane.waiting);
            leases.extend(waiting.into_iter().filter_map(|w| Some((w.delivery.id, w.delivery.lease_until?))));
        }
        if leases.is_empty() {
            return;
        }
        if let Err(e) = self.db.release_own_leases(&leases).await {
            tracing::warn!(error = %e, leases = leases.len(), "deliveries this worker had wait for their leases to run out");
        }
    }

    /// One round: dispatch new events (and start them), build due digests, start due verifications, then
    /// claim and start due deliveries (deferring those a rate limit holds back). Returns whether there may be
    /// more right away, and when the next claimable delivery is due (as last read).
    async fn step(self: &Arc<Self>, wake: Wake) -> anyhow::Result<(bool, Option<String>)> {
        // New deliveries come back already leased to this process: they start at once, without a claim. A
        // freed slot brings no new events, so it costs no dispatch transaction.
        let dispatch = match wake {
            Wake::Everything => true,
            Wake::Commit => self.db.dispatch_pending(),
            Wake::SlotFreed => false,
        };
        let (read, mut fresh) = if dispatch {
            self.db.dispatch_batch(&self.config.public_url, DISPATCH_BATCH, self.config.lease_seconds).await?
        } else {
            (0, Vec::new())
        };
        fresh.extend(self.db.take_handed_over());
        let subscriptions = self.db.subscription_snapshot().await?;
        self.start(fresh, subscriptions.clone(), Came::HandedOver).await?;
        // The snapshot tells whether a digest or a challenge is due at all, sparing the store a query
        // (and a write transaction) per round when none is.
        let now = now_text();
        let due = |at: &Option<String>| at.as_deref().is_some_and(|at| at <= now.as_str());
        if subscriptions.values().any(|s| s.schedule.is_some() && due(&s.next_digest_at)) {
            for id in self.db.due_digests(&now).await? {
                self.db.build_digest(&id, &self.config.public_url, next_digest_at).await?;
            }
        }
        let verifications = if subscriptions.values().any(|s| s.status == "pending" && due(&s.verification_due_at)) {
            self.db.claim_verifications(self.config.lease_seconds).await?
        } else {
            Vec::new()
        };
        for sub in verifications {
            let Ok(permit) = self.in_flight.clone().acquire_owned().await else { break };
            let worker = self.clone();
            tokio::spawn(async move {
                if let Err(e) = verify(&worker.db, &worker.client, &sub).await {
                    tracing::warn!(error = %e, subscription = %sub.id, "recording a verification failed");
                }
                drop(permit);
                worker.slot_freed.notify_one();
            });
        }
        // Claim what lanes have room for: a subscription whose lane is full is left out (a hanging target's
        // backlog never fills this process), and all lanes together wait for at most `max_in_flight`. A read
        // tells first whether anything is due at all, so a round with nothing to claim takes no write lock.
        let busy = self.busy_subscriptions();
        let waiting: usize =
            self.lanes.lock().unwrap_or_else(|p| p.into_inner()).values().map(Lane::claimed_waiting).sum();
        let free = self.config.max_in_flight as i64 - waiting as i64;
        // The spacing is for retries. An ordered subscription's next delivery, released by the last one's
        // outcome, is claimed at once: spaced, an ordered subscription got at most one delivery per spacing
        // (36 a second in the W6 bench). Taken before the read of what is due, so that a release recorded
        // after that read is kept for the next round.
        let next_in_order = self.db.take_next_in_order();
        let mut next_due = self.db.next_due(&busy).await?;
        let due_now = next_due.as_deref().is_some_and(|at| at <= now_text().as_str());
        let too_soon = {
            let last = self.last_claim.lock().unwrap_or_else(|p| p.into_inner());
            last.map(|at| CLAIM_SPACING.saturating_sub(at.elapsed())).filter(|wait| !wait.is_zero() && !next_in_order)
        };
        let claimed = match (free > 0 && due_now, too_soon) {
            (true, None) => {
                *self.last_claim.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
                self.db.claim_due(free.min(CLAIM_BATCH), self.config.lease_seconds, &busy).await?
            }
            (true, Some(wait)) => {
                // Come back when the spacing allows the claim.
                next_due = Some(crate::store::timestamp_text(
                    chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
                ));
                Vec::new()
            }
            (false, _) => Vec::new(),
        };
        if free <= 0 && due_now {
            // Due, but no room to claim it: a freed slot wakes the loop (or the fallback), not a time already past
            // (which would turn the loop without a pause).
            next_due = None;
        }
        let count = claimed.len() as i64;
        self.start(claimed, subscriptions, Came::Claimed).await?;
        self.pump_all();
        Ok((read as i64 == DISPATCH_BATCH || count == CLAIM_BATCH, next_due))
    }

    /// Puts deliveries leased to this process into their subscriptions' lanes (deferring those the rate
    /// limiter holds back) and starts what the lanes have slots for.
    async fn start(
        self: &Arc<Self>,
        leased: Vec<Delivery>,
        subscriptions: Arc<HashMap<String, Subscription>>,
        came: Came,
    ) -> anyhow::Result<()> {
        if leased.is_empty() {
            return Ok(());
        }
        let newest = leased.iter().map(|d| d.created_at.as_str()).max().unwrap_or_default();
        let stale = self.db.subscription_snapshot_predates(newest)
            || leased.iter().any(|d| !subscriptions.get(&d.subscription_id).is_some_and(|s| s.receives_deliveries()));
        let subscriptions = if stale {
            // The claim saw the subscription receiving, or the snapshot is older than a delivery (on
            // PostgreSQL another process may have changed the subscription before it was created).
            self.db.forget_subscription_snapshot();
            self.db.subscription_snapshot().await?
        } else {
            subscriptions
        };
        let rates: HashMap<&str, i64> =
            subscriptions.values().filter_map(|s| Some((s.id.as_str(), s.rate_limit_per_second?))).collect();
        let mut starts = Vec::with_capacity(leased.len());
        let mut deferred = Vec::new();
        {
            let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            let mut deferred_of: HashMap<String, u32> = HashMap::new();
            let now = std::time::Instant::now();
            for delivery in leased {
                let Some(rate) = rates.get(delivery.subscription_id.as_str()) else {
                    starts.push((delivery, None));
                    continue;
                };
                let before = deferred_of.entry(delivery.subscription_id.clone()).or_default();
                match limiter.decide(&delivery.subscription_id, (*rate).clamp(1, 10_000) as u32, now, *before) {
                    Decision::StartAt(at) => starts.push((delivery, Some(tokio::time::Instant::from_std(at)))),
                    Decision::Defer(delay) => {
                        *before += 1;
                        let at = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                        deferred.push((delivery.id, timestamp_text(at)));
                    }
                }
            }
        }
        let claimed_at = tokio::time::Instant::now();
        // Past a full lane (handed over before the lane was known full, or claimed when a lane with room took
        // more of one subscription than the room): given back to the store.
        let mut overflow: Vec<(String, String)> = Vec::new();
        {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            for (delivery, start_at) in starts {
                let Some(sub) = subscriptions.get(&delivery.subscription_id).filter(|s| s.receives_deliveries()) else {
                    // Deleted, disabled or held for verification just now: the lease runs out, and the delivery is
                    // claimable again once the subscription receives (or gone with it).
                    continue;
                };
                let size = sub.max_concurrency.clamp(1, 1000) as usize;
                let lane = lanes.entry(sub.id.clone()).or_insert_with(|| Lane {
                    slots: Arc::new(Semaphore::new(size)),
                    size,
                    waiting: Default::default(),
                    answered_at: None,
                    answers_this_second: 0,
                    answers_last_second: 0,
                    second_began: tokio::time::Instant::now(),
                });
                if lane.size != size && lane.slots.available_permits() == lane.size {
                    // A changed limit takes effect once the lane's old slots are all free.
                    lane.slots = Arc::new(Semaphore::new(size));
                    lane.size = size;
                }
                if lane.waiting.len() >= lane.keeps(came)
                    && let Some(lease) = delivery.lease_until.clone()
                {
                    if let (Some(_), Some(rate)) = (start_at, rates.get(sub.id.as_str())) {
                        // Its rate slot goes to the next delivery (the lanes are filled in slot order).
                        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
                        limiter.give_back(&sub.id, (*rate).clamp(1, 10_000) as u32);
                    }
                    overflow.push((delivery.id, lease));
                    continue;
                }
                lane.waiting.push_back(Waiting {
                    delivery,
                    queued_under: sub.updated_at.clone(),
                    start_at,
                    claimed_at,
                });
            }
        }
        // At once, not at the end of the round: what was just handed over must not wait for the claim's query.
        self.pump_all();
        if !overflow.is_empty() {
            self.busy_subscriptions();
            // A failure leaves them leased: they are claimable again when the leases run out.
            if let Err(e) = self.db.release_own_leases(&overflow).await {
                tracing::warn!(error = %e, deliveries = overflow.len(), "deliveries past a full lane wait for their leases");
            }
        }
        // A failure here leaves them leased: they are retried when the lease expires.
        self.db.defer_deliveries(&deferred).await?;
        Ok(())
    }

    /// The subscriptions whose lane is full: nothing more of theirs is claimed before one of its slots frees.
    /// Those of them whose target does not keep up, or which hold all they may, dispatch stops leasing to this
    /// process (their new deliveries wait in the store; see [`Lane::keeps_up`]).
    fn busy_subscriptions(&self) -> Vec<String> {
        // Under the lanes' lock, as `pump` tells a lane's change: a set read before a pump's change and written
        // after it would undo it.
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let busy = lanes.iter().filter(|(_, lane)| lane.waiting.len() >= lane.depth()).map(|(id, _)| id.clone());
        let full = lanes.iter().filter(|(_, lane)| lane.full_for_dispatch()).map(|(id, _)| id.clone());
        self.db.set_full_lanes(full.collect());
        busy.collect()
    }

    /// Every lane, not only those that got deliveries: one may have waited for an in-flight permit.
    fn pump_all(self: &Arc<Self>) {
        let all: Vec<String> = self.lanes.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for id in all {
            self.pump(&id, false);
        }
    }

    /// How long the loop may sleep: until `next_due`, when the next delivery it could start is due
    /// (deliveries of busy subscriptions, or any while every in-flight permit is taken, wait for a freed slot
    /// instead, which wakes the loop), at most a second.
    fn wait_until(&self, next_due: Option<String>) -> Duration {
        let fallback = Duration::from_secs(1);
        if self.in_flight.available_permits() == 0 {
            return fallback;
        }
        let Some(next) = next_due else { return fallback };
        match chrono::DateTime::parse_from_rfc3339(&next) {
            Ok(t) => {
                (t.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO).min(fallback)
            }
            Err(_) => fallback,
        }
    }

    /// Starts as many of a lane's waiting deliveries as it has free slots (and the process in-flight permits).
    /// Each finished attempt pumps its lane again (`answered`: its target answered it promptly). Returns
    /// whether the lane has nothing left waiting.
    fn pump(self: &Arc<Self>, subscription_id: &str, answered: bool) -> bool {
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(lane) = lanes.get_mut(subscription_id) else { return true };
        if answered {
            lane.answered();
            // Told at once, not at the next round: a lane whose target answers again takes dispatch's
            // deliveries from now on, and what dispatch left in the store meanwhile may be claimed.
            let was_marked = self.db.is_full_lane(subscription_id);
            let full = lane.full_for_dispatch();
            if was_marked != full {
                self.db.set_full_lane(subscription_id, full);
                if !full {
                    self.slot_freed.notify_one();
                }
            }
        }
        let was_full = lane.waiting.len() >= lane.depth();
        while !lane.waiting.is_empty() {
            let Ok(slot) = lane.slots.clone().try_acquire_owned() else { break };
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else { break };
            let Some(next) = lane.waiting.pop_front() else { break };
            // Its lease may run out mid-attempt: it is renewed first (still in order, no new claim).
            let late = next.claimed_at.elapsed() > START_WITHIN;
            let worker = self.clone();
            tokio::spawn(async move {
                let id = next.delivery.subscription_id.clone();
                let mut answered = false;
                if let Some((delivery, sub)) = worker.ready_to_start(next.delivery, &next.queued_under, late).await {
                    if let Some(at) = next.start_at {
                        tokio::time::sleep_until(at).await;
                    }
                    answered = worker.attempt(&sub, delivery).await;
                }
                drop(slot);
                let permits_were_exhausted = worker.in_flight.available_permits() == 0;
                drop(permit);
                let drained = worker.pump(&id, answered);
                // The loop needs to hear of it only when it may now claim more: this lane ran dry (more of its
                // deliveries may wait in the store), or other lanes waited for an in-flight permit. A lane
                // with work waiting pumps itself.
                if drained || permits_were_exhausted {
                    worker.slot_freed.notify_one();
                }
            });
        }
        let drained = lane.waiting.is_empty();
        if was_full && lane.waiting.len() < lane.depth() && self.db.is_full_lane(subscription_id) {
            // No longer full, and dispatch left its new deliveries in the store meanwhile: they may be claimed now.
            self.slot_freed.notify_one();
        }
        // An idle lane goes, but not while its target keeps up: it would come back not yet heard from, held to
        // its depth until an attempt finished (a busy target's lane runs dry between two commits' deliveries).
        if drained && lane.slots.available_permits() == lane.size && !lane.keeps_up() {
            lanes.remove(subscription_id);
        }
        drained
    }

    /// `delivery`, ready to be sent: as it is, or (when it waited in its lane past [`START_WITHIN`]) under a
    /// renewed lease, with its subscription as it is now. None if the store no longer has it unfinished
    /// under our lease (a retry asked for meanwhile, or a lease that ran out and another process took), or
    /// the subscription stopped receiving while it waited.
    async fn ready_to_start(
        &self,
        mut delivery: Delivery,
        queued_under: &str,
        late: bool,
    ) -> Option<(Delivery, Subscription)> {
        // The owner may have disabled or deleted the subscription, or changed its URL, headers or secret, since
        // the delivery was dispatched (a backlog waits in its lane): it goes out as the subscription is now, or
        // not at all. (Its body stays as it was made: what was sent once is sent again the same.) The snapshot
        // is current: this process's changes reset it, other processes' show within `SNAPSHOT_MAX_AGE`.
        let current = match self.db.subscription_snapshot().await {
            Ok(subscriptions) => {
                subscriptions.get(&delivery.subscription_id).filter(|s| s.receives_deliveries())?.clone()
            }
            Err(e) => {
                tracing::warn!(error = %e, delivery = %delivery.id, "no subscriptions to check a delivery against; it is sent once its lease runs out");
                return None;
            }
        };
        if !late && current.updated_at == queued_under {
            return Some((delivery, current));
        }
        if !late {
            // Changed by its owner meanwhile: a disable ended the delivery (and a replay may have queued it
            // again, to be claimed): sent only if it is still ours, unfinished, in the store.
            return match self.db.still_ours(&delivery).await {
                Ok(true) => Some((delivery, current)),
                Ok(false) => None,
                Err(e) => {
                    tracing::warn!(error = %e, delivery = %delivery.id, "could not check a delivery whose subscription changed; it is sent once its lease runs out");
                    None
                }
            };
        }
        let sub = current;
        match self.db.renew_lease(&delivery.id, delivery.lease_until.as_deref(), self.config.lease_seconds).await {
            Ok(Some(lease)) => {
                delivery.lease_until = Some(lease);
                Some((delivery, sub))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, delivery = %delivery.id, "could not renew a lease; the delivery is sent once it runs out");
                None
            }
        }
    }

    /// Attempts one claimed delivery to `sub` (as it stood when claimed) and records the outcome.
    /// Sends one delivery and hands its outcome to the recorder; returns whether the target answered it
    /// promptly (within [`ANSWERS_WITHIN`]: see [`Lane::keeps_up`]).
    async fn attempt(&self, sub: &Subscription, delivery: Delivery) -> bool {
        let in_flight = self.metrics.attempt_started();
        let response = send(&self.client, sub, &delivery.id, &delivery.body).await;
        drop(in_flight);
        let (took, error_class) = (response.duration, response.error_class);
        let answered = response.status_code.is_some() && took < ANSWERS_WITHIN;
        let record = self.judge(sub, &delivery, response);
        let outcome = match record.outcome {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Gone => "gone",
            AttemptOutcome::Retry { .. } => "retry",
            AttemptOutcome::Failed => "failed",
        };
        self.metrics.attempt(outcome, error_class, took);
        if let Err(unsent) = self.results.send((delivery, record)) {
            let (delivery, record) = unsent.0;
            if let AttemptOutcome::Retry { held_until: Some(until), .. } = &record.outcome {
                self.forget_hold(&delivery.id, Some(until));
            }
            tracing::error!("the attempt recorder stopped; the lease will expire and the delivery will be retried");
        }
        answered
    }

    fn judge(&self, sub: &Subscription, delivery: &Delivery, r: super::client::Response) -> AttemptRecord {
        let now = chrono::Utc::now();
        // `at` is when the request went out (as receivers' logs show it), not when its answer came.
        let sent = now - chrono::Duration::from_std(r.duration).unwrap_or_default();
        let attempt = Attempt {
            at: timestamp_text(sent),
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
                // Its place in the schedule: an attempt asked for by hand takes none (see `schedule_position`).
                let position = delivery.schedule_position();
                let honoured = match (code, &r.retry_after) {
                    (Some(429 | 503), Some(v)) => retry_after(v, std::time::SystemTime::now()),
                    _ => None,
                };
                let delay = match honoured {
                    Some(d) if (position as usize) < self.config.retry.max_attempts() => Some(d),
                    _ => self.config.retry.next_delay(position, &mut rand::thread_rng()),
                };
                match delay {
                    Some(d) => {
                        let at = now + chrono::Duration::from_std(d).unwrap_or_else(|_| chrono::Duration::seconds(1));
                        // Ordered and rate-limited subscriptions go through claims, which keep their order
                        // and spacing across processes.
                        let holdable = d <= HOLD_RETRIES_WITHIN && !sub.ordered && sub.rate_limit_per_second.is_none();
                        let until = timestamp_text(at + chrono::Duration::seconds(self.config.lease_seconds));
                        let held_until = (holdable && self.reserve_hold(&delivery.id, &until)).then_some(until);
                        AttemptOutcome::Retry { at: timestamp_text(at), held_until }
                    }
                    None => AttemptOutcome::Failed,
                }
            }
        };
        AttemptRecord { attempt, outcome }
    }

    /// Reserves a place for one more held retry (none while stopping: nothing would send it).
    fn reserve_hold(&self, id: &str, until: &str) -> bool {
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() >= MAX_HELD {
            return false;
        }
        held.insert(id.to_string(), until.to_string());
        true
    }

    /// Whether `id` was still held under `lease` (and is no longer). A delivery can be held twice: a retry
    /// asked for (`POST /deliveries/{id}/retry`) sends it before its held time, and that attempt's failure
    /// holds it again under a new lease. The first timer must then leave the second's hold alone: taking it
    /// left the delivery unsent until its lease ran out (about 30 s late).
    fn forget_hold(&self, id: &str, lease: Option<&str>) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match lease {
            Some(lease) if held.get(id).is_some_and(|l| l != lease) => false,
            _ => held.remove(id).is_some(),
        }
    }

    /// Sends a held retry (`delivery` as recorded, its lease ours) when it is due, through its lane like a
    /// claimed delivery: if the store still has it unfinished under this lease. A retry asked for meanwhile
    /// (`POST /deliveries/{id}/retry` releases the lease and a claim sends it), a late outcome the store did
    /// not take, or a lease another process took over after it ran out: then this copy is dropped.
    fn hold(self: &Arc<Self>, delivery: Delivery) {
        let due_in = delivery
            .next_attempt_at
            .as_deref()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .and_then(|at| (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok())
            .unwrap_or(Duration::ZERO);
        let worker = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(due_in).await;
            let lease = delivery.lease_until.as_deref();
            if worker.stopping.load(std::sync::atomic::Ordering::Acquire) || !worker.forget_hold(&delivery.id, lease) {
                return; // the stopping worker releases its lease
            }
            match worker.db.still_ours(&delivery).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, delivery = %delivery.id, "a held retry waits for its lease to run out");
                    return;
                }
            }
            let subscriptions = match worker.db.subscription_snapshot().await {
                Ok(subscriptions) => subscriptions,
                Err(e) => {
                    tracing::warn!(error = %e, delivery = %delivery.id, "a held retry waits for its lease to run out");
                    return;
                }
            };
            // Disabled or deleted meanwhile: nothing to send now (its lease runs out; it is claimable again
            // only if the subscription receives again).
            if !subscriptions.get(&delivery.subscription_id).is_some_and(|s| s.receives_deliveries()) {
                return;
            }
            if let Err(e) = worker.start(vec![delivery], subscriptions, Came::Claimed).await {
                tracing::warn!(error = %e, "starting a held retry failed; it is claimed again when its lease runs out");
            }
        });
    }
}

/// A held retry's delivery as its failed attempt left it in the store.
fn as_recorded(delivery: &Delivery, record: &AttemptRecord, at: &str, held_until: &str) -> Delivery {
    Delivery {
        status: "retrying".into(),
        attempts: delivery.attempts + 1,
        next_attempt_at: Some(at.to_string()),
        last_status_code: record.attempt.status_code,
        last_error: record.attempt.error.clone(),
        updated_at: record.attempt.at.clone(),
        lease_until: Some(held_until.to_string()),
        manual_attempts: delivery.manual_attempts + i64::from(delivery.manual_due),
        manual_due: false,
        ..delivery.clone()
    }
}

/// When a digest subscription fires next after `now` (None if its schedule never fires again).
pub fn next_digest_at(sub: &Subscription, now: chrono::DateTime<chrono::Utc>) -> Option<String> {
    // The text was validated at subscription time (against the configured minimum); any positive interval
    // is accepted here.
    let schedule = super::schedule::DigestSchedule::parse_with_minimum(sub.schedule.as_deref()?, 1).ok()?;
    let next = schedule.next_after(now);
    (next != chrono::DateTime::<chrono::Utc>::MAX_UTC).then(|| timestamp_text(next))
}

/// The `type` of the challenge sent to a subscription created with `verify: true`.
pub const VERIFICATION_TYPE: &str = "webhook.verification";

/// Sends a subscription its verification challenge and records the outcome (see [`Db::record_verification`]).
/// The body is signed like any delivery:
/// `{"id", "sequence": 0, "type": "webhook.verification", "timestamp", "challenge", "data": {"id", "url",
/// "challenge"}}` (the shape of every delivery, CONTRACT.md 5; sequence 0, as pings and tests: it is no event
/// of the log; the challenge also at the top, where endpoint verification elsewhere puts it); the target
/// proves it wants the events by answering 2xx with the JSON body `{"challenge": "<same>"}`.
pub async fn verify(db: &Db, client: &WebhookClient, sub: &Subscription) -> sqlx::Result<Result<(), String>> {
    let challenge = hex::encode(rand::random::<[u8; 24]>());
    let id = format!("msg_vrf_{}", uuid::Uuid::new_v4().simple());
    let body = json!({
        "id": id,
        "sequence": 0,
        "type": VERIFICATION_TYPE,
        "timestamp": now_text(),
        "challenge": challenge,
        "data": { "id": sub.id, "url": sub.url, "challenge": challenge },
    })
    .to_string();
    let response = send(client, sub, &id, &body).await;
    let outcome = check_echo(&response, &challenge);
    db.record_verification(&sub.id, &sub.url, outcome.clone()).await?;
    Ok(outcome)
}

/// Whether a target's answer to a challenge echoes it: 2xx and `{"challenge": "<same>"}`.
fn check_echo(r: &super::client::Response, challenge: &str) -> Result<(), String> {
    match r.status_code {
        Some(code) if (200..300).contains(&code) => {}
        Some(code) => return Err(format!("the target answered {code} to the verification challenge")),
        None => {
            let why = r.error.as_deref().unwrap_or("no answer");
            return Err(format!("the verification challenge could not be delivered: {why}"));
        }
    }
    let echoed = r
        .body_excerpt
        .as_deref()
        .and_then(|b| serde_json::from_str::<Value>(b).ok())
        .and_then(|v| v.get("challenge").and_then(Value::as_str).map(str::to_string));
    match echoed {
        Some(e) if e == challenge => Ok(()),
        Some(_) => Err("the target echoed a different challenge".into()),
        None => Err("the target's answer is not the JSON object {\"challenge\": \"<the challenge sent>\"}".into()),
    }
}

/// The signers of a subscription right now: its secret (or private key), plus the previous one during a
/// rotation's grace period.
pub fn signers(sub: &Subscription) -> Vec<Signer> {
    let mut out = Vec::new();
    if sub.signing == "ed25519" {
        out.extend(Ed25519SigningKey::parse(&sub.secret).ok().map(Signer::Ed25519));
        out.extend(previous_ed25519_key(sub).map(Signer::Ed25519));
        return out;
    }
    if let Ok(secret) = WebhookSecret::parse(&sub.secret) {
        out.push(Signer::Hmac(secret));
    }
    if in_grace(sub)
        && let Some(previous) = sub.previous_secret.as_deref().and_then(|s| WebhookSecret::parse(s).ok())
    {
        out.push(Signer::Hmac(previous));
    }
    out
}

/// An ed25519 subscription's previous private key, while its rotation's grace period lasts.
pub fn previous_ed25519_key(sub: &Subscription) -> Option<Ed25519SigningKey> {
    if sub.signing != "ed25519" || !in_grace(sub) {
        return None;
    }
    Ed25519SigningKey::parse(sub.previous_secret.as_deref()?).ok()
}

/// Whether a rotated-out secret still signs (its grace period has not ended).
pub fn in_grace(sub: &Subscription) -> bool {
    sub.previous_secret_until.as_deref().is_some_and(|until| until > now_text().as_str())
}

/// Signs and POSTs one delivery body to a subscription's target.
pub async fn send(client: &WebhookClient, sub: &Subscription, message_id: &str, body: &str) -> super::client::Response {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = signature_header(&signers(sub), message_id, timestamp, body.as_bytes());
    let mut headers: Vec<(String, String)> = sub
        .headers
        .iter()
        .filter(|(k, _)| !super::client::is_reserved_header(&k.to_ascii_lowercase()))
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    headers.push(("webhook-id".into(), message_id.to_string()));
    headers.push(("webhook-timestamp".into(), timestamp.to_string()));
    headers.push(("webhook-signature".into(), signature));
    client.post(&sub.url, &headers, body.to_string()).await
}

/// Commits attempt results in batches: whatever arrived while the previous batch was being written goes
/// into the next transaction. A failed batch is not retried here: its deliveries' leases expire and they
/// are attempted again (at-least-once). Once a batch is committed, the retries it holds are scheduled.
async fn record_in_batches(
    worker: Arc<Worker>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(Delivery, AttemptRecord)>,
) {
    let disable_after_seconds = worker.config.disable_after_seconds;
    const MAX_BATCH: usize = 1000;
    let mut batch = Vec::new();
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
        let count = batch.len();
        let held: Vec<Delivery> = batch
            .iter()
            .filter_map(|(delivery, record)| match &record.outcome {
                AttemptOutcome::Retry { at, held_until: Some(until) } => Some(as_recorded(delivery, record, at, until)),
                _ => None,
            })
            .collect();
        match worker.db.record_attempts(std::mem::take(&mut batch), disable_after_seconds).await {
            Ok(()) => held.into_iter().for_each(|delivery| worker.hold(delivery)),
            Err(e) => {
                for delivery in &held {
                    worker.forget_hold(&delivery.id, delivery.lease_until.as_deref());
                }
                tracing::error!(error = %e, attempts = count, "recording attempts failed; their deliveries will be retried");
            }
        }
        if stop {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(size: usize, waiting: usize) -> Lane {
        let queued = || Waiting {
            delivery: Delivery::default(),
            queued_under: String::new(),
            start_at: None,
            claimed_at: tokio::time::Instant::now(),
        };
        Lane {
            slots: Arc::new(Semaphore::new(size)),
            size,
            waiting: (0..waiting).map(|_| queued()).collect(),
            answered_at: None,
            answers_this_second: 0,
            answers_last_second: 0,
            second_began: tokio::time::Instant::now(),
        }
    }

    #[tokio::test]
    async fn a_lane_not_heard_from_is_held_to_its_depth_and_one_that_keeps_up_to_its_answers() {
        // Not heard from (a hanging target's, or a new one's): full for dispatch at its depth (4 x 2), keeps 4x
        // that handed over, and claims fill it to its depth.
        let mut busy = lane(2, 8);
        assert!(!busy.keeps_up() && busy.full_for_dispatch());
        assert_eq!((busy.keeps(Came::HandedOver), busy.keeps(Came::Claimed)), (32, 8));
        // Answering: about 5 s of its answers (here 100 in the second), past its depth.
        for _ in 0..100 {
            busy.answered();
        }
        assert!(busy.keeps_up() && !busy.full_for_dispatch());
        assert_eq!((busy.keeps(Came::HandedOver), busy.keeps(Came::Claimed)), (500, 8));
        // Never more than 2 048, and never less than its handed-over allowance.
        for _ in 0..1000 {
            busy.answered();
        }
        assert_eq!(busy.handed_over_cap(), HANDED_OVER_MAX);
        let mut slow = lane(2, 0);
        slow.answered();
        assert_eq!(slow.handed_over_cap(), 32);
    }

    #[test]
    fn a_deep_lane_counts_only_its_depth_against_the_claim_budget() {
        let deep = lane(10, 1500);
        assert_eq!(deep.claimed_waiting(), 40, "what it holds past its depth was handed over");
        assert_eq!(lane(10, 7).claimed_waiting(), 7);
    }

    fn answer(status: Option<u16>, body: &str) -> super::super::client::Response {
        super::super::client::Response {
            status_code: status,
            duration: Duration::ZERO,
            error_class: None,
            error: status.is_none().then(|| "connection refused".to_string()),
            body_excerpt: Some(body.to_string()),
            retry_after: None,
        }
    }

    #[test]
    fn only_a_2xx_json_echo_of_the_same_challenge_verifies() {
        assert_eq!(check_echo(&answer(Some(200), r#"{"challenge":"abc"}"#), "abc"), Ok(()));
        assert_eq!(check_echo(&answer(Some(201), r#"{"challenge":"abc","x":1}"#), "abc"), Ok(()));
        assert!(check_echo(&answer(Some(200), r#"{"challenge":"abd"}"#), "abc").unwrap_err().contains("different"));
        assert!(check_echo(&answer(Some(200), "abc"), "abc").is_err());
        assert!(check_echo(&answer(Some(500), r#"{"challenge":"abc"}"#), "abc").unwrap_err().contains("500"));
        assert!(check_echo(&answer(None, ""), "abc").unwrap_err().contains("connection refused"));
    }
}
