//! The media plane: each participant may open one WebRTC peer connection to the edge,
//! signalled over its session websocket; the edge forwards audio and video RTP between the
//! WebRTC participants of a session (a small SFU, no transcoding) and carries the
//! session's messages over a client-opened data channel labelled `locus`.
//!
//! Signalling (reserved frames on the session websocket, see the README's "Edge sessions"):
//! `{"locus":"rtc","type":"offer"|"answer","sdp":…}` both ways,
//! `{"locus":"rtc","type":"candidate","candidate":{…}}` from the client (optional: an offer
//! that already carries its candidates works), and `{"locus":"rtc","type":"error",
//! "detail":…}` from the edge for a bad or out-of-order frame; the session stays open.
//!
//! One task per WebRTC participant ([`run_peer`]) owns its peer connection and all of its
//! negotiation state, so frames are handled in order and nothing else touches it. The hub
//! only routes the reserved frames to it ([`RtcPeer::deliver`]) and lends it an
//! [`Outlet`] (queue a frame on the websocket, relay a session message, switch the
//! participant's delivery to its data channel, disconnect it): this module knows nothing
//! of the hub.
//!
//! Renegotiation: when the tracks a participant should receive change (someone publishes,
//! unpublishes or leaves) the edge offers. **Glare** (client and edge offer at once): the
//! edge is the *polite* side; it rolls back its own offer, answers the client's, and
//! offers again afterwards. Edge offers are rate-limited
//! (`--rtc-renegotiations-per-second`: changes arriving faster are coalesced into one
//! offer) and so are client offers (above the rate they get an `error` frame).
//!
//! Forwarding: a published track is read by one task that fans its RTP packets out
//! through a bounded broadcast channel; each receiving participant has one task per
//! forwarded track that rewrites SSRC and payload type for its own leg (and drops the
//! publisher's header extensions, whose ids that leg did not negotiate) and writes the
//! packet; a receiver that lags loses packets, never the publisher. Keyframe requests
//! (PLI/FIR) a receiver sends come back to the publisher as a PLI (at most one per
//! [`KEYFRAME_INTERVAL`] per track), as does the first packet a new receiver gets.
//!
//! Ports: `webrtc` 0.21 binds one UDP socket per peer connection (its UDP mux is a
//! commented-out TODO in `SettingEngine::with_udp_network`), so the edge cannot offer one
//! muxed port: each peer takes one port of `--rtc-ports` (or an ephemeral one), released
//! when the peer ends. Only host candidates are gathered (the address of `--rtc-listen`,
//! advertised as `--rtc-public-ip` behind a 1:1 NAT): clients reach the edge directly or
//! through their region's TURN server, so the edge needs no TURN client.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCIceCandidateType, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSdpType, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

/// Label of the data channel that carries the session's messages.
pub const DATA_CHANNEL_LABEL: &str = "locus";
/// Signalling frames queued for one peer before more are refused with an error frame.
const SIGNAL_QUEUE: usize = 32;
/// RTP packets buffered per published track for its slowest receiver.
const FANOUT_BUFFER: usize = 256;
/// At most one keyframe request per published track this often.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);
/// How long the edge waits for its own host candidates before answering.
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of the media plane (flags `--rtc-*`, `--max-rtc-peers`).
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Address the peers' UDP sockets bind (`0.0.0.0`: every interface but loopback).
    pub listen: IpAddr,
    /// Address advertised in host candidates instead (1:1 NAT).
    pub public_ip: Option<IpAddr>,
    /// UDP ports for peers, inclusive; `None`: ephemeral ports.
    pub ports: Option<(u16, u16)>,
    /// WebRTC peers this edge serves at once.
    pub max_peers: usize,
    /// Bytes a `locus` data channel may hold unsent before its reader counts as too slow.
    pub send_buffer: usize,
    /// Renegotiations per second per peer (each way).
    pub renegotiations_per_second: u32,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            listen: IpAddr::from([0, 0, 0, 0]),
            public_ip: None,
            ports: None,
            max_peers: 500,
            send_buffer: 1024 * 1024,
            renegotiations_per_second: 2,
        }
    }
}

/// A session message as it travels on a data channel or a websocket.
#[derive(Debug, Clone)]
pub enum DataMessage {
    Text(String),
    Binary(Bytes),
}

/// What the media plane needs of a participant's websocket side (implemented by the hub).
pub trait Outlet: Send + Sync + 'static {
    /// Queues an edge frame (JSON text) on the participant's websocket.
    fn send_frame(&self, text: String);
    /// The participant's `locus` data channel opened (`Some`) or closed (`None`): session
    /// messages for it go there while it is open.
    fn set_data_channel(&self, channel: Option<Arc<DataOut>>);
    /// A session message the participant sent on its data channel: relay it to the others.
    fn relay(&self, message: DataMessage);
    /// Disconnects the participant (close code and reason).
    fn kick(&self, code: u16, reason: &str);
}

/// Why a data-channel send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSendError {
    /// The channel's send buffer is full: the reader does not keep up.
    Full,
    /// The channel is gone: use the websocket.
    Closed,
}

/// The sending half of a participant's open `locus` data channel.
pub struct DataOut {
    channel: Arc<dyn DataChannel>,
    stats: Arc<MediaStats>,
}

impl std::fmt::Debug for DataOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataOut").finish_non_exhaustive()
    }
}

