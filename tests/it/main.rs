//! hsda's integration tests: one binary that starts the real server over real SQLite and PostgreSQL.

mod helpers;

mod crash;
mod directory;
mod receiver;
mod webhooks;
