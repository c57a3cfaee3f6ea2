-- List pages read a root's list form (nested arrays left out) instead of parsing its whole document.
ALTER TABLE records ADD COLUMN summary TEXT;
