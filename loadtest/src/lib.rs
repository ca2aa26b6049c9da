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
