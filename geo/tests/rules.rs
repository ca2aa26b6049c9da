//! Region rules end to end: `regions.yaml` text → `Config` → rules over a database written
//! with `mmdb_writer` → `Resolution`. Self-contained (fixtures in a temporary folder).
//!
//! Table tests pin every rule and default reason; property tests (deterministic seed) check
//! longest-prefix overrides, country placement, nearest-region against `great_circle_km`,
//! and that IPv4-mapped addresses resolve exactly like IPv4.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use locus_geo::countries;
use locus_geo::mmdb_writer::{MmdbWriter, Value};
use locus_geo::special::special_purpose;
use locus_geo::{
    Config, DefaultReason, GeoDatabase, GeoRecord, GeoResolver, LatLon, LocationSource,
    RegionRules, Resolution, Rule, Schema, great_circle_km,
};
use proptest::prelude::*;
use proptest::test_runner::{
    Config as ProptestConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Fixtures.

/// Four regions: `sa-east` lists nothing and is reachable only by the nearest rule.
/// `198.51.100.128/25` (us-east) is listed before the `198.51.100.0/24` that contains it
/// (eu-west); `81.2.69.192/26` sends part of a GB network to ap-south.
const REGIONS: &str = r#"
default_region: us-east
regions:
  - id: us-east
    location: { lat: 39.0, lon: -77.5 }
    countries: [US, CA]
    continents: [NA]
    networks: [198.51.100.128/25, "2001:db8:1:2::/64"]
  - id: eu-west
    location: { lat: 53.35, lon: -6.26 }
    countries: [GB, IE, FR]
    continents: [EU]
    networks: [198.51.100.0/24, 10.20.0.0/16, "2001:db8:1::/48"]
  - id: ap-south
    location: { lat: 1.35, lon: 103.82 }
    countries: [SG, IN]
    continents: [AS]
    networks: [81.2.69.192/26]
  - id: sa-east
    location: { lat: -23.55, lon: -46.63 }
"#;

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

fn config() -> Config {
    parse(REGIONS)
}

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not an address: {e}"))
}

fn net(text: &str) -> IpNet {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not a network: {e}"))
}

fn region_id(config: &Config, resolution: &Resolution) -> String {
    config
        .region_at(resolution.region)
        .expect("region of this config")
        .id
        .clone()
}

/// A City database covering every rule of the table.
fn city_fixture() -> MmdbWriter {
    let mut w = MmdbWriter::new("GeoLite2-City");
    let city =
        |cc: &str, cont: &str, lat: f64, lon: f64| Value::city_record(cc, cont, Some((lat, lon)));
    w.insert(net("81.2.69.0/24"), city("GB", "EU", 51.51, -0.09));
    w.insert(net("8.8.8.0/24"), city("US", "NA", 37.75, -97.82));
    w.insert(net("2001:4860::/32"), city("US", "NA", 37.75, -97.82));
    // No country at all, only a continent (as MaxMind ships for some European blocks).
    w.insert(
        net("2.3.3.0/24"),
        Value::map([("continent", Value::map([("code", Value::str("EU"))]))]),
    );
    w.insert(net("175.16.199.0/24"), city("CN", "AS", 43.88, 125.32));
    w.insert(net("2a02:1::/32"), city("DE", "EU", 52.52, 13.40));
    w.insert(net("181.0.0.0/16"), city("AR", "SA", -34.60, -58.40));
    w.insert(net("1.128.0.0/16"), city("AU", "OC", -33.87, 151.21));
    w.insert(net("41.58.0.0/16"), city("NG", "AF", 6.45, 3.39));
    w.insert(net("102.0.0.0/16"), city("ZA", "AF", -33.92, 18.42));
    // Anycast: neither country nor coordinates.
    w.insert(
        net("214.1.1.0/24"),
        Value::map([("traits", Value::map([("is_anycast", Value::Bool(true))]))]),
    );
    // Special-purpose ranges that a (sloppy) database places: the special rule must win.
    for special in ["10.0.0.0/8", "192.168.0.0/16", "::1/128", "fe80::/10"] {
        w.insert(net(special), city("JP", "AS", 35.68, 139.69));
    }
    w
}

