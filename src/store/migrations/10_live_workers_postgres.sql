-- The webhook workers running on this database, each holding a session-level advisory lock on `lock_key`
-- for as long as it runs (see `store::liveness`).
CREATE TABLE IF NOT EXISTS live_workers (
    holder TEXT PRIMARY KEY,
    lock_key BIGINT NOT NULL,
    started_at TEXT NOT NULL
);
