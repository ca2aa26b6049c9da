//! `loadtest fleet`: a fleet of simulated edges in this process against real locators it
//! starts, to find what a fleet costs a locator and how fast a change reaches selection.
//!
//! Each simulated edge speaks the real link protocol over its own websocket: it registers
//! with its own credential, reports a changing load at the configured interval, beats as
//! often as the locator's welcome asks (the heartbeat of the failure detector: pongs with
//! an occasional ping when the welcome offers them, as the edge does), and relays a
//! trickle of spool entries that it numbers and has acknowledged. Their `public_url`s point
//! at one shared `/healthz` here, so the locators' probes are answered. Meanwhile clients
//! create and join sessions at a fixed rate.
//!
//! Measured (every figure read from the running processes):
//! - the locators' CPU while only the fleet talks to them (`/proc/<pid>/stat`), in cores,
//!   and their resident memory;
//! - selection latency, from the locators' own `locator_selection_seconds` histogram over
//!   the client window;
//! - report to snapshot: a probe edge (alone in region `probe`) flips between idle and
//!   saturated; the time from sending the report until `GET /v1/locate?region=probe` on
//!   the locator holding it answers accordingly, and on the other locators (the replica
//!   lag of a change made on one locator).
//!
//! The report is `fleet-<N>.json` with the keys [`FleetReport`] lists; the run fails when a
//! goal ([`Goals`]) is missed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use locus_protocol::{
    EDGE_LINK_PATH, EdgeMessage, LoadReport, LocatorMessage, PROTOCOL_VERSION, Register, SpoolBody,
    SpoolEntry, heartbeat,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::topology::{Topology, TopologyOptions};

/// Regions of the fleet, with the demo GeoIP networks' countries (so clients spread), and
/// `probe`, which holds only the probe edge and no country.
const REGIONS: &[(&str, &str, &str)] = &[
    ("us-east", "{ lat: 39.0, lon: -77.5 }", "[US, CA]"),
    ("eu-west", "{ lat: 53.35, lon: -6.26 }", "[GB, NL]"),
    ("eu-central", "{ lat: 50.1, lon: 8.7 }", "[DE, PL]"),
    ("ap-northeast", "{ lat: 35.7, lon: 139.7 }", "[JP, HK]"),
];
const PROBE_REGION: &str = "probe";
const PROBE_EDGE: &str = "probe-1";
/// One client address per region of [`REGIONS`] (built-in demo database).
const CLIENT_ADDRESSES: &[&str] = &["8.8.8.8", "81.2.69.142", "85.214.132.117", "133.1.1.1"];
/// Sessions a simulated edge says it can host.
const CAPACITY: u32 = 1_000;
/// Keys the clients create and join (a join of a key already placed is a join).
const ROOM_KEYS: usize = 2_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub edges: usize,
    pub report_interval: Duration,
    /// The locators' `edges.heartbeat_interval`; `None`: their default.
    pub heartbeat_interval: Option<Duration>,
    /// `postgres://…` for several locators on one database; `None`: SQLite.
    pub database: Option<String>,
    pub replicas: usize,
    pub bin_dir: PathBuf,
    pub work_dir: Option<PathBuf>,
    pub keep: bool,
    /// How long the fleet runs before measuring, once every edge is registered.
    pub warmup: Duration,
    /// Length of the edge-only window and of the client window.
    pub window: Duration,
    /// Client requests per second in the client window.
    pub request_rate: u32,
    /// Each edge sends a spool entry this often.
    pub spool_every: Duration,
    /// Report-to-snapshot samples.
    pub probes: usize,
    pub goals: Goals,
}

/// The goals a run must meet (issue 18's figures for 5,000 edges on these machines).
#[derive(Debug, Clone, Serialize)]
pub struct Goals {
    pub edge_cpu_share: f64,
    pub selection_p99_us: f64,
    pub report_to_snapshot_p99_ms: f64,
    pub replica_lag_p99_ms: f64,
}

impl Default for Goals {
    fn default() -> Self {
        Goals {
            edge_cpu_share: 0.25,
            selection_p99_us: 50.0,
            report_to_snapshot_p99_ms: 100.0,
            replica_lag_p99_ms: 250.0,
        }
    }
}

