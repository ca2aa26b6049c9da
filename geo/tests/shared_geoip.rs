//! Tests against the real database files in `shared/geoip` (MaxMind's test databases with
//! their JSON sources, MaxMind's deliberately broken files, and DB-IP Lite country).
//!
//! The folder is `../../shared/geoip` from this crate (CI clones the repository next to
//! `shared/`), or `$LOCUS_SHARED_GEOIP`. When it is absent the tests say what they skipped
//! and pass, except under `CI=true`, where a missing folder fails: CI must never pass by
//! skipping.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use locus_geo::database::DBIP_ATTRIBUTION;
use locus_geo::special::special_purpose;
use locus_geo::{DatabaseError, GeoDatabase, Schema};
use maxminddb::MaxMindDbError;
use serde_json::Value as Json;

/// The shared GeoIP folder, or `None` (after saying so) when it is absent outside CI.
fn shared_geoip(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LOCUS_SHARED_GEOIP")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/geoip"));
    if dir.is_dir() {
        return Some(dir);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
    assert!(
        !in_ci,
        "{test}: the shared GeoIP folder {} is missing and CI is set: CI must not pass by \
         skipping (clone the repository next to shared/ or set LOCUS_SHARED_GEOIP)",
        dir.display()
    );
    println!(
        "SKIPPED {test}: shared GeoIP folder {} not found (set LOCUS_SHARED_GEOIP to run it)",
        dir.display()
    );
    None
}

fn file(dir: &Path, relative: &str) -> PathBuf {
    let path = dir.join(relative);
    assert!(
        path.is_file(),
        "{} is missing from the shared GeoIP folder",
        path.display()
    );
    path
}

/// MaxMind's test JSON writes IPv4 networks as `::a.b.c.d/n` (the `::/96` subtree where
/// IPv4 lives in an IPv6 database): an IPv6 address whose top 96 bits are zero is IPv4.
/// IPv4-mapped addresses (`::ffff:a.b.c.d`) are IPv4 too.
fn as_ipv4_if_embedded(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if u128::from(v6) >> 32 == 0 => {
            IpAddr::V4(Ipv4Addr::from(u128::from(v6) as u32))
        }
        other => other.to_canonical(),
    }
}

// ---------------------------------------------------------------------------------------
// a. Conformance with the JSON sources of MaxMind's test databases.

/// What one JSON record says resolution should find.
#[derive(Debug)]
struct Expected {
    country: Option<String>,
    continent: Option<String>,
}

fn expected(record: &Json) -> Expected {
    let code = |key: &str, field: &str| {
        record
            .get(key)
            .and_then(|v| v.get(field))
            .and_then(Json::as_str)
            .map(str::to_string)
    };
    Expected {
        // database.rs: `country.iso_code`, else `registered_country.iso_code` (satellite and
        // anycast networks have no `country`).
        country: code("country", "iso_code").or_else(|| code("registered_country", "iso_code")),
        continent: code("continent", "code"),
    }
}

struct Conformance {
    networks_in_json: usize,
    networks_compared: usize,
    addresses_compared: usize,
    mismatches: Vec<String>,
}

