//! Test support: a real locator in-process on 127.0.0.1:0 with a real SQLite file, and a
//! small edge client speaking the shared protocol over a real websocket.
#![allow(dead_code)]

pub mod postgres;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use locus_geo::mmdb_writer::{MmdbWriter, Value};
use locus_geo::{Config, GeoResolver};
use locus_locator::state::{AppState, Secrets};
use locus_locator::store::Store;
use locus_protocol::{EdgeMessage, LoadReport, LocatorMessage, PROTOCOL_VERSION, Register};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The locators' master edge key (`LOCATOR_EDGE_KEY`).
pub const EDGE_KEY: &str = "test-edge-master-key-0123456789abcdef";

/// The credential of edge `id` in `region` (generation 1), as `locator edge-credential`
/// prints it.
pub fn edge_credential(id: &str, region: &str) -> String {
    locus_protocol::edge_credential::derive(EDGE_KEY.as_bytes(), 1, region, id)
}
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The per-client request limits lifted: these tests send hundreds of creates from
/// loopback to test other things; `tests/limits.rs` replaces this line to test the limits.
pub const NO_REQUEST_LIMITS: &str =
    "limits: { creates_per_minute: off, locates_per_minute: off }\n";

/// Three regions on three continents; loopback is a trusted proxy.
pub fn regions_yaml(db: &Path, grace: &str) -> String {
    regions_yaml_with(db, grace, "1s")
}

/// [`regions_yaml`] with another report interval.
pub fn regions_yaml_with(db: &Path, grace: &str, report_interval: &str) -> String {
    format!(
        r#"
geoip: {{ database: "{}" }}
trusted_proxies: [127.0.0.0/8]
{NO_REQUEST_LIMITS}default_region: us-east
edges:
  report_interval: {report_interval}
  missed_reports: 3
  grace_period: {grace}
  probe_timeout: 1s
regions:
  - id: us-east
    location: {{ lat: 39.0, lon: -77.5 }}
    countries: [US, CA]
    continents: [NA]
    fallback: [eu-west]
    turn:
      secret_env: LOCUS_TEST_TURN_SECRET
      servers: ["turn:turn1.us-east.example.net:3478"]
  - id: eu-west
    location: {{ lat: 53.35, lon: -6.26 }}
    countries: [GB, IE]
    continents: [EU]
    fallback: [eu-central, us-east]
    turn:
      servers: ["stun:stun.eu-west.example.net"]
  - id: eu-central
    location: {{ lat: 50.1, lon: 8.7 }}
    countries: [DE]
    fallback: [eu-west]
  - id: ap-northeast
    location: {{ lat: 35.7, lon: 139.7 }}
    countries: [JP]
    continents: [AS]
    fallback: [us-east]
"#,
        db.display()
    )
}

/// A GeoIP database with one network per country used by the tests.
pub fn write_geoip(dir: &Path) -> PathBuf {
    let mut w = MmdbWriter::new("Test-City");
    for (net, country, continent) in [
        ("81.2.69.0/24", "GB", "EU"),
        ("8.8.8.0/24", "US", "NA"),
        ("85.214.0.0/16", "DE", "EU"),
        ("133.1.0.0/16", "JP", "AS"),
    ] {
        w.insert(
            net.parse().expect("net"),
            Value::country_record(country, continent),
        );
    }
    let path = dir.join("geoip.mmdb");
    w.write_to(&path).expect("write geoip");
    path
}

/// A running locator.
pub struct TestLocator {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub database: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestLocator {
    /// Starts a locator with the test regions; `dir` holds its files (reuse it to restart
    /// on the same database).
    pub async fn start(dir: &Path) -> TestLocator {
        TestLocator::start_with(dir, "30s", "127.0.0.1:0").await
    }

    pub async fn start_with(dir: &Path, grace: &str, listen: &str) -> TestLocator {
        let database = dir.join("locator.sqlite");
        let url = database.to_str().expect("utf-8").to_string();
        TestLocator::start_on(dir, &url, grace, "1s", listen).await
    }

