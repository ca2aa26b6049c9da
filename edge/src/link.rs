//! The locator link: a tokio-tungstenite client websocket to `<locator>/v1/edge/link`.
//!
//! One connection at a time:
//!
//! 1. connect with `Authorization: Bearer <LOCATOR_EDGE_TOKEN>`, this edge's own
//!    credential (the header value is marked sensitive, and the binary keeps
//!    tungstenite's handshake trace, which prints the request, off);
//! 2. send `Register` (id, region, public URL, capacity, version, the sessions hosted
//!    now, whether draining) and wait for `Welcome`;
//! 3. align the spool with the locator's `acked_seq` (see [`crate::spool`]) and take its
//!    report interval;
//! 4. then, concurrently: send each load sample as a `Report`; relay spool entries above
//!    what the locator has, in order, in batches of at most [`MAX_SPOOL_BATCH`], one
//!    batch in flight at a time; on `Ack { seq }` delete through `seq` and send the next
//!    batch; pass `Drain` and `RoomsMoved` to the drain; send what the drain asks
//!    (`Draining`, `DrainDeadline`); beat every `heartbeat_interval_ms` of the welcome
//!    (the heartbeat its failure detector judges this edge by): pings, or, when the
//!    welcome offers `pong_heartbeats`, unsolicited pongs (nothing for the locator to
//!    answer) with a ping every [`heartbeat::ping_every`], so that it still hears a
//!    locator with nothing else to say (it gives the link up after
//!    [`heartbeat::silent_limit`] of silence).
//!
//! On any failure the edge reconnects with jittered exponential back-off (full jitter,
//! [`BACKOFF_BASE`] doubling to [`BACKOFF_CAP`]; back to the base after a link that held
//! [`STABLE_LINK`]). A connection that fails moves the edge to the next locator URL; a
//! link that was up and then dropped is retried on the same URL first. Sessions never wait on any of this: the hub only writes to the spool.
//!
//! TLS: an `https://` (or `wss://`) locator URL is dialled over rustls with the
//! configuration of [`crate::config::Settings::locator_tls`]: Mozilla's public roots, or
//! only the CAs of `--ca-file` (see `locus_serve::tls` for why those roots). A certificate
//! the edge does not trust fails the connection like any other (logged with rustls'
//! reason, e.g. "invalid peer certificate: UnknownIssuer"), so the credential is never
//! sent to an unverified locator. `http://` stays for a private network or a local
//! TLS-terminating proxy.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use locus_protocol::{
    EdgeMessage, LocatorMessage, MAX_FRAME_BYTES, MAX_SPOOL_BATCH, PROTOCOL_VERSION, Register,
    SpoolEntry, heartbeat,
};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::spool::SpoolError;
use crate::state::EdgeState;