struct Fixture {
    _dir: TempDir,
    city: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let city = dir.path().join("city.mmdb");
        city_fixture().write_to(&city).expect("write city fixture");
        Fixture { _dir: dir, city }
    }

    fn city_db(&self) -> GeoDatabase {
        GeoDatabase::open(&self.city).unwrap_or_else(|e| panic!("{e}"))
    }
}

// ---------------------------------------------------------------------------------------
// Table tests.

struct Case {
    ip: &'static str,
    region: &'static str,
    rule: Rule,
    reason: Option<DefaultReason>,
    country: Option<&'static str>,
    network: Option<&'static str>,
}

const fn case(
    ip: &'static str,
    region: &'static str,
    rule: Rule,
    reason: Option<DefaultReason>,
    country: Option<&'static str>,
    network: Option<&'static str>,
) -> Case {
    Case {
        ip,
        region,
        rule,
        reason,
        country,
        network,
    }
}

const TABLE: &[Case] = &[
    // Country.
    case(
        "81.2.69.142",
        "eu-west",
        Rule::Country,
        None,
        Some("GB"),
        None,
    ),
    case("8.8.8.8", "us-east", Rule::Country, None, Some("US"), None),
    case(
        "2001:4860::8888",
        "us-east",
        Rule::Country,
        None,
        Some("US"),
        None,
    ),
    case(
        "::ffff:8.8.8.4",
        "us-east",
        Rule::Country,
        None,
        Some("US"),
        None,
    ),
    // Override beats country (GB would be eu-west).
    case(
        "81.2.69.200",
        "ap-south",
        Rule::CidrOverride,
        None,
        None,
        Some("81.2.69.192/26"),
    ),
    // Nested overrides: longest prefix wins, whatever the order in the file.
    case(
        "198.51.100.7",
        "eu-west",
        Rule::CidrOverride,
        None,
        None,
        Some("198.51.100.0/24"),
    ),
    case(
        "198.51.100.200",
        "us-east",
        Rule::CidrOverride,
        None,
        None,
        Some("198.51.100.128/25"),
    ),
    case(
        "2001:db8:1::5",
        "eu-west",
        Rule::CidrOverride,
        None,
        None,
        Some("2001:db8:1::/48"),
    ),
    case(
        "2001:db8:1:2::9",
        "us-east",
        Rule::CidrOverride,
        None,
        None,
        Some("2001:db8:1:2::/64"),
    ),
    // An override covering a special-purpose range wins over it.
    case(
        "10.20.30.40",
        "eu-west",
        Rule::CidrOverride,
        None,
        None,
        Some("10.20.0.0/16"),
    ),
    case(
        "::ffff:10.20.0.1",
        "eu-west",
        Rule::CidrOverride,
        None,
        None,
        Some("10.20.0.0/16"),
    ),
    // Special-purpose ranges go to the default even though the database places them.
    case(
        "10.1.2.3",
        "us-east",
        Rule::Default,
        Some(DefaultReason::SpecialPurpose("private (10.0.0.0/8)")),
        None,
        None,
    ),
    case(
        "192.168.1.1",
        "us-east",
        Rule::Default,
        Some(DefaultReason::SpecialPurpose("private (192.168.0.0/16)")),
        None,
        None,
    ),
    case(
        "::ffff:192.168.1.1",
        "us-east",
        Rule::Default,
        Some(DefaultReason::SpecialPurpose("private (192.168.0.0/16)")),
        None,
        None,
    ),
    case(
        "::1",
        "us-east",
        Rule::Default,
        Some(DefaultReason::SpecialPurpose("loopback (::1)")),
        None,
        None,
    ),
    case(
        "fe80::1",
        "us-east",
        Rule::Default,
        Some(DefaultReason::SpecialPurpose("link-local (fe80::/10)")),
        None,
        None,
    ),
    case(
        "203.0.113.5",
        "us-east",
        Rule::Default,
        Some(DefaultReason::SpecialPurpose(
            "documentation (203.0.113.0/24)",
        )),
        None,
        None,
    ),
    // Continent: the country is not listed anywhere, its continent is.
    case(
        "175.16.199.1",
        "ap-south",
        Rule::Continent,
        None,
        Some("CN"),
        None,
    ),
    case(
        "2a02:1::1",
        "eu-west",
        Rule::Continent,
        None,
        Some("DE"),
        None,
    ),
    case("2.3.3.3", "eu-west", Rule::Continent, None, None, None),
    // Nearest, from the City record's coordinates (sa-east is listed nowhere).
    case(
        "181.0.1.1",
        "sa-east",
        Rule::Nearest,
        None,
        Some("AR"),
        None,
    ),
    case(
        "102.0.1.1",
        "sa-east",
        Rule::Nearest,
        None,
        Some("ZA"),
        None,
    ),
    case(
        "41.58.1.1",
        "eu-west",
        Rule::Nearest,
        None,
        Some("NG"),
        None,
    ),
    case(
        "1.128.1.1",
        "ap-south",
        Rule::Nearest,
        None,
        Some("AU"),
        None,
    ),
    // Unknown to the database; in it but without a place.
    case(
        "9.9.9.9",
        "us-east",
        Rule::Default,
        Some(DefaultReason::NotInDatabase),
        None,
        None,
    ),
    case(
        "2c0f:f000::1",
        "us-east",
        Rule::Default,
        Some(DefaultReason::NotInDatabase),
        None,
        None,
    ),
    case(
        "214.1.1.1",
        "us-east",
        Rule::Default,
        Some(DefaultReason::NoLocation),
        None,
        None,
    ),
];

