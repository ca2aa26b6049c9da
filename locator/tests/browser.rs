//! The admin page in a real browser: the system's headless Chromium, driven over
//! WebDriver (chromedriver, started here on a free port) with `fantoccini`.
//!
//! A locator runs in-process on a real socket with fake edges that keep a real websocket
//! and report load every half second. "Killing an edge process" is played by dropping a
//! fake edge's websocket (the process is gone: its `/healthz` does not answer either), as
//! the real edge binary lives in another crate.
//!
//! The test signs in through the form, sees every region and edge, suspends an edge
//! through its button and the confirmation dialog and sees the row change without a
//! reload, sees a region turn degraded when one of its edges dies, asks the "why" box,
//! saves `target/admin-page.png` (and a phone-sized `target/admin-page-phone.png`), then
//! stops the locator and sees the page say the connection is lost.
//!
//! Chromium and chromedriver come from the Debian packages `chromium` and
//! `chromium-driver` (`scripts/test` installs them). Without them the test fails with the
//! command to run; `LOCUS_SKIP_BROWSER_TEST=1` skips it loudly on a developer machine, and
//! is refused when `CI=true`. `LOCUS_CHROMIUM` and `LOCUS_CHROMEDRIVER` point elsewhere.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::{SinkExt, StreamExt};
use locus_protocol::{EdgeMessage, LoadReport};
use serde_json::{Value, json};
use support::*;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// What signs in: the page records it as the actor of changes.
const OPERATOR: &str = "Dana (on call)";

fn find_program(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    for name in candidates {
        let path = Path::new(name);
        if path.is_absolute() {
            if path.exists() {
                return Some(path.to_path_buf());
            }
            continue;
        }
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.exists())
        });
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Chromium and chromedriver, or `None` when the developer explicitly skips the test.
fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    let chromium = find_program(
        "LOCUS_CHROMIUM",
        &[
            "/usr/bin/chromium",
            "chromium",
            "chromium-browser",
            "google-chrome",
        ],
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
            "SKIPPED the admin page browser test: {missing} not found and LOCUS_SKIP_BROWSER_TEST=1"
        );
        return None;
    }
    panic!(
        "the admin page browser test needs {missing}: install them with \
         `sudo apt-get install -y chromium chromium-driver` (./scripts/test does), or point \
         LOCUS_CHROMIUM / LOCUS_CHROMEDRIVER at them"
    );
}

/// A chromedriver process. On drop (also when the test fails half-way) it is asked to
/// shut down, which closes every browser it started, and killed if it does not.
struct Driver {
    child: Child,
    port: u16,
    url: String,
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(program)
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    let driver = Driver {
        child,
        port,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ready = http()
            .get(format!("{}/status", driver.url))
            .send()
            .await
            .ok()
            .and_then(|r| r.status().is_success().then_some(()))
            .is_some();
        if ready {
            return driver;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not start within 15 s (log: {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                "--window-size=1440,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("start headless Chromium through chromedriver: {e}"))
}

/// A fake edge that keeps reporting `load` every half second until aborted (which drops
/// its websocket: to the locator, the edge process died).
fn keep_reporting(mut edge: TestEdge, load: LoadReport) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let report = serde_json::to_string(&EdgeMessage::Report(load)).expect("json");
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if edge.ws.send(Message::Text(report.clone().into())).await.is_err() {
                        return;
                    }
                }
                message = edge.ws.next() => {
                    if matches!(message, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                        return;
                    }
                }
            }
        }
    })
}

fn load(cpu: f32, lag_ms: f32, sessions: u32, connections: u32) -> LoadReport {
    LoadReport {
        cpu,
        lag_ms,
        connections,
        sessions,
        ..Default::default()
    }
}

/// Evaluates a JavaScript expression in the page.
async fn js(client: &Client, expression: &str) -> Value {
    client
        .execute(&format!("return ({expression});"), vec![])
        .await
        .unwrap_or_else(|e| panic!("run `{expression}` in the page: {e}"))
}

