//! hsda's integration tests: one binary that starts the real server over real SQLite and PostgreSQL.

mod chaos_targets;
mod dns;
mod helpers;
mod real_server;
mod receiver;

mod api;
mod authz;
mod bulk;
mod chaos;
mod cli;
mod crash;
mod delivery;
mod directory;
mod faults;
mod follow;
mod fuzz;
mod ssrf;
mod webhooks;
