//! Several locators on one Postgres database: each routes with every edge's state and
//! load, whichever locator holds the edge's websocket.
//!
//! Design (write-through with change notifications):
//!
//! - **Edge state.** The locator an edge registers with *claims* it
//!   ([`ClusterStore::claim_edge`], a row in `edge_live` with a
//!   rev from a sequence) and from then on publishes the edge's liveness, draining flag and
//!   last load report after every report or state change ([`publish_loop`](crate::cluster_sync::publish_loop), batched every
//!   [`PUBLISH_COALESCE`]), with a `NOTIFY locus_edges` in the same transaction. The others
//!   re-read the rows named ([`follow_loop`](crate::cluster_sync::follow_loop)) and keep a *mirror* of the edge in their
//!   registry, so selection on any locator sees every edge within milliseconds of a report,
//!   well inside one report interval. A newer claim wins: when the edge reconnects to
//!   another locator, the old holder's updates change nothing and its local link is
//!   dropped once it sees the claim.
//! - **Silence.** A mirror goes link-lost by itself when its holder stops publishing for
//!   the usual `report_interval × missed_reports` (the holder died with the edge, or lost
//!   the database), then is probed and failed like an edge whose link is lost here.
//!   Several locators may then find the same failure: the first to mark the failed claim
//!   handled in the database ([`ClusterStore::claim_edge_failure`])
//!   ends the edge's ad-hoc sessions and records it; the others only follow.
//! - **Assignments.** Each session a locator assigns is counted against the edge at once
//!   on that locator, and sent to the others (`NOTIFY locus_assignments`, coalesced while
//!   the previous notification is in flight, so a burst costs a handful of
//!   notifications): every locator counts every assignment before the edge's next report,
//!   and a burst split across locators spreads instead of herding onto the edge that
//!   looked least loaded everywhere.
//! - **Admin actions.** A suspend, resume or drain is applied and persisted by the locator
//!   that received it, then sent to all (`NOTIFY locus_admin`); the holder of the edge's
//!   link tells the edge to drain.
//! - **Lost notifications.** Notifications are not durable: while the listening
//!   connection is re-established (database restart), the state is read whole again, and
//!   every [`FULL_SYNC_EVERY`] anyway.
//!
//! This module is the handle ([`Cluster`], with the task sending assignments) and the
//! notification formats, a leaf below [`crate::state`]; the tasks that publish and
//! follow edge state are in [`crate::cluster_sync`].
//!
//! Sessions, rooms, suspensions and the audit trail need none of this: they are rows, and
//! every locator reads them from the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::store::{Channel, ClusterStore, Store, StoreError};

/// How long the publisher waits after a change to publish it with the changes that
/// follow (reports of many edges arrive close together).
pub const PUBLISH_COALESCE: Duration = Duration::from_millis(20);

/// The whole published state is read again this often (notifications can be lost).
pub const FULL_SYNC_EVERY: Duration = Duration::from_secs(5);

/// Longest payload of one assignments notification (Postgres allows 8,000 bytes).
const MAX_PAYLOAD: usize = 7_000;

/// This locator as one of several on a shared database.
#[derive(Debug)]
pub struct Cluster {
    /// This process among the locators: random at each start (a restarted locator
    /// claims its edges anew).
    pub id: String,
    /// The operations on the shared database (only a Postgres store has them).
    pub store: ClusterStore,
    assignments: Assignments,
}

/// Sessions this locator assigned, waiting to be sent to the others.
#[derive(Debug, Default)]
struct Assignments {
    pending: Mutex<HashMap<Arc<str>, u32>>,
    waiting: Notify,
}

/// An admin action sent to every locator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminBroadcast {
    /// The locator that applied it first.
    pub from: String,
    pub edge: String,
    /// `suspend`, `resume` or `drain`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_unix_ms: Option<u64>,
}

impl Cluster {
    /// The cluster side of a locator on `store`, when the store is shared (Postgres).
    pub fn for_store(store: &Store) -> Option<Arc<Cluster>> {
        store.cluster().map(|store| {
            use rand::Rng;
            let id: u64 = rand::rng().random();
            Arc::new(Cluster {
                id: format!("locator-{id:016x}"),
                store,
                assignments: Assignments::default(),
            })
        })
    }

