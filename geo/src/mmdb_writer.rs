//! A small writer of MaxMind DB files (format 2.0), for test fixtures and the demo database.
//!
//! It writes what [`maxminddb`] and libmaxminddb read: an IPv6 search tree (IPv4 networks
//! live under `::/96`, where readers look for them), 24- or 32-bit records, a
//! deduplicated data section and the metadata map. It is written here rather than taken
//! from crates.io because the available writer crates are young single-release projects,
//! and the format needs only this much code.
//!
//! Format: <https://maxmind.github.io/MaxMind-DB/>.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

/// A value of the MaxMind DB data section.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Double(f64),
    U16(u16),
    U32(u32),
    U64(u64),
    Bool(bool),
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
}

impl Value {
    /// A map from `(key, value)` pairs.
    pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// A string value.
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    /// A GeoIP2-City-shaped record: country, continent and (optionally) coordinates.
    pub fn city_record(country: &str, continent: &str, location: Option<(f64, f64)>) -> Value {
        let mut pairs = vec![
            ("continent", Value::map([("code", Value::str(continent))])),
            (
                "country",
                Value::map([
                    ("iso_code", Value::str(country)),
                    ("names", Value::map([("en", Value::str(country))])),
                ]),
            ),
        ];
        if let Some((lat, lon)) = location {
            pairs.push((
                "location",
                Value::map([
                    ("latitude", Value::Double(lat)),
                    ("longitude", Value::Double(lon)),
                    ("accuracy_radius", Value::U16(100)),
                ]),
            ));
        }
        Value::map(pairs)
    }

    /// A GeoIP2-Country-shaped record.
    pub fn country_record(country: &str, continent: &str) -> Value {
        Value::city_record(country, continent, None)
    }

    /// A DB-IP Lite flat record: `{ country_code: "IE" }`.
    pub fn country_code_record(country: &str) -> Value {
        Value::map([("country_code", Value::str(country))])
    }
}

/// Builds a MaxMind DB in memory.
#[derive(Debug)]
pub struct MmdbWriter {
    database_type: String,
    description: String,
    build_epoch: u64,
    networks: Vec<(IpNet, Value)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Child {
    Empty,
    Node(usize),
    Data(usize),
}

impl MmdbWriter {
    /// A writer for a database of this `database_type` (e.g. `GeoLite2-City`).
    pub fn new(database_type: impl Into<String>) -> Self {
        MmdbWriter {
            database_type: database_type.into(),
            description: "written by locus-geo's mmdb_writer".into(),
            build_epoch: 1_700_000_000,
            networks: Vec::new(),
        }
    }

    /// Sets the English description in the metadata.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// Sets the build time (seconds since the Unix epoch).
    pub fn build_epoch(mut self, epoch: u64) -> Self {
        self.build_epoch = epoch;
        self
    }

    /// Maps a network to a value. More specific networks win over less specific ones,
    /// whatever the order of insertion.
    pub fn insert(&mut self, network: IpNet, value: Value) -> &mut Self {
        self.networks.push((network.trunc(), value));
        self
    }

    /// Writes the file atomically (temporary file, then rename), as `geoipupdate` does.
    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("mmdb.tmp");
        std::fs::write(&tmp, self.to_bytes())?;
        std::fs::rename(&tmp, path)
    }

    /// The database bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Insert less specific networks first so more specific ones split them.
        let mut order: Vec<usize> = (0..self.networks.len()).collect();
        order.sort_by_key(|&i| bits_of(&self.networks[i].0).1);

        let mut nodes: Vec<[Child; 2]> = vec![[Child::Empty; 2]];
        let mut data = Vec::new();
        let mut data_offsets: Vec<usize> = Vec::new();
        let mut dedup: HashMap<Vec<u8>, usize> = HashMap::new();

        for i in order {
            let (net, value) = &self.networks[i];
            let mut encoded = Vec::new();
            encode(value, &mut encoded);
            let value_index = *dedup.entry(encoded.clone()).or_insert_with(|| {
                data_offsets.push(data.len());
                data.extend_from_slice(&encoded);
                data_offsets.len() - 1
            });
            let (bits, len) = bits_of(net);
            if len == 0 {
                // A default route: both halves of the root.
                nodes[0] = [Child::Data(value_index); 2];
                continue;
            }
            let mut node = 0;
            for depth in 0..len {
                let bit = ((bits >> (127 - depth)) & 1) as usize;
                if depth == len - 1 {
                    nodes[node][bit] = Child::Data(value_index);
                    break;
                }
                node = match nodes[node][bit] {
                    Child::Node(next) => next,
                    other => {
                        // Empty, or a less specific network being split: both halves of the
                        // new node inherit what was there.
                        nodes.push([other; 2]);
                        let next = nodes.len() - 1;
                        nodes[node][bit] = Child::Node(next);
                        next
                    }
                };
            }
        }

