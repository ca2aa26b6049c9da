//! An opened, checked GeoIP database: memory-mapped MaxMind DB file → [`GeoRecord`].
//!
//! Three schemas are read through one decoding struct: GeoIP2/GeoLite2 City (country,
//! continent, coordinates), GeoIP2/GeoLite2 Country (country, continent) and the flat
//! `country_code` schema of DB-IP Lite conversions. Whatever a database lacks (continent,
//! coordinates) is derived from the country through [`crate::countries`].
//!
//! A database is checked when it is opened: every network of its search tree is walked and
//! every distinct record decoded, so a corrupt file is refused at open (with the reason)
//! rather than failing later under traffic. Lookups still return errors rather than
//! panicking, should a file be damaged in a way the walk cannot see.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use maxminddb::{MaxMindDbError, Mmap, Reader, WithinOptions};
use serde::Deserialize;

use crate::config::LatLon;
use crate::countries::{self, CountryInfo};
use crate::index::{Found, Ipv4Index, Ipv4IndexBuilder, Ipv6Index, Ipv6IndexBuilder};

/// Which shape of records a database has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// GeoIP2/GeoLite2 City: country, continent and coordinates.
    City,
    /// GeoIP2/GeoLite2 Country: country and continent.
    Country,
    /// DB-IP Lite (and similar): a flat `country_code` only.
    CountryCode,
}

impl Schema {
    pub fn as_str(self) -> &'static str {
        match self {
            Schema::City => "city",
            Schema::Country => "country",
            Schema::CountryCode => "country_code",
        }
    }
}

/// What the admin page and `/readyz` say about the loaded database.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseInfo {
    pub path: PathBuf,
    /// The metadata's `database_type`, e.g. `GeoLite2-City`.
    pub database_type: String,
    pub schema: Schema,
    /// The metadata's build time.
    pub build_time: SystemTime,
    /// Networks with data in the file.
    pub networks: u64,
    /// Attribution that the database's licence requires wherever results are shown.
    pub attribution: Option<Attribution>,
}

/// A licence-required credit line with its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub text: &'static str,
    pub url: &'static str,
}

/// DB-IP Lite is CC BY 4.0: pages showing its results must link back to DB-IP.
pub const DBIP_ATTRIBUTION: Attribution = Attribution {
    text: "IP Geolocation by DB-IP",
    url: "https://db-ip.com",
};

/// Where a record's coordinates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationSource {
    /// The database's own `location`.
    Database,
    /// The country's representative point (the database has no coordinates).
    Country,
}

/// What a database says about one address, completed from the country table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoRecord {
    pub country: Option<&'static CountryInfo>,
    pub continent: Option<&'static str>,
    pub location: Option<(LatLon, LocationSource)>,
}

/// Why a database could not be opened or read.
#[derive(Debug)]
pub enum DatabaseError {
    Open {
        path: PathBuf,
        source: MaxMindDbError,
    },
    /// A FIFO, a device or a directory: opening it could block forever or read without end.
    NotAFile {
        path: PathBuf,
        kind: &'static str,
    },
    Corrupt {
        path: PathBuf,
        detail: String,
    },
    NoCountryData {
        path: PathBuf,
        database_type: String,
    },
    Lookup {
        ip: IpAddr,
        source: MaxMindDbError,
    },
}

impl fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseError::Open { path, source } => write!(
                f,
                "cannot open GeoIP database {}: {source} (is it a MaxMind DB .mmdb file?)",
                path.display()
            ),
            DatabaseError::NotAFile { path, kind } => write!(
                f,
                "GeoIP database {} is {kind}, not a file: give the path of a .mmdb file",
                path.display()
            ),
            DatabaseError::Corrupt { path, detail } => write!(
                f,
                "GeoIP database {} is corrupt: {detail}; download it again (geoipupdate)",
                path.display()
            ),
            DatabaseError::NoCountryData {
                path,
                database_type,
            } => write!(
                f,
                "GeoIP database {} ({database_type}) has no country data: use a City or Country database (GeoLite2-City, GeoLite2-Country or DB-IP Lite country)",
                path.display()
            ),
            DatabaseError::Lookup { ip, source } => {
                write!(f, "GeoIP lookup of {ip} failed: {source}")
            }
        }
    }
}

impl std::error::Error for DatabaseError {}

