//! What the locator ends or forgets by itself, on a clock:
//!
//! - **Unjoined sessions expire** ([`unjoined_loop`]): an ad-hoc session whose edge has
//!   not reported a join (`session_started` / `participant_joined` from its spool) within
//!   `limits.unjoined_session_ttl` ends with reason [`EXPIRED_UNJOINED`]: its join
//!   answers 410 like any ended session, and its edge is told
//!   ([`tell_sessions_ended`]) so that it refuses the tokens already handed out. Rooms
//!   never expire. An edge that has only lost its link is left alone until it is back
//!   or failed (its spool, which carries the joins, may be behind); with several
//!   locators, the holder of an edge's link expires its sessions (and tells it), any
//!   locator those of an edge nobody holds.
//! - **Failed edges are forgotten** ([`forget_loop`]): an edge failed (or drained and
//!   gone) for `edges.forget_after` leaves the registry, the admin status and its
//!   published row; a suspended one keeps its registration row so that its suspension
//!   holds if it returns. The audit trail keeps its history (`edge_forgotten`).
//!
//! Unjoined sessions never counted as load beyond the edge's next report: an edge
//! reports the sessions it hosts (joined ones), and selection adds only the sessions
//! assigned since that report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::state::{AppState, now_ms};

/// `end_reason` (and the edge's close reason) of a session nobody joined in time.
pub const EXPIRED_UNJOINED: &str = "expired-unjoined";

/// Most sessions one sweep expires (the next sweep takes the rest).
const SWEEP_BATCH: u32 = 5_000;

/// How often unjoined sessions are looked for: a quarter of the TTL, within bounds.
fn sweep_every(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(30))
}

/// Expires unjoined sessions while `limits.unjoined_session_ttl` is set (re-read at each
/// sweep, so a reload applies).
pub async fn unjoined_loop(state: Arc<AppState>) {
    loop {
        let ttl = state.routing().config.limits.unjoined_session_ttl;
        let Some(ttl) = ttl else {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        };
        tokio::time::sleep(sweep_every(ttl)).await;
        loop {
            match expire_unjoined(&state, ttl).await {
                // A full batch: more may be waiting.
                Ok(n) if n >= SWEEP_BATCH as usize => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "cannot expire unjoined sessions now; trying again later");
                    break;
                }
            }
        }
    }
}

/// One sweep: returns how many candidates it looked at.
async fn expire_unjoined(
    state: &Arc<AppState>,
    ttl: Duration,
) -> Result<usize, crate::store::StoreError> {
    let now = now_ms();
    let cutoff = now.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    let candidates = state.store.unjoined_sessions(cutoff, SWEEP_BATCH).await?;
    let looked_at = candidates.len();
    let mut by_edge: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (session, edge) in &candidates {
        by_edge.entry(edge).or_default().push(session);
    }
    for (edge, sessions) in by_edge {
        if !state.registry.expires_sessions_of(edge) {
            continue;
        }
        let ended = state
            .store
            .expire_unjoined(&sessions, EXPIRED_UNJOINED, now)
            .await?;
        if ended.is_empty() {
            continue;
        }
        tracing::info!(
            edge,
            sessions = ended.len(),
            ttl = ?ttl,
            "ended sessions nobody joined in time"
        );
        let detail = format!(
            "{} session(s) nobody joined within {ttl:?} (limits.unjoined_session_ttl)",
            ended.len()
        );
        let _ = state
            .store
            .record_locator_event("sessions_expired", Some(edge), None, Some(&detail), now)
            .await;
        tell_sessions_ended(state, edge, &ended, EXPIRED_UNJOINED);
    }
    Ok(looked_at)
}

/// Tells the edge (when this locator holds its link, and it reads the message) that the
/// locator ended these sessions; an edge told nothing now learns it when it registers
/// again and announces them ([`sessions_ended_among`]).
pub fn tell_sessions_ended(state: &AppState, edge_id: &str, sessions: &[String], reason: &str) {
    if sessions.is_empty() {
        return;
    }
    let told = state
        .registry
        .tell_sessions_ended(edge_id, sessions, reason);
    tracing::debug!(
        edge = edge_id,
        sessions = sessions.len(),
        told,
        reason,
        "sessions ended by the locator"
    );
}

/// Of the sessions an edge announced at registration, those the locator ended
/// (`(id, reason)`), at most [`MAX_ANNOUNCED_CHECKED`] looked at.
pub async fn sessions_ended_among(
    state: &AppState,
    edge_id: &str,
    announced: &[String],
) -> Vec<(String, String)> {
    let mut ended = Vec::new();
    for id in announced.iter().take(MAX_ANNOUNCED_CHECKED) {
        match state.store.get_session(id).await {
            Ok(Some(record))
                if record.state == crate::store::SessionState::Ended
                    && record.edge_id == edge_id =>
            {
                let reason = record.end_reason.unwrap_or_else(|| "ended".into());
                ended.push((record.id, reason));
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(edge = edge_id, %error, "cannot check the sessions an edge announced");
                break;
            }
        }
    }
    ended
}

/// Announced sessions checked against the database at one registration.
pub const MAX_ANNOUNCED_CHECKED: usize = 10_000;

/// How often failed edges are looked at for forgetting.
const FORGET_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Forgets edges failed for `edges.forget_after`.
pub async fn forget_loop(state: Arc<AppState>) {
    let mut interval = tokio::time::interval(FORGET_CHECK_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let forget_after = state.routing().config.edges.forget_after;
        for (edge_id, claim_rev) in state.registry.forgettable(Instant::now(), forget_after) {
            // The records first: a full re-read of the published state in between must
            // not bring the edge back.
            match state.store.forget_edge(&edge_id, claim_rev).await {
                Ok(true) => {}
                Ok(false) => continue, // claimed anew: it came back through another locator
                Err(error) => {
                    tracing::warn!(edge = %edge_id, %error, "cannot forget a failed edge now");
                    continue;
                }
            }
            if state.registry.forget(&edge_id, claim_rev) {
                tracing::info!(edge = %edge_id, forget_after = ?forget_after, "forgot an edge failed or gone for edges.forget_after");
                let detail = format!("failed or gone for {forget_after:?} (edges.forget_after)");
                let _ = state
                    .store
                    .record_locator_event(
                        "edge_forgotten",
                        Some(&edge_id),
                        None,
                        Some(&detail),
                        now_ms(),
                    )
                    .await;
            }
        }
    }
}
