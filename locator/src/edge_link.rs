//! The edge link: the websocket edges keep to the locator.
//!
//! Authentication happens before the upgrade: the edge sends its own credential
//! (`Authorization: Bearer <LOCATOR_EDGE_TOKEN>`, see
//! [`locus_protocol::edge_credential`]), checked against the master keys (constant-time)
//! and against `regions.yaml`'s `edge_credentials:` (revoked generations): a refused edge
//! never gets a websocket. Then the edge must `Register` within [`REGISTER_TIMEOUT`], as
//! the id and region its credential names; an id whose live link holds another
//! credential is refused and the live link kept. After that it reports load, relays its
//! spool and announces draining; a credential revoked meanwhile (config reload) closes
//! the link at its next frame. Anything malformed, oversized or out of order closes
//! *that* link with a logged reason; other edges are untouched.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use locus_protocol::edge_credential::EdgeCredential;
use locus_protocol::{
    EdgeMessage, LocatorMessage, MAX_FRAME_BYTES, MAX_SPOOL_BATCH, MAX_SPOOL_SEQ, PROTOCOL_VERSION,
    Register, RoomMove, SpoolEntry,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::ops::{self, MovedRoom, apply_effect};
use crate::routing::Routing;
use crate::state::{AppState, now_ms};
use crate::store::{EdgeRecord, SessionState};
use locus_geo::Config;
use locus_serve::problem::Problem;

/// How long a new link may take to register.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /v1/edge/link` (websocket upgrade).
pub async fn handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let identity = match authenticate(&state, &headers) {
        Ok(identity) => identity,
        Err(reason) => {
            tracing::warn!(%reason, "edge link refused");
            return Problem::unauthorized(reason).into_response();
        }
    };
    let Ok(ws) = ws else {
        return Problem::bad_request(
            "websocket-required",
            "this is the edge link: connect with a websocket upgrade",
        )
        .into_response();
    };
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(LINK_READ_BUFFER)
        .write_buffer_size(LINK_WRITE_BUFFER)
        .on_upgrade(move |socket| link(state, socket, identity))
}

/// Who an authenticated link is: the parts of its (verified) credential.
struct Identity {
    credential: Arc<str>,
    edge_id: String,
    region: String,
    generation: u32,
}

/// Checks the bearer credential: well-formed, signed by a master key, not revoked.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Identity, String> {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(
            "edges must send `Authorization: Bearer <their edge credential>` (LOCATOR_EDGE_TOKEN)"
                .into(),
        );
    };
    let credential = EdgeCredential::parse(given).map_err(|e| e.to_string())?;
    let keys: Vec<&[u8]> = state
        .secrets
        .edge_keys
        .iter()
        .map(|k| k.as_bytes())
        .collect();
    credential.verify(&keys).map_err(|e| e.to_string())?;
    still_valid(
        &state.routing().config,
        &credential.edge_id,
        &credential.region,
        credential.generation,
    )?;
    Ok(Identity {
        credential: given.into(),
        edge_id: credential.edge_id,
        region: credential.region,
        generation: credential.generation,
    })
}

/// Whether `regions.yaml` (`config`, as loaded now) still accepts this credential.
fn still_valid(
    config: &Config,
    edge_id: &str,
    region: &str,
    generation: u32,
) -> Result<(), String> {
    let policy = config.edge_credential_policy(edge_id);
    if policy.revoked {
        return Err(format!(
            "the credentials of edge \"{edge_id}\" are revoked (regions.yaml edge_credentials)"
        ));
    }
    if generation < policy.generation {
        return Err(format!(
            "credential generation {generation} of edge \"{edge_id}\" is revoked (regions.yaml edge_credentials: generation {})",
            policy.generation
        ));
    }
    if let Some(expected) = &policy.region
        && expected != region
    {
        return Err(format!(
            "edge \"{edge_id}\" belongs to region \"{expected}\" (regions.yaml edge_credentials), not \"{region}\""
        ));
    }
    Ok(())
}

