//! The store: one SQL schema on SQLite (embedded, default) or PostgreSQL (shared by several processes),
//! reached through sqlx's `Any` driver so that both run the same queries. Holds HSDS rows and their
//! compiled documents, the event log, API keys and (later) the webhook tables.
//!
//! Invariant: every write goes through [`write`] (`Db::apply`, `Db::import`), which appends the change's events
//! in the same transaction; no other code mutates `records` or `events`.

pub mod compile;
pub mod events;
pub mod fault;
pub mod follow;
pub mod group_commit;
pub mod keys;
pub mod liveness;
pub mod read;
pub(crate) mod sql;
pub mod webhooks;
pub mod write;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection, Executor};
use tokio::sync::Mutex;

/// The event sequence at which statistics are first refreshed (see [`Db::keep_statistics_fresh`]).
const FIRST_ANALYZE: i64 = 200;

/// Which SQL engine is behind the pool; the few statements that differ branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle on the database, cheap to clone.
#[derive(Clone)]
pub struct Db {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    /// SQLite allows one writer at a time; taking this in-process lock before `BEGIN` avoids busy retries.
    write_lock: Option<Arc<Mutex<()>>>,
    instance_id: Arc<str>,
    /// This handle's name on the leases it takes: unique per connect, so per process (see [`liveness`]).
    lease_holder: Arc<str>,
    /// Woken after every commit that appended events or deliveries, so workers need not poll.
    pub(crate) changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// The group-commit queue directory writes go through (`None` inside the committers themselves).
    writes: Option<group_commit::Queue>,
    group_stats: Arc<group_commit::GroupStats>,
    /// Every subscription as last read, for the webhook worker's hot paths.
    pub(crate) subscription_cache: Arc<webhooks::SubscriptionCache>,
    /// How long a write waits for the write lock (SQLite: this process's and another process's) or for a
    /// connection (PostgreSQL) before it fails with a busy or unavailable fault.
    busy_timeout: Duration,
    /// Whether writes are failing with a fault right now (shown by `/health`).
    condition: Arc<fault::Condition>,
    /// Recently authenticated API keys.
    key_cache: Arc<keys::KeyCache>,
    /// Dispatching at commit and the worker's hints (see [`webhooks::DispatchState`]).
    pub(crate) dispatch: Arc<webhooks::DispatchState>,
    /// PostgreSQL: the event sequence at which this process next refreshes the planner's statistics.
    next_analyze: Arc<std::sync::atomic::AtomicI64>,
}

/// How the store opens and waits for the database.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// See [`Db`]'s `busy_timeout`; default 10 s.
    pub busy_timeout: Duration,
    /// Whether a SQLite file that does not exist is created (default) or refused: a command that only reads
    /// would otherwise make an empty database and report on it as if it were the directory (a mistyped path
    /// "exported 0 documents").
    pub create_if_missing: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { busy_timeout: Duration::from_secs(10), create_if_missing: true }
    }
}

/// The migration after whose SQL [`fold_stored_text`] folds the rows stored before it.
const FOLDED_TEXT: i64 = 16;

