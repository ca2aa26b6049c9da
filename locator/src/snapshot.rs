//! An immutable snapshot of the edge registry: what selection reads.
//!
//! The registry gives it its edges sorted by id (selection is deterministic for a seed,
//! and a join finds its session's edge by binary search), and it carries each region's
//! edges, built once per snapshot, so selection reads the client's region without
//! scanning the fleet: the region's edges, those of them that are active, its edges by
//! state, and its live [`RegionTally`] of the active edges with headroom.
//!
//! The registry rebuilds a snapshot when an edge joins or leaves, changes state or
//! registers again, and when the config is reloaded, and swaps it in whole; selection
//! never sees a half-updated registry and never takes the registry's lock. What changes
//! in between, each edge's load (its last report and the sessions assigned since), is a
//! [`Live`] value shared with the registry (see [`crate::load`]): a report is visible
//! to selection as soon as it is written, a burst between two reports spreads instead of
//! herding onto the edge that looked least loaded, and the region tallies follow both.

use std::sync::Arc;

use locus_geo::RegionIndex;
use locus_protocol::LoadReport;
use tokio::time::Instant;

use crate::edge_state::{EdgeState, EdgeStatus};
use crate::load::{Figures, Live, RegionTally};

/// One edge as selection sees it.
#[derive(Debug, Clone)]
pub struct EdgeView {
    pub id: Arc<str>,
    /// Its region in the config of the generation this snapshot belongs to.
    pub region: RegionIndex,
    pub public_url: Arc<str>,
    /// Sessions the edge says it can host (at least 1).
    pub capacity: u32,
    pub version: Arc<str>,
    /// Its status when the snapshot was built (a change of state builds a new one).
    pub status: EdgeStatus,
    /// Its load, live (shared with the registry and the other snapshots).
    pub live: Arc<Live>,
}

impl EdgeView {
    /// The last load report and the sessions assigned since, read together.
    pub fn figures(&self) -> Figures {
        self.live.figures()
    }

    /// The last load report, if any arrived since registration.
    pub fn load(&self) -> Option<LoadReport> {
        self.live.figures().load
    }

    /// Sessions assigned since the last report.
    pub fn pending_assignments(&self) -> u32 {
        self.live.figures().pending
    }

    /// Counts one more session assigned here.
    pub fn note_assignment(&self) {
        self.live.add_pending(1);
    }

    /// How long since the last report (live: reports do not rebuild the snapshot).
    pub fn report_age(&self, now: Instant) -> std::time::Duration {
        let at = self
            .live
            .reported_at()
            .map_or(self.status.last_report_at, |at| {
                at.max(self.status.last_report_at)
            });
        now.saturating_duration_since(at)
    }
}

/// One region's edges in a snapshot.
#[derive(Debug, Default)]
pub struct RegionEdges {
    /// Indices into the snapshot's edges, ascending.
    pub all: Vec<usize>,
    /// Those of them that are active (take new sessions, headroom permitting).
    pub active: Vec<usize>,
    /// Edges by state, in the order of [`EdgeState::ALL`].
    states: [u32; EdgeState::ALL.len()],
    /// The active edges with headroom, live.
    pub tally: Arc<RegionTally>,
}

impl RegionEdges {
    /// How many of its edges are in `state`.
    pub fn count(&self, state: EdgeState) -> u32 {
        self.states[state as usize]
    }
}

/// Every known edge at one moment.
#[derive(Debug)]
pub struct RegistrySnapshot {
    pub edges: Vec<EdgeView>,
    pub taken_at: Instant,
    /// Each region's edges (by region index).
    regions: Vec<RegionEdges>,
    /// `edges` are in id order (always, from the registry): found by binary search.
    sorted_by_id: bool,
}

impl RegistrySnapshot {
    /// The snapshot of `edges` (in id order from the registry; in any order from a test),
    /// taken now, with its index. Its edges' live loads count in its region tallies from
    /// now on (see [`crate::load`]): build a snapshot only to publish it.
    pub fn new(edges: Vec<EdgeView>) -> RegistrySnapshot {
        let sorted_by_id = edges.is_sorted_by(|a, b| a.id < b.id);
        let mut regions: Vec<RegionEdges> = Vec::new();
        for (i, edge) in edges.iter().enumerate() {
            if regions.len() <= edge.region.get() {
                regions.resize_with(edge.region.get() + 1, RegionEdges::default);
            }
            let region = &mut regions[edge.region.get()];
            let state = edge.status.state();
            region.all.push(i);
            region.states[state as usize] += 1;
            let tally = if state == EdgeState::Active {
                region.active.push(i);
                Some((region.tally.clone(), edge.capacity))
            } else {
                None
            };
            edge.live.count_in(tally);
        }
        RegistrySnapshot {
            edges,
            taken_at: Instant::now(),
            regions,
            sorted_by_id,
        }
    }

    /// An empty registry.
    pub fn empty() -> RegistrySnapshot {
        RegistrySnapshot::new(Vec::new())
    }

    /// The edge with this id.
    pub fn edge(&self, id: &str) -> Option<&EdgeView> {
        if self.sorted_by_id {
            let i = self.edges.binary_search_by(|e| (*e.id).cmp(id)).ok()?;
            Some(&self.edges[i])
        } else {
            self.edges.iter().find(|e| &*e.id == id)
        }
    }

    /// Indices into `edges` of the edges of `region`, ascending.
    pub fn in_region(&self, region: RegionIndex) -> &[usize] {
        self.regions
            .get(region.get())
            .map_or(&[], |r| r.all.as_slice())
    }

    /// The edges of `region` (none for a region without edges).
    pub fn region(&self, region: RegionIndex) -> &RegionEdges {
        static NONE: std::sync::LazyLock<RegionEdges> =
            std::sync::LazyLock::new(RegionEdges::default);
        self.regions.get(region.get()).unwrap_or(&NONE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge_state::EdgeStatus;

    fn view(id: &str, region: usize) -> EdgeView {
        EdgeView {
            id: id.into(),
            region: RegionIndex::for_tests(region),
            public_url: "http://edge".into(),
            capacity: 10,
            version: "t".into(),
            status: EdgeStatus::registered(Instant::now(), false, false),
            live: Live::new(None, 0),
        }
    }

    #[test]
    fn edges_are_found_by_id_in_id_order_or_not() {
        let sorted = RegistrySnapshot::new(vec![view("a", 1), view("b", 0), view("c", 1)]);
        let shuffled = RegistrySnapshot::new(vec![view("c", 1), view("a", 1), view("b", 0)]);
        for snapshot in [&sorted, &shuffled] {
            for id in ["a", "b", "c"] {
                assert_eq!(snapshot.edge(id).map(|e| &*e.id), Some(id));
            }
            assert!(snapshot.edge("d").is_none());
            assert!(snapshot.edge("").is_none());
        }
        let at = RegionIndex::for_tests;
        assert_eq!(sorted.in_region(at(1)), &[0, 2]);
        assert_eq!(shuffled.in_region(at(1)), &[0, 1]);
        assert!(sorted.in_region(at(7)).is_empty());
    }
}
