//! Group commit: directory writes that arrive while a transaction is being committed share the next one.
//!
//! A commit costs a WAL flush (SQLite) or a WAL flush plus the event-counter row lock held across it
//! (PostgreSQL), and every write must take the counter so that sequences are gap-free and commit in order.
//! One write per transaction therefore caps writes per second at commits per second. Here each write is a
//! job on a queue; a committer takes every job waiting (up to [`MAX_GROUP`]), applies each inside its own
//! savepoint — a refused write rolls back alone and gets its own error — appends all their events at the end
//! and commits once. Each caller still gets exactly its own outcome, and nothing is acknowledged before the
//! commit that made it durable.
//!
//! A job that failed for a database reason inside a shared transaction (a PostgreSQL deadlock with another
//! committer, say), and every job of a group whose commit failed, is run again alone, so a caller only ever
//! sees an error its own write caused.
//!
//! On a SQLite file the committer is a thread of its own with its own rusqlite connection (see
//! [`super::sql`] for why): the group's statements then cost no thread hand-offs, and under load it goes
//! from one group to the next without any. It takes this process's write lock first, like every other
//! SQLite writer. On both stores, batches of webhook attempt results join the groups too ([`RecordJob`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{Any, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc, oneshot};

use super::events::Event;
use super::events::{Batch, append_batches, append_events};
use super::sql::{Conn, from_rusqlite};
use super::webhooks::{AttemptRecord, CommitDispatch, Delivery, Recorded, Subscription, dispatch_appended, record_in};
use super::write::{Known, Op, PendingWrite, Staged, WriteError, WriteOptions, WriteOutcome, finish_staged};
use super::{Backend, Db};

/// The most writes one transaction takes.
const MAX_GROUP: usize = 32;
/// Writes waiting beyond this make their callers wait to enqueue (back-pressure, not unbounded memory).
const QUEUE_DEPTH: usize = 4096;

pub(crate) struct Job {
    ops: Vec<Op>,
    options: WriteOptions,
    reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
}

/// A batch of webhook attempt results to record (see [`super::webhooks::record_in`]). It shares a group's
/// transaction: the deliveries it finishes were mostly created by the groups just before, so their pages are
/// written once more in a commit that happens anyway, instead of in a transaction (and a WAL flush) of their
/// own. Lock order on PostgreSQL stays that of the recorder's own transactions: delivery and subscription
/// rows, then the event counter (only one batch is in flight at a time: the recorder waits for each).
pub(crate) struct RecordJob {
    batch: Vec<(Delivery, AttemptRecord)>,
    disable_after_seconds: i64,
    reply: oneshot::Sender<sqlx::Result<()>>,
}

pub(crate) enum Work {
    Write(Job),
    Record(RecordJob),
}

pub(crate) type Queue = mpsc::Sender<Work>;

/// How many transactions carried how many writes, since start (for operators and tests).
#[derive(Debug, Default)]
pub struct GroupStats {
    transactions: AtomicU64,
    writes: AtomicU64,
    one_at_a_time: AtomicU64,
    guarded: AtomicU64,
}

impl GroupStats {
    /// (transactions committed, writes they carried).
    pub fn read(&self) -> (u64, u64) {
        (self.transactions.load(Ordering::Relaxed), self.writes.load(Ordering::Relaxed))
    }

    /// Groups run again (see [`Pass`]): (one write at a time, because writes finished together would have
    /// reached one document; with a savepoint per write, because a write was refused inside the transaction).
    pub fn reruns(&self) -> (u64, u64) {
        (self.one_at_a_time.load(Ordering::Relaxed), self.guarded.load(Ordering::Relaxed))
    }

    fn count(&self, writes: usize) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
    }
}

/// Starts the committers of `db` and returns the queue they serve. SQLite has one writer at a time, so one
/// committer (on `direct`, the committer's own connection to the file, when there is one); PostgreSQL gets
/// several, which prepare their groups in parallel and serialise only on the counter row at the end.
pub(crate) fn start(db: &Db, direct: Option<rusqlite::Connection>) -> std::io::Result<Queue> {
    let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
    // The committers' handle has no queue of its own, so the channel closes when the last user handle is
    // dropped and the committers end.
    if let Some(conn) = direct {
        start_thread(Db { writes: None, ..db.clone() }, rx, conn)?;
        return Ok(queue);
    }
    let rx = Arc::new(Mutex::new(rx));
    let committers = match db.backend {
        Backend::Sqlite => 1,
        Backend::Postgres => 4,
    };
    for _ in 0..committers {
        let db = Db { writes: None, ..db.clone() };
        tokio::spawn(run(db, rx.clone()));
    }
    Ok(queue)
}

/// Queues one write and waits for its outcome (applied directly when `db` has no queue).
pub(crate) async fn submit(db: &Db, ops: Vec<Op>, options: WriteOptions) -> Result<WriteOutcome, WriteError> {
    let Some(queue) = &db.writes else {
        return commit_alone(db, &mut Opener::Pool(None), ops, &options).await;
    };
    let (reply, answer) = oneshot::channel();
    if queue.send(Work::Write(Job { ops, options, reply })).await.is_err() {
        return Err(WriteError::Database(sqlx::Error::PoolClosed));
    }
    answer.await.unwrap_or(Err(WriteError::Database(sqlx::Error::PoolClosed)))
}

/// Queues a batch of attempt results for the committers, which record it in a group's transaction: one
/// commit (and WAL flush) fewer per batch. Recorded directly when `db` has no queue.
pub(crate) async fn submit_record(
    db: &Db,
    batch: Vec<(Delivery, AttemptRecord)>,
    disable_after_seconds: i64,
) -> sqlx::Result<()> {
    let Some(queue) = &db.writes else {
        return record_alone(db, &mut Opener::Pool(None), &batch, disable_after_seconds).await;
    };
    let (reply, answer) = oneshot::channel();
    if queue.send(Work::Record(RecordJob { batch, disable_after_seconds, reply })).await.is_err() {
        return Err(sqlx::Error::PoolClosed);
    }
    answer.await.unwrap_or(Err(sqlx::Error::PoolClosed))
}

/// `first` and whatever else is waiting (up to [`MAX_GROUP`]), as writes and attempt batches.
fn take_group(first: Work, rx: &mut mpsc::Receiver<Work>) -> (Vec<Job>, Vec<RecordJob>) {
    let (mut jobs, mut records) = (Vec::new(), Vec::new());
    let mut take = |work| match work {
        Work::Write(job) => jobs.push(job),
        Work::Record(record) => records.push(record),
    };
    take(first);
    let mut taken = 1;
    while taken < MAX_GROUP
        && let Ok(next) = rx.try_recv()
    {
        take(next);
        taken += 1;
    }
    (jobs, records)
}