// Each migration is one or more SQL files applied in order. Files shared by both engines appear in both lists;
// only the `records` table and its full-text index differ. Version 3 was never released (the digest migration
// landed as 5).
const SQLITE_MIGRATIONS: &[(i64, &[&str])] = &[
    (1, &[include_str!("migrations/1_records_sqlite.sql"), include_str!("migrations/1_schema.sql")]),
    (2, &[include_str!("migrations/2_webhooks.sql")]),
    (4, &[include_str!("migrations/4_summaries.sql")]),
    (5, &[include_str!("migrations/5_digests.sql")]),
    (6, &[include_str!("migrations/6_fewer_indexes.sql")]),
    (7, &[include_str!("migrations/7_search_text_unchanged_sqlite.sql")]),
    (8, &[include_str!("migrations/8_claimable_at.sql")]),
    (9, &[include_str!("migrations/9_search_index_at_commit_sqlite.sql")]),
    (10, &[include_str!("migrations/10_lease_holders.sql")]),
    (11, &[include_str!("migrations/11_manual_attempts.sql")]),
    (12, &[include_str!("migrations/12_subscriptions_version.sql")]),
    (13, &[include_str!("migrations/13_all_tenants.sql")]),
    (14, &[include_str!("migrations/14_ordered_queues.sql")]),
    (15, &[include_str!("migrations/15_open_by_subscription_claimable_at.sql")]),
    (FOLDED_TEXT, &[include_str!("migrations/16_folded_text.sql")]),
    (17, &[include_str!("migrations/17_follow_cursors.sql")]),
];
const POSTGRES_MIGRATIONS: &[(i64, &[&str])] = &[
    (1, &[include_str!("migrations/1_records_postgres.sql"), include_str!("migrations/1_schema.sql")]),
    (2, &[include_str!("migrations/2_webhooks.sql")]),
    (4, &[include_str!("migrations/4_summaries.sql")]),
    (5, &[include_str!("migrations/5_digests.sql")]),
    (6, &[include_str!("migrations/6_fewer_indexes.sql")]),
    (8, &[include_str!("migrations/8_claimable_at.sql")]),
    (10, &[include_str!("migrations/10_lease_holders.sql"), include_str!("migrations/10_live_workers_postgres.sql")]),
    (11, &[include_str!("migrations/11_manual_attempts.sql")]),
    (
        12,
        &[
            include_str!("migrations/12_subscriptions_version.sql"),
            include_str!("migrations/12_subscriptions_version_postgres.sql"),
        ],
    ),
    (13, &[include_str!("migrations/13_all_tenants.sql")]),
    (14, &[include_str!("migrations/14_ordered_queues.sql")]),
    (15, &[include_str!("migrations/15_open_by_subscription_claimable_at.sql")]),
    (FOLDED_TEXT, &[include_str!("migrations/16_folded_text.sql")]),
    (17, &[include_str!("migrations/17_follow_cursors.sql")]),
];

