-- A version of the subscriptions as the delivery pipeline sees them (see `store::webhooks::SubscriptionCache`).
-- On PostgreSQL a trigger bumps it in the transaction of every change that matters there, so a dispatcher in
-- any process can tell by one row whether the subscriptions it holds in memory are still current, instead of
-- reading all of them for every batch of events. SQLite has the row too (one schema); its only process knows
-- its own changes and does not read it.
INSERT INTO counters (name, value) VALUES ('subscriptions_version', 0) ON CONFLICT (name) DO NOTHING;

-- The dispatch cursor when a subscription was last disabled: every event after it was dispatched while the
-- subscription took none, even one that occurred before the disable (on PostgreSQL a write may commit just
-- before a disable and be dispatched just after it). `enable` with `replay_missed` replays from there.
ALTER TABLE subscriptions ADD COLUMN disabled_after_sequence BIGINT;

-- Every round of the worker asks when the next digest and the next challenge are due. Without these it read
-- every subscription twice per round: 0.2 ms each with 500 subscriptions, most of a round's own cost.
CREATE INDEX IF NOT EXISTS subscriptions_digests_due ON subscriptions (next_digest_at) WHERE schedule IS NOT NULL;
CREATE INDEX IF NOT EXISTS subscriptions_verifications_due ON subscriptions (verification_due_at)
    WHERE status = 'pending';
