//! Every door of a real `locator` process has a limit (issue 16, findings 3, 4, 8): idle
//! and slowloris connections are closed after the header-read timeout, a flood of idle
//! sockets larger than the descriptor limit neither exhausts it nor keeps `/healthz` away
//! for longer than that timeout, session creates and locates are limited per client
//! address (429, problem+json, `Retry-After`), wrong admin tokens are limited and logged
//! without the token, and a patterned admin token is refused at start.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{
    ADMIN_TOKEN, EDGE_KEY, LocatorProcess, NO_REQUEST_LIMITS, eventually, get_text, http,
    regions_yaml, write_geoip,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);

/// Starts `locator serve` under `sh -c 'ulimit -n FDS; exec …'` with `limits` (when not
/// empty) instead of the test regions' lifted ones and `args` after the usual ones; its log goes to `dir/locator.log`.
fn start(dir: &Path, fds: u32, limits: &str, args: &[&str], admin_token: &str) -> LocatorProcess {
    let geoip = write_geoip(dir);
    let config = dir.join("regions.yaml");
    let mut yaml = regions_yaml(&geoip, "30s");
    if !limits.is_empty() {
        yaml = yaml.replace(NO_REQUEST_LIMITS, limits);
    }
    std::fs::write(&config, yaml).expect("write config");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let log = std::fs::File::create(dir.join("locator.log")).expect("log");
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_locator"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--listen", &addr.to_string()])
        .arg("--database")
        .arg(dir.join("locator.sqlite"))
        .args(args)
        .env("LOCATOR_EDGE_KEY", EDGE_KEY)
        .env("LOCATOR_ADMIN_TOKEN", admin_token)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the locator");
    LocatorProcess { child, addr }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("locator.log")).unwrap_or_default()
}

/// Whether the server closes `stream` within the deadline (reads until end of file).
async fn closed_by_server(mut stream: TcpStream) -> bool {
    let mut buffer = [0u8; 512];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_cannot_hold_the_locator() {
    let dir = tempfile::tempdir().expect("dir");
    // 256 descriptors: the cap is fitted below it (256 - 128 reserved - 10 for the pool).
    let locator = start(
        dir.path(),
        256,
        "",
        &["--header-read-timeout", "1s"],
        ADMIN_TOKEN,
    );
    let base = format!("http://{}", locator.addr);
    eventually("the locator is ready", || async {
        get_text(&format!("{base}/readyz")).await.0 == 200
    })
    .await;

    // More idle sockets than the process has descriptors, and slowloris senders.
    let mut idle = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(locator.addr).await {
            Ok(stream) => idle.push(stream),
            Err(error) => panic!("connect: {error}"),
        }
    }
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(locator.addr).await.expect("connect");
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\n").await;
        slow.push(stream);
    }
    let flooded = Instant::now();
    // Within the header timeout (plus the time to retry), /healthz answers again while
    // every one of those sockets is still open on the client's side.
    eventually("/healthz answers during the flood", || async {
        get_text(&format!("{base}/healthz")).await.0 == 200
    })
    .await;
    let answered_after = flooded.elapsed();
    // And the server has closed every idle and slow connection by itself.
    for stream in idle.into_iter().chain(slow) {
        assert!(
            closed_by_server(stream).await,
            "a silent connection was kept open past {DEADLINE:?}"
        );
    }
    let log = log_of(dir.path());
    assert!(
        !log.contains("Too many open files"),
        "the locator ran out of descriptors:\n{log}"
    );
    assert!(log.contains("--max-connections lowered"), "{log}");
    assert!(
        answered_after < Duration::from_secs(10),
        "/healthz came back after {answered_after:?}"
    );
    let metrics = get_text(&format!("{base}/metrics")).await.1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("locator_http_connections_refused_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

async fn post_session(base: &str, client: &str) -> reqwest::Response {
    http()
        .post(format!("{base}/v1/sessions"))
        .header("X-Forwarded-For", client)
        .send()
        .await
        .expect("create")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_and_locates_are_limited_per_client_address() {
    let dir = tempfile::tempdir().expect("dir");
    let locator = start(
        dir.path(),
        1024,
        "limits:\n  creates_per_minute: 10\n  locates_per_minute: 12\n",
        &[],
        ADMIN_TOKEN,
    );
    let base = format!("http://{}", locator.addr);
    eventually("the locator is ready", || async {
        get_text(&format!("{base}/readyz")).await.0 == 200
    })
    .await;
    // No edge: creates are answered 503 all-saturated, which still counts (a create was
    // asked for). The burst is 5 (half a minute's worth, at least 5).
    for _ in 0..5 {
        let response = post_session(&base, "81.2.69.142").await;
        assert_ne!(response.status(), 429);
    }
    let refused = post_session(&base, "81.2.69.142").await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=6).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        refused.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/problem+json"[..])
    );
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["type"], "urn:locus:problem:rate-limited");
    assert_eq!(body["status"], 429);
    // Another client is not held back by the first one.
    assert_ne!(post_session(&base, "8.8.8.8").await.status(), 429);

    // Locates: a burst of 6, then refused.
    let locate = |client: &'static str| {
        let base = base.clone();
        async move {
            http()
                .get(format!("{base}/v1/locate"))
                .header("X-Forwarded-For", client)
                .send()
                .await
                .expect("locate")
                .status()
                .as_u16()
        }
    };
    for _ in 0..6 {
        assert_ne!(locate("85.214.1.1").await, 429);
    }
    assert_eq!(locate("85.214.1.1").await, 429);
    assert_ne!(locate("133.1.1.1").await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_are_limited_and_logged_without_the_token() {
    let dir = tempfile::tempdir().expect("dir");
    let locator = start(dir.path(), 1024, "", &[], ADMIN_TOKEN);
    let base = format!("http://{}", locator.addr);
    eventually("the locator is ready", || async {
        get_text(&format!("{base}/readyz")).await.0 == 200
    })
    .await;
    let status_with = |token: String| {
        let base = base.clone();
        async move {
            http()
                .get(format!("{base}/v1/admin/status"))
                .bearer_auth(token)
                .send()
                .await
                .expect("status")
                .status()
                .as_u16()
        }
    };
    let guesses: Vec<String> = (0..10)
        .map(|i| format!("guess-{i}-0123456789abcdef"))
        .collect();
    for guess in &guesses {
        assert_eq!(status_with(guess.clone()).await, 401);
    }
    // Over the limit even the right token is refused, so a guesser learns nothing.
    assert_eq!(status_with("guess-10-0123456789abcdef".into()).await, 429);
    assert_eq!(status_with(ADMIN_TOKEN.into()).await, 429);
    // A client the proxy names differently is not locked out by the guesser.
    let other = http()
        .get(format!("{base}/v1/admin/status"))
        .header("X-Forwarded-For", "8.8.8.8")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("status");
    assert_eq!(other.status(), 200);
    let log = log_of(dir.path());
    assert_eq!(
        log.matches("admin API refused: wrong bearer token").count(),
        10,
        "{log}"
    );
    for guess in &guesses {
        assert!(!log.contains(guess.as_str()), "a guessed token was logged");
    }
}

#[test]
fn a_patterned_admin_token_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let mut locator = start(dir.path(), 1024, "", &[], "aaaaaaaaaaaaaaaa");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = locator.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the locator started with a weak admin token"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    assert!(
        log_of(dir.path()).contains("LOCATOR_ADMIN_TOKEN is too weak"),
        "{}",
        log_of(dir.path())
    );
}
