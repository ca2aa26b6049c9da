//! `regions.yaml`: parsing and validation.
//!
//! The file is read in two steps, as pingora does: [`serde_saphyr`] turns the text into raw
//! structs (rejecting unknown keys and wrong types with the line and column), then
//! [`validate`] checks what a type cannot say (known regions, ISO codes, CIDRs, ranges) and
//! reports *every* problem at once, each with its field path and, through
//! [`serde_saphyr::Spanned`], its line. Only a fully valid [`Config`] leaves this module.
//!
//! Why serde-saphyr: `serde_yaml` is archived; serde-saphyr is maintained, pure Rust with
//! `unsafe` forbidden, fuzzed and panic-free on malformed input, and it gives line/column for
//! every value (`Spanned<T>`), which is what lets semantic errors name their line too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::countries;

/// A fully validated `regions.yaml`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (messages name it).
    pub source: PathBuf,
    pub geoip: GeoIpSettings,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The one header those proxies set (`forwarded_header`); the other is ignored.
    pub forwarded_header: ForwardedHeader,
    /// The region for clients nothing else places.
    pub default_region: RegionIndex,
    pub edges: EdgeTiming,
    /// The `turn:` section: how the locator checks the TURN/STUN servers of every pool.
    pub turn: TurnChecks,
    /// The `limits:` section: what one client address may ask of the locator.
    pub limits: RequestLimits,
    pub regions: Vec<Region>,
    /// The `edge_credentials:` section: per-edge credential policy (revocation, and the
    /// region `locator edge-credential` binds a credential to). Edges not listed accept
    /// generation 1.
    pub edge_credentials: BTreeMap<String, EdgeCredentialPolicy>,
}

/// One edge's entry of `edge_credentials:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeCredentialPolicy {
    /// The edge's region: `locator edge-credential` binds its credential to it, and the
    /// locator refuses this edge's credentials for any other region.
    pub region: Option<String>,
    /// The generation issued now; credentials of older generations are refused (raise
    /// it to revoke a leaked credential of this edge).
    pub generation: u32,
    /// Every credential of this edge is refused (a decommissioned edge).
    pub revoked: bool,
}

impl Default for EdgeCredentialPolicy {
    fn default() -> Self {
        EdgeCredentialPolicy {
            region: None,
            generation: 1,
            revoked: false,
        }
    }
}

/// The `geoip:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoIpSettings {
    /// Which database to use.
    pub database: GeoIpSource,
    /// Entries in the per-address resolution cache; 0 turns the cache off.
    pub cache_size: u64,
    /// How often the database file is checked for replacement (as `geoipupdate` does it).
    pub reload_check: Duration,
}

/// Where GeoIP answers come from.
#[derive(Debug, Clone, PartialEq)]
pub enum GeoIpSource {
    /// No database: every client goes to the default region (said loudly at start).
    Off,
    /// The built-in demo database ([`crate::demo`]): not real geolocation.
    BuiltinDemo,
    /// A MaxMind DB file, resolved against the config file's folder.
    File(PathBuf),
}

impl GeoIpSource {
    /// `builtin-demo`, or a path (relative paths are taken from `base_dir`).
    pub fn from_setting(value: &str, base_dir: &Path) -> GeoIpSource {
        match value.trim() {
            "" => GeoIpSource::Off,
            crate::demo::BUILTIN_DEMO => GeoIpSource::BuiltinDemo,
            path => GeoIpSource::File(base_dir.join(path)),
        }
    }
}

/// The `edges:` section: timing of the edge link and its states.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeTiming {
    /// How often edges report their load.
    pub report_interval: Duration,
    /// Reports missed in a row before an edge's link counts as lost.
    pub missed_reports: u32,
    /// How long a `link-lost` edge keeps receiving joins of its existing sessions before it
    /// is declared `failed`.
    pub grace_period: Duration,
    /// Timeout of the probe of an edge's own `/healthz` when its link is lost.
    pub probe_timeout: Duration,
    /// How long a draining edge may keep its sessions before its rooms are moved.
    pub drain_deadline: Duration,
    /// How often the locator pings each edge it holds over the link; the pong (or any
    /// frame) tells it the edge is alive.
    pub heartbeat_interval: Duration,
    /// Silence on the link after which an edge becomes `suspect` (no new sessions; its
    /// sessions, rooms and joins untouched) when its heartbeats have been regular.
    pub suspect_after: Duration,
    /// Ceiling of the adaptive suspect timeout: an edge whose heartbeats arrive with
    /// jitter gets more time, never more than this.
    pub suspect_after_max: Duration,
    /// How long the locator keeps the record of an edge that is `failed` (or drained and
    /// gone) and silent: after this it leaves the registry and the admin status (the
    /// audit trail keeps its history). An edge that comes back later registers afresh.
    pub forget_after: Duration,
}

impl Default for EdgeTiming {
    fn default() -> Self {
        EdgeTiming {
            report_interval: Duration::from_secs(2),
            missed_reports: 3,
            grace_period: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(2),
            drain_deadline: Duration::from_secs(300),
            heartbeat_interval: Duration::from_millis(250),
            suspect_after: Duration::from_secs(1),
            suspect_after_max: Duration::from_millis(1_500),
            forget_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// A point on the globe, in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

/// Which header the trusted proxies write the client's address into. Only that one is
/// read: a proxy appends to its own header but passes the other through untouched, so
/// reading both would let a client choose its address (nginx's `real_ip_header` is the
/// same setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, cloud load balancers): the default.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239) `for=` values.
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name as messages spell it.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "X-Forwarded-For",
            ForwardedHeader::Forwarded => "Forwarded",
        }
    }
}