#[test]
fn every_rule_of_the_table() {
    let fixture = Fixture::new();
    let config = config();
    let resolver = GeoResolver::with_database(&config, Some(fixture.city_db()));
    for c in TABLE {
        let r = resolver.resolve(ip(c.ip));
        let what = format!("{}: {r:?}", c.ip);
        assert_eq!(region_id(&config, &r), c.region, "{what}");
        assert_eq!(r.rule, c.rule, "{what}");
        assert_eq!(r.default_reason, c.reason, "{what}");
        assert_eq!(r.country.map(|c| c.code), c.country, "{what}");
        assert_eq!(r.network, c.network.map(net), "{what}");
        assert_eq!(r.ip, ip(c.ip).to_canonical(), "{what}: normalised address");
        if c.rule == Rule::Nearest {
            let (_, source) = r.location.expect("nearest needs coordinates");
            assert_eq!(source, LocationSource::Database, "{what}");
        }
    }
}

#[test]
fn continent_comes_from_the_record_or_the_country() {
    let fixture = Fixture::new();
    let config = config();
    let resolver = GeoResolver::with_database(&config, Some(fixture.city_db()));
    assert_eq!(resolver.resolve(ip("175.16.199.1")).continent, Some("AS"));
    assert_eq!(resolver.resolve(ip("2.3.3.3")).continent, Some("EU"));
    assert_eq!(resolver.resolve(ip("181.0.1.1")).continent, Some("SA"));
}

#[test]
fn without_a_database_everyone_goes_to_the_default_but_overrides_still_apply() {
    let config = config();
    let resolver = GeoResolver::with_database(&config, None);
    let r = resolver.resolve(ip("81.2.69.142"));
    assert_eq!(region_id(&config, &r), "us-east");
    assert_eq!(r.rule, Rule::Default);
    assert_eq!(r.default_reason, Some(DefaultReason::NoDatabase));
    assert_eq!(r.country, None);

    let r = resolver.resolve(ip("81.2.69.200"));
    assert_eq!(
        (region_id(&config, &r).as_str(), r.rule),
        ("ap-south", Rule::CidrOverride)
    );

    let r = resolver.resolve(ip("10.1.2.3"));
    assert!(
        matches!(r.default_reason, Some(DefaultReason::SpecialPurpose(_))),
        "special ranges are named even without a database: {r:?}"
    );
}

