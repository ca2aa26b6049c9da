//! Domain operations of the locator, written once with typed inputs and called by
//! every driver alike (the HTTP handlers of [`crate::api`], the edge link of
//! [`crate::edge_link`], the cluster listener of [`crate::cluster_sync`], the serve
//! loop's ticks):
//!
//! - [`select`]: an edge for a client of one generation, with its metrics (selection
//!   time, traffic matrix, fallbacks).
//! - [`move_room`]: a keyed room off an edge that cannot keep it (select, compare-and-set
//!   in the store, count the assignment), for a join that finds its edge gone or
//!   draining and for an edge's drain deadline.
//! - [`EdgeAction`] and [`apply_edge_action`]: an admin's suspend, resume or drain, with
//!   the drain policy (who tells the edge, when it is refused);
//!   [`apply_remote_edge_action`]: the same action received from another locator.
//! - [`apply_effect`]: what the edge state machine asked for (a health probe, a failure).
//!
//! Operations take the shared state ([`crate::state::AppState`]) and return typed
//! outcomes; turning them into HTTP answers, link messages or log lines is the caller's.

use std::sync::Arc;
use std::time::Duration;

use locus_geo::RegionIndex;

use crate::edge_state::{Effect, FailReason, Liveness};
use crate::registry::Generation;
use crate::selection::{self, Selection};
use crate::snapshot::EdgeView;
use crate::state::{AppState, now_ms};
use crate::store::{SessionRecord, StoreError};

/// An edge for a client preferring region `preferred` (an index of `generation`), or
/// `None` when no edge is available anywhere. Counts the selection's time, the traffic
/// matrix cell and a fallback.
pub fn select(
    state: &AppState,
    generation: &Generation,
    preferred: RegionIndex,
) -> Option<Selection> {
    let routing = &generation.routing;
    let started = std::time::Instant::now();
    let chosen = selection::select_edge(
        &generation.edges,
        &routing.plan,
        preferred,
        &mut rand::rng(),
    );
    state.metrics.selection_seconds.observe(started.elapsed());
    let chosen = chosen?;
    routing.traffic.record(preferred, chosen.region);
    if chosen.fallback {
        state.metrics.fallback(chosen.reason);
    }
    Some(chosen)
}

/// A room [`move_room`] placed.
#[derive(Debug)]
pub struct MovedRoom<'g> {
    /// The edge selected for the room (of the generation given).
    pub target: &'g EdgeView,
    pub chosen: Selection,
    /// This call moved the room; `false` when a concurrent move (another join, another
    /// locator) won the compare-and-set: the room is wherever that one put it.
    pub moved: bool,
}

/// Why [`move_room`] moved nothing.
#[derive(Debug)]
pub enum MoveError {
    /// No edge is available, or none but the one the room leaves.
    NoEdge,
    Store(StoreError),
}

/// Moves the keyed room of `record` off its edge to an edge selected in `generation`
/// (preferring `preferred`, else the room's region, else the default region): of
/// several concurrent moves, one wins the compare-and-set and the others follow it.
pub async fn move_room<'g>(
    state: &AppState,
    generation: &'g Generation,
    record: &SessionRecord,
    preferred: Option<RegionIndex>,
) -> Result<MovedRoom<'g>, MoveError> {
    let routing = &generation.routing;
    let preferred = preferred
        .or_else(|| routing.config.region_index(&record.region))
        .unwrap_or(routing.config.default_region);
    let chosen = select(state, generation, preferred).ok_or(MoveError::NoEdge)?;
    let target = generation
        .edges
        .edges
        .get(chosen.edge)
        .filter(|t| *t.id != *record.edge_id)
        .ok_or(MoveError::NoEdge)?;
    let moved = state
        .store
        .reassign_session(
            &record.id,
            &record.edge_id,
            &target.id,
            routing.region_id(target.region),
            now_ms(),
        )
        .await
        .map_err(MoveError::Store)?;
    if moved {
        state.note_assignment(target);
    }
    Ok(MovedRoom {
        target,
        chosen,
        moved,
    })
}

