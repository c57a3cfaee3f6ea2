-- Webhook engine tables; the same SQL runs on SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    payload TEXT NOT NULL,
    filter TEXT NOT NULL,
    schedule TEXT,
    description TEXT NOT NULL DEFAULT '',
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_until TEXT,
    signing TEXT NOT NULL,
    max_concurrency BIGINT NOT NULL,
    rate_limit_per_second BIGINT,
    ordered BIGINT NOT NULL DEFAULT 0,
    headers TEXT NOT NULL,
    metadata TEXT NOT NULL,
    verify BIGINT NOT NULL DEFAULT 0,
    start_sequence BIGINT NOT NULL DEFAULT 0,
    public_key TEXT,
    status TEXT NOT NULL,
    disabled_reason TEXT,
    last_success_at TEXT,
    last_failure_at TEXT,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    failing_since TEXT,
    disabled_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS subscriptions_by_tenant ON subscriptions (tenant, created_at);

-- One row per (subscription, event): its body is fixed at creation so retries send the same bytes.
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_sequence BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    object_id TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    lease_until TEXT,
    last_status_code BIGINT,
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_by_subscription ON deliveries (subscription_id, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_once ON deliveries (subscription_id, event_id);

CREATE TABLE IF NOT EXISTS attempts (
    id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    at TEXT NOT NULL,
    status_code BIGINT,
    duration_ms BIGINT NOT NULL,
    error TEXT,
    error_class TEXT,
    response_body TEXT
);
CREATE INDEX IF NOT EXISTS attempts_by_delivery ON attempts (delivery_id, at);

INSERT INTO counters (name, value) VALUES ('dispatch_cursor', 0) ON CONFLICT (name) DO NOTHING;
