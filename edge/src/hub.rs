//! Sessions: clients in, messages relayed, presence pushed, bounds kept.
//!
//! A client opens `GET /v1/sessions/{id}/ws?token=<join token>` (browsers cannot set
//! headers on a websocket, so the token is a query parameter; `Authorization: Bearer` is
//! accepted too). The token is verified locally *before* the upgrade (signature, expiry,
//! session, this edge's id); a refusal is an HTTP `401`/`403` problem. Admission
//! (draining, session full, spool full) is checked before the upgrade too, and again
//! after it, where a refusal is a close frame with a code and a reason.
//!
//! Each participant has one task that reads its socket and writes its bounded send
//! queue. Messages (text or binary, opaque to the edge) are pushed with `try_send` into
//! every other participant's queue by the sender's task, in the order it read them, so
//! order per sender holds and a sender never waits for a receiver. A receiver whose
//! queue is full is *kicked*: it is disconnected with the reason
//! [`SLOW_CONSUMER`] and its queue is dropped, so a consumer that falls behind costs at
//! most its queue, never more. Frames are shared (`Bytes`), so fan-out copies no
//! payload.
//!
//! Presence: on every join and leave each participant, the joiner included, gets
//! `{"locus":"presence","session":…,"participants":[…],"you":…}`. Client text frames
//! starting with `{"locus"` are refused (that prefix is reserved for the edge's own
//! messages) so a participant cannot forge presence or moves; the one exception is the
//! WebRTC signalling below.
//!
//! Membership changes of a session are serialised by an async mutex, held while the
//! audit entry is committed to the spool, so `session_started`, `participant_joined`,
//! `participant_left` and `session_ended` are spooled in the order they happened. The
//! relay path does not take that mutex: it reads an immutable snapshot of the peers.
//! An empty session lingers (`--linger`) before it ends, so a client that reconnects at
//! once finds its session.
//!
//! WebRTC: reserved frames `{"locus":"rtc",…}` are handed to the participant's peer in
//! [`crate::media`] (started by its first offer, ended when it leaves); everything else
//! starting with `{"locus"` is still refused. Session messages (relayed frames) go to a
//! participant on its `locus` data channel while that is open, else on its websocket,
//! from the same bounded queue, so each arrives once and in order per sender; a data
//! channel whose send buffer (`--rtc-send-buffer`) is full disconnects its participant
//! like a full websocket queue does.
//!
//! Memory per idle connection is kept small (about 6 KiB, measured by
//! `benches/sessions.rs`): a 2 KiB websocket read buffer and a 4 KiB write target
//! (tungstenite's defaults are 128 KiB each), one task whose one-off steps (join, leave,
//! close) are boxed out of its future, and a queue that allocates only while it holds
//! messages.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use locus_protocol::join_token::{
    JOIN_TOKEN_TTL_SECS, JoinKey, MAX_JOIN_TOKEN_LIFETIME_SECS, TokenError,
};
use locus_protocol::{RoomMove, SpoolBody};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::media::{
    self, DataMessage, DataOut, DataSendError, Media, NotRtc, Outlet, RtcPeer, Signal,
};
use crate::spool::Spool;
use locus_serve::problem::Problem;

/// Close code: the edge is going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: protocol violation (reserved prefix, slow consumer).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: message above `--max-message-bytes`.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: the session moved to another edge (reason `moved to <edge id>`).
pub const CLOSE_MOVED: u16 = 4000;
/// Close code: the same participant connected again; this older connection is closed.
/// (No longer sent: a second connection of a connected participant is refused instead,
/// with [`CLOSE_PARTICIPANT_CONNECTED`]. Kept for clients that still handle it.)
pub const CLOSE_REPLACED: u16 = 4001;
/// Close code: the join token's participant is connected already; the connection that
/// holds it is kept (a replayed token cannot take it over).
pub const CLOSE_PARTICIPANT_CONNECTED: u16 = 4008;
/// Close code: the session has its maximum number of participants.
pub const CLOSE_SESSION_FULL: u16 = 4409;
/// Close code: the edge takes no new participants now (draining, spool full).
pub const CLOSE_UNAVAILABLE: u16 = 4503;
/// Close code: the locator ended the session (its edge had failed, or nobody joined it in
/// time); a re-join is answered 410 by the locator: start a new session.
pub const CLOSE_SESSION_ENDED: u16 = 4410;

/// Reason given to a consumer disconnected for falling behind.
pub const SLOW_CONSUMER: &str = "too slow: send queue full";
/// Reason given to a participant whose data channel does not drain.
pub const SLOW_DATA_CHANNEL: &str = "too slow: data channel send buffer full";
/// Reason given to a new session refused while draining.
pub const DRAINING: &str = "edge draining; ask the locator for another edge";
/// Reason given when the edge shuts down and the session does not move.
pub const SHUTTING_DOWN: &str = "edge shutting down: start a new session";
/// Client text frames may not start with this: the edge's own messages do.
pub const RESERVED_PREFIX: &str = "{\"locus\"";

