//! An edge's load: the score of its figures, and the live value that holds them.
//!
//! An edge's load changes with every report (each edge, every report interval) and with
//! every session assigned to it, far more often than anything else about it. So it is not
//! copied into registry snapshots: each edge has one [`Live`] value, shared by its
//! registry entry and every snapshot that holds the edge, and a report or an assignment
//! writes it in place, visible to selection at once, without a new snapshot.
//!
//! Selection must know, per region, how many active edges have headroom and their total
//! headroom without reading every edge. Each snapshot therefore has a [`RegionTally`] per
//! region, and each active edge's [`Live`] counts its own share (with headroom or not,
//! and how much) in the tally of its region in the newest snapshot built: whenever its
//! load or its pending assignments change, it moves its share there under its own lock,
//! so a tally always equals the sum of the current shares of its edges (the property
//! test `the_tallies_equal_a_recount` in `tests/selection.rs` checks it against a
//! recount). Pending assignments count in the share as they count in the score: each
//! assignment lowers the edge's headroom in the tally at once, and the next report
//! (whose session count includes them) resets them. A snapshot that is no longer the
//! newest keeps the tallies of its time: its edges count in the newest one.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use locus_protocol::LoadReport;
use serde::Serialize;
use tokio::time::Instant;

/// CPU fraction (of the whole machine) that counts as full. Above ~90% latency of a
/// real-time relay climbs steeply (run queue, GC-free but cache- and scheduler-bound), so
/// an edge at 90% has no room for another session even if its session count says it has.
pub const CPU_FULL: f64 = 0.9;

/// Event-loop lag, in milliseconds, that counts as full. Lag is the delay every relayed
/// message suffers on top of the network; 200 ms is where conversation and cursor
/// presence start to feel broken, so an edge lagging that much is saturated.
pub const LAG_FULL_MS: f64 = 200.0;

/// Open client connections per unit of session capacity that count as full. Capacity is
/// declared in sessions; sessions hold up to about ten participants (pair programming is
/// 2, calls and watch parties more), so `capacity * 10` connections is a full edge even
/// when it hosts fewer, larger sessions than its capacity.
pub const CONNECTIONS_PER_SESSION: f64 = 10.0;

/// The dimension of an edge's load that sets its score (the largest; ties go to the
/// first in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Bottleneck {
    Sessions,
    Cpu,
    Lag,
    Connections,
    Bitrate,
}

impl Bottleneck {
    pub fn as_str(self) -> &'static str {
        match self {
            Bottleneck::Sessions => "sessions",
            Bottleneck::Cpu => "cpu",
            Bottleneck::Lag => "lag",
            Bottleneck::Connections => "connections",
            Bottleneck::Bitrate => "bitrate",
        }
    }
}

/// Each dimension of an edge's load against what counts as full (1.0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Utilisation {
    pub sessions: f64,
    pub cpu: f64,
    pub lag: f64,
    pub connections: f64,
    /// The busier direction of the forwarded WebRTC bitrate against `max_bitrate`; 0
    /// when the edge names no bitrate cap.
    pub bitrate: f64,
}

impl Utilisation {
    /// The score: the largest dimension.
    pub fn score(&self) -> f64 {
        self.sessions
            .max(self.cpu)
            .max(self.lag)
            .max(self.connections)
            .max(self.bitrate)
    }

    /// The dimension that sets the score.
    pub fn bottleneck(&self) -> Bottleneck {
        let mut best = (Bottleneck::Sessions, self.sessions);
        for (b, x) in [
            (Bottleneck::Cpu, self.cpu),
            (Bottleneck::Lag, self.lag),
            (Bottleneck::Connections, self.connections),
            (Bottleneck::Bitrate, self.bitrate),
        ] {
            // NaN never wins (figures are sanitised, this is belt and braces).
            if x > best.1 {
                best = (b, x);
            }
        }
        best.0
    }
}

/// A reported figure as a usable non-negative number: NaN and negatives (a buggy edge)
/// count as 0; +infinity stays (it saturates the edge).
fn figure(x: f32) -> f64 {
    let x = f64::from(x);
    if x > 0.0 { x } else { 0.0 }
}

