//! `locus-locator`: the locator service and its command line.
//!
//! Layers, bottom up (a module imports only modules of its own layer or below; no import
//! cycle, checked by `cargo test -p locus-loadtest --test import_graph`):
//!
//! 1. Pure pieces and storage: [`edge_state`] (the state machine of one edge),
//!    [`load`] (an edge's load: its score, and the live value reports and assignments
//!    write), [`snapshot`] (the registry snapshot selection reads), [`selection`]
//!    (choice of an edge), [`client_ip`] (the client behind trusted proxies),
//!    [`rate_limit`], [`probe`], [`metrics`] (with the admin page's traffic matrix),
//!    [`turn`] (ICE servers, TURN credentials and their health checks), [`store`]
//!    (SQLite or Postgres), [`openapi`].
//! 2. [`routing`]: one generation of routing (config, GeoIP rules, plan, TURN pools);
//!    [`registry`]: the live edges, publishing each snapshot together with the routing
//!    generation it is indexed for; [`cluster`]: the handle of a locator sharing its
//!    database with others.
//! 3. [`state`]: the shared state ([`state::AppState`]), secrets and clocks. A leaf:
//!    it holds the pieces above and imports nothing that acts on them.
//! 4. [`ops`]: the domain operations (selection with its metrics, moving a room, admin
//!    actions on edges with the drain policy, what a state change of an edge does),
//!    written once with typed inputs; [`housekeeping`]: sessions nobody joined expire,
//!    edges failed for long are forgotten, and edges hear which of their sessions ended
//!    (which [`ops`] uses when an edge fails).
//! 5. Drivers, which turn the outside world into operations: [`api`] (HTTP routes),
//!    [`admin`] (admin page and API, the one admin auth check), [`try_page`],
//!    [`edge_link`] (the websocket edges keep), [`cluster_sync`] (publishing and
//!    following the other locators).
//! 6. [`server`] (background tasks and the serve loop) and [`cli`] (the `locator`
//!    command), the top.
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
pub mod load;
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
