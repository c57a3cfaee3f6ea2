-- The full-text index is rewritten only when a row's search text changes: a write stores most rows'
-- text more than once (a root's row, then its compiled document), mostly unchanged, and each rewrite
-- was a delete and an insert in the FTS5 index. (PostgreSQL's generated tsvector needs no such care.)
DROP TRIGGER IF EXISTS records_fts_update;
CREATE TRIGGER IF NOT EXISTS records_fts_update AFTER UPDATE OF search_text ON records
WHEN old.search_text IS NOT new.search_text BEGIN
    INSERT INTO records_fts (records_fts, rowid, search_text) VALUES ('delete', old.rid, old.search_text);
    INSERT INTO records_fts (rowid, search_text) VALUES (new.rid, new.search_text);
END;