/// The committers over pooled connections (PostgreSQL; SQLite without a connection of its own).
async fn run(db: Db, rx: Arc<Mutex<mpsc::Receiver<Work>>>) {
    loop {
        let (jobs, records) = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            take_group(first, &mut rx)
        };
        // PostgreSQL dispatches at commit too (SQLite only on the committer's own connection, whose snapshot
        // of subscriptions is taken under the write lock), but only a group of one write (light load), whose
        // deliveries then start as it commits. Larger groups (load) leave their events to the worker's
        // dispatcher, which covers many groups' in one transaction of its own: dispatching inside a group held
        // the event counter, which serialises every commit, for six more statements (W2 +50 %, W1 +10 %;
        // BENCHMARKS.md).
        let dispatch = match db.backend == Backend::Postgres && jobs.len() <= 1 {
            true => db.commit_dispatch(),
            false => None,
        };
        let mut opener = Opener::Pool(dispatch);
        let group = std::panic::AssertUnwindSafe(commit_jobs(&db, &mut opener, jobs, records));
        // As on the SQLite thread: a bug in one group fails that group's callers (their reply channels are
        // dropped; the transaction rolls back when the pool takes its connection back), not the committer.
        if futures::FutureExt::catch_unwind(group).await.is_err() {
            tracing::error!("a group commit panicked; its writes were not applied");
        }
    }
}

/// Starts the SQLite committer on a thread of its own, over its own connection. Under load it goes from one
/// group straight to the next: handing each group to a blocking task and back cost two thread wake-ups per
/// group.
fn start_thread(db: Db, mut rx: mpsc::Receiver<Work>, conn: rusqlite::Connection) -> std::io::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new().name("hsda-sqlite-committer".into()).spawn(move || {
        // In the runtime's context, as a blocking task would be: what a commit wakes may use it.
        let _context = runtime.enter();
        run_on_thread(&db, &mut rx, conn, &runtime);
    })?;
    Ok(())
}

fn run_on_thread(
    db: &Db,
    rx: &mut mpsc::Receiver<Work>,
    mut conn: rusqlite::Connection,
    runtime: &tokio::runtime::Handle,
) {
    while let Some(first) = rx.blocking_recv() {
        let (jobs, records) = take_group(first, rx);
        let group = std::panic::AssertUnwindSafe(|| commit_direct(db, &mut conn, jobs, records, runtime));
        // A panic drops the group's reply channels (its callers see the store as unavailable) and rolls its
        // transaction back (`DirectTx`'s drop); the connection serves the next group.
        if std::panic::catch_unwind(group).is_err() {
            tracing::error!("a SQLite group commit panicked; its writes were not applied");
        }
    }
}

/// Commits `jobs` and `records` over the committer's own SQLite connection, holding this process's write
/// lock. Every await inside the write path completes at once (the connection is synchronous): it is only
/// driven to its end on this thread.
fn commit_direct(
    db: &Db,
    conn: &mut rusqlite::Connection,
    jobs: Vec<Job>,
    records: Vec<RecordJob>,
    runtime: &tokio::runtime::Handle,
) {
    let guard = match runtime.block_on(db.lock_for_write()) {
        Ok(guard) => guard,
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(WriteError::Database(super::fault::copy_of(&e))));
            }
            for record in records {
                let _ = record.reply.send(Err(super::fault::copy_of(&e)));
            }
            return;
        }
    };
    // Read under the write lock, so no subscription change can commit between it and the dispatch.
    let dispatch = match db.commit_dispatch() {
        Some(settings) => match runtime.block_on(db.subscription_snapshot()) {
            Ok(subscriptions) => Some(Dispatch { settings, subscriptions }),
            Err(e) => {
                tracing::warn!(error = %e, "no subscriptions to dispatch at commit; the worker dispatches");
                None
            }
        },
        None => None,
    };
    let mut opener = Opener::Direct(conn, dispatch);
    futures::executor::block_on(commit_jobs(db, &mut opener, jobs, records));
    drop(guard);
}

/// A lone write runs without the group machinery; anything more (or any attempt batch) as a group.
async fn commit_jobs(db: &Db, opener: &mut Opener<'_>, mut jobs: Vec<Job>, records: Vec<RecordJob>) {
    if jobs.len() == 1 && records.is_empty() {
        let job = jobs.pop().expect("one job");
        let _ = job.reply.send(commit_alone(db, opener, job.ops, &job.options).await);
    } else if !jobs.is_empty() || !records.is_empty() {
        commit_group(db, opener, jobs, records).await;
    }
}

/// Where a committer's transactions run: a pooled connection, or the committer's own SQLite connection
/// (whose write lock the committer already holds).
enum Opener<'c> {
    /// A pooled connection; dispatching at commit (PostgreSQL) reads the subscriptions in the transaction.
    Pool(Option<Arc<CommitDispatch>>),
    Direct(&'c mut rusqlite::Connection, Option<Dispatch>),
}

/// What the SQLite committer dispatches with (see [`dispatch_appended`]).
struct Dispatch {
    settings: Arc<CommitDispatch>,
    subscriptions: Arc<HashMap<String, Subscription>>,
}

impl Opener<'_> {
    /// Whether transactions it opens dispatch at commit.
    fn dispatches(&self) -> bool {
        match self {
            Opener::Pool(dispatch) => dispatch.is_some(),
            Opener::Direct(_, dispatch) => dispatch.is_some(),
        }
    }

    /// No more dispatching at commit on this opener (its snapshot of subscriptions is out of date).
    fn forget_dispatch(&mut self) {
        match self {
            Opener::Pool(dispatch) => *dispatch = None,
            Opener::Direct(_, dispatch) => *dispatch = None,
        }
    }

    async fn begin(&mut self, db: &Db) -> sqlx::Result<Tx<'_>> {
        match self {
            Opener::Pool(dispatch) => {
                let (tx, guard) = db.begin_write().await?;
                Ok(Tx::Pooled(tx, guard, dispatch.clone()))
            }
            Opener::Direct(conn, dispatch) => {
                // IMMEDIATE takes the file's write lock now (waiting up to the busy timeout for another
                // process), as `Db::begin_write` does.
                conn.execute_batch("BEGIN IMMEDIATE").map_err(from_rusqlite)?;
                Ok(Tx::Direct(DirectTx(conn), dispatch.as_ref()))
            }
        }
    }
}

/// One open transaction; dropped without [`Tx::commit`], it rolls back.
enum Tx<'c> {
    Pooled(Transaction<'static, Any>, Option<OwnedMutexGuard<()>>, Option<Arc<CommitDispatch>>),
    Direct(DirectTx<'c>, Option<&'c Dispatch>),
}