fn nested_config(a_first: bool, networks_a: &str, networks_b: &str) -> Config {
    let a = format!(
        "  - id: a\n    location: {{ lat: 10.0, lon: 10.0 }}\n    networks: {networks_a}\n"
    );
    let b = format!(
        "  - id: b\n    location: {{ lat: 20.0, lon: 20.0 }}\n    networks: {networks_b}\n"
    );
    let (first, second) = if a_first { (a, b) } else { (b, a) };
    parse(&format!("default_region: a\nregions:\n{first}{second}"))
}

#[test]
fn longest_prefix_wins_whatever_the_order_in_the_file() {
    for a_first in [true, false] {
        // Across regions.
        let config = nested_config(a_first, "[198.51.100.0/24]", "[198.51.100.128/25]");
        let rules = RegionRules::new(&config);
        for (addr, region, network) in [
            ("198.51.100.1", "a", "198.51.100.0/24"),
            ("198.51.100.127", "a", "198.51.100.0/24"),
            ("198.51.100.128", "b", "198.51.100.128/25"),
            ("198.51.100.255", "b", "198.51.100.128/25"),
        ] {
            let r = rules.resolve(ip(addr), |_| Err(DefaultReason::NoDatabase));
            assert_eq!(r.rule, Rule::CidrOverride, "{addr}");
            assert_eq!(
                region_id(&config, &r),
                region,
                "{addr} (a first: {a_first})"
            );
            assert_eq!(r.network, Some(net(network)), "{addr}");
        }
        // Within one region, both orders of its list.
        let list = if a_first {
            "[\"2001:db8::/32\", \"2001:db8:ab00::/40\", 203.0.113.0/24, 203.0.113.64/26]"
        } else {
            "[203.0.113.64/26, 203.0.113.0/24, \"2001:db8:ab00::/40\", \"2001:db8::/32\"]"
        };
        let config = nested_config(a_first, list, "[]");
        let rules = RegionRules::new(&config);
        for (addr, network) in [
            ("203.0.113.1", "203.0.113.0/24"),
            ("203.0.113.70", "203.0.113.64/26"),
            ("2001:db8:ab12::1", "2001:db8:ab00::/40"),
            ("2001:db8:1::1", "2001:db8::/32"),
        ] {
            assert_eq!(
                rules.cidr_override(ip(addr)).map(|(n, _)| n),
                Some(net(network)),
                "{addr} (order {a_first})"
            );
        }
    }
}

#[test]
fn country_only_databases_get_coordinates_from_the_country_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config();
    let entries = [
        ("181.0.0.0/16", "AR", "SA"),
        ("1.128.0.0/16", "AU", "OC"),
        ("102.0.0.0/16", "ZA", "AF"),
        ("41.58.0.0/16", "NG", "AF"),
        ("81.2.69.0/24", "GB", "EU"),
        ("175.16.199.0/24", "CN", "AS"),
    ];
    let mut flat = MmdbWriter::new("DBIP-Country-Lite");
    let mut country = MmdbWriter::new("GeoLite2-Country");
    for (network, cc, continent) in entries {
        flat.insert(net(network), Value::country_code_record(cc));
        country.insert(net(network), Value::country_record(cc, continent));
    }
    for (writer, schema) in [(flat, Schema::CountryCode), (country, Schema::Country)] {
        let path = dir.path().join(format!("{}.mmdb", schema.as_str()));
        writer.write_to(&path).expect("write");
        let db = GeoDatabase::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.info().schema, schema);
        let resolver = GeoResolver::with_database(&config, Some(db));
        for (addr, region, rule, cc) in [
            ("181.0.1.1", "sa-east", Rule::Nearest, "AR"),
            ("1.128.1.1", "ap-south", Rule::Nearest, "AU"),
            ("102.0.1.1", "sa-east", Rule::Nearest, "ZA"),
            ("41.58.1.1", "eu-west", Rule::Nearest, "NG"),
            ("81.2.69.142", "eu-west", Rule::Country, "GB"),
            ("175.16.199.1", "ap-south", Rule::Continent, "CN"),
        ] {
            let r = resolver.resolve(ip(addr));
            let what = format!("{schema:?} {addr}: {r:?}");
            assert_eq!(region_id(&config, &r), region, "{what}");
            assert_eq!(r.rule, rule, "{what}");
            let info = countries::country(cc).expect("known country");
            assert_eq!(r.country, Some(info), "{what}");
            assert_eq!(r.continent, Some(info.continent), "{what}");
            let (point, source) = r.location.expect("coordinates from the country");
            assert_eq!(source, LocationSource::Country, "{what}");
            assert_eq!((point.lat, point.lon), (info.lat, info.lon), "{what}");
            if rule == Rule::Nearest {
                assert_eq!(r.region, RegionRules::new(&config).nearest(point), "{what}");
            }
        }
    }
}

