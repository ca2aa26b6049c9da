//! `locus-locator`: the locator service and its command line.
//!
//! - [`cli`]: the `locator` command (`check-config`, `resolve`, `serve`).
//! - [`edge_state`]: the pure state machine of one edge (active, suspended, draining,
//!   link-lost, failed).
//! - [`snapshot`]: the immutable registry snapshot that selection reads.
//! - [`selection`]: pure choice of an edge: least-loaded in region, no herding, fallback
//!   and spill by headroom.
//! - [`registry`]: the live edge registry (links, statuses, reports) publishing snapshots.
//! - [`edge_link`]: the websocket edges keep to the locator.
//! - [`admin`]: the admin page (embedded assets, sign-in, live status over server-sent
//!   events) and its JSON API (status, audit log), with the one admin auth check.
//! - [`api`]: the HTTP routes; [`problem`] their errors; [`client_ip`] the client address
//!   behind trusted proxies; [`turn`] ICE servers and TURN credentials, chosen by the
//!   checks of [`turn_health`] (STUN Binding / TURN Allocate against every pool's servers).
//! - [`try_page`]: the "try it" page (`/try`), built on the client library of `clients/js`.
//! - [`rate_limit`]: per-client limits on session creates and locates.
//! - [`store`]: sessions, rooms, edges, audit and metrics in SQLite or Postgres.
//! - [`cluster`]: several locators on one Postgres database (edge state published by
//!   the locator holding each edge, assignments and admin actions sent to all).
//! - [`housekeeping`]: sessions nobody joined expire; edges failed for long are forgotten.
//! - [`server`]: shared state, background tasks (state ticks, health probes, GeoIP and
//!   config reload) and the serve loop.
//!
//! The region decision itself lives in `locus-geo`; this crate wires it to the outside
//! world (files, flags, HTTP, websockets and the database).

pub mod admin;
pub mod api;
pub mod cli;
pub mod client_ip;
pub mod cluster;
pub mod cluster_sync;
pub mod edge_link;
pub mod edge_state;
#[doc(hidden)]
pub mod fuzzing;
pub mod housekeeping;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod probe;
pub mod rate_limit;
pub mod registry;
pub mod routing;
pub mod selection;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod try_page;
pub mod turn;