/// The report (`fleet-<N>.json`). The first keys are a contract (scripts and the README
/// read them): `edges`, `replicas`, `edge_cpu_share`, `selection_p99_us`,
/// `report_to_snapshot_p99_ms`, `replica_lag_p99_ms`, `locator_rss_mib`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub edges: usize,
    pub replicas: usize,
    /// CPU of the busiest locator while only the fleet talks to it, in cores.
    pub edge_cpu_share: f64,
    pub selection_p99_us: Option<f64>,
    pub report_to_snapshot_p99_ms: Option<f64>,
    /// `None` with one locator.
    pub replica_lag_p99_ms: Option<f64>,
    /// Largest resident memory of a locator at the end, MiB.
    pub locator_rss_mib: f64,
    pub selection_p50_us: Option<f64>,
    /// Share of selections within the goal's bound (the histogram has a bucket edge there).
    pub selection_within_goal: Option<f64>,
    pub selections: u64,
    pub report_to_snapshot_p50_ms: Option<f64>,
    pub replica_lag_p50_ms: Option<f64>,
    /// CPU of each locator in the edge-only window and in the client window, in cores.
    pub locator_cpu_edges_only: Vec<f64>,
    pub locator_cpu_with_clients: Vec<f64>,
    pub locator_rss_mib_each: Vec<f64>,
    pub report_interval_ms: u64,
    /// The heartbeat interval given to the locators; `None`: their default.
    pub heartbeat_interval_ms: Option<u64>,
    /// Messages the fleet sent per second in the edge-only window (reports, heartbeats,
    /// spool batches).
    pub fleet_messages_per_s: f64,
    pub spool_entries_acked: u64,
    pub client_requests: u64,
    pub client_requests_per_s: f64,
    /// Client answers by status (`"error"`: no answer).
    pub client_statuses: std::collections::BTreeMap<String, u64>,
    pub client_p99_ms: Option<f64>,
    /// Time until every edge had registered (64 at a time, retrying as edges do), and the
    /// attempts that had to be retried.
    pub registration_s: f64,
    pub register_retries: u64,
    /// Edges whose link failed during the run, with the last reason.
    pub link_failures: u64,
    pub last_link_error: Option<String>,
    pub goals: Goals,
    pub checks: Vec<Check>,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Counters shared by the simulated edges.
#[derive(Debug, Default)]
struct FleetCounters {
    registered: AtomicUsize,
    messages: AtomicU64,
    acked: AtomicU64,
    /// Attempts to register that failed before the edge first registered (it retries).
    register_retries: AtomicU64,
    /// Links that failed after registering.
    failures: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

impl FleetCounters {
    fn failed(&self, edge: &str, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("{edge}: {error}"));
    }
}

/// One simulated edge's identity.
#[derive(Debug, Clone)]
struct SimEdge {
    id: String,
    region: String,
    credential: String,
    public_url: String,
    locator: SocketAddr,
    report_interval: Duration,
    spool_every: Duration,
}

/// The regions file of the fleet.
fn regions_yaml(report_interval: Duration, heartbeat_interval: Option<Duration>) -> String {
    let heartbeat = heartbeat_interval
        .map(|h| format!("  heartbeat_interval: {}ms\n", h.as_millis()))
        .unwrap_or_default();
    let mut yaml = format!(
        "geoip: {{ database: builtin-demo }}\ntrusted_proxies: [127.0.0.0/8]\nlimits: {{ creates_per_minute: off, locates_per_minute: off }}\ndefault_region: us-east\nedges:\n  report_interval: {}ms\n{heartbeat}  missed_reports: 3\n  grace_period: 30s\n  probe_timeout: 1s\nregions:\n",
        report_interval.as_millis()
    );
    for (id, location, countries) in REGIONS {
        yaml.push_str(&format!(
            "  - id: {id}\n    location: {location}\n    countries: {countries}\n"
        ));
    }
    yaml.push_str(&format!(
        "  - id: {PROBE_REGION}\n    location: {{ lat: 0.0, lon: 0.0 }}\n"
    ));
    yaml
}

/// Answers `GET /healthz` (any path) with 200 for every simulated edge: the locators probe
/// an edge whose link is lost or late.
async fn serve_healthz(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut read = 0;
            // The request head (bounded); the body is never needed.
            while read < buf.len() {
                match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf[read..]))
                    .await
                {
                    Ok(Ok(n)) if n > 0 => {
                        read += n;
                        if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    _ => return,
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        });
    }
}

/// The soft limit on open files of this process (children inherit it).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPU time (user + system) of process `pid` so far. `/proc/<pid>/stat` counts in
/// USER_HZ ticks, 100 per second on Linux.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Resident memory of process `pid`, MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Cores each process used while `window` passed.
async fn cpu_over(pids: &[u32], window: Duration) -> Vec<f64> {
    let before: Vec<Option<f64>> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(pid, before)| match (before, cpu_seconds(*pid)) {
            (Some(b), Some(a)) => (a - b) / elapsed,
            _ => f64::NAN,
        })
        .collect()
}

