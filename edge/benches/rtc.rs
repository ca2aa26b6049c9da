//! WebRTC benchmark of the edge's media plane (issue 11), each figure against a baseline
//! measured in the same run.
//!
//! Run: `cargo bench -p locus-edge --bench rtc` (add `-- --quick` for a short run, and a
//! word after `--` to run only `data-channel`, `audio` or `memory`).
//!
//! - **Data channel A → B**: two Rust `webrtc` peers (this crate's pinned version), A
//!   sending binary messages on its `locus` channel to B, through a real `edge` process
//!   (A → edge → B) against the same two peers connected directly (A → B) in the same
//!   run. Figures: messages/s and Mbit/s of payload B received, for 64-byte and
//!   16 KiB messages; the sender keeps at most 256 KiB ahead of what B has received
//!   (the edge disconnects a reader whose channel holds more than `--rtc-send-buffer`).
//! - **Audio sessions per core**: sessions of 3 WebRTC participants, each publishing a
//!   synthetic Opus track at 50 packets/s (80-byte payloads carrying their send time),
//!   each receiving the other two through the edge. The edge runs pinned to one core
//!   (`taskset`), the participants on the other. The count of sessions doubles (then
//!   grows by a quarter) until more than 1% of the packets due are late (over 50 ms from
//!   send to receipt: on loopback a forwarded packet takes about 1 ms) or missing, in the
//!   median of three 3 s windows (one stall of the shared machine spoils one window; an
//!   edge that cannot keep up spoils them all). Baseline: the CPU time the participants' own process spends per
//!   packet it sends or receives (the same crate, the same SRTP work: per session and
//!   second the edge receives 150 packets and sends 300, the participants send 150 and
//!   receive 300), read from `/proc` over the same windows; the ratio is the edge's CPU
//!   over theirs. Where the participants' core saturates first, the figure is a lower
//!   bound and the edge's CPU per session gives the estimate.
//! - **Memory per WebRTC peer**: the growth of the edge's `VmRSS` with N idle WebRTC
//!   participants (sessions of 2, a connected `locus` channel each, no media) over N,
//!   against the growth with N websocket-only participants in a fresh edge, same run.
//!
//! Loopback only (`--rtc-listen 127.0.0.1`); the generator shares the machine, so
//! absolute figures move with its load and the ratios are what to read.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use locus_protocol::join_token::{JoinClaims, JoinKey};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCSessionDescription,
};

const TOKEN: &str = "bench-edge-token-0123456789abcdef";
/// Set in the re-executed bench process that runs pinned to its core.
const PINNED_ENV: &str = "LOCUS_RTC_BENCH_PINNED";
/// Bytes the data-channel sender may be ahead of the receiver.
const WINDOW_BYTES: usize = 256 * 1024;
/// A forwarded audio packet later than this counts as late.
const LATE: Duration = Duration::from_millis(50);
const WAIT: Duration = Duration::from_secs(30);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn main() {
    // Pin this process (the participants) to core 0 and the edge to core 1, when the
    // machine has two cores or more and `taskset` exists: re-executed under taskset.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if std::env::var_os(PINNED_ENV).is_none() && cores >= 2 && has_taskset() {
        let status = Command::new("taskset")
            .args(["-c", "0"])
            .arg(std::env::current_exe().expect("exe"))
            .args(std::env::args().skip(1))
            .env(PINNED_ENV, "1")
            .status()
            .expect("re-run under taskset");
        std::process::exit(status.code().unwrap_or(1));
    }
    let pinned = std::env::var_os(PINNED_ENV).is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let quick = std::env::args().any(|a| a == "--quick");
    // Like criterion: a word after `--` runs only the parts whose name contains it
    // (`data-channel`, `audio`, `memory`); cargo's own `--bench` flag is not one.
    let only = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    runtime.block_on(run(quick, pinned, &only));
}