/// Websocket read buffer of a client connection: allocated for every connection, idle
/// or not (tungstenite's default is 128 KiB). Larger messages still arrive whole: the
/// buffer grows for the frame being read.
pub const READ_BUFFER: usize = 2 * 1024;
/// Websocket write buffer target of a client connection: frames queued together are
/// written in one system call up to this size (tungstenite's default is 128 KiB).
pub const WRITE_BUFFER: usize = 4 * 1024;
/// A ping is sent after this long without any frame from the client.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A client silent (no frame, no pong) this long is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// A linger timer that fires this much after its deadline means the edge was not
/// running (stopped, starved): it waits again (see `schedule_end`). Well above the lateness
/// of a busy runtime, so a running edge's linger stays what the operator set.
const LATE_TIMER: Duration = Duration::from_millis(100);
/// How long closing a connection may take (the close frame may wait behind data a slow
/// client has not read yet).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames written before a flush when the queue has several waiting.
const WRITE_BATCH: usize = 64;

/// Limits and identity of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub edge_id: String,
    pub max_message_bytes: usize,
    pub max_participants: usize,
    pub send_queue: usize,
    pub linger: Duration,
}

/// Why a participant was not admitted: an HTTP problem before the upgrade, a close frame
/// after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub problem: &'static str,
    pub close_code: u16,
    pub reason: String,
}

impl Refusal {
    fn draining() -> Refusal {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            problem: "edge-draining",
            close_code: CLOSE_UNAVAILABLE,
            reason: DRAINING.into(),
        }
    }

    fn session_full(max: usize) -> Refusal {
        Refusal {
            status: StatusCode::CONFLICT,
            problem: "session-full",
            close_code: CLOSE_SESSION_FULL,
            reason: format!("session full: at most {max} participants"),
        }
    }

    fn participant_connected() -> Refusal {
        Refusal {
            status: StatusCode::CONFLICT,
            problem: "join-token-in-use",
            close_code: CLOSE_PARTICIPANT_CONNECTED,
            reason: "this join token's participant is connected already (a token admits one connection at a time); ask the locator for a fresh one (GET /v1/sessions/{id})".into(),
        }
    }

    fn session_ended() -> Refusal {
        Refusal {
            status: StatusCode::GONE,
            problem: "session-ended",
            close_code: CLOSE_GOING_AWAY,
            reason: "this session ended on this edge; the join token was issued before it ended"
                .into(),
        }
    }

    fn spool_full() -> Refusal {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            problem: "edge-spool-full",
            close_code: CLOSE_UNAVAILABLE,
            reason: "edge cannot record new participants (audit spool full); ask the locator for another edge".into(),
        }
    }

    fn spool_error() -> Refusal {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            problem: "edge-spool-unavailable",
            close_code: CLOSE_UNAVAILABLE,
            reason: "edge cannot record the join (audit spool unavailable); try again or ask the locator for another edge".into(),
        }
    }

    fn problem(&self) -> Problem {
        Problem::with_status(self.status, self.problem, self.reason.clone())
    }
}

/// One outgoing item of a participant's queue.
#[derive(Debug)]
enum Out {
    /// An edge frame (presence, rtc, moved): always on the websocket.
    Frame(Message),
    /// A session message: on the data channel when one is open.
    Relay(Message),
    /// Close the connection (after what was queued before).
    Close(u16, String),
}

/// A participant's bounded send queue and its "disconnect now" signal.
///
/// The queue is a `VecDeque` that allocates only while it holds items and gives its
/// memory back when it empties after a burst, so an idle participant costs no queue
/// memory (a tokio `mpsc` channel allocates a block of 32 slots up front).
#[derive(Debug)]
struct Mailbox {
    queue: Mutex<VecDeque<Out>>,
    capacity: usize,
    /// Items were pushed.
    ready: Notify,
    /// Set once: the participant must be disconnected with this close.
    kick: OnceLock<(u16, String)>,
    kicked: Notify,
    /// The participant is gone: pushes are dropped.
    closed: AtomicBool,
    /// The participant's open `locus` data channel, if any.
    data: Mutex<Option<Arc<DataOut>>>,
}

/// A queue emptied with more than this many slots allocated gives its memory back.
const KEEP_SLOTS: usize = 8;

