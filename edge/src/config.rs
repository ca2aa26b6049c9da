//! The `edge` command line and the settings it produces.
//!
//! Every setting is read here, in one place, and validated before anything starts; the
//! rest of the crate receives a [`Settings`]. The one secret, `LOCATOR_EDGE_TOKEN`, comes
//! from the environment (never from a flag) into an [`EdgeToken`] whose `Debug` output
//! hides it, so it cannot end up in a log line by accident.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::media::MediaConfig;

/// Shortest edge token accepted (the same rule as the locator's).
pub const MIN_TOKEN_LEN: usize = 16;

/// Edge server: hosts sessions and keeps a link to the locator.
///
/// The secret comes from the environment: LOCATOR_EDGE_TOKEN, this edge's own credential
/// (`locator edge-credential --config regions.yaml --id ID` prints it).
#[derive(Debug, Parser)]
#[command(name = "edge", version, about)]
pub struct Cli {
    /// Locator base URL (https://host:port, or http:// on a private network); repeat
    /// the flag or separate with commas to give several: the edge moves to the next one
    /// when one is down.
    #[arg(long = "locator", required = true, value_delimiter = ',')]
    pub locators: Vec<String>,
    /// Region id of this edge (as in the locator's regions.yaml).
    #[arg(long)]
    pub region: String,
    /// Edge id, unique among the edges: letters, digits, '-', '_', '.'.
    #[arg(long)]
    pub id: String,
    /// Address to listen on for clients (HOST:PORT).
    #[arg(long)]
    pub listen: String,
    /// Base URL clients use to reach this edge (http:// or https://).
    #[arg(long)]
    pub public_url: String,
    /// Sessions this edge can host (the locator's load score is relative to it).
    #[arg(long, default_value_t = 1000)]
    pub capacity: u32,
    /// Forwarded WebRTC bitrate this edge can carry, in bits per second, in either
    /// direction (e.g. 200M, 1.5G, 800k, 64000): the locator scores an edge near it as
    /// loaded and sends no new sessions to one over it. Not given: no bitrate cap.
    #[arg(long, value_parser = parse_bitrate)]
    pub max_bitrate: Option<u64>,
    /// Folder of the durable spool of audit entries and metrics.
    #[arg(long, default_value = "./edge-spool")]
    pub spool_dir: PathBuf,
    /// Most entries the spool keeps while the locator is unreachable: warns at 80%,
    /// stops spooling metrics at 50%, refuses new participants at 100%.
    #[arg(long, default_value_t = 1_000_000)]
    pub spool_max_entries: u64,
    /// Largest client message (bytes); larger ones close the connection.
    #[arg(long, default_value_t = 65_536)]
    pub max_message_bytes: usize,
    /// Most participants in one session.
    #[arg(long, default_value_t = 50)]
    pub max_participants: usize,
    /// Messages queued for one client before it counts as too slow and is disconnected.
    #[arg(long, default_value_t = 256)]
    pub send_queue: usize,
    /// How long an empty session stays before it ends (e.g. 10s, 500ms); time the edge
    /// process was stopped does not count.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub linger: Duration,
    /// How long a draining edge keeps its sessions before it moves them and exits.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_deadline: Duration,
    /// Address the WebRTC peers' UDP sockets bind (0.0.0.0: every interface but
    /// loopback; give 127.0.0.1 to serve loopback clients).
    #[arg(long, default_value = "0.0.0.0")]
    pub rtc_listen: IpAddr,
    /// Public address advertised in the edge's ICE candidates when --rtc-listen is behind
    /// a 1:1 NAT.
    #[arg(long)]
    pub rtc_public_ip: Option<IpAddr>,
    /// UDP port range of WebRTC peers, LOW-HIGH (one port per peer: open it in the
    /// firewall); ephemeral ports when not given.
    #[arg(long, value_parser = parse_port_range)]
    pub rtc_ports: Option<PortRange>,
    /// WebRTC peers this edge serves at once (0: no WebRTC); more are refused with an
    /// rtc error frame.
    #[arg(long, default_value_t = 500)]
    pub max_rtc_peers: usize,
    /// Bytes a participant's data channel may hold unsent before it is disconnected as
    /// too slow.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub rtc_send_buffer: usize,
    /// Renegotiations per second and peer, each way (edge offers are coalesced, client
    /// offers above it get an error frame).
    #[arg(long, default_value_t = 2)]
    pub rtc_renegotiations_per_second: u32,
    /// Most client connections open at once, websockets included; more are closed on
    /// arrival. Lowered at start to fit the file descriptor limit.
    #[arg(long, default_value_t = locus_serve::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Longest wait for a request's headers, on a new connection or an idle keep-alive
    /// one, before it is closed (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// CA certificates (PEM) to trust for https:// locators instead of the built-in
    /// public roots (Mozilla's): a locator whose certificate a private CA signed.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Serve clients HTTPS/WSS with this certificate chain (PEM; with --tls-key).
    /// Reloaded when the file changes. Not given: plain HTTP (behind a TLS proxy).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

/// An inclusive UDP port range (`--rtc-ports 40000-40999`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

/// Parses `LOW-HIGH`.
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("\"{text}\": write the range as LOW-HIGH, e.g. 40000-40999"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("\"{p}\" is not a port (1-65535)"))
    };
    let (low, high) = (port(low)?, port(high)?);
    if low > high {
        return Err(format!(
            "{low}-{high}: the first port must not exceed the second"
        ));
    }
    Ok(PortRange { low, high })
}

