//! An immutable snapshot of the edge registry: what selection reads.
//!
//! The registry rebuilds a snapshot on every change (registration, report, state change)
//! and swaps it in whole; selection never sees a half-updated registry and never takes a
//! lock. The one live value inside is each edge's count of sessions assigned since its
//! last report (an atomic shared with the registry), so a burst between two reports
//! spreads instead of herding onto the edge that looked least loaded.

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
}

impl RegistrySnapshot {
    /// An empty registry.
    pub fn empty() -> RegistrySnapshot {
        RegistrySnapshot {
            edges: Vec::new(),
            taken_at: Instant::now(),
        }
    }

    /// The edge with this id.
    pub fn edge(&self, id: &str) -> Option<&EdgeView> {
        self.edges.iter().find(|e| &*e.id == id)
    }
}