impl Mailbox {
    fn new(capacity: usize) -> Mailbox {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            ready: Notify::new(),
            kick: OnceLock::new(),
            kicked: Notify::new(),
            closed: AtomicBool::new(false),
            data: Mutex::new(None),
        }
    }

    fn data_channel(&self) -> Option<Arc<DataOut>> {
        self.data.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_data_channel(&self, channel: Option<Arc<DataOut>>) {
        *self.data.lock().unwrap_or_else(|p| p.into_inner()) = channel;
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Out>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an item; false when the queue is full (nothing is queued then).
    fn try_push(&self, out: Out) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return true;
        }
        let mut queue = self.queue();
        if queue.len() >= self.capacity {
            return false;
        }
        queue.push_back(out);
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// Queues an item; a full queue kicks the participant.
    fn push(&self, out: Out) {
        if !self.try_push(out) {
            self.kick(CLOSE_POLICY, SLOW_CONSUMER);
        }
    }

    fn try_pop(&self) -> Option<Out> {
        let mut queue = self.queue();
        let out = queue.pop_front();
        if queue.is_empty() && queue.capacity() > KEEP_SLOTS {
            *queue = VecDeque::new();
        }
        out
    }

    /// The next item, waiting for one. Cancel-safe: an item is only taken when returned.
    async fn pop(&self) -> Out {
        loop {
            if let Some(out) = self.try_pop() {
                return out;
            }
            self.ready.notified().await;
        }
    }

    fn kick(&self, code: u16, reason: &str) {
        if self.kick.get().is_none() && self.kick.set((code, reason.to_string())).is_ok() {
            self.kicked.notify_one();
        }
    }

    fn kick_reason(&self) -> Option<(u16, String)> {
        self.kick.get().cloned()
    }

    /// The participant is gone: drop what is queued and whatever comes later.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        *self.queue() = VecDeque::new();
    }
}

#[derive(Debug, Clone)]
struct Peer {
    pid: Arc<str>,
    conn: u64,
    mailbox: Arc<Mailbox>,
}

#[derive(Debug, Default)]
struct Membership {
    /// `session_started` was spooled.
    started: bool,
    /// Removed from the hub: a joiner holding this session looks again.
    ended: bool,
    /// The locator ended it: nobody is admitted any more, and it ends when its last
    /// participant has left (no linger).
    ended_by_locator: bool,
    /// Bumped on every membership change: a linger timer of an older generation is void.
    generation: u64,
    members: Vec<Peer>,
}

/// One hosted session.
#[derive(Debug)]
pub struct Session {
    id: Arc<str>,
    membership: tokio::sync::Mutex<Membership>,
    /// What the relay reads: replaced whole on every membership change.
    peers: Mutex<Arc<[Peer]>>,
}

impl Session {
    fn new(id: &str) -> Session {
        Session {
            id: id.into(),
            membership: tokio::sync::Mutex::new(Membership::default()),
            peers: Mutex::new(Arc::from(Vec::new())),
        }
    }

    fn peers(&self) -> MutexGuard<'_, Arc<[Peer]>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_peers(&self, members: &[Peer]) {
        *self.peers() = Arc::from(members.to_vec());
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Serialize)]
struct Presence<'a> {
    locus: &'static str,
    session: &'a str,
    participants: &'a [&'a str],
    you: &'a str,
}

#[derive(Serialize)]
struct Moved<'a> {
    locus: &'static str,
    session: &'a str,
    edge: &'a str,
    url: &'a str,
}

/// Every session hosted by this edge.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    join_key: JoinKey,
    spool: Spool,
    media: Arc<Media>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    session_count: watch::Sender<usize>,
    connections: watch::Sender<u32>,
    next_conn: AtomicU64,
    draining: AtomicBool,
    /// Shutting down: empty sessions end at once (no linger).
    closing: AtomicBool,
    /// Sessions that ended here, while tokens issued before their end may still be valid.
    ended: Mutex<EndedSessions>,
}

/// Session ids that ended here, with when (Unix seconds), oldest first.
#[derive(Debug, Default)]
struct EndedSessions {
    at: HashMap<Arc<str>, u64>,
    order: VecDeque<(Arc<str>, u64)>,
}