/// Parses a bitrate in bits per second: a number with an optional decimal SI prefix
/// (`k` = 1,000, `M` = 10^6, `G` = 10^9, `T` = 10^12) and an optional `bit/s`, `b/s` or
/// `bps` unit: `200M`, `1.5Gbit/s`, `64000`. At least 1 bit/s.
pub fn parse_bitrate(text: &str) -> Result<u64, String> {
    let help = "write bits per second as a number with an optional k, M, G or T (decimal), e.g. 200M or 1.5G";
    let t = text.trim();
    let t = ["bit/s", "b/s", "bps"]
        .iter()
        .find_map(|unit| t.strip_suffix(unit))
        .unwrap_or(t)
        .trim_end();
    let (number, scale) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'M')) => (&t[..i], 1e6),
        Some((i, 'G' | 'g')) => (&t[..i], 1e9),
        Some((i, 'T' | 't')) => (&t[..i], 1e12),
        Some((i, 'm')) => {
            return Err(format!(
                "\"{text}\": 'm' would be milli; write M for megabits ({})",
                &t[..i]
            ));
        }
        _ => (t, 1.0),
    };
    let number = number.trim();
    let valid = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|&b| b == b'.').count() <= 1;
    let value: f64 = match number.parse() {
        Ok(v) if valid => v,
        _ => return Err(format!("\"{text}\": {help}")),
    };
    let bits = (value * scale).round();
    if bits < 1.0 {
        return Err(format!("\"{text}\": the bitrate must be at least 1 bit/s"));
    }
    if bits > 1e15 {
        return Err(format!(
            "\"{text}\": more than a petabit per second is not a real edge"
        ));
    }
    Ok(bits as u64)
}

/// Validated settings of an edge.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Locator base URLs (`https://`, `wss://`, `http://` or `ws://`), in order of
    /// preference.
    pub locators: Vec<String>,
    /// Whom the link trusts for `https://`/`wss://` locators (public roots or
    /// `--ca-file`).
    pub locator_tls: Arc<locus_serve::tls::ClientConfig>,
    /// `--tls-cert`/`--tls-key`: the client-facing server's certificate (plain HTTP when
    /// `None`).
    pub tls: Option<Arc<locus_serve::ServerTls>>,
    pub region: String,
    pub edge_id: String,
    pub public_url: String,
    pub capacity: u32,
    /// `--max-bitrate`, bits per second.
    pub max_bitrate: Option<u64>,
    pub spool_dir: PathBuf,
    pub spool_max_entries: u64,
    pub max_message_bytes: usize,
    pub max_participants: usize,
    pub send_queue: usize,
    pub linger: Duration,
    pub drain_deadline: Duration,
    pub media: MediaConfig,
    /// Bounds of the client-facing server.
    pub connections: locus_serve::Limits,
}