impl Tx<'_> {
    fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Pooled(tx, _, _) => Conn::Pooled(tx),
            Tx::Direct(DirectTx(conn), _) => Conn::Direct(conn),
        }
    }

    /// Whether the events this transaction appends should be dispatched in it too.
    fn dispatches(&self) -> bool {
        matches!(self, Tx::Direct(_, Some(_)) | Tx::Pooled(_, _, Some(_)))
    }

    /// Dispatches `events` (appended in this transaction) inside it. Returns the deliveries to hand to the
    /// worker once committed.
    ///
    /// On SQLite behind a savepoint (in process, free): should the dispatch fail, the writes still commit and
    /// the worker dispatches their events later. On PostgreSQL a savepoint is two more round trips for every
    /// lone write (0.1-0.2 ms of W3's latency; BENCHMARKS.md, session 12), so a failed dispatch fails the
    /// transaction instead: the error comes back, and the writes run again without dispatching at commit
    /// ([`commit_alone`]).
    async fn dispatch(&mut self, events: &[Event]) -> sqlx::Result<Option<(i64, Vec<Delivery>)>> {
        let (mut conn, subscriptions, settings) = match self {
            Tx::Direct(DirectTx(conn), Some(d)) => (Conn::Direct(conn), Some(&d.subscriptions), d.settings.clone()),
            Tx::Pooled(tx, _, Some(settings)) => (Conn::Pooled(tx), None, settings.clone()),
            _ => return Ok(None),
        };
        if let Conn::Pooled(_) = conn {
            #[cfg(test)]
            tests::maybe_fail_dispatch(&settings, &mut conn).await?;
            return dispatch_appended(&mut conn, events, None, &settings).await;
        }
        let result = async {
            conn.execute("SAVEPOINT dispatch", &[]).await?;
            let dispatched = dispatch_appended(&mut conn, events, subscriptions.map(|s| &**s), &settings).await;
            if dispatched.is_err() {
                conn.execute("ROLLBACK TO SAVEPOINT dispatch", &[]).await?;
            }
            conn.execute("RELEASE SAVEPOINT dispatch", &[]).await?;
            dispatched
        }
        .await;
        Ok(result.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "dispatching at commit failed; the worker dispatches these events");
            None
        }))
    }

    /// Rolls back now, rather than when the connection is next used: the write runs again at once, and would
    /// wait for this transaction's row locks.
    async fn roll_back(self) {
        if let Tx::Pooled(tx, _guard, _) = self
            && let Err(e) = tx.rollback().await
        {
            tracing::warn!(error = %e, "rolling back a failed PostgreSQL write transaction");
        }
    }

    /// Applies the search-index changes the transaction queued, then commits it.
    async fn commit(mut self, db: &Db) -> sqlx::Result<()> {
        super::write::apply_queued_search(&mut self.conn(), db.backend).await?;
        #[cfg(test)]
        tests::maybe_panic(db);
        match self {
            Tx::Pooled(tx, _guard, _) => tx.commit().await,
            Tx::Direct(tx, _) => tx.0.execute_batch("COMMIT").map_err(from_rusqlite),
        }
    }
}

/// A transaction on the committer's own connection.
struct DirectTx<'c>(&'c mut rusqlite::Connection);

impl Drop for DirectTx<'_> {
    fn drop(&mut self) {
        // Still inside a transaction: never committed, or its COMMIT failed (a full disk, say). Rolling back
        // leaves the connection usable for the next group.
        if !self.0.is_autocommit()
            && let Err(e) = self.0.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "rolling back a failed SQLite write transaction");
        }
    }
}

/// How many times in all a write that keeps losing races is tried.
const RACE_ATTEMPTS: u32 = 8;

/// One write in its own transaction; tried again (up to [`RACE_ATTEMPTS`] times in all) when it lost a race
/// with a concurrent transaction on PostgreSQL — two PUTs creating the same new row, a deadlock — so that the
/// loser is applied on top of the winner instead of failing. Writers of one row that keep colliding (PUTs and
/// DELETEs of one id in a loop) are spread out by a short random pause that grows with each loss.
async fn commit_alone(
    db: &Db,
    opener: &mut Opener<'_>,
    ops: Vec<Op>,
    options: &WriteOptions,
) -> Result<WriteOutcome, WriteError> {
    for attempt in 1..RACE_ATTEMPTS {
        let dispatching = opener.dispatches();
        match commit_once(db, opener, ops.clone(), options).await {
            Err(e) if lost_a_race(&e) => {
                tracing::debug!(error = %e, attempt, "a write lost a race; trying it again");
                let pause_micros = rand::Rng::gen_range(&mut rand::thread_rng(), 200..=1_000) * u64::from(attempt);
                tokio::time::sleep(std::time::Duration::from_micros(pause_micros)).await;
            }
            // Its dispatch failed (PostgreSQL, see `Tx::dispatch`): again without, the worker dispatches.
            Err(e) if dispatching && !opener.dispatches() => {
                tracing::warn!(error = %e, "dispatching at commit failed; the write runs again without it")
            }
            result => return result,
        }
    }
    commit_once(db, opener, ops, options).await
}

/// A unique violation, deadlock or serialization failure: another transaction got there first.
fn lost_a_race(e: &WriteError) -> bool {
    match e {
        WriteError::Database(e) => raced(e),
        _ => false,
    }
}

/// A fault of the store itself (locked, full, unreachable) answers every write of a group at once; a lost
/// race is one transaction's bad luck, and its writes run again alone.
fn fails_the_group(e: &sqlx::Error) -> bool {
    super::fault::classify(e).is_some() && !raced(e)
}

fn raced(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("23505" | "40P01" | "40001")),
        _ => false,
    }
}

async fn commit_once(
    db: &Db,
    opener: &mut Opener<'_>,
    ops: Vec<Op>,
    options: &WriteOptions,
) -> Result<WriteOutcome, WriteError> {
    let mut tx = opener.begin(db).await?;
    let keep_events = tx.dispatches();
    let mut conn = tx.conn();
    let pending = db.apply_in(&mut conn, ops, options).await?;
    let (outcome, events) = pending.append(&mut conn, keep_events).await?;
    let dispatched = match tx.dispatch(&events).await {
        Ok(dispatched) => dispatched,
        Err(e) => {
            tx.roll_back().await;
            opener.forget_dispatch();
            return Err(e.into());
        }
    };
    tx.commit(db).await?;
    db.group_stats.count(1);
    committed(db, outcome.last_sequence, dispatched);
    Ok(outcome)
}

/// After a commit that appended events up to `last`: the worker is told, and given what was dispatched.
fn committed(db: &Db, last: Option<i64>, dispatched: Option<(i64, Vec<Delivery>)>) {
    let Some(last) = last else { return };
    db.events_appended(last);
    db.keep_statistics_fresh(last);
    if let Some((through, deliveries)) = dispatched {
        db.hand_over(through, deliveries);
    }
    db.notify_changed();
}

/// Several writes (and batches of attempt results) in one transaction (see [`Pass`]).
async fn commit_group(db: &Db, opener: &mut Opener<'_>, jobs: Vec<Job>, records: Vec<RecordJob>) {
    // First without a savepoint around each write: on SQLite each one costs a copy of every page the write
    // touches first (and, before the full-text index moved to the commit, a flush of its pending terms).
    // Writes are rarely refused inside the transaction (bodies are validated before; what is checked inside
    // is what depends on the store: references, preconditions, a merge patch's result, a missing row); when
    // one is, the whole group is rolled back and run again with a savepoint around each write. When two
    // writes finished together would reach one document, it runs again without savepoints, each write
    // finished before the next is staged (and with savepoints only should a write then be refused).
    let mut pass = Pass::Together;
    let (mut jobs, mut records) = (jobs, records);
    while let Some((again, records_again, asked)) = run_group(db, opener, jobs, records, pass).await {
        // Each pass runs at most once: a pass one at a time that stops runs again guarded.
        pass = match (pass, asked) {
            (Pass::Together, Pass::OneAtATime) => Pass::OneAtATime,
            _ => Pass::Guarded,
        };
        let counter = match pass {
            Pass::OneAtATime => &db.group_stats.one_at_a_time,
            _ => &db.group_stats.guarded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        (jobs, records) = (again, records_again);
    }
}

/// How a group's writes run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pass {
    /// Staged one after the other and finished together where they reach different documents.
    Together,
    /// Each finished before the next is staged (no savepoints).
    OneAtATime,
    /// Each behind a savepoint of its own, applied and finished alone: a refused one rolls back alone.
    Guarded,
}