/// First reconnection delay bound.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Largest reconnection delay bound.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// A link up this long counts as having worked: the back-off starts over.
pub const STABLE_LINK: Duration = Duration::from_secs(10);
/// TCP connect and websocket handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From `Register` to `Welcome`.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// One frame write.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Websocket buffers of the link (one connection: a little larger than a client's).
const LINK_BUFFER: usize = 16 * 1024;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Exponential back-off with full jitter: each delay is uniform in `0..=bound`, and the
/// bound doubles from `base` up to `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    bound: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            bound: base,
        }
    }

    /// The next delay; doubles the bound.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let bound_ms = self.bound.as_millis() as u64;
        let delay = Duration::from_millis(rng.random_range(0..=bound_ms));
        self.bound = (self.bound * 2).min(self.cap);
        delay
    }

    /// Back to the base bound (after a link that worked).
    pub fn reset(&mut self) {
        self.bound = self.base;
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error(
        "the locator refused this edge (HTTP {0}): check that LOCATOR_EDGE_TOKEN is this edge's credential (`locator edge-credential --id ID`) and not revoked"
    )]
    Unauthorized(u16),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("the locator closed the link: {0}")]
    Refused(String),
    #[error("the link closed")]
    Closed,
    #[error("websocket error: {0}")]
    Ws(#[from] tungstenite::Error),
    #[error("the locator sent a malformed message: {0}")]
    Malformed(String),
    #[error("the locator speaks protocol {0}, this edge {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("{0}")]
    Spool(#[from] SpoolError),
}

/// Keeps the link up forever (the server aborts it when it stops).
pub async fn run(state: Arc<EdgeState>, mut outbox: mpsc::Receiver<EdgeMessage>) {
    let urls: Vec<String> = state
        .settings
        .locators
        .iter()
        .filter_map(|u| crate::config::link_url(u).ok())
        .collect();
    if urls.is_empty() {
        tracing::error!("no usable locator URL: the edge runs without a locator link");
        return;
    }
    let mut index = 0;
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
    let mut failures: u32 = 0;
    loop {
        let url = &urls[index % urls.len()];
        let mut established = false;
        let began = Instant::now();
        let error = connect_and_serve(&state, url, &mut outbox, &mut established).await;
        state.link.set_connected(None);
        if established {
            tracing::warn!(locator = %url, %error, "locator link lost; reconnecting (sessions go on)");
            // Only a link that held for a while starts the back-off over: one that fails
            // right after every welcome must not become a reconnection loop.
            if began.elapsed() >= STABLE_LINK {
                backoff.reset();
            }
            failures = 0;
        } else {
            failures += 1;
            if failures == 1 || failures.is_multiple_of(20) {
                tracing::warn!(locator = %url, %error, attempts = failures, "cannot reach the locator; retrying with back-off, rotating through the locator URLs (sessions go on)");
            } else {
                tracing::debug!(locator = %url, %error, attempts = failures, "locator connection failed");
            }
            index += 1;
        }
        let delay = backoff.next_delay(&mut rand::rng());
        tokio::time::sleep(delay).await;
    }
}

async fn connect(state: &EdgeState, url: &str) -> Result<Ws, LinkError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    let mut value = HeaderValue::from_str(&format!("Bearer {}", state.token.expose()))
        .map_err(|_| LinkError::Connect("LOCATOR_EDGE_TOKEN is not a valid header value".into()))?;
    value.set_sensitive(true);
    request.headers_mut().insert(header::AUTHORIZATION, value);
    let config = WebSocketConfig::default()
        .read_buffer_size(LINK_BUFFER)
        .write_buffer_size(LINK_BUFFER)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(tokio_tungstenite::Connector::Rustls(
                state.settings.locator_tls.clone(),
            )),
        ),
    )
    .await
    {
        Err(_) => Err(LinkError::Timeout("connecting")),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            if status == 401 || status == 403 {
                Err(LinkError::Unauthorized(status))
            } else {
                Err(LinkError::Connect(format!("HTTP {status}")))
            }
        }
        Ok(Err(e)) => Err(LinkError::Connect(describe_connect_error(e))),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// A connection error as the operator needs it: a certificate the edge does not trust
/// says where the trust comes from.
fn describe_connect_error(error: tungstenite::Error) -> String {
    use locus_serve::tls::rustls;
    let certificate = match &error {
        tungstenite::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .filter(|e| matches!(e, rustls::Error::InvalidCertificate(_))),
        _ => None,
    };
    match certificate {
        Some(e) => format!(
            "TLS: the locator's certificate is refused ({e}): the edge trusts the public roots, or only the CA certificates of --ca-file when given"
        ),
        None => error.to_string(),
    }
}

async fn send(ws: &mut Ws, message: &EdgeMessage) -> Result<(), LinkError> {
    let text = serde_json::to_string(message).unwrap_or_default();
    send_text(ws, text).await
}

async fn send_text(ws: &mut Ws, text: String) -> Result<(), LinkError> {
    match tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Text(text.into()))).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(LinkError::Timeout("writing to the locator")),
    }
}

/// Reads the next locator message, skipping control frames.
async fn next_message(ws: &mut Ws) -> Result<LocatorMessage, LinkError> {
    loop {
        match ws.next().await {
            None => return Err(LinkError::Closed),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text)
                    .map_err(|e| LinkError::Malformed(e.to_string()));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(LinkError::Refused(
                    frame.map_or_else(String::new, |f| f.reason.to_string()),
                ));
            }
            Some(Ok(_)) => {}
        }
    }
}

