//! The media plane through a real `edge` process: two Rust WebRTC peers (the `webrtc`
//! crate as a client) and a websocket-only participant in one session; signalling errors;
//! the peer bound; a drain that tells WebRTC participants where their room moved (real
//! edges and a locator); 200 join/leave cycles that leave no peer, task or descriptor
//! behind (counted from the process's `/v1/status` and `/proc/<pid>/fd`).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCSessionDescription,
};

/// `{"locus":"rtc","type":…,"sdp":…}` with `locus` first, as reserved frames begin.
fn rtc_frame(kind: &str, sdp: &str) -> String {
    format!(
        r#"{{"locus":"rtc","type":"{kind}","sdp":{}}}"#,
        Value::String(sdp.to_string())
    )
}

/// Events of a client peer connection.
struct ClientHandler {
    gathered: watch::Sender<bool>,
    /// RTP packets received on any remote track, with the time of each.
    received: Arc<Mutex<Vec<Instant>>>,
    tracks: Arc<AtomicU64>,
    /// RTP packets received on remote video tracks.
    video: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for ClientHandler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathered
            .send_replace(state == RTCIceGatheringState::Complete);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.tracks.fetch_add(1, Ordering::Relaxed);
        let received = self.received.clone();
        let video = (track.kind().await == RtpCodecKind::Video).then(|| self.video.clone());
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(_) => {
                        received.lock().expect("lock").push(Instant::now());
                        if let Some(video) = &video {
                            video.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

/// A WebRTC participant: a session websocket for signalling, a peer connection, a
/// `locus` data channel.
struct Peer {
    pc: Arc<dyn PeerConnection>,
    channel: Arc<dyn DataChannel>,
    /// Text messages from the data channel, in order.
    messages: mpsc::UnboundedReceiver<String>,
    /// Frames for the websocket.
    outgoing: mpsc::UnboundedSender<Message>,
    /// rtc error frames the edge sent.
    errors: Arc<Mutex<Vec<String>>>,
    /// Other edge frames (not rtc, not presence), such as `moved`.
    edge_frames: Arc<Mutex<Vec<Value>>>,
    /// The websocket's close code and reason, once closed by the edge.
    closed: watch::Receiver<Option<(u16, String)>>,
    received: Arc<Mutex<Vec<Instant>>>,
    tracks: Arc<AtomicU64>,
    video: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

async fn wait_gathered(gathered: &mut watch::Receiver<bool>) {
    within("ICE gathering", gathered.wait_for(|g| *g))
        .await
        .expect("gathering state");
}

impl Peer {
    /// Joins, opens the peer (with an Opus track when `audio`), offers without trickle and
    /// waits until the data channel is open.
    async fn join(
        edge: &RtcEdge,
        session: &str,
        pid: &str,
        audio: Option<u32>,
    ) -> (Peer, Option<Arc<TrackLocalStaticRTP>>) {
        Peer::join_on(edge.join(session, pid).await, pid, audio).await
    }

    /// The same on an open session websocket.
    async fn join_on(
        ws: Client,
        pid: &str,
        audio: Option<u32>,
    ) -> (Peer, Option<Arc<TrackLocalStaticRTP>>) {
        let (gathered_tx, mut gathered) = watch::channel(false);
        let received = Arc::new(Mutex::new(Vec::new()));
        let tracks = Arc::new(AtomicU64::new(0));
        let video = Arc::new(AtomicU64::new(0));
        let mut engine = MediaEngine::default();
        engine.register_default_codecs().expect("codecs");
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_media_engine(engine)
                .with_handler(Arc::new(ClientHandler {
                    gathered: gathered_tx,
                    received: received.clone(),
                    tracks: tracks.clone(),
                    video: video.clone(),
                }))
                .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
                .build()
                .await
                .expect("client peer"),
        );
        let channel = pc
            .create_data_channel("locus", None)
            .await
            .expect("data channel");
        let track = match audio {
            Some(ssrc) => {
                let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                    format!("{pid}-stream"),
                    format!("{pid}-audio"),
                    format!("{pid}-audio"),
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
                )));
                pc.add_track(track.clone() as Arc<dyn TrackLocal>)
                    .await
                    .expect("add track");
                Some(track)
            }
            None => None,
        };
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let (open_tx, mut open) = watch::channel(false);
        {
            let channel = channel.clone();
            tokio::spawn(async move {
                while let Some(event) = channel.poll().await {
                    match event {
                        DataChannelEvent::OnOpen => {
                            open_tx.send_replace(true);
                        }
                        DataChannelEvent::OnMessage(message) => {
                            let text = String::from_utf8(message.data.to_vec()).expect("utf-8");
                            let _ = messages_tx.send(text);
                        }
                        DataChannelEvent::OnClose => break,
                        _ => {}
                    }
                }
            });
        }
        let offer = pc.create_offer(None).await.expect("offer");
        pc.set_local_description(offer).await.expect("local offer");
        wait_gathered(&mut gathered).await;
        let sdp = pc.local_description().await.expect("local description").sdp;
        let (outgoing, mut out_rx) = mpsc::unbounded_channel::<Message>();
        outgoing
            .send(Message::text(rtc_frame("offer", &sdp)))
            .expect("queue offer");
        let errors = Arc::new(Mutex::new(Vec::new()));
        let edge_frames = Arc::new(Mutex::new(Vec::new()));
        let (closed_tx, closed) = watch::channel(None);
        let task = {
            let pc = pc.clone();
            let errors = errors.clone();
            let edge_frames = edge_frames.clone();
            let outgoing = outgoing.clone();
            let (mut sink, mut stream) = ws.split();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        frame = out_rx.recv() => match frame {
                            Some(frame) => if sink.send(frame).await.is_err() { break },
                            None => break,
                        },
                        frame = stream.next() => {
                            let Some(Ok(Message::Text(text))) = frame else {
                                if let Some(Ok(Message::Close(close))) = &frame {
                                    closed_tx.send_replace(Some(close.as_ref().map_or((1005, String::new()), |c| (u16::from(c.code), c.reason.to_string()))));
                                }
                                if matches!(frame, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) { break }
                                continue;
                            };
                            if text.starts_with("{\"locus\"") && !text.starts_with("{\"locus\":\"rtc\"") && !text.starts_with("{\"locus\":\"presence\"") {
                                edge_frames.lock().expect("lock").push(serde_json::from_str(&text).expect("edge frame JSON"));
                            }
                            if !text.starts_with("{\"locus\":\"rtc\"") {
                                continue;
                            }
                            let v: Value = serde_json::from_str(&text).expect("rtc JSON");
                            match v["type"].as_str() {
                                Some("answer") => {
                                    let answer = RTCSessionDescription::answer(v["sdp"].as_str().expect("sdp").into()).expect("answer SDP");
                                    pc.set_remote_description(answer).await.expect("apply the edge's answer");
                                }
                                Some("offer") => {
                                    let offer = RTCSessionDescription::offer(v["sdp"].as_str().expect("sdp").into()).expect("offer SDP");
                                    // Glare: the edge is polite and offers again after
                                    // answering ours, so an offer crossing ours is ignored
                                    // (README "Glare"), also one crossing it just now.
                                    if pc.pending_local_description().await.is_some() {
                                        continue;
                                    }
                                    if let Err(error) = pc.set_remote_description(offer).await {
                                        if pc.pending_local_description().await.is_some() {
                                            continue;
                                        }
                                        panic!("apply the edge's offer: {error}");
                                    }
                                    let answer = pc.create_answer(None).await.expect("answer");
                                    pc.set_local_description(answer).await.expect("local answer");
                                    let sdp = pc.local_description().await.expect("local").sdp;
                                    let _ = outgoing.send(Message::text(rtc_frame("answer", &sdp)));
                                }
                                Some("error") => errors.lock().expect("lock").push(v["detail"].as_str().unwrap_or_default().to_string()),
                                other => panic!("unexpected rtc frame {other:?}: {text}"),
                            }
                        }
                    }
                }
            })
        };
        within("the data channel to open", open.wait_for(|o| *o))
            .await
            .expect("open state");
        (
            Peer {
                pc,
                channel,
                messages,
                outgoing,
                errors,
                edge_frames,
                closed,
                received,
                tracks,
                video,
                task,
            },
            track,
        )
    }

    /// Adds a VP8 track to the running link (as a browser turning its camera on) and
    /// offers again; the edge's answer is applied by the signalling task.
    async fn add_video(&self, pid: &str, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("{pid}-stream"),
            format!("{pid}-video"),
            format!("{pid}-video"),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: "video/VP8".into(),
                    clock_rate: 90000,
                    channels: 0,
                    sdp_fmtp_line: String::new(),
                    rtcp_feedback: vec![],
                },
                ..Default::default()
            }],
        )));
        self.pc
            .add_track(track.clone() as Arc<dyn TrackLocal>)
            .await
            .expect("add the video track");
        let offer = self
            .pc
            .create_offer(None)
            .await
            .expect("renegotiation offer");
        self.pc
            .set_local_description(offer)
            .await
            .expect("local renegotiation offer");
        let sdp = self.pc.local_description().await.expect("local").sdp;
        self.outgoing
            .send(Message::text(rtc_frame("offer", &sdp)))
            .expect("queue the renegotiation offer");
        track
    }

    async fn next_message(&mut self) -> String {
        within("a data-channel message", self.messages.recv())
            .await
            .expect("data channel open")
    }

    async fn leave(self) {
        let _ = self.pc.close().await;
        let _ = self.outgoing.send(Message::Close(None));
        let _ = within("the signalling task to end", self.task).await;
    }
}