#[test]
fn the_view_has_ip_country_continent_region_and_rule() {
    let fixture = Fixture::new();
    let config = config();
    let resolver = GeoResolver::with_database(&config, Some(fixture.city_db()));

    let view = |addr: &str| {
        serde_json::to_value(resolver.resolve(ip(addr)).view(&config)).expect("serialisable")
    };
    let v = view("::ffff:81.2.69.142");
    assert_eq!(v["ip"], "81.2.69.142", "IPv4-mapped shown as IPv4: {v}");
    assert_eq!(v["country"], "GB", "{v}");
    assert_eq!(v["continent"], "EU", "{v}");
    assert_eq!(v["region"], "eu-west", "{v}");
    assert_eq!(v["rule"], "country", "{v}");
    assert_eq!(v["location"]["source"], "database", "{v}");

    let v = view("81.2.69.200");
    assert_eq!(v["rule"], "cidr-override", "{v}");
    assert_eq!(v["network"], "81.2.69.192/26", "{v}");
    assert_eq!(v["region"], "ap-south", "{v}");

    let v = view("10.1.2.3");
    for key in ["ip", "country", "continent", "region", "rule"] {
        assert!(v.get(key).is_some(), "{key} is always present: {v}");
    }
    assert_eq!(v["country"], serde_json::Value::Null, "{v}");
    assert_eq!(v["region"], "us-east", "{v}");
    assert_eq!(v["rule"], "default", "{v}");
    assert_eq!(v["detail"], "private (10.0.0.0/8) address", "{v}");

    let v = view("181.0.1.1");
    assert_eq!(
        (v["rule"].as_str(), v["region"].as_str()),
        (Some("nearest"), Some("sa-east"))
    );
}

// ---------------------------------------------------------------------------------------
// The cache.

