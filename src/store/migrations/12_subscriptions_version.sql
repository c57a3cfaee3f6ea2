-- A version of the subscriptions as the delivery pipeline sees them (see `store::webhooks::SubscriptionCache`).
-- On PostgreSQL a trigger bumps it in the transaction of every change that matters there, so a dispatcher in
-- any process can tell by one row whether the subscriptions it holds in memory are still current, instead of
-- reading all of them for every batch of events. SQLite has the row too (one schema); its only process knows
-- its own changes and does not read it.
INSERT INTO counters (name, value) VALUES ('subscriptions_version', 0) ON CONFLICT (name) DO NOTHING;