/// Every dimension of the load of an edge of `capacity` (0 counts as 1) that reported
/// `load` and was assigned `pending` sessions since (the rules: `selection::score`).
pub fn utilisation_of(capacity: u32, load: Option<&LoadReport>, pending: u32) -> Utilisation {
    let capacity = f64::from(capacity.max(1));
    let (reported_sessions, cpu, lag_ms, connections, bitrate) = match load {
        Some(l) => (
            l.sessions,
            figure(l.cpu),
            figure(l.lag_ms),
            l.connections,
            match l.max_bitrate {
                // u64 -> f64 rounds above 2^53 bits/s, far beyond any real figure.
                Some(max) if max > 0 => l.bitrate_in.max(l.bitrate_out) as f64 / max as f64,
                _ => 0.0,
            },
        ),
        None => (0, 0.0, 0.0, 0, 0.0),
    };
    Utilisation {
        sessions: (f64::from(reported_sessions) + f64::from(pending)) / capacity,
        cpu: cpu / CPU_FULL,
        lag: lag_ms / LAG_FULL_MS,
        connections: f64::from(connections) / (capacity * CONNECTIONS_PER_SESSION),
        bitrate,
    }
}

/// `1.0 - score`, floored at 0.
pub fn headroom_of(score: f64) -> f64 {
    (1.0 - score).max(0.0)
}

/// What one read of a [`Live`] saw: both figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// The last load report, if any arrived since registration.
    pub load: Option<LoadReport>,
    /// Sessions assigned since that report.
    pub pending: u32,
}

/// Headroom in a tally is counted in units of 2^-32: integers add and subtract exactly,
/// so a tally never drifts from the sum of its shares however many updates it takes (a
/// float sum would), and headrooms such as 0.75 come back exact.
const HEADROOM_UNIT: f64 = 4_294_967_296.0;

/// What one edge counts in its region's tally.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Share {
    with_headroom: bool,
    /// In [`HEADROOM_UNIT`]s.
    headroom: u64,
}

impl Share {
    fn of(capacity: u32, figures: &Figures) -> Share {
        let score = utilisation_of(capacity, figures.load.as_ref(), figures.pending).score();
        let headroom = headroom_of(score);
        Share {
            with_headroom: headroom > 0.0,
            // Saturating float-to-int: headroom is within [0, 1].
            headroom: (headroom * HEADROOM_UNIT) as u64,
        }
    }
}

/// The active edges of one region with headroom, kept as their loads change (module
/// documentation): how many, and their total headroom.
#[derive(Debug, Default)]
pub struct RegionTally {
    with_headroom: AtomicU32,
    headroom: AtomicU64,
}

impl RegionTally {
    /// Active edges with headroom (score under 1).
    pub fn with_headroom(&self) -> u32 {
        self.with_headroom.load(Ordering::Relaxed)
    }

    /// The sum of their headroom.
    pub fn headroom(&self) -> f64 {
        self.headroom.load(Ordering::Relaxed) as f64 / HEADROOM_UNIT
    }