impl Db {
    /// Connects to `sqlite://path` (created if missing, unless [`StoreOptions::create_if_missing`] says not) or `postgres://...` and runs pending migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// [`Db::connect`] with other waiting times.
    pub async fn connect_with(url: &str, options: StoreOptions) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let busy_ms = options.busy_timeout.as_millis().clamp(1, i32::MAX as u128);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            bail!("unsupported database URL {url:?}: use sqlite://FILE or postgres://...");
        };
        let pool = match backend {
            Backend::Sqlite => {
                // Without a file each pooled connection would open a database of its own in memory, gone
                // with it: nothing written would be read back.
                if sqlite_file(url).is_none() {
                    bail!("the SQLite URL {url:?} names no file: use sqlite://FILE, e.g. sqlite://hsda.db");
                }
                if !options.create_if_missing
                    && let Some(path) = sqlite_file(url)
                    && !path.exists()
                {
                    bail!(
                        "no SQLite database at {} (only serve, migrate, import and keys create make one)",
                        path.display()
                    );
                }
                let mode = if options.create_if_missing { "rwc" } else { "rw" };
                let url = if url.contains('?') { url.to_string() } else { format!("{url}?mode={mode}") };
                let options = AnyConnectOptions::from_str(&url).context("parsing the SQLite URL")?;
                // The pool retries a connection that fails until its acquire timeout (30 s), then says only that
                // it timed out: one connection made first says at once what is wrong (a file that is not a
                // database, a folder that cannot be written).
                let opening = format!("opening {url}");
                let said = |e| first_connection_error(e, &opening);
                let mut first = sqlx::AnyConnection::connect_with(&options).await.map_err(said)?;
                first.execute(sqlite_pragmas(busy_ms).as_str()).await.map_err(said)?;
                first.close().await.map_err(said)?;
                AnyPoolOptions::new()
                    .max_connections(8)
                    .before_acquire(|conn, _| Box::pin(async move { Ok(still_usable(conn)) }))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            conn.execute(sqlite_pragmas(busy_ms).as_str()).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
                    .with_context(|| format!("opening {url}"))?
            }
            Backend::Postgres => {
                let url = with_statement_cache(url);
                // As for SQLite: the server refusing, or no such database, said at once.
                let first = sqlx::AnyConnection::connect(&url)
                    .await
                    .map_err(|e| first_connection_error(e, "connecting to PostgreSQL"))?;
                first.close().await.context("connecting to PostgreSQL")?;
                AnyPoolOptions::new()
                    .max_connections(16)
                    .before_acquire(|conn, _| Box::pin(async move { Ok(still_usable(conn)) }))
                    .acquire_timeout(options.busy_timeout.max(Duration::from_secs(1)))
                    .connect(&url)
                    .await
                    .context("connecting to PostgreSQL")?
            }
        };
        let mut db = Db {
            pool,
            backend,
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
            instance_id: Arc::from(""),
            lease_holder: Arc::from(format!("prc_{}", uuid::Uuid::new_v4().simple())),
            changed: Arc::new(tokio::sync::watch::channel(0).0),
            writes: None,
            group_stats: Arc::default(),
            subscription_cache: Arc::default(),
            busy_timeout: options.busy_timeout,
            condition: Arc::new(fault::Condition::default()),
            key_cache: Arc::default(),
            dispatch: Arc::default(),
            next_analyze: Arc::new(std::sync::atomic::AtomicI64::new(FIRST_ANALYZE)),
        };
        db.migrate().await?;
        db.instance_id = Arc::from(db.load_instance_id().await?);
        let direct = match backend {
            Backend::Sqlite => sqlite_file(url).map(|path| open_direct(&path, busy_ms)).transpose()?,
            Backend::Postgres => None,
        };
        db.writes = Some(group_commit::start(&db, direct).context("starting the SQLite committer thread")?);
        Ok(db)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The name this process's leases carry (see [`liveness`]).
    pub fn lease_holder(&self) -> &str {
        &self.lease_holder
    }

    /// The id of this hsda instance, recorded as the origin of every change made here.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Applies the migrations this database has not seen yet. Safe to run from several processes at once.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        let migrations = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => {
                conn.execute("SELECT pg_advisory_lock(7235001)").await?;
                POSTGRES_MIGRATIONS
            }
        };
        let sqlite = self.backend == Backend::Sqlite;
        let result = async {
            if sqlite {
                // One transaction, holding the write lock from the start: another process migrating the same
                // file waits, then finds the version already bumped; a failed migration leaves nothing behind.
                conn.execute("BEGIN IMMEDIATE").await?;
            }
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)").await?;
            let current: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'schema_version'")
                .fetch_optional(&mut *conn)
                .await?;
            let current: i64 = current.as_deref().unwrap_or("0").parse().unwrap_or(0);
            let known = migrations.last().map_or(0, |(v, _)| *v);
            // A newer hsda's schema may need things this build does not do (on SQLite, version 9 needs every
            // commit to apply the search-index queue): writing to it could corrupt it quietly.
            anyhow::ensure!(
                current <= known,
                "the database's schema version is {current}, newer than this hsda knows ({known}): run a newer hsda"
            );
            for (version, parts) in migrations.iter().filter(|(v, _)| *v > current) {
                for sql in *parts {
                    conn.execute(*sql).await.with_context(|| format!("applying migration {version}"))?;
                }
                if *version == FOLDED_TEXT {
                    fold_stored_text(&mut conn, self.backend).await.context("folding stored text (migration 16)")?;
                }
                sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', $1) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(version.to_string())
                .execute(&mut *conn)
                .await?;
            }
            sqlx::query(
                "INSERT INTO counters (name, value) VALUES ('event_sequence', 0) ON CONFLICT (name) DO NOTHING",
            )
            .execute(&mut *conn)
            .await?;
            // Search-index changes left queued by a transaction that did not apply them (SQLite): none are
            // expected (every commit applies its own), but if any are, search is right again from now on.
            write::apply_queued_search(&mut sql::Conn::from(&mut *conn), self.backend).await?;
            sqlx::query("INSERT INTO meta (key, value) VALUES ('instance_id', $1) ON CONFLICT (key) DO NOTHING")
                .bind(format!("hsda_{}", uuid::Uuid::new_v4().simple()))
                .execute(&mut *conn)
                .await?;
            if sqlite {
                conn.execute("COMMIT").await?;
            }
            anyhow::Ok(())
        }
        .await;
        match self.backend {
            Backend::Postgres => {
                conn.execute("SELECT pg_advisory_unlock(7235001)").await?;
            }
            Backend::Sqlite if result.is_err() => {
                // Nothing of a failed migration stays (DDL is transactional in SQLite).
                let _ = conn.execute("ROLLBACK").await;
            }
            Backend::Sqlite => {}
        }
        result
    }

    async fn load_instance_id(&self) -> anyhow::Result<String> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = 'instance_id'").fetch_one(&self.pool).await?)
    }

    /// Whether the database answers; used by the health endpoint.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Whether writes are failing with a fault right now, and the last fault that ended.
    pub fn condition(&self) -> &fault::Condition {
        &self.condition
    }

    /// A receiver that sees a new value whenever something was committed that the dispatcher or the
    /// delivery workers may act on (events appended, deliveries queued), so they need not poll.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// PostgreSQL plans a prepared statement once per connection and keeps that plan. Planned while a table
    /// was empty, a lookup by key becomes a sequential scan, and stays one as the table grows until autovacuum
    /// happens to analyze it (measured: 30 ms per lookup at 20k rows, writes down to a third). So while the
    /// directory grows, each fourfold growth of the event log (from [`FIRST_ANALYZE`] events) refreshes the
    /// statistics of the tables writes read, which also makes every connection plan its statements again.
    pub(crate) fn keep_statistics_fresh(&self, last_sequence: i64) {
        use std::sync::atomic::Ordering;
        let due = self.next_analyze.load(Ordering::Relaxed);
        if self.backend != Backend::Postgres || last_sequence < due {
            return;
        }
        let next = last_sequence.saturating_mul(4);
        if self.next_analyze.compare_exchange(due, next, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let analyze = "ANALYZE records, record_refs, record_facets, events, deliveries, attempts, subscriptions";
            if let Err(e) = sqlx::query(analyze).execute(&pool).await {
                tracing::warn!(error = %e, "refreshing the planner's statistics failed");
            }
        });
    }

    pub(crate) fn notify_changed(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Directory write transactions committed by this process and the writes they carried.
    pub fn group_commit_stats(&self) -> (u64, u64) {
        self.group_stats.read()
    }

    /// How many groups ran again: (one write at a time, with a savepoint per write); see `group_commit`.
    pub fn group_commit_reruns(&self) -> (u64, u64) {
        self.group_stats.reruns()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Folds the sort keys and search text of the rows stored before migration 16 (see its file), a batch of
/// rows at a time. On PostgreSQL each batch is a transaction of its own (the migration lock keeps other
/// processes' migrations out, not their writes: a row rewritten meanwhile is left as its write left it, which
/// is folded). On SQLite it all happens in the migration's one transaction, and only sort keys change: FTS5
/// folds the text it indexes itself.
async fn fold_stored_text(conn: &mut sqlx::AnyConnection, backend: Backend) -> anyhow::Result<()> {
    use crate::hsds::document::fold_diacritics;
    let postgres = backend == Backend::Postgres;
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT CAST(rid AS BIGINT), sort_key, search_text FROM records WHERE rid > $1 ORDER BY rid LIMIT 2000",
        )
        .bind(after)
        .fetch_all(&mut *conn)
        .await?;
        let Some(&(last, _, _)) = rows.last() else { return Ok(()) };
        after = last;
        let changed = rows.iter().filter_map(|(rid, sort_key, search_text)| {
            let key = fold_diacritics(sort_key);
            let text = if postgres { fold_diacritics(search_text) } else { search_text.into() };
            (key != sort_key.as_str() || text != search_text.as_str()).then_some((
                rid,
                sort_key,
                search_text,
                key,
                text,
            ))
        });
        let changed: Vec<_> = changed.collect();
        if changed.is_empty() {
            continue;
        }
        if postgres {
            conn.execute("BEGIN").await?;
        }
        for (rid, sort_key, search_text, key, text) in &changed {
            sqlx::query(
                "UPDATE records SET sort_key = $1, search_text = $2 WHERE rid = $3 AND sort_key = $4 AND search_text = $5",
            )
            .bind(&**key)
            .bind(&**text)
            .bind(**rid)
            .bind(*sort_key)
            .bind(*search_text)
            .execute(&mut *conn)
            .await?;
        }
        if postgres {
            conn.execute("COMMIT").await?;
        }
    }
}