/// The cumulative buckets of `locator_selection_seconds` in a `/metrics` text:
/// `(upper bound in seconds, count)`, in increasing order.
pub fn selection_buckets(metrics: &str) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = metrics
        .lines()
        .filter(|l| l.starts_with("locator_selection_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((bound, count))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The difference of two cumulative bucket lists of the same histogram.
fn bucket_delta(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0, |(_, c)| *c);
            (*bound, count.saturating_sub(earlier))
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside its bucket (the
/// lower edge of the first bucket is 0). `None` without observations or in the +Inf bucket.
pub fn bucket_quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if !bound.is_finite() {
                return None;
            }
            let inside = (count - lower.1) as f64;
            let share = if inside > 0.0 {
                (rank - lower.1 as f64) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share.clamp(0.0, 1.0));
        }
        lower = (bound, count);
    }
    None
}

/// Share of observations at or below `bound` (which must be a bucket edge).
fn share_within(buckets: &[(f64, u64)], bound: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let (_, count) = buckets
        .iter()
        .find(|(b, _)| (*b - bound).abs() < bound * 1e-9)?;
    Some(*count as f64 / total as f64)
}

fn percentile(samples: &mut [f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    Some(samples[i])
}

/// A load report of a simulated edge: sessions around `share` of its capacity.
fn load(share: f64, rng: &mut StdRng) -> LoadReport {
    let sessions = (f64::from(CAPACITY) * share.clamp(0.0, 1.0)) as u32;
    LoadReport {
        cpu: rng.random_range(0.05..0.6),
        lag_ms: rng.random_range(0.1..3.0),
        connections: sessions * 2,
        sessions,
        ..LoadReport::default()
    }
}

/// Runs one simulated edge until `stop` turns true, reconnecting with back-off as a real
/// edge does. `forced`, for the probe edge, holds the load share to report (sent at once
/// when it changes); the others draw theirs. `registering` is held until the edge first
/// registered: it bounds how many edges register at once.
async fn run_edge(
    edge: SimEdge,
    counters: Arc<FleetCounters>,
    mut forced: Option<watch::Receiver<f64>>,
    mut stop: watch::Receiver<bool>,
    registering: tokio::sync::OwnedSemaphorePermit,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut registering = Some(registering);
    let mut backoff = Duration::from_millis(250);
    loop {
        let outcome = link_once(
            &edge,
            &counters,
            &mut forced,
            &mut stop,
            &mut registering,
            &mut rng,
        )
        .await;
        let error = match outcome {
            Ok(()) => return,
            Err(error) => error,
        };
        if registering.is_some() {
            counters.register_retries.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.failed(&edge.id, error);
        }
        let wait = backoff.mul_f64(rng.random_range(0.5..1.5));
        backoff = (backoff * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One link of a simulated edge: `Ok` when stopped, `Err` with what ended it.
async fn link_once(
    edge: &SimEdge,
    counters: &FleetCounters,
    forced: &mut Option<watch::Receiver<f64>>,
    stop: &mut watch::Receiver<bool>,
    registering: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    rng: &mut StdRng,
) -> Result<(), String> {
    let mut request = format!("ws://{}{EDGE_LINK_PATH}", edge.locator)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let bearer = format!("Bearer {}", edge.credential)
        .parse()
        .map_err(|_| "credential is not a header value".to_string())?;
    request.headers_mut().insert("authorization", bearer);
    let mut ws = match tokio::time::timeout(
        Duration::from_secs(30),
        // Small buffers, as a real edge's link has: tungstenite's default 128 KiB read
        // buffer is zero-filled before every read, which would make the simulator, not
        // the locator, the bottleneck of a large fleet.
        tokio_tungstenite::connect_async_with_config(
            request,
            Some(
                tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .read_buffer_size(4 * 1024)
                    .write_buffer_size(4 * 1024),
            ),
            false,
        ),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => return Err("connect: timed out".into()),
    };
    let register = EdgeMessage::Register(Register {
        protocol: PROTOCOL_VERSION,
        edge_id: edge.id.clone(),
        region: edge.region.clone(),
        public_url: edge.public_url.clone(),
        capacity: CAPACITY,
        version: concat!("fleet-sim-", env!("CARGO_PKG_VERSION")).into(),
        sessions: Vec::new(),
        draining: false,
        // It hosts no sessions (nothing the locator could end on it); it beats as an edge.
        features: vec![locus_protocol::features::PONG_HEARTBEATS.into()],
    });
    let send = |message: &EdgeMessage| {
        Message::Text(serde_json::to_string(message).unwrap_or_default().into())
    };
    ws.send(send(&register))
        .await
        .map_err(|e| format!("register: {e}"))?;
    let welcome = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = ws.next().await {
            if let Ok(Message::Text(text)) = frame {
                return serde_json::from_str::<LocatorMessage>(&text).ok();
            }
        }
        None
    })
    .await;
    let (acked_seq, heartbeat_ms, pong_heartbeats) = match welcome {
        Ok(Some(LocatorMessage::Welcome {
            acked_seq,
            heartbeat_interval_ms,
            pong_heartbeats,
            ..
        })) => (acked_seq, heartbeat_interval_ms, pong_heartbeats),
        Ok(Some(LocatorMessage::Error { reason })) => return Err(format!("refused: {reason}")),
        Ok(_) => return Err("no welcome".into()),
        Err(_) => return Err("no welcome within 30 s".into()),
    };
    if registering.take().is_some() {
        counters.registered.fetch_add(1, Ordering::Relaxed);
    }
    let mut next_seq = acked_seq + 1;
    // Spread the fleet's reports and spool entries over their intervals.
    let offset = |every: Duration, rng: &mut StdRng| {
        Instant::now() + every.mul_f64(rng.random_range(0.0..1.0))
    };
    let (report_interval, spool_every) = (edge.report_interval, edge.spool_every);
    let mut reports = tokio::time::interval_at(offset(report_interval, rng), report_interval);
    let heartbeat_every = Duration::from_millis(heartbeat_ms.max(50));
    let mut heartbeats = tokio::time::interval_at(offset(heartbeat_every, rng), heartbeat_every);
    let mut spool = tokio::time::interval_at(offset(spool_every, rng), spool_every);
    for timer in [&mut reports, &mut heartbeats, &mut spool] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    // Heartbeats as the edge sends them (`edge/src/link.rs`): unsolicited pongs when the
    // welcome offers them, a ping every `ping_every`, and the link given up after
    // `silent_limit` without a frame from the locator.
    let silent_limit = heartbeat::silent_limit(report_interval);
    let ping_every = heartbeat::ping_every(report_interval);
    let mut last_heard = Instant::now();
    let mut last_ping = Instant::now();
    let mut share: f64 = rng.random_range(0.05..0.6);
    // The probe edge measures the report path: no spool writes queue ahead of its reports.
    let spooling = forced.is_none();
    let mut session = 0u64;
    loop {
        let message = tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = reports.tick() => {
                if let Some(forced) = forced.as_ref() {
                    share = *forced.borrow();
                } else {
                    share = (share + rng.random_range(-0.05..0.05)).clamp(0.01, 0.8);
                }
                send(&EdgeMessage::Report(load(share, rng)))
            }
            changed = async {
                match forced.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if !changed {
                    *forced = None;
                    continue;
                }
                share = forced.as_ref().map_or(share, |rx| *rx.borrow());
                send(&EdgeMessage::Report(load(share, rng)))
            }
            _ = heartbeats.tick() => {
                if last_heard.elapsed() > silent_limit {
                    return Err("locator silent".into());
                }
                if pong_heartbeats && last_ping.elapsed() < ping_every {
                    Message::Pong(Default::default())
                } else {
                    last_ping = Instant::now();
                    Message::Ping(Default::default())
                }
            }
            _ = spool.tick(), if spooling => {
                session += 1;
                let body = if session % 2 == 1 {
                    SpoolBody::SessionStarted { session_id: format!("{}-s{}", edge.id, session / 2) }
                } else {
                    SpoolBody::SessionEnded { session_id: format!("{}-s{}", edge.id, session / 2 - 1) }
                };
                let entry = SpoolEntry { seq: next_seq, at_unix_ms: crate::now_ms(), body };
                next_seq += 1;
                send(&EdgeMessage::Spool { entries: vec![entry] })
            }
            frame = ws.next() => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        match serde_json::from_str::<LocatorMessage>(&text) {
                            Ok(LocatorMessage::Ack { .. }) => {
                                counters.acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(LocatorMessage::Error { reason }) => {
                                return Err(format!("closed: {reason}"));
                            }
                            _ => {}
                        }
                        continue;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Err(format!("closed by the locator: {frame:?}"));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("link: {e}")),
                    None => return Err("link ended".into()),
                }
            }
        };
        counters.messages.fetch_add(1, Ordering::Relaxed);
        ws.send(message).await.map_err(|e| format!("send: {e}"))?;
    }
}

