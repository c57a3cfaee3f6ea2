-- Which process holds a delivery's lease (`Db::lease_holder`), so that the leases of a process that died can
-- be given back at once (PostgreSQL, see `store::liveness`) instead of when they run out.
ALTER TABLE deliveries ADD COLUMN lease_holder TEXT;
