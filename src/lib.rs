//! hsda: an HSDS 3.1 directory server that pushes every change to its subscribers as signed webhooks.
//!
//! The path of a change through the tree: `http` (parse and authorize) -> `hsds` (validate against the
//! catalog) -> `store` (rows, compiled documents and events in one transaction) -> `webhook` (fan-out,
//! signed delivery, attempt log).

pub mod hsds;
pub mod webhook;
