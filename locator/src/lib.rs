//! `locus-locator`: the locator service and its command line.
//!
//! - [`cli`]: the `locator` command (`check-config`, `resolve`, `serve`).
//! - [`edge_state`]: the pure state machine of one edge (active, suspended, draining,
//!   link-lost, failed).
//! - [`snapshot`]: the immutable registry snapshot that selection reads.
//! - [`selection`]: pure choice of an edge: least-loaded in region, no herding, fallback
//!   and spill by headroom.
//!
//! The region decision itself lives in `locus-geo`; this crate wires it to the outside
//! world (files, flags, HTTP, websockets and the database).

pub mod cli;
pub mod edge_state;
pub mod selection;
pub mod snapshot;