fn resolver_from_yaml(dir: &Path, cache: Option<u64>) -> (Config, GeoResolver) {
    let geoip = match cache {
        Some(size) => format!("geoip: {{ database: city.mmdb, cache_size: {size} }}\n"),
        None => "geoip: { database: city.mmdb }\n".to_string(),
    };
    let config = Config::parse(&format!("{geoip}{REGIONS}"), &dir.join("regions.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.geoip.cache_size, cache.unwrap_or(0));
    let resolver = GeoResolver::open(&config).unwrap_or_else(|e| panic!("{e}"));
    (config, resolver)
}

#[test]
fn the_cache_gives_the_same_answers_as_no_cache() {
    let fixture = Fixture::new();
    let dir = fixture.city.parent().expect("folder");
    let (_, plain) = resolver_from_yaml(dir, None);
    let (_, small) = resolver_from_yaml(dir, Some(16));
    let (_, large) = resolver_from_yaml(dir, Some(10_000));

    let mut addresses: Vec<IpAddr> = TABLE.iter().map(|c| ip(c.ip)).collect();
    let mut seed = 0x5eed_u64;
    for _ in 0..500 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let v4 = Ipv4Addr::from((seed >> 32) as u32);
        addresses.push(IpAddr::V4(v4));
        addresses.push(IpAddr::V6(v4.to_ipv6_mapped()));
    }
    // Twice: the second round answers from the cache.
    for round in 0..2 {
        for &addr in &addresses {
            let expected = plain.resolve(addr);
            assert_eq!(large.resolve(addr), expected, "round {round}, {addr}");
            assert_eq!(
                small.resolve(addr),
                expected,
                "round {round}, {addr} (evicting cache)"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Properties (fixed seed: the same cases on every run).

fn check<S>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    if let Err(failure) = runner.run(&strategy, test) {
        panic!("{failure}");
    }
}

/// Mostly small, sometimes arbitrary: perturbations of one base address give nested and
/// sibling networks around it.
fn perturbation() -> impl Strategy<Value = u128> {
    prop_oneof![
        Just(0u128),
        0u128..0x100,
        0u128..0x1_0000,
        0u128..0x1_0000_0000,
        any::<u128>(),
    ]
}

fn network_of(v6: bool, bits: u128, len: u8) -> IpNet {
    if v6 {
        IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(bits), len.min(128))
                .expect("prefix")
                .trunc(),
        )
    } else {
        IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(bits as u32), len.min(32))
                .expect("prefix")
                .trunc(),
        )
    }
}

#[test]
fn property_longest_override_prefix_wins() {
    let strategy = (
        any::<bool>(),
        any::<u128>(),
        prop::collection::vec((0u8..=128, perturbation(), 0usize..4), 1..16),
        perturbation(),
    );
    let (overridden, not_overridden, nested) = (Cell::new(0), Cell::new(0), Cell::new(0));
    check(300, strategy, |(v6, base, specs, offset)| {
        let mut owner: HashMap<IpNet, usize> = HashMap::new();
        for &(len, delta, region) in &specs {
            let len = if v6 { len } else { len % 33 };
            owner
                .entry(network_of(v6, base ^ delta, len))
                .or_insert(region);
        }
        let mut yaml = String::from("default_region: r0\nregions:\n");
        for region in 0..4 {
            let nets: Vec<String> = owner
                .iter()
                .filter(|(_, r)| **r == region)
                .map(|(n, _)| format!("\"{n}\""))
                .collect();
            yaml.push_str(&format!(
                "  - id: r{region}\n    location: {{ lat: {region}.0, lon: 0.0 }}\n    networks: [{}]\n",
                nets.join(", ")
            ));
        }
        let config = parse(&yaml);
        let rules = RegionRules::new(&config);

        let addr = if v6 {
            IpAddr::V6(Ipv6Addr::from(base ^ offset))
        } else {
            IpAddr::V4(Ipv4Addr::from((base ^ offset) as u32))
        };
        let longest = owner
            .iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len());
        let r = rules.resolve(addr, |_| Err(DefaultReason::NoDatabase));
        let containing = owner.keys().filter(|n| n.contains(&addr)).count();
        if containing > 1 {
            nested.set(nested.get() + 1);
        }
        match longest {
            Some((network, region)) => {
                overridden.set(overridden.get() + 1);
                prop_assert_eq!(r.rule, Rule::CidrOverride, "{} {:?}", addr, r);
                prop_assert_eq!(r.network, Some(*network));
                prop_assert_eq!(r.region.get(), *region);
            }
            None => {
                not_overridden.set(not_overridden.get() + 1);
                prop_assert_eq!(r.rule, Rule::Default);
                prop_assert_eq!(r.network, None);
            }
        }
        if let IpAddr::V4(v4) = addr {
            let mapped = rules.resolve(IpAddr::V6(v4.to_ipv6_mapped()), |_| {
                Err(DefaultReason::NoDatabase)
            });
            prop_assert_eq!(mapped, r, "IPv4-mapped form of {}", addr);
        }
        Ok(())
    });
    // The generator must exercise what the property is about.
    let (overridden, not_overridden, nested) =
        (overridden.get(), not_overridden.get(), nested.get());
    println!("overridden {overridden}, not {not_overridden}, inside nested networks {nested}");
    assert!(overridden >= 100 && not_overridden >= 20 && nested >= 50);
}

