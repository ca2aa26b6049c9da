//! The edge link: the websocket edges keep to the locator.
//!
//! Authentication happens before the upgrade (`Authorization: Bearer
//! <LOCATOR_EDGE_TOKEN>`, constant-time compare): a refused edge never gets a websocket.
//! Then the edge must `Register` within [`REGISTER_TIMEOUT`]; after that it reports load,
//! relays its spool and announces draining. Anything malformed, oversized or out of order
//! closes *that* link with a logged reason; other edges are untouched.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use locus_protocol::{
    EdgeMessage, LocatorMessage, MAX_FRAME_BYTES, MAX_SPOOL_BATCH, PROTOCOL_VERSION, Register,
    RoomMove,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::api::bearer_matches;
use crate::problem::Problem;
use crate::server::{AppState, apply_effect, now_ms};
use crate::store::{EdgeRecord, SessionState};

/// How long a new link may take to register.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /v1/edge/link` (websocket upgrade).
pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !bearer_matches(&headers, &state.secrets.edge_token) {
        tracing::warn!("edge link refused: missing or wrong edge token");
        return Problem::unauthorized(
            "edges must send `Authorization: Bearer <LOCATOR_EDGE_TOKEN>`",
        )
        .into_response();
    }
    let Ok(ws) = ws else {
        return Problem::bad_request(
            "websocket-required",
            "this is the edge link: connect with a websocket upgrade",
        )
        .into_response();
    };
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| link(state, socket))
}

/// Why a link was closed by the locator.
struct Refusal(String);

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Text(Utf8Bytes::from(
            serde_json::to_string(&LocatorMessage::Error {
                reason: reason.to_string(),
            })
            .unwrap_or_default(),
        )))
        .await;
    // Close reasons are limited to 123 bytes.
    let short: String = reason.chars().take(100).collect();
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(short),
        })))
        .await;
}

fn validate_register(state: &AppState, reg: &Register) -> Result<(), String> {
    if reg.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} is not supported (this locator speaks {PROTOCOL_VERSION})",
            reg.protocol
        ));
    }
    let id_ok = !reg.edge_id.is_empty()
        && reg.edge_id.len() <= 64
        && reg
            .edge_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !id_ok {
        return Err("edge_id must be 1-64 characters of letters, digits, '-', '_', '.'".into());
    }
    let routing = state.routing.load();
    if routing.config.region_index(&reg.region).is_none() {
        return Err(format!(
            "region \"{}\" is not in the locator's regions.yaml",
            reg.region
        ));
    }
    if !(reg.public_url.starts_with("http://") || reg.public_url.starts_with("https://"))
        || reg.public_url.len() > 512
    {
        return Err("public_url must be an http:// or https:// URL".into());
    }
    if reg.capacity == 0 {
        return Err("capacity must be at least 1".into());
    }
    if reg.version.len() > 64 || reg.sessions.len() > 1_000_000 {
        return Err("version or session list too long".into());
    }
    Ok(())
}