/// What an admin can ask of an edge (`POST /v1/admin/edges/{id}/{action}`, and the
/// same sent to the other locators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeAction {
    /// No new sessions until resumed; sessions on it go on.
    Suspend,
    Resume,
    /// The edge is told to drain: no new sessions, rooms move by its deadline.
    Drain,
}

impl EdgeAction {
    /// The action named in a path or a broadcast.
    pub fn parse(name: &str) -> Option<EdgeAction> {
        match name {
            "suspend" => Some(EdgeAction::Suspend),
            "resume" => Some(EdgeAction::Resume),
            "drain" => Some(EdgeAction::Drain),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EdgeAction::Suspend => "suspend",
            EdgeAction::Resume => "resume",
            EdgeAction::Drain => "drain",
        }
    }
}

/// Why [`apply_edge_action`] refused.
#[derive(Debug)]
pub enum ActionError {
    /// A drain for an edge no locator holds a link to: nobody can tell it.
    NotConnected,
    /// The store failed while `doing` (e.g. "record the drain").
    Store {
        doing: &'static str,
        error: StoreError,
    },
}

/// Whether an edge with this id has ever registered.
pub async fn edge_known(state: &AppState, edge_id: &str) -> Result<bool, StoreError> {
    Ok(state.store.edge(edge_id).await?.is_some())
}

/// Applies an admin's action to `edge_id` here, persists it, and sends it to the other
/// locators; `drain_deadline` defaults to `edges.drain_deadline`. Returns whether it
/// changed anything (a repeated action does not).
///
/// Drain policy: the locator holding the edge's link tells the edge; without the link
/// here, the drain is sent to the other locators when the edge is connected to one of
/// them (its holder tells it). An edge connected nowhere cannot be told, and the drain
/// is refused rather than recorded. A drain already under way changes nothing.
pub async fn apply_edge_action(
    state: &AppState,
    edge_id: &str,
    action: EdgeAction,
    actor: &str,
    drain_deadline: Option<Duration>,
) -> Result<bool, ActionError> {
    match action {
        EdgeAction::Suspend | EdgeAction::Resume => {
            let suspend = action == EdgeAction::Suspend;
            let changed = state
                .store
                .set_suspended(edge_id, suspend, actor, now_ms())
                .await
                .map_err(|error| ActionError::Store {
                    doing: "record the suspension",
                    error,
                })?;
            state.registry.set_suspended(edge_id, suspend);
            if let Some(cluster) = &state.cluster
                && let Err(error) = cluster
                    .broadcast_admin(edge_id, action.as_str(), None)
                    .await
            {
                // Persisted already: the others see it at their next full read.
                tracing::warn!(edge = %edge_id, %error, "could not tell the other locators at once");
            }
            tracing::info!(edge = %edge_id, %actor, action = action.as_str(), changed, "admin action");
            Ok(changed)
        }
        EdgeAction::Drain => {
            let deadline =
                drain_deadline.unwrap_or_else(|| state.routing().config.edges.drain_deadline);
            let deadline_unix_ms = (now_ms() as u64).saturating_add(deadline.as_millis() as u64);
            let snapshot = state.registry.snapshot();
            if snapshot.edge(edge_id).is_some_and(|e| e.status.draining) {
                return Ok(false);
            }
            // The locator holding the edge's link tells it; with several locators the
            // others learn it from the broadcast (and the holder, when it is another
            // one, tells the edge).
            let held_here = state.registry.holds(edge_id);
            let reachable = if held_here {
                state.registry.send(
                    edge_id,
                    locus_protocol::LocatorMessage::Drain { deadline_unix_ms },
                )
            } else {
                state.cluster.is_some()
                    && snapshot
                        .edge(edge_id)
                        .is_some_and(|e| e.status.liveness == Liveness::Connected)
            };
            let broadcast = match &state.cluster {
                Some(cluster) if reachable => cluster
                    .broadcast_admin(edge_id, EdgeAction::Drain.as_str(), Some(deadline_unix_ms))
                    .await
                    .is_ok(),
                _ => false,
            };
            if !reachable || !(held_here || broadcast) {
                return Err(ActionError::NotConnected);
            }
            // No new sessions from now on, and a repeated request changes nothing.
            state.registry.set_draining(edge_id);
            state
                .store
                .record_admin_action(
                    "edge_drain_requested",
                    Some(edge_id),
                    actor,
                    Some(&format!("deadline in {} s", deadline.as_secs())),
                    now_ms(),
                )
                .await
                .map_err(|error| ActionError::Store {
                    doing: "record the drain",
                    error,
                })?;
            tracing::info!(edge = %edge_id, %actor, "admin asked an edge to drain");
            Ok(true)
        }
    }
}

