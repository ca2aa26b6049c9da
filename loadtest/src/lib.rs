//! `locus-loadtest`: load and fault-injection driver for the locator and its edges, with
//! a report (terminal table, JSON, self-contained HTML with SVG charts).
//!
//! - [`addresses`]: client addresses drawn from the networks of a real GeoIP database, so
//!   simulated traffic has a realistic country mix (or from the built-in demo networks).
//! - [`topology`]: the local topology of real `locator` and `edge` processes, and the
//!   signals that inject faults (only into processes it started).
//! - [`proxy`]: the TCP proxy each edge's locator link goes through, which cuts
//!   (blackhole), slows down, resets and heals that link.
//! - [`client`]: simulated users: sessions created or joined through the locator with
//!   `X-Forwarded-For`, websockets to the edges, message rounds, re-joins.
//! - [`record`]: what the clients saw, recorded as they go.
//! - [`scenario`]: phases and faults (`steady`, `burst`, `edge-crash`, `edge-hang`,
//!   `edge-stall`, `slow-link`, `link-partition`, `link-flap`, `region-outage`,
//!   `locator-restart`, `rolling-drain`, `mixed`); the failure detector's faults are
//!   watched on every locator ([`topology::Topology::watch_edge`]).
//! - [`fleet`]: `loadtest fleet`, thousands of simulated edges speaking the real link
//!   protocol against real locators: what a fleet costs a locator, selection latency, and
//!   how fast a report reaches selection and the other locators.
//! - [`run`]: one run end to end, including the audit log read back from the locator.
//! - [`report`]: figures and invariants, JSON and terminal table; [`html`]: the HTML
//!   report with inline SVG charts.
//!
//! Layering (no import cycle, checked by `tests/import_graph.rs`): the commands `run` and
//! `fleet` are the top; `run` drives `scenario`, `client` and `topology` and hands what was
//! recorded to `report`, which imports only `record` and `scenario` (the data it sums up,
//! never the run); `html` renders a `report`; `record`, `proxy` and `addresses` import no
//! sibling. The clock lives here at the root.

pub mod addresses;
pub mod client;
pub mod fleet;
pub mod html;
pub mod proxy;
pub mod record;
pub mod report;
pub mod run;
pub mod scenario;
pub mod topology;

/// Milliseconds since the Unix epoch, as the locator and the edge count them (`i64`, the
/// type of the protocol's and the audit log's timestamps): the run's start, spool
/// entries, the locators' clocks. Times within a run are `u64` ms since its start
/// ([`record::Recorder::now_ms`]).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