/// Whether locator `base` now sends region `probe` to the probe edge.
async fn probe_edge_picked(http: &reqwest::Client, base: &str) -> Option<bool> {
    let answer: serde_json::Value = http
        .get(format!("{base}/v1/locate?region={PROBE_REGION}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(answer["edge"]["id"] == PROBE_EDGE)
}

/// Flips the probe edge between idle and saturated `samples` times; returns for each flip
/// the time until the holding locator answered accordingly, and the time until the last
/// of the other locators did (ms).
async fn probe_latencies(
    http: &reqwest::Client,
    locators: &[String],
    forced: &watch::Sender<f64>,
    samples: usize,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let mut local = Vec::new();
    let mut replicas = Vec::new();
    let mut rng = StdRng::seed_from_u64(18);
    for i in 0..samples {
        let saturated = i % 2 == 0;
        let sent = Instant::now();
        forced.send_replace(if saturated { 1.0 } else { 0.1 });
        let waits = locators.iter().map(|base| async move {
            let deadline = sent + Duration::from_secs(10);
            loop {
                if probe_edge_picked(http, base).await == Some(!saturated) {
                    return Ok(sent.elapsed().as_secs_f64() * 1e3);
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{base} did not show the probe edge {} within 10 s",
                        if saturated { "saturated" } else { "idle" }
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let seen: Vec<Result<f64, String>> = futures_util::future::join_all(waits).await;
        let seen: Vec<f64> = seen.into_iter().collect::<Result<_, _>>()?;
        local.push(seen[0]);
        if let Some(last) = seen[1..].iter().copied().reduce(f64::max) {
            replicas.push(last);
        }
        // Apart, so the next flip does not ride on this one's snapshot.
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await;
    }
    Ok((local, replicas))
}

/// Client requests at `rate` per second for `window`: creates and joins of rooms, and
/// locates, from the regions' addresses.
async fn run_clients(
    http: &reqwest::Client,
    locators: &[String],
    rate: u32,
    window: Duration,
) -> (std::collections::BTreeMap<String, u64>, Vec<f64>) {
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = Instant::now() + window;
    let mut rng = StdRng::seed_from_u64(7);
    let mut tasks = Vec::new();
    let mut n = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        n += 1;
        let base = locators[n % locators.len()].clone();
        let address = CLIENT_ADDRESSES[rng.random_range(0..CLIENT_ADDRESSES.len())];
        let create = rng.random_bool(0.7);
        let key = rng.random_range(0..ROOM_KEYS);
        let http = http.clone();
        let statuses = statuses.clone();
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let request = if create {
                http.post(format!("{base}/v1/sessions"))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"key":"fleet-room-{key}"}}"#))
            } else {
                http.get(format!("{base}/v1/locate"))
            };
            let status = match request.header("x-forwarded-for", address).send().await {
                Ok(response) => response.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            let elapsed = started.elapsed().as_secs_f64() * 1e3;
            *statuses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(status)
                .or_insert(0) += 1;
            latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(elapsed);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let statuses = statuses.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let latencies = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (statuses, latencies)
}

async fn metrics_text(http: &reqwest::Client, base: &str) -> Result<String, String> {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| format!("{base}/metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("{base}/metrics: {e}"))
}

/// Runs the fleet; returns the report and the work folder when it is kept.
pub async fn run(options: FleetOptions) -> Result<(FleetReport, Option<PathBuf>), String> {
    if options.edges == 0 {
        return Err("--edges: at least 1".into());
    }
    // Each edge holds a socket here and one in its locator, with room for the clients.
    let needed = options.edges as u64 + 1_024;
    if let Some(limit) = open_files_limit()
        && limit < needed
    {
        return Err(format!(
            "{} edges need about {needed} open files, and this process may open {limit}: raise it (`ulimit -n {needed}`) or run fewer edges",
            options.edges
        ));
    }
    let work_dir = options.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("locus-loadtest-fleet-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| format!("cannot create {}: {e}", work_dir.display()))?;
    let config_path = work_dir.join("regions.yaml");
    std::fs::write(
        &config_path,
        regions_yaml(options.report_interval, options.heartbeat_interval),
    )
    .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    let mut topology = Topology::start(TopologyOptions {
        bin_dir: options.bin_dir.clone(),
        config_path,
        geoip: None,
        database: options.database.clone(),
        replicas: options.replicas.max(1),
        edges_per_region: 0,
        regions: Some(Vec::new()),
        capacity: CAPACITY,
        edge_linger: Duration::from_secs(10),
        edge_drain_deadline: Duration::from_secs(60),
        work_dir: work_dir.clone(),
    })
    .await?;
    let result = measure(&options, &topology).await;
    topology.shutdown();
    let kept = match &result {
        Ok(report) if report.ok && !options.keep && options.work_dir.is_none() => {
            let _ = std::fs::remove_dir_all(&work_dir);
            None
        }
        _ => Some(work_dir),
    };
    result.map(|report| (report, kept))
}

async fn measure(options: &FleetOptions, topology: &Topology) -> Result<FleetReport, String> {
    let locators = topology.locator_urls();
    let pids = topology.locator_pids();
    let addrs: Vec<SocketAddr> = locators
        .iter()
        .filter_map(|u| u.strip_prefix("http://")?.parse().ok())
        .collect();
    if addrs.len() != locators.len() {
        return Err(format!("unexpected locator URLs {locators:?}"));
    }
    let health = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen for the fleet's /healthz: {e}"))?;
    let health_addr = health.local_addr().map_err(|e| e.to_string())?;
    let health_task = tokio::spawn(serve_healthz(health));

    let counters = Arc::new(FleetCounters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (forced_tx, forced_rx) = watch::channel(0.1);
    let mut edges: Vec<SimEdge> = Vec::with_capacity(options.edges);
    let key = topology.edge_key.as_bytes();
    let make = |id: String, region: &str, locator: SocketAddr| SimEdge {
        credential: locus_protocol::edge_credential::derive(key, 1, region, &id),
        public_url: format!("http://{health_addr}/fleet/{id}"),
        region: region.to_string(),
        id,
        locator,
        report_interval: options.report_interval,
        spool_every: options.spool_every,
    };
    // The probe edge links to the first locator.
    edges.push(make(PROBE_EDGE.into(), PROBE_REGION, addrs[0]));
    for i in 1..options.edges {
        let (region, ..) = REGIONS[i % REGIONS.len()];
        edges.push(make(
            format!("{region}-{i}"),
            region,
            addrs[i % addrs.len()],
        ));
    }
    // Registration at a bounded pace, as a fleet restarting behind a load balancer would.
    let connecting = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(edges.len());
    let started = Instant::now();
    for (i, edge) in edges.into_iter().enumerate() {
        let permit = connecting
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let forced = (i == 0).then(|| forced_rx.clone());
        tasks.push(tokio::spawn(run_edge(
            edge,
            counters.clone(),
            forced,
            stop_rx.clone(),
            permit,
            i as u64,
        )));
    }
    let deadline = Instant::now()
        + Duration::from_secs(120)
        + Duration::from_millis(20 * options.edges as u64);
    while counters.registered.load(Ordering::Relaxed) < options.edges {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registered = counters.registered.load(Ordering::Relaxed);
    if registered < options.edges {
        let _ = stop_tx.send(true);
        return Err(format!(
            "{registered} of {} simulated edges registered ({} attempts failed; last: {})",
            options.edges,
            counters.register_retries.load(Ordering::Relaxed),
            counters
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "none".into())
        ));
    }
    let registration_s = started.elapsed().as_secs_f64();
    let register_retries = counters.register_retries.load(Ordering::Relaxed);
    eprintln!(
        "fleet: {registered} edges registered in {registration_s:.1} s ({register_retries} attempts retried); warming up {:?}",
        options.warmup
    );
    tokio::time::sleep(options.warmup).await;

    // Window 1: only the fleet talks to the locators.
    let messages_before = counters.messages.load(Ordering::Relaxed);
    let window_started = Instant::now();
    let cpu_edges = cpu_over(&pids, options.window).await;
    let fleet_messages_per_s = (counters.messages.load(Ordering::Relaxed) - messages_before) as f64
        / window_started.elapsed().as_secs_f64();
    eprintln!("fleet: edge-only window: locator CPU {cpu_edges:.3?} cores");

    // Report to snapshot (and to the other locators).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| e.to_string())?;
    let (mut local, mut lag) =
        probe_latencies(&http, &locators, &forced_tx, options.probes).await?;
    eprintln!("fleet: {} report-to-snapshot samples", local.len());

    // Window 2: clients.
    let mut before = Vec::new();
    for base in &locators {
        before.push(selection_buckets(&metrics_text(&http, base).await?));
    }
    let cpu_started: Vec<Option<f64>> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let clients_started = Instant::now();
    let (statuses, mut client_latencies) =
        run_clients(&http, &locators, options.request_rate, options.window).await;
    let clients_elapsed = clients_started.elapsed().as_secs_f64();
    let cpu_clients: Vec<f64> = pids
        .iter()
        .zip(cpu_started)
        .map(|(pid, b)| match (b, cpu_seconds(*pid)) {
            (Some(b), Some(a)) => (a - b) / clients_elapsed,
            _ => f64::NAN,
        })
        .collect();
    let mut selection: Vec<(f64, u64)> = Vec::new();
    for (base, before) in locators.iter().zip(&before) {
        let after = selection_buckets(&metrics_text(&http, base).await?);
        for (bound, count) in bucket_delta(before, &after) {
            match selection.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, c)) => *c += count,
                None => selection.push((bound, count)),
            }
        }
    }
    selection.sort_by(|a, b| a.0.total_cmp(&b.0));
    let rss: Vec<f64> = pids
        .iter()
        .map(|p| rss_mib(*p).unwrap_or(f64::NAN))
        .collect();
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    health_task.abort();

    let goals = options.goals.clone();
    let edge_cpu_share = cpu_edges.iter().copied().fold(0.0, f64::max);
    let selection_p99_us = bucket_quantile(&selection, 0.99).map(|s| s * 1e6);
    let selection_within_goal = share_within(&selection, goals.selection_p99_us / 1e6);
    let report_to_snapshot_p99_ms = percentile(&mut local, 0.99);
    let replica_lag_p99_ms = if locators.len() > 1 {
        percentile(&mut lag, 0.99)
    } else {
        None
    };
    let client_requests: u64 = statuses.values().sum();
    let mut checks = vec![
        Check {
            name: "edge traffic".into(),
            ok: edge_cpu_share < goals.edge_cpu_share,
            detail: format!(
                "{} edges reporting every {:?}: busiest locator {:.3} cores (goal < {})",
                options.edges, options.report_interval, edge_cpu_share, goals.edge_cpu_share
            ),
        },
        Check {
            name: "selection latency".into(),
            ok: selection_within_goal.is_some_and(|s| s >= 0.99),
            detail: format!(
                "{} selections: p99 ≈ {} µs, {} within {} µs (goal: p99 under it)",
                selection.last().map_or(0, |b| b.1),
                selection_p99_us.map_or("-".into(), |v| format!("{v:.1}")),
                selection_within_goal.map_or("-".into(), |v| format!("{:.2}%", v * 100.0)),
                goals.selection_p99_us
            ),
        },
        Check {
            name: "report to snapshot".into(),
            ok: report_to_snapshot_p99_ms.is_some_and(|v| v < goals.report_to_snapshot_p99_ms),
            detail: format!(
                "{} samples: p99 {} ms (goal < {} ms)",
                local.len(),
                report_to_snapshot_p99_ms.map_or("-".into(), |v| format!("{v:.1}")),
                goals.report_to_snapshot_p99_ms
            ),
        },
        Check {
            name: "no server errors".into(),
            ok: statuses
                .iter()
                .all(|(status, _)| !status.starts_with('5') && status != "error"),
            detail: format!("client answers by status: {statuses:?}"),
        },
        Check {
            name: "every link stayed up".into(),
            ok: counters.failures.load(Ordering::Relaxed) == 0,
            detail: format!(
                "{} links failed{}",
                counters.failures.load(Ordering::Relaxed),
                counters
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            ),
        },
    ];
    if locators.len() > 1 {
        checks.push(Check {
            name: "replica lag".into(),
            ok: replica_lag_p99_ms.is_some_and(|v| v < goals.replica_lag_p99_ms),
            detail: format!(
                "{} samples: a report on one locator seen by all {} within p99 {} ms (goal < {} ms)",
                lag.len(),
                locators.len(),
                replica_lag_p99_ms.map_or("-".into(), |v| format!("{v:.1}")),
                goals.replica_lag_p99_ms
            ),
        });
    }
    let ok = checks.iter().all(|c| c.ok);
    Ok(FleetReport {
        edges: options.edges,
        replicas: locators.len(),
        edge_cpu_share,
        selection_p99_us,
        report_to_snapshot_p99_ms,
        replica_lag_p99_ms,
        locator_rss_mib: rss.iter().copied().fold(0.0, f64::max),
        selection_p50_us: bucket_quantile(&selection, 0.5).map(|s| s * 1e6),
        selection_within_goal,
        selections: selection.last().map_or(0, |b| b.1),
        report_to_snapshot_p50_ms: percentile(&mut local, 0.5),
        replica_lag_p50_ms: if locators.len() > 1 {
            percentile(&mut lag, 0.5)
        } else {
            None
        },
        locator_cpu_edges_only: cpu_edges,
        locator_cpu_with_clients: cpu_clients,
        locator_rss_mib_each: rss,
        report_interval_ms: options.report_interval.as_millis() as u64,
        heartbeat_interval_ms: options.heartbeat_interval.map(|h| h.as_millis() as u64),
        fleet_messages_per_s,
        spool_entries_acked: counters.acked.load(Ordering::Relaxed),
        client_requests,
        client_requests_per_s: client_requests as f64 / clients_elapsed,
        client_statuses: statuses,
        client_p99_ms: percentile(&mut client_latencies, 0.99),
        registration_s,
        register_retries,
        link_failures: counters.failures.load(Ordering::Relaxed),
        last_link_error: counters
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        goals,
        checks,
        ok,
    })
}

/// The report for people.
pub fn terminal(report: &FleetReport) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} µs"));
    let mut out = format!(
        "loadtest fleet: {} edges reporting every {} ms, heartbeats every {}, {} locator(s)\n\
         locator CPU, edges only   {:.3?} cores (busiest {:.3})\n\
         locator CPU, with clients {:.3?} cores\n\
         locator memory            {:.1?} MiB\n\
         fleet messages            {:.0}/s (reports, heartbeats, spool), {} spool entries acknowledged\n\
         selection                 p50 {}, p99 {} over {} selections\n\
         report to snapshot        p50 {}, p99 {}\n\
         replica lag               p50 {}, p99 {}\n\
         clients                   {} requests ({:.0}/s), p99 {}, {:?}\n\n",
        report.edges,
        report.report_interval_ms,
        report
            .heartbeat_interval_ms
            .map_or("(the locator's default)".to_string(), |h| format!("{h} ms")),
        report.replicas,
        report.locator_cpu_edges_only,
        report.edge_cpu_share,
        report.locator_cpu_with_clients,
        report.locator_rss_mib_each,
        report.fleet_messages_per_s,
        report.spool_entries_acked,
        us(report.selection_p50_us),
        us(report.selection_p99_us),
        report.selections,
        ms(report.report_to_snapshot_p50_ms),
        ms(report.report_to_snapshot_p99_ms),
        ms(report.replica_lag_p50_ms),
        ms(report.replica_lag_p99_ms),
        report.client_requests,
        report.client_requests_per_s,
        ms(report.client_p99_ms),
        report.client_statuses,
    );
    out.push_str("goals:\n");
    for check in &report.checks {
        out.push_str(&format!(
            "  [{}] {}: {}\n",
            if check.ok { "ok" } else { "FAIL" },
            check.name,
            check.detail
        ));
    }
    out
}

/// Writes `fleet-<N>.json` into `out`; returns its path.
pub fn write_report(report: &FleetReport, out: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let path = out.join(format!("fleet-{}.json", report.edges));
    let bytes = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_cumulative_buckets() {
        let buckets = [
            (1e-6, 0),
            (2e-6, 50),
            (5e-6, 99),
            (1e-5, 100),
            (f64::INFINITY, 100),
        ];
        let p50 = bucket_quantile(&buckets, 0.5).expect("p50");
        assert!((p50 - 2e-6).abs() < 1e-12, "{p50}");
        let p99 = bucket_quantile(&buckets, 0.99).expect("p99");
        assert!((p99 - 5e-6).abs() < 1e-12, "{p99}");
        assert_eq!(share_within(&buckets, 5e-6), Some(0.99));
        assert_eq!(bucket_quantile(&[(1e-6, 0), (f64::INFINITY, 0)], 0.5), None);
        // In the +Inf bucket: unknown, not a number made up.
        assert_eq!(
            bucket_quantile(&[(1e-6, 1), (f64::INFINITY, 10)], 0.99),
            None
        );
    }

    #[test]
    fn buckets_are_read_from_the_metrics_text() {
        let text = "# TYPE locator_selection_seconds histogram\n\
            locator_selection_seconds_bucket{le=\"0.000001\"} 3\n\
            locator_selection_seconds_bucket{le=\"+Inf\"} 7\n\
            locator_selection_seconds_count 7\n";
        let buckets = selection_buckets(text);
        assert_eq!(buckets, vec![(1e-6, 3), (f64::INFINITY, 7)]);
        let earlier = vec![(1e-6, 1), (f64::INFINITY, 2)];
        assert_eq!(
            bucket_delta(&earlier, &buckets),
            vec![(1e-6, 2), (f64::INFINITY, 5)]
        );
    }

    #[test]
    fn cpu_and_memory_of_this_process_are_read() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some_and(|s| s >= 0.0));
        assert!(rss_mib(pid).is_some_and(|m| m > 0.0));
        assert!(open_files_limit().is_some_and(|l| l > 0));
    }

    #[test]
    fn the_regions_file_parses() {
        let yaml = regions_yaml(Duration::from_secs(1), None);
        let dir = std::env::temp_dir().join(format!("locus-fleet-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("regions.yaml");
        std::fs::write(&path, &yaml).expect("write");
        let config = locus_geo::config::Config::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        let config = config.expect("a valid regions file");
        assert_eq!(config.regions.len(), REGIONS.len() + 1);
    }
}
