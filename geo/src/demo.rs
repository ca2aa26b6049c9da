//! The built-in demo GeoIP database: a few dozen well-known networks, so that the product
//! can be tried on a machine without a GeoIP file. It is NOT real geolocation: any address
//! outside these networks is "not in the database" and goes to the default region.
//!
//! The networks and their countries are as DB-IP Lite (CC BY 4.0) gives them; hence the
//! DB-IP attribution the database carries.

use ipnet::IpNet;

use crate::countries;
use crate::mmdb_writer::{MmdbWriter, Value};

/// `database_type` of the demo database (the admin page shows it).
pub const DEMO_DATABASE_TYPE: &str = "Locus-Builtin-Demo";

/// The value of `geoip.database` (and `--geoip`) that selects the demo database.
pub const BUILTIN_DEMO: &str = "builtin-demo";

/// (network, country) pairs: public resolvers, registries, universities and carriers.
pub const DEMO_NETWORKS: &[(&str, &str)] = &[
    ("8.8.0.0/17", "US"),
    ("142.250.0.0/19", "US"),
    ("24.48.0.0/17", "CA"),
    ("81.2.64.0/18", "GB"),
    ("193.0.0.0/20", "NL"),
    ("85.214.0.0/15", "DE"),
    ("200.160.0.0/15", "BR"),
    ("177.10.0.0/17", "BR"),
    ("202.12.26.0/23", "JP"),
    ("133.0.0.0/9", "JP"),
    ("103.6.84.0/23", "HK"),
    ("1.1.1.0/24", "AU"),
    ("139.130.0.0/16", "AU"),
    ("49.32.0.0/12", "IN"),
    ("196.216.2.0/23", "ZA"),
    ("41.203.64.0/21", "NG"),
    ("2a00:1450::/40", "PL"),
    ("2c0f:fb50::/34", "KE"),
    ("2001:12fe::/31", "BR"),
];

/// Builds the demo database (City schema, coordinates from the country table).
pub fn demo_database() -> MmdbWriter {
    let mut writer = MmdbWriter::new(DEMO_DATABASE_TYPE).description(
        "Locus built-in DEMO database: a few well-known networks, not real geolocation. \
         Countries as given by DB-IP Lite (https://db-ip.com, CC BY 4.0).",
    );
    for (network, code) in DEMO_NETWORKS {
        let (Ok(net), Some(country)) = (network.parse::<IpNet>(), countries::country(code)) else {
            continue;
        };
        writer.insert(
            net,
            Value::city_record(
                country.code,
                country.continent,
                Some((country.lat, country.lon)),
            ),
        );
    }
    writer
}
