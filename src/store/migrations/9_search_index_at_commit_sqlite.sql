-- The FTS5 index is brought up to date once per transaction, just before it commits, instead of by each
-- write's trigger. FTS5 writes its pending entries out as a new index segment at every statement savepoint
-- that follows an FTS5 change, and a group commit runs dozens of statements with one (any insert that a
-- trigger or a constraint may abort has one): that was a tenth of the SQLite committer's time. The triggers
-- now queue each index change here, in order; `store::write::apply_queued_search` applies and empties the
-- queue.
CREATE TABLE IF NOT EXISTS records_fts_queue (
    seq INTEGER PRIMARY KEY,
    rid INTEGER NOT NULL,
    op TEXT CHECK (op IS NULL OR op = 'delete'),
    search_text TEXT NOT NULL
);
DROP TRIGGER IF EXISTS records_fts_insert;
DROP TRIGGER IF EXISTS records_fts_delete;
DROP TRIGGER IF EXISTS records_fts_update;
CREATE TRIGGER records_fts_insert AFTER INSERT ON records BEGIN
    INSERT INTO records_fts_queue (rid, op, search_text) VALUES (new.rid, NULL, new.search_text);
END;
CREATE TRIGGER records_fts_delete AFTER DELETE ON records BEGIN
    INSERT INTO records_fts_queue (rid, op, search_text) VALUES (old.rid, 'delete', old.search_text);
END;
CREATE TRIGGER records_fts_update AFTER UPDATE OF search_text ON records
WHEN old.search_text IS NOT new.search_text BEGIN
    INSERT INTO records_fts_queue (rid, op, search_text) VALUES (old.rid, 'delete', old.search_text);
    INSERT INTO records_fts_queue (rid, op, search_text) VALUES (new.rid, NULL, new.search_text);
END;