/// Writes synthetic Opus packets (20 ms, 50 per second) until dropped.
fn opus_source(track: Arc<TrackLocalStaticRTP>, ssrc: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut seq: u16 = 0;
        let mut ts: u32 = 0;
        loop {
            tick.tick().await;
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: seq,
                    timestamp: ts,
                    ssrc,
                    ..Default::default()
                },
                payload: bytes::Bytes::from(vec![0xf8; 80]),
            };
            // Before the leg is negotiated writes fail: keep the clock going anyway.
            let _ = track.write_rtp(packet).await;
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(960);
        }
    })
}

/// Writes synthetic VP8 packets (30 per second, every one a keyframe) until dropped.
fn vp8_source(track: Arc<TrackLocalStaticRTP>, ssrc: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        let (mut seq, mut ts) = (0u16, 0u32);
        loop {
            tick.tick().await;
            // VP8 payload descriptor (start of partition 0), then a keyframe header.
            let mut payload = vec![0x10, 0x00, 0x9d, 0x01, 0x2a];
            payload.resize(400, 0);
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: 96,
                    sequence_number: seq,
                    timestamp: ts,
                    ssrc,
                    marker: true,
                    ..Default::default()
                },
                payload: bytes::Bytes::from(payload),
            };
            let _ = track.write_rtp(packet).await;
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(3000);
        }
    })
}