    /// A locator on the database `url` (a SQLite path or a Postgres URL).
    pub async fn start_on(
        dir: &Path,
        url: &str,
        grace: &str,
        report_interval: &str,
        listen: &str,
    ) -> TestLocator {
        TestLocator::start_edited(dir, url, grace, report_interval, listen, |yaml| yaml).await
    }

    /// [`TestLocator::start_on`] with the test `regions.yaml` edited by `edit` first.
    pub async fn start_edited(
        dir: &Path,
        url: &str,
        grace: &str,
        report_interval: &str,
        listen: &str,
        edit: impl FnOnce(String) -> String,
    ) -> TestLocator {
        let db = write_geoip(dir);
        let yaml = edit(regions_yaml_with(&db, grace, report_interval));
        let config = Config::parse(&yaml, &dir.join("regions.yaml")).expect("test config");
        let geo = GeoResolver::open(&config).expect("geoip");
        let database = PathBuf::from(url);
        let store = Store::open(url).await.expect("store");
        let secrets = Secrets {
            edge_keys: vec![EDGE_KEY.into()],
            admin_token: Some(ADMIN_TOKEN.into()),
        };
        let state = Arc::new(AppState::new(config, geo, store, secrets));
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let _ = locus_locator::server::run(listener, state, async {
                    let _ = stopped.await;
                })
                .await;
            }
        });
        TestLocator {
            addr,
            state,
            database,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the server (open websockets are dropped with the task).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.state.store.close().await;
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the edge link with `token` (None: no Authorization header).
pub async fn connect_link(addr: SocketAddr, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("ws://{addr}{}", locus_protocol::EDGE_LINK_PATH)
        .into_client_request()
        .expect("request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

/// A fake edge: a real websocket speaking the real protocol.
pub struct TestEdge {
    pub id: String,
    pub ws: Ws,
    pub welcome: LocatorMessage,
}

pub fn register(id: &str, region: &str, capacity: u32) -> Register {
    Register {
        protocol: PROTOCOL_VERSION,
        edge_id: id.into(),
        region: region.into(),
        public_url: format!("http://127.0.0.1:1/{id}"),
        capacity,
        version: "test".into(),
        sessions: vec![],
        draining: false,
        features: vec![],
    }
}

pub async fn send(ws: &mut Ws, message: &EdgeMessage) {
    ws.send(Message::Text(
        serde_json::to_string(message).expect("json").into(),
    ))
    .await
    .expect("send");
}

/// The next protocol message, skipping pings.
pub async fn next_message(ws: &mut Ws) -> Option<LocatorMessage> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")?;
        match frame {
            Ok(Message::Text(text)) => {
                return Some(serde_json::from_str(&text).expect("protocol message"));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Reads until the socket closes; returns the close reason (and any Error message).
pub async fn closed_reason(ws: &mut Ws) -> String {
    let mut reason = String::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("closed within 10 s");
        match frame {
            Some(Ok(Message::Text(text))) => {
                if let Ok(LocatorMessage::Error { reason: r }) = serde_json::from_str(&text) {
                    reason = r;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                if reason.is_empty() {
                    reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                }
                return reason;
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return reason,
        }
    }
}

impl TestEdge {
    pub async fn connect(addr: SocketAddr, reg: Register) -> TestEdge {
        let credential = edge_credential(&reg.edge_id, &reg.region);
        let mut ws = connect_link(addr, Some(&credential)).await.expect("link");
        send(&mut ws, &EdgeMessage::Register(reg.clone())).await;
        let welcome = next_message(&mut ws).await.expect("welcome");
        assert!(
            matches!(welcome, LocatorMessage::Welcome { .. }),
            "{welcome:?}"
        );
        TestEdge {
            id: reg.edge_id,
            ws,
            welcome,
        }
    }

    pub async fn report(&mut self, sessions: u32) {
        send(
            &mut self.ws,
            &EdgeMessage::Report(LoadReport {
                cpu: 0.05,
                lag_ms: 1.0,
                connections: sessions * 2,
                sessions,
                ..Default::default()
            }),
        )
        .await;
    }
}

/// Waits until `condition` holds on the locator's registry (checked on every change).
pub async fn wait_for(state: &AppState, what: &str, condition: impl Fn(&AppState) -> bool) {
    let mut changes = state.registry.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition(state) {
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for: {what}");
        }
    }
}

/// The state of an edge in the locator's registry.
pub fn edge_state(state: &AppState, id: &str) -> Option<&'static str> {
    state
        .registry
        .snapshot()
        .edge(id)
        .map(|e| e.status.state().as_str())
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A client that neither follows redirects (sign-in answers 303) nor times out on its own
/// (event streams are long); every wait has its own deadline.
pub fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// `application/x-www-form-urlencoded`, as a browser sends a form.
pub fn post_form(url: impl reqwest::IntoUrl, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    fn encode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    let body = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    raw_client()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

/// Signs in through the form; returns the `Set-Cookie` header and the cookie pair.
pub async fn sign_in(loc: &TestLocator, name: &str, extra: &[(&str, &str)]) -> (String, String) {
    let mut request = post_form(
        loc.url("/admin/login"),
        &[("token", ADMIN_TOKEN), ("name", name)],
    );
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("login");
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(response.headers()["location"], "/admin");
    let set = response.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_string();
    let pair = set.split(';').next().expect("pair").to_string();
    (set, pair)
}

/// A real `edge` process (the workspace's binary), killed when dropped.
pub struct EdgeProcess {
    pub child: std::process::Child,
    /// Its public URL (`/healthz`, `/v1/status`).
    pub url: String,
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the real edge binary against the test locators (tried in this order). `cargo
/// test --workspace` (the README's test command) builds every binary before running any
/// test. Returns the process and its public URL.
pub fn spawn_edge(locators: &[SocketAddr], id: &str, region: &str, spool: &Path) -> EdgeProcess {
    spawn_edge_with_capacity(locators, id, region, spool, 100)
}

/// [`spawn_edge`] with another `--capacity`.
pub fn spawn_edge_with_capacity(
    locators: &[SocketAddr],
    id: &str,
    region: &str,
    spool: &Path,
    capacity: u32,
) -> EdgeProcess {
    let binary = std::env::var_os("LOCUS_EDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("edge"));
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p locus-edge` (the workspace test command does)",
        binary.display()
    );
    // A free port for the edge's public URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = std::process::Command::new(binary)
        .args([
            "--locator",
            &locators
                .iter()
                .map(|a| format!("http://{a}"))
                .collect::<Vec<_>>()
                .join(","),
        ])
        .args(["--region", region, "--id", id])
        .args(["--capacity", &capacity.to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--public-url", &format!("http://127.0.0.1:{port}")])
        .arg("--spool-dir")
        .arg(spool)
        .env("LOCATOR_EDGE_TOKEN", edge_credential(id, region))
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start the edge binary");
    EdgeProcess {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// A locator process, killed when dropped.
pub struct LocatorProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl LocatorProcess {
    /// `locator serve` on a free loopback port with `config`, its SQLite database in `dir`,
    /// the tests' edge key and admin token, `env` added, stdout dropped and stderr to `log`.
    pub fn spawn(
        config: &Path,
        dir: &Path,
        env: &[(&str, &str)],
        log: std::fs::File,
    ) -> LocatorProcess {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_locator"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", &addr.to_string()])
            .arg("--database")
            .arg(dir.join("locator.sqlite"))
            .env("LOCATOR_EDGE_KEY", EDGE_KEY)
            .env("LOCATOR_ADMIN_TOKEN", ADMIN_TOKEN)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the locator");
        LocatorProcess { child, addr }
    }
}

impl Drop for LocatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `url`: the status and body, or status 0 and the error when there is no answer.
pub async fn get_text(url: &str) -> (u16, String) {
    match http().get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Polls `check` every 50 ms until it holds; panics after 20 s with `what`.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