fn conformance(dir: &Path, name: &str) -> Conformance {
    let json_path = file(dir, &format!("maxmind-test/{name}.json"));
    let db_path = file(dir, &format!("maxmind-test/{name}.mmdb"));
    let text = std::fs::read_to_string(&json_path).expect("read the JSON source");
    let entries: Vec<serde_json::Map<String, Json>> =
        serde_json::from_str(&text).expect("the JSON source is an array of objects");
    let db = GeoDatabase::open(&db_path)
        .unwrap_or_else(|e| panic!("{} must open: {e}", db_path.display()));

    let mut report = Conformance {
        networks_in_json: entries.len(),
        networks_compared: 0,
        addresses_compared: 0,
        mismatches: Vec::new(),
    };
    for entry in &entries {
        assert_eq!(
            entry.len(),
            1,
            "{name}: each entry maps one network: {entry:?}"
        );
        let (network, record) = entry.iter().next().expect("one key");
        let net: IpNet = network
            .parse()
            .unwrap_or_else(|e| panic!("{name}: network {network:?}: {e}"));
        let want = expected(record);
        // The first and last address of the network (host bits, as in
        // "::74.209.24.0/116", are dropped: the network is 74.209.16.0/20).
        for ip in [net.network(), net.broadcast()] {
            let ip = as_ipv4_if_embedded(ip);
            report.addresses_compared += 1;
            let found = match db.lookup(ip) {
                Ok(Some(found)) => found,
                Ok(None) => {
                    report
                        .mismatches
                        .push(format!("{name} {network} {ip}: not in the database"));
                    continue;
                }
                Err(e) => {
                    report
                        .mismatches
                        .push(format!("{name} {network} {ip}: lookup error {e}"));
                    continue;
                }
            };
            let country = found.country.map(|c| c.code);
            if country != want.country.as_deref() {
                report.mismatches.push(format!(
                    "{name} {network} {ip}: country {country:?}, JSON says {:?}",
                    want.country
                ));
            }
            match &want.continent {
                Some(continent) => {
                    if found.continent != Some(continent.as_str()) {
                        report.mismatches.push(format!(
                            "{name} {network} {ip}: continent {:?}, JSON says {continent}",
                            found.continent
                        ));
                    }
                }
                // No continent in the JSON: database.rs derives it from the country.
                None => {
                    let derived = found.country.map(|c| c.continent);
                    if found.continent != derived {
                        report.mismatches.push(format!(
                            "{name} {network} {ip}: continent {:?} without one in the JSON \
                             (the country gives {derived:?})",
                            found.continent
                        ));
                    }
                }
            }
        }
        report.networks_compared += 1;
    }
    report
}

fn assert_conformance(name: &str) {
    let Some(dir) = shared_geoip(&format!("conformance of {name}")) else {
        return;
    };
    let report = conformance(&dir, name);
    println!(
        "{name}: {} networks in the JSON, {} compared ({} addresses), {} mismatches",
        report.networks_in_json,
        report.networks_compared,
        report.addresses_compared,
        report.mismatches.len()
    );
    assert!(report.networks_in_json > 0, "{name}: empty JSON source");
    assert_eq!(
        report.networks_compared, report.networks_in_json,
        "{name}: every network of the JSON must be compared"
    );
    assert_eq!(report.addresses_compared, 2 * report.networks_in_json);
    assert!(
        report.mismatches.is_empty(),
        "{name}: {} mismatches:\n{}",
        report.mismatches.len(),
        report.mismatches.join("\n")
    );
}

#[test]
fn geoip2_city_test_matches_its_json_source() {
    assert_conformance("GeoIP2-City-Test");
}

#[test]
fn geolite2_city_test_matches_its_json_source() {
    assert_conformance("GeoLite2-City-Test");
}

#[test]
fn geoip2_country_test_matches_its_json_source() {
    assert_conformance("GeoIP2-Country-Test");
}

#[test]
fn geolite2_country_test_matches_its_json_source() {
    assert_conformance("GeoLite2-Country-Test");
}

#[test]
fn test_databases_have_the_expected_schemas() {
    let Some(dir) = shared_geoip("schemas of the MaxMind test databases") else {
        return;
    };
    for (name, schema) in [
        ("GeoIP2-City-Test", Schema::City),
        ("GeoLite2-City-Test", Schema::City),
        ("GeoIP2-Country-Test", Schema::Country),
        ("GeoLite2-Country-Test", Schema::Country),
    ] {
        let db =
            GeoDatabase::open(&file(&dir, &format!("maxmind-test/{name}.mmdb"))).expect("opens");
        assert_eq!(db.info().schema, schema, "{name}");
        assert_eq!(
            db.info().database_type,
            name.trim_end_matches("-Test"),
            "{name}"
        );
        assert_eq!(
            db.info().attribution,
            None,
            "{name}: MaxMind data needs no DB-IP credit"
        );
        assert!(db.info().networks > 0, "{name}");
    }
}

// ---------------------------------------------------------------------------------------
// b. Broken databases.

/// A fixed-seed generator (SplitMix64): the same addresses on every run and platform.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn probe_addresses() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = [
        "1.1.1.1",
        "1.1.1.3",
        "81.2.69.142",
        "::1.1.1.1",
        "2001:220::1",
        "216.160.83.56",
        "1.1.1.32",
        "2.125.160.216",
        "89.160.20.112",
        "2001:218::1",
        "::2.2.3.1",
    ]
    .iter()
    .map(|s| s.parse().expect("probe address"))
    .collect();
    let mut rng = SplitMix(0x6c6f_6375_735f_6765);
    for _ in 0..200 {
        ips.push(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)));
        let v6 = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        ips.push(IpAddr::V6(Ipv6Addr::from(v6)));
    }
    ips
}

