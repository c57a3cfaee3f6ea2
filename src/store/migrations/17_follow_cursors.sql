-- Where this hsda stands in the event log of each directory it follows (`hsda serve --follow URL`): the last
-- sequence of that source whose change is applied here. Moved in the transaction that applies the changes, so
-- each is applied exactly once, whatever stops the process and however many processes follow the source.
CREATE TABLE IF NOT EXISTS follow_cursors (
    source TEXT PRIMARY KEY,
    after_sequence BIGINT NOT NULL,
    updated_at TEXT NOT NULL
);
