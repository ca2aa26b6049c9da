//! `locus-locator`: the locator service and its command line.
//!
//! - [`cli`]: the `locator` command (`check-config`, `resolve`; `serve` grows here).
//!
//! The region decision itself lives in `locus-geo`; this crate wires it to the outside
//! world (files, flags, and later HTTP, websockets and the database).

pub mod cli;