/// The subset of every supported schema that resolution needs. Borrowed strings: no
/// allocation per lookup; fields not named here are skipped by the decoder.
#[derive(Debug, Deserialize, Default)]
struct RawRecord<'a> {
    #[serde(borrow, default)]
    country: Option<RawCountry<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<RawCountry<'a>>,
    #[serde(borrow, default)]
    continent: Option<RawContinent<'a>>,
    #[serde(default)]
    location: Option<RawLocation>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct RawCountry<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct RawContinent<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct RawLocation {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

impl RawRecord<'_> {
    fn complete(&self) -> GeoRecord {
        let code = self
            .country
            .as_ref()
            .and_then(|c| c.iso_code)
            .or(self.country_code)
            // Satellite and anycast networks have no `country`; the registration country
            // is the best remaining guess.
            .or_else(|| self.registered_country.as_ref().and_then(|c| c.iso_code));
        let country = code.and_then(countries::country);
        let continent = self
            .continent
            .as_ref()
            .and_then(|c| c.code)
            .and_then(static_continent)
            .or(country.map(|c| c.continent));
        let location = match &self.location {
            Some(RawLocation {
                latitude: Some(lat),
                longitude: Some(lon),
            }) if (-90.0..=90.0).contains(lat) && (-180.0..=180.0).contains(lon) => Some((
                LatLon {
                    lat: *lat,
                    lon: *lon,
                },
                LocationSource::Database,
            )),
            _ => country.map(|c| {
                (
                    LatLon {
                        lat: c.lat,
                        lon: c.lon,
                    },
                    LocationSource::Country,
                )
            }),
        };
        GeoRecord {
            country,
            continent,
            location,
        }
    }
}

/// The table's `'static` spelling of a continent code the database gave.
fn static_continent(code: &str) -> Option<&'static str> {
    countries::CONTINENTS
        .iter()
        .find(|(known, _)| *known == code)
        .map(|(known, _)| *known)
}

/// Most completed records kept by data offset. Country databases have a few hundred
/// distinct records (DB-IP: 250), City databases up to a few million: past this bound the
/// rest are decoded per lookup, so memory stays bounded (~60 bytes an entry).
const MAX_KEPT_RECORDS: usize = 500_000;

/// Multiplicative hashing of data offsets: they are distinct integers, so SipHash's
/// protection against chosen keys buys nothing here and costs a third of a lookup.
#[derive(Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type RecordTable = HashMap<usize, GeoRecord, BuildHasherDefault<OffsetHasher>>;

/// An open, checked GeoIP database.
#[derive(Debug)]
pub struct GeoDatabase {
    reader: Reader<Mmap>,
    info: DatabaseInfo,
    /// Completed records by data offset, filled by the check at open: a lookup is then a
    /// tree walk and a table read (the benchmark: ~185 ns instead of ~300 ns).
    records: RecordTable,
    /// Lookups without the tree walk ([`crate::index`]), when the tree allows it.
    ipv4: Option<Ipv4Index>,
    ipv6: Option<Ipv6Index>,
}

impl GeoDatabase {
    /// Memory-maps and checks the file. Refuses corrupt files and files without country
    /// data (ASN, anonymous-IP…), naming the reason.
    pub fn open(path: &Path) -> Result<GeoDatabase, DatabaseError> {
        let open_error = |source| DatabaseError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(kind) = crate::config::not_a_regular_file(path) {
            return Err(DatabaseError::NotAFile {
                path: path.to_path_buf(),
                kind,
            });
        }
        // SAFETY: the map is only undefined behaviour if the file is truncated or written
        // in place while mapped. The supported update path is the one `geoipupdate` uses,
        // write a new file and rename it over the old one, which leaves our mapping on the
        // old inode; the operator docs (README) say so.
        #[allow(unsafe_code)]
        let reader = unsafe { Reader::open_mmap(path) }.map_err(open_error)?;
        let (info, records, ipv4, ipv6) = check(&reader, path)?;
        Ok(GeoDatabase {
            reader,
            info,
            records,
            ipv4,
            ipv6,
        })
    }

