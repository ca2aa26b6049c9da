//! Shared helpers of the edge's integration tests: a real locator in-process (its own
//! runtime, so "killing" it closes every socket it holds), edges in-process or as the real
//! binary, websocket clients, join tokens and a tiny HTTP client.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use locus_edge::config::{EdgeToken, Settings};
use locus_edge::state::EdgeState;
use locus_protocol::join_token::{JoinClaims, JoinKey};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The shared edge token of every test.
/// The test locator's master edge key (`LOCATOR_EDGE_KEY`).
pub const KEY: &str = "test-edge-master-key-0123456789abcdef";

/// The credential (`LOCATOR_EDGE_TOKEN`) of edge `id` in the tests' region.
pub fn credential(id: &str) -> String {
    locus_protocol::edge_credential::derive(KEY.as_bytes(), 1, "eu-west", id)
}

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The locator configuration of the tests: one region, fast reports.
pub const REGIONS: &str = r#"
default_region: eu-west
edges:
  report_interval: 200ms
  missed_reports: 10
  grace_period: 30s
  probe_timeout: 1s
  drain_deadline: 1m
regions:
  - id: eu-west
    location: { lat: 53.35, lon: -6.26 }
"#;

/// Fails the test with `what` if `future` takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls an async condition (for state only reachable by asking, such as the locator's
/// database) until it holds, failing after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        loop {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
}

/// Runs a locator until its runtime is shut down.
async fn serve_locator(
    db_path: PathBuf,
    port: u16,
    admin_token: Option<String>,
    tls: Option<Arc<locus_serve::ServerTls>>,
    ready: oneshot::Sender<SocketAddr>,
) {
    let config = locus_geo::Config::parse(REGIONS, Path::new("test-regions.yaml"))
        .expect("test regions are valid");
    let geo = locus_geo::GeoResolver::open(&config).expect("geo resolver");
    let url = db_path.display().to_string();
    let store = locus_locator::store::Store::open(&url)
        .await
        .expect("locator store");
    // The old locator on this port may still be letting go of it.
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = within("the locator's port to be free again", async {
        loop {
            match TcpListener::bind(address).await {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("locator bind: {e}"),
            }
        }
    })
    .await;
    let _ = ready.send(listener.local_addr().expect("addr"));
    let mut state = locus_locator::state::AppState::new(
        config,
        geo,
        store,
        locus_locator::state::Secrets {
            edge_keys: vec![KEY.into()],
            admin_token,
        },
    );
    state.tls = tls;
    let state = Arc::new(state);
    let _ = locus_locator::server::run(listener, state, std::future::pending()).await;
}