#[test]
fn property_a_listed_country_maps_to_its_region_unless_overridden() {
    let config = config();
    let listed: Vec<(String, usize)> = config
        .regions
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.countries.iter().map(move |c| (c.clone(), i)))
        .collect();
    assert!(listed.len() >= 7);
    let rules = RegionRules::new(&config);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("case.mmdb");

    let address = prop_oneof![
        any::<u32>(),
        (0u32..0x100).prop_map(|low| 0x5102_4500 | low), // 81.2.69.0/24 (part overridden)
        (0u32..0x40).prop_map(|low| 0x5102_45C0 | low),  // 81.2.69.192/26 (overridden)
        (0u32..0x1_0000).prop_map(|low| 0xC633_0000 | low), // 198.51.0.0/16
    ];
    let strategy = (0..listed.len(), address, 0u8..3, 16u8..=32);
    let (by_override, by_country) = (Cell::new(0), Cell::new(0));
    check(128, strategy, |(which, addr, schema, len)| {
        let addr = Ipv4Addr::from(addr);
        let overridden = rules.cidr_override(IpAddr::V4(addr));
        prop_assume!(special_purpose(IpAddr::V4(addr)).is_none() || overridden.is_some());

        let (code, region) = &listed[which];
        let info = countries::country(code).expect("listed countries are known");
        let record = match schema {
            0 => Value::city_record(code, info.continent, Some((info.lat, info.lon))),
            1 => Value::country_record(code, info.continent),
            _ => Value::country_code_record(code),
        };
        let mut w = MmdbWriter::new("case");
        w.insert(network_of(false, u128::from(u32::from(addr)), len), record);
        // A neighbour elsewhere, so the database is not one record everywhere.
        w.insert(net("0.0.0.0/1"), Value::country_code_record("AQ"));
        w.write_to(&path).expect("write");
        let db = GeoDatabase::open(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let resolver = GeoResolver::with_database(&config, Some(db));

        let r = resolver.resolve(IpAddr::V4(addr));
        match overridden {
            Some((network, overriding)) => {
                by_override.set(by_override.get() + 1);
                prop_assert_eq!(r.rule, Rule::CidrOverride);
                prop_assert_eq!(r.network, Some(network));
                prop_assert_eq!(r.region, overriding);
            }
            None => {
                by_country.set(by_country.get() + 1);
                prop_assert_eq!(r.rule, Rule::Country, "{} {} {:?}", addr, code, r);
                prop_assert_eq!(r.region.get(), *region);
                prop_assert_eq!(r.country.map(|c| c.code), Some(code.as_str()));
            }
        }
        Ok(())
    });
    let (by_override, by_country) = (by_override.get(), by_country.get());
    println!("placed by override {by_override}, by country {by_country}");
    assert!(by_override >= 25 && by_country >= 60);
}

fn point() -> impl Strategy<Value = LatLon> {
    (-90.0f64..=90.0, -180.0f64..=180.0).prop_map(|(lat, lon)| LatLon { lat, lon })
}

#[test]
fn property_nearest_region_minimises_great_circle_distance() {
    let strategy = (prop::collection::vec(point(), 1..7), point());
    check(300, strategy, |(locations, client)| {
        let mut yaml = String::from("default_region: r0\nregions:\n");
        for (i, l) in locations.iter().enumerate() {
            yaml.push_str(&format!(
                "  - id: r{i}\n    location: {{ lat: {}, lon: {} }}\n",
                l.lat, l.lon
            ));
        }
        let config = parse(&yaml);
        for (l, region) in locations.iter().zip(&config.regions) {
            prop_assert_eq!(*l, region.location, "YAML round trip of the coordinates");
        }
        let rules = RegionRules::new(&config);
        // A public address whose record names an unlisted country and continent, with
        // coordinates: only the nearest rule can place it.
        let record = GeoRecord {
            country: countries::country("AQ"),
            continent: Some("AN"),
            location: Some((client, LocationSource::Database)),
        };
        let r = rules.resolve(ip("9.9.9.9"), |_| Ok(record));
        prop_assert_eq!(r.rule, Rule::Nearest);
        prop_assert_eq!(r.region, rules.nearest(client));
        let chosen = great_circle_km(client, locations[r.region.get()]);
        for (i, l) in locations.iter().enumerate() {
            let d = great_circle_km(client, *l);
            prop_assert!(
                chosen <= d,
                "region {} at {} km, but r{} at {} km",
                r.region.get(),
                chosen,
                i,
                d
            );
            if d == chosen {
                prop_assert!(
                    r.region.get() <= i,
                    "ties go to the first region in the file"
                );
            }
        }
        Ok(())
    });
}