/// The top-level `limits:` section: requests one client address may make per minute. An
/// IPv6 client counts by its /64 (one subscriber's network); `off` lifts a limit (for load
/// tests behind one address). Each limit allows a burst of half a minute's worth (at least
/// 5) before it spreads requests out.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLimits {
    /// `POST /v1/sessions` per minute; `None` is `off`.
    pub creates_per_minute: Option<u32>,
    /// `GET /v1/locate` per minute; `None` is `off`.
    pub locates_per_minute: Option<u32>,
    /// An ad-hoc session nobody joined within this time ends (`expired-unjoined`): its
    /// join answers 410 and its edge refuses its tokens. `None` is `off`. Rooms (sessions
    /// with a key) never expire.
    pub unjoined_session_ttl: Option<Duration>,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            creates_per_minute: Some(60),
            locates_per_minute: Some(600),
            unjoined_session_ttl: Some(Duration::from_secs(600)),
        }
    }
}

/// The top-level `turn:` section: the locator's checks of every pool's servers.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnChecks {
    /// How often each server is checked (each check is moved by up to ±10% at random, so
    /// several locators and servers do not fall into step).
    pub check_interval: Duration,
    /// How long one check may take before it counts as failed (`timeout`). Shorter than
    /// `check_interval`.
    pub check_timeout: Duration,
    /// Failed checks in a row after which a server is `down` (left out of answers).
    pub down_after: u32,
    /// Successful checks in a row after which a `down` server is `up` again.
    pub up_after: u32,
}

impl Default for TurnChecks {
    fn default() -> Self {
        TurnChecks {
            check_interval: Duration::from_secs(10),
            check_timeout: Duration::from_secs(3),
            down_after: 3,
            up_after: 2,
        }
    }
}

/// A region's position in the [`Config::regions`] of the config that produced it.
///
/// Valid only for that config: a reload may reorder, add or remove regions, so an index
/// is turned back into a region only through the config (or routing generation) it came
/// from, and out of range there is `None`, never a panic. Only this crate makes one (from
/// the region list: [`Config::region_index`], [`Config::region_indices`], the rules), so
/// a region index cannot be mistaken for an edge index or a count.
// `Serialize` (as the bare number) only for debugging dumps such as selection's
// candidates: no HTTP answer carries an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
#[repr(transparent)]
pub struct RegionIndex(usize);

impl RegionIndex {
    /// The position in `regions`, for tables kept in config order (counters, pools).
    pub fn get(self) -> usize {
        self.0
    }

    pub(crate) fn new(index: usize) -> RegionIndex {
        RegionIndex(index)
    }

    /// An arbitrary index, for tests that build tables by hand.
    #[doc(hidden)]
    pub const fn for_tests(index: usize) -> RegionIndex {
        RegionIndex(index)
    }
}

/// One region of `regions.yaml`.
#[derive(Debug, Clone)]
pub struct Region {
    pub id: String,
    pub name: String,
    pub location: LatLon,
    /// ISO 3166-1 alpha-2 codes, upper case.
    pub countries: Vec<String>,
    /// Continent codes (AF AN AS EU NA OC SA).
    pub continents: Vec<String>,
    /// CIDR overrides: clients in these networks go here whatever GeoIP says.
    pub networks: Vec<IpNet>,
    /// Regions of the same [`Config`], in order of preference.
    pub fallback: Vec<RegionIndex>,
    pub turn: TurnPool,
}

/// A region's TURN/STUN servers and how to mint credentials for them.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnPool {
    /// Name of the environment variable holding the coturn `static-auth-secret`, or
    /// several separated by commas during a rotation (the first mints credentials).
    pub secret_env: Option<String>,
    /// Lifetime of the credentials handed out.
    pub ttl: Duration,
    /// `turn:`, `turns:` or `stun:` URLs.
    pub servers: Vec<String>,
}

impl TurnPool {
    /// True when the pool has servers that need credentials.
    pub fn needs_secret(&self) -> bool {
        self.servers.iter().any(|s| s.starts_with("turn"))
    }
}

impl Config {
    /// Reads and validates a `regions.yaml`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        if let Some(kind) = not_a_regular_file(path) {
            return Err(read_error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{kind}, not a file"),
            )));
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Config::parse(&text, path)
    }

    /// Validates YAML text; `path` names the file in messages and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e
                .to_string()
                .replace("<input>", &path.display().to_string()),
        })?;
        validate(raw, path)
    }

    /// The region with this id.
    pub fn region(&self, id: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.id == id)
    }

    /// The index of the region with this id.
    pub fn region_index(&self, id: &str) -> Option<RegionIndex> {
        self.regions
            .iter()
            .position(|r| r.id == id)
            .map(RegionIndex)
    }

    /// The region at `index` (`None` for an index of another config that is out of
    /// range here).
    pub fn region_at(&self, index: RegionIndex) -> Option<&Region> {
        self.regions.get(index.0)
    }

    /// Every region's index, in config order.
    pub fn region_indices(&self) -> impl ExactSizeIterator<Item = RegionIndex> + use<> {
        (0..self.regions.len()).map(RegionIndex)
    }

    /// The regions with their indices, in config order.
    pub fn indexed_regions(&self) -> impl ExactSizeIterator<Item = (RegionIndex, &Region)> {
        self.regions
            .iter()
            .enumerate()
            .map(|(i, r)| (RegionIndex(i), r))
    }

    /// The credential policy of edge `edge_id` (the default when it is not listed).
    pub fn edge_credential_policy(&self, edge_id: &str) -> EdgeCredentialPolicy {
        self.edge_credentials
            .get(edge_id)
            .cloned()
            .unwrap_or_default()
    }

    /// The region for clients nothing else places.
    pub fn default_region(&self) -> &Region {
        &self.regions[self.default_region.0]
    }

    /// True when `peer` is a configured trusted proxy.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

/// What `path` is when it exists but is not a regular file (after symlinks): reading a
/// FIFO blocks until a writer comes, a device may never end. `None` for a regular file or
/// a path that cannot be examined (the open that follows reports that).
pub(crate) fn not_a_regular_file(path: &Path) -> Option<&'static str> {
    let meta = std::fs::metadata(path).ok()?;
    let kind = meta.file_type();
    if kind.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return Some("a FIFO");
        }
        if kind.is_socket() {
            return Some("a socket");
        }
        if kind.is_block_device() || kind.is_char_device() {
            return Some("a device");
        }
    }
    Some(if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    })
}

