//! Client address → region, over 10,000 random real addresses.
//!
//! Run: `cargo bench -p locus-geo --bench resolve`.
//!
//! Addresses come from the networks of a real database: DB-IP Lite country
//! (`/work/shared/geoip/dbip-country.mmdb`, or the file named by `LOCUS_BENCH_MMDB`) when it
//! is there, otherwise a database of random networks written with
//! [`locus_geo::mmdb_writer`]. Random networks are picked (80% IPv4, 20% IPv6, as traffic
//! roughly is) with a fixed seed, then a random address inside each, so every run measures
//! the same list. The rules are the repository's `regions.yaml` (or the file named by
//! `LOCUS_BENCH_REGIONS`) when it parses, otherwise a small realistic one embedded here
//! (`LOCUS_BENCH_REGIONS=embedded` forces it).
//!
//! One group, five functions over the same addresses:
//!
//! 1. `bare_maxminddb_lookup_decode_country`: `Reader::lookup` + decoding only the country
//!    code: the floor any GeoIP resolution pays;
//! 2. `geo_database_lookup`: [`GeoDatabase::lookup`] (decode of every field resolution
//!    needs + completion from the country table);
//! 3. `resolve_uncached`: [`GeoResolver::resolve`] with the cache off;
//! 4. `resolve_cached_hit`: cache of 100,000 entries warmed with all the addresses;
//! 5. `resolve_cached_realistic`: cache of 100,000 entries, requests drawn uniformly from
//!    1,000,000 distinct addresses (steady-state hit rate printed).
//!
//! Batching: one criterion iteration resolves a batch of 10,000 addresses (the whole list,
//! or the next 10,000 requests of the realistic stream) and the group's throughput is
//! `Throughput::Elements(10_000)`, so criterion prints elements/s and ns per resolution is
//! the iteration time / 10,000 (= 1e9 / throughput). A batch rather than one address per
//! iteration: criterion's per-iteration bookkeeping and the index arithmetic vanish in the
//! batch, and the loop walks the addresses in order like a stream of requests would, instead
//! of criterion re-resolving one address whose tree path and record stay hot in L1.
//!
//! After criterion, a manual `Instant` pass (best and mean of 10 batches) prints one
//! `summary:` line per function with ns/op and the ratio to the bare baseline, and a
//! breakdown of where an uncached resolution spends its time beyond the bare lookup.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use locus_geo::config::GeoIpSource;
use locus_geo::countries::COUNTRIES;
use locus_geo::mmdb_writer::{MmdbWriter, Value};
use locus_geo::special::special_purpose;
use locus_geo::{
    Config, DefaultReason, GeoDatabase, GeoRecord, GeoResolver, RegionRules, Resolution, Schema,
};
use maxminddb::{Mmap, Reader, WithinOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// Addresses of the main list.
const ADDRESSES: usize = 10_000;
/// Distinct addresses behind the realistic stream, and the stream's length.
const REALISTIC_POOL: usize = 1_000_000;
const CACHE_SIZE: u64 = 100_000;
const SEED: u64 = 0x10C0_5EED;
/// Share of IPv4 among the drawn addresses.
const V4_SHARE: f64 = 0.8;

/// A small but realistic `regions.yaml`: 5 regions on 3 continents, countries,
/// continents, one CIDR override (a real network, so it is exercised), a default region.
/// `{database}` is replaced by the database path (a JSON string is a valid YAML scalar).
const EMBEDDED_REGIONS: &str = r#"
geoip:
  database: {database}
  cache_size: 0
trusted_proxies: [127.0.0.0/8]
default_region: us-east
regions:
  - id: us-east
    name: US East (Ashburn)
    location: { lat: 39.04, lon: -77.49 }
    countries: [US, CA, MX]
    continents: [NA, SA]
    fallback: [us-west, eu-west]
  - id: us-west
    name: US West (Oregon)
    location: { lat: 45.84, lon: -119.70 }
    countries: [NZ, FJ]
    networks: [81.2.69.0/24]
    fallback: [us-east]
  - id: eu-west
    name: Europe West (Dublin)
    location: { lat: 53.35, lon: -6.26 }
    countries: [IE, GB, FR, ES, PT, BE, NL]
    continents: [AF]
    fallback: [eu-central, us-east]
  - id: eu-central
    name: Europe Central (Frankfurt)
    location: { lat: 50.11, lon: 8.68 }
    countries: [DE, AT, CH, PL, CZ, IT, SE]
    continents: [EU]
    fallback: [eu-west]
  - id: ap-southeast
    name: Asia Pacific Southeast (Singapore)
    location: { lat: 1.35, lon: 103.82 }
    countries: [SG, MY, ID, IN, AU, JP]
    continents: [AS, OC]
    fallback: [us-west]
    turn:
      secret_env: TURN_SECRET_AP_SOUTHEAST
      ttl: 12h
      servers: ["turn:turn1.ap-southeast.example.net:3478?transport=udp"]
"#;

// ---------------------------------------------------------------------------------------
// The baseline's decoding structs: the country code only, borrowed, nothing else.

/// DB-IP Lite's flat schema.
#[derive(Deserialize)]
struct FlatCountry<'a> {
    #[serde(borrow)]
    country_code: Option<&'a str>,
}