#[test]
fn property_great_circle_km_is_a_sane_distance() {
    let half_circumference = std::f64::consts::PI * 6371.0088;
    check(1000, (point(), point(), point()), |(a, b, c)| {
        let ab = great_circle_km(a, b);
        prop_assert!((ab - great_circle_km(b, a)).abs() <= 1e-9, "symmetric");
        prop_assert_eq!(great_circle_km(a, a), 0.0);
        prop_assert!((0.0..=half_circumference + 1e-6).contains(&ab), "{} km", ab);
        let via = ab + great_circle_km(b, c);
        prop_assert!(great_circle_km(a, c) <= via + 1e-6, "triangle inequality");
        Ok(())
    });
    let antipodes = great_circle_km(
        LatLon { lat: 0.0, lon: 0.0 },
        LatLon {
            lat: 0.0,
            lon: 180.0,
        },
    );
    assert!((antipodes - half_circumference).abs() < 1e-6, "{antipodes}");
    // Dublin to London: about 464 km.
    let d = great_circle_km(
        LatLon {
            lat: 53.35,
            lon: -6.26,
        },
        LatLon {
            lat: 51.51,
            lon: -0.13,
        },
    );
    assert!((455.0..475.0).contains(&d), "{d}");
}

#[test]
fn property_ipv4_mapped_resolves_exactly_like_ipv4() {
    let fixture = Fixture::new();
    let config = config();
    let dir = fixture.city.parent().expect("folder");
    let (_, cached) = resolver_from_yaml(dir, Some(256));
    let plain = GeoResolver::with_database(&config, Some(fixture.city_db()));
    let inside =
        |network: u32, host_bits: u32| (0..(1u32 << host_bits)).prop_map(move |low| network | low);
    let address = prop_oneof![
        any::<u32>(),
        inside(0x5102_4500, 8),  // 81.2.69.0/24: country and override
        inside(0x0808_0800, 8),  // 8.8.8.0/24
        inside(0xB500_0000, 16), // 181.0.0.0/16: nearest
        inside(0x0A00_0000, 24), // 10.0.0.0/8: special, 10.20/16 overridden
        inside(0xC633_6400, 8),  // 198.51.100.0/24: nested overrides
        inside(0xD601_0100, 8),  // 214.1.1.0/24: no location
    ];
    let rules_seen = RefCell::new(HashSet::new());
    check(500, address, |bits| {
        let v4 = Ipv4Addr::from(bits);
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        for resolver in [&plain, &cached] {
            let direct = resolver.resolve(IpAddr::V4(v4));
            let via_mapped = resolver.resolve(mapped);
            prop_assert_eq!(via_mapped.ip, IpAddr::V4(v4), "normalised to IPv4");
            prop_assert_eq!(via_mapped, direct, "{}", v4);
            rules_seen.borrow_mut().insert(direct.rule);
        }
        Ok(())
    });
    let rules_seen = rules_seen.into_inner();
    for rule in [
        Rule::CidrOverride,
        Rule::Country,
        Rule::Nearest,
        Rule::Default,
    ] {
        assert!(
            rules_seen.contains(&rule),
            "{rule:?} never exercised: {rules_seen:?}"
        );
    }
}
