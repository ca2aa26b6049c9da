//! The media plane with a real browser: the system's headless Chromium (fake camera and
//! microphone), driven over WebDriver (chromedriver, started here on a free port) with
//! `fantoccini` as the locator's admin page test does, against a real `edge` process.
//!
//! - Two pages of one browser in one session publish audio and video; each receives the
//!   other's through the edge (`getStats()` inbound-rtp packets grow on both pages).
//! - A page whose only ICE server is a real coturn (`turnserver`, on loopback) reached
//!   over TCP, with `iceTransportPolicy: "relay"` and a credential of the locator's REST
//!   scheme (`locus_locator::turn::turn_credential`), reaches the edge: its selected
//!   candidate pair is a relay over TCP and its data channel carries session messages. An
//!   expired credential is refused by coturn and the page gets no relay.
//!
//! Chromium hides host addresses behind mDNS names and ignores loopback unless told: the
//! flags below turn that off (`--allow-loopback-in-peer-connection`,
//! `--disable-features=WebRtcHideLocalIpsWithMdns`). coturn runs with
//! `allow-loopback-peers` so it relays to the edge's 127.0.0.1 host candidate.
//!
//! The tests take turns (one browser at a time: they are heavy on a loaded 2-core
//! machine). `scripts/test` installs Chromium, chromedriver and coturn; without them the
//! tests fail saying so. `LOCUS_SKIP_BROWSER_TEST=1` skips the browser tests loudly on a
//! developer machine and is refused when `CI=true`; `LOCUS_CHROMIUM` and
//! `LOCUS_CHROMEDRIVER` point elsewhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::wd::WindowHandle;
use fantoccini::{Client as Browser, ClientBuilder};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// One browser at a time across the tests of this file.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a page may take to connect or to show media (a loaded machine, software
/// video codecs), or the edge to give up a connection that cannot work (its ICE agent
/// fails it after about 30 s).
const PAGE_WAIT: Duration = Duration::from_secs(90);

fn find_program(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    candidates.iter().find_map(|name| {
        let path = Path::new(name);
        if path.is_absolute() {
            return path.exists().then(|| path.to_path_buf());
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.exists())
        })
    })
}

/// Chromium and chromedriver, or `None` when the developer explicitly skips the test.
fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    let chromium = find_program(
        "LOCUS_CHROMIUM",
        &["/usr/bin/chromium", "chromium", "chromium-browser"],
    );
    let driver = find_program(
        "LOCUS_CHROMEDRIVER",
        &["/usr/bin/chromedriver", "chromedriver"],
    );
    if let (Some(chromium), Some(driver)) = (&chromium, &driver) {
        return Some((chromium.clone(), driver.clone()));
    }
    let missing = [
        chromium.is_none().then_some("chromium"),
        driver.is_none().then_some("chromedriver"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" and ");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if !ci && std::env::var("LOCUS_SKIP_BROWSER_TEST").is_ok_and(|v| v == "1") {
        eprintln!(
            "SKIPPED the browser media test: {missing} not found and LOCUS_SKIP_BROWSER_TEST=1"
        );
        return None;
    }
    panic!(
        "the browser media tests need {missing}: install them with \
         `sudo apt-get install -y chromium chromium-driver` (./scripts/test does), or point \
         LOCUS_CHROMIUM / LOCUS_CHROMEDRIVER at them"
    );
}

