-- Digest schedules, intent verification and ordered delivery. Same text for SQLite and PostgreSQL.
-- A digest subscription is due at next_digest_at and covers the events after digest_after_sequence.
ALTER TABLE subscriptions ADD COLUMN next_digest_at TEXT;
ALTER TABLE subscriptions ADD COLUMN digest_after_sequence BIGINT NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN digest_since TEXT;
-- A `pending` subscription with verification_due_at set is sent a challenge when that time comes.
ALTER TABLE subscriptions ADD COLUMN verification_due_at TEXT;
ALTER TABLE subscriptions ADD COLUMN verification_error TEXT;
ALTER TABLE subscriptions ADD COLUMN verified_at TEXT;
-- Ordered subscriptions claim only their earliest unfinished delivery.
CREATE INDEX IF NOT EXISTS deliveries_unfinished ON deliveries (subscription_id, status, event_sequence);