/// The file a `sqlite:` URL names (`None` when it names none: `sqlite://`, or an in-memory `:memory:`).
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| std::path::PathBuf::from(path))
}

/// `url` with room for 1 024 prepared statements per PostgreSQL connection, unless it says otherwise.
/// Multi-row statements have one text per row count (a group's events, deliveries, documents, attempts), so
/// sqlx's default of 100 evicted and prepared them again and again: every prepare is a parse and a plan.
fn with_statement_cache(url: &str) -> String {
    if url.contains("statement-cache-capacity=") {
        return url.to_string();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}statement-cache-capacity=1024")
}

/// How every SQLite connection (the pool's and the group committer's) is set up. WAL lets readers run beside
/// the writer; FULL sync makes each commit survive a power cut, not only a crash of the process;
/// `temp_store = MEMORY` keeps the savepoints' statement journal (one savepoint per write of a group) off the
/// disk: in a temp file it was a tenth of all cycles of a write-heavy run. A checkpoint every 4000 WAL pages
/// (16 MiB) instead of SQLite's 1000 copies a page rewritten by many commits once for more of them: 10 % fewer
/// bytes written on a run of 20k new organizations (BENCHMARKS.md).
fn sqlite_pragmas(busy_ms: u128) -> String {
    format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = {busy_ms}; \
         PRAGMA foreign_keys = OFF; PRAGMA cache_size = -32768; PRAGMA temp_store = MEMORY; \
         PRAGMA wal_autocheckpoint = 4000;"
    )
}