fn has_taskset() -> bool {
    Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------
// The edge process.

struct EdgeProcess {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl EdgeProcess {
    async fn start(pinned: bool) -> EdgeProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = || async {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr").port()
        };
        let addr: SocketAddr = format!("127.0.0.1:{}", free().await).parse().expect("addr");
        let closed = free().await;
        let edge = env!("CARGO_BIN_EXE_edge");
        let mut command = if pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "1", edge]);
            c
        } else {
            Command::new(edge)
        };
        let child = command
            .args(["--id", "bench-edge", "--region", "bench", "--listen"])
            .arg(addr.to_string())
            .arg("--public-url")
            .arg(format!("http://{addr}"))
            .arg("--locator")
            .arg(format!("http://127.0.0.1:{closed}"))
            .arg("--spool-dir")
            .arg(dir.path())
            .args(["--capacity", "100000", "--linger", "1s"])
            .args(["--rtc-listen", "127.0.0.1", "--max-rtc-peers", "5000"])
            .args(["--rtc-renegotiations-per-second", "20"])
            .env("LOCATOR_EDGE_TOKEN", TOKEN)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn edge");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "the edge did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        EdgeProcess {
            child,
            addr,
            _dir: dir,
        }
    }

    fn url(&self, session: &str, pid: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
            + locus_protocol::join_token::JOIN_TOKEN_TTL_SECS;
        let token = JoinKey::from_edge_token(TOKEN).sign(&JoinClaims {
            sid: session.into(),
            eid: "bench-edge".into(),
            pid: pid.into(),
            exp,
        });
        format!("ws://{}/v1/sessions/{session}/ws?token={token}", self.addr)
    }

    fn rss(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:") * 1024
    }

    fn cpu_ticks(&self) -> u64 {
        cpu_ticks(self.child.id())
    }

    async fn status(&self) -> Value {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        let request = format!(
            "GET /v1/status HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let text = String::from_utf8_lossy(&response);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or(Value::Null)
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks (USER_HZ = 100).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else { return 0 };
    let mut fields = stat[end + 1..].split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    utime + stime
}

// ---------------------------------------------------------------------------------------
// A Rust WebRTC participant.

/// Events of a peer connection.
struct Handler {
    gathered: watch::Sender<bool>,
    /// A data channel the other side opened (the direct baseline's B).
    channels: mpsc::UnboundedSender<Arc<dyn DataChannel>>,
    audio: Arc<AudioStats>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathered
            .send_replace(state == RTCIceGatheringState::Complete);
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let _ = self.channels.send(channel);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let audio = self.audio.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(packet) => audio.note(&packet.payload),
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

/// Forwarded audio packets a participant received, counted against their send time.
struct AudioStats {
    /// Only packets sent in `from_ns..to_ns` (nanoseconds since [`since_epoch`]'s start)
    /// count.
    from_ns: AtomicU64,
    to_ns: AtomicU64,
    received: AtomicU64,
    late: AtomicU64,
}

impl Default for AudioStats {
    fn default() -> Self {
        AudioStats {
            from_ns: AtomicU64::new(0),
            to_ns: AtomicU64::new(u64::MAX),
            received: AtomicU64::new(0),
            late: AtomicU64::new(0),
        }
    }
}

impl AudioStats {
    fn note(&self, payload: &[u8]) {
        let Some(sent) = payload.get(..8) else { return };
        let sent = u64::from_be_bytes(sent.try_into().unwrap_or_default());
        if sent < self.from_ns.load(Ordering::Relaxed) || sent >= self.to_ns.load(Ordering::Relaxed)
        {
            return;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        if since_epoch().saturating_sub(sent) > LATE.as_nanos() as u64 {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Nanoseconds since the first call (one clock for senders and receivers, one process).
fn since_epoch() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

struct Rtc {
    pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    channels: mpsc::UnboundedReceiver<Arc<dyn DataChannel>>,
    audio: Arc<AudioStats>,
}

async fn new_pc(send_buffer: Option<usize>) -> Rtc {
    let (gathered_tx, gathered) = watch::channel(false);
    let (channels_tx, channels) = mpsc::unbounded_channel();
    let audio = Arc::new(AudioStats::default());
    let mut engine = MediaEngine::default();
    engine.register_default_codecs().expect("codecs");
    let mut builder = PeerConnectionBuilder::new()
        .with_media_engine(engine)
        .with_handler(Arc::new(Handler {
            gathered: gathered_tx,
            channels: channels_tx,
            audio: audio.clone(),
        }))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()]);
    if let Some(limit) = send_buffer {
        builder = builder.with_data_channel_send_buffer_limit(limit);
    }
    Rtc {
        pc: Arc::new(builder.build().await.expect("peer connection")),
        gathered,
        channels,
        audio,
    }
}

fn opus_track(name: &str, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("{name}-stream"),
        format!("{name}-audio"),
        format!("{name}-audio"),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: "audio/opus".into(),
                clock_rate: 48000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                rtcp_feedback: vec![],
            },
            ..Default::default()
        }],
    )))
}

