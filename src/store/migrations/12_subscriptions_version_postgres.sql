-- Bumps the subscriptions' version (see 12_subscriptions_version.sql). The delivery bookkeeping an attempt
-- writes (last success or failure, the failure streak) is left out: every batch of attempts writes it, and
-- nothing the dispatcher or the sender decides depends on it. A new column counts, unless listed here.
-- The counter's row lock is taken after the subscription rows a statement changes and before the event
-- counter (a recorder's `webhook.*` events), the order every writer of subscriptions already follows.
CREATE OR REPLACE FUNCTION bump_subscriptions_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'subscriptions_version';
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER subscriptions_added_or_removed AFTER INSERT OR DELETE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION bump_subscriptions_version();
CREATE OR REPLACE TRIGGER subscriptions_changed AFTER UPDATE ON subscriptions
    FOR EACH ROW
    WHEN ((to_jsonb(OLD) - '{last_success_at,last_failure_at,consecutive_failures,failing_since,updated_at}'::text[])
          IS DISTINCT FROM
          (to_jsonb(NEW) - '{last_success_at,last_failure_at,consecutive_failures,failing_since,updated_at}'::text[]))
    EXECUTE FUNCTION bump_subscriptions_version();
