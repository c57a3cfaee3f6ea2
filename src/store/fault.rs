//! Store faults: the database errors that mean "the store cannot do this right now" rather than a bug —
//! the file locked by another process, no space left, the server unreachable or restarting — and the
//! store's current condition, which `GET /health` shows. A write that fails with a fault marks the store
//! degraded; the next write that commits (a request's or the webhook worker's) marks it healthy again.

use std::sync::Mutex;

use serde::Serialize;

/// What kind of fault stopped a database operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Another process held the lock longer than the busy timeout (SQLite), or a lock or serialization
    /// conflict (PostgreSQL). Transient: retrying later succeeds.
    Busy,
    /// No space left for the database's files.
    StorageFull,
    /// The database server cannot be reached or is restarting, or its files cannot be written (I/O error).
    Unavailable,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Busy => "busy",
            FaultKind::StorageFull => "storage_full",
            FaultKind::Unavailable => "unavailable",
        }
    }
}

/// The fault behind `e`, if it is one (`None` for constraint violations, bad SQL, decoding errors, ...).
pub fn classify(e: &sqlx::Error) -> Option<FaultKind> {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            Some(FaultKind::Unavailable)
        }
        sqlx::Error::Database(db) => {
            let code = db.code()?;
            // PostgreSQL SQLSTATEs are five characters; SQLite's extended result codes have at most four digits.
            if code.len() == 5 { classify_postgres(&code) } else { classify_sqlite(code.parse().ok()?) }
        }
        _ => None,
    }
}

fn classify_sqlite(extended: i32) -> Option<FaultKind> {
    // https://www.sqlite.org/rescode.html: the primary code is the low byte of the extended one.
    match extended & 0xff {
        5 | 6 => Some(FaultKind::Busy),          // SQLITE_BUSY, SQLITE_LOCKED
        13 => Some(FaultKind::StorageFull),      // SQLITE_FULL
        10 | 14 => Some(FaultKind::Unavailable), // SQLITE_IOERR, SQLITE_CANTOPEN
        _ => None,
    }
}

fn classify_postgres(sqlstate: &str) -> Option<FaultKind> {
    match sqlstate {
        "53100" => Some(FaultKind::StorageFull),                     // disk_full
        "40001" | "40P01" | "55P03" => Some(FaultKind::Busy),        // serialization, deadlock, lock_not_available
        "57P01" | "57P02" | "57P03" => Some(FaultKind::Unavailable), // admin/crash shutdown, cannot_connect_now
        s if s.starts_with("08") || s.starts_with("53") => Some(FaultKind::Unavailable), // connection, resources
        _ => None,
    }
}

/// The error of a write that waited for this process's own SQLite write lock longer than the busy timeout
/// (the writer ahead of it was itself waiting for another process). It carries SQLite's `SQLITE_BUSY` code,
/// so it is the same fault as the database's own busy error.
pub(crate) fn write_lock_timeout() -> sqlx::Error {
    sqlx::Error::Database(Box::new(StoreError {
        code: Some("5".into()),
        message: "timed out waiting for the write lock: the write ahead of this one is waiting for the database".into(),
    }))
}

