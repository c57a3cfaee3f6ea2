//! The webhook engine's pure building blocks: everything about a delivery that can be decided without a
//! database or a network call.
//!
//! [`signature`] signs a delivery per Standard Webhooks v1 (HMAC `whsec_` secrets and ed25519 keys);
//! [`ssrf`] decides which target addresses may be called, before and after DNS resolution; [`retry`]
//! spaces out attempts and reads `Retry-After`; [`pattern`] matches event types against a subscription's
//! `events`; [`schedule`] says when a digest subscription is next due; [`rate`] spaces out the deliveries of
//! rate-limited subscriptions. [`client`] and [`worker`] make the calls; [`dns`] looks target names up at an
//! operator-chosen DNS server.

pub mod client;
pub mod dns;
pub mod pattern;
pub mod rate;
pub mod retry;
pub mod schedule;
pub mod signature;
pub mod ssrf;
pub mod worker;