/// Reads websocket text messages that are not edge frames.
async fn next_session_message(client: &mut Client) -> String {
    loop {
        match next_frame(client).await {
            Message::Text(text) if text.starts_with("{\"locus\"") => {}
            Message::Text(text) => return text.to_string(),
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webrtc_peers_and_a_websocket_participant_share_a_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = RtcEdge::spawn(dir.path(), &["--send-queue", "4096"]).await;
    let mut carol = edge.join("s-rtc", "carol").await;
    let (mut alice, alice_track) = Peer::join(&edge, "s-rtc", "alice", Some(0xA11CE)).await;
    let (mut bob, _) = Peer::join(&edge, "s-rtc", "bob", None).await;
    assert_eq!(edge.status().await["rtc"]["peers"], 2, "{}", edge.log());

    // 1,000 data-channel messages each way, in order; carol (websocket only) sees both.
    const N: usize = 1000;
    let (a, b) = (alice.channel.clone(), bob.channel.clone());
    let senders = tokio::spawn(async move {
        for i in 0..N {
            a.send_text(&format!("alice-{i}"))
                .await
                .expect("alice sends");
            b.send_text(&format!("bob-{i}")).await.expect("bob sends");
        }
    });
    for i in 0..N {
        assert_eq!(bob.next_message().await, format!("alice-{i}"));
        assert_eq!(alice.next_message().await, format!("bob-{i}"));
    }
    let (mut from_alice, mut from_bob) = (0, 0);
    while from_alice + from_bob < 2 * N {
        let text = next_session_message(&mut carol).await;
        if let Some(i) = text.strip_prefix("alice-") {
            assert_eq!(i, from_alice.to_string(), "alice's messages in order");
            from_alice += 1;
        } else if let Some(i) = text.strip_prefix("bob-") {
            assert_eq!(i, from_bob.to_string(), "bob's messages in order");
            from_bob += 1;
        } else {
            panic!("unexpected message {text}");
        }
    }
    senders.await.expect("senders");

    // What the websocket-only participant sends reaches the others on their channels.
    carol
        .send(Message::text("carol-0"))
        .await
        .expect("carol sends");
    assert_eq!(alice.next_message().await, "carol-0");
    assert_eq!(bob.next_message().await, "carol-0");

    // Alice's Opus track reaches bob through the edge (renegotiated by the edge).
    let source = opus_source(alice_track.expect("alice has a track"), 0xA11CE);
    eventually("bob to receive alice's audio", || async {
        bob.received.lock().expect("lock").len() >= 10
    })
    .await;
    let start = bob.received.lock().expect("lock").len();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = bob.received.lock().expect("lock").len() - start;
    let rate = got as f64 / t0.elapsed().as_secs_f64();
    assert!(rate >= 45.0, "bob received {rate:.1} packets/s from alice");
    assert_eq!(bob.tracks.load(Ordering::Relaxed), 1);
    assert!(
        alice.received.lock().expect("lock").is_empty(),
        "alice gets no echo of her own track"
    );
    source.abort();
    assert!(alice.errors.lock().expect("lock").is_empty());
    assert!(bob.errors.lock().expect("lock").is_empty());
    let status = edge.status().await;
    assert!(status["rtc"]["packets_in"].as_u64() > Some(50), "{status}");
    assert!(status["rtc"]["packets_out"].as_u64() > Some(50), "{status}");

    alice.leave().await;
    bob.leave().await;
    eventually("the edge to let the peers go", || async {
        edge.status().await["rtc"]["peers"] == 0
    })
    .await;
}

/// Cameras turned on in a running link: both participants already publish audio and add
/// a video track at the same moment, each with an offer of its own (so the edge's offers
/// telling each of the other's new track cross theirs: glare). Each must receive the
/// other's camera, every round (a browser's try page once saw a camera reach nobody,
/// about one run in three).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cameras_added_to_running_links_reach_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = RtcEdge::spawn(dir.path(), &[]).await;
    for round in 0..5u32 {
        let session = format!("camera-{round}");
        let ssrc = |who: u32, kind: u32| 0x1000 * kind + 0x10 * round + who;
        let (alice, alice_audio) = Peer::join(&edge, &session, "alice", Some(ssrc(1, 1))).await;
        let (bob, bob_audio) = Peer::join(&edge, &session, "bob", Some(ssrc(2, 1))).await;
        let mut sources = vec![
            opus_source(alice_audio.expect("alice's audio"), ssrc(1, 1)),
            opus_source(bob_audio.expect("bob's audio"), ssrc(2, 1)),
        ];
        eventually("each to receive the other's audio", || async {
            alice.received.lock().expect("lock").len() >= 10
                && bob.received.lock().expect("lock").len() >= 10
        })
        .await;
        let (alice_camera, bob_camera) = tokio::join!(
            alice.add_video("alice", ssrc(1, 2)),
            bob.add_video("bob", ssrc(2, 2))
        );
        sources.push(vp8_source(alice_camera, ssrc(1, 2)));
        sources.push(vp8_source(bob_camera, ssrc(2, 2)));
        eventually("each to receive the camera the other turned on", || async {
            alice.video.load(Ordering::Relaxed) >= 10 && bob.video.load(Ordering::Relaxed) >= 10
        })
        .await;
        for peer in [&alice, &bob] {
            let tracks = peer.tracks.load(Ordering::Relaxed);
            assert_eq!(tracks, 2, "round {round}: audio and video\n{}", edge.log());
            assert!(
                peer.errors.lock().expect("lock").is_empty(),
                "{:?}",
                peer.errors
            );
        }
        for source in sources {
            source.abort();
        }
        alice.leave().await;
        bob.leave().await;
    }
    eventually("the edge to let the peers go", || async {
        edge.status().await["rtc"]["peers"] == 0
    })
    .await;
}

/// The next rtc frame (presence skipped).
async fn next_rtc(client: &mut Client) -> Value {
    loop {
        match next_frame(client).await {
            Message::Text(text) if text.starts_with("{\"locus\":\"rtc\"") => {
                return serde_json::from_str(&text).expect("rtc JSON");
            }
            Message::Text(text) if text.starts_with("{\"locus\":\"presence\"") => {}
            other => panic!("expected an rtc frame, got {other:?}"),
        }
    }
}

async fn expect_error(client: &mut Client, needle: &str) {
    let frame = next_rtc(client).await;
    assert_eq!(frame["type"], "error", "{frame}");
    let detail = frame["detail"].as_str().expect("detail");
    assert!(detail.contains(needle), "{detail:?} should say {needle:?}");
}

#[tokio::test]
async fn bad_and_out_of_order_frames_get_an_error_and_the_session_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = Edge::start(
        "edge-1",
        vec!["http://127.0.0.1:9".into()],
        dir.path(),
        |s| {
            s.media.listen = "127.0.0.1".parse().expect("ip");
            s.media.max_peers = 1;
        },
    )
    .await;
    let mut alice = edge.join("s-bad", "alice").await;
    let mut bob = edge.join("s-bad", "bob").await;
    presence(&mut alice, &["alice", "bob"]).await;
    presence(&mut bob, &["alice", "bob"]).await;

    // Reserved frames begin with {"locus": write them as text, key order matters.
    let send = |text: &str| Message::text(text.to_string());
    alice
        .send(send(r#"{"locus":"rtc","type":"answer","sdp":"v=0"}"#))
        .await
        .expect("send");
    expect_error(&mut alice, "send an offer first").await;
    alice
        .send(send(r#"{"locus":"rtc","type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}}"#))
        .await
        .expect("send");
    expect_error(&mut alice, "send an offer first").await;
    alice
        .send(send(r#"{"locus":"rtc","type":"offer"}"#))
        .await
        .expect("send");
    expect_error(&mut alice, "bad rtc frame").await;
    alice
        .send(send(r#"{"locus":"rtc","type":"offer","sdp":"not sdp"}"#))
        .await
        .expect("send");
    expect_error(&mut alice, "does not parse").await;
    // Alice's peer exists (it took the edge's only slot): an answer now is out of order.
    assert_eq!(edge.state.media.peer_count(), 1);
    alice
        .send(send(r#"{"locus":"rtc","type":"answer","sdp":"v=0"}"#))
        .await
        .expect("send");
    expect_error(&mut alice, "no offer outstanding").await;
    // The edge is full for bob.
    bob.send(send(r#"{"locus":"rtc","type":"offer","sdp":"v=0"}"#))
        .await
        .expect("send");
    expect_error(&mut bob, "--max-rtc-peers").await;

    // The session goes on.
    alice.send(Message::text("still here")).await.expect("send");
    assert_eq!(next_data(&mut bob).await, Message::text("still here"));
    // Other reserved frames are still refused.
    alice
        .send(send(r#"{"locus":"presence"}"#))
        .await
        .expect("send");
    let (code, reason) = closed(&mut alice).await;
    assert_eq!(code, 1008, "{reason}");
    eventually("alice's peer to end with her connection", || async {
        edge.state.media.peer_count() == 0
    })
    .await;
}

/// What the running edge holds, read from outside: its `/v1/status` figures and its
/// descriptors as the kernel lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holdings {
    peers: u64,
    rooms: u64,
    tasks: u64,
    fds: u64,
    proc_fds: usize,
}

impl RtcEdge {
    async fn holdings(&self) -> Holdings {
        // The kernel's count first: the status request's own connection is not in it.
        let proc_fds = std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("the edge's /proc fd directory")
            .count();
        let status = self.status().await;
        let figure = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("a count in {status}"));
        Holdings {
            peers: figure(&status["rtc"]["peers"]),
            rooms: figure(&status["rtc"]["rooms"]),
            tasks: figure(&status["process"]["tasks"]),
            fds: figure(&status["process"]["fds"]),
            proc_fds,
        }
    }
}

/// What the process's descriptors point at (for a failure message).
fn fd_targets(pid: u32) -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    targets.sort();
    targets
}

/// One WebRTC participant joins the session of `host`, proves its data channel and the
/// forwarding of the host's audio, and leaves.
async fn join_and_leave(edge: &RtcEdge, host: &mut Peer, session: &str, pid: &str) {
    let (guest, _) = Peer::join(edge, session, pid, None).await;
    // Guest to host: the host's channel is long open, so the message is on it.
    guest
        .channel
        .send_text(&format!("hello from {pid}"))
        .await
        .expect("guest sends");
    assert_eq!(host.next_message().await, format!("hello from {pid}"));
    eventually("the guest to receive the host's audio", || async {
        !guest.received.lock().expect("lock").is_empty()
    })
    .await;
    assert!(guest.errors.lock().expect("lock").is_empty());
    guest.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_join_leave_cycles_leave_no_peer_task_or_descriptor_behind() {
    const CYCLES: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = RtcEdge::spawn(dir.path(), &[]).await;
    // A resident publisher: every newcomer gets its audio forwarded (a renegotiation, a
    // forwarding task) besides its data channel.
    let (mut host, host_track) = Peer::join(&edge, "s-leak", "host", Some(0x5EED)).await;
    let source = opus_source(host_track.expect("host track"), 0x5EED);
    // One cycle first, so what lives as long as the host does (the task reading its
    // published track, made on its first packet) is in the starting counts.
    join_and_leave(&edge, &mut host, "s-leak", "warm-up").await;
    let settled = Instant::now() + WAIT;
    while edge.holdings().await.peers != 1 {
        assert!(
            Instant::now() < settled,
            "the warm-up guest's peer does not end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = edge.holdings().await;
    let fds_before = fd_targets(edge.child.id());
    assert_eq!((before.peers, before.rooms), (1, 1), "{before:?}");
    let started = Instant::now();
    for i in 0..CYCLES {
        join_and_leave(&edge, &mut host, "s-leak", &format!("guest-{i}")).await;
    }
    let cycles = started.elapsed();
    // Peers end as their websockets close: wait (with a deadline) for the edge to settle.
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let now = edge.holdings().await;
        let settled = now.peers == before.peers
            && now.rooms == before.rooms
            && now.tasks <= before.tasks
            && now.fds <= before.fds
            && now.proc_fds <= before.proc_fds;
        if settled || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{CYCLES} cycles in {cycles:.1?}; before {before:?}; after {after:?}");
    eprintln!(
        "fds before: {fds_before:?}\nfds after: {:?}",
        fd_targets(edge.child.id())
    );
    assert_eq!(after.peers, before.peers, "peers: {after:?} vs {before:?}");
    assert_eq!(after.rooms, before.rooms, "rooms: {after:?} vs {before:?}");
    assert!(
        after.tasks <= before.tasks,
        "tasks: {after:?} vs {before:?}"
    );
    assert!(after.fds <= before.fds, "fds: {after:?} vs {before:?}");
    assert!(
        after.proc_fds <= before.proc_fds,
        "/proc fds: {after:?} vs {before:?}"
    );
    assert!(host.errors.lock().expect("lock").is_empty());
    source.abort();
    host.leave().await;
    eventually("the host's peer to end", || async {
        edge.status().await["rtc"]["peers"] == 0
    })
    .await;
}

/// Asks the locator for a keyed room (retrying until an edge is there to place it).
async fn create_room(locator: std::net::SocketAddr, key: &str) -> Value {
    let body = format!(r#"{{"key":"{key}"}}"#);
    within("the locator to place the room", async {
        loop {
            let (status, text) = http(locator, "POST", "/v1/sessions", Some(&body)).await;
            if status == 201 || status == 200 {
                return serde_json::from_str(&text).expect("session JSON");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

fn with_token(answer: &Value) -> String {
    format!(
        "{}?token={}",
        answer["ws_url"].as_str().expect("ws_url"),
        answer["join_token"].as_str().expect("join_token")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_edge_tells_webrtc_participants_where_their_room_moved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locator = Locator::start(&dir.path().join("locator.sqlite"), 0).await;
    let args = ["--drain-deadline", "2s"];
    let mut edges = Vec::new();
    for id in ["edge-m1", "edge-m2"] {
        let edge = RtcEdge::spawn_as(dir.path(), id, &locator.url(), &args).await;
        eventually("the edge to register", || async {
            !edge.status().await["locator"].is_null()
        })
        .await;
        edges.push(edge);
    }
    let room = create_room(locator.addr, "room-rtc").await;
    let session = room["session_id"].as_str().expect("session id").to_string();
    let x = edges
        .iter()
        .position(|e| room["edge"]["id"] == e.id.as_str())
        .expect("a test edge hosts the room");
    let mut draining = edges.remove(x);
    let other = edges.remove(0);

    let (mut alice, alice_track) =
        Peer::join_on(connect(&with_token(&room)).await, "alice", Some(0xD1A)).await;
    let (status, again) = http(
        locator.addr,
        "GET",
        &format!("/v1/sessions/{session}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{again}");
    let again: Value = serde_json::from_str(&again).expect("json");
    let (mut bob, _) = Peer::join_on(connect(&with_token(&again)).await, "bob", None).await;
    let source = opus_source(alice_track.expect("alice's track"), 0xD1A);
    eventually("bob to receive alice's audio", || async {
        !bob.received.lock().expect("lock").is_empty()
    })
    .await;
    assert_eq!(draining.status().await["rtc"]["peers"], 2);

    let status = Command::new("kill")
        .args(["-TERM", &draining.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    eventually("the edge to drain", || async {
        draining.status().await["draining"] == true
    })
    .await;
    // Until the deadline the call goes on.
    bob.channel
        .send_text("during the drain")
        .await
        .expect("bob sends");
    assert_eq!(alice.next_message().await, "during the drain");

    // At the deadline the room moves to the other edge: both WebRTC participants are told
    // on their websockets, exactly as websocket-only ones.
    let expected_url = locus_protocol::session_ws_url(&format!("http://{}", other.addr), &session);
    for peer in [&mut alice, &mut bob] {
        let close = within("the moved close", peer.closed.wait_for(Option::is_some))
            .await
            .expect("close state")
            .clone();
        assert_eq!(
            close,
            Some((
                locus_edge::hub::CLOSE_MOVED,
                format!("moved to {}", other.id)
            ))
        );
        let frames = peer.edge_frames.lock().expect("lock").clone();
        assert_eq!(
            frames,
            vec![serde_json::json!({
                "locus": "moved",
                "session": session,
                "edge": other.id,
                "url": expected_url,
            })],
            "exactly one moved frame"
        );
        assert!(peer.errors.lock().expect("lock").is_empty());
    }
    source.abort();
    let exited = within("the drained edge to exit", async {
        loop {
            if let Some(status) = draining.child.try_wait().expect("try_wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(exited.success(), "exit {exited:?}\n{}", draining.log());
    alice.leave().await;
    bob.leave().await;
    locator.kill().await;
}

/// Reads an admin endpoint of the locator.
async fn admin_get(locator: std::net::SocketAddr, token: &str, path: &str) -> Value {
    let (status, body) = http_with(
        locator,
        "GET",
        path,
        &format!("Authorization: Bearer {token}\r\n"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("admin JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_locator_sees_the_webrtc_figures_and_weighs_them_against_max_bitrate() {
    const ADMIN: &str = "admin-token-for-the-rtc-load-test";
    let dir = tempfile::tempdir().expect("tempdir");
    let locator =
        Locator::start_with_admin(&dir.path().join("locator.sqlite"), 0, Some(ADMIN)).await;
    // Alice's synthetic Opus is 80-byte payloads at 50/s: 32 kbit/s in, and as much out
    // to bob. A 30k cap is below that: the edge saturates on bitrate with one session.
    let edge = RtcEdge::spawn_as(
        dir.path(),
        "edge-b1",
        &locator.url(),
        &["--max-bitrate", "30k"],
    )
    .await;
    eventually("the edge to register", || async {
        !edge.status().await["locator"].is_null()
    })
    .await;
    let edge_row = |status: Value| -> Value {
        status["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["edges"].as_array().cloned().unwrap_or_default())
            .find(|e| e["id"] == "edge-b1")
            .unwrap_or(Value::Null)
    };
    // Idle: the cap travels with the reports, no WebRTC figures, headroom.
    eventually("a report with the bitrate cap", || async {
        let row = edge_row(admin_get(locator.addr, ADMIN, "/v1/admin/status").await);
        row["load"]["max_bitrate"] == 30_000 && row["takes_new_sessions"] == true
    })
    .await;

    let (alice, alice_track) = Peer::join(&edge, "s-load", "alice", Some(0xB17)).await;
    let (bob, _) = Peer::join(&edge, "s-load", "bob", None).await;
    let source = opus_source(alice_track.expect("alice's track"), 0xB17);
    eventually("bob to receive alice's audio", || async {
        bob.received.lock().expect("lock").len() >= 20
    })
    .await;

    // Reports (every 200 ms here) carry the peers and the forwarded rates.
    let row = within("a report with the forwarded audio", async {
        loop {
            let row = edge_row(admin_get(locator.addr, ADMIN, "/v1/admin/status").await);
            let load = &row["load"];
            if load["rtc_peers"] == 2
                && load["packets_in_per_s"].as_u64().is_some_and(|p| p >= 40)
                && load["packets_out_per_s"].as_u64().is_some_and(|p| p >= 40)
                && load["bitrate_in"].as_u64().is_some_and(|b| b >= 25_000)
                && load["bitrate_out"].as_u64().is_some_and(|b| b >= 25_000)
            {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    let load = &row["load"];
    // 80-byte payloads at 50/s: 32 kbit/s (a report may catch a burst, not ten times it).
    assert!(load["bitrate_in"].as_u64() < Some(320_000), "{row}");
    assert!(load["packets_in_per_s"].as_u64() < Some(500), "{row}");
    assert_eq!(row["bottleneck"], "bitrate", "{row}");
    assert_eq!(row["takes_new_sessions"], false, "{row}");
    assert!(row["utilisation"].as_f64() >= Some(1.0), "{row}");

    // Explain says why the edge is passed over, and shows the figures.
    let explain = admin_get(locator.addr, ADMIN, "/v1/admin/explain?ip=127.0.0.1").await;
    let candidate = &explain["candidates"][0];
    assert_eq!(candidate["edge"], "edge-b1", "{explain}");
    assert_eq!(candidate["eligible"], false, "{explain}");
    assert!(
        candidate["why_not"]
            .as_str()
            .is_some_and(|w| w.contains("--max-bitrate")),
        "{explain}"
    );
    assert_eq!(candidate["load"]["max_bitrate"], 30_000, "{explain}");
    assert!(
        candidate["load"]["bitrate_out"].as_u64() > Some(0),
        "{explain}"
    );
    // The only edge still serves (nothing has headroom anywhere), saying so.
    assert_eq!(
        explain["answer"]["reason_code"], "all-saturated",
        "{explain}"
    );

    // When the audio stops the figures fall back and the edge has headroom again.
    source.abort();
    eventually("the rates to fall to zero", || async {
        let row = edge_row(admin_get(locator.addr, ADMIN, "/v1/admin/status").await);
        row["load"]["bitrate_in"].is_null() && row["takes_new_sessions"] == true
    })
    .await;
    alice.leave().await;
    bob.leave().await;
    locator.kill().await;
}
