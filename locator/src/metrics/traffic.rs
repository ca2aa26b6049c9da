//! Where each region's clients were actually sent: a matrix of answer counters
//! (client region × serving region), for the admin page's "how much of its traffic goes
//! elsewhere".
//!
//! What counts: every answer that placed a client on an edge (`GET /v1/locate`,
//! `POST /v1/sessions` that created a session, and a room moved off an unavailable edge),
//! by the client's preferred region and the region of the edge it was given. Joins of
//! existing sessions are not placements and are not counted; neither is `explain`.
//!
//! The hot path is one relaxed atomic add. The page shows the share over a recent window:
//! cumulative counts are sampled (at most every [`SAMPLE_EVERY`], when a status is built)
//! and the window is the difference with the newest sample at least [`WINDOW`] old (or
//! the oldest one kept). The status says exactly how long the window it used is, so a
//! window that is shorter (just started) or longer (nobody looked for a while) is never
//! presented as "the last five minutes". Counts are per locator process and start again
//! when the locator restarts or its region list changes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use locus_geo::RegionIndex;
use tokio::time::Instant;

/// The window the page reports over.
pub const WINDOW: Duration = Duration::from_secs(300);

/// How often cumulative counts are sampled (at most).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Counters for one region list (`regions.len()²` cells, row = client region).
#[derive(Debug)]
/// The counts, one block per thread shard (see [`super::shard`]): worker
/// threads counting answers do not share cache lines.
struct Matrix {
    regions: Vec<String>,
    /// `SHARDS` blocks of `stride` counters; cell `client * n + served` of each.
    counts: Vec<AtomicU64>,
    stride: usize,
}

/// Counters per 128-byte cache line pair.
const LINE: usize = 16;

impl Matrix {
    fn new(regions: Vec<String>) -> Matrix {
        let n = regions.len();
        let stride = (n * n).div_ceil(LINE) * LINE;
        Matrix {
            regions,
            counts: (0..stride * super::SHARDS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            stride,
        }
    }

    fn add(&self, cell: usize) {
        let at = super::shard() * self.stride + cell;
        if let Some(count) = self.counts.get(at) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn read(&self) -> Vec<u64> {
        let n = self.regions.len();
        (0..n * n)
            .map(|cell| {
                self.counts
                    .iter()
                    .skip(cell)
                    .step_by(self.stride.max(1))
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum()
            })
            .collect()
    }
}

#[derive(Debug)]
struct Sample {
    at: Instant,
    counts: Vec<u64>,
}

/// Answer counters by (client region, serving region).
#[derive(Debug)]
pub struct Traffic {
    matrix: ArcSwap<Matrix>,
    samples: Mutex<VecDeque<Sample>>,
}

/// Answers over a window: `cells[client * n + served]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub regions: Vec<String>,
    /// How long the window actually is.
    pub length: Duration,
    pub cells: Vec<u64>,
}

impl Window {
    /// Answers to clients of `client` served by `served`.
    pub fn get(&self, client: usize, served: usize) -> u64 {
        let n = self.regions.len();
        if client >= n || served >= n {
            return 0;
        }
        self.cells[client * n + served]
    }

    /// Answers to clients of `client`, wherever served.
    pub fn answers_for(&self, client: usize) -> u64 {
        (0..self.regions.len()).map(|s| self.get(client, s)).sum()
    }

    /// Answers served by `served` to clients of other regions.
    pub fn absorbed_by(&self, served: usize) -> u64 {
        (0..self.regions.len())
            .filter(|&c| c != served)
            .map(|c| self.get(c, served))
            .sum()
    }
}

impl Traffic {
    pub fn new(regions: Vec<String>) -> Traffic {
        let matrix = Matrix::new(regions);
        let zeros = vec![0; matrix.regions.len() * matrix.regions.len()];
        Traffic {
            matrix: ArcSwap::from_pointee(matrix),
            samples: Mutex::new(VecDeque::from([Sample {
                at: Instant::now(),
                counts: zeros,
            }])),
        }
    }

    /// One answer: a client of region `client` was given an edge of region `served`
    /// (of the current config). Out-of-range indices (a config reload in between) are
    /// ignored.
    pub fn record(&self, client: RegionIndex, served: RegionIndex) {
        let (client, served) = (client.get(), served.get());
        let matrix = self.matrix.load();
        let n = matrix.regions.len();
        if client < n && served < n {
            matrix.add(client * n + served);
        }
    }