/// GeoIP2/GeoLite2 City and Country: `country.iso_code`.
#[derive(Deserialize)]
struct Geoip2Country<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

/// The floor: tree walk + decoding of the country code. The schema test is a perfectly
/// predicted branch.
#[inline]
fn bare_country(reader: &Reader<Mmap>, ip: IpAddr, flat: bool) -> Option<&str> {
    let result = reader.lookup(ip).ok()?;
    if flat {
        result.decode::<FlatCountry<'_>>().ok()??.country_code
    } else {
        result
            .decode::<Geoip2Country<'_>>()
            .ok()??
            .country?
            .iso_code
    }
}

// ---------------------------------------------------------------------------------------
// Addresses.

/// The networks with data of a database, as (first address, prefix length).
struct Networks {
    v4: Vec<(u32, u8)>,
    v6: Vec<(u128, u8)>,
    /// Distinct data records (what a memo keyed by record offset would hold).
    distinct_records: usize,
}

fn collect_networks(reader: &Reader<Mmap>) -> Networks {
    let mut networks = Networks {
        v4: Vec::new(),
        v6: Vec::new(),
        distinct_records: 0,
    };
    let mut offsets = std::collections::HashSet::new();
    let walk = reader
        .networks(WithinOptions::default())
        .expect("walk the database's networks");
    for item in walk {
        let result = item.expect("network of the database");
        offsets.extend(result.offset());
        let network = result.network().expect("network of the database");
        match network.ip() {
            IpAddr::V4(a) => networks.v4.push((u32::from(a), network.prefix())),
            IpAddr::V6(a) => networks.v6.push((u128::from(a), network.prefix())),
        }
    }
    networks.distinct_records = offsets.len();
    networks
}

impl Networks {
    /// A random address inside a random network (IPv4 with probability [`V4_SHARE`]).
    fn draw(&self, rng: &mut StdRng) -> IpAddr {
        let want_v4 = rng.random_bool(V4_SHARE);
        if (want_v4 && !self.v4.is_empty()) || self.v6.is_empty() {
            let (first, len) = self.v4[rng.random_range(0..self.v4.len())];
            let host = rng.random::<u32>().checked_shr(u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(first | host))
        } else {
            let (first, len) = self.v6[rng.random_range(0..self.v6.len())];
            let host = rng
                .random::<u128>()
                .checked_shr(u32::from(len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(first | host))
        }
    }
}

/// Random /16../24 IPv4 and /32../48 IPv6 networks (global unicast, no special-purpose
/// range) mapped to random countries, in DB-IP's flat schema.
fn generate_database(path: &Path, rng: &mut StdRng) {
    let mut writer = MmdbWriter::new("country ipvAll")
        .description("locus-geo resolve bench: random networks, NOT real geolocation");
    let country = |rng: &mut StdRng| {
        Value::country_code_record(COUNTRIES[rng.random_range(0..COUNTRIES.len())].code)
    };
    let mut v4 = 0;
    while v4 < 4_000 {
        let net = ipnet::Ipv4Net::new(
            Ipv4Addr::from(rng.random::<u32>()),
            rng.random_range(16..=24),
        )
        .expect("prefix length ≤ 32")
        .trunc();
        if special_purpose(IpAddr::V4(net.network())).is_some() {
            continue;
        }
        let value = country(rng);
        writer.insert(net.into(), value);
        v4 += 1;
    }
    let mut v6 = 0;
    while v6 < 1_000 {
        // 2000::/3, global unicast.
        let first = (rng.random::<u128>() >> 3) | (1u128 << 125);
        let net = ipnet::Ipv6Net::new(Ipv6Addr::from(first), rng.random_range(32..=48))
            .expect("prefix length ≤ 128")
            .trunc();
        if special_purpose(IpAddr::V6(net.network())).is_some() {
            continue;
        }
        let value = country(rng);
        writer.insert(net.into(), value);
        v6 += 1;
    }
    writer.write_to(path).expect("write the generated database");
}

// ---------------------------------------------------------------------------------------
// Configuration.

fn load_config(database: &Path) -> Config {
    // LOCUS_BENCH_REGIONS: another rules file, or `embedded` for the rules above.
    let repo_file = std::env::var_os("LOCUS_BENCH_REGIONS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions.yaml"));
    let from_repo = std::fs::read_to_string(&repo_file)
        .ok()
        .map(|text| (Config::parse(&text, &repo_file), text));
    let mut config = match from_repo {
        Some((Ok(config), _)) => {
            println!(
                "rules: {} ({} regions)",
                repo_file.display(),
                config.regions.len()
            );
            config
        }
        other => {
            if let Some((Err(error), _)) = other {
                println!(
                    "rules: {} does not parse ({error}); using the embedded rules",
                    repo_file.display()
                );
            }
            let database_yaml =
                serde_json::to_string(&database.display().to_string()).expect("a string");
            let text = EMBEDDED_REGIONS.replace("{database}", &database_yaml);
            let config = Config::parse(&text, Path::new("embedded-regions.yaml"))
                .unwrap_or_else(|error| panic!("embedded rules: {error}"));
            println!(
                "rules: embedded in the bench ({} regions)",
                config.regions.len()
            );
            config
        }
    };
    config.geoip.database = GeoIpSource::File(database.to_path_buf());
    config
}