/// A chromedriver process. On drop (also when the test fails half-way) it is asked to
/// shut down, which closes every browser it started, and killed if it does not.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        use std::io::Write;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        if let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = write!(
                stream,
                "GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.port
            );
        }
        for _ in 0..30 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(program: &Path, log: &Path) -> Driver {
    let port = free_port().await;
    let child = Command::new(program)
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    let driver = Driver { child, port };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    // Listening is ready: a new session is what it serves first.
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not start within 20 s (log: {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    driver
}

async fn start_browser(driver: &Driver, chromium: &Path, profile: &Path) -> Browser {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                // A camera and a microphone that need no device and no permission prompt.
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                // Real addresses in candidates, loopback included (the edge is on 127.0.0.1).
                "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                // Both pages keep full speed when not in front.
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--autoplay-policy=no-user-gesture-required",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let Value::Object(caps) = caps else {
        unreachable!("a JSON object")
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap_or_else(|e| panic!("start headless Chromium through chromedriver: {e}"))
}

/// The page side of a participant: a peer connection signalled over the session
/// websocket exactly as the README's "Edge sessions" says, a `locus` data channel, and
/// probes for the test. Installed into a page of the edge's own origin (`/healthz`:
/// loopback over HTTP is a secure context, so `getUserMedia` works).
const PAGE_JS: &str = r#"
window.locusTest = {
  errors: [], frames: [], candidateErrors: [], messages: [],
  async start(wsUrl, config, withMedia) {
    const t = window.locusTest;
    const pc = new RTCPeerConnection(config);
    t.pc = pc;
    pc.addEventListener('icecandidateerror',
      e => t.candidateErrors.push({ code: e.errorCode, text: e.errorText, url: e.url }));
    if (withMedia) {
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: true, video: { width: 320, height: 240, frameRate: 15 } });
      for (const track of stream.getTracks()) pc.addTrack(track, stream);
    }
    t.channel = pc.createDataChannel('locus');
    t.channel.onmessage = e => t.messages.push(e.data);
    const ws = new WebSocket(wsUrl);
    t.ws = ws;
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error('the session websocket did not open'));
    });
    // Reserved frames begin with {"locus": object literals keep their key order.
    const send = (type, sdp) => ws.send(JSON.stringify({ locus: 'rtc', type, sdp }));
    let queue = Promise.resolve();
    ws.onmessage = e => {
      if (typeof e.data !== 'string' || !e.data.startsWith('{"locus":"rtc"')) return;
      const m = JSON.parse(e.data);
      t.frames.push(m.type);
      queue = queue.then(async () => {
        if (m.type === 'answer') {
          await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
        } else if (m.type === 'offer') {
          await pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
          await pc.setLocalDescription();
          send('answer', pc.localDescription.sdp);
        } else if (m.type === 'error') {
          t.errors.push(m.detail);
        }
      }).catch(err => t.errors.push('page: ' + err));
    };
    // No trickle: the offer carries its candidates.
    await pc.setLocalDescription();
    await new Promise(resolve => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange',
        () => pc.iceGatheringState === 'complete' && resolve());
    });
    send('offer', pc.localDescription.sdp);
    return pc.localDescription.sdp;
  },
  async inbound() {
    const packets = { audio: 0, video: 0 };
    (await window.locusTest.pc.getStats()).forEach(s => {
      if (s.type === 'inbound-rtp') packets[s.kind] += s.packetsReceived || 0;
    });
    return packets;
  },
  async selectedPair() {
    const stats = await window.locusTest.pc.getStats();
    let pair = null;
    stats.forEach(s => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
    return { state: pair.state,
             local: { type: local.candidateType, relayProtocol: local.relayProtocol || null,
                      protocol: local.protocol, address: local.address },
             remote: { type: remote.candidateType, address: remote.address, port: remote.port } };
  },
  state() {
    const t = window.locusTest;
    return { connection: t.pc.connectionState, ice: t.pc.iceConnectionState,
             gathering: t.pc.iceGatheringState, channel: t.channel.readyState,
             errors: t.errors, frames: t.frames, candidateErrors: t.candidateErrors,
             messages: t.messages };
  },
};
"#;

/// Runs `script` (a function body; promises are awaited) in the window `window`.
async fn run(browser: &Browser, window: &WindowHandle, script: &str, args: Vec<Value>) -> Value {
    browser
        .switch_to_window(window.clone())
        .await
        .expect("switch window");
    browser
        .execute(script, args)
        .await
        .unwrap_or_else(|e| panic!("run `{script}` in the page: {e}"))
}

/// Opens the edge's origin in `window` and installs the page side.
async fn open_page(browser: &Browser, window: &WindowHandle, edge: &RtcEdge) {
    browser
        .switch_to_window(window.clone())
        .await
        .expect("switch window");
    browser
        .goto(&format!("http://{}/healthz", edge.addr))
        .await
        .expect("open the edge's origin");
    run(browser, window, PAGE_JS, vec![]).await;
}

/// The websocket URL of `pid` in `session` on `edge`.
fn ws_url(edge: &RtcEdge, session: &str, pid: &str) -> String {
    format!(
        "ws://{}/v1/sessions/{session}/ws?token={}",
        edge.addr,
        mint(&edge.id, session, pid, 300)
    )
}

/// Starts the page's participant; returns its offer's SDP.
async fn start(
    browser: &Browser,
    window: &WindowHandle,
    ws_url: &str,
    config: Value,
    media: bool,
) -> String {
    let sdp = run(
        browser,
        window,
        "return window.locusTest.start(arguments[0], arguments[1], arguments[2]);",
        vec![json!(ws_url), config, json!(media)],
    )
    .await;
    sdp.as_str().expect("the offer's SDP").to_string()
}

/// The page's state, for conditions and failure messages.
async fn page_state(browser: &Browser, window: &WindowHandle) -> Value {
    run(browser, window, "return window.locusTest.state();", vec![]).await
}