/// Offers and waits for ICE gathering: the local SDP with its candidates.
async fn local_offer(rtc: &mut Rtc) -> String {
    let offer = rtc.pc.create_offer(None).await.expect("offer");
    rtc.pc
        .set_local_description(offer)
        .await
        .expect("local offer");
    within("ICE gathering", rtc.gathered.wait_for(|g| *g))
        .await
        .expect("gathering");
    rtc.pc.local_description().await.expect("local").sdp
}

async fn wait_open(channel: &Arc<dyn DataChannel>) {
    within("the data channel to open", async {
        while let Some(event) = channel.poll().await {
            if matches!(event, DataChannelEvent::OnOpen) {
                return;
            }
        }
        panic!("the data channel closed before opening");
    })
    .await;
}

fn rtc_frame(kind: &str, sdp: &str) -> String {
    format!(
        r#"{{"locus":"rtc","type":"{kind}","sdp":{}}}"#,
        Value::String(sdp.to_string())
    )
}

/// A participant of the edge: its websocket (signalling, answered by a task) and its
/// peer connection with a `locus` channel, open.
struct Participant {
    rtc: Arc<dyn PeerConnection>,
    channel: Arc<dyn DataChannel>,
    audio: Arc<AudioStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Participant {
    async fn join(
        edge: &EdgeProcess,
        session: &str,
        pid: &str,
        track: Option<Arc<TrackLocalStaticRTP>>,
        send_buffer: Option<usize>,
    ) -> Participant {
        let (ws, _) = tokio_tungstenite::connect_async(edge.url(session, pid))
            .await
            .expect("join the session");
        let mut rtc = new_pc(send_buffer).await;
        let channel = rtc
            .pc
            .create_data_channel("locus", None)
            .await
            .expect("data channel");
        if let Some(track) = track {
            rtc.pc
                .add_track(track as Arc<dyn TrackLocal>)
                .await
                .expect("add track");
        }
        let sdp = local_offer(&mut rtc).await;
        let pc = rtc.pc.clone();
        let task = tokio::spawn(signalling(ws, pc, sdp));
        wait_open(&channel).await;
        Participant {
            rtc: rtc.pc,
            channel,
            audio: rtc.audio,
            task,
        }
    }

    async fn leave(self) {
        let _ = self.rtc.close().await;
        self.task.abort();
    }
}

/// Sends the offer, then applies the edge's answer and answers its offers.
async fn signalling(ws: Ws, pc: Arc<dyn PeerConnection>, offer: String) {
    let (mut sink, mut stream) = ws.split();
    if sink
        .send(Message::text(rtc_frame("offer", &offer)))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(frame)) = stream.next().await {
        let Message::Text(text) = frame else { continue };
        if !text.starts_with("{\"locus\":\"rtc\"") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let sdp = v["sdp"].as_str().unwrap_or_default().to_string();
        match v["type"].as_str() {
            Some("answer") => {
                let answer = RTCSessionDescription::answer(sdp).expect("answer SDP");
                if pc.set_remote_description(answer).await.is_err() {
                    break;
                }
            }
            Some("offer") => {
                let offer = RTCSessionDescription::offer(sdp).expect("offer SDP");
                // A participant leaving closes its peer while an offer may be on its way.
                if pc.set_remote_description(offer).await.is_err() {
                    break;
                }
                let Ok(answer) = pc.create_answer(None).await else {
                    break;
                };
                if pc.set_local_description(answer).await.is_err() {
                    break;
                }
                let Some(sdp) = pc.local_description().await.map(|d| d.sdp) else {
                    break;
                };
                if sink
                    .send(Message::text(rtc_frame("answer", &sdp)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some("error") => eprintln!("edge rtc error: {}", v["detail"]),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Data channel A -> B.

/// Sends `count` messages of `size` bytes on `from` and waits until `to` received them
/// all. Returns (messages/s, Mbit/s). First, 1-byte probes until one arrives on `to`:
/// through the edge, B's messages come on its channel only once the edge has seen it
/// open (before that they go to B's websocket).
async fn transfer(
    from: &Arc<dyn DataChannel>,
    to: Arc<dyn DataChannel>,
    size: usize,
    count: usize,
) -> (f64, f64) {
    let (progress_tx, mut progress) = watch::channel(0usize);
    let (probe_tx, mut probe) = watch::channel(false);
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        while got < count {
            match to.poll().await {
                Some(DataChannelEvent::OnMessage(m)) => {
                    if m.data.len() == size {
                        got += 1;
                        if got.is_multiple_of(8) || got == count {
                            progress_tx.send_replace(got);
                        }
                    } else if m.data.len() == 1 {
                        probe_tx.send_replace(true);
                    }
                }
                Some(_) => {}
                None => panic!("the receiving channel closed after {got} messages"),
            }
        }
        to
    });
    within("a probe to arrive on the receiver's channel", async {
        loop {
            from.send(BytesMut::from(&b"p"[..]))
                .await
                .expect("send a probe");
            let seen = probe.wait_for(|seen| *seen);
            if tokio::time::timeout(Duration::from_millis(100), seen)
                .await
                .is_ok()
            {
                return;
            }
        }
    })
    .await;
    // Also under the edge's per-participant queue (`--send-queue`, 256 messages): a
    // receiver further behind than that is disconnected as too slow.
    let window = (WINDOW_BYTES / size).clamp(2, 128);
    let payload = vec![0x5a; size];
    let began = Instant::now();
    for i in 0..count {
        if i >= window {
            within(
                "the receiver to catch up",
                progress.wait_for(|got| got + window > i),
            )
            .await
            .expect("receiver progress");
        }
        from.send(BytesMut::from(&payload[..]))
            .await
            .expect("send on the data channel");
    }
    within("the last message", progress.wait_for(|got| *got >= count))
        .await
        .expect("receiver done");
    let elapsed = began.elapsed().as_secs_f64();
    reader.await.expect("reader");
    (
        count as f64 / elapsed,
        (count * size * 8) as f64 / elapsed / 1e6,
    )
}

/// A and B connected directly (the baseline): A's channel and B's.
async fn direct_pair() -> (Rtc, Rtc, Arc<dyn DataChannel>, Arc<dyn DataChannel>) {
    let mut a = new_pc(Some(WINDOW_BYTES)).await;
    let mut b = new_pc(None).await;
    let a_channel =
        a.pc.create_data_channel("locus", None)
            .await
            .expect("data channel");
    let offer = local_offer(&mut a).await;
    b.pc.set_remote_description(RTCSessionDescription::offer(offer).expect("offer"))
        .await
        .expect("B applies the offer");
    let answer = b.pc.create_answer(None).await.expect("answer");
    b.pc.set_local_description(answer)
        .await
        .expect("B's answer");
    within("B's ICE gathering", b.gathered.wait_for(|g| *g))
        .await
        .expect("gathering");
    let answer = b.pc.local_description().await.expect("local").sdp;
    a.pc.set_remote_description(RTCSessionDescription::answer(answer).expect("answer"))
        .await
        .expect("A applies the answer");
    wait_open(&a_channel).await;
    let b_channel = within("B's data channel", b.channels.recv())
        .await
        .expect("B's channel");
    (a, b, a_channel, b_channel)
}

async fn data_channel_bench(quick: bool, pinned: bool) {
    println!("\n== data channel A -> B: through the edge vs the same peers connected directly ==");
    println!(
        "{:>7} {:>7}  {:>12} {:>9}  {:>12} {:>9}  {:>6}",
        "size", "count", "edge msg/s", "Mbit/s", "direct msg/s", "Mbit/s", "ratio"
    );
    let rounds = if quick { 1 } else { 3 };
    for (size, count) in [(64usize, 20_000usize), (16 * 1024, 4_000)] {
        let count = if quick { count / 4 } else { count };
        let (mut via, mut direct) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let edge = EdgeProcess::start(pinned).await;
            let session = format!("dc-{size}-{round}");
            let a = Participant::join(&edge, &session, "a", None, Some(WINDOW_BYTES)).await;
            let b = Participant::join(&edge, &session, "b", None, None).await;
            // B's channel is read by the transfer; the participant keeps its own handle.
            via.push(transfer(&a.channel, b.channel.clone(), size, count).await);
            a.leave().await;
            b.leave().await;
            drop(edge);

            let (a, b, a_channel, b_channel) = direct_pair().await;
            direct.push(transfer(&a_channel, b_channel, size, count).await);
            let _ = a.pc.close().await;
            let _ = b.pc.close().await;
        }
        let (v, d) = (median_pair(via), median_pair(direct));
        println!(
            "{size:>7} {count:>7}  {:>12.0} {:>9.1}  {:>12.0} {:>9.1}  {:>6.2}",
            v.0,
            v.1,
            d.0,
            d.1,
            v.0 / d.0
        );
    }
}

fn median_pair(mut values: Vec<(f64, f64)>) -> (f64, f64) {
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    values[values.len() / 2]
}

// ---------------------------------------------------------------------------------------
// 2. Audio sessions per core.

/// One audio step: `sessions` sessions of 3 publishing participants.
struct AudioStep {
    sessions: usize,
    due: u64,
    received: u64,
    late: u64,
    /// CPU of the edge and of this process over the window, in cores.
    edge_cpu: f64,
    own_cpu: f64,
}

impl AudioStep {
    fn bad(&self) -> f64 {
        let missing = self.due.saturating_sub(self.received);
        (missing + self.late) as f64 / self.due.max(1) as f64
    }
}

/// Writes Opus-sized packets (send time in the first 8 bytes) at 50/s until aborted.
fn opus_source(track: Arc<TrackLocalStaticRTP>, ssrc: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let (mut seq, mut ts) = (0u16, 0u32);
        loop {
            tick.tick().await;
            let mut payload = vec![0xf8u8; 80];
            payload[..8].copy_from_slice(&since_epoch().to_be_bytes());
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: seq,
                    timestamp: ts,
                    ssrc,
                    ..Default::default()
                },
                payload: payload.into(),
            };
            let _ = track.write_rtp(packet).await;
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(960);
        }
    })
}