impl Default for Settings {
    /// The command line's defaults; the locator URLs, region, id and public URL are empty
    /// and must be set.
    fn default() -> Self {
        Settings {
            locators: Vec::new(),
            locator_tls: locus_serve::tls::client_config(None)
                .expect("the built-in roots make a TLS client configuration"),
            tls: None,
            region: String::new(),
            edge_id: String::new(),
            public_url: String::new(),
            capacity: 1000,
            max_bitrate: None,
            spool_dir: PathBuf::from("./edge-spool"),
            spool_max_entries: 1_000_000,
            max_message_bytes: 65_536,
            max_participants: 50,
            send_queue: 256,
            linger: Duration::from_secs(10),
            drain_deadline: Duration::from_secs(60),
            media: MediaConfig::default(),
            connections: locus_serve::Limits::default(),
        }
    }
}

impl Cli {
    /// The settings, validated.
    pub fn settings(&self) -> Result<Settings, String> {
        let locator_tls = locus_serve::tls::client_config(self.ca_file.as_deref())
            .map_err(|e| format!("--ca-file {e}"))?;
        let tls = locus_serve::tls::from_flags(self.tls_cert.as_deref(), self.tls_key.as_deref())?
            .map(Arc::new);
        let settings = Settings {
            locator_tls,
            tls,
            locators: self
                .locators
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            region: self.region.clone(),
            edge_id: self.id.clone(),
            public_url: self.public_url.clone(),
            capacity: self.capacity,
            max_bitrate: self.max_bitrate,
            spool_dir: self.spool_dir.clone(),
            spool_max_entries: self.spool_max_entries,
            max_message_bytes: self.max_message_bytes,
            max_participants: self.max_participants,
            send_queue: self.send_queue,
            linger: self.linger,
            drain_deadline: self.drain_deadline,
            media: MediaConfig {
                listen: self.rtc_listen,
                public_ip: self.rtc_public_ip,
                ports: self.rtc_ports.map(|r| (r.low, r.high)),
                max_peers: self.max_rtc_peers,
                send_buffer: self.rtc_send_buffer,
                renegotiations_per_second: self.rtc_renegotiations_per_second,
            },
            connections: locus_serve::Limits {
                max_connections: self.max_connections,
                header_read_timeout: self.header_read_timeout,
            },
        };
        settings.validate()?;
        Ok(settings)
    }
}

impl Settings {
    /// Checks every field; the message names the flag and what to do.
    pub fn validate(&self) -> Result<(), String> {
        if self.locators.is_empty() {
            return Err(
                "--locator: give at least one locator URL, e.g. http://127.0.0.1:7400".into(),
            );
        }
        for url in &self.locators {
            link_url(url).map_err(|e| format!("--locator {url}: {e}"))?;
        }
        if !is_valid_id(&self.edge_id) {
            return Err(format!(
                "--id \"{}\": use 1-64 characters of letters, digits, '-', '_', '.'",
                self.edge_id
            ));
        }
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 64
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(format!(
                "--region \"{}\": use the region id of the locator's regions.yaml (lower-case letters, digits, '-')",
                self.region
            ));
        }
        // The locator applies the same rule to the URL this edge registers.
        if let Err(why) = locus_protocol::check_public_url(&self.public_url) {
            return Err(format!(
                "--public-url \"{}\": give the http:// or https:// base URL clients reach this edge at: {why}",
                self.public_url.chars().take(100).collect::<String>()
            ));
        }
        if self.capacity == 0 {
            return Err("--capacity must be at least 1".into());
        }
        if self.connections.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.connections.header_read_timeout.is_zero() {
            return Err("--header-read-timeout must be more than 0 (e.g. 10s)".into());
        }
        if self.spool_max_entries < 100 {
            return Err("--spool-max-entries must be at least 100".into());
        }
        if !(128..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err("--max-message-bytes must be between 128 and 16777216".into());
        }
        if !(1..=10_000).contains(&self.max_participants) {
            return Err("--max-participants must be between 1 and 10000".into());
        }
        if !(1..=65_536).contains(&self.send_queue) {
            return Err("--send-queue must be between 1 and 65536".into());
        }
        if self.drain_deadline.is_zero() {
            return Err("--drain-deadline must be more than 0s".into());
        }
        if !(16 * 1024..=1024 * 1024 * 1024).contains(&self.media.send_buffer) {
            return Err("--rtc-send-buffer must be between 16384 and 1073741824 bytes".into());
        }
        if !(1..=100).contains(&self.media.renegotiations_per_second) {
            return Err("--rtc-renegotiations-per-second must be between 1 and 100".into());
        }
        if self.media.public_ip.is_some_and(|ip| ip.is_unspecified()) {
            return Err(
                "--rtc-public-ip must be an address clients can reach, not 0.0.0.0 or ::".into(),
            );
        }
        Ok(())
    }
}

