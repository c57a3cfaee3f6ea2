//! Operational metrics for `GET /metrics` (OpenMetrics text, which Prometheus scrapes): what the webhook
//! engine did (attempts by outcome and error class, their durations, what is in flight) and what the HTTP
//! API served (requests by route and status, their durations), counted as it happens; and what the store
//! holds (events, open deliveries, subscriptions by status, group commits), read when scraped.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    /// `succeeded`, `retry`, `failed` (no retry left) or `gone` (410).
    outcome: &'static str,
    /// Empty on success; otherwise `http_status`, `timeout`, `connect`, `dns`, `tls`, `ssrf`, ...
    error_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The matched route (`/services/{id}`), never the raw path: ids would make a series each.
    route: String,
    status: u16,
}

/// The counters and histograms that are updated as things happen; one per process, shared.
#[derive(Debug)]
pub struct Metrics {
    attempts: Family<AttemptLabels, Counter>,
    attempt_seconds: Histogram,
    in_flight: Gauge,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RequestLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            attempts: Family::default(),
            attempt_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            in_flight: Gauge::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14))),
        }
    }
}

/// What the store holds, read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct StoreFigures {
    pub last_event_sequence: i64,
    pub open_deliveries: i64,
    /// (status, count) of the subscriptions.
    pub subscriptions: Vec<(String, i64)>,
    /// (transactions committed, writes they carried) since start.
    pub group_commits: (u64, u64),
    /// Groups run again since start: (one write at a time, with a savepoint per write).
    pub group_reruns: (u64, u64),
    /// Whether writes currently fail with a store fault (what `/health` calls `degraded`).
    pub degraded: bool,
}

impl Metrics {
    /// One delivery attempt ended: `outcome` as the worker judged it.
    pub fn attempt(&self, outcome: &'static str, error_class: Option<&str>, took: Duration) {
        let labels = AttemptLabels { outcome, error_class: error_class.unwrap_or_default().to_string() };
        self.attempts.get_or_create(&labels).inc();
        self.attempt_seconds.observe(took.as_secs_f64());
    }

    /// An attempt started (dropping the guard ends it).
    pub fn attempt_started(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// One API request was answered.
    pub fn request(&self, method: String, route: String, status: u16, took: Duration) {
        let labels = RequestLabels { method, route, status };
        self.requests.get_or_create(&labels).inc();
        self.request_seconds.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// Everything, as OpenMetrics text (metric names start with `hsda_`).
    pub fn render(&self, store: &StoreFigures) -> String {
        let mut registry = Registry::with_prefix("hsda");
        registry.register(
            "delivery_attempts",
            "Webhook delivery attempts by outcome (succeeded, retry, failed, gone) and error class",
            self.attempts.clone(),
        );
        registry.register(
            "delivery_attempt_duration_seconds",
            "How long webhook delivery attempts took, to the end of the target's answer",
            self.attempt_seconds.clone(),
        );
        registry.register("deliveries_in_flight", "Webhook delivery attempts under way", self.in_flight.clone());
        registry.register("http_requests", "API requests answered, by method, route and status", self.requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "How long API requests took to answer",
            self.request_seconds.clone(),
        );
        registry.register(
            "event_sequence",
            "The sequence number of the newest event in the log",
            ConstGauge::new(store.last_event_sequence),
        );
        registry.register(
            "deliveries_open",
            "Deliveries not yet finished (pending or retrying), over all processes",
            ConstGauge::new(store.open_deliveries),
        );
        let subscriptions = Family::<StatusLabels, Gauge>::default();
        for (status, count) in &store.subscriptions {
            subscriptions.get_or_create(&StatusLabels { status: status.clone() }).set(*count);
        }
        registry.register("subscriptions", "Subscriptions by status", subscriptions);
        registry.register(
            "write_transactions",
            "Write transactions this process committed (group commits)",
            ConstCounter::new(store.group_commits.0),
        );
        registry.register(
            "writes",
            "Directory writes this process committed",
            ConstCounter::new(store.group_commits.1),
        );
        registry.register(
            "write_groups_rerun_one_at_a_time",
            "Write groups run again one write at a time: writes finished together would have reached one document",
            ConstCounter::new(store.group_reruns.0),
        );
        registry.register(
            "write_groups_rerun_guarded",
            "Write groups run again with a savepoint per write: a write was refused inside the transaction",
            ConstCounter::new(store.group_reruns.1),
        );
        registry.register(
            "store_degraded",
            "1 while writes fail with a store fault (locked, full, unreachable), else 0",
            ConstGauge::new(i64::from(store.degraded)),
        );
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// An attempt in flight; counted down when dropped (also when the attempt's task is cancelled).
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_happened_and_what_the_store_holds() {
        let metrics = Metrics::default();
        metrics.attempt("succeeded", None, Duration::from_millis(3));
        metrics.attempt("retry", Some("http_status"), Duration::from_millis(5));
        metrics.attempt("retry", Some("http_status"), Duration::from_millis(7));
        metrics.request("GET".into(), "/services/{id}".into(), 200, Duration::from_micros(800));
        let started = metrics.attempt_started();
        let store = StoreFigures {
            last_event_sequence: 42,
            open_deliveries: 3,
            subscriptions: vec![("active".into(), 2), ("disabled".into(), 1)],
            group_commits: (10, 25),
            group_reruns: (2, 1),
            degraded: false,
        };
        let text = metrics.render(&store);
        for line in [
            r#"hsda_delivery_attempts_total{outcome="succeeded",error_class=""} 1"#,
            r#"hsda_delivery_attempts_total{outcome="retry",error_class="http_status"} 2"#,
            "hsda_delivery_attempt_duration_seconds_count 3",
            "hsda_deliveries_in_flight 1",
            r#"hsda_http_requests_total{method="GET",route="/services/{id}",status="200"} 1"#,
            "hsda_event_sequence 42",
            "hsda_deliveries_open 3",
            r#"hsda_subscriptions{status="disabled"} 1"#,
            "hsda_write_transactions_total 10",
            "hsda_writes_total 25",
            "hsda_write_groups_rerun_one_at_a_time_total 2",
            "hsda_write_groups_rerun_guarded_total 1",
            "hsda_store_degraded 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
        drop(started);
        assert!(metrics.render(&store).lines().any(|l| l == "hsda_deliveries_in_flight 0"));
    }
}