fn register(state: &EdgeState) -> Register {
    let s = &state.settings;
    Register {
        protocol: PROTOCOL_VERSION,
        edge_id: s.edge_id.clone(),
        region: s.region.clone(),
        public_url: s.public_url.clone(),
        capacity: s.capacity,
        version: env!("CARGO_PKG_VERSION").to_string(),
        sessions: state.hub.session_ids(),
        draining: state.drain.is_draining(),
        features: locus_protocol::features::ALL
            .iter()
            .map(|f| f.to_string())
            .collect(),
    }
}

/// `Register` as text within the locator's frame limit: when the list of hosted
/// sessions would not fit, it is cut (the locator closes the link on an oversized frame,
/// which would leave the edge with no link at all). Returns the text and how many
/// session ids were left out.
fn register_frame(register: Register) -> (String, usize) {
    let total = register.sessions.len();
    let mut message = EdgeMessage::Register(register);
    loop {
        let text = serde_json::to_string(&message).unwrap_or_default();
        let EdgeMessage::Register(register) = &mut message else {
            return (text, 0);
        };
        if text.len() <= MAX_FRAME_BYTES * 9 / 10 || register.sessions.is_empty() {
            return (text, total - register.sessions.len());
        }
        register.sessions.truncate(register.sessions.len() / 2);
    }
}

/// `EdgeMessage::Spool` serialised from a borrowed slice (the same JSON).
#[derive(serde::Serialize)]
struct SpoolFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    entries: &'a [SpoolEntry],
}

/// A spool batch as text, small enough for the locator's frame limit: the batch is
/// halved until it fits. Returns the last sequence sent and the text.
fn spool_frame(entries: &[SpoolEntry]) -> (u64, String) {
    let mut count = entries.len();
    loop {
        let batch = &entries[..count];
        let text = serde_json::to_string(&SpoolFrame {
            kind: "spool",
            entries: batch,
        })
        .unwrap_or_default();
        if text.len() <= MAX_FRAME_BYTES * 9 / 10 || count <= 1 {
            return (batch.last().map_or(0, |e| e.seq), text);
        }
        count /= 2;
    }
}

async fn connect_and_serve(
    state: &Arc<EdgeState>,
    url: &str,
    outbox: &mut mpsc::Receiver<EdgeMessage>,
    established: &mut bool,
) -> LinkError {
    let mut ws = match connect(state, url).await {
        Ok(ws) => ws,
        Err(e) => return e,
    };
    let (text, left_out) = register_frame(register(state));
    if left_out > 0 {
        tracing::warn!(
            left_out,
            "too many hosted sessions to announce in one register frame: some were left out of the announcement (they go on)"
        );
    }
    if let Err(e) = send_text(&mut ws, text).await {
        return e;
    }
    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, next_message(&mut ws)).await {
        Err(_) => return LinkError::Timeout("waiting for the locator's welcome"),
        Ok(Err(e)) => return e,
        Ok(Ok(LocatorMessage::Error { reason })) => return LinkError::Refused(reason),
        Ok(Ok(LocatorMessage::Welcome {
            protocol,
            report_interval_ms,
            acked_seq,
            suspended,
            heartbeat_interval_ms,
            pong_heartbeats,
        })) => {
            if protocol != PROTOCOL_VERSION {
                return LinkError::Version(protocol);
            }
            (
                report_interval_ms,
                acked_seq,
                suspended,
                heartbeat_interval_ms,
                pong_heartbeats,
            )
        }
        Ok(Ok(other)) => {
            return LinkError::Malformed(format!("expected welcome, got {other:?}"));
        }
    };
    let (report_interval_ms, acked_seq, suspended, heartbeat_interval_ms, pong_heartbeats) =
        welcome;
    let outcome = match state.spool.on_welcome(acked_seq).await {
        Ok(outcome) => outcome,
        Err(e) => return e.into(),
    };
    let interval = Duration::from_millis(report_interval_ms.clamp(100, 3_600_000));
    state.load.set_interval(interval);
    // The heartbeat: as often as the locator asks (its failure detector counts on it),
    // else once a report interval.
    let heartbeat = match heartbeat_interval_ms {
        0 => interval,
        ms => Duration::from_millis(ms.clamp(20, 3_600_000)).min(interval),
    };
    *established = true;
    state.link.set_connected(Some(url.to_string()));
    tracing::info!(
        locator = %url,
        acked_seq,
        deleted = outcome.deleted,
        pending = state.spool.len(),
        report_interval_ms,
        heartbeat_ms = heartbeat.as_millis() as u64,
        pong_heartbeats,
        "registered with the locator"
    );
    if suspended {
        tracing::warn!(
            "this edge is SUSPENDED by an admin: it gets no new sessions unless no other edge is available; its sessions go on"
        );
    }
    let heartbeat = Heartbeat {
        every: heartbeat,
        pongs: pong_heartbeats,
    };
    match serve(state, &mut ws, outbox, acked_seq, interval, heartbeat).await {
        Ok(()) => LinkError::Closed,
        Err(e) => e,
    }
}