async fn link(state: Arc<AppState>, mut socket: WebSocket) {
    // 1. Registration.
    let reg = match tokio::time::timeout(REGISTER_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<EdgeMessage>(&text) {
            Ok(EdgeMessage::Register(reg)) => reg,
            Ok(_) => {
                tracing::warn!("edge link closed: first message was not register");
                close(
                    &mut socket,
                    close_code::POLICY,
                    "first message must be register",
                )
                .await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "edge link closed: malformed register");
                close(
                    &mut socket,
                    close_code::INVALID,
                    &format!("malformed message: {e}"),
                )
                .await;
                return;
            }
        },
        Ok(_) => return,
        Err(_) => {
            close(
                &mut socket,
                close_code::POLICY,
                "register within 10 seconds",
            )
            .await;
            return;
        }
    };
    if let Err(reason) = validate_register(&state, &reg) {
        tracing::warn!(edge = %reg.edge_id, %reason, "edge registration refused");
        close(&mut socket, close_code::POLICY, &reason).await;
        return;
    }
    let edge_id = reg.edge_id.clone();
    let now = now_ms();
    let record = EdgeRecord {
        id: edge_id.clone(),
        region: reg.region.clone(),
        public_url: reg.public_url.clone(),
        capacity: reg.capacity,
        version: reg.version.clone(),
        suspended: false,
        suspended_by: None,
        suspended_at_ms: None,
        first_seen_ms: now,
        last_seen_ms: now,
    };
    let stored = async {
        state.store.upsert_edge(&record).await?;
        let suspended = state
            .store
            .edge(&edge_id)
            .await?
            .is_some_and(|e| e.suspended);
        let acked = state.store.acked_seq(&edge_id).await?;
        // Several locators: this one holds the edge's link from now on (newest claim).
        let claim_rev = match &state.cluster {
            Some(cluster) => {
                state
                    .store
                    .claim_edge(&edge_id, &cluster.id, reg.draining)
                    .await?
            }
            None => 0,
        };
        Ok::<_, crate::store::StoreError>((suspended, acked, claim_rev))
    }
    .await;
    let (suspended, acked_seq, claim_rev) = match stored {
        Ok(v) => v,
        Err(error) => {
            tracing::error!(edge = %edge_id, %error, "edge registration failed: database unavailable");
            close(
                &mut socket,
                close_code::AGAIN,
                "locator database unavailable; retry",
            )
            .await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<LocatorMessage>(64);
    let registered = state
        .registry
        .register(&reg, suspended, tx, Instant::now(), claim_rev);
    tracing::info!(
        edge = %edge_id,
        region = %reg.region,
        url = %reg.public_url,
        capacity = reg.capacity,
        version = %reg.version,
        sessions = reg.sessions.len(),
        replaced = registered.replaced,
        "edge registered"
    );
    let welcome = LocatorMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        report_interval_ms: state
            .routing
            .load()
            .config
            .edges
            .report_interval
            .as_millis() as u64,
        acked_seq,
        suspended,
        heartbeat_interval_ms: state
            .routing
            .load()
            .config
            .edges
            .heartbeat_interval
            .as_millis() as u64,
    };
    if send(&mut socket, &welcome).await.is_err() {
        let effect = state
            .registry
            .link_closed(&edge_id, registered.conn_id, Instant::now());
        apply_effect(&state, &edge_id, effect).await;
        return;
    }

    // 2. The link.
    let conn_id = registered.conn_id;
    let mut last_seq = acked_seq;
    let outcome: Result<(), Refusal> = loop {
        tokio::select! {
            outgoing = rx.recv() => match outgoing {
                Some(message) => {
                    if send(&mut socket, &message).await.is_err() {
                        break Ok(());
                    }
                }
                None => break Err(Refusal("replaced by a newer link of the same edge".into())),
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) => break Ok(()),
                Some(Ok(Message::Close(_))) => break Ok(()),
                // The edge's heartbeat (the websocket answers it with a pong by itself).
                Some(Ok(Message::Ping(_))) => {
                    heard(&state, &edge_id, conn_id, true);
                }
                Some(Ok(Message::Pong(_))) => {
                    heard(&state, &edge_id, conn_id, false);
                }
                Some(Ok(Message::Binary(_))) => break Err(Refusal("binary frames are not part of the protocol".into())),
                Some(Ok(Message::Text(text))) => {
                    heard(&state, &edge_id, conn_id, false);
                    let message = match serde_json::from_str::<EdgeMessage>(&text) {
                        Ok(m) => m,
                        Err(e) => break Err(Refusal(format!("malformed message: {e}"))),
                    };
                    match handle(&state, &edge_id, conn_id, &mut last_seq, message).await {
                        Ok(Some(reply)) => {
                            if send(&mut socket, &reply).await.is_err() {
                                break Ok(());
                            }
                        }
                        Ok(None) => {}
                        Err(refusal) => break Err(refusal),
                    }
                }
            },
        }
    };
    match outcome {
        Ok(()) => tracing::info!(edge = %edge_id, "edge link closed"),
        Err(Refusal(reason)) => {
            tracing::warn!(edge = %edge_id, %reason, "edge link closed by the locator");
            close(&mut socket, close_code::POLICY, &reason).await;
        }
    }
    let effect = state
        .registry
        .link_closed(&edge_id, conn_id, Instant::now());
    apply_effect(&state, &edge_id, effect).await;
}

/// A frame (`heartbeat`: the edge's ping) arrived over link `conn_id`, judged with the
/// current config's timing.
fn heard(state: &AppState, edge_id: &str, conn_id: u64, heartbeat: bool) {
    let timing = &state.routing.load().config.edges;
    state
        .registry
        .heard(edge_id, conn_id, heartbeat, Instant::now(), timing);
}