impl DataOut {
    /// Sends without waiting: a full send buffer is an error, not a wait.
    pub async fn send(&self, message: &DataMessage) -> Result<(), DataSendError> {
        let (result, len) = match message {
            DataMessage::Text(text) => (self.channel.try_send_text(text).await, text.len()),
            DataMessage::Binary(bytes) => (
                self.channel.try_send(BytesMut::from(&bytes[..])).await,
                bytes.len(),
            ),
        };
        match result {
            Ok(()) => {
                self.stats.data_out.fetch_add(len as u64, Ordering::Relaxed);
                self.stats.messages_out.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(webrtc::error::Error::ErrSendBufferFull) => Err(DataSendError::Full),
            Err(_) => Err(DataSendError::Closed),
        }
    }
}

/// A signalling frame from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    Offer(String),
    Answer(String),
    /// `None`: end of candidates.
    Candidate(Option<RTCIceCandidateInit>),
}

/// The client frames; other keys (`locus` itself) are ignored.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientFrame {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: Option<RTCIceCandidateInit>,
    },
}

/// A reserved frame that is not for the media plane (`"locus"` is not `"rtc"`).
#[derive(Debug, PartialEq, Eq)]
pub struct NotRtc;

/// Parses a reserved client frame. `Err(Ok(NotRtc))`: not an rtc frame at all;
/// `Err(Err(detail))`: an rtc frame that is wrong, with what to fix.
pub fn parse_signal(text: &str) -> Result<Signal, Result<NotRtc, String>> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| Ok(NotRtc))?;
    if value.get("locus").and_then(|v| v.as_str()) != Some("rtc") {
        return Err(Ok(NotRtc));
    }
    let frame: ClientFrame = serde_json::from_value(value).map_err(|e| {
        Err(format!(
            "bad rtc frame: {e}; send {{\"locus\":\"rtc\",\"type\":\"offer\"|\"answer\",\"sdp\":\"…\"}} or {{\"locus\":\"rtc\",\"type\":\"candidate\",\"candidate\":{{\"candidate\":\"…\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0}}}}"
        ))
    })?;
    Ok(match frame {
        ClientFrame::Offer { sdp } => Signal::Offer(sdp),
        ClientFrame::Answer { sdp } => Signal::Answer(sdp),
        ClientFrame::Candidate { candidate } => {
            Signal::Candidate(candidate.filter(|c| !c.candidate.is_empty()))
        }
    })
}

#[derive(Serialize)]
struct EdgeFrame<'a> {
    locus: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sdp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// `{"locus":"rtc","type":"error","detail":…}`.
pub fn error_frame(detail: &str) -> String {
    frame("error", None, Some(detail))
}

fn frame(kind: &'static str, sdp: Option<&str>, detail: Option<&str>) -> String {
    serde_json::to_string(&EdgeFrame {
        locus: "rtc",
        kind,
        sdp,
        detail,
    })
    .unwrap_or_default()
}

/// Counters of the media plane, read by the load sampler.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// RTP payload bytes and packets received from publishers.
    pub bytes_in: AtomicU64,
    pub packets_in: AtomicU64,
    /// RTP payload bytes and packets forwarded to receivers.
    pub bytes_out: AtomicU64,
    pub packets_out: AtomicU64,
    /// `locus` data-channel message bytes and messages received from participants.
    pub data_in: AtomicU64,
    pub messages_in: AtomicU64,
    /// `locus` data-channel message bytes and messages sent to participants.
    pub data_out: AtomicU64,
    pub messages_out: AtomicU64,
}

/// A point-in-time reading of the media plane.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct MediaSnapshot {
    pub peers: usize,
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
    pub data_in: u64,
    pub messages_in: u64,
    pub data_out: u64,
    pub messages_out: u64,
}

/// The media plane of the edge: peers, rooms, ports, counters.
pub struct Media {
    config: MediaConfig,
    peers: AtomicUsize,
    ports_in_use: Mutex<BTreeSet<u16>>,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    stats: Arc<MediaStats>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("config", &self.config)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

/// The handle the hub keeps for a participant's peer: frames go in, dropping it ends
/// the peer.
#[derive(Debug)]
pub struct RtcPeer {
    signals: mpsc::Sender<Signal>,
    /// The DTLS fingerprint of the client's first offer: one per client peer connection.
    fingerprint: Option<String>,
}

/// The first `a=fingerprint:` value of an SDP (each RTCPeerConnection has its own
/// certificate, so it names the connection; an ICE restart keeps it).
pub fn dtls_fingerprint(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|line| line.strip_prefix("a=fingerprint:"))
        .map(str::trim)
}

impl RtcPeer {
    /// Hands a frame to the peer's task; `Err` with an error frame's detail when it cannot
    /// take it.
    pub fn deliver(&self, signal: Signal) -> Result<(), String> {
        self.signals.try_send(signal).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => format!(
                "too many rtc frames in flight (more than {SIGNAL_QUEUE}): wait for the answer before sending more"
            ),
            mpsc::error::TrySendError::Closed(_) => {
                "the WebRTC peer connection has ended: send a new offer".to_string()
            }
        })
    }

    /// The peer's task has ended (failed connection): a new offer starts a new peer.
    pub fn is_closed(&self) -> bool {
        self.signals.is_closed()
    }

    /// An offer from another peer connection of the client (it closed its old one and
    /// made a new one, e.g. after a failed negotiation): the old peer must end, not
    /// renegotiate with it, or the old connection's tracks would stay in the room.
    pub fn is_replaced_by(&self, offer_sdp: &str) -> bool {
        matches!(
            (self.fingerprint.as_deref(), dtls_fingerprint(offer_sdp)),
            (Some(ours), Some(theirs)) if ours != theirs
        )
    }
}