/// Edge ids follow the locator's rule.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The websocket URL of the edge link at a locator base URL: `https://h:p[/base]`
/// becomes `wss://h:p[/base]/v1/edge/link`, `http://` becomes `ws://`.
pub fn link_url(base: &str) -> Result<String, String> {
    let base = base.trim().trim_end_matches('/');
    let (scheme, rest) = if let Some(rest) = base.strip_prefix("https://") {
        ("wss", rest)
    } else if let Some(rest) = base.strip_prefix("wss://") {
        ("wss", rest)
    } else if let Some(rest) = base.strip_prefix("http://") {
        ("ws", rest)
    } else if let Some(rest) = base.strip_prefix("ws://") {
        ("ws", rest)
    } else {
        return Err(
            "give the locator's base URL, e.g. https://locator.example.com or http://127.0.0.1:7400".into(),
        );
    };
    let rest = rest
        .strip_suffix(locus_protocol::EDGE_LINK_PATH)
        .unwrap_or(rest);
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    Ok(format!(
        "{scheme}://{rest}{}",
        locus_protocol::EDGE_LINK_PATH
    ))
}

/// This edge's credential (`LOCATOR_EDGE_TOKEN`, printed by `locator edge-credential`).
/// `Debug` never shows it.
#[derive(Clone)]
pub struct EdgeToken(String);

impl std::fmt::Debug for EdgeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EdgeToken(…)")
    }
}

impl EdgeToken {
    /// Checks the length rule.
    pub fn new(token: impl Into<String>) -> Result<EdgeToken, String> {
        let token = token.into();
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "LOCATOR_EDGE_TOKEN is {}: set it to this edge's credential, printed by `locator edge-credential --config regions.yaml --id EDGE_ID` (at least {MIN_TOKEN_LEN} characters)",
                if token.is_empty() {
                    "not set"
                } else {
                    "too short"
                }
            ));
        }
        Ok(EdgeToken(token))
    }

    /// Reads `LOCATOR_EDGE_TOKEN`, or else the file `LOCATOR_EDGE_TOKEN_FILE` names (a
    /// per-pod credential mounted from a Kubernetes Secret, where the image has no shell
    /// to pick the pod's key).
    pub fn from_env() -> Result<EdgeToken, String> {
        let direct = std::env::var("LOCATOR_EDGE_TOKEN").unwrap_or_default();
        if !direct.is_empty() {
            return EdgeToken::new(direct);
        }
        match std::env::var_os("LOCATOR_EDGE_TOKEN_FILE") {
            Some(path) if !path.is_empty() => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "LOCATOR_EDGE_TOKEN_FILE {}: cannot read it: {e}",
                        std::path::Path::new(&path).display()
                    )
                })?;
                EdgeToken::new(text.trim())
            }
            _ => EdgeToken::new(String::new()),
        }
    }

    /// The secret itself: only for the `Authorization` header and the join-token key.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Durations on the command line are written as in `regions.yaml` (`500ms`, `10s`,
