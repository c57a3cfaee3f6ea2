-- Attempts asked for by hand (`POST /deliveries/{id}/retry`, a replay) are extra: they do not use up the
-- automatic retry schedule, whose position is `attempts - manual_attempts`. `manual_due` marks a delivery
-- whose next attempt is such a one.
ALTER TABLE deliveries ADD COLUMN manual_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN manual_due BIGINT NOT NULL DEFAULT 0;