/// Files of `maxmind-bad/` that are refused only because they carry no country data, not
/// because the damage was seen. Each was examined with the bare `maxminddb` reader:
///
/// - `libmaxminddb-empty-array-last-in-metadata` and `-empty-map-last-in-metadata` are
///   well-formed: they reproduce an out-of-bounds read in libmaxminddb's metadata parser
///   (a metadata map ending with an empty array/map), which the Rust reader does not have.
/// - `libmaxminddb-corrupt-search-tree` claims 100 nodes, but both records of the root
///   point straight at data (`{"ip": "test"}` for 0.0.0.0/1 and 128.0.0.0/1): the damage
///   is in nodes no lookup can reach, so every lookup gets a consistent answer.
///
/// Any other broken file refused for "no country data" fails the test: its corruption would
/// have slipped through the checks at open, hidden only by its schema.
const REFUSED_ONLY_FOR_NO_COUNTRY_DATA: &[&str] = &[
    "libmaxminddb-corrupt-search-tree.mmdb",
    "libmaxminddb-empty-array-last-in-metadata.mmdb",
    "libmaxminddb-empty-map-last-in-metadata.mmdb",
];

/// What a broken file did.
enum Verdict {
    RefusedAtOpen(String),
    RefusedNoCountryData(String),
    /// Opened; `errors` lookups failed in a way that shows the damage, `invalid_input` were
    /// only refused as questions the file cannot answer (IPv6 in an IPv4-only database).
    Opened {
        lookups: usize,
        errors: usize,
        invalid_input: usize,
        first_error: Option<String>,
    },
    Panicked(String),
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

fn judge(path: &Path, probes: &[IpAddr]) -> Verdict {
    let opened = match catch_unwind(|| GeoDatabase::open(path)) {
        Err(payload) => return Verdict::Panicked(format!("at open: {}", panic_text(&*payload))),
        Ok(Err(e @ DatabaseError::NoCountryData { .. })) => {
            return Verdict::RefusedNoCountryData(e.to_string());
        }
        Ok(Err(e)) => return Verdict::RefusedAtOpen(e.to_string()),
        Ok(Ok(db)) => db,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let (mut errors, mut invalid_input, mut first_error) = (0, 0, None);
        for &ip in probes {
            match opened.lookup(ip) {
                Ok(_) => {}
                Err(DatabaseError::Lookup {
                    source: MaxMindDbError::InvalidInput { .. },
                    ..
                }) => invalid_input += 1,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        (errors, invalid_input, first_error)
    }));
    match outcome {
        Err(payload) => Verdict::Panicked(format!("on lookup: {}", panic_text(&*payload))),
        Ok((errors, invalid_input, first_error)) => Verdict::Opened {
            lookups: probes.len(),
            errors,
            invalid_input,
            first_error,
        },
    }
}

#[test]
fn broken_databases_are_refused_or_fail_their_lookups() {
    let Some(dir) = shared_geoip("broken MaxMind databases") else {
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("maxmind-bad"))
        .expect("maxmind-bad/ is readable")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "mmdb"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "maxmind-bad/ holds {} files",
        files.len()
    );
    for name in [
        "GeoIP2-City-Test-Broken-Double-Format.mmdb",
        "GeoIP2-City-Test-Invalid-Node-Count.mmdb",
        "MaxMind-DB-test-broken-pointers-24.mmdb",
        "MaxMind-DB-test-broken-search-tree-24.mmdb",
    ] {
        files.push(file(&dir, &format!("maxmind-test/{name}")));
    }