/// Why a group's transaction stopped.
enum Stop {
    Failed(sqlx::Error),
    /// Nothing is committed; the group runs again in this pass: one at a time when writes finished together
    /// would have reached one document, guarded when a write without a savepoint of its own failed.
    Again(Pass),
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Self {
        Stop::Failed(e)
    }
}

/// Runs a group; gives its jobs back, untouched, if it has to run again, and how.
async fn run_group(
    db: &Db,
    opener: &mut Opener<'_>,
    jobs: Vec<Job>,
    records: Vec<RecordJob>,
    pass: Pass,
) -> Option<(Vec<Job>, Vec<RecordJob>, Pass)> {
    let guard_each = pass == Pass::Guarded;
    let mut recorded: Vec<(RecordJob, sqlx::Result<Recorded>)> = Vec::with_capacity(records.len());
    let mut records: VecDeque<RecordJob> = records.into();
    let mut record_last: Option<i64> = None;
    let mut waiting: VecDeque<Job> = jobs.into();
    let mut applied: Vec<(Job, Result<PendingWrite, WriteError>)> = Vec::with_capacity(waiting.len());
    let mut outcomes: Vec<(Job, Result<WriteOutcome, WriteError>)> = Vec::with_capacity(waiting.len());
    let mut again: Vec<Job> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let result: Result<Option<(i64, Vec<Delivery>)>, Stop> = async {
        let mut tx = opener.begin(db).await?;
        let mut keep_events = tx.dispatches();
        let mut conn = tx.conn();
        while let Some(job) = records.pop_front() {
            if let Err(e) = conn.execute("SAVEPOINT recorded_attempts", &[]).await {
                records.push_front(job);
                return Err(e.into());
            }
            let result =
                record_in(&mut conn, db.backend, &job.batch, job.disable_after_seconds, db.lease_holder()).await;
            let failed = result.is_err();
            // The subscriptions this group would dispatch to were read before a status changed here.
            if result.as_ref().is_ok_and(|r| r.statuses_changed) {
                keep_events = false;
            }
            // Kept before the savepoint is closed, so that a failure to close it still answers this batch.
            recorded.push((job, result));
            if failed {
                conn.execute("ROLLBACK TO SAVEPOINT recorded_attempts", &[]).await?;
            }
            conn.execute("RELEASE SAVEPOINT recorded_attempts", &[]).await?;
        }
        // Writes staged one after the other finish together (their documents compiled and stored at once),
        // until one comes that must see them finished (see `Staged::may_precede`).
        let mut staged: Vec<(Job, Staged)> = Vec::new();
        // What the store holds of the rows the writes name, read for all of them at once. (Behind savepoints
        // each write reads its own: one rolled back would leave what it wrote known.)
        let mut known = match guard_each {
            false => Known::prefetch(&mut conn, db.backend, waiting.iter().flat_map(|job| &job.ops)).await?,
            true => Known::default(),
        };
        while let Some(mut job) = waiting.pop_front() {
            if !guard_each {
                if pass == Pass::OneAtATime || !staged.iter().all(|(_, s)| s.may_precede(&job.ops, &job.options)) {
                    // Should finishing fail, the staged writes go back before this one.
                    waiting.push_front(job);
                    finish(&mut conn, db.backend, &mut staged, &mut applied, &mut waiting).await?;
                    job = waiting.pop_front().expect("the write just put back");
                }
                // The ops are kept in case the group has to run again.
                match db.stage_in(&mut conn, job.ops.clone(), &job.options, &mut known).await {
                    Ok(write) => {
                        // A write that changed nothing answers with its row as it reads now: finished at
                        // once, so that no write staged after it (which `may_precede` would let through, this
                        // one having touched nothing) shows in that answer.
                        let answers_unchanged = job.options.answer.is_some() && write.changed_nothing();
                        staged.push((job, write));
                        if answers_unchanged {
                            finish(&mut conn, db.backend, &mut staged, &mut applied, &mut waiting).await?;
                        }
                    }
                    Err(_) => {
                        waiting.push_front(job);
                        for (job, _) in std::mem::take(&mut staged).into_iter().rev() {
                            waiting.push_front(job);
                        }
                        return Err(Stop::Again(Pass::Guarded));
                    }
                }
                continue;
            }
            if let Err(e) = conn.execute("SAVEPOINT grouped_write", &[]).await {
                waiting.push_front(job);
                return Err(e.into());
            }
            // The ops are kept in case this write has to be run again alone.
            let result = db.apply_in(&mut conn, job.ops.clone(), &job.options).await;
            let refused = result.is_err();
            applied.push((job, result));
            if refused {
                conn.execute("ROLLBACK TO SAVEPOINT grouped_write", &[]).await?;
            }
            conn.execute("RELEASE SAVEPOINT grouped_write", &[]).await?;
        }
        finish(&mut conn, db.backend, &mut staged, &mut applied, &mut waiting).await?;
        // Every write that applied, with its events: appended together below.
        let mut ready: Vec<(Job, PendingWrite)> = Vec::with_capacity(applied.len());
        let mut results = std::mem::take(&mut applied).into_iter();
        while let Some((job, result)) = results.next() {
            match result {
                Ok(pending) => ready.push((job, pending)),
                // A fault of the store fails the whole group (every job of it gets the fault as its answer);
                // any other database error may be this write's own.
                Err(WriteError::Database(e)) if fails_the_group(&e) => {
                    again.push(job);
                    again.extend(ready.into_iter().map(|(job, _)| job));
                    again.extend(results.map(|(job, _)| job));
                    return Err(e.into());
                }
                Err(WriteError::Database(_)) => again.push(job),
                Err(refused) => outcomes.push((job, Err(refused))),
            }
        }
        // The time of the `webhook.*` events the attempt results cause, appended after the writes' events.
        let record_time = super::now_text();
        let batches: Vec<Batch> = ready
            .iter()
            .map(|(_, pending)| pending.batch())
            .chain(recorded.iter().filter_map(|(_, r)| r.as_ref().ok()).map(|r| Batch {
                events: &r.events,
                origin: db.instance_id(),
                occurred_at: &record_time,
            }))
            .collect();
        let appended = match append_batches(&mut conn, &batches).await {
            Ok(appended) => appended,
            Err(e) => {
                again.extend(ready.into_iter().map(|(job, _)| job));
                return Err(e.into());
            }
        };
        let mut appended = appended.into_iter();
        for ((job, pending), appended) in ready.into_iter().zip(appended.by_ref()) {
            let (outcome, kept) = pending.appended(appended, keep_events);
            events.extend(kept);
            outcomes.push((job, Ok(outcome)));
        }
        for ((_, result), appended) in recorded.iter_mut().filter(|(_, r)| r.is_ok()).zip(appended) {
            let Ok(r) = result else { continue };
            if r.events.is_empty() {
                continue;
            }
            record_last = Some(appended.last);
            let origin = db.instance_id();
            events.extend(appended.into_events(std::mem::take(&mut r.events), origin, &record_time));
        }
        // A failed dispatch fails the group (PostgreSQL); its writes then run again alone (`commit_alone`).
        let dispatched = match keep_events && !events.is_empty() {
            true => match tx.dispatch(&events).await {
                Ok(dispatched) => dispatched,
                Err(e) => {
                    tx.roll_back().await;
                    return Err(e.into());
                }
            },
            false => None,
        };
        tx.commit(db).await?;
        Ok(dispatched)
    }
    .await;
    let mut records_again: Vec<RecordJob> = Vec::new();
    match result {
        Ok(dispatched) => {
            // The writes run again alone below must not dispatch with a snapshot older than a status this
            // group changed; the worker's dispatcher covers their events.
            if recorded.iter().any(|(_, r)| r.as_ref().is_ok_and(|r| r.statuses_changed)) {
                opener.forget_dispatch();
            }
            db.group_stats.count(outcomes.len());
            let last = outcomes.iter().filter_map(|(_, r)| r.as_ref().ok()?.last_sequence).chain(record_last).max();
            committed(db, last, dispatched);
            for (job, result) in outcomes {
                let _ = job.reply.send(result);
            }
            for (job, result) in recorded {
                if let Ok(r) = &result {
                    db.attempts_recorded(r);
                }
                let _ = job.reply.send(result.map(|_| ()));
            }
        }
        Err(Stop::Again(rerun)) => {
            // Nothing was committed, and nothing was answered: every job goes back as it came.
            let jobs = applied.into_iter().map(|(job, _)| job).chain(waiting).collect();
            let records = recorded.into_iter().map(|(job, _)| job).chain(records).collect();
            return Some((jobs, records, rerun));
        }
        Err(Stop::Failed(e)) => {
            let records = recorded.into_iter().map(|(job, _)| job).chain(records);
            if fails_the_group(&e) {
                // Not run again: their deliveries' leases expire and they are sent again (at-least-once).
                for job in records {
                    let _ = job.reply.send(Err(super::fault::copy_of(&e)));
                }
            } else {
                records_again.extend(records);
            }
            again.extend(outcomes.into_iter().map(|(job, _)| job));
            again.extend(applied.into_iter().map(|(job, _)| job));
            again.extend(waiting);
            if fails_the_group(&e) {
                // The store itself is failing (locked by another process, full, unreachable): trying each
                // write again alone would only make every caller wait that much longer for the same answer.
                for job in again {
                    let _ = job.reply.send(Err(WriteError::Database(super::fault::copy_of(&e))));
                }
                return None;
            }
            // Nothing of this group was committed: every write is tried again on its own.
            tracing::warn!(error = %e, "a group commit failed; its writes run again one by one");
        }
    }
    for job in records_again {
        let result = record_alone(db, opener, &job.batch, job.disable_after_seconds).await;
        let _ = job.reply.send(result);
    }
    for job in again {
        let _ = job.reply.send(commit_alone(db, opener, job.ops, &job.options).await);
    }
    None
}

