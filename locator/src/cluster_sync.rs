//! The tasks that keep this locator in step with the others on a shared database (see
//! [`crate::cluster`] for the design): publishing the state of the edges held here and
//! following the others' notifications (edge state,
//! assignments, admin actions, the last applied through [`crate::ops`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::{
    AdminBroadcast, Cluster, FULL_SYNC_EVERY, PUBLISH_COALESCE, parse_assignments, parse_edges,
};
use crate::ops::{EdgeAction, apply_remote_edge_action};
use crate::state::AppState;
use crate::store::{Channel, StoreError};

/// Reads the published state of `ids` (every edge for `None`) and applies it.
pub async fn sync(
    state: &AppState,
    cluster: &Cluster,
    ids: Option<&[String]>,
) -> Result<(), StoreError> {
    let rows = cluster.store.live_edges(ids).await?;
    for moved in state
        .registry
        .apply_published(&rows, &cluster.id, Instant::now())
    {
        tracing::info!(edge = %moved, "edge registered with another locator: its link here is dropped");
    }
    Ok(())
}

/// Publishes the state of the edges held here whenever it changes.
pub async fn publish_loop(state: Arc<AppState>, cluster: Arc<Cluster>) {
    let mut changes = state.registry.subscribe();
    let mut failing = false;
    loop {
        // After a failure, try again without waiting for another change.
        if !failing && changes.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(PUBLISH_COALESCE).await;
        changes.borrow_and_update();
        let edges = state.registry.take_changed();
        if edges.is_empty() {
            failing = false;
            continue;
        }
        match cluster.store.publish_edges(&cluster.id, &edges).await {
            Ok(_) => {
                if failing {
                    tracing::info!("publishing edge state to the other locators again");
                    failing = false;
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot publish edge state to the other locators; retrying");
                    failing = true;
                }
                let ids: Vec<String> = edges.into_iter().map(|e| e.edge_id).collect();
                state.registry.retake(&ids);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Follows the other locators' notifications; re-reads everything after a reconnection
/// and every [`FULL_SYNC_EVERY`].
pub async fn follow_loop(state: Arc<AppState>, cluster: Arc<Cluster>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut feed = match cluster.store.change_feed().await {
            Ok(feed) => feed,
            Err(error) => {
                tracing::warn!(%error, "cannot listen to the other locators' changes; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        if let Err(error) = sync(&state, &cluster, None).await {
            tracing::warn!(%error, "cannot read the edges' published state");
        }
        let mut full_sync = tokio::time::interval(FULL_SYNC_EVERY);
        full_sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        full_sync.reset();
        loop {
            let next = tokio::select! {
                next = feed.next() => next,
                _ = full_sync.tick() => {
                    let _ = sync(&state, &cluster, None).await;
                    continue;
                }
            };
            match next {
                Ok(Some((channel, payload))) => handle(&state, &cluster, channel, &payload).await,
                // Reconnecting: whatever was sent meanwhile is lost; read it all again.
                Ok(None) => {
                    tracing::warn!(
                        "lost the connection listening to the other locators; reading their state again"
                    );
                    let _ = sync(&state, &cluster, None).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "listening to the other locators failed; reconnecting");
                    tokio::time::sleep(backoff).await;
                    break;
                }
            }
        }
    }
}

async fn handle(state: &Arc<AppState>, cluster: &Cluster, channel: Channel, payload: &str) {
    match channel {
        Channel::Edges => {
            let Some((from, ids)) = parse_edges(payload) else {
                return;
            };
            if from != cluster.id
                && let Err(error) = sync(state, cluster, Some(&ids)).await
            {
                tracing::warn!(%error, "cannot read the edges' published state");
            }
        }
        Channel::Assignments => {
            if let Some((from, pairs)) = parse_assignments(payload)
                && from != cluster.id
            {
                for (edge, n) in pairs {
                    state.registry.add_assignments(edge, n);
                }
            }
        }
        Channel::Admin => {
            let Ok(message) = serde_json::from_str::<AdminBroadcast>(payload) else {
                return;
            };
            if message.from == cluster.id {
                return;
            }
            apply_admin(state, &message);
        }
    }
}

/// Applies an admin action another locator received; one this version does not know
/// (a newer locator's) is logged and left.
fn apply_admin(state: &AppState, message: &AdminBroadcast) {
    match EdgeAction::parse(&message.action) {
        Some(action) => apply_remote_edge_action(
            state,
            &message.edge,
            action,
            message.deadline_unix_ms,
            &message.from,
        ),
        None => tracing::warn!(
            edge = %message.edge,
            action = %message.action.chars().take(32).collect::<String>(),
            from = %message.from,
            "unknown admin action from another locator: ignored"
        ),
    }
}
