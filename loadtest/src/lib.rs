//! `locus-loadtest`: load and fault-injection driver for the locator and its edges.
//!
//! - [`addresses`]: client addresses drawn from the networks of a real GeoIP database, so
//!   simulated traffic has a realistic country mix.

pub mod addresses;