/// Applies here an action another locator received (and persisted): this locator's
/// view of the edge follows, and the holder of the edge's link tells it to drain.
pub fn apply_remote_edge_action(
    state: &AppState,
    edge_id: &str,
    action: EdgeAction,
    deadline_unix_ms: Option<u64>,
    from: &str,
) {
    match action {
        EdgeAction::Suspend | EdgeAction::Resume => {
            state
                .registry
                .set_suspended(edge_id, action == EdgeAction::Suspend);
        }
        EdgeAction::Drain => {
            if state.registry.holds(edge_id) {
                let deadline_unix_ms = deadline_unix_ms.unwrap_or_default();
                let sent = state.registry.send(
                    edge_id,
                    locus_protocol::LocatorMessage::Drain { deadline_unix_ms },
                );
                tracing::info!(edge = %edge_id, sent, %from, "drain asked through another locator");
            }
            state.registry.set_draining(edge_id);
        }
    }
}

/// Carries out what the state machine asked for.
pub async fn apply_effect(state: &Arc<AppState>, edge_id: &str, effect: Effect) {
    match effect {
        Effect::None => {}
        Effect::ProbeHealth => {
            let state = state.clone();
            let edge_id = edge_id.to_string();
            tokio::spawn(async move {
                let timeout = state.routing().config.edges.probe_timeout;
                let probe = match state.registry.public_url(&edge_id) {
                    Some(url) => crate::probe::healthz(&url, timeout).await,
                    None => crate::edge_state::Probe::Dead,
                };
                tracing::info!(edge = %edge_id, ?probe, "probed the /healthz of a suspect or link-lost edge");
                if let Effect::Failed(why) = state.registry.probe_result(&edge_id, probe) {
                    edge_failed(&state, &edge_id, why).await;
                }
            });
        }
        Effect::Failed(why) => edge_failed(state, edge_id, why).await,
    }
}

/// An edge became unavailable: its ad-hoc sessions end; its rooms move on their next
/// join.
async fn edge_failed(state: &Arc<AppState>, edge_id: &str, why: FailReason) {
    if let Some(cluster) = &state.cluster {
        // Several locators may notice one failure: one of them handles it.
        let claim_rev = state.registry.claim_rev(edge_id);
        match cluster.store.claim_edge_failure(edge_id, claim_rev).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(edge = %edge_id, reason = why.describe(), "edge failed (handled by another locator)");
                return;
            }
            Err(error) => {
                tracing::warn!(edge = %edge_id, %error, "cannot tell whether another locator handles this failure; handling it");
            }
        }
    }
    if why == FailReason::Drained {
        // An upgrade or a scale-down, not a failure: no warning.
        tracing::info!(edge = %edge_id, "edge drained and left (retired)");
    } else {
        tracing::warn!(edge = %edge_id, reason = why.describe(), "edge failed");
    }
    match state
        .store
        .end_ad_hoc_sessions_on_edge(edge_id, "edge failed", now_ms())
        .await
    {
        Ok(ended) => {
            tracing::info!(edge = %edge_id, sessions = ended.len(), "ended the ad-hoc sessions of a failed edge; its rooms move on their next join");
            // A failed edge whose link is still up (its /healthz refused, or it was
            // stalled) hears it now; one that comes back later, at its registration.
            crate::housekeeping::tell_sessions_ended(state, edge_id, &ended, "edge-failed");
        }
        Err(error) => {
            tracing::error!(edge = %edge_id, %error, "could not end the sessions of a failed edge")
        }
    }
    let _ = state
        .store
        .record_locator_event(
            "edge_failed",
            Some(edge_id),
            None,
            Some(why.describe()),
            now_ms(),
        )
        .await;
}