    let probes = probe_addresses();
    let mut table = Vec::new();
    let mut unnoticed = Vec::new();
    for path in &files {
        let name = path
            .strip_prefix(&dir)
            .unwrap_or(path)
            .display()
            .to_string();
        let row = match judge(path, &probes) {
            Verdict::RefusedAtOpen(message) => format!("refused at open: {message}"),
            Verdict::RefusedNoCountryData(message) => {
                let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                if !REFUSED_ONLY_FOR_NO_COUNTRY_DATA.contains(&file_name.as_deref().unwrap_or("")) {
                    unnoticed.push(format!(
                        "{name}: refused only for lacking country data, its damage unnoticed"
                    ));
                }
                format!("refused at open (no country data; not corrupt for lookups): {message}")
            }
            Verdict::Panicked(message) => {
                unnoticed.push(format!("{name}: PANIC {message}"));
                format!("PANIC {message}")
            }
            Verdict::Opened {
                lookups,
                errors,
                invalid_input,
                first_error,
            } => {
                if errors == 0 {
                    unnoticed.push(format!(
                        "{name}: opened and answered all {lookups} lookups \
                         ({invalid_input} refused only as IPv6-in-IPv4-database)"
                    ));
                }
                format!(
                    "opened; {errors}/{lookups} lookups failed ({invalid_input} invalid input){}",
                    first_error
                        .map(|e| format!(", e.g. {e}"))
                        .unwrap_or_default()
                )
            }
        };
        table.push(format!("{name:<60} | {row}"));
    }
    println!("broken database                                              | outcome");
    println!("{}", table.join("\n"));
    assert!(
        unnoticed.is_empty(),
        "corruption went unnoticed:\n{}\n\nfull table:\n{}",
        unnoticed.join("\n"),
        table.join("\n")
    );
}

#[test]
fn databases_without_country_data_are_refused() {
    let Some(dir) = shared_geoip("databases without country data") else {
        return;
    };
    for name in ["GeoLite2-ASN-Test.mmdb", "GeoIP2-Anonymous-IP-Test.mmdb"] {
        let path = file(&dir, &format!("maxmind-test/{name}"));
        let err = GeoDatabase::open(&path).expect_err("no country data: refused");
        assert!(
            matches!(err, DatabaseError::NoCountryData { .. }),
            "{name}: {err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("has no country data"), "{name}: {message}");
        assert!(
            message.contains(name),
            "the message names the file: {message}"
        );
    }
}

#[test]
fn valid_maxmind_test_files_that_are_not_geoip_are_refused_cleanly() {
    // Valid MaxMind DB files of another shape (plain test data): refused, not panicking.
    let Some(dir) = shared_geoip("generic MaxMind DB test files") else {
        return;
    };
    for name in [
        "MaxMind-DB-test-ipv4-24.mmdb",
        "MaxMind-DB-test-mixed-24.mmdb",
    ] {
        let err = GeoDatabase::open(&file(&dir, &format!("maxmind-test/{name}")))
            .expect_err("no country data");
        assert!(
            err.to_string().contains("has no country data"),
            "{name}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// c. DB-IP Lite country.

#[test]
fn dbip_country_lite_is_read_with_its_attribution() {
    let Some(dir) = shared_geoip("DB-IP Lite country") else {
        return;
    };
    let path = file(&dir, "dbip-country.mmdb");
    let db = GeoDatabase::open(&path).unwrap_or_else(|e| panic!("DB-IP Lite must open: {e}"));
    assert_eq!(db.info().schema, Schema::CountryCode);
    assert_eq!(db.info().attribution, Some(DBIP_ATTRIBUTION));
    assert!(
        db.info().networks > 100_000,
        "{} networks",
        db.info().networks
    );

    let lookup = |ip: &str| {
        let ip: IpAddr = ip.parse().expect("ip");
        db.lookup(ip.to_canonical())
            .unwrap_or_else(|e| panic!("lookup {ip}: {e}"))
    };
    let place = |ip: &str| lookup(ip).map(|r| (r.country.map(|c| c.code), r.continent));
    assert_eq!(place("81.2.69.142"), Some((Some("GB"), Some("EU"))));
    assert_eq!(place("8.8.8.8"), Some((Some("US"), Some("NA"))));
    assert_eq!(
        place("::ffff:8.8.8.8"),
        place("8.8.8.8"),
        "IPv4-mapped is IPv4"
    );
    let google_v6 = lookup("2001:4860::1").expect("2001:4860::1 is in DB-IP");
    let country = google_v6.country.expect("2001:4860::1 has a country");
    assert_eq!(google_v6.continent, Some(country.continent));
    assert!(
        google_v6.location.is_some(),
        "coordinates derived from the country"
    );

    for private in ["10.1.2.3", "::ffff:10.1.2.3"] {
        let ip: IpAddr = private.parse().expect("ip");
        assert!(
            special_purpose(ip.to_canonical()).is_some(),
            "{private} is a special-purpose address"
        );
        let found = lookup(private);
        assert!(
            found.is_none_or(|r| r.country.is_none()),
            "{private}: DB-IP places a private address: {found:?}"
        );
    }
}
