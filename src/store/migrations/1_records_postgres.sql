-- `records` on PostgreSQL: a BIGSERIAL row id, and a generated tsvector with a GIN index.
-- One row per HSDS row of any table. `data` holds the row's own fields; `doc` the compiled document of
-- root tables (service, organization, location, service_at_location), kept current on every write.
CREATE TABLE IF NOT EXISTS records (
    rid BIGSERIAL PRIMARY KEY,
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

ALTER TABLE records ADD COLUMN IF NOT EXISTS search_vector tsvector
    GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED;
CREATE INDEX IF NOT EXISTS records_search ON records USING GIN (search_vector);
