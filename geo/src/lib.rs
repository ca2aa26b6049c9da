//! `locus-geo`: client IP → location → region, by the rules of `regions.yaml`.
//!
//! No network I/O: everything here is pure resolution over files already on disk.
//!
//! - [`config`] parses and validates `regions.yaml` (every problem, with file, field and
//!   line).
//! - [`database`] opens a MaxMind DB file (GeoIP2/GeoLite2 City or Country, DB-IP Lite's
//!   flat `country_code`) memory-mapped, checks it whole, and answers [`GeoRecord`]s
//!   completed from [`countries`] (continent and a representative point per country),
//!   through an exact index of the search tree's ranges built at open (`index`).
//! - [`rules`] is the pure decision: CIDR override → special-purpose range → country →
//!   continent → nearest region → default, with the rule that matched.
//! - [`resolver`] puts a database, the compiled rules and an optional cache behind one
//!   atomic pointer, and hot-reloads the database when its file is replaced.
//! - [`mmdb_writer`] writes MaxMind DB files: test fixtures and the [`demo`] database
//!   that lets a machine without a GeoIP file try the product.

pub mod config;
pub mod countries;
pub mod database;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
mod index;
pub mod mmdb_writer;
pub mod resolver;
pub mod rules;
pub mod special;

pub use config::{Config, ConfigError, LatLon, Region, RegionIndex, TurnChecks, TurnPool};
pub use database::{DatabaseError, DatabaseInfo, GeoDatabase, GeoRecord, LocationSource, Schema};
pub use resolver::{GeoResolver, ReloadOutcome};
pub use rules::{DefaultReason, RegionRules, Resolution, ResolutionView, Rule, great_circle_km};