/// Finishes the `staged` writes together (see [`finish_staged`]) and moves them to `applied`; should that
/// fail, they go back to `waiting` and the group runs again with each write behind a savepoint.
async fn finish(
    conn: &mut Conn<'_>,
    backend: Backend,
    staged: &mut Vec<(Job, Staged)>,
    applied: &mut Vec<(Job, Result<PendingWrite, WriteError>)>,
    waiting: &mut VecDeque<Job>,
) -> Result<(), Stop> {
    if staged.is_empty() {
        return Ok(());
    }
    let (jobs, writes): (Vec<Job>, Vec<Staged>) = std::mem::take(staged).into_iter().unzip();
    match finish_staged(conn, backend, writes).await {
        Ok(Some(finished)) => {
            applied.extend(jobs.into_iter().zip(finished.into_iter().map(Ok)));
            Ok(())
        }
        // Two of them reach one document: the group runs again, each write finished before the next. Should
        // finishing fail, each behind a savepoint.
        result => {
            for job in jobs.into_iter().rev() {
                waiting.push_front(job);
            }
            Err(Stop::Again(match result {
                Ok(_) => Pass::OneAtATime,
                Err(_) => Pass::Guarded,
            }))
        }
    }
}

/// A batch of attempt results in a transaction of its own (its group failed for a reason of another job's,
/// or there is no committer); its `webhook.*` events are left to the worker's dispatcher.
async fn record_alone(
    db: &Db,
    opener: &mut Opener<'_>,
    batch: &[(Delivery, AttemptRecord)],
    disable_after_seconds: i64,
) -> sqlx::Result<()> {
    let mut tx = opener.begin(db).await?;
    let mut conn = tx.conn();
    let recorded = record_in(&mut conn, db.backend, batch, disable_after_seconds, db.lease_holder()).await?;
    let last = match recorded.events.is_empty() {
        true => None,
        false => Some(append_events(&mut conn, &recorded.events, db.instance_id(), &super::now_text()).await?.last),
    };
    tx.commit(db).await?;
    committed(db, last, None);
    db.attempts_recorded(&recorded);
    if recorded.statuses_changed {
        opener.forget_dispatch();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::super::tests::on_fresh_postgres;
    use super::super::write::{Op, WriteError, WriteOptions, WriteOutcome};
    use super::{Db, Job};
    use crate::hsds::catalog::table;
    use crate::hsds::document;

    /// The `_sqlite` and `_postgres` tests of `$check(grouped_url, alone_url)`: two fresh databases of a store,
    /// one for a group of writes, one for the same writes one by one.
    macro_rules! on_a_group_store_and_one_by_one_store {
        ($check:ident) => {
            mod $check {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
                    super::$check(&url("grouped.db"), &url("alone.db")).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::on_fresh_postgres(|grouped| async move {
                        super::on_fresh_postgres(|alone| async move { super::$check(&grouped, &alone).await }).await
                    })
                    .await;
                }
            }
        };
    }

    /// The instances whose next commit panics (instances are per store, so tests running beside are spared).
    static PANIC_AT_NEXT_COMMIT: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// The lease holders whose next dispatch at commit fails (PostgreSQL), as a failing statement would.
    static FAIL_NEXT_DISPATCH: Mutex<Vec<String>> = Mutex::new(Vec::new());

    pub(super) async fn maybe_fail_dispatch(
        settings: &super::CommitDispatch,
        conn: &mut super::Conn<'_>,
    ) -> sqlx::Result<()> {
        let fail = {
            let mut targets = FAIL_NEXT_DISPATCH.lock().unwrap_or_else(|p| p.into_inner());
            let at = targets.iter().position(|holder| *holder == settings.lease_holder);
            at.map(|at| targets.remove(at)).is_some()
        };
        if fail {
            conn.execute("SELECT no_such_column FROM counters", &[]).await?;
        }
        Ok(())
    }

    pub(super) fn maybe_panic(db: &Db) {
        let mut targets = PANIC_AT_NEXT_COMMIT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = targets.iter().position(|id| id == db.instance_id()) {
            targets.remove(at);
            drop(targets);
            panic!("a bug in a group commit, injected by a test");
        }
    }

    fn organization(id: &str, name: &str) -> Vec<Op> {
        let organization = table("organization").expect("organization");
        let body = json!({"id": id, "name": name, "description": "d"});
        let flat = document::flatten(organization, &body, "").expect("a valid organization");
        Op::all_of(flat)
    }

    /// A panic inside a group commit fails that group's writes, as a store fault, and leaves nothing of them;
    /// the committer goes on with the next write (on SQLite its own thread, on PostgreSQL a pooled task).
    async fn a_panicking_group_fails_alone(database_url: &str) {
        let db = Db::connect(database_url).await.expect("connect");
        let (lost, kept) = ("00000000-0000-4000-8000-0000000000a1", "00000000-0000-4000-8000-0000000000a2");
        // More panics than PostgreSQL has committers: each must survive its own.
        for _ in 0..5 {
            PANIC_AT_NEXT_COMMIT.lock().unwrap().push(db.instance_id().to_string());
            let failed = db.apply(organization(lost, "Lost"), WriteOptions::default()).await;
            assert!(matches!(failed, Err(WriteError::Database(_))), "{failed:?}");
        }
        let before = db.last_sequence().await.expect("sequence");
        let done = db.apply(organization(kept, "Kept"), WriteOptions::default()).await.expect("the next write");
        let organization = table("organization").unwrap();
        assert!(db.get(organization, lost).await.unwrap().is_none(), "nothing of the panicked write");
        assert_eq!(db.get(organization, kept).await.unwrap().expect("kept")["name"], "Kept");
        assert_eq!(before, 0, "no events from the panicked writes");
        assert_eq!(done.first_sequence, Some(1), "the sequence stays gap-free");
        db.close().await;
    }

    /// Writes that share groups get exactly their own events' sequences, whatever else the group held: writes
    /// with several events, a write that changes nothing, a refused one.
    async fn each_write_of_a_group_gets_its_own_sequences(database_url: &str) {
        let db = Db::connect(database_url).await.expect("connect");
        let service = table("service").expect("service");
        let orphan = json!({"id": "00000000-0000-4000-8000-0000000000f1", "name": "Orphan", "status": "active",
                            "organization_id": "00000000-0000-4000-8000-0000000000ff"});
        let refused = Op::all_of(document::flatten(service, &orphan, "").expect("valid alone"));
        let ids: Vec<String> = (0..24).map(|i| format!("00000000-0000-4000-8000-{:012}", 0xb00 + i)).collect();
        db.apply(organization(&ids[0], "Same"), WriteOptions::default()).await.expect("first");
        let (transactions_before, _) = db.group_commit_stats();
        let mut writes = vec![organization(&ids[0], "Same"), refused];
        writes.extend(ids[1..].iter().map(|id| organization(id, "New")));
        let outcomes =
            futures::future::join_all(writes.into_iter().map(|ops| db.apply(ops, WriteOptions::default()))).await;
        let (transactions_after, writes_after) = db.group_commit_stats();
        assert!(writes_after > transactions_after, "some writes shared a transaction");
        assert!(transactions_after - transactions_before < 24, "some writes shared a transaction");
        assert!(matches!(outcomes[0], Ok(ref o) if o.first_sequence.is_none()), "no change, no sequence");
        assert!(matches!(outcomes[1], Err(WriteError::Invalid(_))), "{:?}", outcomes[1]);
        let log = db.events_after(1, &Default::default(), 1000).await.expect("events");
        let sequences: Vec<i64> = log.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (2..2 + log.len() as i64).collect::<Vec<_>>(), "gap-free");
        for (id, outcome) in ids[1..].iter().zip(&outcomes[2..]) {
            let outcome = outcome.as_ref().expect("a new organization");
            let own: Vec<i64> = log.iter().filter(|e| &e.object_id == id).map(|e| e.sequence).collect();
            let given: Vec<i64> = (outcome.first_sequence.unwrap()..=outcome.last_sequence.unwrap()).collect();
            assert_eq!(given, own, "{id}: its own events, and only them");
        }
        db.close().await;
    }

    fn put(name: &str, body: serde_json::Value) -> Vec<Op> {
        let table = table(name).expect("a table");
        Op::all_of(document::flatten(table, &body, "").expect("a valid body"))
    }

    /// `value` without its `last_modified` times, which differ between two runs of the same writes.
    fn timeless(mut value: serde_json::Value) -> serde_json::Value {
        match &mut value {
            serde_json::Value::Object(map) => {
                map.remove("last_modified");
                for v in map.values_mut() {
                    *v = timeless(v.take());
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| *v = timeless(v.take())),
            _ => {}
        }
        value
    }

    /// A group of writes gets the events each gets alone, and the directory ends as after the same writes one
    /// by one: two services of one organization, a phone of one of them, a delete (which finishes the writes
    /// before it first), the deleted service put back (its tombstone goes), and a service of the group
    /// written again. (Most of them reach the organization's document, so the group ends up run one write
    /// at a time; `each_event_of_a_group_shows_its_document_right_after_its_write` covers writes finished
    /// together.)
    async fn staged_writes_finish_as_if_one_by_one(grouped_url: &str, alone_url: &str) {
        let id = |n: u32| format!("00000000-0000-4000-8000-{n:012}");
        let (o, o2, s1, s2, s3, p, p2, l) = (id(1), id(2), id(11), id(12), id(13), id(21), id(22), id(31));
        let service = |sid: &str, name: &str| {
            put("service", json!({"id": sid, "name": name, "status": "active", "organization_id": o}))
        };
        let writes: Vec<Vec<Op>> = vec![
            service(&s1, "One"),
            service(&s2, "Two"),
            put("phone", json!({"id": p, "number": "555-0100", "service_id": s1})),
            put("organization", json!({"id": o2, "name": "Other", "description": "d"})),
            // The organization's write reaches its services, but not the one the next write creates.
            organization(&o, "Org renamed"),
            service(&s3, "Three"),
            // A phone of a service and a location, then the location's phones left empty: the phone only
            // leaves the location, and its event still shows what it nests.
            put("phone", json!({"id": p2, "number": "555-0101", "service_id": s1, "location_id": l})),
            put("location", json!({"id": l, "name": "Place", "location_type": "physical", "phones": []})),
            vec![Op::Delete { table: table("service").unwrap(), id: s2.clone() }],
            service(&s2, "Two again"),
            service(&s1, "One renamed"),
        ];
        let grouped = Db::connect(grouped_url).await.expect("connect");
        let alone = Db::connect(alone_url).await.expect("connect");
        for db in [&grouped, &alone] {
            db.apply(organization(&o, "Org"), WriteOptions::default()).await.expect("the organization");
            let place = put("location", json!({"id": l, "name": "Place", "location_type": "physical"}));
            db.apply(place, WriteOptions::default()).await.expect("the location");
        }
        let matched = group_matches_one_by_one(&grouped, &alone, writes).await;
        let (grouped_outcomes, alone_outcomes) = (&matched.grouped, &matched.alone);
        // A write's own rows read as it wrote them, though the group wrote them again later.
        let first = timeless_events_of(&grouped, &grouped_outcomes[0]).await;
        assert_eq!(first[0].2["name"], "One", "{:?}", first[0]);
        // The phone unlinked by the location's child set: as it reads alone.
        let unlinked = |events: Vec<(String, String, serde_json::Value)>| {
            events.into_iter().find(|(kind, id, _)| kind == "phone.updated" && *id == p2).map(|(.., data)| data)
        };
        let (g, a) = (&grouped_outcomes[7], &alone_outcomes[7]);
        let phone_alone = unlinked(timeless_events_of(&alone, a).await).expect("the phone's event");
        assert_eq!(unlinked(timeless_events_of(&grouped, g).await), Some(phone_alone.clone()));
        assert!(phone_alone["languages"].is_array(), "{phone_alone}");
        // The phone's write announces its service, with the phone in it.
        let phone = timeless_events_of(&grouped, &grouped_outcomes[2]).await;
        let (_, _, service_data) = phone.iter().find(|(kind, ..)| kind == "service.updated").expect("the service");
        assert_eq!(service_data["phones"][0]["id"], p.as_str(), "{service_data}");
        for (name, row) in [("organization", &o), ("organization", &o2), ("service", &s1), ("service", &s2)] {
            let table = table(name).unwrap();
            let (g, a) = (grouped.get(table, row).await.unwrap(), alone.get(table, row).await.unwrap());
            assert_eq!(g.map(timeless), a.map(timeless), "{name} {row}");
        }
        let tombstones: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tombstones WHERE kind = 'service' AND id = $1")
            .bind(&s2)
            .fetch_one(&grouped.pool)
            .await
            .expect("tombstones");
        assert_eq!(tombstones.0, 0, "the service put back has no tombstone");
        grouped.close().await;
        alone.close().await;
    }

    /// Each write's events as (type, object id, data without times), read from `db`'s log.
    async fn timeless_events_of(db: &Db, outcome: &WriteOutcome) -> Vec<(String, String, serde_json::Value)> {
        let (first, last) = (outcome.first_sequence.expect("events"), outcome.last_sequence.expect("events"));
        let log = db.events_after(first - 1, &Default::default(), 1000).await.expect("events");
        log.into_iter().filter(|e| e.sequence <= last).map(|e| (e.event_type, e.object_id, timeless(e.data))).collect()
    }

    /// What [`group_matches_one_by_one`] saw: each write's outcome both ways, and how many times the group
    /// ran again one write at a time.
    struct Matched {
        grouped: Vec<WriteOutcome>,
        alone: Vec<WriteOutcome>,
        one_at_a_time: u64,
    }

    /// Runs `writes` as one group on `grouped` and one by one on `alone`; asserts that every write creates the
    /// same rows and gets the same events, with the same documents, both ways (an event shows its document as
    /// it stood right after its own write: CONTRACT.md 5).
    async fn group_matches_one_by_one(grouped: &Db, alone: &Db, writes: Vec<Vec<Op>>) -> Matched {
        let mut alone_outcomes = Vec::new();
        for ops in writes.clone() {
            alone_outcomes.push(alone.apply(ops, WriteOptions::default()).await.expect("a write alone"));
        }
        let (serial_before, guarded_before) = grouped.group_commit_reruns();
        let direct = Db { writes: None, ..grouped.clone() };
        let (jobs, answers): (Vec<Job>, Vec<_>) = writes
            .into_iter()
            .map(|ops| {
                let (reply, answer) = tokio::sync::oneshot::channel();
                (Job { ops, options: WriteOptions::default(), reply }, answer)
            })
            .unzip();
        super::commit_group(&direct, &mut super::Opener::Pool(None), jobs, Vec::new()).await;
        let mut grouped_outcomes = Vec::new();
        for (n, (answer, a)) in answers.into_iter().zip(&alone_outcomes).enumerate() {
            let g = answer.await.expect("answered").expect("a write in the group");
            assert_eq!(g.created, a.created, "write {n}: the rows it created");
            let (g_events, a_events) = (timeless_events_of(grouped, &g).await, timeless_events_of(alone, a).await);
            assert_eq!(g_events, a_events, "write {n}: its events and what they show");
            grouped_outcomes.push(g);
        }
        let (serial, guarded) = grouped.group_commit_reruns();
        assert_eq!(guarded, guarded_before, "no write was refused, so none ran behind a savepoint");
        Matched { grouped: grouped_outcomes, alone: alone_outcomes, one_at_a_time: serial - serial_before }
    }

    /// Concurrent writes to rows of one document (the phones of one service) each get that document's event
    /// as it stood right after their own write, never with a later write's change: siblings under one parent
    /// are finished one after the other, and writes that meet higher up (phones of two contacts of the
    /// service) make the group run again one write at a time. Writes to different documents still finish
    /// together.
    async fn each_event_of_a_group_shows_its_document_right_after_its_write(grouped_url: &str, alone_url: &str) {
        let id = |n: u32| format!("00000000-0000-4000-8000-{n:012}");
        let (o, s, c1, c2) = (id(1), id(11), id(21), id(22));
        let grouped = Db::connect(grouped_url).await.expect("connect");
        let alone = Db::connect(alone_url).await.expect("connect");
        for db in [&grouped, &alone] {
            db.apply(organization(&o, "Org"), WriteOptions::default()).await.expect("the organization");
            let service = json!({"id": s, "name": "S", "status": "active", "organization_id": o,
                                 "contacts": [{"id": c1, "name": "One"}, {"id": c2, "name": "Two"}]});
            db.apply(put("service", service), WriteOptions::default()).await.expect("the service");
        }
        let phone = |n: u32, link: (&str, &str)| {
            let mut body = json!({"id": id(100 + n), "number": format!("555-01{n:02}")});
            body[link.0] = json!(link.1);
            put("phone", body)
        };
        // Phones of two contacts of the service: they meet only in the service's document.
        let mut writes = vec![phone(1, ("contact_id", &c1)), phone(2, ("contact_id", &c2))];
        // Six phones of the service itself.
        writes.extend((3..9).map(|n| phone(n, ("service_id", &s))));
        assert_eq!(
            group_matches_one_by_one(&grouped, &alone, writes).await.one_at_a_time,
            1,
            "the group ran again, one by one"
        );
        // Rows shown in another row's event, with no root between them: a term and its taxonomy (the term's
        // event shows the taxonomy's detail), a program and an attribute linked to it (the program's event
        // shows its attributes).
        let (t, tt, p) = (id(40), id(41), id(42));
        for db in [&grouped, &alone] {
            let taxonomy = put("taxonomy", json!({"id": t, "name": "T", "description": "d"}));
            db.apply(taxonomy, WriteOptions::default()).await.expect("the taxonomy");
            let term = put("taxonomy_term", json!({"id": tt, "name": "TT", "description": "d", "taxonomy_id": t}));
            db.apply(term, WriteOptions::default()).await.expect("the term");
            let program = put("program", json!({"id": p, "name": "P", "description": "d", "organization_id": o}));
            db.apply(program, WriteOptions::default()).await.expect("the program");
        }
        let shown = vec![
            put("taxonomy_term", json!({"id": tt, "name": "TT renamed", "description": "d", "taxonomy_id": t})),
            put("taxonomy", json!({"id": t, "name": "T renamed", "description": "d"})),
            put("program", json!({"id": p, "name": "P renamed", "description": "d", "organization_id": o})),
            put(
                "attribute",
                json!({"id": id(43), "link_id": p, "link_type": "program", "link_entity": "program",
                                    "taxonomy_term_id": tt, "value": "v"}),
            ),
        ];
        assert_eq!(
            group_matches_one_by_one(&grouped, &alone, shown).await.one_at_a_time,
            1,
            "the group ran again, one by one"
        );
        // A language of a phone that only a location nests, then the location's phones left empty (the phone
        // and its language go): the language's write still announces the location, as it does alone.
        let (loc, lp, lang) = (id(50), id(51), id(52));
        for db in [&grouped, &alone] {
            let place = json!({"id": loc, "name": "Place", "location_type": "physical",
                               "phones": [{"id": lp, "number": "555-0150",
                                           "languages": [{"id": lang, "name": "Spanish", "code": "es"}]}]});
            db.apply(put("location", place), WriteOptions::default()).await.expect("the location");
        }
        let unlinked = vec![
            put("language", json!({"id": lang, "name": "Español", "code": "es", "phone_id": lp})),
            put("location", json!({"id": loc, "name": "Place", "location_type": "physical", "phones": []})),
        ];
        assert_eq!(
            group_matches_one_by_one(&grouped, &alone, unlinked).await.one_at_a_time,
            1,
            "the group ran again, one by one"
        );
        // Siblings alone: each finished before the next is staged, without running the group again.
        let siblings = (9..12).map(|n| phone(n, ("service_id", &s))).collect();
        assert_eq!(
            group_matches_one_by_one(&grouped, &alone, siblings).await.one_at_a_time,
            0,
            "siblings finished in turn"
        );
        // New organizations and a phone of the service: no document reached twice, finished together.
        let disjoint = vec![
            organization(&id(3), "Three"),
            put("phone", json!({"id": id(200), "number": "555-0200", "contact_id": c1})),
            organization(&id(4), "Four"),
        ];
        assert_eq!(group_matches_one_by_one(&grouped, &alone, disjoint).await.one_at_a_time, 0, "finished together");
        for table_name in ["service", "organization"] {
            let t = table(table_name).unwrap();
            let row = if table_name == "service" { &s } else { &o };
            let (g, a) = (grouped.get(t, row).await.unwrap(), alone.get(t, row).await.unwrap());
            assert_eq!(g.map(timeless), a.map(timeless), "{table_name}");
        }
        grouped.close().await;
        alone.close().await;
    }

    on_a_group_store_and_one_by_one_store!(each_event_of_a_group_shows_its_document_right_after_its_write);

    /// PostgreSQL: a write that waits for the document lock (an `If-Match` PUT of a service and its phones) reads
    /// the phones again once it holds the lock, not as the group read them before: a transaction that held
    /// the lock deleted one phone meanwhile, so the PUT creates it again (it updated a row that was gone), and
    /// left a tombstone of the other (new) phone's id, which the PUT's insert removes.
    async fn a_write_reads_again_what_changed_while_it_waited_for_the_lock(database_url: &str) {
        let (s, p) = ("00000000-0000-4000-8000-000000000041", "00000000-0000-4000-8000-000000000042");
        let db = Db::connect(database_url).await.expect("connect");
        let o = "00000000-0000-4000-8000-000000000040";
        db.apply(organization(o, "Org"), WriteOptions::default()).await.expect("organization");
        let body = json!({"id": s, "name": "S", "status": "active", "organization_id": o,
                          "phones": [{"id": p, "number": "555-0100"}]});
        db.apply(put("service", body.clone()), WriteOptions::default()).await.expect("service");
        let fresh = "00000000-0000-4000-8000-000000000043";
        let mut body = body;
        body["phones"].as_array_mut().unwrap().push(json!({"id": fresh, "number": "555-0101"}));
        // Another writer holds the lock and deletes the phone.
        let mut other = db.pool.begin().await.expect("begin");
        super::super::write::lock_documents(&mut super::Conn::from(&mut *other)).await.expect("lock");
        for sql in ["DELETE FROM record_refs WHERE id = $1", "DELETE FROM records WHERE id = $1"] {
            sqlx::query(sql).bind(p).execute(&mut *other).await.expect("delete the phone");
        }
        let service = table("service").unwrap();
        let options = WriteOptions { if_match: Some((service, s.to_string(), "*".into())), ..Default::default() };
        let put = tokio::spawn({
            let db = db.clone();
            async move { db.apply(put("service", body), options).await }
        });
        // The PUT reads its rows, then waits for the lock.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(!put.is_finished(), "the PUT waits for the lock");
        // (As if it had created and deleted a phone of that id after the PUT read that none had a tombstone.)
        sqlx::query("INSERT INTO tombstones (kind, id, deleted_at, origin) VALUES ('phone', $1, 'x', 'x')")
            .bind(fresh)
            .execute(&mut *other)
            .await
            .expect("a tombstone");
        other.commit().await.expect("commit");
        let outcome = put.await.expect("joined").expect("the PUT");
        assert!(outcome.created.contains(&("phone", p.to_string())), "{:?}", outcome.created);
        assert!(db.get(table("phone").unwrap(), p).await.unwrap().is_some(), "the phone is back");
        let tombstones: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tombstones WHERE id = $1")
            .bind(fresh)
            .fetch_one(&db.pool)
            .await
            .expect("tombstones");
        assert_eq!(tombstones.0, 0, "the new phone has no tombstone");
        db.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_reads_again_what_changed_while_it_waited_for_the_lock_postgres() {
        on_fresh_postgres(
            |url| async move { a_write_reads_again_what_changed_while_it_waited_for_the_lock(&url).await },
        )
        .await;
    }

    on_a_group_store_and_one_by_one_store!(staged_writes_finish_as_if_one_by_one);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_write_of_a_group_gets_its_own_sequences_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        each_write_of_a_group_gets_its_own_sequences(&format!("sqlite://{}", dir.path().join("seq.db").display()))
            .await;
    }

    /// On PostgreSQL a lone write dispatches at commit without a savepoint. When that dispatch fails, the
    /// write runs again without it and commits once, its event left at the dispatch cursor for the worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_dispatch_at_commit_leaves_the_write_to_commit_and_its_event_to_the_worker_postgres() {
        on_fresh_postgres(|url| async move {
            let db = Db::connect(&url).await.expect("connect");
            db.dispatch_at_commit("http://127.0.0.1:9", 30);
            FAIL_NEXT_DISPATCH.lock().unwrap().push(db.lease_holder().to_string());
            let id = "00000000-0000-4000-8000-0000000000e1";
            let done = db.apply(organization(id, "Kept"), WriteOptions::default()).await.expect("the write");
            assert!(FAIL_NEXT_DISPATCH.lock().unwrap().is_empty(), "its dispatch failed");
            assert_eq!((done.first_sequence, done.last_sequence), (Some(1), Some(1)), "committed once");
            assert_eq!(db.get(table("organization").unwrap(), id).await.unwrap().expect("kept")["name"], "Kept");
            let cursor: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = 'dispatch_cursor'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
            assert_eq!(cursor, 0, "its event waits for the worker's dispatcher");
            // The next lone write dispatches at commit again (its event is not next after the cursor, so it
            // too is left to the worker, but the write goes through the dispatch without failing).
            let next = db.apply(organization("00000000-0000-4000-8000-0000000000e2", "Next"), WriteOptions::default());
            assert_eq!(next.await.expect("the next write").first_sequence, Some(2));
            db.close().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_write_of_a_group_gets_its_own_sequences_postgres() {
        on_fresh_postgres(|url| async move { each_write_of_a_group_gets_its_own_sequences(&url).await }).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_group_fails_alone_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        a_panicking_group_fails_alone(&format!("sqlite://{}", dir.path().join("panic.db").display())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_group_fails_alone_postgres() {
        on_fresh_postgres(|url| async move { a_panicking_group_fails_alone(&url).await }).await;
    }
}
