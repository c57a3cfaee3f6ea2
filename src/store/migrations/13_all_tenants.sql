-- A subscription made with an admin key hears the operational events (`webhook.failing|recovered|disabled`)
-- of every tenant's subscriptions, as an operator watching all partners wants; any other hears its own
-- tenant's only.
ALTER TABLE subscriptions ADD COLUMN all_tenants BIGINT NOT NULL DEFAULT 0;