    /// The built-in demo database ([`crate::demo`]), written to a temporary file that is
    /// unlinked as soon as it is mapped.
    pub fn open_builtin_demo() -> Result<GeoDatabase, DatabaseError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "locus-demo-geoip-{}-{nanos}.mmdb",
            std::process::id()
        ));
        let written = crate::demo::demo_database().write_to(&path);
        let opened = written
            .map_err(|e| DatabaseError::Open {
                path: path.clone(),
                source: MaxMindDbError::Io(e),
            })
            .and_then(|()| GeoDatabase::open(&path));
        let _ = std::fs::remove_file(&path);
        let mut database = opened?;
        database.info.path = PathBuf::from(crate::demo::BUILTIN_DEMO);
        Ok(database)
    }

    /// Facts about the database.
    pub fn info(&self) -> &DatabaseInfo {
        &self.info
    }

    /// What the database says about `ip` (already normalised: IPv4-mapped addresses must
    /// be converted first). `Ok(None)`: the address is not in the database.
    pub fn lookup(&self, ip: IpAddr) -> Result<Option<GeoRecord>, DatabaseError> {
        let found = match (ip, &self.ipv4, &self.ipv6) {
            (IpAddr::V4(v4), Some(index), _) => index.find(u32::from(v4)),
            (IpAddr::V6(v6), _, Some(index)) => index.find((u128::from(v6) >> 64) as u64),
            _ => Found::Walk,
        };
        match found {
            Found::NoData => Ok(None),
            Found::Offset(offset) => match self.records.get(&offset) {
                Some(kept) => Ok(Some(*kept)),
                // A record past the kept bound: the walk decodes it.
                None => self.lookup_in_tree(ip),
            },
            Found::Walk => self.lookup_in_tree(ip),
        }
    }

    /// [`GeoDatabase::lookup`] by walking the search tree.
    pub(crate) fn lookup_in_tree(&self, ip: IpAddr) -> Result<Option<GeoRecord>, DatabaseError> {
        let lookup_error = |source| DatabaseError::Lookup { ip, source };
        let result = self.reader.lookup(ip).map_err(lookup_error)?;
        if let Some(kept) = result.offset().and_then(|o| self.records.get(&o)) {
            return Ok(Some(*kept));
        }
        let record: Option<RawRecord<'_>> = result.decode().map_err(lookup_error)?;
        Ok(record.map(|r| r.complete()))
    }

    /// The underlying reader, for benchmarks that compare against a bare lookup.
    pub fn reader(&self) -> &Reader<Mmap> {
        &self.reader
    }
}

/// Walks every network, decodes each distinct record once (keeping the completed records),
/// works out the schema and builds the indexes.
#[allow(clippy::type_complexity)]
fn check(
    reader: &Reader<Mmap>,
    path: &Path,
) -> Result<
    (
        DatabaseInfo,
        RecordTable,
        Option<Ipv4Index>,
        Option<Ipv6Index>,
    ),
    DatabaseError,
