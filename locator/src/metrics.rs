//! Prometheus metrics of the locator (`GET /metrics`).
//!
//! The counters on the request path are resolved once and kept as handles: a
//! [`ShardedCounter`] clone shares its cells with the family's series, so counting a
//! request is one atomic increment on the calling thread's own cache line, with no label
//! allocation, hashing, family lock or contention between worker threads. A handle
//! is resolved the first time its series is used, so `/metrics` lists the same series
//! (only those that have counted something) as if every request went through
//! `Family::get_or_create`.

pub mod traffic;

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use locus_geo::{Config, RegionIndex, Rule};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::edge_state::{EdgeState, FailReason, Liveness};
use crate::selection::SelectReason;
use crate::snapshot::RegistrySnapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Cow<'static, str>,
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
pub struct TurnServerLabels {
    pub region: String,
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionStateLabels {
    pub region: String,
    pub state: &'static str,
}

/// The region states of the admin page, as `locator_region_state` labels (see
/// [`crate::admin::status`]).
pub const REGION_STATES: [&str; 4] = ["healthy", "degraded", "down", "fallback"];

/// The `route` label of requests no route matched (the 404 fallback).
pub const UNMATCHED: &str = "unmatched";

/// The routes of [`crate::api::router`] (with the admin routes), as their `route`
/// labels: the hot ones first. A route missing here is still counted, through the
/// family (slower, same series).
const ROUTES: [&str; 18] = [
    "/v1/locate",
    "/healthz",
    "/v1/sessions",
    "/v1/sessions/{id}",
    locus_protocol::EDGE_LINK_PATH,
    "/readyz",
    "/metrics",
    "/v1/admin/explain",
    "/v1/admin/edges/{id}/{action}",
    "/v1/admin/status",
    "/v1/admin/events",
    "/v1/admin/audit",
    "/admin",
    "/admin/",
    "/admin/login",
    "/admin/logout",
    "/admin/assets/{name}",
    UNMATCHED,
];

/// Statuses with a kept handle per route; others go through the family.
const STATUSES: [u16; 17] = [
    200, 201, 101, 303, 400, 401, 403, 404, 405, 409, 410, 413, 415, 422, 429, 500, 503,
];

/// A request's `route` label, taken before the request is handled.
#[derive(Debug, Clone)]
pub enum RouteLabel {
    /// Index into the known routes.
    Known(usize),
    /// A matched path missing from the known routes.
    Other(String),
}

impl RouteLabel {
    /// The label for a request's matched path (`None`: no route matched).
    pub fn of(matched_path: Option<&str>) -> RouteLabel {
        let path = matched_path.unwrap_or(UNMATCHED);
        match ROUTES.iter().position(|r| *r == path) {
            Some(i) => RouteLabel::Known(i),
            None => RouteLabel::Other(path.to_string()),
        }
    }
}

/// `locator_http_requests_total{route, status}` with kept handles.
#[derive(Debug, Default)]
pub struct RequestCounters {
    family: Family<RequestLabels, ShardedCounter>,
    /// `ROUTES.len() * STATUSES.len()` handles, route-major.
    kept: [[OnceLock<ShardedCounter>; STATUSES.len()]; ROUTES.len()],
}

impl RequestCounters {
    /// Counts one answered request.
    pub fn inc(&self, route: &RouteLabel, status: u16) {
        let slot = STATUSES.iter().position(|s| *s == status);
        match (route, slot) {
            (RouteLabel::Known(r), Some(s)) => self.kept[*r][s]
                .get_or_init(|| {
                    self.family.get_or_create_owned(&RequestLabels {
                        route: Cow::Borrowed(ROUTES[*r]),
                        status,
                    })
                })
                .inc(),
            (RouteLabel::Known(r), None) => self
                .family
                .get_or_create(&RequestLabels {
                    route: Cow::Borrowed(ROUTES[*r]),
                    status,
                })
                .inc(),
            (RouteLabel::Other(path), _) => self
                .family
                .get_or_create(&RequestLabels {
                    route: Cow::Owned(path.clone()),
                    status,
                })
                .inc(),
        };
    }
}

/// Index of a rule in [`AnswerCounters`].
fn rule_slot(rule: Rule) -> usize {
    match rule {
        Rule::CidrOverride => 0,
        Rule::Country => 1,
        Rule::Continent => 2,
        Rule::Nearest => 3,
        Rule::Default => 4,
    }
}

/// `locator_answers_total{region, rule}` handles for the regions of one config (built
/// with each loaded config, resolved on first use).
#[derive(Debug)]
pub struct AnswerCounters {
    kept: Vec<[OnceLock<ShardedCounter>; 5]>,
}

impl AnswerCounters {
    pub fn new(regions: usize) -> AnswerCounters {
        AnswerCounters {
            kept: (0..regions).map(|_| Default::default()).collect(),
        }
    }

