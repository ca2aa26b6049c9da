//! Entry points of the coverage-guided fuzz targets (`fuzz/`), kept here so the stable
//! replay test (`edge/tests/fuzz_corpus.rs`) runs every corpus and crash input through
//! exactly the code the fuzzer ran. Not an API: each takes arbitrary bytes and panics
//! only when a property the crate promises is broken.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::config::Config;
use crate::database::GeoDatabase;
use crate::mmdb_writer::{MmdbWriter, Value};
use crate::resolver::GeoResolver;

/// `regions.yaml` parse + validate; a config that validates must resolve addresses
/// without panicking and name one of its regions.
pub fn regions_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("regions.yaml")) {
        Ok(config) => {
            let resolver = GeoResolver::with_database(&config, None);
            for ip in probe_addresses(data) {
                let resolution = resolver.resolve(ip);
                assert!(config.region_at(resolution.region).is_some());
            }
        }
        // Every problem renders to text (the operator reads it).
        Err(error) => drop(error.to_string()),
    }
}

/// A few addresses derived from the input, plus fixed ones of each kind of range.
fn probe_addresses(data: &[u8]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = vec![
        Ipv4Addr::new(81, 2, 69, 142).into(),
        Ipv4Addr::new(10, 1, 2, 3).into(),
        Ipv6Addr::LOCALHOST.into(),
        "2001:db8::1"
            .parse()
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        "::ffff:1.2.3.4"
            .parse()
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    ];
    for chunk in data.rchunks_exact(16).take(4) {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(chunk);
        ips.push(Ipv6Addr::from(bytes).into());
        ips.push(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into());
    }
    ips
}

/// Where [`mmdb`] writes its database: one file per process (fuzzers run one process per
/// job), in the temporary directory.
fn scratch_path() -> PathBuf {
    std::env::temp_dir().join(format!("locus-fuzz-{}.mmdb", std::process::id()))
}

/// MaxMind database open (the whole-file check and the index build) + lookups. The input
/// is a database file as it is, or, after the prefix `nets:`, networks (family, address,
/// prefix, country) that [`MmdbWriter`] writes, which must then open. Either way every
/// lookup through the index must answer what the tree walk answers.
pub fn mmdb(data: &[u8]) {
    let path = scratch_path();
    let (structured, rest) = match data.strip_prefix(b"nets:") {
        Some(rest) => (true, rest),
        None => (false, data),
    };
    let bytes = if structured {
        networks_database(rest).to_bytes()
    } else {
        rest.to_vec()
    };
    if std::fs::write(&path, &bytes).is_err() {
        return;
    }
    let opened = GeoDatabase::open(&path);
    let _ = std::fs::remove_file(&path);
    let database = match opened {
        Ok(database) => database,
        Err(error) => {
            assert!(
                !structured,
                "a database written by MmdbWriter was refused: {error}"
            );
            drop(error.to_string());
            return;
        }
    };
    for ip in probe_addresses(rest) {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_canonical(),
            v4 => v4,
        };
        let indexed = database.lookup(ip);
        let walked = database.lookup_in_tree(ip);
        match (indexed, walked) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "index and tree disagree on {ip}"),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("index and tree disagree on {ip}: {a:?} / {b:?}"),
        }
    }
}

/// Networks from the input: 1 byte family (even: IPv4), the address (4 or 16 bytes), 1
/// byte prefix, 1 byte country choice.
fn networks_database(mut data: &[u8]) -> MmdbWriter {
    const COUNTRIES: [(&str, &str); 6] = [
        ("DE", "EU"),
        ("US", "NA"),
        ("JP", "AS"),
        ("BR", "SA"),
        ("AU", "OC"),
        ("ZA", "AF"),
    ];
    let mut writer = MmdbWriter::new("GeoLite2-Country");
    // At least one record with a country, so the database is usable.
    if let Ok(net) = IpNet::new(Ipv4Addr::new(81, 2, 69, 0).into(), 24) {
        writer.insert(net, Value::country_record("GB", "EU"));
    }
    while let Some((&family, rest)) = data.split_first() {
        let len = if family % 2 == 0 { 4 } else { 16 };
        if rest.len() < len + 2 {
            break;
        }
        let (address, rest) = rest.split_at(len);
        let ip: IpAddr = if len == 4 {
            Ipv4Addr::new(address[0], address[1], address[2], address[3]).into()
        } else {
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(address);
            Ipv6Addr::from(bytes).into()
        };
        let max = if len == 4 { 32 } else { 128 };
        let prefix = rest[0] % (max + 1);
        let (country, continent) = COUNTRIES[usize::from(rest[1]) % COUNTRIES.len()];
        if let Ok(net) = IpNet::new(ip, prefix) {
            writer.insert(net, Value::country_record(country, continent));
        }
        data = &rest[2..];
    }
    writer
}