/// Polls `probe` in the page until `done` holds; fails after [`PAGE_WAIT`] with the page's
/// state.
async fn until_page(
    browser: &Browser,
    window: &WindowHandle,
    what: &str,
    probe: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let value = run(browser, window, probe, vec![]).await;
        if done(&value) {
            return value;
        }
        if Instant::now() >= deadline {
            let state = page_state(browser, window).await;
            panic!("timed out after {PAGE_WAIT:?} waiting for {what}: last {value}; page {state}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn packets(value: &Value, kind: &str) -> u64 {
    value[kind].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chromium_pages_send_each_other_audio_and_video_through_the_edge() {
    let _turn = BROWSER.lock().await;
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = RtcEdge::spawn(dir.path(), &[]).await;
    let driver = start_driver(&chromedriver, &dir.path().join("chromedriver.log")).await;
    let browser = start_browser(&driver, &chromium, &dir.path().join("profile")).await;

    let first = browser.window().await.expect("the first window");
    let second = browser
        .new_window(false)
        .await
        .expect("a second window")
        .handle;
    let no_ice_servers = json!({ "iceServers": [] });
    for (window, pid) in [(&first, "ann"), (&second, "ben")] {
        open_page(&browser, window, &edge).await;
        let offer = start(
            &browser,
            window,
            &ws_url(&edge, "s-browser", pid),
            no_ice_servers.clone(),
            true,
        )
        .await;
        assert!(
            offer.contains("m=audio") && offer.contains("m=video"),
            "{offer}"
        );
    }

    // Each page receives the other's audio and video, and keeps receiving.
    let mut seen = Vec::new();
    for window in [&first, &second] {
        let stats = until_page(
            &browser,
            window,
            "audio and video from the other page",
            "return window.locusTest.inbound();",
            |v| packets(v, "audio") > 0 && packets(v, "video") > 0,
        )
        .await;
        seen.push(stats);
    }
    for (window, before) in [&first, &second].into_iter().zip(&seen) {
        let (audio, video) = (packets(before, "audio"), packets(before, "video"));
        let stats = until_page(
            &browser,
            window,
            "the inbound packets to grow",
            "return window.locusTest.inbound();",
            |v| packets(v, "audio") >= audio + 50 && packets(v, "video") >= video + 20,
        )
        .await;
        eprintln!("page inbound packets: {before} then {stats}");
    }
    for window in [&first, &second] {
        let state = page_state(&browser, window).await;
        assert_eq!(state["connection"], "connected", "{state}");
        assert_eq!(state["errors"], json!([]), "{state}");
    }
    let status = edge.status().await;
    assert_eq!(status["rtc"]["peers"], 2, "{status}");
    assert!(
        status["rtc"]["packets_out"].as_u64() > Some(100),
        "{status}"
    );
    browser.close().await.expect("close the browser");
    eprintln!("browser media test took {:.1?}", started.elapsed());
}

const TURN_SECRET: &str = "edge-media-turn-secret";

/// A free port for both UDP and TCP on 127.0.0.1 (coturn listens on both).
fn free_udp_tcp_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A coturn in the foreground on loopback, REST credentials (`use-auth-secret`), relaying
/// to loopback peers (the edge). Killed when dropped.
struct Coturn {
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Coturn {
    async fn start(dir: &Path) -> Coturn {
        let found = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|p| p.join("turnserver").is_file())
        });
        assert!(
            found,
            "turnserver is not installed: run ./scripts/test (it installs coturn) or `apt-get install coturn`"
        );
        let port = free_udp_tcp_port();
        // Relay ports: a small range of their own, from the listening port (coturn skips
        // a port another process holds).
        let min_port = 20_000 + (port % 20_000);
        let log = dir.join("coturn.log");
        let conf = format!(
            "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\nmin-port={min_port}\n\
             max-port={}\nfingerprint\nuse-auth-secret\nstatic-auth-secret={TURN_SECRET}\n\
             realm=locus.test\nno-tls\nno-dtls\nno-cli\nallow-loopback-peers\nno-rfc5780\n\
             no-software-attribute\npidfile={}\nuserdb={}\nlog-file={}\nsimple-log\n",
            min_port + 40,
            dir.join("coturn.pid").display(),
            dir.join("coturn.db").display(),
            log.display(),
        );
        let path = dir.join("coturn.conf");
        std::fs::write(&path, conf).expect("write coturn config");
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let mut coturn = Coturn { port, child, log };
        // Ready when it answers a STUN Binding, as the locator checks it.
        let target = locus_locator::turn::CheckTarget {
            key: locus_locator::turn::health::ServerKey::new(
                "test",
                &format!("stun:127.0.0.1:{port}"),
            ),
            minter: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answered = tokio::time::timeout(
                Duration::from_millis(500),
                locus_locator::turn::health::probe::check(&target, 0),
            )
            .await;
            if matches!(answered, Ok(Ok(_))) {
                return coturn;
            }
            if let Ok(Some(status)) = coturn.child.try_wait() {
                panic!(
                    "turnserver exited at start ({status}): see {}",
                    coturn.log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "turnserver does not answer on port {port}: see {}",
                coturn.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's only ICE server: this coturn over TCP, with a credential of the
    /// locator's REST scheme whose expiry is `expires_in` seconds away (negative: past).
    fn ice_config(&self, expires_in: i64, id: &str) -> Value {
        let expiry = locus_edge::now_unix() as i64 + expires_in;
        let username = format!("{expiry}:{id}");
        let credential = locus_locator::turn::turn_credential(TURN_SECRET.as_bytes(), &username);
        json!({
            "iceTransportPolicy": "relay",
            "iceServers": [{
                "urls": [format!("turn:127.0.0.1:{}?transport=tcp", self.port)],
                "username": username,
                "credential": credential,
            }],
        })
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_chromium_page_reaches_the_edge_through_coturn_over_tcp() {
    let _turn = BROWSER.lock().await;
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let coturn = Coturn::start(dir.path()).await;
    let edge = RtcEdge::spawn(dir.path(), &[]).await;
    let mut watcher = edge.join("s-turn", "watcher").await;
    let driver = start_driver(&chromedriver, &dir.path().join("chromedriver.log")).await;
    let browser = start_browser(&driver, &chromium, &dir.path().join("profile")).await;
    let window = browser.window().await.expect("the window");

    open_page(&browser, &window, &edge).await;
    let offer = start(
        &browser,
        &window,
        &ws_url(&edge, "s-turn", "relayed"),
        coturn.ice_config(600, "relayed"),
        false,
    )
    .await;
    let candidates: Vec<&str> = offer
        .lines()
        .filter(|l| l.starts_with("a=candidate"))
        .collect();
    assert!(
        !candidates.is_empty() && candidates.iter().all(|c| c.contains(" typ relay")),
        "a relay-only offer carries relay candidates only: {offer}"
    );
    until_page(
        &browser,
        &window,
        "the relayed connection and its data channel",
        "return window.locusTest.state();",
        |s| s["connection"] == "connected" && s["channel"] == "open",
    )
    .await;
    let pair = run(
        &browser,
        &window,
        "return window.locusTest.selectedPair();",
        vec![],
    )
    .await;
    assert_eq!(pair["state"], "succeeded", "{pair}");
    assert_eq!(pair["local"]["type"], "relay", "{pair}");
    assert_eq!(pair["local"]["relayProtocol"], "tcp", "{pair}");
    // It is the edge at the other end: session messages cross both ways.
    run(
        &browser,
        &window,
        "window.locusTest.channel.send('through the relay');",
        vec![],
    )
    .await;
    loop {
        match next_data(&mut watcher).await {
            Message::Text(text) if text.as_str() == "through the relay" => break,
            Message::Text(text) if text.starts_with("{\"locus\"") => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
    say(&mut watcher, "back to the page").await;
    until_page(
        &browser,
        &window,
        "the watcher's message on the data channel",
        "return window.locusTest.messages;",
        |m| m == &json!(["back to the page"]),
    )
    .await;
    let state = page_state(&browser, &window).await;
    assert_eq!(state["errors"], json!([]), "{state}");
    eprintln!("relayed pair: {pair}");

    // An expired credential: coturn refuses the allocation, the page has no relay.
    open_page(&browser, &window, &edge).await;
    let offer = start(
        &browser,
        &window,
        &ws_url(&edge, "s-turn", "expired"),
        coturn.ice_config(-60, "expired"),
        false,
    )
    .await;
    assert!(
        !offer.contains(" typ relay"),
        "no relay candidate with an expired credential: {offer}"
    );
    let errors = until_page(
        &browser,
        &window,
        "coturn's refusal",
        "return window.locusTest.candidateErrors;",
        |e| e.as_array().is_some_and(|e| !e.is_empty()),
    )
    .await;
    assert!(
        errors
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["code"] == 401)),
        "coturn answers 401 to an expired credential: {errors}"
    );
    // With no candidate of its own the page never reaches the edge: the edge's side of
    // the connection fails and says so (Chromium's stays "new").
    let state = until_page(
        &browser,
        &window,
        "the edge to give the connection up",
        "return window.locusTest.state();",
        |s| {
            s["errors"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e.as_str().is_some_and(|e| e.contains("failed")))
            })
        },
    )
    .await;
    assert_ne!(state["connection"], "connected", "{state}");
    assert_ne!(state["channel"], "open", "{state}");
    browser.close().await.expect("close the browser");
    eprintln!("TURN browser test took {:.1?}", started.elapsed());
}
