//! hsda's integration tests: one binary that starts the real server over real SQLite and PostgreSQL.

mod dns;
mod helpers;
mod process;
mod receiver;

mod api;
mod authz;
mod bulk;
mod cli;
mod crash;
mod delivery;
mod directory;
mod faults;
mod fuzz;
mod ssrf;
mod webhooks;
