-- hsda schema, shared by SQLite and PostgreSQL. The engine files (1_records_*.sql) hold `records` and its search index.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);


-- Every reference field of every row: who points at whom, for cascades, compiled documents and filters.
CREATE TABLE IF NOT EXISTS record_refs (
    target_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    field TEXT NOT NULL,
    id TEXT NOT NULL,
    rid BIGINT NOT NULL,
    PRIMARY KEY (target_id, kind, field, id)
);
CREATE INDEX IF NOT EXISTS record_refs_by_rid ON record_refs (rid);

-- Filterable facts of root documents (organization_id, taxonomy_term_id, taxonomy_id, location_id, postcode ...).
CREATE TABLE IF NOT EXISTS record_facets (
    kind TEXT NOT NULL,
    facet TEXT NOT NULL,
    value TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (kind, facet, value, id)
);
CREATE INDEX IF NOT EXISTS record_facets_by_id ON record_facets (kind, id);

CREATE TABLE IF NOT EXISTS tombstones (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    deleted_at TEXT NOT NULL,
    origin TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);

-- The event log: gap-free `sequence`, written in the same transaction as the change it describes.
CREATE TABLE IF NOT EXISTS events (
    sequence BIGINT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    object TEXT NOT NULL,
    object_id TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    origin TEXT NOT NULL,
    origin_event_id TEXT,
    data TEXT NOT NULL,
    facets TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_type ON events (type, sequence);
CREATE INDEX IF NOT EXISTS events_by_object ON events (object_id, sequence);
CREATE INDEX IF NOT EXISTS events_by_time ON events (occurred_at);

CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    scope TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
