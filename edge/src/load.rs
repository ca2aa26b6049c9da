//! Load figures read from the running process, and the sampler that reports and spools
//! them.
//!
//! - **CPU**: the process's user + system time from `/proc/self/stat` (fields `utime`
//!   and `stime`, in clock ticks), as a delta over the wall time since the previous
//!   sample, divided by the cores available to the process
//!   (`std::thread::available_parallelism`): 0.0 idle .. 1.0 every core busy. Clock
//!   ticks are taken as `USER_HZ` = 100, which is what Linux exposes to user space on
//!   every mainstream architecture (reading `sysconf(_SC_CLK_TCK)` would need `libc` and
//!   `unsafe`). Elsewhere than Linux the figure is 0 (logged once).
//! - **Event-loop lag**: a task sleeps [`LAG_TICK`] again and again; how late each wake-up
//!   is (its overshoot) is the time a ready task waits for a worker thread. The report
//!   carries the largest overshoot since the previous sample, in milliseconds.
//! - **Connections and sessions**: the hub's counters.
//! - **WebRTC**: peers open now, and the media plane's counters (RTP payload bytes and
//!   packets, `locus` data-channel bytes and messages, each way) as rates over the wall
//!   time since the previous sample: `bitrate_in`/`bitrate_out` in bits/s,
//!   `packets_in_per_s`/`packets_out_per_s`. With `max_bitrate` (`--max-bitrate`) the
//!   locator weighs them against the edge's bitrate capacity. They are left out of the
//!   report while zero (see the protocol crate's compatibility rule).
//!
//! The sampler takes one sample per report interval (the locator's `report_interval`
//! from `Welcome`, 2 s until one arrives), publishes it for the link to send as a
//! `Report`, and spools it as a metrics sample, so samples taken while the locator is
//! unreachable are relayed later like audit entries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use locus_protocol::LoadReport;

use crate::hub::Hub;
use crate::media::{Media, MediaSnapshot};
use crate::spool::Spool;
use tokio::sync::watch;
use tokio::time::Instant;

/// Period of the lag-measuring task.
pub const LAG_TICK: Duration = Duration::from_millis(100);

/// Clock ticks per second of `/proc/self/stat` times (Linux `USER_HZ`).
pub const USER_HZ: f64 = 100.0;

/// Report interval used until the locator says otherwise.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// CPU time of this process in clock ticks (`utime + stime`), or `None` where
/// `/proc/self/stat` cannot be read.
pub fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_ticks(&stat)
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so utime (14) is 11, stime (15) is 12.
    let mut fields = after.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Measures CPU and lag; shared by the sampler and the lag task.
#[derive(Debug)]
pub struct LoadMeter {
    /// Largest lag since the last sample, in microseconds.
    lag_max_us: AtomicU64,
    cpu: std::sync::Mutex<CpuClock>,
    cores: f64,
    /// Report interval in milliseconds (set from `Welcome`).
    interval_ms: AtomicU64,
    latest: watch::Sender<Option<LoadReport>>,
    /// The media counters at the previous sample, for rates.
    media: std::sync::Mutex<(Instant, MediaSnapshot)>,
    /// `--max-bitrate`, sent with every report.
    max_bitrate: Option<u64>,
}

#[derive(Debug)]
struct CpuClock {
    ticks: Option<u64>,
    at: Instant,
}

impl Default for LoadMeter {
    fn default() -> Self {
        LoadMeter::new()
    }
}

/// WebRTC figures of one sample (rates since the previous one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcRates {
    pub peers: u32,
    pub bitrate_in: u64,
    pub bitrate_out: u64,
    pub packets_in_per_s: u32,
    pub packets_out_per_s: u32,
}

