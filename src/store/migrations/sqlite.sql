-- hsda schema, SQLite flavour. Kept in step with postgres.sql: same tables, same columns.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);

-- One row per HSDS row of any table. `data` holds the row's own fields; `doc` the compiled document of
-- root tables (service, organization, location, service_at_location), kept current on every write.
CREATE TABLE IF NOT EXISTS records (
    rid INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    doc TEXT,
    sort_key TEXT NOT NULL,
    search_text TEXT NOT NULL DEFAULT '',
    modified_at TEXT NOT NULL,
    origin TEXT NOT NULL,
    latitude DOUBLE PRECISION,
    longitude DOUBLE PRECISION,
    UNIQUE (kind, id)
);
CREATE INDEX IF NOT EXISTS records_by_sort ON records (kind, sort_key, id);
CREATE INDEX IF NOT EXISTS records_by_modified ON records (kind, modified_at);
CREATE INDEX IF NOT EXISTS records_by_id ON records (id);

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

CREATE VIRTUAL TABLE IF NOT EXISTS records_fts USING fts5 (search_text, content = 'records', content_rowid = 'rid');
CREATE TRIGGER IF NOT EXISTS records_fts_insert AFTER INSERT ON records BEGIN
    INSERT INTO records_fts (rowid, search_text) VALUES (new.rid, new.search_text);
END;
CREATE TRIGGER IF NOT EXISTS records_fts_delete AFTER DELETE ON records BEGIN
    INSERT INTO records_fts (records_fts, rowid, search_text) VALUES ('delete', old.rid, old.search_text);
END;
CREATE TRIGGER IF NOT EXISTS records_fts_update AFTER UPDATE OF search_text ON records BEGIN
    INSERT INTO records_fts (records_fts, rowid, search_text) VALUES ('delete', old.rid, old.search_text);
    INSERT INTO records_fts (rowid, search_text) VALUES (new.rid, new.search_text);
END;
