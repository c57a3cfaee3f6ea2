-- A subscription's unfinished deliveries by when they can be claimed next (the expression of
-- `deliveries_unordered_claimable_at`), in place of by event sequence. The worker reads what is due in that
-- index's order and leaves out the subscriptions whose lanes are full; a target that hangs keeps its whole
-- backlog due, at the front of that order, and every read walked past it (8 ms a round on PostgreSQL with
-- 20 000 waiting). Past a short window of busy deliveries, the worker now asks each other subscription for
-- its earliest instead, through this index. A disable still ends a subscription's open deliveries through it.
-- On PostgreSQL it costs no more to keep than the index it replaces (a lease or schedule change is already an
-- update that makes new entries in every index of the row); on SQLite such a change now moves its entry too.
DROP INDEX IF EXISTS deliveries_open_by_subscription;
CREATE INDEX IF NOT EXISTS deliveries_open_by_subscription_claimable_at ON deliveries
    (subscription_id, (CASE WHEN lease_until IS NOT NULL AND lease_until > next_attempt_at THEN lease_until ELSE next_attempt_at END))
    WHERE status IN ('pending', 'retrying');