/// A real locator running in its own runtime on its own thread (so that killing it drops
/// every task and socket it has, as a crash would).
pub struct Locator {
    pub addr: SocketAddr,
    pub db: PathBuf,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Locator {
    /// Starts a locator on `port` (0: any) with its SQLite database at `db`.
    pub async fn start(db: &Path, port: u16) -> Locator {
        Locator::start_with_admin(db, port, None).await
    }

    /// The same, with the admin API enabled by `admin_token`.
    pub async fn start_with_admin(db: &Path, port: u16, admin_token: Option<&str>) -> Locator {
        Locator::start_inner(db, port, admin_token, None).await
    }

    /// A locator serving HTTPS/WSS with `tls` (as `--tls-cert/--tls-key` give it).
    pub async fn start_tls(db: &Path, tls: locus_serve::ServerTls) -> Locator {
        Locator::start_inner(db, 0, None, Some(Arc::new(tls))).await
    }

    async fn start_inner(
        db: &Path,
        port: u16,
        admin_token: Option<&str>,
        tls: Option<Arc<locus_serve::ServerTls>>,
    ) -> Locator {
        let admin_token = admin_token.map(str::to_string);
        let (ready, addr) = oneshot::channel();
        let (kill, killed) = oneshot::channel::<()>();
        let db_path = db.to_path_buf();
        // `block_on` on a thread of its own: the locator's futures need not be `Send`.
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("locator runtime");
            runtime.block_on(async move {
                tokio::select! {
                    () = serve_locator(db_path, port, admin_token, tls, ready) => {}
                    _ = killed => {}
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(5));
        });
        let addr = within("the locator to listen", addr)
            .await
            .expect("locator started");
        Locator {
            addr,
            db: db.to_path_buf(),
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the locator abruptly: every task and socket of it is dropped.
    pub async fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .expect("join")
                .expect("locator thread");
        }
    }
}

impl Drop for Locator {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

/// Opens the locator's database (from the test's runtime) to check what it stored.
pub async fn open_store(db: &Path) -> locus_locator::store::Store {
    locus_locator::store::Store::open(&db.display().to_string())
        .await
        .expect("open the locator database")
}

/// How many audit rows the locator stored about an edge (the tests' own SQL: the store
/// has no method for reads only tests make).
pub async fn count_audit(store: &locus_locator::store::Store, edge: &str) -> u64 {
    store
        .count("FROM audit WHERE edge_id = $1", &[edge])
        .await
        .expect("count audit rows")
}

/// The ten newest load samples the locator stored for an edge.
pub async fn recent_metrics(
    store: &locus_locator::store::Store,
    edge: &str,
) -> Vec<locus_locator::store::MetricRecord> {
    store
        .select(
            "FROM metrics WHERE edge_id = $1 ORDER BY seq DESC LIMIT 10",
            &[edge],
        )
        .await
        .expect("metrics")
}

/// A free port on 127.0.0.1 (bound, then released).
pub async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

/// An edge running in this process.
pub struct Edge {
    pub addr: SocketAddr,
    pub state: Arc<EdgeState>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Edge {
    /// Starts an edge; `tweak` adjusts the settings (ids, limits) before it starts.
    pub async fn start(
        id: &str,
        locators: Vec<String>,
        spool_dir: &Path,
        tweak: impl FnOnce(&mut Settings),
    ) -> Edge {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut settings = Settings {
            locators,
            region: "eu-west".into(),
            edge_id: id.into(),
            public_url: format!("http://{addr}"),
            spool_dir: spool_dir.to_path_buf(),
            linger: Duration::from_millis(200),
            ..Settings::default()
        };
        tweak(&mut settings);
        settings.validate().expect("valid settings");
        let token = EdgeToken::new(locus_protocol::edge_credential::derive(
            KEY.as_bytes(),
            1,
            &settings.region,
            &settings.edge_id,
        ))
        .expect("token");
        let state = EdgeState::open(settings, token).await.expect("edge state");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(locus_edge::server::run(
            listener,
            state.clone(),
            async move {
                let _ = stop.await;
            },
        ));
        Edge {
            addr,
            state,
            task,
            shutdown: Some(shutdown),
        }
    }

    pub fn id(&self) -> &str {
        &self.state.settings.edge_id
    }

    /// Base URL of the session websockets.
    pub fn ws(&self, session: &str, token: &str) -> String {
        format!("ws://{}/v1/sessions/{session}/ws?token={token}", self.addr)
    }

    /// A token for `session` on this edge.
    pub fn token(&self, session: &str, pid: &str) -> String {
        mint(self.id(), session, pid, 300)
    }

    /// Joins `session` as `pid`.
    pub async fn join(&self, session: &str, pid: &str) -> Client {
        connect(&self.ws(session, &self.token(session, pid))).await
    }

    /// Starts the drain as SIGTERM would.
    pub fn sigterm(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until the link is registered with a locator.
    pub async fn linked(&self) {
        let mut link = self.state.link.subscribe();
        within(
            "the edge to register with a locator",
            link.wait_for(Option::is_some),
        )
        .await
        .expect("link state");
    }

    /// Waits until the spool is empty (everything acknowledged).
    pub async fn spool_drained(&self) {
        let mut spool = self.state.spool.subscribe();
        within(
            "the edge's spool to be acknowledged",
            spool.wait_for(|s| s.len == 0),
        )
        .await
        .expect("spool state");
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Signs a join token with the test key; `ttl_secs` may be negative (expired).
pub fn mint(edge: &str, session: &str, pid: &str, ttl_secs: i64) -> String {
    JoinKey::from_edge_token(&credential(edge)).sign(&JoinClaims {
        sid: session.into(),
        eid: edge.into(),
        pid: pid.into(),
        exp: (locus_edge::now_unix() as i64 + ttl_secs).max(0) as u64,
    })
}

/// Opens a websocket, panicking on failure.
pub async fn connect(url: &str) -> Client {
    match within("a websocket to open", tokio_tungstenite::connect_async(url)).await {
        Ok((client, _)) => client,
        Err(e) => panic!("cannot open {url}: {e}"),
    }
}

/// Opens a websocket expecting an HTTP refusal; returns the status and the JSON body.
pub async fn refused(url: &str) -> (u16, Value) {
    match within("a websocket refusal", tokio_tungstenite::connect_async(url)).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert_eq!(content_type, "application/problem+json");
            let body = response.body().clone().unwrap_or_default();
            (status, serde_json::from_slice(&body).expect("problem JSON"))
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The next data or close frame (pings and pongs skipped).
pub async fn next_frame(client: &mut Client) -> Message {
    within("a frame", async {
        loop {
            match client.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(message)) => return message,
                Some(Err(e)) => panic!("websocket error: {e}"),
                None => panic!("websocket ended without a close frame"),
            }
        }
    })
    .await
}

/// The next frame that is not a presence message.
pub async fn next_data(client: &mut Client) -> Message {
    loop {
        match next_frame(client).await {
            Message::Text(text) if text.starts_with("{\"locus\":\"presence\"") => {}
            other => return other,
        }
    }
}

/// Reads until a presence message listing exactly `participants`.
pub async fn presence(client: &mut Client, participants: &[&str]) -> Value {
    within("a presence list", async {
        loop {
            if let Message::Text(text) = next_frame(client).await
                && text.starts_with("{\"locus\":\"presence\"")
            {
                let value: Value = serde_json::from_str(&text).expect("presence JSON");
                let list: Vec<&str> = value["participants"]
                    .as_array()
                    .expect("participants")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                if list == participants {
                    return value;
                }
            }
        }
    })
    .await
}

/// Reads until the close frame; returns its code and reason.
pub async fn closed(client: &mut Client) -> (u16, String) {
    within("a close frame", async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(frame))) => {
                    // Complete the handshake as a well-behaved client does: reading on
                    // sends the reply and sees the end of the stream.
                    while let Some(Ok(_)) = client.next().await {}
                    return frame.map_or((1005, String::new()), |CloseFrame { code, reason }| {
                        (u16::from(code), reason.to_string())
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("websocket error before the close frame: {e}"),
                None => panic!("websocket ended without a close frame"),
            }
        }
    })
    .await
}

/// Sends a text frame.
pub async fn say(client: &mut Client, text: &str) {
    client
        .send(Message::Text(text.to_string().into()))
        .await
        .expect("send");
}

/// A minimal HTTP/1.1 request; returns the status and the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http_with(addr, method, path, "", body).await
}

/// The same with extra header lines (each ending in `\r\n`).
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<&str>,
) -> (u16, String) {
    within("an HTTP answer", async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let body = body.unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let text = String::from_utf8_lossy(&response).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
    .await
}

/// `POST /v1/sessions` until the locator has an edge for it (its edges register).
pub async fn create_room(locator: SocketAddr, key: &str) -> Value {
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

pub fn with_token(answer: &Value) -> String {
    format!(
        "{}?token={}",
        answer["ws_url"].as_str().expect("ws_url"),
        answer["join_token"].as_str().expect("join_token")
    )
}

/// Reads until a presence list of `count` participants.
pub async fn presence_of(client: &mut Client, count: usize) -> Value {
    loop {
        if let Message::Text(text) = next_frame(client).await
            && text.starts_with("{\"locus\":\"presence\"")
        {
            let value: Value = serde_json::from_str(&text).expect("json");
            if value["participants"].as_array().map(Vec::len) == Some(count) {
                return value;
            }
        }
    }
}

/// The audit rows the locator stored for an edge, oldest first.
pub async fn audit_rows(
    store: &locus_locator::store::Store,
    edge: &str,
) -> Vec<locus_locator::store::AuditRecord> {
    let mut rows = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .audit(&locus_locator::store::AuditFilter {
                edge_id: Some(edge.into()),
                before_id: before,
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("audit");
        if page.is_empty() {
            break;
        }
        before = page.last().map(|r| r.id);
        rows.extend(page);
    }
    rows.reverse();
    rows
}

/// A running `edge` binary on loopback with its media plane on 127.0.0.1 (the media
/// tests' edge); killed when dropped.
pub struct RtcEdge {
    pub id: String,
    pub addr: SocketAddr,
    pub child: Child,
    log: PathBuf,
}

impl RtcEdge {
    /// An edge `edge-rtc` with no locator (sessions do not need one).
    pub async fn spawn(dir: &Path, extra: &[&str]) -> RtcEdge {
        RtcEdge::spawn_as(dir, "edge-rtc", "http://127.0.0.1:9", extra).await
    }

    /// An edge `id` linked to `locator`; its log and spool are named after it in `dir`.
    pub async fn spawn_as(dir: &Path, id: &str, locator: &str, extra: &[&str]) -> RtcEdge {
        let port = free_port().await;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = dir.join(format!("{id}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        // An edge serving TLS itself tells the locator so.
        let scheme = if extra.contains(&"--tls-cert") {
            "https"
        } else {
            "http"
        };
        let child = Command::new(env!("CARGO_BIN_EXE_edge"))
            .args(["--id", id, "--region", "eu-west"])
            .args(["--listen", &addr.to_string()])
            .args(["--public-url", &format!("{scheme}://{addr}")])
            .args(["--locator", locator])
            .arg("--spool-dir")
            .arg(dir.join(format!("{id}-spool")))
            .args(["--rtc-listen", "127.0.0.1"])
            .args(extra)
            .env("LOCATOR_EDGE_TOKEN", credential(id))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn the edge binary");
        let edge = RtcEdge {
            id: id.to_string(),
            addr,
            child,
            log,
        };
        eventually("the edge process to listen", || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        edge
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn status(&self) -> Value {
        let (code, body) = http(self.addr, "GET", "/v1/status", None).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    pub async fn join(&self, session: &str, pid: &str) -> Client {
        let token = mint(&self.id, session, pid, 300);
        connect(&format!(
            "ws://{}/v1/sessions/{session}/ws?token={token}",
            self.addr
        ))
        .await
    }
}

impl Drop for RtcEdge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