/// The trimmed text of the first element matching `selector` (`None`: no such element).
async fn text_of(client: &Client, selector: &str) -> Option<String> {
    client
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
            vec![json!(selector)],
        )
        .await
        .ok()
        .and_then(|v| v.as_str().map(String::from))
}

/// Polls a JavaScript condition until it holds (no fixed sleeps); on timeout, fails with
/// what the page shows.
async fn eventually(client: &Client, what: &str, within: Duration, condition: &str) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if js(client, condition).await == json!(true) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let page = js(client, "document.body.innerText.slice(0, 3000)").await;
            panic!("timed out after {within:?} waiting for: {what}\n--- page text ---\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks like a person: scrolled to the middle of the screen (clear of the sticky bar).
async fn click(client: &Client, selector: &str) {
    client
        .execute(
            "document.querySelector(arguments[0]).scrollIntoView({block: 'center'});",
            vec![json!(selector)],
        )
        .await
        .unwrap_or_else(|e| panic!("scroll to {selector}: {e}"));
    client
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("find {selector}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {selector}: {e}"));
}

async fn save_screenshot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = target_dir().join(name);
    std::fs::create_dir_all(target_dir()).expect("target dir");
    std::fs::write(&path, png).expect("write the screenshot");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_regions_and_acts_on_edges_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;

    // Five edges in three regions; ap-northeast has none (served by fallback). us-east-2
    // is a real edge process (killed below); the others are protocol clients with fixed
    // loads, so the page shows a varied fleet.
    let us_east_2 = spawn_edge(
        &[loc.addr],
        "us-east-2",
        "us-east",
        &dir.path().join("spool-us-east-2"),
    );
    let fleet = [
        ("us-east-1", "us-east", load(0.34, 4.2, 38, 92)),
        ("eu-west-1", "eu-west", load(0.52, 11.5, 61, 140)),
        ("eu-west-2", "eu-west", load(0.12, 1.9, 9, 20)),
        ("eu-central-1", "eu-central", load(0.69, 24.0, 47, 118)),
    ];
    let mut edges = std::collections::HashMap::new();
    for (id, region, report) in fleet {
        let mut reg = register(id, region, if id == "eu-central-1" { 60 } else { 100 });
        reg.version = "0.1.0".into();
        let edge = TestEdge::connect(loc.addr, reg).await;
        edges.insert(id, keep_reporting(edge, report));
    }
    wait_for(&loc.state, "every edge reported", |s| {
        let snap = s.registry.snapshot();
        fleet
            .iter()
            .map(|(id, _, _)| *id)
            .chain(["us-east-2"])
            .all(|id| snap.edge(id).is_some_and(|e| e.load().is_some()))
    })
    .await;
    // Some traffic, so the cards have answers to show: Japan goes to us-east.
    for (ip, n) in [
        ("133.1.1.1", 6),
        ("81.2.69.142", 9),
        ("8.8.8.8", 7),
        ("85.214.1.1", 4),
    ] {
        for _ in 0..n {
            let response = http()
                .get(loc.url("/v1/locate"))
                .header("x-forwarded-for", ip)
                .send()
                .await
                .expect("locate");
            assert_eq!(response.status().as_u16(), 200);
        }
    }

    let driver = start_driver(&chromedriver, &dir.path().join("chromedriver.log")).await;
    let client = start_browser(&driver, &chromium, &dir.path().join("chromium-profile")).await;

    // Sign in through the form.
    client.goto(&loc.url("/admin")).await.expect("open /admin");
    let form = client
        .find(Locator::Css("form[action=\"/admin/login\"]"))
        .await
        .expect("the sign-in form");
    form.find(Locator::Id("name"))
        .await
        .expect("name field")
        .send_keys(OPERATOR)
        .await
        .expect("type the name");
    form.find(Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys(ADMIN_TOKEN)
        .await
        .expect("type the token");
    click(&client, "form[action=\"/admin/login\"] button[type=submit]").await;

    // Every region and every edge appears.
    eventually(
        &client,
        "four region cards and five edge rows",
        Duration::from_secs(10),
        "document.querySelectorAll('article.card').length === 4 && \
         document.querySelectorAll('tr[data-edge]').length === 5",
    )
    .await;
    for id in ["us-east", "eu-west", "eu-central", "ap-northeast"] {
        let title = text_of(
            &client,
            &format!("article[data-region=\"{id}\"] .card-title"),
        )
        .await
        .unwrap_or_else(|| panic!("card of {id}"));
        assert!(title.contains(id), "{title}");
    }
    for (id, _, _) in fleet {
        assert_eq!(
            text_of(&client, &format!("tr[data-edge=\"{id}\"] .state-text")).await,
            Some("active".to_string()),
            "{id}"
        );
    }
    assert_eq!(
        js(
            &client,
            "document.querySelector('article[data-region=\"us-east\"]').dataset.state"
        )
        .await,
        "healthy"
    );
    assert_eq!(
        js(
            &client,
            "document.querySelector('article[data-region=\"ap-northeast\"]').dataset.state"
        )
        .await,
        "fallback"
    );
    let served = text_of(&client, "article[data-region=\"ap-northeast\"] .served")
        .await
        .expect("served-by line");
    assert!(served.contains("us-east"), "{served}");
    assert_eq!(text_of(&client, "#who").await.as_deref(), Some(OPERATOR));
    eventually(
        &client,
        "a live connection",
        Duration::from_secs(5),
        "document.getElementById('conn').dataset.state === 'live'",
    )
    .await;
    // The token is in no URL, and the session cookie is out of the page script's reach.
    let url = client.current_url().await.expect("url");
    assert!(!url.as_str().contains(ADMIN_TOKEN), "{url}");
    assert_eq!(url.path(), "/admin");
    let cookies = js(&client, "document.cookie").await;
    assert!(
        !cookies.as_str().unwrap_or_default().contains("locus_admin"),
        "HttpOnly: {cookies}"
    );
    // The map has a marker per region.
    assert_eq!(
        js(&client, "document.querySelectorAll('.map .marker').length").await,
        4
    );

    // Suspend an edge: button, confirmation dialog, and the row changes without a reload.
    js(&client, "(window.__locusNoReload = 7)").await;
    click(
        &client,
        "tr[data-edge=\"eu-west-2\"] button[data-action=\"suspend\"]",
    )
    .await;
    eventually(
        &client,
        "the confirmation dialog",
        Duration::from_secs(5),
        "document.getElementById('confirm').open",
    )
    .await;
    let question = text_of(&client, "#confirm-title")
        .await
        .expect("dialog title");
    assert!(question.contains("eu-west-2"), "{question}");
    click(&client, "#confirm-ok").await;
    eventually(
        &client,
        "eu-west-2 shown suspended",
        Duration::from_secs(5),
        "document.querySelector('tr[data-edge=\"eu-west-2\"] .state-text').textContent === 'suspended'",
    )
    .await;
    assert_eq!(js(&client, "window.__locusNoReload").await, 7, "no reload");
    assert_eq!(edge_state(&loc.state, "eu-west-2"), Some("suspended"));
    assert_eq!(
        js(
            &client,
            "document.querySelector('article[data-region=\"eu-west\"]').dataset.state"
        )
        .await,
        "degraded"
    );
    let audit = loc
        .state
        .store
        .audit(&locus_locator::store::AuditFilter {
            edge_id: Some("eu-west-2".into()),
            ..Default::default()
        })
        .await
        .expect("audit");
    assert_eq!(audit[0].kind, "edge_suspended");
    assert_eq!(audit[0].actor.as_deref(), Some(OPERATOR));
    // The toggle now offers to resume.
    assert_eq!(
        text_of(
            &client,
            "tr[data-edge=\"eu-west-2\"] button[data-action=\"resume\"]"
        )
        .await,
        Some("Resume".into())
    );

    // An edge process dies (SIGKILL): its region turns degraded within a few seconds.
    drop(us_east_2);
    eventually(
        &client,
        "us-east degraded after us-east-2 died",
        Duration::from_secs(10),
        "document.querySelector('article[data-region=\"us-east\"]').dataset.state === 'degraded' && \
         document.querySelector('tr[data-edge=\"us-east-2\"] .state-text').textContent === 'failed'",
    )
    .await;
    let badge = text_of(&client, "article[data-region=\"us-east\"] .badge-text")
        .await
        .expect("badge");
    assert_eq!(badge, "Degraded");
    assert_eq!(
        js(&client, "window.__locusNoReload").await,
        7,
        "still no reload"
    );

    // The "why" box explains where an address goes.
    client
        .find(Locator::Id("why-ip"))
        .await
        .expect("why field")
        .send_keys("81.2.69.142")
        .await
        .expect("type an address");
    click(&client, "#why-form button[type=submit]").await;
    eventually(
        &client,
        "the explanation",
        Duration::from_secs(5),
        "!!document.querySelector('#why-result .why-answer')",
    )
    .await;
    let answer = text_of(&client, "#why-result .why-answer")
        .await
        .expect("answer");
    assert!(
        answer.contains("81.2.69.142 → eu-west-1 in eu-west"),
        "{answer}"
    );
    let steps = text_of(&client, "#why-result .why-steps")
        .await
        .expect("steps");
    assert!(steps.contains("United Kingdom"), "{steps}");

    // Screenshots for people: the whole page on a laptop, and a phone-sized view.
    eventually(
        &client,
        "the audit log listing the suspension",
        Duration::from_secs(10),
        "[...document.querySelectorAll('#audit-rows .audit-kind')].some(e => e.textContent === 'edge_suspended')",
    )
    .await;
    // Steady state for the pictures: rows that just changed stop flashing.
    eventually(
        &client,
        "the change highlights to fade",
        Duration::from_secs(5),
        "!document.querySelector('tr.just-changed')",
    )
    .await;
    // The toast of the suspension would cover part of the picture: dismiss it.
    js(
        &client,
        "(document.getElementById('toast').hidden = true, document.activeElement.blur(), window.scrollTo(0, 0), 0)",
    )
    .await;
    // A window as tall as the page (the viewport is a little shorter than the window).
    let mut window_height = 1000;
    for _ in 0..4 {
        let page = js(&client, "document.documentElement.scrollHeight").await;
        let viewport = js(&client, "window.innerHeight").await;
        let (page, viewport) = (
            page.as_u64().unwrap_or(1000),
            viewport.as_u64().unwrap_or(1000),
        );
        if viewport >= page {
            break;
        }
        window_height = (window_height + (page - viewport) as u32).min(5000);
        client
            .set_window_size(1440, window_height)
            .await
            .expect("resize");
    }
    let laptop = save_screenshot(&client, "admin-page.png").await;
    client.set_window_size(390, 1400).await.expect("resize");
    eventually(
        &client,
        "the narrow layout",
        Duration::from_secs(5),
        "window.innerWidth <= 520",
    )
    .await;
    js(
        &client,
        "(document.getElementById('regions').scrollIntoView(), 0)",
    )
    .await;
    let phone = save_screenshot(&client, "admin-page-phone.png").await;
    eprintln!("screenshots: {} and {}", laptop.display(), phone.display());
    client.set_window_size(1440, 1000).await.expect("resize");

    // The locator goes away: the page says so, by itself.
    for (_, task) in edges.drain() {
        task.abort();
    }
    loc.stop().await;
    eventually(
        &client,
        "the connection-lost banner",
        Duration::from_secs(10),
        "!document.getElementById('lost').hidden && \
         document.getElementById('conn').dataset.state === 'lost'",
    )
    .await;
    let banner = text_of(&client, "#lost").await.expect("banner");
    assert!(
        banner.contains("Connection to the locator lost"),
        "{banner}"
    );

    client.close().await.expect("close the browser");
    drop(driver);
}