/// Rates between two readings of the media counters `seconds` apart (counters only grow;
/// a smaller one reads as 0).
pub fn rtc_rates(before: &MediaSnapshot, after: &MediaSnapshot, seconds: f64) -> RtcRates {
    let per_second = |a: u64, b: u64| {
        if seconds > 0.0 {
            b.saturating_sub(a) as f64 / seconds
        } else {
            0.0
        }
    };
    let bytes_in = per_second(
        before.bytes_in + before.data_in,
        after.bytes_in + after.data_in,
    );
    let bytes_out = per_second(
        before.bytes_out + before.data_out,
        after.bytes_out + after.data_out,
    );
    let packets_in = per_second(
        before.packets_in + before.messages_in,
        after.packets_in + after.messages_in,
    );
    let packets_out = per_second(
        before.packets_out + before.messages_out,
        after.packets_out + after.messages_out,
    );
    RtcRates {
        peers: u32::try_from(after.peers).unwrap_or(u32::MAX),
        bitrate_in: (bytes_in * 8.0).round() as u64,
        bitrate_out: (bytes_out * 8.0).round() as u64,
        packets_in_per_s: packets_in.round() as u32,
        packets_out_per_s: packets_out.round() as u32,
    }
}

impl LoadMeter {
    pub fn new() -> LoadMeter {
        LoadMeter::with_max_bitrate(None)
    }

    /// A meter whose reports carry the edge's bitrate capacity (`--max-bitrate`).
    pub fn with_max_bitrate(max_bitrate: Option<u64>) -> LoadMeter {
        let ticks = process_cpu_ticks();
        if ticks.is_none() {
            tracing::warn!("cannot read /proc/self/stat: the CPU figure in load reports is 0");
        }
        LoadMeter {
            lag_max_us: AtomicU64::new(0),
            cpu: std::sync::Mutex::new(CpuClock {
                ticks,
                at: Instant::now(),
            }),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
            interval_ms: AtomicU64::new(DEFAULT_REPORT_INTERVAL.as_millis() as u64),
            latest: watch::channel(None).0,
            media: std::sync::Mutex::new((Instant::now(), MediaSnapshot::default())),
            max_bitrate,
        }
    }