/// How this link beats: every `every`, as pings, or (`pongs`, offered by the welcome) as
/// unsolicited pongs the locator does not answer, with a ping every
/// [`heartbeat::ping_every`].
struct Heartbeat {
    every: Duration,
    pongs: bool,
}

async fn serve(
    state: &Arc<EdgeState>,
    ws: &mut Ws,
    outbox: &mut mpsc::Receiver<EdgeMessage>,
    acked_seq: u64,
    interval: Duration,
    beat: Heartbeat,
) -> Result<(), LinkError> {
    let mut reports = state.load.subscribe();
    reports.mark_changed();
    let mut spool = state.spool.subscribe();
    let mut sent_through = acked_seq;
    let mut in_flight: Option<u64> = None;
    let silent_limit = heartbeat::silent_limit(interval);
    let ping_every = heartbeat::ping_every(interval);
    // A heartbeat to the locator every `beat.every`: the locator judges this edge's
    // liveness by these (a stopped process stops beating). Pings are answered, and the
    // pongs tell this edge the locator is there; an unsolicited pong is not (a write and
    // a wake-up fewer for the locator, which holds thousands of links), so with pong
    // heartbeats only one every `ping_every` is a ping.
    let mut heartbeat = tokio::time::interval(beat.every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut last_ping = Instant::now();
    loop {
        if in_flight.is_none() {
            spool.borrow_and_update();
            let batch = state.spool.pending(sent_through, MAX_SPOOL_BATCH).await?;
            if !batch.is_empty() {
                let (last, text) = spool_frame(&batch);
                send_text(ws, text).await?;
                in_flight = Some(last);
                sent_through = last;
            }
        }
        tokio::select! {
            changed = spool.changed(), if in_flight.is_none() => {
                if changed.is_err() {
                    return Err(LinkError::Spool(SpoolError::Stopped));
                }
            }
            changed = reports.changed() => {
                if changed.is_err() {
                    return Err(LinkError::Closed);
                }
                let report = *reports.borrow_and_update();
                if let Some(report) = report {
                    send(ws, &EdgeMessage::Report(report)).await?;
                }
            }
            message = outbox.recv() => {
                let Some(message) = message else { return Ok(()) };
                let result = send(ws, &message).await;
                // Counted even when the write failed: that message went with the link.
                state.link.note_written();
                result?;
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > silent_limit {
                    return Err(LinkError::Timeout("locator silent"));
                }
                let frame = if beat.pongs && last_ping.elapsed() < ping_every {
                    Message::Pong(Default::default())
                } else {
                    last_ping = Instant::now();
                    Message::Ping(Default::default())
                };
                match tokio::time::timeout(WRITE_TIMEOUT, ws.send(frame)).await {
                    Ok(result) => result?,
                    Err(_) => return Err(LinkError::Timeout("writing to the locator")),
                }
            }
            incoming = ws.next() => {
                last_heard = Instant::now();
                let message = match incoming {
                    None => return Err(LinkError::Closed),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(text))) => serde_json::from_str::<LocatorMessage>(&text)
                        .map_err(|e| LinkError::Malformed(e.to_string()))?,
                    Some(Ok(Message::Close(frame))) => {
                        return Err(LinkError::Refused(
                            frame.map_or_else(String::new, |f| f.reason.to_string()),
                        ));
                    }
                    Some(Ok(_)) => continue,
                };
                match message {
                    LocatorMessage::Ack { seq } => {
                        state.spool.delete_through(seq).await?;
                        if let Some(last) = in_flight.take()
                            && seq < last
                        {
                            // Not everything sent was stored: send the rest again.
                            sent_through = seq;
                        }
                    }
                    LocatorMessage::Drain { deadline_unix_ms } => {
                        if state.drain.start_until(deadline_unix_ms) {
                            tracing::info!(deadline_unix_ms, "drain requested by the locator");
                        }
                    }
                    LocatorMessage::RoomsMoved { moves } => state.drain.rooms_moved(moves),
                    LocatorMessage::SessionsEnded { sessions, reason } => {
                        // Off the link's loop: closing waits on each session's membership.
                        let hub = state.hub.clone();
                        tokio::spawn(async move {
                            hub.end_by_locator(&sessions, &reason).await;
                        });
                    }
                    LocatorMessage::Error { reason } => return Err(LinkError::Refused(reason)),
                    LocatorMessage::Welcome { .. } => {
                        tracing::debug!("ignored a second welcome");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_protocol::SpoolBody;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn backoff_is_jittered_doubling_and_capped() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        let mut bounds = Vec::new();
        for _ in 0..10 {
            let bound = backoff.bound;
            let delay = backoff.next_delay(&mut rng);
            assert!(delay <= bound, "{delay:?} above {bound:?}");
            bounds.push(bound.as_millis());
        }
        assert_eq!(
            bounds,
            [
                250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000
            ]
        );
        // Jitter: the delays are not all the bound.
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay(&mut rng)).collect();
        assert!(delays.iter().any(|d| *d < Duration::from_secs(9)));
        backoff.reset();
        assert!(backoff.next_delay(&mut rng) <= Duration::from_millis(250));
    }

    #[test]
    fn register_frames_stay_under_the_frame_limit() {
        let register = Register {
            protocol: PROTOCOL_VERSION,
            edge_id: "e".into(),
            region: "r".into(),
            public_url: "http://e".into(),
            capacity: 1,
            version: "1".into(),
            sessions: (0..20_000).map(|i| format!("session-{i:016}")).collect(),
            draining: false,
            features: vec![],
        };
        let (text, left_out) = register_frame(register.clone());
        assert!(text.len() <= MAX_FRAME_BYTES);
        assert!(left_out > 0);
        let Ok(EdgeMessage::Register(sent)) = serde_json::from_str(&text) else {
            panic!("not a register message");
        };
        assert_eq!(sent.sessions.len() + left_out, 20_000);
        let small = Register {
            sessions: vec!["a".into()],
            ..register
        };
        assert_eq!(register_frame(small).1, 0);
    }

    #[test]
    fn spool_frames_stay_under_the_frame_limit() {
        let big = "x".repeat(2_000);
        let entries: Vec<SpoolEntry> = (1..=MAX_SPOOL_BATCH as u64)
            .map(|seq| SpoolEntry {
                seq,
                at_unix_ms: 0,
                body: SpoolBody::SessionStarted {
                    session_id: big.clone(),
                },
            })
            .collect();
        let (last, text) = spool_frame(&entries);
        assert!(text.len() <= MAX_FRAME_BYTES, "{}", text.len());
        let EdgeMessage::Spool { entries } = serde_json::from_str(&text).expect("parses") else {
            panic!("not a spool message");
        };
        assert_eq!(entries.last().map(|e| e.seq), Some(last));
        assert_eq!(
            entries.first().map(|e| e.seq),
            Some(1),
            "starts at the first"
        );
    }
}