struct AudioSession {
    members: Vec<Participant>,
    sources: Vec<tokio::task::JoinHandle<()>>,
}

async fn audio_session(edge: &EdgeProcess, index: usize) -> AudioSession {
    let session = format!("audio-{index}");
    let mut members = Vec::new();
    let mut sources = Vec::new();
    for p in 0..3u32 {
        let ssrc = 0x1000_0000 + (index as u32) * 4 + p;
        let track = opus_track(&format!("s{index}p{p}"), ssrc);
        let member =
            Participant::join(edge, &session, &format!("p{p}"), Some(track.clone()), None).await;
        sources.push(opus_source(track, ssrc));
        members.push(member);
    }
    AudioSession { members, sources }
}

/// Waits until every leg of `sessions` is renegotiated and flowing: each member receives
/// two tracks.
async fn settle_audio(sessions: &[AudioSession]) {
    let started = Instant::now();
    let settle = Duration::from_secs(2) + Duration::from_millis(20 * sessions.len() as u64);
    loop {
        let flowing = sessions
            .iter()
            .flat_map(|s| &s.members)
            .all(|m| m.audio.received.load(Ordering::Relaxed) > 0);
        if flowing || started.elapsed() > settle * 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// One window of `sessions` (flowing): packets due, received and late, CPU of both sides.
async fn measure_audio(
    edge: &EdgeProcess,
    sessions: &[AudioSession],
    window: Duration,
) -> AudioStep {
    let members: Vec<&Participant> = sessions.iter().flat_map(|s| &s.members).collect();
    let from = since_epoch();
    for m in &members {
        m.audio.to_ns.store(u64::MAX, Ordering::Relaxed);
        m.audio.from_ns.store(from, Ordering::Relaxed);
        m.audio.received.store(0, Ordering::Relaxed);
        m.audio.late.store(0, Ordering::Relaxed);
    }
    let (edge0, own0, t0) = (
        edge.cpu_ticks(),
        cpu_ticks(std::process::id()),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let until = since_epoch();
    for m in &members {
        m.audio.to_ns.store(until, Ordering::Relaxed);
    }
    let (edge1, own1, elapsed) = (
        edge.cpu_ticks(),
        cpu_ticks(std::process::id()),
        t0.elapsed().as_secs_f64(),
    );
    // Packets sent in the window may still be in flight: give them the lateness bound.
    tokio::time::sleep(LATE * 2).await;
    let mut received = 0;
    let mut late = 0;
    for m in &members {
        received += m.audio.received.load(Ordering::Relaxed);
        late += m.audio.late.load(Ordering::Relaxed);
    }
    // Each member receives the other two at 50/s over the window.
    let seconds = (until - from) as f64 / 1e9;
    let due = (members.len() as f64 * 2.0 * 50.0 * seconds).round() as u64;
    AudioStep {
        sessions: sessions.len(),
        due,
        received: received.min(due),
        late,
        edge_cpu: (edge1 - edge0) as f64 / 100.0 / elapsed,
        own_cpu: (own1 - own0) as f64 / 100.0 / elapsed,
    }
}

/// Windows measured per step; the step is judged by its median window, so one stall of
/// the shared machine (a scheduling hiccup of 100 ms makes a dozen packets late in one
/// window) does not end the ramp, while an edge that cannot keep up is late in every
/// window.
const WINDOWS_PER_STEP: usize = 3;

async fn audio_bench(quick: bool, pinned: bool) {
    println!(
        "\n== audio sessions (3 participants, 50 packets/s each) per edge core; late: > {} ms ==",
        LATE.as_millis()
    );
    if !pinned {
        println!("(taskset unavailable or one core: edge and participants share the cores)");
    }
    println!(
        "{:>8}  {:>8}  {:>9}  {:>6}  {:>7}  {:>9}  {:>9}  {:>8}",
        "sessions", "due", "missing", "late", "bad %", "edge CPU", "peers CPU", "ratio"
    );
    let window = Duration::from_secs(if quick { 2 } else { 3 });
    let edge = EdgeProcess::start(pinned).await;
    let mut sessions: Vec<AudioSession> = Vec::new();
    let mut target = 1usize;
    let mut last_good: Option<AudioStep> = None;
    let max_sessions = if quick { 8 } else { 200 };
    loop {
        while sessions.len() < target {
            let s = audio_session(&edge, sessions.len()).await;
            sessions.push(s);
        }
        settle_audio(&sessions).await;
        let mut windows = Vec::with_capacity(WINDOWS_PER_STEP);
        for _ in 0..WINDOWS_PER_STEP {
            windows.push(measure_audio(&edge, &sessions, window).await);
        }
        windows.sort_by(|a, b| a.bad().total_cmp(&b.bad()));
        let step = windows.swap_remove(WINDOWS_PER_STEP / 2);
        println!(
            "{:>8}  {:>8}  {:>9}  {:>6}  {:>6.2}%  {:>8.2}c  {:>8.2}c  {:>8.2}",
            step.sessions,
            step.due,
            step.due.saturating_sub(step.received),
            step.late,
            step.bad() * 100.0,
            step.edge_cpu,
            step.own_cpu,
            step.edge_cpu / step.own_cpu.max(1e-9)
        );
        let ok = step.bad() <= 0.01;
        let saturated = step.own_cpu >= 0.9 || step.edge_cpu >= 0.95;
        if ok {
            last_good = Some(step);
        }
        if !ok || saturated || target >= max_sessions {
            break;
        }
        target = if target < 8 {
            target * 2
        } else {
            target + target / 4
        };
        target = target.min(max_sessions);
    }
    let peers = edge.status().await["rtc"]["peers"].as_u64().unwrap_or(0);
    println!(
        "the edge's own count after the last step: {peers} WebRTC peers ({} participants)",
        sessions.len() * 3
    );
    for s in sessions {
        for source in s.sources {
            source.abort();
        }
        for m in s.members {
            m.leave().await;
        }
    }
    match last_good {
        Some(step) => {
            let per_session = step.edge_cpu / step.sessions as f64;
            println!(
                "measured: {} sessions ({} peers) forwarded with <= 1% late or missing, edge at {:.2} cores",
                step.sessions,
                step.sessions * 3,
                step.edge_cpu
            );
            println!(
                "estimate: {:.0} sessions per edge core ({:.4} cores per session); edge CPU / participants' CPU for the same packets: {:.2}",
                1.0 / per_session.max(1e-9),
                per_session,
                step.edge_cpu / step.own_cpu.max(1e-9)
            );
        }
        None => println!("even one session was late: the machine is too busy to measure"),
    }
}

// ---------------------------------------------------------------------------------------
// 3. Memory per WebRTC peer.

async fn memory_bench(quick: bool, pinned: bool) {
    let n = if quick { 20 } else { 100 };
    println!(
        "\n== memory per participant: {n} idle WebRTC peers (locus channel open) vs {n} websocket-only =="
    );
    // WebRTC participants.
    let edge = EdgeProcess::start(pinned).await;
    let warm = Participant::join(&edge, "mem-warm", "w0", None, None).await;
    let warm2 = Participant::join(&edge, "mem-warm", "w1", None, None).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let base = edge.rss();
    let mut peers = Vec::new();
    for i in 0..n {
        peers.push(
            Participant::join(
                &edge,
                &format!("mem-{}", i / 2),
                &format!("p{i}"),
                None,
                None,
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rtc = edge.rss().saturating_sub(base) as f64 / n as f64;
    for p in peers {
        p.leave().await;
    }
    warm.leave().await;
    warm2.leave().await;
    drop(edge);

    // Websocket-only participants, in a fresh edge.
    let edge = EdgeProcess::start(pinned).await;
    let mut sockets = Vec::new();
    for i in 0..2 {
        let (mut ws, _) = tokio_tungstenite::connect_async(edge.url("ws-warm", &format!("w{i}")))
            .await
            .expect("join");
        let _ = ws.next().await;
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let base = edge.rss();
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..n {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(edge.url(&format!("ws-{}", i / 2), &format!("p{i}")))
                .await
                .expect("join");
        let _ = ws.next().await;
        readers.spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ws = edge.rss().saturating_sub(base) as f64 / n as f64;
    readers.abort_all();
    drop(sockets);
    println!(
        "{:>18}  {:>18}  {:>8}",
        "per WebRTC peer", "per websocket", "ratio"
    );
    println!(
        "{:>14.1} KiB  {:>14.1} KiB  {:>8.1}",
        rtc / 1024.0,
        ws / 1024.0,
        rtc / ws.max(1.0)
    );
}

async fn run(quick: bool, pinned: bool, only: &str) {
    println!(
        "edge pinned to core 1, participants to core 0: {}",
        if pinned { "yes" } else { "no" }
    );
    if "data-channel".contains(only) {
        data_channel_bench(quick, pinned).await;
    }
    if "audio".contains(only) {
        audio_bench(quick, pinned).await;
    }
    if "memory".contains(only) {
        memory_bench(quick, pinned).await;
    }
}
