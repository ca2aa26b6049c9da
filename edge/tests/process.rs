//! The real `edge` binary: SIGKILL in the middle of spooling, SIGTERM drain with a keyed
//! room moved to another edge, a second SIGTERM, a SIGSTOP longer than the linger, and a
//! refused start without a token.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use locus_edge::hub;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A running `edge` process; killed when dropped.
struct EdgeProcess {
    id: String,
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl EdgeProcess {
    fn spawn(id: &str, port: u16, locators: &[String], dir: &Path, extra: &[&str]) -> EdgeProcess {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = dir.join(format!("{id}-{}.log", Instant::now().elapsed().as_nanos()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_edge"))
            .args([
                "--id",
                id,
                "--region",
                "eu-west",
                "--listen",
                &addr.to_string(),
            ])
            .args(["--public-url", &format!("http://{addr}")])
            .args(["--locator", &locators.join(",")])
            .arg("--spool-dir")
            .arg(dir.join(format!("{id}-spool")))
            .args(extra)
            .env("LOCATOR_EDGE_TOKEN", credential(id))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn the edge binary");
        EdgeProcess {
            id: id.into(),
            addr,
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn status(&self) -> Value {
        let (code, body) = http(self.addr, "GET", "/v1/status", None).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Waits until the process answers and is registered with a locator.
    async fn linked(&self) {
        eventually("the edge process to register", || async {
            tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && !self.status().await["locator"].is_null()
        })
        .await;
    }

    fn ws(&self, session: &str, token: &str) -> String {
        format!("ws://{}/v1/sessions/{session}/ws?token={token}", self.addr)
    }

    async fn join(&self, session: &str, pid: &str) -> Client {
        connect(&self.ws(session, &mint(&self.id, session, pid, 300))).await
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Waits for the process to exit.
    async fn exited(&mut self) -> ExitStatus {
        let mut status = None;
        eventually("the edge process to exit", || {
            status = self.child.try_wait().expect("try_wait");
            std::future::ready(status.is_some())
        })
        .await;
        status.expect("exited")
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keys(rows: &[locus_locator::store::AuditRecord]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.kind,
                r.session_id.as_deref().unwrap_or("-"),
                r.participant.as_deref().unwrap_or("-")
            )
        })
        .collect()
}

/// Each participant joins, then leaves, one at a time; waits until the session has ended
/// on the edge (its `session_ended` is then in the spool). Returns the audit keys.
async fn visit(edge: &EdgeProcess, session: &str, participants: &[&str]) -> Vec<String> {
    let mut expected = vec![format!("session_started {session} -")];
    let mut clients = Vec::new();
    for (i, pid) in participants.iter().enumerate() {
        let mut client = edge.join(session, pid).await;
        presence(&mut client, &participants[..=i]).await;
        expected.push(format!("participant_joined {session} {pid}"));
        clients.push(client);
    }
    for (i, (client, pid)) in clients.iter_mut().zip(participants).enumerate() {
        client.close(None).await.expect("close");
        let remaining = (participants.len() - i - 1) as u64;
        eventually("a participant to leave", || async {
            edge.status().await["connections"].as_u64() == Some(remaining)
        })
        .await;
        expected.push(format!("participant_left {session} {pid}"));
    }
    eventually("the session to end", || async {
        edge.status().await["sessions"].as_u64() == Some(0)
    })
    .await;
    expected.push(format!("session_ended {session} -"));
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_mid_spool_loses_nothing_and_resends_nothing_as_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("locator.sqlite");
    let locator_port = free_port().await;
    let locator = Locator::start(&db, locator_port).await;
    let edge_port = free_port().await;
    let args = ["--linger", "50ms"];
    let mut edge = EdgeProcess::spawn("edge-p", edge_port, &[locator.url()], dir.path(), &args);
    edge.linked().await;

    // Acknowledged entries.
    let mut expected = visit(&edge, "before", &["p1", "p2"]).await;
    let store = open_store(&db).await;
    eventually("the first session in the database", || async {
        count_audit(&store, "edge-p").await >= expected.len() as u64
    })
    .await;
    drop(store);

    // Entries spooled while the locator is down, then the edge is killed.
    locator.kill().await;
    eventually("the edge to notice the lost link", || async {
        edge.status().await["locator"].is_null()
    })
    .await;
    expected.extend(visit(&edge, "during", &["p3", "p4"]).await);
    let spooled = edge.status().await["spool"]["len"].as_u64().unwrap_or(0);
    assert!(spooled >= 6, "{spooled} entries in the spool");
    edge.sigkill();

    // Both come back; the edge relays what it had.
    let locator = Locator::start(&db, locator_port).await;
    let edge = EdgeProcess::spawn("edge-p", edge_port, &[locator.url()], dir.path(), &args);
    edge.linked().await;
    expected.extend(visit(&edge, "after", &["p5"]).await);
    let store = open_store(&db).await;
    eventually("every entry in the database", || async {
        count_audit(&store, "edge-p").await >= expected.len() as u64
    })
    .await;
    let rows = audit_rows(&store, "edge-p").await;
    assert_eq!(keys(&rows), expected, "{}", edge.log());
    let seqs: Vec<u64> = rows.iter().filter_map(|r| r.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "one key each, numbered in order across the restart: {seqs:?}"
    );
    let unique: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), rows.len());
    locator.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_moves_the_keyed_room_and_exits_by_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locator = Locator::start(&dir.path().join("locator.sqlite"), 0).await;
    let args = ["--drain-deadline", "3s", "--linger", "10s"];
    let mut edges = vec![
        EdgeProcess::spawn(
            "edge-d1",
            free_port().await,
            &[locator.url()],
            dir.path(),
            &args,
        ),
        EdgeProcess::spawn(
            "edge-d2",
            free_port().await,
            &[locator.url()],
            dir.path(),
            &args,
        ),
    ];
    for edge in &edges {
        edge.linked().await;
    }
    let room = create_room(locator.addr, "room-1").await;
    let session = room["session_id"].as_str().expect("session id").to_string();
    let host = room["edge"]["id"].as_str().expect("edge id").to_string();
    let x = edges
        .iter()
        .position(|e| e.id == host)
        .expect("a test edge");
    let mut draining = edges.remove(x);
    let other = edges.remove(0);

    let mut r1 = connect(&with_token(&room)).await;
    let (status, again) = http(
        locator.addr,
        "GET",
        &format!("/v1/sessions/{session}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{again}");
    let again: Value = serde_json::from_str(&again).expect("json");
    let mut r2 = connect(&with_token(&again)).await;
    presence_of(&mut r1, 2).await;
    presence_of(&mut r2, 2).await;
    let mut ad_hoc = draining.join("ad-hoc", "h").await;
    presence(&mut ad_hoc, &["h"]).await;

    let sigterm_at = Instant::now();
    draining.signal("TERM");
    eventually("readyz to say draining", || async {
        http(draining.addr, "GET", "/readyz", None).await.0 == 503
    })
    .await;
    assert_eq!(http(draining.addr, "GET", "/healthz", None).await.0, 200);
    let (status, problem) = refused(&draining.ws("new", &mint(&host, "new", "n", 300))).await;
    assert_eq!(status, 503);
    assert_eq!(problem["detail"], hub::DRAINING);
    // The running sessions keep working.
    r1.send(Message::Text("during the drain".into()))
        .await
        .expect("send");
    assert_eq!(
        next_data(&mut r2).await,
        Message::Text("during the drain".into())
    );

    // At the deadline: the room moves to the other edge and its clients are told.
    let expected_url = locus_protocol::session_ws_url(&format!("http://{}", other.addr), &session);
    for client in [&mut r1, &mut r2] {
        let Message::Text(text) = next_data(client).await else {
            panic!("expected the moved message");
        };
        let moved: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(moved["locus"], "moved", "{moved}");
        assert_eq!(moved["session"], session.as_str());
        assert_eq!(moved["edge"], other.id.as_str());
        assert_eq!(moved["url"], expected_url.as_str());
        assert_eq!(
            closed(client).await,
            (hub::CLOSE_MOVED, format!("moved to {}", other.id))
        );
    }
    assert_eq!(
        closed(&mut ad_hoc).await,
        (hub::CLOSE_GOING_AWAY, hub::SHUTTING_DOWN.to_string())
    );
    let status = draining.exited().await;
    let took = sigterm_at.elapsed();
    assert!(status.success(), "exit {status:?}\n{}", draining.log());
    assert!(
        took < Duration::from_secs(12),
        "exited {took:?} after SIGTERM (deadline 3s)"
    );

    // The locator sends the room's clients to the new edge, which takes them.
    let (status, body) = http(
        locator.addr,
        "GET",
        &format!("/v1/sessions/{session}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let now: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(now["edge"]["id"], other.id.as_str());
    let mut back = connect(&with_token(&now)).await;
    presence_of(&mut back, 1).await;
    locator.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = format!("http://127.0.0.1:{}", free_port().await);
    let mut edge = EdgeProcess::spawn(
        "edge-t",
        free_port().await,
        &[nowhere],
        dir.path(),
        &["--drain-deadline", "10m"],
    );
    eventually("the edge process to answer", || async {
        tokio::net::TcpStream::connect(edge.addr).await.is_ok()
    })
    .await;
    let mut client = edge.join("s", "a").await;
    presence(&mut client, &["a"]).await;
    edge.signal("TERM");
    eventually("readyz to say draining", || async {
        http(edge.addr, "GET", "/readyz", None).await.0 == 503
    })
    .await;
    let second_at = Instant::now();
    edge.signal("TERM");
    let status = edge.exited().await;
    assert!(!status.success(), "a forced exit is not a clean one");
    assert!(second_at.elapsed() < Duration::from_secs(5));
    assert!(edge.log().contains("second signal"), "{}", edge.log());
}

/// A stall longer than the linger (SIGSTOP, a starved VM) must not end a session whose
/// participant reconnected meanwhile: the linger counts time the edge was running. Without
/// that, the linger timer fired first after SIGCONT, the session ended, and the pending
/// join (its token issued before the end) was refused 410 `session-ended` (seen in the
/// load test's `edge-stall` fault).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_reconnecting_while_the_edge_is_stopped_keeps_its_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = format!("http://127.0.0.1:{}", free_port().await);
    let edge = EdgeProcess::spawn(
        "edge-s",
        free_port().await,
        &[nowhere],
        dir.path(),
        &["--linger", "200ms"],
    );
    eventually("the edge process to answer", || async {
        tokio::net::TcpStream::connect(edge.addr).await.is_ok()
    })
    .await;
    let mut a = edge.join("stalled", "a").await;
    presence(&mut a, &["a"]).await;
    a.close(None).await.expect("close");
    eventually("a to leave", || async {
        edge.status().await["connections"].as_u64() == Some(0)
    })
    .await;
    assert_eq!(edge.status().await["sessions"], 1, "lingering");

    // Issued now, used while the edge is stopped for longer than the linger and past the
    // end of this second (tokens are compared in whole seconds).
    let token = mint(&edge.id, "stalled", "b", 300);
    edge.signal("STOP");
    let url = edge.ws("stalled", &token);
    let reconnect = tokio::spawn(async move { tokio_tungstenite::connect_async(url).await });
    // The stall itself, not a synchronisation: the edge cannot run meanwhile.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    edge.signal("CONT");
    let mut b = match within("b's websocket", reconnect).await.expect("task") {
        Ok((client, _)) => client,
        Err(error) => panic!("b refused after the stall: {error}\n{}", edge.log()),
    };
    let hello = presence(&mut b, &["b"]).await;
    assert_eq!(hello["session"], "stalled");
}

#[test]
fn the_edge_refuses_to_start_without_its_token() {
    let output = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args([
            "--id",
            "e",
            "--region",
            "eu-west",
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--public-url",
            "http://127.0.0.1:1",
            "--locator",
            "http://127.0.0.1:2",
        ])
        .env_remove("LOCATOR_EDGE_TOKEN")
        .output()
        .expect("run the edge binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("LOCATOR_EDGE_TOKEN is not set"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_does_not_stop_the_drain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().await;
    let nowhere = format!("http://127.0.0.1:{}", free_port().await);
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["--id", "edge-s", "--region", "eu-west", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--public-url")
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--locator", &nowhere])
        .arg("--spool-dir")
        .arg(dir.path())
        .env("LOCATOR_EDGE_TOKEN", credential("edge-s"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The log reader goes away: every later log line fails to write.
    drop(child.stderr.take());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    eventually("the edge process to answer", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut exited = None;
    eventually("the edge to drain and exit", || {
        exited = child.try_wait().expect("try_wait");
        std::future::ready(exited.is_some())
    })
    .await;
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
}

/// Finding 10 of issue 16: with `RUST_LOG=trace` the handshake request (tungstenite
/// traces it whole) printed `authorization: Bearer <edge token>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_never_show_the_edge_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locator = Locator::start(&dir.path().join("locator.sqlite"), 0).await;
    let port = free_port().await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let log = dir.path().join("edge-trace.log");
    let secret = credential("edge-t");
    let child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(["--id", "edge-t", "--region", "eu-west"])
        .args(["--listen", &addr.to_string()])
        .args(["--public-url", &format!("http://{addr}")])
        .args(["--locator", &locator.url()])
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .env("LOCATOR_EDGE_TOKEN", &secret)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn the edge binary");
    let edge = EdgeProcess {
        id: "edge-t".into(),
        addr,
        child,
        log,
    };
    edge.linked().await;
    let text = edge.log();
    // Trace was on, the handshake happened and was logged at debug...
    assert!(text.contains("TRACE"), "no trace lines: {text}");
    assert!(text.contains("Client handshake done"), "{text}");
    // ...and the credential, or any part of its signature, is nowhere.
    let signature = secret.rsplit(':').next().expect("signature");
    assert!(
        !text.contains(signature),
        "the edge credential is in the log"
    );
    assert!(!text.to_ascii_lowercase().contains("authorization: bearer"));
    drop(edge);
    locator.kill().await;
}