fn with_cache(config: &Config, cache_size: u64) -> Config {
    let mut config = config.clone();
    config.geoip.cache_size = cache_size;
    config
}

fn open(path: &Path) -> GeoDatabase {
    GeoDatabase::open(path).unwrap_or_else(|error| panic!("{error}"))
}

// ---------------------------------------------------------------------------------------

/// One batch of work: resolves the next `ADDRESSES` addresses.
type Pass<'a> = Box<dyn FnMut() + 'a>;

/// Time per element of `passes` runs of `pass` (after one warm-up run): (best, mean).
/// The best is the figure for steady work; the mean matters where the cost comes in bursts
/// (moka's housekeeping runs every so many writes, so some batches pay for others).
fn ns_per_op(pass: &mut dyn FnMut(), passes: usize) -> (f64, f64) {
    pass();
    let times: Vec<f64> = (0..passes)
        .map(|_| {
            let start = Instant::now();
            pass();
            start.elapsed().as_secs_f64() * 1e9 / ADDRESSES as f64
        })
        .collect();
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    (best, times.iter().sum::<f64>() / times.len() as f64)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not (criterion's test mode
    // runs each function once): keep that mode cheap, it is an unoptimised build.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let realistic_pool = if bench_mode { REALISTIC_POOL } else { 20_000 };
    let mut rng = StdRng::seed_from_u64(SEED);

    let configured = std::env::var_os("LOCUS_BENCH_MMDB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/geoip/dbip-country.mmdb")
        });
    let _generated_dir;
    let db_path = if configured.is_file() {
        println!(
            "addresses: drawn from the networks of {}",
            configured.display()
        );
        configured
    } else {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("generated-country.mmdb");
        generate_database(&path, &mut rng);
        println!(
            "addresses: {} not found; drawn from a generated database of 4,000 IPv4 and 1,000 IPv6 random networks ({})",
            configured.display(),
            path.display()
        );
        _generated_dir = dir;
        path
    };

    let started = Instant::now();
    let db = open(&db_path);
    println!(
        "database: {} ({}, schema {}, {} networks), opened and checked in {:.2?}",
        db.info().path.display(),
        db.info().database_type,
        db.info().schema.as_str(),
        db.info().networks,
        started.elapsed()
    );
    let flat = db.info().schema == Schema::CountryCode;
    let networks = collect_networks(db.reader());
    println!(
        "networks with data: {} IPv4, {} IPv6, {} distinct records; drawing {V4_SHARE:.0}% IPv4",
        networks.v4.len(),
        networks.v6.len(),
        networks.distinct_records,
        V4_SHARE = V4_SHARE * 100.0
    );

    let addresses: Vec<IpAddr> = (0..ADDRESSES).map(|_| networks.draw(&mut rng)).collect();
    // The realistic stream: `realistic_pool` requests drawn uniformly (with replacement)
    // from `realistic_pool` addresses; stored in request order so that reading it is a
    // sequential scan, not a cache miss per request that the benchmark would add.
    let stream: Vec<IpAddr> = {
        let pool: Vec<IpAddr> = (0..realistic_pool)
            .map(|_| networks.draw(&mut rng))
            .collect();
        (0..realistic_pool)
            .map(|_| pool[rng.random_range(0..pool.len())])
            .collect()
    };
    drop(networks);

    let config = load_config(&db_path);
    let uncached = GeoResolver::with_database(&with_cache(&config, 0), Some(open(&db_path)));
    let cached = GeoResolver::with_database(&with_cache(&config, CACHE_SIZE), Some(open(&db_path)));
    let realistic =
        GeoResolver::with_database(&with_cache(&config, CACHE_SIZE), Some(open(&db_path)));

    // What the list exercises: the rule that placed each address.
    let mut rules: BTreeMap<&str, usize> = BTreeMap::new();
    for &ip in &addresses {
        *rules.entry(uncached.resolve(ip).rule.as_str()).or_default() += 1;
        cached.resolve(ip);
    }
    let found = addresses
        .iter()
        .filter(|&&ip| bare_country(db.reader(), ip, flat).is_some())
        .count();
    println!(
        "{ADDRESSES} addresses ({} IPv4), {found} with a country in the database; rules: {rules:?}",
        addresses.iter().filter(|ip| ip.is_ipv4()).count()
    );

    let reader = db.reader();
    let mut cursor = 0usize;
    let mut passes: Vec<(&str, Pass<'_>)> = vec![
        (
            "bare_maxminddb_lookup_decode_country",
            Box::new(|| {
                for &ip in &addresses {
                    black_box(bare_country(reader, black_box(ip), flat));
                }
            }),
        ),
        (
            "geo_database_lookup",
            Box::new(|| {
                for &ip in &addresses {
                    let _ = black_box(db.lookup(black_box(ip)));
                }
            }),
        ),
        (
            "resolve_uncached",
            Box::new(|| {
                for &ip in &addresses {
                    black_box(uncached.resolve(black_box(ip)));
                }
            }),
        ),
        (
            "resolve_cached_hit",
            Box::new(|| {
                for &ip in &addresses {
                    black_box(cached.resolve(black_box(ip)));
                }
            }),
        ),
        (
            "resolve_cached_realistic",
            Box::new(|| {
                for _ in 0..ADDRESSES {
                    let ip = stream[cursor];
                    cursor = if cursor + 1 == stream.len() {
                        0
                    } else {
                        cursor + 1
                    };
                    black_box(realistic.resolve(black_box(ip)));
                }
            }),
        ),
    ];

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    {
        let mut group = criterion.benchmark_group("resolve");
        group.throughput(Throughput::Elements(ADDRESSES as u64));
        for (name, pass) in &mut passes {
            group.bench_function(*name, |b| b.iter(&mut *pass));
        }
        group.finish();
    }
    criterion.final_summary();

    if !bench_mode {
        return;
    }

    // Steady-state hit rate of the realistic stream, replayed through a moka cache of the
    // same size and policy as the resolver's (its hits are not observable from outside).
    let hit_rate = {
        let cache: moka::sync::Cache<IpAddr, ()> = moka::sync::Cache::new(CACHE_SIZE);
        let mut hits = 0usize;
        for round in 0..2 {
            for &ip in &stream {
                if cache.get(&ip).is_some() {
                    hits += round;
                } else {
                    cache.insert(ip, ());
                }
            }
        }
        hits as f64 / stream.len() as f64
    };

    println!();
    println!(
        "summary (10 batches of {ADDRESSES}, Instant, best and mean; criterion above is the primary measurement):"
    );
    let mut bare = f64::NAN;
    for (name, pass) in &mut passes {
        let (best, mean) = ns_per_op(&mut **pass, 10);
        if bare.is_nan() {
            bare = best;
        }
        println!(
            "summary: {name:<38} {best:>8.1} ns/op {:>6.2}x bare   (mean {mean:.1} ns/op)",
            best / bare
        );
    }
    println!(
        "summary: resolve_cached_realistic: {realistic_pool} distinct addresses behind the stream, cache {CACHE_SIZE}: steady-state hit rate ≈ {:.1}% (moka replay)",
        hit_rate * 100.0
    );

    // Where an uncached resolution spends its time beyond the bare lookup, and what a
    // cache hit and a cache miss cost: the pieces, timed alone.
    let compiled = RegionRules::new(&config);
    let records: Vec<Option<GeoRecord>> = addresses
        .iter()
        .map(|&ip| db.lookup(ip).ok().flatten())
        .collect();
    // A memo of completed records by data-section offset (what `GeoDatabase::open` could
    // build while it checks every distinct record): the tree walk stays, the decode goes.
    let by_offset: HashMap<usize, GeoRecord> = addresses
        .iter()
        .filter_map(|&ip| {
            let offset = reader.lookup(ip).ok()?.offset()?;
            Some((offset, db.lookup(ip).ok()??))
        })
        .collect();
    let codes: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.and_then(|r| r.country).map(|c| c.code))
        .collect();
    let sample = uncached.resolve(addresses[0]);
    let hit_cache: moka::sync::Cache<IpAddr, Resolution> = moka::sync::Cache::new(CACHE_SIZE);
    for &ip in &addresses {
        hit_cache.insert(ip, sample);
    }
    let miss_cache: moka::sync::Cache<IpAddr, Resolution> = moka::sync::Cache::new(CACHE_SIZE);
    let mut fresh = 0u128;
    let mut fresh_ip = move || {
        fresh += 1;
        IpAddr::V6(Ipv6Addr::from((0x2a00u128 << 112) | fresh))
    };
    for _ in 0..2 * CACHE_SIZE {
        miss_cache.insert(fresh_ip(), sample);
    }
    let mut breakdown: Vec<(&str, Pass<'_>)> = vec![
        (
            "tree walk only (lookup + offset)",
            Box::new(|| {
                for &ip in &addresses {
                    black_box(reader.lookup(black_box(ip)).ok().and_then(|r| r.offset()));
                }
            }),
        ),
        (
            "tree walk + decode RawRecord shape",
            Box::new(|| {
                for &ip in &addresses {
                    let result = reader.lookup(black_box(ip)).ok();
                    black_box(result.and_then(|r| r.decode::<RawRecordCopy<'_>>().ok().flatten()));
                }
            }),
        ),
        (
            "tree walk + offset memo (proposal)",
            Box::new(|| {
                for &ip in &addresses {
                    let offset = reader.lookup(black_box(ip)).ok().and_then(|r| r.offset());
                    black_box(offset.and_then(|o| by_offset.get(&o)));
                }
            }),
        ),
        (
            "countries::country(code) only",
            Box::new(|| {
                for code in &codes {
                    black_box(code.and_then(|c| locus_geo::countries::country(black_box(c))));
                }
            }),
        ),
        (
            "Instant::now() (moka reads the clock)",
            Box::new(|| {
                for _ in 0..ADDRESSES {
                    black_box(Instant::now());
                }
            }),
        ),
        (
            "special_purpose only",
            Box::new(|| {
                for &ip in &addresses {
                    black_box(special_purpose(black_box(ip)));
                }
            }),
        ),
        (
            "cidr_override only",
            Box::new(|| {
                for &ip in &addresses {
                    black_box(compiled.cidr_override(black_box(ip)));
                }
            }),
        ),
        (
            "rules, record precomputed",
            Box::new(|| {
                for (&ip, record) in addresses.iter().zip(&records) {
                    let record = *record;
                    black_box(compiled.resolve(black_box(ip), |_| {
                        record.ok_or(DefaultReason::NotInDatabase)
                    }));
                }
            }),
        ),
        (
            "rules + GeoDatabase::lookup",
            Box::new(|| {
                for &ip in &addresses {
                    black_box(compiled.resolve(black_box(ip), |ip| match db.lookup(ip) {
                        Ok(Some(record)) => Ok(record),
                        _ => Err(DefaultReason::NotInDatabase),
                    }));
                }
            }),
        ),
        (
            "moka get, hit (10k keys in 100k cache)",
            Box::new(|| {
                for &ip in &addresses {
                    black_box(hit_cache.get(&black_box(ip)));
                }
            }),
        ),
        (
            "moka get miss + insert (full cache)",
            Box::new(|| {
                for _ in 0..ADDRESSES {
                    let ip = fresh_ip();
                    if miss_cache.get(&black_box(ip)).is_none() {
                        miss_cache.insert(ip, sample);
                    }
                }
            }),
        ),
    ];
    for (name, pass) in &mut breakdown {
        let (best, mean) = ns_per_op(&mut **pass, 10);
        println!(
            "breakdown: {name:<38} {best:>8.1} ns/op {:>6.2}x bare   (mean {mean:.1} ns/op)",
            best / bare
        );
    }
}

/// The shape `GeoDatabase::lookup` decodes (a copy of `database.rs`'s private
/// `RawRecord`), to separate the decode from the completion.
#[derive(Deserialize)]
#[allow(dead_code)]
struct RawRecordCopy<'a> {
    #[serde(borrow, default)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<IsoCode<'a>>,
    #[serde(borrow, default)]
    continent: Option<ContinentCopy<'a>>,
    #[serde(default)]
    location: Option<LocationCopy>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ContinentCopy<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct LocationCopy {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}
