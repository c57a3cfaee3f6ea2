-- `records` on SQLite: an INTEGER PRIMARY KEY row id, and an FTS5 index kept by triggers.
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