/// Why a `regions.yaml` was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not YAML, or YAML of the wrong shape (unknown key, wrong type); the message carries
    /// the line, column and a snippet.
    Syntax { path: PathBuf, message: String },
    /// Well-formed, but wrong: every problem found.
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

/// One problem in a `regions.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    /// 1-based line, when the parser knows it.
    pub line: Option<u64>,
    /// Path of the field, e.g. `regions[2].fallback[0]`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::Syntax { path, message } => {
                write!(
                    f,
                    "{} is not a valid regions file:\n{message}",
                    path.display()
                )
            }
            ConfigError::Invalid { path, issues } => {
                let n = issues.len();
                write!(
                    f,
                    "{} has {n} problem{}:",
                    path.display(),
                    if n == 1 { "" } else { "s" }
                )?;
                for issue in issues {
                    match issue.line {
                        Some(line) => write!(f, "\n  {}:{line}: ", path.display())?,
                        None => write!(f, "\n  {}: ", path.display())?,
                    }
                    write!(f, "{}: {}", issue.field, issue.message)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Parses durations such as `500ms`, `30s`, `5m`, `12h`, `1d` or `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "\"{text}\" is not a duration: write a number and a unit, e.g. 30s, 5m, 12h"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("\"{text}\": number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "d" => Duration::from_secs(number.saturating_mul(86_400)),
            "" => {
                return Err(format!(
                    "\"{text}\" has no unit: write e.g. {number}s (units: ms, s, m, h, d)"
                ));
            }
            other => {
                return Err(format!(
                    "\"{text}\": unknown unit \"{other}\" (units: ms, s, m, h, d)"
                ));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------
// Raw shape of the file. Every struct denies unknown keys so that a typo ("fallbacks:")
// is an error, never a silently ignored setting.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    geoip: Option<RawGeoIp>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    forwarded_header: Option<Spanned<String>>,
    #[serde(default)]
    default_region: Option<Spanned<String>>,
    #[serde(default)]
    edges: Option<RawEdges>,
    #[serde(default)]
    turn: Option<RawTurnChecks>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    regions: Vec<RawRegion>,
    #[serde(default)]
    edge_credentials: BTreeMap<String, RawEdgeCredential>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdgeCredential {
    #[serde(default)]
    region: Option<Spanned<String>>,
    #[serde(default)]
    generation: Option<Spanned<u32>>,
    #[serde(default)]
    revoked: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    creates_per_minute: Option<Spanned<RawRate>>,
    #[serde(default)]
    locates_per_minute: Option<Spanned<RawRate>>,
    #[serde(default)]
    unjoined_session_ttl: Option<Spanned<RawDurationOrOff>>,
}

/// A duration, or `off` (which YAML 1.1 readers take for `false`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDurationOrOff {
    Switch(bool),
    Text(String),
}

/// A per-minute limit: a count, or `off` (which YAML 1.1 readers take for `false`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRate {
    Count(u32),
    Switch(bool),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTurnChecks {
    #[serde(default)]
    check_interval: Option<Spanned<String>>,
    #[serde(default)]
    check_timeout: Option<Spanned<String>>,
    #[serde(default)]
    down_after: Option<Spanned<u32>>,
    #[serde(default)]
    up_after: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoIp {
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    cache_size: Option<u64>,
    #[serde(default)]
    reload_check: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdges {
    #[serde(default)]
    report_interval: Option<Spanned<String>>,
    #[serde(default)]
    missed_reports: Option<Spanned<u32>>,
    #[serde(default)]
    grace_period: Option<Spanned<String>>,
    #[serde(default)]
    probe_timeout: Option<Spanned<String>>,
    #[serde(default)]
    drain_deadline: Option<Spanned<String>>,
    #[serde(default)]
    heartbeat_interval: Option<Spanned<String>>,
    #[serde(default)]
    suspect_after: Option<Spanned<String>>,
    #[serde(default)]
    suspect_after_max: Option<Spanned<String>>,
    #[serde(default)]
    forget_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    id: Spanned<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    location: Option<RawLatLon>,
    #[serde(default)]
    countries: Vec<Spanned<String>>,
    #[serde(default)]
    continents: Vec<Spanned<String>>,
    #[serde(default)]
    networks: Vec<Spanned<String>>,
    #[serde(default)]
    fallback: Vec<Spanned<String>>,
    #[serde(default)]
    turn: Option<RawTurn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatLon {
    lat: Spanned<f64>,
    lon: Spanned<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTurn {
    #[serde(default)]
    secret_env: Option<Spanned<String>>,
    #[serde(default)]
    ttl: Option<Spanned<String>>,
    #[serde(default)]
    servers: Vec<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------

/// Collects problems so the operator sees all of them in one run.
struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn at<T>(
        &mut self,
        spanned: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = spanned.referenced.line();
        self.0.push(ConfigIssue {
            line: (line > 0).then_some(line),
            field: field.into(),
            message: message.into(),
        });
    }

    fn nowhere(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            line: None,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// The failure detector's timeouts must nest: several heartbeats fit in the suspect
/// timeout (one late pong is not a suspicion), and suspicion comes before the link is
/// declared lost (`report_interval × missed_reports`), or it would never be seen.
fn check_liveness_timing(issues: &mut Issues, raw: &RawEdges, t: &EdgeTiming) {
    let mut problem = |value: &Option<Spanned<String>>, field: &str, message: String| match value {
        Some(v) => issues.at(v, field, message),
        None => issues.nowhere(field, message),
    };
    if t.suspect_after < t.heartbeat_interval * 2 {
        problem(
            &raw.suspect_after,
            "edges.suspect_after",
            format!(
                "{:?} is less than twice edges.heartbeat_interval ({:?}): one late heartbeat would make an edge suspect; raise it or ping more often",
                t.suspect_after, t.heartbeat_interval
            ),
        );
    }
    if t.suspect_after_max < t.suspect_after {
        problem(
            &raw.suspect_after_max,
            "edges.suspect_after_max",
            format!(
                "{:?} is less than edges.suspect_after ({:?}): the ceiling of the adaptive timeout must be at least its floor",
                t.suspect_after_max, t.suspect_after
            ),
        );
    }
    let lost_after = t.report_interval.saturating_mul(t.missed_reports);
    if t.suspect_after_max >= lost_after {
        problem(
            &raw.suspect_after_max,
            "edges.suspect_after_max",
            format!(
                "{:?} is not shorter than edges.report_interval × edges.missed_reports ({lost_after:?}): an edge must become suspect before its link counts as lost",
                t.suspect_after_max
            ),
        );
    }
}

fn duration_field(
    issues: &mut Issues,
    value: &Option<Spanned<String>>,
    field: &str,
    default: Duration,
) -> Duration {
    let Some(value) = value else { return default };
    match parse_duration(&value.value) {
        Ok(d) if d.is_zero() => {
            issues.at(value, field, "must be longer than zero");
            default
        }
        Ok(d) => d,
        Err(message) => {
            issues.at(value, field, message);
            default
        }
    }
}

/// Parses a CIDR (or a bare address, taken as a single host) and refuses host bits.
fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip.to_canonical()));
    }
    let net: IpNet = text.parse().map_err(|_| {
        format!("\"{text}\" is not a CIDR network: write e.g. 198.51.100.0/24 or 2001:db8::/32")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "\"{text}\" has host bits set: did you mean {}?",
            net.trunc()
        ));
    }
    // Client addresses are normalised to IPv4 when IPv4-mapped, so a mapped network
    // (::ffff:a.b.c.d/96+n) must be too, or it would silently never match.
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(v4net) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return Ok(IpNet::V4(v4net));
    }
    Ok(net)
}

fn is_valid_region_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

fn is_valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_uppercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Common mistakes worth a hint: codes people use that ISO does not.
fn country_hint(code: &str) -> &'static str {
    match code.to_ascii_uppercase().as_str() {
        "UK" => " (the United Kingdom is GB)",
        "EL" => " (Greece is GR)",
        "EU" | "AP" => " (that is a region, not a country: use `continents:`)",
        _ => "",
    }
}

/// The `limits:` section, with defaults for what it leaves out.
fn request_limits(issues: &mut Issues, raw: Option<&RawLimits>) -> RequestLimits {
    let defaults = RequestLimits::default();
    let Some(l) = raw else { return defaults };
    let mut rate = |value: &Option<Spanned<RawRate>>, field: &str, default: Option<u32>| {
        let Some(value) = value else { return default };
        match &value.value {
            RawRate::Count(n) if *n > 0 => Some(*n),
            RawRate::Switch(false) => None,
            RawRate::Word(w) if w == "off" => None,
            _ => {
                issues.at(
                    value,
                    field,
                    "give requests per minute (at least 1), or `off` for no limit",
                );
                default
            }
        }
    };
    RequestLimits {
        creates_per_minute: rate(
            &l.creates_per_minute,
            "limits.creates_per_minute",
            defaults.creates_per_minute,
        ),
        locates_per_minute: rate(
            &l.locates_per_minute,
            "limits.locates_per_minute",
            defaults.locates_per_minute,
        ),
        unjoined_session_ttl: match &l.unjoined_session_ttl {
            None => defaults.unjoined_session_ttl,
            Some(value) => {
                let field = "limits.unjoined_session_ttl";
                let usage = "give a duration such as 10m (how long a session may wait for its first participant), or `off` to keep unjoined sessions open";
                match &value.value {
                    RawDurationOrOff::Switch(false) => None,
                    RawDurationOrOff::Text(w) if w == "off" => None,
                    RawDurationOrOff::Text(text) => match parse_duration(text) {
                        Ok(d) if !d.is_zero() => Some(d),
                        Ok(_) => {
                            issues.at(value, field, format!("must be longer than zero: {usage}"));
                            defaults.unjoined_session_ttl
                        }
                        Err(message) => {
                            issues.at(value, field, format!("{message}; {usage}"));
                            defaults.unjoined_session_ttl
                        }
                    },
                    RawDurationOrOff::Switch(true) => {
                        issues.at(value, field, usage);
                        defaults.unjoined_session_ttl
                    }
                }
            }
        },
    }
}

/// The `turn:` section, with defaults for what it leaves out.
fn turn_checks(issues: &mut Issues, raw: Option<&RawTurnChecks>) -> TurnChecks {
    let defaults = TurnChecks::default();
    let Some(t) = raw else { return defaults };
    let mut count = |value: &Option<Spanned<u32>>, field: &str, default: u32| match value {
        Some(n) if n.value == 0 => {
            issues.at(n, field, "must be at least 1");
            default
        }
        Some(n) => n.value,
        None => default,
    };
    let down_after = count(&t.down_after, "turn.down_after", defaults.down_after);
    let up_after = count(&t.up_after, "turn.up_after", defaults.up_after);
    let check_interval = duration_field(
        issues,
        &t.check_interval,
        "turn.check_interval",
        defaults.check_interval,
    );
    let check_timeout = duration_field(
        issues,
        &t.check_timeout,
        "turn.check_timeout",
        defaults.check_timeout,
    );
    if let Some(timeout) = &t.check_timeout
        && check_timeout >= check_interval
    {
        issues.at(
            timeout,
            "turn.check_timeout",
            format!(
                "must be shorter than turn.check_interval ({}s): a check must end before the next one starts",
                check_interval.as_secs_f64()
            ),
        );
    } else if t.check_timeout.is_none()
        && check_timeout >= check_interval
        && let Some(interval) = &t.check_interval
    {
        issues.at(
            interval,
            "turn.check_interval",
            format!(
                "must be longer than turn.check_timeout ({}s by default): set a shorter check_timeout too",
                check_timeout.as_secs_f64()
            ),
        );
    }
    TurnChecks {
        check_interval,
        check_timeout,
        down_after,
        up_after,
    }
}

/// Most regions one config may list: the compiled rules keep a region index in 16 bits
/// (one value of which means "none"), and the admin page and selection are built for
/// tens of regions, not thousands.
pub const MAX_REGIONS: usize = 4096;

fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let mut issues = Issues(Vec::new());
    let base_dir = path.parent().unwrap_or(Path::new("."));

    let geoip = match &raw.geoip {
        None => GeoIpSettings {
            database: GeoIpSource::Off,
            cache_size: 0,
            reload_check: Duration::from_secs(60),
        },
        Some(g) => GeoIpSettings {
            database: g
                .database
                .as_deref()
                .map_or(GeoIpSource::Off, |d| GeoIpSource::from_setting(d, base_dir)),
            cache_size: g.cache_size.unwrap_or(0),
            reload_check: duration_field(
                &mut issues,
                &g.reload_check,
                "geoip.reload_check",
                Duration::from_secs(60),
            ),
        },
    };

    let mut trusted_proxies = Vec::new();
    for (i, proxy) in raw.trusted_proxies.iter().enumerate() {
        match parse_network(&proxy.value) {
            Ok(net) => trusted_proxies.push(net),
            Err(message) => issues.at(proxy, format!("trusted_proxies[{i}]"), message),
        }
    }
    let forwarded_header = match &raw.forwarded_header {
        None => ForwardedHeader::default(),
        Some(name) => match name.value.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ForwardedHeader::XForwardedFor,
            "forwarded" => ForwardedHeader::Forwarded,
            _ => {
                issues.at(
                    name,
                    "forwarded_header",
                    "give the header your proxies set: x-forwarded-for or forwarded",
                );
                ForwardedHeader::default()
            }
        },
    };

    let defaults = EdgeTiming::default();
    let edges = match &raw.edges {
        None => defaults,
        Some(e) => {
            let missed_reports = match &e.missed_reports {
                Some(m) if m.value == 0 => {
                    issues.at(m, "edges.missed_reports", "must be at least 1");
                    defaults.missed_reports
                }
                Some(m) => m.value,
                None => defaults.missed_reports,
            };
            let timing = EdgeTiming {
                report_interval: duration_field(
                    &mut issues,
                    &e.report_interval,
                    "edges.report_interval",
                    defaults.report_interval,
                ),
                missed_reports,
                grace_period: duration_field(
                    &mut issues,
                    &e.grace_period,
                    "edges.grace_period",
                    defaults.grace_period,
                ),
                probe_timeout: duration_field(
                    &mut issues,
                    &e.probe_timeout,
                    "edges.probe_timeout",
                    defaults.probe_timeout,
                ),
                drain_deadline: duration_field(
                    &mut issues,
                    &e.drain_deadline,
                    "edges.drain_deadline",
                    defaults.drain_deadline,
                ),
                heartbeat_interval: duration_field(
                    &mut issues,
                    &e.heartbeat_interval,
                    "edges.heartbeat_interval",
                    defaults.heartbeat_interval,
                ),
                suspect_after: duration_field(
                    &mut issues,
                    &e.suspect_after,
                    "edges.suspect_after",
                    defaults.suspect_after,
                ),
                suspect_after_max: duration_field(
                    &mut issues,
                    &e.suspect_after_max,
                    "edges.suspect_after_max",
                    defaults.suspect_after_max,
                ),
                forget_after: duration_field(
                    &mut issues,
                    &e.forget_after,
                    "edges.forget_after",
                    defaults.forget_after,
                ),
            };
            check_liveness_timing(&mut issues, e, &timing);
            timing
        }
    };

    let turn_checks = turn_checks(&mut issues, raw.turn.as_ref());
    let limits = request_limits(&mut issues, raw.limits.as_ref());

    if raw.regions.is_empty() {
        issues.nowhere(
            "regions",
            "no regions: list at least one region (id, location, countries…)",
        );
    }
    if raw.regions.len() > MAX_REGIONS {
        issues.nowhere(
            "regions",
            format!(
                "{} regions: at most {MAX_REGIONS} are supported; group locations into fewer regions",
                raw.regions.len()
            ),
        );
    }

    // Ids first, so fallbacks can be checked against every region whatever its position.
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    for (i, region) in raw.regions.iter().enumerate() {
        let id = region.id.value.as_str();
        if !is_valid_region_id(id) {
            issues.at(
                &region.id,
                format!("regions[{i}].id"),
                format!(
                    "\"{id}\" is not a valid region id: use lower-case letters, digits and '-' (e.g. eu-west)"
                ),
            );
        }
        if let Some(first) = index_of.insert(id, i) {
            index_of.insert(id, first);
            issues.at(
                &region.id,
                format!("regions[{i}].id"),
                format!("duplicate region id \"{id}\" (also regions[{first}]): ids must be unique"),
            );
        }
    }
    let known_ids = || {
        let mut ids: Vec<&str> = Vec::new();
        for region in &raw.regions {
            if !ids.contains(&region.id.value.as_str()) {
                ids.push(&region.id.value);
            }
        }
        ids.join(", ")
    };

    let default_region = match &raw.default_region {
        None => {
            issues.nowhere(
                "default_region",
                format!(
                    "missing: name the region for clients nothing else places (one of: {})",
                    known_ids()
                ),
            );
            0
        }
        Some(d) => match index_of.get(d.value.as_str()) {
            Some(&i) => i,
            None => {
                issues.at(
                    d,
                    "default_region",
                    format!(
                        "\"{}\" is not a region of this file (regions: {})",
                        d.value,
                        known_ids()
                    ),
                );
                0
            }
        },
    };

    let mut country_owner: HashMap<String, usize> = HashMap::new();
    let mut continent_owner: HashMap<String, usize> = HashMap::new();
    let mut network_owner: HashMap<IpNet, usize> = HashMap::new();
    let mut regions = Vec::with_capacity(raw.regions.len());

    for (i, r) in raw.regions.iter().enumerate() {
        let id = &r.id.value;
        let field = |name: &str| format!("regions[{i}].{name}");

        let location = match &r.location {
            None => {
                issues.at(
                    &r.id,
                    field("location"),
                    format!(
                        "region \"{id}\" has no location: add `location: {{ lat: …, lon: … }}` (used for nearest-region and fallback order)"
                    ),
                );
                LatLon { lat: 0.0, lon: 0.0 }
            }
            Some(loc) => {
                if !(-90.0..=90.0).contains(&loc.lat.value) {
                    issues.at(
                        &loc.lat,
                        field("location.lat"),
                        format!(
                            "latitude {} is out of range: it must be between -90 and 90",
                            loc.lat.value
                        ),
                    );
                }
                if !(-180.0..=180.0).contains(&loc.lon.value) {
                    issues.at(
                        &loc.lon,
                        field("location.lon"),
                        format!(
                            "longitude {} is out of range: it must be between -180 and 180",
                            loc.lon.value
                        ),
                    );
                }
                LatLon {
                    lat: loc.lat.value,
                    lon: loc.lon.value,
                }
            }
        };

        let mut countries = Vec::new();
        for (j, c) in r.countries.iter().enumerate() {
            let code = c.value.trim();
            if countries::country(code).is_none() {
                issues.at(
                    c,
                    format!("regions[{i}].countries[{j}]"),
                    format!(
                        "\"{code}\" is not an ISO 3166-1 alpha-2 country code (two upper-case letters, e.g. IE){}",
                        country_hint(code)
                    ),
                );
                continue;
            }
            if let Some(&other) = country_owner.get(code) {
                issues.at(
                    c,
                    format!("regions[{i}].countries[{j}]"),
                    format!(
                        "{code} is already listed in region \"{}\": a country belongs to one region",
                        raw.regions[other].id.value
                    ),
                );
                continue;
            }
            country_owner.insert(code.to_string(), i);
            countries.push(code.to_string());
        }

        let mut continents = Vec::new();
        for (j, c) in r.continents.iter().enumerate() {
            let code = c.value.trim();
            if !countries::is_continent(code) {
                let names: Vec<String> = countries::CONTINENTS
                    .iter()
                    .map(|(code, name)| format!("{code} ({name})"))
                    .collect();
                issues.at(
                    c,
                    format!("regions[{i}].continents[{j}]"),
                    format!(
                        "\"{code}\" is not a continent code: use one of {}",
                        names.join(", ")
                    ),
                );
                continue;
            }
            if let Some(&other) = continent_owner.get(code) {
                issues.at(
                    c,
                    format!("regions[{i}].continents[{j}]"),
                    format!(
                        "{code} is already listed in region \"{}\": a continent belongs to one region",
                        raw.regions[other].id.value
                    ),
                );
                continue;
            }
            continent_owner.insert(code.to_string(), i);
            continents.push(code.to_string());
        }

        let mut networks = Vec::new();
        for (j, n) in r.networks.iter().enumerate() {
            match parse_network(&n.value) {
                Ok(net) => {
                    if let Some(&other) = network_owner.get(&net) {
                        issues.at(
                            n,
                            format!("regions[{i}].networks[{j}]"),
                            format!(
                                "{net} is already an override of region \"{}\"",
                                raw.regions[other].id.value
                            ),
                        );
                    } else {
                        network_owner.insert(net, i);
                        networks.push(net);
                    }
                }
                Err(message) => issues.at(n, format!("regions[{i}].networks[{j}]"), message),
            }
        }

        let mut fallback = Vec::new();
        let mut seen = HashSet::new();
        for (j, f) in r.fallback.iter().enumerate() {
            let name = f.value.as_str();
            match index_of.get(name) {
                None => issues.at(
                    f,
                    format!("regions[{i}].fallback[{j}]"),
                    format!(
                        "\"{name}\" is not a region of this file (regions: {})",
                        known_ids()
                    ),
                ),
                Some(&k) if k == i => issues.at(
                    f,
                    format!("regions[{i}].fallback[{j}]"),
                    format!("region \"{id}\" cannot fall back to itself"),
                ),
                Some(&k) => {
                    if seen.insert(k) {
                        fallback.push(RegionIndex(k));
                    } else {
                        issues.at(
                            f,
                            format!("regions[{i}].fallback[{j}]"),
                            format!("\"{name}\" is listed twice"),
                        );
                    }
                }
            }
        }

        let turn = match &r.turn {
            None => TurnPool {
                secret_env: None,
                ttl: Duration::from_secs(12 * 3600),
                servers: Vec::new(),
            },
            Some(t) => {
                let mut servers = Vec::new();
                for (j, s) in t.servers.iter().enumerate() {
                    let url = s.value.trim();
                    let scheme_ok = ["turn:", "turns:", "stun:", "stuns:"]
                        .iter()
                        .any(|p| url.starts_with(p) && url.len() > p.len());
                    if scheme_ok {
                        servers.push(url.to_string());
                    } else {
                        issues.at(
                            s,
                            format!("regions[{i}].turn.servers[{j}]"),
                            format!(
                                "\"{url}\" is not a TURN/STUN URL: write e.g. turn:turn1.example.net:3478?transport=udp"
                            ),
                        );
                    }
                }
                let ttl = duration_field(
                    &mut issues,
                    &t.ttl,
                    &field("turn.ttl"),
                    Duration::from_secs(12 * 3600),
                );
                let secret_env = match &t.secret_env {
                    Some(s) if !is_valid_env_name(&s.value) => {
                        issues.at(
                            s,
                            field("turn.secret_env"),
                            format!(
                                "\"{}\" is not an environment variable name: use upper-case letters, digits and '_' (e.g. TURN_SECRET_EU_WEST); the secret itself never goes in this file",
                                s.value
                            ),
                        );
                        None
                    }
                    Some(s) => Some(s.value.clone()),
                    None => None,
                };
                let pool = TurnPool {
                    secret_env,
                    ttl,
                    servers,
                };
                if pool.needs_secret() && t.secret_env.is_none() {
                    issues.at(
                        &r.id,
                        field("turn.secret_env"),
                        format!(
                            "region \"{id}\" lists TURN servers but names no secret variable: add `secret_env: TURN_SECRET_…` (the variable holding coturn's static-auth-secret)"
                        ),
                    );
                }
                pool
            }
        };

        regions.push(Region {
            id: id.clone(),
            name: r.name.clone().unwrap_or_else(|| id.clone()),
            location,
            countries,
            continents,
            networks,
            fallback,
            turn,
        });
    }

    let mut edge_credentials = BTreeMap::new();
    for (edge_id, raw_policy) in &raw.edge_credentials {
        let field = format!("edge_credentials.{edge_id}");
        let id_ok = !edge_id.is_empty()
            && edge_id.len() <= 64
            && edge_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !id_ok {
            issues.nowhere(
                field.clone(),
                "an edge id is 1-64 characters of letters, digits, '-', '_', '.'",
            );
        }
        let mut policy = EdgeCredentialPolicy {
            revoked: raw_policy.revoked,
            ..EdgeCredentialPolicy::default()
        };
        if let Some(region) = &raw_policy.region {
            if regions.iter().any(|r| r.id == region.value) {
                policy.region = Some(region.value.clone());
            } else {
                issues.at(
                    region,
                    format!("{field}.region"),
                    format!("region \"{}\" is not defined in regions:", region.value),
                );
            }
        }
        if let Some(generation) = &raw_policy.generation {
            if generation.value == 0 {
                issues.at(
                    generation,
                    format!("{field}.generation"),
                    "must be at least 1",
                );
            } else {
                policy.generation = generation.value;
            }
        }
        edge_credentials.insert(edge_id.clone(), policy);
    }

    if !issues.0.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            issues: issues.0,
        });
    }
    Ok(Config {
        source: path.to_path_buf(),
        geoip,
        trusted_proxies,
        forwarded_header,
        default_region: RegionIndex(default_region),
        edges,
        turn: turn_checks,
        limits,
        regions,
        edge_credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
geoip: { database: db/GeoLite2-City.mmdb }
trusted_proxies: [127.0.0.0/8, "::1"]
default_region: us-east
regions:
  - id: us-east
    name: US East
    location: { lat: 39.0, lon: -77.5 }
    countries: [US, CA]
    continents: [NA, SA]
    turn:
      secret_env: TURN_SECRET_US_EAST
      ttl: 6h
      servers: ["turn:turn1.us-east.example.net:3478?transport=udp"]
  - id: eu-west
    location: { lat: 53.35, lon: -6.26 }
    countries: [IE, GB]
    continents: [EU]
    networks: [198.51.100.0/24]
    fallback: [us-east]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/locus/regions.yaml"))
    }

    fn issues(text: &str) -> Vec<ConfigIssue> {
        match parse(text) {
            Err(ConfigError::Invalid { issues, .. }) => issues,
            other => panic!("expected validation issues, got {other:?}"),
        }
    }

    #[test]
    fn a_good_file_parses_with_defaults_filled_in() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.regions.len(), 2);
        assert_eq!(c.default_region().id, "us-east");
        assert_eq!(c.regions[1].fallback, vec![RegionIndex(0)]);
        assert_eq!(c.regions[1].name, "eu-west");
        assert_eq!(c.regions[0].turn.ttl, Duration::from_secs(6 * 3600));
        assert_eq!(
            c.geoip.database,
            GeoIpSource::File(PathBuf::from("/etc/locus/db/GeoLite2-City.mmdb"))
        );
        assert_eq!(c.edges, EdgeTiming::default());
        assert!(c.is_trusted_proxy("127.0.0.9".parse().expect("ip")));
        assert!(c.is_trusted_proxy("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!c.is_trusted_proxy("10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn more_regions_than_the_rules_can_index_are_refused() {
        let mut text = String::from("default_region: r0\nregions:\n");
        for i in 0..=MAX_REGIONS {
            text.push_str(&format!(
                "  - id: r{i}\n    location: {{ lat: 0, lon: 0 }}\n"
            ));
        }
        let found = issues(&text);
        assert!(
            found
                .iter()
                .any(|i| i.field == "regions" && i.message.contains("at most 4096")),
            "{found:?}"
        );
    }

    #[test]
    fn failure_detector_timeouts_must_nest() {
        let with = |edges: &str| GOOD.replace("regions:\n", &format!("edges:\n{edges}regions:\n"));
        let c = parse(&with(
            "  heartbeat_interval: 200ms\n  suspect_after: 800ms\n",
        ))
        .expect("valid");
        assert_eq!(c.edges.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(c.edges.suspect_after_max, Duration::from_millis(1_500));
        let found = issues(&with(
            "  heartbeat_interval: 600ms\n  suspect_after: 1s\n  suspect_after_max: 7s\n",
        ));
        let field = |name: &str| {
            found
                .iter()
                .find(|i| i.field == name && i.line.is_some())
                .unwrap_or_else(|| panic!("no issue for {name} in {found:#?}"))
        };
        assert!(
            field("edges.suspect_after")
                .message
                .contains("twice edges.heartbeat_interval")
        );
        assert!(
            field("edges.suspect_after_max")
                .message
                .contains("report_interval × edges.missed_reports")
        );
        let found = issues(&with("  suspect_after: 1200ms\n  suspect_after_max: 1s\n"));
        assert!(
            found.iter().any(|i| i.field == "edges.suspect_after_max"
                && i.message.contains("at least its floor")),
            "{found:#?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let text = GOOD.replace("    fallback: [us-east]", "    fallbacks: [us-east]");
        let err = parse(&text).expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("unknown field `fallbacks`"), "{msg}");
        assert!(msg.contains("/etc/locus/regions.yaml:20:5"), "{msg}");
    }

    #[test]
    fn every_semantic_problem_is_reported_with_field_and_line() {
        let text = r#"
default_region: mars
trusted_proxies: [10.0.0.1/8]
regions:
  - id: eu-west
    location: { lat: 95.0, lon: -6.26 }
    countries: [UK, IE]
    continents: [XX]
    networks: [not-a-cidr]
    fallback: [eu-central]
    turn:
      servers: ["turn:turn1.example.net:3478"]
  - id: eu-west
    location: { lat: 50.1, lon: 8.7 }
"#;
        let found = issues(text);
        let by_field: HashMap<&str, &ConfigIssue> =
            found.iter().map(|i| (i.field.as_str(), i)).collect();
        let expect = |field: &str, needle: &str, line: u64| {
            let issue = by_field
                .get(field)
                .unwrap_or_else(|| panic!("no issue for {field} in {found:#?}"));
            assert!(issue.message.contains(needle), "{field}: {}", issue.message);
            assert_eq!(issue.line, Some(line), "{field}");
        };
        expect("default_region", "\"mars\" is not a region", 2);
        expect("trusted_proxies[0]", "did you mean 10.0.0.0/8", 3);
        expect("regions[0].location.lat", "between -90 and 90", 6);
        expect("regions[0].countries[0]", "the United Kingdom is GB", 7);
        expect("regions[0].continents[0]", "not a continent code", 8);
        expect("regions[0].networks[0]", "not a CIDR network", 9);
        expect(
            "regions[0].fallback[0]",
            "\"eu-central\" is not a region",
            10,
        );
        expect("regions[0].turn.secret_env", "names no secret variable", 5);
        expect("regions[1].id", "duplicate region id", 13);
    }

    #[test]
    fn the_turn_check_section_has_defaults_and_is_validated() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.turn, TurnChecks::default());
        assert_eq!(c.turn.check_interval, Duration::from_secs(10));

        let text = format!(
            "turn:\n  check_interval: 500ms\n  check_timeout: 200ms\n  down_after: 2\n  up_after: 1\n{GOOD}"
        );
        let c = parse(&text).expect("valid");
        assert_eq!(
            c.turn,
            TurnChecks {
                check_interval: Duration::from_millis(500),
                check_timeout: Duration::from_millis(200),
                down_after: 2,
                up_after: 1,
            }
        );

        let text =
            format!("turn:\n  check_interval: 2s\n  check_timeout: 2s\n  down_after: 0\n{GOOD}");
        let found = issues(&text);
        let fields: Vec<(&str, Option<u64>)> =
            found.iter().map(|i| (i.field.as_str(), i.line)).collect();
        assert!(fields.contains(&("turn.down_after", Some(4))), "{found:#?}");
        assert!(
            fields.contains(&("turn.check_timeout", Some(3))),
            "{found:#?}"
        );
        let timeout = found
            .iter()
            .find(|i| i.field == "turn.check_timeout")
            .expect("timeout issue");
        assert!(timeout.message.contains("shorter than turn.check_interval"));

        // The default timeout (3s) against a short interval is named on the interval.
        let found = issues(&format!("turn:\n  check_interval: 1s\n{GOOD}"));
        assert_eq!(found[0].field, "turn.check_interval");

        let err = parse(&format!("turn:\n  check_every: 1s\n{GOOD}")).expect_err("unknown key");
        assert!(
            err.to_string().contains("unknown field `check_every`"),
            "{err}"
        );
    }

    #[test]
    fn the_limits_section_has_defaults_accepts_off_and_names_bad_values() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.limits, RequestLimits::default());
        let c = parse(&format!(
            "limits:\n  creates_per_minute: 5\n  locates_per_minute: off\n{GOOD}"
        ))
        .expect("valid");
        assert_eq!(
            c.limits,
            RequestLimits {
                creates_per_minute: Some(5),
                locates_per_minute: None,
                ..RequestLimits::default()
            }
        );
        for (text, ttl) in [
            ("2s", Some(Duration::from_secs(2))),
            ("1h30m", Some(Duration::from_secs(5400))),
            ("off", None),
        ] {
            let c =
                parse(&format!("limits:\n  unjoined_session_ttl: {text}\n{GOOD}")).expect("valid");
            assert_eq!(c.limits.unjoined_session_ttl, ttl, "{text}");
        }
        let found = issues(&format!(
            "limits:\n  creates_per_minute: 0\n  locates_per_minute: lots\n  unjoined_session_ttl: soon\n{GOOD}"
        ));
        let fields: Vec<(&str, Option<u64>)> =
            found.iter().map(|i| (i.field.as_str(), i.line)).collect();
        let ttl = found
            .iter()
            .find(|i| i.field == "limits.unjoined_session_ttl")
            .expect("the bad TTL is named");
        assert_eq!(ttl.line, Some(4), "{ttl:?}");
        assert!(
            ttl.message.contains("\"soon\"") && ttl.message.contains("`off`"),
            "{ttl:?}"
        );
        for zero in ["0s", "yes"] {
            let found = issues(&format!("limits:\n  unjoined_session_ttl: {zero}\n{GOOD}"));
            assert!(
                found
                    .iter()
                    .any(|i| i.field == "limits.unjoined_session_ttl"),
                "{zero}: {found:#?}"
            );
        }
        assert!(
            fields.contains(&("limits.creates_per_minute", Some(2))),
            "{found:#?}"
        );
        assert!(
            fields.contains(&("limits.locates_per_minute", Some(3))),
            "{found:#?}"
        );
    }

    #[test]
    fn missing_default_region_is_named() {
        let text = GOOD.replace("default_region: us-east\n", "");
        let found = issues(&text);
        assert_eq!(found[0].field, "default_region");
        assert!(found[0].message.contains("us-east, eu-west"));
    }

    #[test]
    fn a_country_in_two_regions_is_refused() {
        let text = GOOD.replace("countries: [IE, GB]", "countries: [IE, US]");
        let found = issues(&text);
        assert!(
            found[0]
                .message
                .contains("already listed in region \"us-east\"")
        );
    }

    #[test]
    fn secret_variable_names_are_checked() {
        let text = GOOD.replace("TURN_SECRET_US_EAST", "\"s3cr3t value\"");
        let found = issues(&text);
        assert_eq!(found[0].field, "regions[0].turn.secret_env");
        assert!(found[0].message.contains("never goes in this file"));
    }

    #[test]
    fn ipv4_mapped_networks_are_normalised_to_ipv4() {
        assert_eq!(
            parse_network("::ffff:203.0.113.0/120"),
            Ok("203.0.113.0/24".parse().expect("net"))
        );
        let text = GOOD.replace("[127.0.0.0/8, \"::1\"]", "[\"::ffff:127.0.0.0/104\"]");
        let c = parse(&text).expect("valid");
        assert!(c.is_trusted_proxy("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert!(
            parse_duration("12")
                .expect_err("no unit")
                .contains("no unit")
        );
        assert!(
            parse_duration("5y")
                .expect_err("bad unit")
                .contains("unknown unit")
        );
        assert!(parse_duration("").is_err());
    }
}