/// The same failure again, for each of several writes that shared the transaction it stopped (sqlx errors
/// cannot be cloned). The copy keeps the database's code and message, so it is classified alike.
pub(crate) fn copy_of(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        sqlx::Error::Database(db) => sqlx::Error::Database(Box::new(StoreError {
            code: db.code().map(|c| c.into_owned()),
            message: db.message().to_string(),
        })),
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// A database error with SQLite's or PostgreSQL's `code`, made outside sqlx (the rusqlite write path).
pub(crate) fn database_error(code: Option<String>, message: String) -> sqlx::Error {
    sqlx::Error::Database(Box::new(StoreError { code, message }))
}

/// A database error made by hsda: a copy of one, or the write-lock timeout (SQLite's busy code).
#[derive(Debug)]
struct StoreError {
    code: Option<String>,
    message: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "(code: {code}) {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for StoreError {}

impl sqlx::error::DatabaseError for StoreError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.code.as_deref().map(std::borrow::Cow::Borrowed)
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

/// A fault as `/health` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// The database's own message for the latest failure.
    pub detail: String,
    /// When the first failure of this episode happened, and the latest.
    pub since: String,
    pub last_seen: String,
    /// Operations that failed with it so far.
    pub failures: u64,
    /// When a write committed again (only on the last episode, once it is over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered_at: Option<String>,
}

/// The store's condition: the current fault (if writes are failing) and the previous one.
#[derive(Debug, Default)]
pub struct Condition {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    current: Option<Fault>,
    last: Option<Fault>,
}

impl Condition {
    /// Records `e` if it is a fault; returns its kind. The first failure of an episode is logged.
    pub fn failed(&self, e: &sqlx::Error) -> Option<FaultKind> {
        let kind = classify(e)?;
        let now = super::now_text();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut state.current {
            Some(fault) => {
                fault.kind = kind;
                fault.detail = e.to_string();
                fault.last_seen = now;
                fault.failures += 1;
            }
            None => {
                tracing::error!(fault = kind.as_str(), error = %e, "database fault: operations fail until it ends");
                state.current = Some(Fault {
                    kind,
                    detail: e.to_string(),
                    since: now.clone(),
                    last_seen: now,
                    failures: 1,
                    recovered_at: None,
                });
            }
        }
        Some(kind)
    }

    /// A write committed: a fault in progress is over.
    pub fn committed(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut fault) = state.current.take() {
            tracing::info!(fault = fault.kind.as_str(), failures = fault.failures, since = %fault.since,
                "database fault over: writes commit again");
            fault.recovered_at = Some(super::now_text());
            state.last = Some(fault);
        }
    }

    /// The fault in progress (writes are failing), and the last one that ended.
    pub fn snapshot(&self) -> (Option<Fault>, Option<Fault>) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.current.clone(), state.last.clone())
    }

    /// Passes `result` through, recording a fault or a successful commit.
    pub fn observe<T>(&self, result: sqlx::Result<T>) -> sqlx::Result<T> {
        match &result {
            Ok(_) => self.committed(),
            Err(e) => {
                self.failed(e);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_and_postgres_codes_are_told_apart() {
        assert_eq!(classify_sqlite(5), Some(FaultKind::Busy));
        assert_eq!(classify_sqlite(517), Some(FaultKind::Busy)); // SQLITE_BUSY_SNAPSHOT
        assert_eq!(classify_sqlite(13), Some(FaultKind::StorageFull));
        assert_eq!(classify_sqlite(778), Some(FaultKind::Unavailable)); // SQLITE_IOERR_WRITE
        assert_eq!(classify_sqlite(2067), None); // SQLITE_CONSTRAINT_UNIQUE
        assert_eq!(classify_postgres("53100"), Some(FaultKind::StorageFull));
        assert_eq!(classify_postgres("57P01"), Some(FaultKind::Unavailable));
        assert_eq!(classify_postgres("08006"), Some(FaultKind::Unavailable));
        assert_eq!(classify_postgres("40001"), Some(FaultKind::Busy));
        assert_eq!(classify_postgres("23505"), None);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Some(FaultKind::Unavailable));
        assert_eq!(classify(&sqlx::Error::RowNotFound), None);
        assert_eq!(classify(&write_lock_timeout()), Some(FaultKind::Busy));
    }

    #[test]
    fn a_fault_lasts_until_the_next_commit() {
        let condition = Condition::default();
        assert!(condition.failed(&sqlx::Error::RowNotFound).is_none());
        assert!(condition.snapshot().0.is_none());
        condition.failed(&sqlx::Error::PoolTimedOut);
        condition.failed(&sqlx::Error::PoolTimedOut);
        let (current, last) = condition.snapshot();
        assert_eq!(current.as_ref().map(|f| (f.kind, f.failures)), Some((FaultKind::Unavailable, 2)));
        assert!(last.is_none());
        condition.committed();
        let (current, last) = condition.snapshot();
        assert!(current.is_none());
        assert!(last.and_then(|f| f.recovered_at).is_some());
    }
}
