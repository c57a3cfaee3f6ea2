-- Where this hsda stands in the event log of each directory it follows (`hsda serve --follow URL`): the last
-- sequence of that source whose change is applied here. Moved in the transaction that applies the changes, so
-- each is applied exactly once, whatever stops the process and however many processes follow the source.
-- A document's `updated` event that a change inside it caused, its own row unchanged, says so: a follower
-- applies rows' own fields, and such an event carries the document's own fields as they were, not as changed.
ALTER TABLE events ADD COLUMN changed_inside_only INTEGER NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS follow_cursors (
    source TEXT PRIMARY KEY,
    after_sequence BIGINT NOT NULL,
    updated_at TEXT NOT NULL
);