    /// Replaces one edge's share `old` by `new`. Wrapping arithmetic: a share leaving
    /// adds its two's complement, and the sum of the shares is never below zero.
    fn swap(&self, old: Share, new: Share) {
        match (old.with_headroom, new.with_headroom) {
            (false, true) => {
                self.with_headroom.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.with_headroom.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if new.headroom != old.headroom {
            self.headroom
                .fetch_add(new.headroom.wrapping_sub(old.headroom), Ordering::Relaxed);
        }
    }
}

/// One edge's load, live: shared by its registry entry and every snapshot holding it
/// (module documentation).
#[derive(Debug, Default)]
pub struct Live {
    cell: Mutex<Cell>,
}

#[derive(Debug, Default)]
struct Cell {
    figures: Figures,
    /// When the last report was written (by the edge, or by the locator that holds it),
    /// if one arrived since the edge's snapshot view was made.
    reported_at: Option<Instant>,
    /// The tally of the edge's region in the newest snapshot, while it is active there;
    /// with its capacity as that snapshot has it.
    counted_in: Option<(Arc<RegionTally>, u32)>,
    /// What it counts there now.
    share: Share,
}

impl Cell {
    /// Brings the edge's share in its tally up to date with its figures.
    fn recount(&mut self) {
        let Some((tally, capacity)) = &self.counted_in else {
            return;
        };
        let new = Share::of(*capacity, &self.figures);
        let old = std::mem::replace(&mut self.share, new);
        tally.swap(old, new);
    }
}

impl Live {
    /// A live load with these figures, counted nowhere yet.
    pub fn new(load: Option<LoadReport>, pending: u32) -> Arc<Live> {
        Arc::new(Live {
            cell: Mutex::new(Cell {
                figures: Figures { load, pending },
                ..Cell::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Cell> {
        self.cell.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The load and pending assignments, read together.
    pub fn figures(&self) -> Figures {
        self.lock().figures
    }

    /// When the last report was written, if one arrived since the edge's snapshot view
    /// was made (the view's status has the time of the one before).
    pub fn reported_at(&self) -> Option<Instant> {
        self.lock().reported_at
    }

    /// A new report (or none, on registration): the pending assignments are in its
    /// session count now (or void), so they reset.
    pub fn report(&self, load: Option<LoadReport>, at: Instant) {
        let mut cell = self.lock();
        cell.figures = Figures { load, pending: 0 };
        cell.reported_at = Some(at);
        cell.recount();
    }

    /// A mirrored report, as the edge's holder published it: `fresh` when it is a newer
    /// report than the one here (the pending assignments reset), else the same one again.
    pub fn mirror(&self, load: Option<LoadReport>, fresh: bool, written: Instant) {
        let mut cell = self.lock();
        cell.figures.load = load;
        if fresh {
            cell.figures.pending = 0;
        }
        cell.reported_at = Some(written);
        cell.recount();
    }

    /// `n` more sessions assigned since the last report.
    pub fn add_pending(&self, n: u32) {
        let mut cell = self.lock();
        cell.figures.pending = cell.figures.pending.saturating_add(n);
        cell.recount();
    }

    /// Counts the edge in `tally` from now on (an active edge of a new snapshot, with its
    /// capacity there), or nowhere (`None`: not active, or its region is not in the
    /// snapshot's config). The tally it counted in before belongs to an older snapshot.
    pub fn count_in(&self, tally: Option<(Arc<RegionTally>, u32)>) {
        let mut cell = self.lock();
        cell.counted_in = tally;
        cell.share = Share::default();
        cell.recount();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sessions: u32) -> Option<LoadReport> {
        Some(LoadReport {
            sessions,
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_tally_follows_reports_assignments_and_moves() {
        let tally = Arc::new(RegionTally::default());
        let a = Live::new(report(25), 0);
        let b = Live::new(None, 0);
        a.count_in(Some((tally.clone(), 100)));
        b.count_in(Some((tally.clone(), 100)));
        assert_eq!((tally.with_headroom(), tally.headroom()), (2, 1.75));
        a.add_pending(25);
        assert_eq!(tally.headroom(), 1.5, "pending assignments count");
        a.report(report(100), Instant::now());
        assert_eq!((tally.with_headroom(), tally.headroom()), (1, 1.0));
        assert_eq!(a.figures().pending, 0, "a report resets them");
        a.mirror(report(50), false, Instant::now());
        b.add_pending(50);
        assert_eq!((tally.with_headroom(), tally.headroom()), (2, 1.0));
        // Counted in a newer snapshot's tally: the old one is left as it was.
        let newer = Arc::new(RegionTally::default());
        b.count_in(Some((newer.clone(), 100)));
        a.count_in(None);
        b.add_pending(25);
        assert_eq!((newer.with_headroom(), newer.headroom()), (1, 0.25));
        assert_eq!((tally.with_headroom(), tally.headroom()), (2, 1.0));
        a.add_pending(1);
        assert_eq!(newer.with_headroom(), 1, "not active: counted nowhere");
    }
}
