//! Prometheus metrics of the locator (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::edge_state::EdgeState;
use crate::snapshot::RegistrySnapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    pub region: String,
    pub rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// Every metric the locator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub locate_answers: Family<AnswerLabels, Counter>,
    pub fallbacks: Family<ReasonLabels, Counter>,
    pub edges: Family<StateLabels, Gauge>,
    pub selection_seconds: Histogram,
    pub spool_entries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("locator");
        let requests = Family::<RequestLabels, Counter>::default();
        let locate_answers = Family::<AnswerLabels, Counter>::default();
        let fallbacks = Family::<ReasonLabels, Counter>::default();
        let edges = Family::<StateLabels, Gauge>::default();
        // 1 µs … ~1 s.
        let selection_seconds = Histogram::new(exponential_buckets(1e-6, 4.0, 11));
        let spool_entries = Counter::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "answers",
            "Locate and session answers by client region and GeoIP rule",
            locate_answers.clone(),
        );
        registry.register(
            "fallbacks",
            "Answers served outside the client's region, by reason",
            fallbacks.clone(),
        );
        registry.register("edges", "Known edges by state", edges.clone());
        registry.register(
            "selection_seconds",
            "Time to choose an edge",
            selection_seconds.clone(),
        );
        registry.register(
            "spool_entries_stored",
            "Audit entries and metrics samples relayed by edges and stored",
            spool_entries.clone(),
        );
        Metrics {
            registry,
            requests,
            locate_answers,
            fallbacks,
            edges,
            selection_seconds,
            spool_entries,
        }
    }
}

impl Metrics {
    /// The text exposition, with edge gauges refreshed from `snapshot`.
    pub fn render(&self, snapshot: &RegistrySnapshot) -> String {
        for state in EdgeState::ALL {
            let n = snapshot
                .edges
                .iter()
                .filter(|e| e.status.state() == state)
                .count();
            self.edges
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(n as i64);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