    /// The counts over the recent window for the region list `regions` (the current
    /// config's ids, in order). A different list than the counters were made for starts
    /// them again (a reload added, removed or reordered regions).
    pub fn window(&self, regions: &[String], now: Instant) -> Window {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let mut matrix = self.matrix.load_full();
        if matrix.regions != regions {
            let fresh = Arc::new(Matrix::new(regions.to_vec()));
            self.matrix.store(fresh.clone());
            matrix = fresh;
            samples.clear();
            samples.push_back(Sample {
                at: now,
                counts: vec![0; matrix.regions.len() * matrix.regions.len()],
            });
        }
        let current = matrix.read();
        if samples
            .back()
            .is_none_or(|s| now.saturating_duration_since(s.at) >= SAMPLE_EVERY)
        {
            samples.push_back(Sample {
                at: now,
                counts: current.clone(),
            });
        }
        // Keep one sample at least WINDOW old as the base; drop older ones.
        while samples.len() > 1
            && samples
                .get(1)
                .is_some_and(|s| now.saturating_duration_since(s.at) >= WINDOW)
        {
            samples.pop_front();
        }
        let (base_at, cells) = match samples.front() {
            Some(base) if base.counts.len() == current.len() => (
                base.at,
                current
                    .iter()
                    .zip(&base.counts)
                    .map(|(c, b)| c.saturating_sub(*b))
                    .collect(),
            ),
            _ => (now, vec![0; current.len()]),
        };
        Window {
            regions: matrix.regions.clone(),
            length: now.saturating_duration_since(base_at),
            cells,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn counts_answers_by_client_and_serving_region_over_the_window() {
        let regions = ids(&["a", "b", "c"]);
        let traffic = Traffic::new(regions.clone());
        traffic.record(RegionIndex::for_tests(0), RegionIndex::for_tests(0));
        traffic.record(RegionIndex::for_tests(0), RegionIndex::for_tests(1));
        traffic.record(RegionIndex::for_tests(0), RegionIndex::for_tests(1));
        traffic.record(RegionIndex::for_tests(2), RegionIndex::for_tests(1));
        traffic.record(RegionIndex::for_tests(7), RegionIndex::for_tests(0)); // out of range: ignored
        let w = traffic.window(&regions, Instant::now());
        assert_eq!(w.answers_for(0), 3);
        assert_eq!(w.get(0, 1), 2);
        assert_eq!(w.absorbed_by(1), 3);
        assert_eq!(w.answers_for(1), 0);
        assert_eq!(w.length, Duration::ZERO);

        // Later answers only: after the window has passed, old counts fall out.
        for _ in 0..40 {
            advance(SAMPLE_EVERY).await;
            let _ = traffic.window(&regions, Instant::now());
        }
        traffic.record(RegionIndex::for_tests(1), RegionIndex::for_tests(1));
        let w = traffic.window(&regions, Instant::now());
        assert_eq!(w.answers_for(0), 0, "{w:?}");
        assert_eq!(w.answers_for(1), 1);
        assert!(w.length >= WINDOW && w.length < WINDOW + SAMPLE_EVERY * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_unobserved_gap_is_reported_as_it_is() {
        let regions = ids(&["a", "b"]);
        let traffic = Traffic::new(regions.clone());
        traffic.record(RegionIndex::for_tests(0), RegionIndex::for_tests(1));
        advance(Duration::from_secs(3600)).await;
        let w = traffic.window(&regions, Instant::now());
        assert_eq!(w.get(0, 1), 1);
        assert_eq!(w.length, Duration::from_secs(3600), "the real window");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_region_list_starts_the_counts_again() {
        let traffic = Traffic::new(ids(&["a", "b"]));
        traffic.record(RegionIndex::for_tests(0), RegionIndex::for_tests(1));
        let w = traffic.window(&ids(&["b", "a"]), Instant::now());
        assert_eq!(w.cells, vec![0; 4]);
        traffic.record(RegionIndex::for_tests(1), RegionIndex::for_tests(0));
        let w = traffic.window(&ids(&["b", "a"]), Instant::now());
        assert_eq!(w.get(1, 0), 1);
        assert_eq!(w.regions, ids(&["b", "a"]));
    }
}
