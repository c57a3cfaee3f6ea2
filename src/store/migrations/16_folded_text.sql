-- Sort keys and search text are stored with Latin diacritics folded (`hsds::document::fold_diacritics`), so
-- that `cafe` finds `Café` on PostgreSQL as on SQLite, and names sort by their letters. Nothing in the schema
-- changes: the rows stored before are folded by `store::fold_stored_text`, which `migrate` runs right after
-- this file, in the same migration. It is a version all the same: an older hsda refuses the database from
-- now on, as its searches would miss folded rows (PostgreSQL) and its writes would store unfolded text.
SELECT 1;