async fn send(socket: &mut WebSocket, message: &LocatorMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(message).unwrap_or_default();
    socket.send(Message::Text(Utf8Bytes::from(text))).await
}

async fn handle(
    state: &Arc<AppState>,
    edge_id: &str,
    conn_id: u64,
    last_seq: &mut u64,
    message: EdgeMessage,
) -> Result<Option<LocatorMessage>, Refusal> {
    match message {
        EdgeMessage::Register(_) => Err(Refusal("register sent twice on one link".into())),
        EdgeMessage::Report(report) => {
            let valid = report.cpu.is_finite()
                && report.cpu >= 0.0
                && report.lag_ms.is_finite()
                && report.lag_ms >= 0.0;
            if !valid {
                return Err(Refusal(
                    "report figures must be finite and non-negative".into(),
                ));
            }
            state
                .registry
                .report(edge_id, conn_id, report, Instant::now());
            Ok(None)
        }
        EdgeMessage::Spool { entries } => {
            if entries.len() > MAX_SPOOL_BATCH {
                return Err(Refusal(format!(
                    "spool batch of {} entries exceeds {MAX_SPOOL_BATCH}",
                    entries.len()
                )));
            }
            // Strictly increasing within a batch. Entries the locator already stored may
            // come again (the edge resends what it had no ack for): the store skips them.
            let mut previous = 0;
            for entry in &entries {
                if entry.seq <= previous {
                    return Err(Refusal(format!(
                        "spool entries out of order: {} after {previous}",
                        entry.seq
                    )));
                }
                previous = entry.seq;
            }
            let acked = state
                .store
                .store_spool(edge_id, &entries)
                .await
                .map_err(|e| {
                    tracing::error!(edge = %edge_id, error = %e, "could not store spool entries");
                    Refusal("locator database unavailable; reconnect and resend".into())
                })?;
            state.metrics.spool_entries.inc_by(entries.len() as u64);
            *last_seq = acked;
            Ok(Some(LocatorMessage::Ack { seq: acked }))
        }
        EdgeMessage::Draining { deadline_unix_ms } => {
            state.registry.draining(edge_id, conn_id);
            tracing::info!(edge = %edge_id, deadline_unix_ms, "edge is draining: no new sessions");
            let _ = state
                .store
                .record_locator_event(
                    "edge_draining",
                    Some(edge_id),
                    None,
                    Some("announced by the edge"),
                    now_ms(),
                )
                .await;
            Ok(None)
        }
        EdgeMessage::DrainDeadline { sessions } => {
            let moves = move_rooms(state, edge_id, &sessions).await;
            Ok(Some(LocatorMessage::RoomsMoved { moves }))
        }
    }
}

/// Moves the keyed rooms among `sessions` off a draining edge; ad-hoc sessions end.
async fn move_rooms(state: &Arc<AppState>, edge_id: &str, sessions: &[String]) -> Vec<RoomMove> {
    let mut moves = Vec::new();
    let snapshot = state.registry.snapshot();
    for session_id in sessions.iter().take(100_000) {
        let Ok(Some(record)) = state.store.get_session(session_id).await else {
            continue;
        };
        if record.edge_id != edge_id || record.state == SessionState::Ended {
            continue;
        }
        if record.room_key.is_none() {
            let _ = state
                .store
                .end_session(session_id, "edge drained", now_ms())
                .await;
            continue;
        }
        let routing = state.routing.load();
        let preferred = routing
            .config
            .region_index(&record.region)
            .unwrap_or(routing.config.default_region);
        let Some(chosen) = crate::selection::select_edge(
            &snapshot,
            &routing.plan,
            &routing.config.regions,
            preferred,
            &mut rand::rng(),
        ) else {
            continue;
        };
        let target = &snapshot.edges[chosen.edge];
        if &*target.id == edge_id {
            continue;
        }
        let region = routing.config.regions[target.region].id.clone();
        if let Ok(true) = state
            .store
            .reassign_session(session_id, edge_id, &target.id, &region, now_ms())
            .await
        {
            state.note_assignment(target);
            moves.push(RoomMove {
                session_id: session_id.clone(),
                edge_id: target.id.to_string(),
                url: locus_protocol::session_ws_url(&target.public_url, session_id),
            });
        }
    }
    tracing::info!(edge = %edge_id, moved = moves.len(), "rooms moved off a draining edge");
    moves
}