> {
    let corrupt = |detail: String| DatabaseError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let metadata = reader.metadata();
    let build_time = UNIX_EPOCH
        .checked_add(Duration::from_secs(metadata.build_epoch))
        .filter(|t| *t <= UNIX_EPOCH + Duration::from_secs(253_402_300_799))
        .ok_or_else(|| {
            corrupt(format!(
                "build_epoch {} is not a date",
                metadata.build_epoch
            ))
        })?;

    let mut records = RecordTable::default();
    // Every distinct offset, also past the table's bound, so each record is decoded once.
    let mut seen_offsets: HashSet<usize, BuildHasherDefault<OffsetHasher>> = HashSet::default();
    let (mut has_location, mut has_country_object, mut has_country_code) = (false, false, false);
    let mut networks = 0u64;
    let mut ipv4 = Ipv4IndexBuilder::default();
    let mut ipv6 = Ipv6IndexBuilder::default();
    // Networks without data too: with them, the networks tile the address space.
    let walk = reader
        .networks(WithinOptions::default().include_networks_without_data())
        .map_err(|e| corrupt(e.to_string()))?;
    for item in walk {
        let result = item.map_err(|e| corrupt(e.to_string()))?;
        if let Ok(network) = result.network() {
            match network.ip() {
                IpAddr::V4(start) => ipv4.push(u32::from(start), network.prefix(), result.offset()),
                IpAddr::V6(start) => {
                    ipv6.push(u128::from(start), network.prefix(), result.offset())
                }
            }
        }
        let Some(offset) = result.offset() else {
            continue;
        };
        networks += 1;
        if !seen_offsets.insert(offset) {
            continue;
        }
        let record: RawRecord<'_> = result
            .decode()
            .map_err(|e| corrupt(e.to_string()))?
            .unwrap_or_default();
        if records.len() < MAX_KEPT_RECORDS {
            records.insert(offset, record.complete());
        }
        has_location |= record.location.is_some();
        has_country_object |= record.country.is_some() || record.registered_country.is_some();
        has_country_code |= record.country_code.is_some();
    }

    let schema = if has_location {
        Schema::City
    } else if has_country_object {
        Schema::Country
    } else if has_country_code {
        Schema::CountryCode
    } else {
        return Err(DatabaseError::NoCountryData {
            path: path.to_path_buf(),
            database_type: metadata.database_type.clone(),
        });
    };

    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let described_as_dbip = metadata
        .description
        .values()
        .chain(std::iter::once(&metadata.database_type))
        .any(|d| {
            d.to_ascii_lowercase().contains("db-ip") || d.to_ascii_lowercase().contains("dbip")
        });
    // The flat country_code schema is what DB-IP Lite conversions ship; crediting DB-IP
    // when in doubt costs a link, forgetting it breaks the licence.
    let attribution = (described_as_dbip
        || file_name.contains("dbip")
        || file_name.contains("db-ip")
        || schema == Schema::CountryCode)
        .then_some(DBIP_ATTRIBUTION);

    let info = DatabaseInfo {
        path: path.to_path_buf(),
        database_type: metadata.database_type.clone(),
        schema,
        build_time,
        networks,
        attribution,
    };
    Ok((info, records, ipv4.build(), ipv6.build()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmdb_writer::{MmdbWriter, Value};

    fn write(dir: &Path, name: &str, w: &MmdbWriter) -> PathBuf {
        let path = dir.join(name);
        w.write_to(&path).expect("write fixture");
        path
    }

    #[test]
    fn city_country_and_flat_schemas_are_recognised_and_completed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut city = MmdbWriter::new("GeoLite2-City");
        city.insert(
            "81.2.69.0/24".parse().expect("net"),
            Value::city_record("GB", "EU", Some((51.5142, -0.0931))),
        );
        let mut country = MmdbWriter::new("GeoLite2-Country");
        country.insert(
            "81.2.69.0/24".parse().expect("net"),
            Value::country_record("GB", "EU"),
        );
        let mut flat = MmdbWriter::new("country ipvAll");
        flat.insert(
            "81.2.69.0/24".parse().expect("net"),
            Value::country_code_record("GB"),
        );
        let ip: IpAddr = "81.2.69.142".parse().expect("ip");

        let db = GeoDatabase::open(&write(dir.path(), "city.mmdb", &city)).expect("open");
        assert_eq!(db.info().schema, Schema::City);
        assert_eq!(db.info().attribution, None);
        let rec = db.lookup(ip).expect("lookup").expect("found");
        assert_eq!(rec.country.map(|c| c.code), Some("GB"));
        assert_eq!(rec.location.map(|l| l.1), Some(LocationSource::Database));

        let db = GeoDatabase::open(&write(dir.path(), "country.mmdb", &country)).expect("open");
        assert_eq!(db.info().schema, Schema::Country);
        let rec = db.lookup(ip).expect("lookup").expect("found");
        assert_eq!(rec.continent, Some("EU"));
        assert_eq!(rec.location.map(|l| l.1), Some(LocationSource::Country));

        let db = GeoDatabase::open(&write(dir.path(), "flat.mmdb", &flat)).expect("open");
        assert_eq!(db.info().schema, Schema::CountryCode);
        assert_eq!(db.info().attribution, Some(DBIP_ATTRIBUTION));
        let rec = db.lookup(ip).expect("lookup").expect("found");
        assert_eq!(
            rec.continent,
            Some("EU"),
            "continent derived from the country"
        );
        assert!(
            rec.location.is_some(),
            "coordinates derived from the country"
        );

        assert_eq!(
            db.lookup("8.8.8.8".parse().expect("ip")).expect("lookup"),
            None
        );
    }

    /// Every address must get the tree walk's answer through the indexes: the boundaries
    /// of every range (and their neighbours) and random addresses, IPv4 and IPv6.
    fn assert_indexes_match_tree(db: &GeoDatabase, random: usize) {
        use rand::{Rng, SeedableRng};
        use std::net::{Ipv4Addr, Ipv6Addr};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut probes: Vec<IpAddr> = Vec::new();
        let v4_starts: Vec<u32> = db.ipv4.iter().flat_map(|i| i.starts()).collect();
        for start in v4_starts.into_iter().chain([0, 1, u32::MAX - 1, u32::MAX]) {
            for ip in [start.wrapping_sub(1), start, start.wrapping_add(1)] {
                probes.push(Ipv4Addr::from(ip).into());
            }
        }
        probes.extend((0..random).map(|_| IpAddr::from(Ipv4Addr::from(rng.random::<u32>()))));
        let v6 = db.ipv6.as_ref().expect("an IPv6 index");
        for &key in v6
            .keys()
            .iter()
            .chain(&[0, u64::MAX, 0x2a03_0000_0000_0005])
        {
            let start = u128::from(key) << 64;
            for ip in [
                start.wrapping_sub(1),
                start,
                start + 1,
                start | u128::from(rng.random::<u64>()),
            ] {
                probes.push(Ipv6Addr::from(ip).into());
            }
        }
        // Random addresses in 2000::/3 (where networks are) and anywhere.
        probes.extend((0..random).map(|_| {
            let ip = (rng.random::<u128>() >> 3) | (1u128 << 125);
            IpAddr::from(Ipv6Addr::from(ip))
        }));
        probes.extend((0..random / 4).map(|_| IpAddr::from(Ipv6Addr::from(rng.random::<u128>()))));
        // The IPv4 subtree and its aliases, which the IPv6 index sends to the tree.
        for ip in [
            "::1.2.3.4",
            "::ffff:1.2.3.4",
            "2002:102:304::1",
            "2001::102:304",
        ] {
            probes.push(ip.parse().expect("ip"));
        }
        for ip in probes {
            assert_eq!(
                db.lookup(ip).expect("indexed lookup"),
                db.lookup_in_tree(ip).expect("tree lookup"),
                "{ip}"
            );
        }
    }

    #[test]
    fn the_indexes_answer_as_the_tree_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = MmdbWriter::new("GeoLite2-City");
        let nets = [
            ("1.0.0.0/8", "AU"),
            ("1.2.0.0/16", "CN"),
            ("1.2.3.0/24", "JP"),
            ("1.2.3.4/32", "KR"),
            ("1.2.3.5/32", "KR"),
            ("2.0.0.0/8", "FR"),
            ("3.0.0.0/9", "FR"),
            ("3.128.0.0/9", "FR"),
            ("81.2.69.0/24", "GB"),
            ("81.2.69.128/25", "IE"),
            ("128.0.0.0/1", "US"),
            ("200.0.0.0/7", "BR"),
            ("255.255.255.255/32", "DE"),
            ("2001:db8::/32", "NL"),
            ("2a02::/16", "IT"),
        ];
        for (net, country) in nets {
            w.insert(
                net.parse().expect("net"),
                Value::city_record(country, "EU", None),
            );
        }
        let db = GeoDatabase::open(&write(dir.path(), "nested.mmdb", &w)).expect("open");
        let index = db.ipv4.as_ref().expect("an IPv4 index");
        // Adjacent networks with the same record are one range (3.0.0.0/9 + 3.128.0.0/9,
        // 1.2.3.4/32 + 1.2.3.5/32).
        assert!(index.merged());
        assert_eq!(index.starts().next(), Some(0));
        assert!(db.ipv6.is_some());
        assert_indexes_match_tree(&db, 20_000);
        assert_eq!(
            db.lookup("0.1.2.3".parse().expect("ip")).expect("lookup"),
            None
        );
        assert_eq!(
            db.lookup("1.2.3.5".parse().expect("ip"))
                .expect("lookup")
                .and_then(|r| r.country)
                .map(|c| c.code),
            Some("KR")
        );

        // Only IPv6 networks: nothing tiles the IPv4 space; no index, lookups walk.
        let mut v6 = MmdbWriter::new("GeoLite2-Country");
        v6.insert(
            "2a02::/16".parse().expect("net"),
            Value::country_record("IT", "EU"),
        );
        // Dense: more networks in 2a03::/16 than a leaf holds (sub-tables), networks
        // longer than /64 (sent to the tree) and a /64 split in two.
        for i in 0..200u128 {
            let net = ipnet::Ipv6Net::new((0x2a03u128 << 112 | i << 80).into(), 48).expect("net");
            let country = ["DE", "FR", "IT"][(i % 3) as usize];
            v6.insert(net.into(), Value::country_record(country, "EU"));
        }
        for (net, country) in [
            ("2a03:0:0:5::/80", "GB"),
            ("2a03:0:0:5:1::1/128", "IE"),
            ("2a03:0:1:7::/65", "PT"),
            ("2a03:0:1:7:8000::/65", "ES"),
            ("2c0f::/16", "ZA"),
        ] {
            v6.insert(
                net.parse().expect("net"),
                Value::country_record(country, "EU"),
            );
        }
        let db = GeoDatabase::open(&write(dir.path(), "v6.mmdb", &v6)).expect("open");
        assert!(db.ipv4.is_none());
        let (tables, walks) = db.ipv6.as_ref().expect("an IPv6 index").shape();
        assert!(tables >= 2, "sub-tables: {tables}");
        assert!(walks >= 2, "ranges sent to the tree: {walks}");
        assert_indexes_match_tree(&db, 20_000);
        assert_eq!(
            db.lookup("1.2.3.4".parse().expect("ip")).expect("lookup"),
            None
        );

        // The built-in demo database.
        let demo = GeoDatabase::open_builtin_demo().expect("demo");
        assert_indexes_match_tree(&demo, 20_000);
    }

    /// The same over DB-IP Lite and MaxMind's test databases (every range boundary, and
    /// random addresses), when the shared GeoIP folder is there (`tests/shared_geoip.rs`
    /// says when it must be).
    #[test]
    fn the_indexes_answer_as_the_tree_does_on_real_databases() {
        let dir = std::env::var_os("LOCUS_SHARED_GEOIP")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/geoip"));
        if !dir.is_dir() {
            println!("SKIPPED: {} not found", dir.display());
            return;
        }
        let mut checked = 0;
        for name in [
            "dbip-country.mmdb",
            "maxmind-test/GeoIP2-City-Test.mmdb",
            "maxmind-test/GeoIP2-Country-Test.mmdb",
            "maxmind-test/GeoLite2-City-Test.mmdb",
            "maxmind-test/GeoLite2-Country-Test.mmdb",
        ] {
            let path = dir.join(name);
            if let Ok(db) = GeoDatabase::open(&path) {
                assert_indexes_match_tree(&db, 200_000);
                checked += 1;
            }
        }
        assert_eq!(checked, 5, "every database opened and was checked");
    }

    #[test]
    fn a_database_without_country_data_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut asn = MmdbWriter::new("GeoLite2-ASN");
        asn.insert(
            "1.0.0.0/24".parse().expect("net"),
            Value::map([("autonomous_system_number", Value::U32(13335))]),
        );
        let err = GeoDatabase::open(&write(dir.path(), "asn.mmdb", &asn)).expect_err("refused");
        assert!(err.to_string().contains("has no country data"), "{err}");
    }

    #[test]
    fn damaged_files_are_refused_or_fail_lookups_without_panicking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = MmdbWriter::new("GeoLite2-City");
        for i in 0..64u32 {
            let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(i << 24), 8).expect("net");
            w.insert(
                net.into(),
                Value::city_record("DE", "EU", Some((52.5, 13.4))),
            );
        }
        let good = w.to_bytes();
        let path = dir.path().join("damaged.mmdb");
        // Truncations and single-byte corruptions at many places in the file.
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for at in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[at] ^= 0xFF;
            cases.push(bad);
        }
        for cut in [0, 1, 10, good.len() / 3, good.len() / 2, good.len() - 20] {
            std::fs::write(&path, &good[..cut]).expect("write");
            assert!(
                GeoDatabase::open(&path).is_err(),
                "truncated at {cut} must be refused"
            );
        }
        // Whatever a flipped byte does, it is a refusal at open or a lookup result/error:
        // this loop passing means no panic and no crash.
        let mut opened = 0;
        for bytes in cases {
            std::fs::write(&path, &bytes).expect("write");
            if let Ok(db) = GeoDatabase::open(&path) {
                opened += 1;
                for i in 0..64u32 {
                    let _ = db.lookup(IpAddr::from(std::net::Ipv4Addr::from((i << 24) | 1)));
                }
            }
        }
        assert!(
            opened > 0,
            "some corruptions (e.g. in string payloads) leave a usable file"
        );
    }
}