/// Websocket read buffer of one edge link, allocated for every link for as long as it
/// lives (tungstenite's default, 128 KiB, made a locator with 1,000 edges hold about
/// 150 MiB of mostly empty buffers). Heartbeats and reports are far smaller; a spool batch
/// larger than this still arrives whole (the buffer grows for the frame being read).
const LINK_READ_BUFFER: usize = 4 * 1024;
/// Websocket write buffer target of one edge link: what the locator sends (welcome, acks,
/// moves) is small, and each message is flushed as it is sent.
const LINK_WRITE_BUFFER: usize = 4 * 1024;

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
    let routing = state.routing();
    if routing.config.region_index(&reg.region).is_none() {
        return Err(format!(
            "region \"{}\" is not in the locator's regions.yaml",
            reg.region
        ));
    }
    locus_protocol::check_public_url(&reg.public_url)?;
    if reg.capacity == 0 {
        return Err("capacity must be at least 1".into());
    }
    if reg.version.len() > 64 || reg.sessions.len() > 1_000_000 {
        return Err("version or session list too long".into());
    }
    Ok(())
}

async fn link(state: Arc<AppState>, mut socket: WebSocket, identity: Identity) {
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
    let mut verdict = validate_register(&state, &reg);
    if verdict.is_ok() && (reg.edge_id != identity.edge_id || reg.region != identity.region) {
        verdict = Err(format!(
            "this credential is edge \"{}\" in region \"{}\": it cannot register as edge \"{}\" in region \"{}\"",
            identity.edge_id, identity.region, reg.edge_id, reg.region
        ));
    }
    // Checked before anything is stored, so that a refused registration changes nothing.
    if verdict.is_ok()
        && let Some(live) = state.registry.live_credential(&reg.edge_id)
        && live != identity.credential
    {
        verdict = Err(format!(
            "edge \"{}\" is connected with another credential; that link is kept",
            reg.edge_id
        ));
    }
    if let Err(reason) = verdict {
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
                cluster
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
    let Ok(registered) = state.registry.register(
        &reg,
        identity.credential.clone(),
        suspended,
        tx,
        Instant::now(),
        claim_rev,
    ) else {
        // Another link with another credential registered between the check and here.
        let reason = "this edge is connected with another credential; that link is kept";
        tracing::warn!(edge = %edge_id, reason, "edge registration refused");
        close(&mut socket, close_code::POLICY, reason).await;
        return;
    };
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
    let routing = state.routing();
    let timing = &routing.config.edges;
    let welcome = LocatorMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        report_interval_ms: timing.report_interval.as_millis() as u64,
        acked_seq,
        suspended,
        heartbeat_interval_ms: timing.heartbeat_interval.as_millis() as u64,
        // Offered only to an edge that can read it (an older one refuses the field).
        pong_heartbeats: reg
            .features
            .iter()
            .any(|f| f == locus_protocol::features::PONG_HEARTBEATS),
    };
    drop(routing);
    if send(&mut socket, &welcome).await.is_err() {
        let effect = state
            .registry
            .link_closed(&edge_id, registered.conn_id, Instant::now());
        apply_effect(&state, &edge_id, effect).await;
        return;
    }

    // Sessions it still hosts that the locator ended meanwhile (while it was failed or
    // away, or through another locator): it closes them.
    if !reg.sessions.is_empty() {
        let state = state.clone();
        let edge_id = edge_id.clone();
        let announced = reg.sessions;
        tokio::spawn(async move {
            let ended =
                crate::housekeeping::sessions_ended_among(&state, &edge_id, &announced).await;
            let mut by_reason: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for (id, reason) in ended {
                by_reason.entry(reason).or_default().push(id);
            }
            for (reason, ids) in by_reason {
                crate::housekeeping::tell_sessions_ended(&state, &edge_id, &ids, &reason);
            }
        });
    }

    // 2. The link.
    let conn_id = registered.conn_id;
    let mut spool = SpoolRelay::new(acked_seq);
    let mut link = LinkFrames {
        identity: &identity,
        conn_id,
        checked: None,
    };
    let outcome: Result<(), Refusal> = loop {
        tokio::select! {
            stored = async {
                match spool.storing.as_mut() {
                    Some(batch) => batch.await,
                    None => std::future::pending().await,
                }
            }, if spool.storing.is_some() => {
                match spool.finished(stored, &state, &edge_id) {
                    Ok(acked) => {
                        if send(&mut socket, &LocatorMessage::Ack { seq: acked }).await.is_err() {
                            break Ok(());
                        }
                    }
                    Err(refusal) => break Err(refusal),
                }
            },
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
                // The edge's heartbeat: a ping (the websocket answers it with a pong by
                // itself), or an unsolicited pong (the locator never pings, so every pong
                // is one; nothing is written back).
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                    if let Err(reason) = link.heard(&state, true) {
                        break Err(Refusal(reason));
                    }
                }
                Some(Ok(Message::Binary(_))) => break Err(Refusal("binary frames are not part of the protocol".into())),
                Some(Ok(Message::Text(text))) => {
                    if let Err(reason) = link.heard(&state, false) {
                        break Err(Refusal(reason));
                    }
                    let message = match serde_json::from_str::<EdgeMessage>(&text) {
                        Ok(m) => m,
                        Err(e) => break Err(Refusal(format!("malformed message: {e}"))),
                    };
                    if let EdgeMessage::Spool { entries } = message {
                        if let Err(refusal) = spool.relay(&state, &edge_id, entries) {
                            break Err(refusal);
                        }
                        continue;
                    }
                    // Anything but a report may write to the database or depend on what the
                    // batches store (a drain's rooms): the batches first, in arrival order.
                    if !matches!(message, EdgeMessage::Report(_)) {
                        let mut ended = None;
                        while let Some(batch) = spool.storing.as_mut() {
                            let stored = batch.await;
                            match spool.finished(stored, &state, &edge_id) {
                                Ok(acked) => {
                                    if send(&mut socket, &LocatorMessage::Ack { seq: acked }).await.is_err() {
                                        ended = Some(Ok(()));
                                        break;
                                    }
                                }
                                Err(refusal) => {
                                    ended = Some(Err(refusal));
                                    break;
                                }
                            }
                        }
                        if let Some(end) = ended {
                            break end;
                        }
                    }
                    match handle(&state, &edge_id, conn_id, message).await {
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

/// What a registered link checks for every frame it reads.
struct LinkFrames<'a> {
    identity: &'a Identity,
    conn_id: u64,
    /// The routing generation the credential was last found valid in (held, so that its
    /// address cannot be reused by a later generation).
    checked: Option<Arc<Routing>>,
}

impl LinkFrames<'_> {
    /// A frame arrived (`heartbeat`: a ping or pong of the edge), judged with the current
    /// config's timing. A credential revoked by a config reload ends the link at its next
    /// frame; it is looked up again only when the generation changed, so a frame of a
    /// live link costs no lookup.
    fn heard(&mut self, state: &AppState, heartbeat: bool) -> Result<(), String> {
        let routing = state.routing();
        if !self
            .checked
            .as_ref()
            .is_some_and(|checked| Arc::ptr_eq(checked, &routing))
        {
            let id = self.identity;
            still_valid(&routing.config, &id.edge_id, &id.region, id.generation)?;
            self.checked = Some(routing.clone());
        }
        state.registry.heard(
            &self.identity.edge_id,
            self.conn_id,
            heartbeat,
            Instant::now(),
            &routing.config.edges,
        );
        Ok(())
    }
}

async fn send(socket: &mut WebSocket, message: &LocatorMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(message).unwrap_or_default();
    socket.send(Message::Text(Utf8Bytes::from(text))).await
}

/// Most spool entries one link stores per second, sustained (an edge's audit trail is
/// a few entries per join; a backlog after an outage drains at this rate).
pub const SPOOL_ENTRIES_PER_SECOND: u64 = 2_000;

/// Entries a link may store at once above the sustained rate.
pub const SPOOL_BURST: u64 = 2 * MAX_SPOOL_BATCH as u64;

/// Largest gap between the stored and the next relayed sequence taken for an edge's
/// numbering slip (its spool restored, the locator's database restored): refused, and the
/// edge realigns on its next welcome. Anything further is a forged jump: refused too,
/// logged as an error.
pub const SPOOL_GAP_REPAIRABLE: u64 = 1_000_000;

/// A token bucket of spool entries per link: a link that writes faster waits (the edge
/// relays its next batch after the ack, so it slows down; nothing is lost).
struct SpoolBudget {
    tokens: u64,
    refilled: Instant,
}

impl SpoolBudget {
    fn new() -> SpoolBudget {
        SpoolBudget {
            tokens: SPOOL_BURST,
            refilled: Instant::now(),
        }
    }

    async fn spend(&mut self, n: u64) {
        let now = Instant::now();
        let earned =
            now.duration_since(self.refilled).as_millis() as u64 * SPOOL_ENTRIES_PER_SECOND / 1_000;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(SPOOL_BURST);
            self.refilled = now;
        }
        if self.tokens >= n {
            self.tokens -= n;
            return;
        }
        let missing = n - self.tokens;
        let wait = Duration::from_millis(missing * 1_000 / SPOOL_ENTRIES_PER_SECOND);
        tokio::time::sleep(wait).await;
        self.tokens = 0;
        self.refilled = Instant::now();
    }
}

/// Refuses a spool batch whose next new entry is not `expected`: logged, and recorded in
/// the audit trail (`spool_refused`, one per link since the link closes).
async fn refuse_spool(state: &Arc<AppState>, edge_id: &str, expected: u64, got: u64) -> Refusal {
    let reason = if got > MAX_SPOOL_SEQ {
        format!("spool sequence {got} is above the limit {MAX_SPOOL_SEQ}")
    } else if got - expected <= SPOOL_GAP_REPAIRABLE {
        format!(
            "spool gap: the locator stored through {}, the next entry must be {expected}, got {got}; reconnect (the welcome realigns the spool)",
            expected - 1
        )
    } else {
        format!("spool jump refused: the next entry must be {expected}, got {got}")
    };
    if got > MAX_SPOOL_SEQ || got - expected > SPOOL_GAP_REPAIRABLE {
        tracing::error!(edge = %edge_id, expected, got, "spool entries refused: a forged or corrupt sequence");
    } else {
        tracing::warn!(edge = %edge_id, expected, got, "spool entries refused: a gap in the sequence");
    }
    if let Err(error) = state
        .store
        .record_locator_event(
            "spool_refused",
            Some(edge_id),
            None,
            Some(&reason),
            now_ms(),
        )
        .await
    {
        tracing::error!(edge = %edge_id, %error, "could not record the spool refusal");
    }
    Refusal(reason)
}

/// A spool batch being stored: the budget it spent and the sequence to acknowledge.
type Storing = tokio::task::JoinHandle<(SpoolBudget, Result<u64, Refusal>)>;

/// The spool side of one link. A batch is stored by a task of its own, which the link
/// loop awaits beside the socket: heartbeats and reports are read while the database
/// writes (a slow commit must not make a healthy edge look silent), and the transaction
/// progresses whatever the loop awaits meanwhile. One batch is stored at a time (the edge
/// relays the next after its ack); one relayed early waits, a second is refused.
struct SpoolRelay {
    /// The highest sequence stored (acknowledged).
    last_seq: u64,
    /// The link's budget, travelling with the batch being stored.
    budget: Option<SpoolBudget>,
    storing: Option<Storing>,
    queued: Option<Vec<SpoolEntry>>,
}

impl SpoolRelay {
    fn new(acked_seq: u64) -> SpoolRelay {
        SpoolRelay {
            last_seq: acked_seq,
            budget: Some(SpoolBudget::new()),
            storing: None,
            queued: None,
        }
    }

    /// A batch relayed by the edge: stored now, or after the one being stored.
    fn relay(
        &mut self,
        state: &Arc<AppState>,
        edge_id: &str,
        entries: Vec<SpoolEntry>,
    ) -> Result<(), Refusal> {
        if self.storing.is_none() {
            self.start(state, edge_id, entries);
            Ok(())
        } else if self.queued.replace(entries).is_some() {
            Err(Refusal(
                "spool batches relayed without waiting for their acks".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn start(&mut self, state: &Arc<AppState>, edge_id: &str, entries: Vec<SpoolEntry>) {
        let mut budget = self.budget.take().unwrap_or_else(SpoolBudget::new);
        let (state, edge_id, last_seq) = (state.clone(), edge_id.to_string(), self.last_seq);
        self.storing = Some(tokio::spawn(async move {
            let result = store_entries(&state, &edge_id, last_seq, &mut budget, entries).await;
            (budget, result)
        }));
    }

    /// The batch being stored is done: returns the sequence to acknowledge, and starts
    /// the queued batch.
    fn finished(
        &mut self,
        stored: Result<(SpoolBudget, Result<u64, Refusal>), tokio::task::JoinError>,
        state: &Arc<AppState>,
        edge_id: &str,
    ) -> Result<u64, Refusal> {
        self.storing = None;
        let (budget, result) = stored.map_err(|error| {
            tracing::error!(edge = %edge_id, %error, "storing spool entries failed");
            Refusal("locator error while storing the spool; reconnect and resend".into())
        })?;
        self.budget = Some(budget);
        let acked = result?;
        self.last_seq = acked;
        if let Some(entries) = self.queued.take() {
            self.start(state, edge_id, entries);
        }
        Ok(acked)
    }
}

async fn store_entries(
    state: &Arc<AppState>,
    edge_id: &str,
    last_seq: u64,
    budget: &mut SpoolBudget,
    entries: Vec<SpoolEntry>,
) -> Result<u64, Refusal> {
    if entries.len() > MAX_SPOOL_BATCH {
        return Err(Refusal(format!(
            "spool batch of {} entries exceeds {MAX_SPOOL_BATCH}",
            entries.len()
        )));
    }
    // Entries the locator already stored may come again (the edge resends what it had no
    // ack for): they are skipped. The others must continue the stored sequence without a
    // gap, strictly increasing, below MAX_SPOOL_SEQ: one forged number can neither end
    // the edge's audit trail (acknowledged, it would make every later entry a
    // "duplicate") nor overflow it.
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
    let mut expected = last_seq + 1;
    let mut fresh = 0_u64;
    for entry in &entries {
        if entry.seq <= last_seq {
            continue;
        }
        if entry.seq != expected || entry.seq > MAX_SPOOL_SEQ {
            return Err(refuse_spool(state, edge_id, expected, entry.seq).await);
        }
        expected += 1;
        fresh += 1;
    }
    budget.spend(fresh).await;
    let acked = state
        .store
        .store_spool(edge_id, &entries)
        .await
        .map_err(|e| {
            tracing::error!(edge = %edge_id, error = %e, "could not store spool entries");
            Refusal("locator database unavailable; reconnect and resend".into())
        })?;
    state.metrics.spool_entries.inc_by(entries.len() as u64);
    Ok(acked)
}

async fn handle(
    state: &Arc<AppState>,
    edge_id: &str,
    conn_id: u64,
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
        // Taken by the link loop (`store_batch`), which keeps reading meanwhile.
        EdgeMessage::Spool { .. } => Ok(None),
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
    let generation = state.generation();
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
        if let Ok(MovedRoom {
            target,
            moved: true,
            ..
        }) = ops::move_room(state, &generation, &record, None).await
        {
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