/// Releases what a peer holds (its count, its port) however its task ends.
struct PeerSlot {
    media: Arc<Media>,
    port: Option<u16>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Some(port) = self.port {
            self.media.ports().remove(&port);
        }
        self.media.peers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Media {
    pub fn new(config: MediaConfig) -> Arc<Media> {
        Arc::new(Media {
            config,
            peers: AtomicUsize::new(0),
            ports_in_use: Mutex::new(BTreeSet::new()),
            rooms: Mutex::new(HashMap::new()),
            stats: Arc::new(MediaStats::default()),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn config(&self) -> &MediaConfig {
        &self.config
    }

    /// WebRTC peers alive now.
    pub fn peer_count(&self) -> usize {
        self.peers.load(Ordering::Relaxed)
    }

    /// Sessions with at least one WebRTC peer.
    pub fn room_count(&self) -> usize {
        self.rooms().len()
    }

    pub fn snapshot(&self) -> MediaSnapshot {
        MediaSnapshot {
            peers: self.peer_count(),
            bytes_in: self.stats.bytes_in.load(Ordering::Relaxed),
            packets_in: self.stats.packets_in.load(Ordering::Relaxed),
            bytes_out: self.stats.bytes_out.load(Ordering::Relaxed),
            packets_out: self.stats.packets_out.load(Ordering::Relaxed),
            data_in: self.stats.data_in.load(Ordering::Relaxed),
            messages_in: self.stats.messages_in.load(Ordering::Relaxed),
            data_out: self.stats.data_out.load(Ordering::Relaxed),
            messages_out: self.stats.messages_out.load(Ordering::Relaxed),
        }
    }

    fn ports(&self) -> MutexGuard<'_, BTreeSet<u16>> {
        self.ports_in_use.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a peer for a participant (on its first offer). `Err`: the detail of the
    /// error frame that refuses it.
    pub fn open(
        self: &Arc<Self>,
        session_id: &str,
        participant: &str,
        outlet: Arc<dyn Outlet>,
        fingerprint: Option<String>,
    ) -> Result<RtcPeer, String> {
        let max = self.config.max_peers;
        if self
            .peers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(format!(
                "edge full: it serves at most {max} WebRTC peers (--max-rtc-peers); the session goes on over the websocket, or ask the locator for another edge"
            ));
        }
        let slot = PeerSlot {
            media: self.clone(),
            port: None,
        };
        let (signals, rx) = mpsc::channel(SIGNAL_QUEUE);
        let room = self.join_room(session_id);
        let member = self.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = PeerTask {
            media: self.clone(),
            room,
            member,
            participant: participant.into(),
            outlet,
        };
        tokio::spawn(run_peer(peer, slot, rx));
        Ok(RtcPeer {
            signals,
            fingerprint,
        })
    }

    fn join_room(&self, session_id: &str) -> Arc<Room> {
        let mut rooms = self.rooms();
        let room = rooms
            .entry(session_id.to_string())
            .or_insert_with(|| {
                Arc::new(Room {
                    id: session_id.to_string(),
                    inner: Mutex::new(RoomInner::default()),
                    changed: watch::channel(0).0,
                })
            })
            .clone();
        room.lock().members += 1;
        room
    }

    fn leave_room(&self, room: &Arc<Room>, member: u64) {
        let empty = {
            let mut inner = room.lock();
            inner.members -= 1;
            let before = inner.tracks.len();
            inner.tracks.retain(|t| t.owner != member);
            if inner.tracks.len() != before {
                room.changed.send_modify(|v| *v += 1);
            }
            inner.members == 0
        };
        if empty {
            let mut rooms = self.rooms();
            if rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room)) && room.lock().members == 0
            {
                rooms.remove(&room.id);
            }
        }
    }

    /// Binds the peer's UDP socket: a free port of the range, or an ephemeral one.
    async fn build_peer(
        &self,
        handler: Arc<PeerHandler>,
        slot: &mut PeerSlot,
    ) -> Result<Arc<dyn PeerConnection>, String> {
        let ip = self.config.listen;
        let Some((low, high)) = self.config.ports else {
            return self
                .build_on(handler, format!("{}", std::net::SocketAddr::new(ip, 0)))
                .await;
        };
        let mut last_error = String::from("no port free");
        for _ in 0..=(high - low).min(64) {
            let Some(port) = self.take_port(low, high) else {
                break;
            };
            match self
                .build_on(
                    handler.clone(),
                    std::net::SocketAddr::new(ip, port).to_string(),
                )
                .await
            {
                Ok(pc) => {
                    slot.port = Some(port);
                    return Ok(pc);
                }
                Err(e) => {
                    // Taken by another process: leave it marked for a while, try the next.
                    tracing::debug!(port, error = %e, "rtc port unavailable");
                    last_error = e;
                }
            }
        }
        Err(format!(
            "no UDP port free in --rtc-ports {low}-{high} ({last_error}); try again later or ask the locator for another edge"
        ))
    }

    fn take_port(&self, low: u16, high: u16) -> Option<u16> {
        let mut used = self.ports();
        let start = low + (rand::random::<u16>() % (high - low + 1));
        let port = (start..=high)
            .chain(low..start)
            .find(|p| !used.contains(p))?;
        used.insert(port);
        Some(port)
    }

    async fn build_on(
        &self,
        handler: Arc<PeerHandler>,
        address: String,
    ) -> Result<Arc<dyn PeerConnection>, String> {
        let mut engine = MediaEngine::default();
        engine
            .register_default_codecs()
            .map_err(|e| format!("media engine: {e}"))?;
        let registry = register_default_interceptors(Registry::new(), &mut engine)
            .map_err(|e| format!("interceptors: {e}"))?
            // Application-most, so every other interceptor has seen the RTCP first.
            .with(Slot::from(14_000), KeyframeRequests::default());
        let mut settings = SettingEngineBuilder::new();
        if let Some(public) = self.config.public_ip {
            settings =
                settings.with_nat_1to1_ips(vec![public.to_string()], RTCIceCandidateType::Host);
        }
        if self.config.listen.is_loopback() {
            settings = settings.with_include_loopback_candidate(true);
        }
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings.build())
            .with_handler(handler)
            .with_udp_addrs(vec![address])
            .with_data_channel_send_buffer_limit(self.config.send_buffer)
            .build()
            .await
            .map_err(|e| format!("cannot open a WebRTC peer: {e}"))?;
        Ok(Arc::new(pc))
    }
}

