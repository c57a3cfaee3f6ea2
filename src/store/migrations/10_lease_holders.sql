-- Which process holds a delivery's lease, or a subscription's verification challenge in flight
-- (`Db::lease_holder`), so that a process that died has them given back at once (PostgreSQL, see
-- `store::liveness`) instead of when its leases run out.
ALTER TABLE deliveries ADD COLUMN lease_holder TEXT;
ALTER TABLE subscriptions ADD COLUMN verification_holder TEXT;