    /// Counts one answer for a client of `region` placed by `rule`; `config` is the
    /// config these counters were built for. An out-of-range index counts nothing.
    pub fn inc(&self, metrics: &Metrics, config: &Config, region: RegionIndex, rule: Rule) {
        let (Some(kept), Some(r)) = (self.kept.get(region.get()), config.region_at(region)) else {
            return;
        };
        kept[rule_slot(rule)]
            .get_or_init(|| {
                metrics.locate_answers.get_or_create_owned(&AnswerLabels {
                    region: r.id.clone(),
                    rule: rule.as_str(),
                })
            })
            .inc();
    }
}

/// Every metric the locator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: RequestCounters,
    pub locate_answers: Family<AnswerLabels, ShardedCounter>,
    pub fallbacks: Family<ReasonLabels, ShardedCounter>,
    /// Handles of `fallbacks`, in the order of [`SelectReason::ALL`].
    fallbacks_kept: [OnceLock<ShardedCounter>; SelectReason::ALL.len()],
    pub edges: Family<StateLabels, Gauge>,
    pub selection_seconds: ShardedHistogram,
    pub spool_entries: Counter,
    /// 1 for each region's current state, 0 for its other states (set at each scrape).
    pub region_state: Family<RegionStateLabels, Gauge>,
    /// 1 when `/readyz` would answer ready (set at each scrape).
    pub ready: Gauge,
    /// 1 while a TURN/STUN server is handed out (up or not checked yet), 0 when down.
    pub turn_server_up: Family<TurnServerLabels, Gauge>,
    /// Duration of each server check (whole check: connect, allocate, release).
    pub turn_check_seconds: Family<TurnServerLabels, Histogram>,
    /// HTTP connections open, and closed on arrival at the cap (copied from the serve
    /// loop's counters at each scrape).
    pub connections_open: Gauge,
    pub connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("locator");
        let requests = RequestCounters::default();
        let locate_answers = Family::<AnswerLabels, ShardedCounter>::default();
        let fallbacks = Family::<ReasonLabels, ShardedCounter>::default();
        let edges = Family::<StateLabels, Gauge>::default();
        let selection_seconds = ShardedHistogram::default();
        let spool_entries = Counter::default();
        let region_state = Family::<RegionStateLabels, Gauge>::default();
        let ready = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.family.clone(),
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
        registry.register(
            "edges",
            "Known edges by state (retired: drained and exited on purpose)",
            edges.clone(),
        );
        let turn_server_up = Family::<TurnServerLabels, Gauge>::default();
        registry.register(
            "turn_server_up",
            "1 while a TURN/STUN server of a region's pool is handed out (up or not checked yet), 0 when down",
            turn_server_up.clone(),
        );
        let turn_check_seconds = Family::<TurnServerLabels, Histogram>::new_with_constructor(
            turn_check_histogram as fn() -> Histogram,
        );
        registry.register(
            "turn_check_seconds",
            "Duration of TURN/STUN server checks (a failed one lasts up to turn.check_timeout)",
            turn_check_seconds.clone(),
        );
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
        registry.register(
            "region_state",
            "1 for the state each region shows on the admin page (healthy, degraded, down, fallback), 0 for the others",
            region_state.clone(),
        );
        registry.register(
            "ready",
            "1 when /readyz answers ready (database reachable, GeoIP loaded), else 0",
            ready.clone(),
        );
        let connections_open = Gauge::default();
        let connections_refused = Counter::default();
        registry.register(
            "http_connections_open",
            "HTTP connections open now, edge links and admin streams included",
            connections_open.clone(),
        );
        registry.register(
            "http_connections_refused",
            "Connections closed on arrival because --max-connections were open",
            connections_refused.clone(),
        );
        Metrics {
            registry,
            requests,
            locate_answers,
            fallbacks,
            fallbacks_kept: Default::default(),
            edges,
            selection_seconds,
            spool_entries,
            region_state,
            ready,
            connections_open,
            connections_refused,
            turn_server_up,
            turn_check_seconds,
        }
    }
}