    /// Records one lag observation.
    pub fn note_lag(&self, lag: Duration) {
        self.lag_max_us.fetch_max(
            lag.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// CPU fraction since the previous call (0.0..=1.0).
    pub fn sample_cpu(&self) -> f32 {
        let now = Instant::now();
        let ticks = process_cpu_ticks();
        let mut clock = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
        let wall = now.duration_since(clock.at).as_secs_f64();
        let fraction = match (clock.ticks, ticks) {
            (Some(before), Some(after)) if wall > 0.0 => {
                (after.saturating_sub(before) as f64 / USER_HZ) / (wall * self.cores)
            }
            _ => 0.0,
        };
        clock.ticks = ticks;
        clock.at = now;
        fraction.clamp(0.0, 1.0) as f32
    }

    /// Largest lag since the previous call, in milliseconds.
    pub fn take_lag_ms(&self) -> f32 {
        self.lag_max_us.swap(0, Ordering::Relaxed) as f32 / 1000.0
    }

    /// WebRTC rates since the previous call, from the media plane's counters now.
    pub fn sample_rtc(&self, now: MediaSnapshot) -> RtcRates {
        let at = Instant::now();
        let mut previous = self.media.lock().unwrap_or_else(|p| p.into_inner());
        let rates = rtc_rates(
            &previous.1,
            &now,
            at.duration_since(previous.0).as_secs_f64(),
        );
        *previous = (at, now);
        rates
    }

    /// A full sample.
    pub fn sample(&self, connections: u32, sessions: u32, media: MediaSnapshot) -> LoadReport {
        let rtc = self.sample_rtc(media);
        LoadReport {
            cpu: self.sample_cpu(),
            lag_ms: self.take_lag_ms(),
            connections,
            sessions,
            rtc_peers: rtc.peers,
            bitrate_in: rtc.bitrate_in,
            bitrate_out: rtc.bitrate_out,
            packets_in_per_s: rtc.packets_in_per_s,
            packets_out_per_s: rtc.packets_out_per_s,
            max_bitrate: self.max_bitrate,
        }
    }

    /// The report interval in use.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed).max(100))
    }

    /// Sets the report interval (from the locator's `Welcome`).
    pub fn set_interval(&self, interval: Duration) {
        self.interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }

    /// The latest sample, changing at every sample.
    pub fn subscribe(&self) -> watch::Receiver<Option<LoadReport>> {
        self.latest.subscribe()
    }

    /// Publishes a sample.
    pub fn publish(&self, report: LoadReport) {
        self.latest.send_replace(Some(report));
    }
}

/// Measures event-loop lag forever.
pub async fn run_lag_ticker(meter: Arc<LoadMeter>) {
    loop {
        let before = Instant::now();
        tokio::time::sleep(LAG_TICK).await;
        meter.note_lag(before.elapsed().saturating_sub(LAG_TICK));
    }
}

/// Takes a sample every report interval of the hub's counters and the media plane's:
/// published for the link (`Report`) and spooled as a metrics sample.
pub async fn run_sampler(meter: Arc<LoadMeter>, hub: Arc<Hub>, media: Arc<Media>, spool: Spool) {
    loop {
        tokio::time::sleep(meter.interval()).await;
        let sessions = u32::try_from(hub.session_count()).unwrap_or(u32::MAX);
        let report = meter.sample(hub.connections(), sessions, media.snapshot());
        meter.publish(report);
        if !spool.record_metrics(report) {
            tracing::debug!("metrics sample not spooled (spool at half its bound or busy)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_awkward_names() {
        let line = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_cpu_ticks(line), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn cpu_reflects_real_work() {
        let meter = LoadMeter::new();
        meter.sample_cpu();
        // Burn CPU on this thread for a while: the figure must rise above zero.
        let start = std::time::Instant::now();
        let mut x: u64 = 1;
        while start.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let busy = meter.sample_cpu();
        assert!(busy > 0.0, "busy CPU reads {busy}");
        assert!(busy <= 1.0);
    }

    #[test]
    fn rtc_rates_are_per_second_over_the_interval() {
        let before = MediaSnapshot {
            peers: 2,
            bytes_in: 1_000,
            packets_in: 10,
            data_in: 500,
            messages_in: 5,
            ..MediaSnapshot::default()
        };
        let after = MediaSnapshot {
            peers: 3,
            bytes_in: 21_000,
            packets_in: 110,
            data_in: 5_500,
            messages_in: 105,
            bytes_out: 50_000,
            packets_out: 400,
            ..MediaSnapshot::default()
        };
        let rates = rtc_rates(&before, &after, 2.0);
        assert_eq!(
            rates,
            RtcRates {
                peers: 3,
                bitrate_in: (20_000 + 5_000) * 8 / 2,
                bitrate_out: 50_000 * 8 / 2,
                packets_in_per_s: (100 + 100) / 2,
                packets_out_per_s: 400 / 2,
            }
        );
        // No time elapsed, or counters that went back: no rate, no panic.
        assert_eq!(rtc_rates(&before, &after, 0.0).bitrate_in, 0);
        assert_eq!(rtc_rates(&after, &before, 1.0).bitrate_out, 0);
    }

    #[test]
    fn lag_is_the_largest_overshoot_and_resets() {
        let meter = LoadMeter::new();
        meter.note_lag(Duration::from_millis(3));
        meter.note_lag(Duration::from_millis(12));
        meter.note_lag(Duration::from_millis(5));
        assert_eq!(meter.take_lag_ms(), 12.0);
        assert_eq!(meter.take_lag_ms(), 0.0);
    }

    #[test]
    fn a_blocked_runtime_shows_as_lag() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let meter = Arc::new(LoadMeter::new());
        runtime.block_on(async {
            let ticker = tokio::spawn(run_lag_ticker(meter.clone()));
            tokio::task::yield_now().await;
            // Block the only worker thread for 300 ms.
            std::thread::sleep(Duration::from_millis(300));
            // Let the ticker wake (late) and record it.
            tokio::time::sleep(LAG_TICK * 2).await;
            ticker.abort();
        });
        let lag = meter.take_lag_ms();
        assert!(lag >= 150.0, "lag after a 300 ms block reads {lag} ms");
    }
}