/// The WebRTC side of one session.
struct Room {
    id: String,
    inner: Mutex<RoomInner>,
    /// Bumped whenever the published tracks change.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct RoomInner {
    members: usize,
    tracks: Vec<Arc<Published>>,
}

impl Room {
    fn lock(&self) -> MutexGuard<'_, RoomInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a published track. The crate can announce a remote stream (same owner and
    /// SSRC) again on renegotiation, with a new track object that is the one receiving
    /// its packets: the newer replaces the older, or every receiver would get the stream
    /// twice, once silent.
    fn publish(&self, track: Arc<Published>) {
        {
            let mut inner = self.lock();
            inner.tracks.retain(|t| {
                let same = t.owner == track.owner && t.media_ssrc == track.media_ssrc;
                if same {
                    t.superseded.store(true, Ordering::Relaxed);
                }
                !same
            });
            inner.tracks.push(track);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    fn unpublish(&self, id: u64) {
        let removed = {
            let mut inner = self.lock();
            let before = inner.tracks.len();
            inner.tracks.retain(|t| t.id != id);
            inner.tracks.len() != before
        };
        if removed {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Tracks `member` should receive: everybody else's.
    fn tracks_for(&self, member: u64) -> Vec<Arc<Published>> {
        self.lock()
            .tracks
            .iter()
            .filter(|t| t.owner != member)
            .cloned()
            .collect()
    }
}

/// A track a participant publishes.
struct Published {
    id: u64,
    owner: u64,
    /// The publisher's participant id: the stream id of the forwarded track.
    participant: String,
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    media_ssrc: u32,
    remote: Arc<dyn TrackRemote>,
    packets: broadcast::Sender<rtc::rtp::Packet>,
    last_keyframe_request: Mutex<Option<Instant>>,
    /// A newer announcement of the same stream replaced this one: its reader stops, so
    /// packets of a shared track object go to the newer reader only.
    superseded: AtomicBool,
}

impl Published {
    /// Asks the publisher for a keyframe (video only, at most once per interval).
    fn request_keyframe(self: &Arc<Self>) {
        if self.kind != RtpCodecKind::Video {
            return;
        }
        {
            let mut last = self
                .last_keyframe_request
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < KEYFRAME_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this
                .remote
                .write_rtcp(vec![Box::new(PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc: this.media_ssrc,
                })])
                .await;
        });
    }
}

/// Marks inbound keyframe requests (PLI, FIR) for the application, which relays them to
/// the publisher; by default inbound RTCP ends in the interceptor chain.
#[derive(Default)]
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = webrtc::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                // Every other interceptor has seen it: nothing more to do with it.
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Events of a peer connection, called on its driver: they only hand work off.
struct PeerHandler {
    media: Arc<Media>,
    room: Arc<Room>,
    member: u64,
    participant: String,
    outlet: Arc<dyn Outlet>,
    gathered: watch::Sender<bool>,
    failed: watch::Sender<bool>,
    /// The connection these events are of, set once it is built (weak: it owns this handler).
    pc: OnceLock<Weak<dyn PeerConnection>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathered
            .send_replace(state == RTCIceGatheringState::Complete);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if matches!(
            state,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        ) {
            self.failed.send_replace(true);
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let label = channel.label().await.unwrap_or_default();
        if label != DATA_CHANNEL_LABEL {
            tracing::debug!(%label, "data channel ignored: only \"locus\" carries session messages");
            return;
        }
        let outlet = self.outlet.clone();
        let stats = self.media.stats.clone();
        tokio::spawn(read_data_channel(channel, outlet, stats));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(media_ssrc) = track.ssrcs().await.first().copied() else {
            return;
        };
        let codec = track.codec(media_ssrc).await;
        let kind = track.kind().await;
        let publisher = Publisher {
            media: self.media.clone(),
            room: self.room.clone(),
            member: self.member,
            participant: self.participant.clone(),
            pc: self.pc.get().cloned(),
        };
        tokio::spawn(publish(publisher, track, media_ssrc, kind, codec));
    }
}

/// Who publishes a remote track, for [`publish`].
struct Publisher {
    media: Arc<Media>,
    room: Arc<Room>,
    member: u64,
    participant: String,
    pc: Option<Weak<dyn PeerConnection>>,
}

/// Publishes a track the participant sends, once its codec is known, and reads it.
async fn publish(
    publisher: Publisher,
    track: Arc<dyn TrackRemote>,
    media_ssrc: u32,
    kind: RtpCodecKind,
    codec: Option<RTCRtpCodec>,
) {
    let codec = match codec {
        Some(codec) => codec,
        None => match codec_of_first_packet(publisher.pc.as_ref(), &track).await {
            Some(codec) => {
                tracing::debug!(participant = %publisher.participant, ssrc = media_ssrc, codec = %codec.mime_type, "a track announced without its codec: codec taken from its first packet");
                codec
            }
            None => {
                tracing::warn!(participant = %publisher.participant, ssrc = media_ssrc, "a published track whose codec is unknown is not forwarded");
                return;
            }
        },
    };
    // The track's kind can still be unset when its first packet arrives (seen with
    // Chromium under load); the codec says it. A receiver's `add_track` refuses a track
    // of no kind.
    let kind = match kind {
        RtpCodecKind::Unspecified => kind_of_codec(&codec),
        kind => kind,
    };
    if kind == RtpCodecKind::Unspecified {
        tracing::warn!(participant = %publisher.participant, codec = %codec.mime_type, "a published track of no known kind is not forwarded");
        return;
    }
    let published = Arc::new(Published {
        id: publisher.media.next_id.fetch_add(1, Ordering::Relaxed),
        owner: publisher.member,
        participant: publisher.participant,
        kind,
        codec,
        media_ssrc,
        remote: track,
        packets: broadcast::channel(FANOUT_BUFFER).0,
        last_keyframe_request: Mutex::new(None),
        superseded: AtomicBool::new(false),
    });
    read_published(published, publisher.room, publisher.media.stats.clone()).await;
}

/// The codec of a remote track that `on_track` announced without one: the negotiated
/// codec of its receiver named by the payload type of its first RTP packet.
///
/// Works around a race in `webrtc`/`rtc` 0.21.1: every applied answer (`start_rtp`)
/// replaces each receiver's track with a fresh one whose codec is unset until the next
/// packet; the driver copies a track's codings (codec included) when it handles the
/// `OnOpen` event of the stream's first packet, so an answer applied between that packet
/// and the event leaves the remote track with its SSRC but no codec, and later `OnOpen`s
/// of the same SSRC never fill it in (`populate_track_remote_codings` skips SSRCs the
/// track has). Chromium starts sending a new camera while the edge renegotiates with it
/// for the others' tracks, so now and then a camera was never forwarded (the try page's
/// tiles test in `clients/js/test/media.test.mjs`).
async fn codec_of_first_packet(
    pc: Option<&Weak<dyn PeerConnection>>,
    track: &Arc<dyn TrackRemote>,
) -> Option<RTCRtpCodec> {
    let payload_type = loop {
        match track.poll().await? {
            TrackRemoteEvent::OnRtpPacket(packet) => break packet.header.payload_type,
            TrackRemoteEvent::OnEnded => return None,
            _ => {}
        }
    };
    let pc = pc?.upgrade()?;
    for receiver in pc.get_receivers().await {
        if !Arc::ptr_eq(receiver.track(), track) {
            continue;
        }
        let parameters = receiver.get_parameters().await.ok()?;
        return parameters
            .rtp_parameters
            .codecs
            .into_iter()
            .find(|c| c.payload_type == payload_type)
            .map(|c| c.rtp_codec);
    }
    None
}

/// A codec's kind from its MIME type (`audio/opus`, `video/VP8`).
fn kind_of_codec(codec: &RTCRtpCodec) -> RtpCodecKind {
    match codec.mime_type.split('/').next() {
        Some(t) if t.eq_ignore_ascii_case("audio") => RtpCodecKind::Audio,
        Some(t) if t.eq_ignore_ascii_case("video") => RtpCodecKind::Video,
        _ => RtpCodecKind::Unspecified,
    }
}

/// Reads a participant's `locus` channel: its messages go to the others; while it is
/// open, the others' messages come to it this way.
async fn read_data_channel(
    channel: Arc<dyn DataChannel>,
    outlet: Arc<dyn Outlet>,
    stats: Arc<MediaStats>,
) {
    outlet.set_data_channel(Some(Arc::new(DataOut {
        channel: channel.clone(),
        stats: stats.clone(),
    })));
    while let Some(event) = channel.poll().await {
        match event {
            DataChannelEvent::OnMessage(message) => {
                let data = message.data.freeze();
                stats
                    .data_in
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                stats.messages_in.fetch_add(1, Ordering::Relaxed);
                if message.is_string {
                    match String::from_utf8(data.to_vec()) {
                        Ok(text) if text.starts_with("{\"locus\"") => outlet.send_frame(
                            error_frame("data-channel text messages starting with {\"locus\" are reserved for the edge: message dropped"),
                        ),
                        Ok(text) => outlet.relay(DataMessage::Text(text)),
                        Err(_) => outlet.send_frame(error_frame(
                            "a data-channel text message was not valid UTF-8: message dropped",
                        )),
                    }
                } else {
                    outlet.relay(DataMessage::Binary(data));
                }
            }
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
    outlet.set_data_channel(None);
}

/// Reads a published track and fans its packets out; unpublishes it when it ends.
async fn read_published(published: Arc<Published>, room: Arc<Room>, stats: Arc<MediaStats>) {
    tracing::debug!(
        participant = %published.participant,
        ssrc = published.media_ssrc,
        kind = %published.kind,
        codec = %published.codec.mime_type,
        "track published"
    );
    room.publish(published.clone());
    while let Some(event) = published.remote.poll().await {
        if published.superseded.load(Ordering::Relaxed) {
            return;
        }
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                stats
                    .bytes_in
                    .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
                stats.packets_in.fetch_add(1, Ordering::Relaxed);
                // No receiver yet is fine: the packet is dropped.
                let _ = published.packets.send(packet);
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    room.unpublish(published.id);
}

/// A track forwarded to this peer.
struct Forward {
    sender: Arc<dyn RtpSender>,
    task: tokio::task::JoinHandle<()>,
}

/// Everything a peer's task works with.
struct PeerTask {
    media: Arc<Media>,
    room: Arc<Room>,
    member: u64,
    participant: String,
    outlet: Arc<dyn Outlet>,
}

/// Sliding one-second window of renegotiations.
#[derive(Default)]
struct Rate {
    times: VecDeque<Instant>,
}

impl Rate {
    /// When the next one is allowed (now if under `per_second`).
    fn next_allowed(&mut self, per_second: u32, now: Instant) -> Instant {
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            self.times.pop_front();
        }
        if self.times.len() < per_second as usize {
            now
        } else {
            self.times
                .front()
                .map_or(now, |t| *t + Duration::from_secs(1))
        }
    }

    fn record(&mut self, now: Instant) {
        self.times.push_back(now);
    }
}

/// The task of one WebRTC participant: owns the peer connection and its negotiation.
async fn run_peer(task: PeerTask, mut slot: PeerSlot, mut signals: mpsc::Receiver<Signal>) {
    let (gathered_tx, gathered) = watch::channel(false);
    let (failed_tx, mut failed) = watch::channel(false);
    let handler = Arc::new(PeerHandler {
        media: task.media.clone(),
        room: task.room.clone(),
        member: task.member,
        participant: task.participant.clone(),
        outlet: task.outlet.clone(),
        gathered: gathered_tx,
        failed: failed_tx,
        pc: OnceLock::new(),
    });
    let pc = match task.media.build_peer(handler.clone(), &mut slot).await {
        Ok(pc) => {
            let _ = handler.pc.set(Arc::downgrade(&pc));
            pc
        }
        Err(detail) => {
            tracing::warn!(participant = %task.participant, %detail, "WebRTC peer not opened");
            task.outlet.send_frame(error_frame(&detail));
            task.media.leave_room(&task.room, task.member);
            return;
        }
    };
    let mut negotiation = Negotiation {
        task: &task,
        pc: pc.clone(),
        gathered,
        forwards: HashMap::new(),
        edge_offer_pending: false,
        remote_set: false,
        dirty: false,
        offer_again: false,
        edge_rate: Rate::default(),
        client_rate: Rate::default(),
    };
    let mut changes = task.room.changed.subscribe();
    let per_second = task.media.config.renegotiations_per_second.max(1);
    loop {
        let next_offer =
            if negotiation.dirty && negotiation.remote_set && !negotiation.edge_offer_pending {
                Some(
                    negotiation
                        .edge_rate
                        .next_allowed(per_second, Instant::now()),
                )
            } else {
                None
            };
        tokio::select! {
            signal = signals.recv() => {
                let Some(signal) = signal else { break };
                if let Err(detail) = negotiation.handle(signal).await {
                    task.outlet.send_frame(error_frame(&detail));
                }
            }
            changed = changes.changed() => {
                if changed.is_err() { break; }
                negotiation.dirty = true;
            }
            () = sleep_until_opt(next_offer) => {
                if let Err(detail) = negotiation.offer().await {
                    tracing::debug!(participant = %task.participant, %detail, "edge offer failed");
                    task.outlet.send_frame(error_frame(&detail));
                }
            }
            () = async { let _ = failed.wait_for(|f| *f).await; } => {
                task.outlet.send_frame(error_frame(
                    "the WebRTC connection failed or closed: send a new offer to start again",
                ));
                break;
            }
        }
    }
    for (_, forward) in negotiation.forwards.drain() {
        forward.task.abort();
    }
    let _ = pc.close().await;
    task.media.leave_room(&task.room, task.member);
    task.outlet.set_data_channel(None);
    drop(slot);
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

struct Negotiation<'a> {
    task: &'a PeerTask,
    pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    forwards: HashMap<u64, Forward>,
    /// The edge sent an offer and waits for the answer.
    edge_offer_pending: bool,
    /// A first client offer was applied.
    remote_set: bool,
    /// The tracks to forward may differ from those negotiated.
    dirty: bool,
    /// The edge's last offer was rolled back (glare, or its answer refused): the tracks it
    /// added are in `forwards` but not negotiated, so the next offer is due even though
    /// `forwards` already matches the room.
    offer_again: bool,
    edge_rate: Rate,
    client_rate: Rate,
}

impl Negotiation<'_> {
    async fn handle(&mut self, signal: Signal) -> Result<(), String> {
        match signal {
            Signal::Offer(sdp) => self.client_offer(sdp).await,
            Signal::Answer(sdp) => {
                if !self.edge_offer_pending {
                    return Err("unexpected answer: the edge has no offer outstanding".into());
                }
                self.edge_offer_pending = false;
                tracing::trace!(participant = %self.task.participant, %sdp, "client answer");
                let answer = RTCSessionDescription::answer(sdp)
                    .map_err(|e| format!("the answer's SDP does not parse: {e}"))?;
                if let Err(e) = self.pc.set_remote_description(answer).await {
                    self.rollback().await;
                    self.dirty = true;
                    self.offer_again = true;
                    return Err(format!("the answer was refused: {e}"));
                }
                Ok(())
            }
            Signal::Candidate(None) => Ok(()),
            Signal::Candidate(Some(candidate)) => {
                if !self.remote_set {
                    return Err("candidate before offer: send the offer first".into());
                }
                self.pc
                    .add_ice_candidate(candidate)
                    .await
                    .map_err(|e| format!("the candidate was refused: {e}"))
            }
        }
    }

    async fn client_offer(&mut self, sdp: String) -> Result<(), String> {
        let per_second = self.task.media.config.renegotiations_per_second.max(1);
        let now = Instant::now();
        if self.client_rate.next_allowed(per_second, now) > now {
            return Err(format!(
                "too many renegotiations: at most {per_second} offers per second (--rtc-renegotiations-per-second); offer again later"
            ));
        }
        self.client_rate.record(now);
        tracing::trace!(participant = %self.task.participant, glare = self.edge_offer_pending, %sdp, "client offer");
        let offer = RTCSessionDescription::offer(sdp)
            .map_err(|e| format!("the offer's SDP does not parse: {e}"))?;
        if self.edge_offer_pending {
            // Glare: the edge is polite: its own offer yields and is made again later.
            self.rollback().await;
            self.edge_offer_pending = false;
            self.dirty = true;
            self.offer_again = true;
        }
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|e| format!("the offer was refused: {e}"))?;
        let answer = match self.pc.create_answer(None).await {
            Ok(answer) => answer,
            Err(e) => {
                self.rollback_remote().await;
                return Err(format!("cannot answer this offer: {e}"));
            }
        };
        self.pc
            .set_local_description(answer)
            .await
            .map_err(|e| format!("cannot apply the answer: {e}"))?;
        self.wait_gathered().await;
        let local = self
            .pc
            .local_description()
            .await
            .ok_or("the edge has no local description")?;
        tracing::trace!(participant = %self.task.participant, sdp = %local.sdp, "edge answer");
        self.task
            .outlet
            .send_frame(frame("answer", Some(&local.sdp), None));
        if !self.remote_set {
            self.remote_set = true;
        }
        self.dirty = true;
        Ok(())
    }

    async fn wait_gathered(&mut self) {
        let _ = tokio::time::timeout(GATHER_TIMEOUT, self.gathered.wait_for(|g| *g)).await;
    }

    async fn rollback(&self) {
        if let Ok(rollback) = RTCSessionDescription::rollback(None)
            && let Err(e) = self.pc.set_local_description(rollback).await
        {
            tracing::debug!(error = %e, "rollback of the edge's offer failed");
        }
    }

    async fn rollback_remote(&self) {
        if let Ok(rollback) = RTCSessionDescription::rollback(None) {
            let _ = self.pc.set_remote_description(rollback).await;
        }
    }

    /// Brings the forwarded tracks in line with the room and offers when they changed.
    async fn offer(&mut self) -> Result<(), String> {
        self.dirty = false;
        let wanted = self.task.room.tracks_for(self.task.member);
        let mut changed = false;
        let gone: Vec<u64> = self
            .forwards
            .keys()
            .filter(|id| !wanted.iter().any(|t| t.id == **id))
            .copied()
            .collect();
        for id in gone {
            if let Some(forward) = self.forwards.remove(&id) {
                forward.task.abort();
                let _ = self.pc.remove_track(&forward.sender).await;
                changed = true;
            }
        }
        let mut unforwarded = Vec::new();
        for published in wanted {
            if self.forwards.contains_key(&published.id) {
                continue;
            }
            let ssrc = rand::random::<u32>();
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                published.participant.clone(),
                format!("{}-{}", published.participant, published.id),
                format!("{}-{}", published.participant, published.id),
                published.kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: published.codec.clone(),
                    ..Default::default()
                }],
            )));
            // One track this receiver's connection cannot carry must not hold back the
            // others: it is skipped, logged and reported after the offer.
            let sender = match self
                .pc
                .add_track(track.clone() as Arc<dyn TrackLocal>)
                .await
            {
                Ok(sender) => sender,
                Err(e) => {
                    tracing::warn!(
                        participant = %self.task.participant,
                        publisher = %published.participant,
                        kind = ?published.kind,
                        codec = %published.codec.mime_type,
                        fmtp = %published.codec.sdp_fmtp_line,
                        error = %e,
                        "cannot forward a track to this participant"
                    );
                    unforwarded.push(format!(
                        "{} ({}) of {}: {e}",
                        published.codec.mime_type, published.kind, published.participant
                    ));
                    continue;
                }
            };
            let task = tokio::spawn(forward(
                published.clone(),
                track,
                sender.clone(),
                ssrc,
                self.task.media.stats.clone(),
            ));
            tracing::debug!(participant = %self.task.participant, publisher = %published.participant, kind = %published.kind, ssrc, "forwarding a track");
            self.forwards.insert(published.id, Forward { sender, task });
            changed = true;
        }
        let again = std::mem::take(&mut self.offer_again);
        if changed || again {
            self.send_offer().await?;
        }
        if unforwarded.is_empty() {
            Ok(())
        } else {
            Err(format!("cannot forward {}", unforwarded.join("; ")))
        }
    }

    /// Makes, applies and sends the edge's offer.
    async fn send_offer(&mut self) -> Result<(), String> {
        let now = Instant::now();
        self.edge_rate.record(now);
        let offer = self
            .pc
            .create_offer(None)
            .await
            .map_err(|e| format!("the edge cannot make an offer: {e}"))?;
        if offer.sdp_type != RTCSdpType::Offer {
            return Err("the edge made no offer".into());
        }
        self.pc
            .set_local_description(offer)
            .await
            .map_err(|e| format!("the edge cannot apply its offer: {e}"))?;
        let local = self
            .pc
            .local_description()
            .await
            .ok_or("the edge has no local description")?;
        self.edge_offer_pending = true;
        tracing::trace!(participant = %self.task.participant, sdp = %local.sdp, "edge offer");
        self.task
            .outlet
            .send_frame(frame("offer", Some(&local.sdp), None));
        Ok(())
    }
}