/// Buckets of `locator_turn_check_seconds`: 1 ms × 2ⁿ up to ~16 s (a check on loopback
/// takes well under a millisecond; one across an ocean ~100 ms; a timeout seconds).
fn turn_check_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

impl Metrics {
    /// One TURN/STUN server check: its duration, and whether the server is handed out.
    pub fn turn_checked(&self, region: &str, server: &str, up: bool, elapsed: Duration) {
        let labels = TurnServerLabels {
            region: region.to_string(),
            server: server.to_string(),
        };
        self.turn_server_up
            .get_or_create(&labels)
            .set(i64::from(up));
        self.turn_check_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// A server left the configuration: its series go.
    pub fn turn_removed(&self, region: &str, server: &str) {
        let labels = TurnServerLabels {
            region: region.to_string(),
            server: server.to_string(),
        };
        self.turn_server_up.remove(&labels);
        self.turn_check_seconds.remove(&labels);
    }

    /// Counts one answer served outside the client's region.
    pub fn fallback(&self, reason: SelectReason) {
        let slot = SelectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or_default();
        self.fallbacks_kept[slot]
            .get_or_init(|| {
                self.fallbacks.get_or_create_owned(&ReasonLabels {
                    reason: reason.as_str(),
                })
            })
            .inc();
    }

    /// Sets the per-scrape gauges: readiness and the state of every region of the loaded
    /// config (`(region id, state)`), one series per state so an alert can match
    /// `state="down"` and a region removed from the config disappears.
    pub fn set_health(&self, ready: bool, regions: &[(String, &'static str)]) {
        self.ready.set(i64::from(ready));
        self.region_state.clear();
        for (region, current) in regions {
            for state in REGION_STATES {
                self.region_state
                    .get_or_create(&RegionStateLabels {
                        region: region.clone(),
                        state,
                    })
                    .set(i64::from(state == *current));
            }
        }
    }

    /// Copies the serve loop's connection counters (at each scrape).
    pub fn set_connections(&self, counters: &locus_serve::Counters) {
        self.connections_open
            .set(i64::try_from(counters.open()).unwrap_or(i64::MAX));
        let refused = counters.refused();
        let counted = self.connections_refused.get();
        if refused > counted {
            self.connections_refused.inc_by(refused - counted);
        }
    }

    /// The text exposition, with edge gauges refreshed from `snapshot`.
    pub fn render(&self, snapshot: &RegistrySnapshot) -> String {
        // An edge that drained and exited on purpose is `retired`, not `failed`: an
        // upgrade must not look like (or alert as) a failure.
        let retired = |e: &&crate::snapshot::EdgeView| {
            e.status.liveness
                == Liveness::Failed {
                    why: FailReason::Drained,
                }
        };
        self.edges
            .get_or_create(&StateLabels { state: "retired" })
            .set(snapshot.edges.iter().filter(retired).count() as i64);
        for state in EdgeState::ALL {
            let n = snapshot
                .edges
                .iter()
                .filter(|e| e.status.state() == state && !retired(e))
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

/// Upper bounds of [`ShardedHistogram`]'s buckets: 1, 2 and 5 µs × 10ⁿ up to 10 s, then
/// +Inf. Fine enough that a goal such as "selection p99 under 50 µs" is a bucket edge, so
/// it is read exactly, not interpolated (`loadtest fleet` does).
const BOUNDS: [f64; 23] = [
    1e-6,
    2e-6,
    5e-6,
    1e-5,
    2e-5,
    5e-5,
    1e-4,
    2e-4,
    5e-4,
    1e-3,
    2e-3,
    5e-3,
    1e-2,
    2e-2,
    5e-2,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    f64::INFINITY,
];

/// Shards of a [`ShardedHistogram`]: more than the worker threads of a small machine.
pub const SHARDS: usize = 8;

/// One shard, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    count: AtomicU64,
    sum_nanos: AtomicU64,
    buckets: [AtomicU64; BOUNDS.len()],
}

/// A latency histogram for the request path. prometheus-client's `Histogram` takes a
/// mutex on every observation, which the worker threads then fight over on every
/// request; here each thread adds to its own shard (three relaxed atomic adds on its
/// own cache lines), and `/metrics` sums the shards.
/// Clones share the shards (as prometheus-client's metrics do).
#[derive(Debug, Clone, Default)]
pub struct ShardedHistogram {
    shards: Arc<[Shard; SHARDS]>,
}

/// Next shard handed to a thread.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// The shard of the calling thread.
pub fn shard() -> usize {
    SHARD.with(|s| *s)
}

/// One counter cell on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cell(AtomicU64);

/// A counter for the request path: each thread adds to its own shard, so the worker
/// threads do not fight over one cache line on every request (a prometheus-client
/// `Counter` is one shared atomic). Clones share the shards.
#[derive(Debug, Clone, Default)]
pub struct ShardedCounter {
    cells: Arc<[Cell; SHARDS]>,
}

impl ShardedCounter {
    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.cells[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.cells.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl ShardedHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let shard = &self.shards[shard()];
        let seconds = elapsed.as_secs_f64();
        let bucket = BOUNDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BOUNDS.len() - 1);
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Sum (seconds), count and per-bucket counts over every shard.
    fn totals(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = BOUNDS.iter().map(|&b| (b, 0)).collect();
        let (mut count, mut nanos) = (0u64, 0u64);
        for shard in self.shards.iter() {
            count += shard.count.load(Ordering::Relaxed);
            nanos = nanos.saturating_add(shard.sum_nanos.load(Ordering::Relaxed));
            for (total, n) in buckets.iter_mut().zip(&shard.buckets) {
                total.1 += n.load(Ordering::Relaxed);
            }
        }
        (nanos as f64 / 1e9, count, buckets)
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.totals();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sharded_counter_sums_every_thread_and_encodes_as_a_counter() {
        let counter = ShardedCounter::default();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counter.inc();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert_eq!(counter.get(), 4000);
        let mut registry = Registry::default();
        registry.register("answers", "answers", counter.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("# TYPE answers counter"), "{text}");
        assert!(text.contains("answers_total 4000"), "{text}");
    }

    #[test]
    fn the_sharded_histogram_sums_every_thread() {
        let histogram = ShardedHistogram::default();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let histogram = histogram.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        histogram.observe(Duration::from_micros(3));
                    }
                    histogram.observe(Duration::from_secs(20));
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let (sum, count, buckets) = histogram.totals();
        assert_eq!(count, 4004);
        assert!((sum - (4.0 * 20.0 + 4000.0 * 3e-6)).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[2], (5e-6, 4000), "3 µs falls in (2 µs, 5 µs]");
        assert_eq!(buckets[BOUNDS.len() - 1], (f64::INFINITY, 4), "+Inf");

        let mut registry = Registry::default();
        registry.register("selection_seconds", "time", histogram.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("selection_seconds_count 4004"), "{text}");
        assert!(
            text.contains("selection_seconds_bucket{le=\"0.000005\"} 4000"),
            "{text}"
        );
        assert!(
            text.contains("selection_seconds_bucket{le=\"+Inf\"} 4004"),
            "{text}"
        );
    }
}
