//! hsda: an HSDS 3.1 directory server that pushes every change to its subscribers as signed webhooks.
//!
//! The path of a change through the tree: `http` (parse and authorize) -> `hsds` (validate and flatten
//! against the catalog) -> `store` (rows, compiled documents and events in one transaction) -> `webhook`
//! (fan-out, signed delivery, attempt log).

/// Bulk import and export of HSDS data packages and JSON documents.
pub mod bulk;
/// The command line.
pub mod cli;
/// Settings from flags, environment and file.
pub mod config;
/// The event catalog (types and payload schemas).
pub mod events;
/// Following another hsda: its event log applied here, in order, exactly once.
pub mod follow;
/// Deterministic generator of realistic directories (demo and benchmarks).
pub mod generate;
/// The HSDS domain: catalog, validation, documents. No I/O.
pub mod hsds;
/// The HTTP API.
pub mod http;
/// Operational metrics (`GET /metrics`).
pub mod metrics;
/// hsda's OpenAPI document.
pub mod openapi;
/// Building and running the server.
pub mod startup;
/// The database: rows, documents, events, keys.
pub mod store;
/// The webhook engine: subscriptions, signing, SSRF guard, retries and delivery.
pub mod webhook;