        let node_count = nodes.len();
        let max_record = node_count + 16 + data.len();
        let record_size: u16 = if max_record < (1 << 24) { 24 } else { 32 };
        let mut out = Vec::with_capacity(node_count * 8 + data.len() + 512);
        for node in &nodes {
            for child in node {
                let record = match *child {
                    Child::Empty => node_count,
                    Child::Node(n) => n,
                    Child::Data(v) => node_count + 16 + data_offsets[v],
                } as u32;
                if record_size == 24 {
                    out.extend_from_slice(&record.to_be_bytes()[1..]);
                } else {
                    out.extend_from_slice(&record.to_be_bytes());
                }
            }
        }
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let metadata = Value::map([
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(self.build_epoch)),
            ("database_type", Value::str(self.database_type.clone())),
            (
                "description",
                Value::map([("en", Value::str(self.description.clone()))]),
            ),
            ("ip_version", Value::U16(6)),
            ("languages", Value::Array(vec![Value::str("en")])),
            ("node_count", Value::U32(node_count as u32)),
            ("record_size", Value::U16(record_size)),
        ]);
        encode(&metadata, &mut out);
        out
    }
}

/// The network as 128 bits (IPv4 under `::/96`) and its prefix length in that space.
fn bits_of(net: &IpNet) -> (u128, u32) {
    match net.network() {
        IpAddr::V4(v4) => (u32::from(v4) as u128, 96 + net.prefix_len() as u32),
        IpAddr::V6(v6) => (u128::from(v6), net.prefix_len() as u32),
    }
}

fn control(out: &mut Vec<u8>, type_number: u8, size: usize) {
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65_536 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else {
        (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
    };
    if type_number <= 7 {
        out.push((type_number << 5) | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_number - 7);
    }
    out.extend_from_slice(&extra);
}

fn uint(out: &mut Vec<u8>, type_number: u8, value: u64, width: usize) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let used = &bytes[skip.max(8 - width)..];
    control(out, type_number, used.len());
    out.extend_from_slice(used);
}

fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Str(s) => {
            control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Double(d) => {
            control(out, 3, 8);
            out.extend_from_slice(&d.to_be_bytes());
        }
        Value::U16(v) => uint(out, 5, u64::from(*v), 2),
        Value::U32(v) => uint(out, 6, u64::from(*v), 4),
        Value::U64(v) => uint(out, 9, *v, 8),
        Value::Bool(b) => control(out, 14, usize::from(*b)),
        Value::Map(pairs) => {
            control(out, 7, pairs.len());
            for (k, v) in pairs {
                encode(&Value::Str(k.clone()), out);
                encode(v, out);
            }
        }
        Value::Array(items) => {
            control(out, 11, items.len());
            for item in items {
                encode(item, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network")
    }

    #[test]
    fn maxminddb_reads_what_we_write() {
        let mut w = MmdbWriter::new("Test-City").build_epoch(1_750_000_000);
        w.insert(
            net("81.2.0.0/16"),
            Value::city_record("GB", "EU", Some((51.5, -0.1))),
        );
        w.insert(net("81.2.69.0/24"), Value::country_record("IE", "EU"));
        w.insert(net("2001:4860::/32"), Value::country_code_record("US"));
        let bytes = w.to_bytes();
        let reader = maxminddb::Reader::from_source(bytes).expect("readable");
        assert_eq!(reader.metadata().database_type, "Test-City");
        assert_eq!(reader.metadata().build_epoch, 1_750_000_000);

        let lookup = |ip: &str| -> Option<BTreeMap<String, serde_json::Value>> {
            let result = reader.lookup(ip.parse().expect("ip")).expect("lookup");
            result.decode().expect("decode")
        };
        let gb = lookup("81.2.1.1").expect("data");
        assert_eq!(gb["country"]["iso_code"], "GB");
        assert_eq!(gb["location"]["latitude"], 51.5);
        let ie = lookup("81.2.69.142").expect("data");
        assert_eq!(ie["country"]["iso_code"], "IE");
        assert!(!ie.contains_key("location"));
        let us = lookup("2001:4860::1").expect("data");
        assert_eq!(us["country_code"], "US");
        assert!(lookup("8.8.8.8").is_none());
    }

    #[test]
    fn large_sizes_use_extended_size_bytes() {
        let mut w = MmdbWriter::new("Test");
        let long = "x".repeat(70_000);
        w.insert(
            net("10.0.0.0/8"),
            Value::map([("long", Value::str(long.clone()))]),
        );
        let reader = maxminddb::Reader::from_source(w.to_bytes()).expect("readable");
        let found: BTreeMap<String, String> = reader
            .lookup("10.1.1.1".parse().expect("ip"))
            .expect("lookup")
            .decode()
            .expect("decode")
            .expect("data");
        assert_eq!(found["long"], long);
    }
}