/// Copies one published track to one receiver; relays the receiver's keyframe requests.
async fn forward(
    published: Arc<Published>,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    stats: Arc<MediaStats>,
) {
    let mut packets = published.packets.subscribe();
    let mut payload_type: Option<u8> = None;
    let mut first = true;
    let mut feedback_open = true;
    loop {
        tokio::select! {
            packet = packets.recv() => {
                let mut packet = match packet {
                    Ok(packet) => packet,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if payload_type.is_none() {
                    payload_type = negotiated_payload_type(&sender, &published.codec).await;
                }
                let Some(pt) = payload_type else { continue };
                packet.header.ssrc = ssrc;
                packet.header.payload_type = pt;
                packet.header.extension = false;
                packet.header.extensions.clear();
                packet.header.extensions_padding = 0;
                let len = packet.payload.len() as u64;
                if track.write_rtp(packet).await.is_ok() {
                    stats.bytes_out.fetch_add(len, Ordering::Relaxed);
                    stats.packets_out.fetch_add(1, Ordering::Relaxed);
                    if first {
                        first = false;
                        published.request_keyframe();
                    }
                }
            }
            event = track.poll(), if feedback_open => match event {
                Some(TrackLocalEvent::OnRtcpPacket(rtcp)) => {
                    if rtcp.iter().any(|p| is_keyframe_request(p.as_ref())) {
                        published.request_keyframe();
                    }
                }
                Some(_) => {}
                None => feedback_open = false,
            },
        }
    }
}

/// The payload type this receiver's leg negotiated for the publisher's codec.
async fn negotiated_payload_type(sender: &Arc<dyn RtpSender>, codec: &RTCRtpCodec) -> Option<u8> {
    let parameters = sender.get_parameters().await.ok()?;
    parameters
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| {
            c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type)
                && c.rtp_codec.clock_rate == codec.clock_rate
        })
        .map(|c| c.payload_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_from_another_connection_replaces_the_peer() {
        let sdp = |fp: &str| {
            format!(
                "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\na=fingerprint:sha-256 {fp}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
            )
        };
        assert_eq!(dtls_fingerprint(&sdp("AA:BB")), Some("sha-256 AA:BB"));
        assert_eq!(dtls_fingerprint("v=0\r\n"), None);
        let (signals, _rx) = mpsc::channel(1);
        let peer = RtcPeer {
            signals,
            fingerprint: Some("sha-256 AA:BB".into()),
        };
        assert!(!peer.is_replaced_by(&sdp("AA:BB")));
        assert!(peer.is_replaced_by(&sdp("CC:DD")));
        assert!(!peer.is_replaced_by("v=0\r\n"));
    }

    #[test]
    fn a_track_of_no_kind_takes_its_codecs() {
        let codec = |mime: &str| RTCRtpCodec {
            mime_type: mime.into(),
            ..Default::default()
        };
        assert_eq!(kind_of_codec(&codec("audio/opus")), RtpCodecKind::Audio);
        assert_eq!(kind_of_codec(&codec("video/VP8")), RtpCodecKind::Video);
        assert_eq!(kind_of_codec(&codec("")), RtpCodecKind::Unspecified);
    }

    #[test]
    fn frames_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_signal(r#"{"locus":"rtc","type":"offer","sdp":"v=0"}"#),
            Ok(Signal::Offer("v=0".into()))
        );
        assert_eq!(
            parse_signal(r#"{"locus":"rtc","type":"answer","sdp":"v=0"}"#),
            Ok(Signal::Answer("v=0".into()))
        );
        let Ok(Signal::Candidate(Some(c))) = parse_signal(
            r#"{"locus":"rtc","type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
        ) else {
            panic!("candidate parses");
        };
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert_eq!(c.sdp_mline_index, Some(0));
        assert_eq!(
            parse_signal(r#"{"locus":"rtc","type":"candidate","candidate":null}"#),
            Ok(Signal::Candidate(None))
        );
        assert_eq!(parse_signal(r#"{"locus":"presence"}"#), Err(Ok(NotRtc)));
        assert_eq!(parse_signal(r#"{"locus" nonsense"#), Err(Ok(NotRtc)));
        for bad in [
            r#"{"locus":"rtc","type":"offer"}"#,
            r#"{"locus":"rtc","type":"error","detail":"x"}"#,
            r#"{"locus":"rtc","sdp":"v=0"}"#,
            r#"{"locus":"rtc","type":"offer","sdp":7}"#,
        ] {
            match parse_signal(bad) {
                Err(Err(detail)) => assert!(detail.contains("bad rtc frame"), "{detail}"),
                other => panic!("{bad} gave {other:?}"),
            }
        }
    }

    #[test]
    fn edge_frames_keep_the_contract() {
        let v: serde_json::Value = serde_json::from_str(&error_frame("nope")).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"locus":"rtc","type":"error","detail":"nope"})
        );
        let v: serde_json::Value =
            serde_json::from_str(&frame("answer", Some("v=0"), None)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"locus":"rtc","type":"answer","sdp":"v=0"})
        );
    }

    #[test]
    fn renegotiations_are_rate_limited() {
        let mut rate = Rate::default();
        let t0 = Instant::now();
        assert_eq!(rate.next_allowed(2, t0), t0);
        rate.record(t0);
        rate.record(t0);
        assert_eq!(rate.next_allowed(2, t0), t0 + Duration::from_secs(1));
        let later = t0 + Duration::from_secs(1);
        assert_eq!(rate.next_allowed(2, later), later);
    }
}
