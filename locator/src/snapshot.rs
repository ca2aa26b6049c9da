//! An immutable snapshot of the edge registry: what selection reads.
//!
//! It carries two indices built once per snapshot: each region's edges, so selection
//! reads the client's region without scanning the fleet, and edges by id, so a join finds
//! its session's edge without a scan.
//!
//! The registry rebuilds a snapshot on every change (registration, report, state change)
//! and swaps it in whole; selection never sees a half-updated registry and never takes a
//! lock. The one live value inside is each edge's count of sessions assigned since its
//! last report (an atomic shared with the registry), so a burst between two reports
//! spreads instead of herding onto the edge that looked least loaded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use locus_protocol::LoadReport;
use tokio::time::Instant;

use crate::edge_state::EdgeStatus;

/// One edge as selection sees it.
#[derive(Debug, Clone)]
pub struct EdgeView {
    pub id: Arc<str>,
    /// Index into the config's regions.
    pub region: usize,
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
    by_id: HashMap<Arc<str>, usize>,
}

impl RegistrySnapshot {
    /// The snapshot of `edges`, taken now, with its indices.
    pub fn new(edges: Vec<EdgeView>) -> RegistrySnapshot {
        let mut by_region: Vec<Vec<usize>> = Vec::new();
        let mut by_id = HashMap::with_capacity(edges.len());
        for (i, edge) in edges.iter().enumerate() {
            if by_region.len() <= edge.region {
                by_region.resize_with(edge.region + 1, Vec::new);
            }
            by_region[edge.region].push(i);
            by_id.insert(edge.id.clone(), i);
        }
        RegistrySnapshot {
            edges,
            taken_at: Instant::now(),
            by_region,
            by_id,
        }
    }

    /// An empty registry.
    pub fn empty() -> RegistrySnapshot {
        RegistrySnapshot::new(Vec::new())
    }

    /// The edge with this id.
    pub fn edge(&self, id: &str) -> Option<&EdgeView> {
        self.by_id.get(id).map(|&i| &self.edges[i])
    }

    /// Indices into `edges` of the edges of `region`, ascending.
    pub fn in_region(&self, region: usize) -> &[usize] {
        self.by_region.get(region).map_or(&[], Vec::as_slice)
    }
}