/// Counts an open client connection while it lives.
struct ConnectionGuard(Arc<Hub>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Hub {
    pub fn new(config: HubConfig, join_key: JoinKey, spool: Spool, media: Arc<Media>) -> Arc<Hub> {
        Arc::new(Hub {
            config,
            join_key,
            spool,
            media,
            sessions: Mutex::new(HashMap::new()),
            session_count: watch::channel(0).0,
            connections: watch::channel(0).0,
            next_conn: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            ended: Mutex::default(),
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open client websockets.
    pub fn connections(&self) -> u32 {
        *self.connections.borrow()
    }

    /// Changes with the number of open client websockets.
    pub fn subscribe_connections(&self) -> watch::Receiver<u32> {
        self.connections.subscribe()
    }

    /// Hosted sessions (lingering ones included).
    pub fn session_count(&self) -> usize {
        *self.session_count.borrow()
    }

    /// Changes with the number of hosted sessions.
    pub fn subscribe_sessions(&self) -> watch::Receiver<usize> {
        self.session_count.subscribe()
    }

    /// Ids of the hosted sessions.
    pub fn session_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.sessions().keys().map(|k| k.to_string()).collect();
        ids.sort();
        ids
    }

    /// Participant ids of a session, in join order (for status and tests).
    pub fn participants(&self, session_id: &str) -> Vec<String> {
        let session = self.sessions().get(session_id).cloned();
        session.map_or_else(Vec::new, |s| {
            s.peers().iter().map(|p| p.pid.to_string()).collect()
        })
    }

    /// From now on new sessions are refused; joins of hosted sessions go on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn count_changed(&self, map: &HashMap<Arc<str>, Arc<Session>>) {
        self.session_count.send_replace(map.len());
    }

    /// Checks admission without changing anything (before the upgrade).
    pub fn precheck(&self, session_id: &str, pid: &str, exp: u64) -> Result<(), Refusal> {
        let session = self.sessions().get(session_id).cloned();
        if session.is_none() && self.ended_before(session_id, exp) {
            return Err(Refusal::session_ended());
        }
        match session {
            None if self.is_draining() => Err(Refusal::draining()),
            _ if self.spool.is_full() => Err(Refusal::spool_full()),
            None => Ok(()),
            Some(session) => {
                let peers = session.peers().clone();
                if peers.iter().any(|p| &*p.pid == pid) {
                    Err(Refusal::participant_connected())
                } else if peers.len() >= self.config.max_participants
                    && !peers.iter().any(|p| &*p.pid == pid)
                {
                    Err(Refusal::session_full(self.config.max_participants))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn lookup_or_create(&self, session_id: &str, exp: u64) -> Result<Arc<Session>, Refusal> {
        let mut map = self.sessions();
        if let Some(session) = map.get(session_id) {
            return Ok(session.clone());
        }
        if self.ended_before(session_id, exp) {
            return Err(Refusal::session_ended());
        }
        if self.is_draining() || self.closing.load(Ordering::Relaxed) {
            return Err(Refusal::draining());
        }
        if self.spool.is_full() {
            return Err(Refusal::spool_full());
        }
        let session = Arc::new(Session::new(session_id));
        map.insert(session.id.clone(), session.clone());
        self.count_changed(&map);
        Ok(session)
    }

    /// Notes that `session_id` ended here now.
    fn remember_ended(&self, session_id: &Arc<str>) {
        let now = crate::now_unix();
        let mut guard = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        let ended = &mut *guard;
        // Forgotten once every token issued before the end has expired.
        while ended
            .order
            .front()
            .is_some_and(|(_, at)| at + MAX_JOIN_TOKEN_LIFETIME_SECS < now)
        {
            if let Some((id, at)) = ended.order.pop_front()
                && ended.at.get(&id) == Some(&at)
            {
                ended.at.remove(&id);
            }
        }
        ended.at.insert(session_id.clone(), now);
        ended.order.push_back((session_id.clone(), now));
    }

    /// True when `session_id` ended here after a token expiring at `exp` was issued:
    /// the locator issues tokens for `JOIN_TOKEN_TTL_SECS`, so a token issued after the
    /// end (a room re-joined before the locator heard of the end, or moved back here)
    /// expires no earlier than `end + JOIN_TOKEN_TTL_SECS`. Times are whole seconds: a
    /// token issued in the second the session ended counts as issued after it (a fresh
    /// token must never be refused; a replay gains at most that second).
    fn ended_before(&self, session_id: &str, exp: u64) -> bool {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended
            .at
            .get(session_id)
            .is_some_and(|at| exp < at + JOIN_TOKEN_TTL_SECS)
    }

    async fn join(
        self: &Arc<Self>,
        session_id: &str,
        peer: Peer,
        exp: u64,
    ) -> Result<Arc<Session>, Refusal> {
        loop {
            let session = self.lookup_or_create(session_id, exp)?;
            let mut m = session.membership.lock().await;
            if m.ended {
                continue;
            }
            let admitted = self.admit(&session, &mut m, &peer).await;
            if admitted.is_err() && m.members.is_empty() {
                if m.started {
                    self.schedule_end(&session, &mut m).await;
                } else {
                    // Created for this joiner only: nothing to linger for.
                    self.end_session(&session, &mut m).await;
                }
            }
            return admitted.map(|()| session.clone());
        }
    }

    async fn admit(
        &self,
        session: &Session,
        m: &mut Membership,
        peer: &Peer,
    ) -> Result<(), Refusal> {
        if m.ended_by_locator {
            return Err(Refusal::session_ended());
        }
        if self.closing.load(Ordering::Relaxed) {
            return Err(Refusal::draining());
        }
        if self.spool.is_full() {
            return Err(Refusal::spool_full());
        }
        // A second connection with the token of a connected participant is a replay (the
        // client asks the locator for a fresh token, with a new participant id, whenever
        // it re-joins): the connection that holds the participant is kept.
        if m.members.iter().any(|p| p.pid == peer.pid) {
            return Err(Refusal::participant_connected());
        }
        if m.members.len() >= self.config.max_participants {
            return Err(Refusal::session_full(self.config.max_participants));
        }
        let spool_failed = |error| {
            tracing::error!(session = %session.id, %error, "join refused: the audit entry could not be spooled");
            Refusal::spool_error()
        };
        if !m.started {
            self.spool
                .append(SpoolBody::SessionStarted {
                    session_id: session.id.to_string(),
                })
                .await
                .map_err(spool_failed)?;
            m.started = true;
        }
        self.spool
            .append(SpoolBody::ParticipantJoined {
                session_id: session.id.to_string(),
                participant: peer.pid.to_string(),
            })
            .await
            .map_err(spool_failed)?;
        m.generation += 1;
        m.members.push(peer.clone());
        session.publish_peers(&m.members);
        self.presence(session, m);
        Ok(())
    }

    async fn spool_left(&self, session: &Session, peer: &Peer) {
        if let Err(error) = self
            .spool
            .append(SpoolBody::ParticipantLeft {
                session_id: session.id.to_string(),
                participant: peer.pid.to_string(),
            })
            .await
        {
            tracing::error!(session = %session.id, participant = %peer.pid, %error, "could not spool participant_left");
        }
    }

    async fn leave(self: &Arc<Self>, session: &Arc<Session>, conn: u64) {
        let mut m = session.membership.lock().await;
        let Some(i) = m.members.iter().position(|p| p.conn == conn) else {
            return;
        };
        let peer = m.members.remove(i);
        m.generation += 1;
        session.publish_peers(&m.members);
        self.spool_left(session, &peer).await;
        self.presence(session, &m);
        if m.members.is_empty() {
            if m.ended_by_locator {
                self.end_session(session, &mut m).await;
            } else {
                self.schedule_end(session, &mut m).await;
            }
        }
    }

    /// The locator ended these sessions (`LocatorMessage::SessionsEnded`): tokens issued
    /// before now are refused (410 `session-ended`), and the participants of a hosted one
    /// are closed with [`CLOSE_SESSION_ENDED`]; it ends (spooled) when they have left.
    /// Returns how many participants were closed.
    pub async fn end_by_locator(self: &Arc<Self>, session_ids: &[String], reason: &str) -> usize {
        let reason: String = reason.chars().take(40).collect();
        let close_reason = format!("session ended by the locator ({reason}): start a new one");
        let mut closed = 0;
        for id in session_ids {
            let id: Arc<str> = id.as_str().into();
            self.remember_ended(&id);
            let Some(session) = self.sessions().get(&id).cloned() else {
                continue;
            };
            let mut m = session.membership.lock().await;
            if m.ended {
                continue;
            }
            m.ended_by_locator = true;
            m.generation += 1;
            for peer in &m.members {
                close_with(peer, None, CLOSE_SESSION_ENDED, &close_reason);
            }
            closed += m.members.len();
            tracing::info!(session = %id, participants = m.members.len(), %reason, "session ended by the locator");
            if m.members.is_empty() {
                self.end_session(&session, &mut m).await;
            }
        }
        closed
    }

    /// An empty session ends after the linger (at once when shutting down), unless
    /// someone joins meanwhile.
    async fn schedule_end(self: &Arc<Self>, session: &Arc<Session>, m: &mut Membership) {
        m.generation += 1;
        if self.closing.load(Ordering::Relaxed) || self.config.linger.is_zero() {
            self.end_session(session, m).await;
            return;
        }
        let generation = m.generation;
        let hub = self.clone();
        let session = session.clone();
        let linger = self.config.linger;
        tokio::spawn(async move {
            // The linger counts time the edge was running: a timer that fires late (the
            // process was stopped or starved) waits again as long as it was late, so a
            // participant who reconnected meanwhile is admitted (its connection waited in
            // the accept queue) instead of finding the session ended in its absence.
            let mut deadline = Instant::now() + linger;
            loop {
                tokio::time::sleep_until(deadline).await;
                let late = Instant::now().saturating_duration_since(deadline);
                if late < LATE_TIMER {
                    break;
                }
                deadline = Instant::now() + late.min(linger);
            }
            let mut m = session.membership.lock().await;
            if m.generation == generation && m.members.is_empty() && !m.ended {
                hub.end_session(&session, &mut m).await;
            }
        });
    }

    async fn end_session(&self, session: &Arc<Session>, m: &mut Membership) {
        if m.ended {
            return;
        }
        m.ended = true;
        if m.started {
            self.remember_ended(&session.id);
        }
        // Spooled before the session leaves the map: once it is gone from the hub, its
        // end is on disk. (A joiner meanwhile waits on the membership lock, sees `ended`
        // and starts a new session.)
        if m.started {
            if let Err(error) = self
                .spool
                .append(SpoolBody::SessionEnded {
                    session_id: session.id.to_string(),
                })
                .await
            {
                tracing::error!(session = %session.id, %error, "could not spool session_ended");
            }
            tracing::debug!(session = %session.id, "session ended");
        }
        let mut map = self.sessions();
        if map
            .get(&session.id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            map.remove(&session.id);
            self.count_changed(&map);
        }
    }

    /// Sends the presence list to every member.
    fn presence(&self, session: &Session, m: &Membership) {
        let pids: Vec<&str> = m.members.iter().map(|p| &*p.pid).collect();
        for peer in &m.members {
            let text = serde_json::to_string(&Presence {
                locus: "presence",
                session: &session.id,
                participants: &pids,
                you: &peer.pid,
            })
            .unwrap_or_default();
            peer.mailbox
                .push(Out::Frame(Message::Text(Utf8Bytes::from(text))));
        }
    }

    /// Hands an rtc frame to the participant's peer (started by its first offer); what
    /// cannot be taken is answered with an error frame.
    fn signal(&self, session: &Arc<Session>, me: &Peer, rtc: &mut Option<RtcPeer>, signal: Signal) {
        let offer_sdp = match &signal {
            Signal::Offer(sdp) => Some(sdp.as_str()),
            _ => None,
        };
        if rtc.as_ref().is_some_and(|peer| {
            peer.is_closed() || offer_sdp.is_some_and(|sdp| peer.is_replaced_by(sdp))
        }) {
            // Dropping the handle ends the old peer; its tracks leave the room.
            *rtc = None;
        }
        let fingerprint = offer_sdp
            .and_then(media::dtls_fingerprint)
            .map(str::to_owned);
        let result = match rtc {
            Some(peer) => peer.deliver(signal),
            None if matches!(signal, Signal::Offer(_)) => {
                let outlet = Arc::new(HubOutlet {
                    session: session.clone(),
                    conn: me.conn,
                    mailbox: me.mailbox.clone(),
                });
                self.media
                    .open(&session.id, &me.pid, outlet, fingerprint)
                    .and_then(|peer| rtc.insert(peer).deliver(signal))
            }
            None => Err(
                "out of order: this participant has no WebRTC peer connection; send an offer first"
                    .into(),
            ),
        };
        if let Err(detail) = result {
            me.mailbox.push(Out::Frame(Message::Text(Utf8Bytes::from(
                media::error_frame(&detail),
            ))));
        }
    }

    /// Closes every session (end of a drain): participants of moved rooms get where to
    /// go, the others that the edge is shutting down. Empty sessions end at once.
    pub async fn close_all(self: &Arc<Self>, moves: &[RoomMove]) {
        self.closing.store(true, Ordering::Relaxed);
        let moves: HashMap<&str, &RoomMove> =
            moves.iter().map(|m| (m.session_id.as_str(), m)).collect();
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        for session in sessions {
            let mut m = session.membership.lock().await;
            match moves.get(&*session.id) {
                Some(mv) => {
                    let text = serde_json::to_string(&Moved {
                        locus: "moved",
                        session: &session.id,
                        edge: &mv.edge_id,
                        url: &mv.url,
                    })
                    .unwrap_or_default();
                    let reason = format!("moved to {}", mv.edge_id);
                    for peer in &m.members {
                        close_with(peer, Some(&text), CLOSE_MOVED, &reason);
                    }
                }
                None => {
                    for peer in &m.members {
                        close_with(peer, None, CLOSE_GOING_AWAY, SHUTTING_DOWN);
                    }
                }
            }
            if m.members.is_empty() {
                self.end_session(&session, &mut m).await;
            }
        }
    }

    fn connection_guard(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.send_modify(|n| *n += 1);
        ConnectionGuard(self.clone())
    }
}

/// Pushes a session message to every other participant.
fn relay(session: &Session, from: u64, message: Message) {
    let peers = session.peers().clone();
    for peer in peers.iter().filter(|p| p.conn != from) {
        peer.mailbox.push(Out::Relay(message.clone()));
    }
}

/// What the media plane may do to a participant: queue edge frames, relay its
/// data-channel messages, switch its delivery to the data channel, disconnect it.
struct HubOutlet {
    session: Arc<Session>,
    conn: u64,
    mailbox: Arc<Mailbox>,
}

impl Outlet for HubOutlet {
    fn send_frame(&self, text: String) {
        self.mailbox
            .push(Out::Frame(Message::Text(Utf8Bytes::from(text))));
    }

    fn set_data_channel(&self, channel: Option<Arc<DataOut>>) {
        self.mailbox.set_data_channel(channel);
    }

    fn relay(&self, message: DataMessage) {
        let message = match message {
            DataMessage::Text(text) => Message::Text(Utf8Bytes::from(text)),
            DataMessage::Binary(bytes) => Message::Binary(bytes),
        };
        relay(&self.session, self.conn, message);
    }

    fn kick(&self, code: u16, reason: &str) {
        self.mailbox.kick(code, reason);
    }
}

/// Queues a last message and a close; a full queue turns into a kick with the same
/// close reason.
fn close_with(peer: &Peer, text: Option<&str>, code: u16, reason: &str) {
    let mailbox = &peer.mailbox;
    let queued = text.is_none_or(|text| {
        mailbox.try_push(Out::Frame(Message::Text(Utf8Bytes::from(text.to_string()))))
    }) && mailbox.try_push(Out::Close(code, reason.to_string()));
    if !queued {
        mailbox.kick(code, reason);
    }
}

/// Query of the session websocket.
#[derive(Debug, Deserialize)]
pub struct JoinQuery {
    token: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
}

fn token_problem(error: &TokenError) -> Problem {
    let (status, code) = match error {
        TokenError::Malformed => (StatusCode::UNAUTHORIZED, "join-token-malformed"),
        TokenError::BadSignature => (StatusCode::UNAUTHORIZED, "join-token-invalid"),
        TokenError::Expired => (StatusCode::UNAUTHORIZED, "join-token-expired"),
        TokenError::TooLong => (StatusCode::UNAUTHORIZED, "join-token-invalid"),
        TokenError::WrongSession => (StatusCode::FORBIDDEN, "join-token-wrong-session"),
        TokenError::WrongEdge => (StatusCode::FORBIDDEN, "join-token-wrong-edge"),
    };
    let hint = match error {
        TokenError::Expired => "; ask the locator for a fresh one (GET /v1/sessions/{id})",
        TokenError::WrongEdge => {
            "; ask the locator where the session lives now (GET /v1/sessions/{id})"
        }
        _ => "",
    };
    Problem::with_status(status, code, format!("{error}{hint}"))
}

/// `GET /v1/sessions/{id}/ws`: token check, admission check, upgrade.
pub async fn ws_handler(
    State(hub): State<Arc<Hub>>,
    Path(session_id): Path<String>,
    Query(query): Query<JoinQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(token) = query.token.or_else(|| bearer(&headers)) else {
        return Problem::with_status(
            StatusCode::UNAUTHORIZED,
            "join-token-missing",
            "a join token is required: open the websocket URL with ?token=<join_token> from the locator's answer",
        )
        .into_response();
    };
    let claims =
        match hub
            .join_key
            .verify(&token, &session_id, &hub.config.edge_id, crate::now_unix())
        {
            Ok(claims) => claims,
            Err(error) => {
                tracing::debug!(session = %session_id, %error, "join refused");
                return token_problem(&error).into_response();
            }
        };
    if let Err(refusal) = hub.precheck(&session_id, &claims.pid, claims.exp) {
        return refusal.problem().into_response();
    }
    let Ok(ws) = ws else {
        return Problem::with_status(
            StatusCode::BAD_REQUEST,
            "websocket-required",
            "this is a session websocket: connect with a websocket upgrade",
        )
        .into_response();
    };
    let max = hub.config.max_message_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| participant(hub, socket, session_id, claims.pid, claims.exp))
}

/// One participant's connection, from admission to close.
///
/// The join, leave and close steps are boxed: they run once, and keeping them out of the
/// task's own future keeps the memory of an idle connection small.
async fn participant(
    hub: Arc<Hub>,
    mut socket: WebSocket,
    session_id: String,
    pid: String,
    exp: u64,
) {
    let _guard = hub.connection_guard();
    let conn = hub.next_conn.fetch_add(1, Ordering::Relaxed);
    let mailbox = Arc::new(Mailbox::new(hub.config.send_queue));
    let peer = peer_of(&pid, conn, &mailbox);
    let session = match Box::pin(hub.join(&session_id, peer, exp)).await {
        Ok(session) => session,
        Err(refusal) => {
            tracing::debug!(session = %session_id, participant = %pid, reason = %refusal.reason, "participant refused");
            Box::pin(close_socket(
                &mut socket,
                refusal.close_code,
                &refusal.reason,
            ))
            .await;
            return;
        }
    };
    let end = pump(&hub, &session, &peer_of(&pid, conn, &mailbox), &mut socket).await;
    mailbox.close();
    // Leave first (others see the new presence at once), then take the time to close.
    Box::pin(hub.leave(&session, conn)).await;
    match end {
        Some((code, reason)) => {
            if reason == SLOW_CONSUMER {
                tracing::info!(session = %session_id, participant = %pid, "slow consumer disconnected: send queue full");
            }
            Box::pin(close_socket(&mut socket, code, &reason)).await;
        }
        // The client closed: send the reply tungstenite queued.
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.flush()).await;
        }
    }
}

fn peer_of(pid: &str, conn: u64, mailbox: &Arc<Mailbox>) -> Peer {
    Peer {
        pid: pid.into(),
        conn,
        mailbox: mailbox.clone(),
    }
}

/// Moves frames between the socket and the queue until the connection ends. Returns the
/// close to send, if any (`None`: the client left or the socket failed).
async fn pump(
    hub: &Hub,
    session: &Arc<Session>,
    me: &Peer,
    socket: &mut WebSocket,
) -> Option<(u16, String)> {
    let conn = me.conn;
    let mailbox = &*me.mailbox;
    // The participant's WebRTC peer, from its first offer; dropping it ends the peer.
    let mut rtc: Option<RtcPeer> = None;
    let max = hub.config.max_message_bytes;
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = mailbox.kicked.notified() => return mailbox.kick_reason(),
            out = mailbox.pop() => {
                match Box::pin(write_out(socket, out, mailbox)).await {
                    Ok(None) => {}
                    Ok(Some(close)) => return Some(close),
                    Err(()) => return mailbox.kick_reason(),
                }
            }
            incoming = socket.recv() => {
                last_heard = Instant::now();
                match incoming {
                    None | Some(Ok(Message::Close(_))) => return None,
                    Some(Err(error)) => return read_error_close(error, max),
                    Some(Ok(Message::Text(text))) => {
                        if text.as_str().starts_with(RESERVED_PREFIX) {
                            match media::parse_signal(text.as_str()) {
                                Ok(signal) => hub.signal(session, me, &mut rtc, signal),
                                Err(Err(detail)) => mailbox.push(Out::Frame(Message::Text(
                                    Utf8Bytes::from(media::error_frame(&detail)),
                                ))),
                                Err(Ok(NotRtc)) => return Some((
                                    CLOSE_POLICY,
                                    "text messages starting with {\"locus\" are reserved for the edge (except {\"locus\":\"rtc\",…} signalling)".into(),
                                )),
                            }
                            continue;
                        }
                        relay(session, conn, Message::Text(text));
                    }
                    Some(Ok(message @ Message::Binary(_))) => relay(session, conn, message),
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= IDLE_TIMEOUT {
                    return Some((CLOSE_GOING_AWAY, "no answer to pings".into()));
                }
                if last_heard.elapsed() >= PING_INTERVAL
                    && Box::pin(socket.send(Message::Ping(Default::default()))).await.is_err()
                {
                    return None;
                }
            }
        }
    }
}

/// Writes `first` and whatever else is queued (up to a batch), then flushes. `Ok(Some)`
/// asks to close; `Err` means kicked or the socket failed.
async fn write_out(
    socket: &mut WebSocket,
    first: Out,
    mailbox: &Mailbox,
) -> Result<Option<(u16, String)>, ()> {
    let write = async {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(out) = next.take() {
            match out {
                Out::Frame(message) => socket.feed(message).await.map_err(|_| ())?,
                Out::Relay(message) => match (mailbox.data_channel(), data_message(&message)) {
                    (Some(channel), Some(data)) => match channel.send(&data).await {
                        Ok(()) => {}
                        Err(DataSendError::Full) => {
                            mailbox.kick(CLOSE_POLICY, SLOW_DATA_CHANNEL);
                            return Err(());
                        }
                        // The channel closed meanwhile: the websocket takes it.
                        Err(DataSendError::Closed) => {
                            mailbox.set_data_channel(None);
                            socket.feed(message).await.map_err(|_| ())?;
                        }
                    },
                    _ => socket.feed(message).await.map_err(|_| ())?,
                },
                Out::Close(code, reason) => return Ok(Some((code, reason))),
            }
            written += 1;
            if written < WRITE_BATCH {
                next = mailbox.try_pop();
            }
        }
        socket.flush().await.map_err(|_| ())?;
        Ok(None)
    };
    tokio::select! {
        biased;
        () = mailbox.kicked.notified() => Err(()),
        result = write => result,
    }
}

/// A session message as the data channel carries it.
fn data_message(message: &Message) -> Option<DataMessage> {
    match message {
        Message::Text(text) => Some(DataMessage::Text(text.as_str().to_string())),
        Message::Binary(bytes) => Some(DataMessage::Binary(bytes.clone())),
        _ => None,
    }
}

/// The close answering a read error, when the socket can still carry one.
fn read_error_close(error: axum::Error, max: usize) -> Option<(u16, String)> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = error.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(_)) => Some((
            CLOSE_TOO_BIG,
            format!("message too big: the limit is {max} bytes"),
        )),
        Some(WsError::Utf8(_)) => Some((1007, "text message is not valid UTF-8".into())),
        Some(WsError::Protocol(_)) => Some((1002, "websocket protocol error".into())),
        _ => None,
    }
}

/// Sends a close frame and waits (bounded) for the client's reply, so the frame is not
/// lost to a reset.
async fn close_socket(socket: &mut WebSocket, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason[..end].to_string()),
    }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if socket.send(frame).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