    /// Counts a session assigned to `edge_id` by this locator, for the others.
    pub fn note_assignment(&self, edge_id: &Arc<str>) {
        self.assignments.note(edge_id);
    }

    /// Sends an admin action to every locator.
    pub async fn broadcast_admin(
        &self,
        edge: &str,
        action: &str,
        deadline_unix_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let message = AdminBroadcast {
            from: self.id.clone(),
            edge: edge.to_string(),
            action: action.to_string(),
            deadline_unix_ms,
        };
        let payload = serde_json::to_string(&message).unwrap_or_default();
        self.store.notify(Channel::Admin, &payload).await
    }
}

impl Assignments {
    fn note(&self, edge_id: &Arc<str>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            *pending.entry(edge_id.clone()).or_default() += 1;
        }
        self.waiting.notify_one();
    }

    /// The pending assignments as notification payloads (`<from> <edge>=<n>,…`).
    fn take_payloads(&self, from: &str) -> Vec<String> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut payloads = Vec::new();
        let mut current = String::new();
        for (edge, n) in pending {
            if current.len() + edge.len() + 12 > MAX_PAYLOAD {
                payloads.push(std::mem::take(&mut current));
            }
            current.push_str(if current.is_empty() { "" } else { "," });
            current.push_str(&edge);
            current.push('=');
            current.push_str(&n.to_string());
        }
        if !current.is_empty() {
            payloads.push(current);
        }
        payloads
            .into_iter()
            .map(|p| format!("{from} {p}"))
            .collect()
    }
}

/// Parses an assignments payload: the sender and `(edge, n)` pairs.
pub fn parse_assignments(payload: &str) -> Option<(&str, Vec<(&str, u32)>)> {
    let (from, rest) = payload.split_once(' ')?;
    let pairs = rest
        .split(',')
        .filter_map(|pair| {
            let (edge, n) = pair.split_once('=')?;
            Some((edge, n.parse().ok()?))
        })
        .collect();
    Some((from, pairs))
}

/// Parses an edges payload: the holder and the edge ids.
pub fn parse_edges(payload: &str) -> Option<(&str, Vec<String>)> {
    let (from, rest) = payload.split_once(' ')?;
    Some((from, rest.split(',').map(str::to_string).collect()))
}

/// Sends this locator's assignments to the others as they happen.
pub async fn assignments_loop(cluster: Arc<Cluster>) {
    loop {
        cluster.assignments.waiting.notified().await;
        for payload in cluster.assignments.take_payloads(&cluster.id) {
            if let Err(error) = cluster.store.notify(Channel::Assignments, &payload).await {
                // Counts are a hint until the edges' next reports: dropping them is safe.
                tracing::debug!(%error, "assignment counts not sent to the other locators");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let cluster = Assignments::default();
        for _ in 0..3 {
            cluster.note(&Arc::from("edge-a"));
        }
        cluster.note(&Arc::from("edge-b"));
        let payloads = cluster.take_payloads("locator-1");
        assert_eq!(payloads.len(), 1);
        let (from, mut pairs) = parse_assignments(&payloads[0]).expect("parses");
        pairs.sort();
        assert_eq!(from, "locator-1");
        assert_eq!(pairs, vec![("edge-a", 3), ("edge-b", 1)]);
        assert!(cluster.take_payloads("locator-1").is_empty());

        // Many edges: split below Postgres's payload limit, nothing lost.
        for i in 0..2_000 {
            cluster.note(&Arc::from(format!("edge-with-a-long-name-{i:04}")));
        }
        let payloads = cluster.take_payloads("locator-1");
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() < 8_000));
        let total: u32 = payloads
            .iter()
            .flat_map(|p| parse_assignments(p).expect("parses").1)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(total, 2_000);

        let (holder, ids) = parse_edges("locator-2 a,b.c").expect("parses");
        assert_eq!((holder, ids), ("locator-2", vec!["a".into(), "b.c".into()]));
    }

    #[test]
    fn admin_messages_round_trip() {
        let message = AdminBroadcast {
            from: "locator-1".into(),
            edge: "eu-1".into(),
            action: "drain".into(),
            deadline_unix_ms: Some(5),
        };
        let json = serde_json::to_string(&message).expect("json");
        assert_eq!(
            serde_json::from_str::<AdminBroadcast>(&json).expect("parses"),
            message
        );
    }
}