/// The group committer's own connection to the SQLite file, set up like the pool's connections.
fn open_direct(path: &std::path::Path, busy_ms: u128) -> anyhow::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path).with_context(|| format!("opening {} for writing", path.display()))?;
    conn.execute_batch(&sqlite_pragmas(busy_ms)).with_context(|| format!("setting up {}", path.display()))?;
    // Facet and event inserts vary in their number of rows, so a write uses a few dozen statement texts.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// Whether an idle pooled connection may be handed out: not if it is still inside a transaction. That happens
/// when SQLite rolls a transaction back by itself (a COMMIT failing with "disk full" or an I/O error does): the
/// driver's own ROLLBACK then fails and it keeps counting the transaction as open, so every later BEGIN on that
/// connection would fail. Such a connection is closed and replaced.
/// Why the database could not be opened (`what` was being done), said once: sqlx's errors from the database
/// or the operating system repeat their cause's message as their own, which a chained report printed twice.
fn first_connection_error(e: sqlx::Error, what: &str) -> anyhow::Error {
    match e {
        sqlx::Error::Database(e) => anyhow::anyhow!("{what}: {}", e.message()),
        sqlx::Error::Io(e) => anyhow::anyhow!("{what}: {e}"),
        e => anyhow::Error::new(e).context(what.to_string()),
    }
}

fn still_usable(conn: &sqlx::AnyConnection) -> bool {
    use sqlx::Connection;
    if conn.is_in_transaction() {
        tracing::warn!("closing a pooled database connection left inside a transaction by a failed commit");
        return false;
    }
    true
}

/// `$1, $2, ...` placeholders for an `IN (...)` list starting after `offset` earlier parameters.
pub(crate) fn placeholders(offset: usize, count: usize) -> String {
    (offset + 1..=offset + count).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// The placeholders of a multi-row `VALUES` list: `rows` comma-separated runs of `per_row` numbered
/// parameters each, the first run starting at `$first` (callers put parentheses and constants around them).
pub(crate) fn row_placeholders(first: usize, rows: usize, per_row: usize) -> Vec<String> {
    (0..rows).map(|r| placeholders(first - 1 + r * per_row, per_row)).collect()
}

/// The current time as stored: RFC 3339 UTC with microseconds, so that text order is time order.
pub fn now_text() -> String {
    timestamp_text(chrono::Utc::now())
}

pub fn timestamp_text(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    /// Runs `test` on a fresh PostgreSQL database (dropped afterwards), when `HSDA_TEST_POSTGRES_URL` names a
    /// server.
    pub(crate) async fn on_fresh_postgres<F: std::future::Future<Output = ()>>(test: impl FnOnce(String) -> F) {
        let Ok(admin_url) = std::env::var("HSDA_TEST_POSTGRES_URL") else { return };
        let name = format!("hsda_test_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&admin_url).await.expect("PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create database");
        let (base, _) = admin_url.rsplit_once('/').expect("a database in the URL");
        test(format!("{base}/{name}")).await;
        let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&admin).await;
    }

    #[test]
    fn row_placeholders_number_every_row_after_the_leading_parameters() {
        assert_eq!(super::row_placeholders(3, 2, 2), vec!["$3, $4", "$5, $6"]);
        assert_eq!(super::row_placeholders(1, 1, 3), vec!["$1, $2, $3"]);
    }

    #[test]
    fn postgres_urls_get_a_larger_statement_cache_unless_they_name_one() {
        let cache = super::with_statement_cache;
        assert_eq!(cache("postgres://h/db"), "postgres://h/db?statement-cache-capacity=1024");
        assert_eq!(
            cache("postgres://h/db?sslmode=disable"),
            "postgres://h/db?sslmode=disable&statement-cache-capacity=1024"
        );
        assert_eq!(cache("postgres://h/db?statement-cache-capacity=5"), "postgres://h/db?statement-cache-capacity=5");
    }
}