/// `5m`, `1h30m`): one parser for both binaries.
pub use locus_geo::config::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut all = vec![
            "edge",
            "--region",
            "eu-west",
            "--id",
            "edge-1",
            "--listen",
            "127.0.0.1:0",
            "--public-url",
            "http://127.0.0.1:9000",
        ];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
    }

    #[test]
    fn several_locators_by_repetition_and_commas() {
        let parsed = cli(&[
            "--locator",
            "http://a:1,http://b:2",
            "--locator",
            "http://c:3",
        ])
        .expect("parses");
        let settings = parsed.settings().expect("valid");
        assert_eq!(
            settings.locators,
            ["http://a:1", "http://b:2", "http://c:3"]
        );
        assert_eq!(settings.capacity, 1000);
        assert_eq!(settings.linger, Duration::from_secs(10));
        assert_eq!(settings.drain_deadline, Duration::from_secs(60));
        assert_eq!(settings.send_queue, 256);
        assert_eq!(settings.media.max_peers, 500);
        assert_eq!(settings.media.ports, None);
        let ranged =
            cli(&["--locator", "http://a:1", "--rtc-ports", "40000-40010"]).expect("parses");
        assert_eq!(
            ranged.settings().expect("valid").media.ports,
            Some((40000, 40010))
        );
    }

    #[test]
    fn a_locator_is_required_and_bad_values_are_named() {
        assert!(cli(&[]).is_err());
        let bad = |args: &[&str], needle: &str| {
            let err = cli(args).expect("parses").settings().expect_err("invalid");
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        };
        bad(&["--locator", "ftp://x"], "--locator");
        bad(
            &["--locator", "https://x", "--ca-file", "/nonexistent/ca.pem"],
            "--ca-file /nonexistent/ca.pem",
        );
        bad(
            &["--locator", "https://x", "--tls-cert", "/nonexistent/c.pem"],
            "--tls-cert needs --tls-key",
        );
        assert_eq!(
            link_url("https://l.example/base/").as_deref(),
            Ok("wss://l.example/base/v1/edge/link")
        );
        assert_eq!(
            link_url("http://127.0.0.1:7400").as_deref(),
            Ok("ws://127.0.0.1:7400/v1/edge/link")
        );
        bad(
            &["--locator", "http://a:1", "--capacity", "0"],
            "--capacity",
        );
        bad(
            &["--locator", "http://a:1", "--send-queue", "0"],
            "--send-queue",
        );
        assert!(cli(&["--locator", "http://a:1", "--linger", "10"]).is_err());
        assert!(cli(&["--locator", "http://a:1", "--rtc-ports", "5000"]).is_err());
        assert!(cli(&["--locator", "http://a:1", "--rtc-ports", "6000-5000"]).is_err());
        bad(
            &["--locator", "http://a:1", "--rtc-public-ip", "0.0.0.0"],
            "--rtc-public-ip",
        );
        bad(
            &["--locator", "http://a:1", "--rtc-send-buffer", "10"],
            "--rtc-send-buffer",
        );
    }

    #[test]
    fn bitrates() {
        assert_eq!(parse_bitrate("200M"), Ok(200_000_000));
        assert_eq!(parse_bitrate("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_bitrate("800k"), Ok(800_000));
        assert_eq!(parse_bitrate("64000"), Ok(64_000));
        assert_eq!(parse_bitrate("10 Mbit/s"), Ok(10_000_000));
        assert_eq!(parse_bitrate("2Gbps"), Ok(2_000_000_000));
        for bad in [
            "", "M", "fast", "-5M", "1e6", "1.2.3M", "0", "0.0001", "200m", "9999T",
        ] {
            let err = parse_bitrate(bad).expect_err(bad);
            assert!(err.contains(bad), "{err:?} names the value {bad:?}");
        }
        let parsed = cli(&["--locator", "http://a:1", "--max-bitrate", "200M"]).expect("parses");
        assert_eq!(
            parsed.settings().expect("valid").max_bitrate,
            Some(200_000_000)
        );
        let err = cli(&["--locator", "http://a:1", "--max-bitrate", "lots"])
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("--max-bitrate") && err.contains("200M"),
            "{err}"
        );
    }

    #[test]
    fn link_urls() {
        assert_eq!(
            link_url("http://127.0.0.1:7400").as_deref(),
            Ok("ws://127.0.0.1:7400/v1/edge/link")
        );
        assert_eq!(
            link_url("http://loc.internal/base/").as_deref(),
            Ok("ws://loc.internal/base/v1/edge/link")
        );
        assert_eq!(
            link_url("ws://h:1/v1/edge/link").as_deref(),
            Ok("ws://h:1/v1/edge/link")
        );
        assert!(link_url("http://").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn tokens_are_checked_and_hidden() {
        assert!(EdgeToken::new("short").is_err());
        let token = EdgeToken::new("0123456789abcdef-secret").expect("long enough");
        assert!(!format!("{token:?}").contains("secret"));
        assert_eq!(token.expose(), "0123456789abcdef-secret");
    }
}
