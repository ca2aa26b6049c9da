//! An immutable snapshot of the edge registry: what selection reads.
//!
//! The registry gives it its edges sorted by id (selection is deterministic for a seed,
//! and a join finds its session's edge by binary search), and it carries each region's
//! edges, built once per snapshot, so selection reads the client's region without
//! scanning the fleet. The registry rebuilds snapshots often (see `crate::registry`), so
//! building one costs a walk of the edges and nothing per edge beyond it (no hashing, no
//! sort).
//!
//! The registry rebuilds a snapshot on every change (registration, report, state change)
//! and swaps it in whole; selection never sees a half-updated registry and never takes a
//! lock. The one live value inside is each edge's count of sessions assigned since its
//! last report (an atomic shared with the registry), so a burst between two reports
//! spreads instead of herding onto the edge that looked least loaded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use locus_geo::RegionIndex;
use locus_protocol::LoadReport;
use tokio::time::Instant;

use crate::edge_state::EdgeStatus;

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
    pub status: EdgeStatus,
    /// The last load report, if any arrived since registration.
    pub load: Option<LoadReport>,
    /// Sessions assigned to this edge since its last report (live, shared).
    pub assigned_since_report: Arc<AtomicU32>,
}

impl EdgeView {
    /// Sessions assigned since the last report.
    pub fn pending_assignments(&self) -> u32 {
        self.assigned_since_report.load(Ordering::Relaxed)
    }

    /// Counts one more session assigned here.
    pub fn note_assignment(&self) {
        self.assigned_since_report.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every known edge at one moment.
#[derive(Debug, Clone)]
pub struct RegistrySnapshot {
    pub edges: Vec<EdgeView>,
    pub taken_at: Instant,
    /// Indices into `edges` of each region's edges, ascending (by region index).
    by_region: Vec<Vec<usize>>,
    /// `edges` are in id order (always, from the registry): found by binary search.
    sorted_by_id: bool,
}

impl RegistrySnapshot {
    /// The snapshot of `edges` (in id order from the registry; in any order from a test),
    /// taken now, with its index.
    pub fn new(edges: Vec<EdgeView>) -> RegistrySnapshot {
        let sorted_by_id = edges.is_sorted_by(|a, b| a.id < b.id);
        let mut by_region: Vec<Vec<usize>> = Vec::new();
        for (i, edge) in edges.iter().enumerate() {
            if by_region.len() <= edge.region.get() {
                by_region.resize_with(edge.region.get() + 1, Vec::new);
            }
            by_region[edge.region.get()].push(i);
        }
        RegistrySnapshot {
            edges,
            taken_at: Instant::now(),
            by_region,
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
        self.by_region.get(region.get()).map_or(&[], Vec::as_slice)
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
            load: None,
            assigned_since_report: Arc::default(),
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
