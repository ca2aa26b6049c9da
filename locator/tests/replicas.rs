//! Several locators on one Postgres database (real Postgres on 127.0.0.1): sessions,
//! rooms and suspensions written by one are seen by all; edge state and assignments
//! reach every locator; a killed locator loses nothing; a restart of the database is
//! survived without restarting the locators.
//!
//! Each test has a database of its own on the shared server (`LOCUS_TEST_POSTGRES`, set
//! by `./scripts/test`), except the database-restart test, which runs a server of its own.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use locus_locator::store::{AuditFilter, AuditSource, Store};
use locus_protocol::{EdgeMessage, LocatorMessage, SpoolBody, SpoolEntry};
use serde_json::Value;
use support::postgres::{PrivatePostgres, Scratch, postgres_server, with_database};
use support::*;

/// A throwaway database on the shared server, and its URL.
async fn scratch(test: &str) -> Option<(Scratch, String)> {
    let server = postgres_server(test).await?;
    let scratch = Scratch::create(&server)
        .await
        .expect("create a test database");
    let url = with_database(&server, &scratch.name);
    Some((scratch, url))
}

/// Two in-process locators on `url`.
async fn two_locators(
    url: &str,
    report_interval: &str,
) -> (Vec<tempfile::TempDir>, TestLocator, TestLocator) {
    let dirs = vec![
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let a = TestLocator::start_on(dirs[0].path(), url, "30s", report_interval, "127.0.0.1:0").await;
    let b = TestLocator::start_on(dirs[1].path(), url, "30s", report_interval, "127.0.0.1:0").await;
    (dirs, a, b)
}

async fn create(addr: SocketAddr, client: &str, body: Value) -> (u16, Value) {
    let response = http()
        .post(format!("http://{addr}/v1/sessions"))
        .header("x-forwarded-for", client)
        .json(&body)
        .send()
        .await
        .expect("create");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get_session(addr: SocketAddr, id: &str) -> (u16, Value) {
    let response = http()
        .get(format!("http://{addr}/v1/sessions/{id}"))
        .send()
        .await
        .expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn admin_action(addr: SocketAddr, edge: &str, action: &str) -> (u16, Value) {
    let response = http()
        .post(format!("http://{addr}/v1/admin/edges/{edge}/{action}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin action");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn edge_of(answer: &Value) -> String {
    answer["edge"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until `locator` sees every edge of `ids` in `state`.
async fn wait_all(locator: &TestLocator, ids: &[&str], wanted: &'static str) {
    let what = format!("{ids:?} {wanted} on {}", locator.addr);
    wait_for(&locator.state, &what, |s| {
        ids.iter().all(|id| edge_state(s, id) == Some(wanted))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_on_one_locator_is_joined_on_another_and_admin_actions_reach_all() {
    let Some((_db, url)) = scratch("replicas_share_sessions_and_admin_actions").await else {
        return;
    };
    let (_dirs, a, b) = two_locators(&url, "30s").await;
    let mut us1 = TestEdge::connect(a.addr, register("us-1", "us-east", 100)).await;
    let mut us2 = TestEdge::connect(b.addr, register("us-2", "us-east", 100)).await;
    us1.report(0).await;
    us2.report(0).await;
    // Each locator sees the edge the other holds.
    wait_all(&a, &["us-1", "us-2"], "active").await;
    wait_all(&b, &["us-1", "us-2"], "active").await;

    // Created on A, joined on B: same session, same edge, a fresh token.
    let (status, created) = create(a.addr, "8.8.8.8", serde_json::json!({})).await;
    assert_eq!(status, 201, "{created}");
    let id = created["session_id"].as_str().expect("id").to_string();
    let (status, joined) = get_session(b.addr, &id).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(edge_of(&joined), edge_of(&created));
    assert_eq!(joined["ws_url"], created["ws_url"]);

    // A room made on B is the room A joins.
    let (status, room) = create(b.addr, "8.8.8.8", serde_json::json!({"key": "standup"})).await;
    assert_eq!(status, 201, "{room}");
    let (status, again) =
        create(a.addr, "81.2.69.142", serde_json::json!({"key": "standup"})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["session_id"], room["session_id"]);
    assert_eq!(again["created"], false);

    // Signed in on the admin page through A, the same cookie works on B; signing out on
    // B ends it on A too.
    let (_, cookie) = sign_in(&a, "Ada", &[]).await;
    let page_status = |addr: SocketAddr, cookie: String| async move {
        raw_client()
            .get(format!("http://{addr}/v1/admin/status"))
            .header("cookie", cookie)
            .send()
            .await
            .expect("status")
            .status()
            .as_u16()
    };
    assert_eq!(page_status(b.addr, cookie.clone()).await, 200);
    let out = raw_client()
        .post(b.url("/admin/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status().as_u16(), 303);
    assert_eq!(page_status(a.addr, cookie.clone()).await, 401);

    // Suspended through B (which does not hold us-1): A stops sending new sessions there.
    let (status, answer) = admin_action(b.addr, "us-1", "suspend").await;
    assert_eq!(status, 200, "{answer}");
    wait_all(&a, &["us-1"], "suspended").await;
    for _ in 0..20 {
        let (status, answer) = create(a.addr, "8.8.8.8", serde_json::json!({})).await;
        assert_eq!(status, 201, "{answer}");
        assert_eq!(
            edge_of(&answer),
            "us-2",
            "a suspended edge is skipped: {answer}"
        );
    }
    // Resumed through A: B uses it again.
    let (status, _) = admin_action(a.addr, "us-1", "resume").await;
    assert_eq!(status, 200);
    wait_all(&b, &["us-1"], "active").await;

    // A drain asked through A reaches us-2, whose link B holds; both stop using it.
    let (status, answer) = admin_action(a.addr, "us-2", "drain").await;
    assert_eq!(status, 200, "{answer}");
    loop {
        match next_message(&mut us2.ws).await {
            Some(LocatorMessage::Drain { .. }) => break,
            Some(_) => continue,
            None => panic!("us-2's link closed before the drain arrived"),
        }
    }
    wait_all(&b, &["us-2"], "draining").await;
    wait_all(&a, &["us-2"], "draining").await;
    let (_, answer) = create(b.addr, "8.8.8.8", serde_json::json!({})).await;
    assert_eq!(edge_of(&answer), "us-1", "{answer}");
    us1.report(0).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_key_across_two_locators_make_one_room() {
    let Some((_db, url)) = scratch("replicas_one_room_per_key").await else {
        return;
    };
    let (_dirs, a, b) = two_locators(&url, "30s").await;
    let mut edge = TestEdge::connect(a.addr, register("eu-1", "eu-west", 1000)).await;
    edge.report(0).await;
    wait_all(&b, &["eu-1"], "active").await;
    let calls = (0..200).map(|i| {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        tokio::spawn(create(
            addr,
            "81.2.69.142",
            serde_json::json!({"key": "one-room"}),
        ))
    });
    let mut ids = HashSet::new();
    let mut created = 0;
    for call in calls {
        let (status, answer) = call.await.expect("task");
        assert!(status == 200 || status == 201, "{status} {answer}");
        created += usize::from(answer["created"] == true);
        ids.insert(answer["session_id"].as_str().expect("id").to_string());
    }
    assert_eq!(ids.len(), 1, "one room for the key: {ids:?}");
    assert_eq!(created, 1, "exactly one call created it");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_split_across_two_locators_counts_each_others_assignments() {
    let Some((_db, url)) = scratch("replicas_burst_balance").await else {
        return;
    };
    // No report arrives during the burst (they are due every 30 s): only the assignments
    // counted (by each locator, and sent to the other) keep it from herding.
    let (_dirs, a, b) = two_locators(&url, "30s").await;
    let ids = ["us-1", "us-2", "us-3", "us-4", "us-5"];
    let mut edges = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let locator = if i < 3 { a.addr } else { b.addr };
        let mut edge = TestEdge::connect(locator, register(id, "us-east", 1000)).await;
        edge.report(0).await;
        edges.push(edge);
    }
    wait_all(&a, &ids, "active").await;
    wait_all(&b, &ids, "active").await;
    // Both see every edge's (empty) load before the burst.
    for locator in [&a, &b] {
        wait_for(&locator.state, "every report seen", |s| {
            s.registry
                .snapshot()
                .edges
                .iter()
                .all(|e| e.load().is_some())
        })
        .await;
    }

    // 300 creates on B while us-4 and us-5 are suspended: 100 on each of us-1..3. Then
    // 700 on A, which must count B's 300 (no report came since) to even it out: seen
    // alone, every edge would look empty and get 140, leaving 240 vs 140 (max/mean 1.2).
    for id in ["us-4", "us-5"] {
        assert_eq!(admin_action(b.addr, id, "suspend").await.0, 200);
    }
    wait_all(&b, &["us-4", "us-5"], "suspended").await;
    let per_edge = Arc::new(std::sync::Mutex::new(HashMap::<String, usize>::new()));
    burst(b.addr, 300, &per_edge).await;
    for id in ["us-4", "us-5"] {
        assert_eq!(admin_action(b.addr, id, "resume").await.0, 200);
    }
    wait_all(&a, &ids, "active").await;
    wait_for(&a.state, "A counts B's 300 assignments", |s| {
        let snapshot = s.registry.snapshot();
        snapshot
            .edges
            .iter()
            .map(|e| e.pending_assignments())
            .sum::<u32>()
            == 300
    })
    .await;
    burst(a.addr, 700, &per_edge).await;
    let per_edge = per_edge.lock().expect("lock").clone();
    let total: usize = per_edge.values().sum();
    assert_eq!(total, 1000);
    let max = *per_edge.values().max().expect("edges");
    let mean = total as f64 / ids.len() as f64;
    assert_eq!(per_edge.len(), 5, "{per_edge:?}");
    assert!(
        max as f64 / mean <= 1.10,
        "max/mean {:.3} > 1.10: {per_edge:?}",
        max as f64 / mean
    );
    a.stop().await;
    b.stop().await;
}

/// `n` session creates on `addr` from 16 concurrent clients, counted by edge.
async fn burst(
    addr: SocketAddr,
    n: usize,
    per_edge: &Arc<std::sync::Mutex<HashMap<String, usize>>>,
) {
    let workers = (0..16).map(|w| {
        let per_edge = per_edge.clone();
        tokio::spawn(async move {
            for _ in 0..(n / 16 + usize::from(w < n % 16)) {
                let (status, answer) = create(addr, "8.8.8.8", serde_json::json!({})).await;
                assert_eq!(status, 201, "{answer}");
                *per_edge
                    .lock()
                    .expect("lock")
                    .entry(edge_of(&answer))
                    .or_default() += 1;
            }
        })
    });
    for worker in workers {
        worker.await.expect("worker");
    }
}

/// A `locator serve` process, killed when dropped.
struct LocatorProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for LocatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

async fn spawn_locator(dir: &Path, url: &str, report_interval: &str) -> LocatorProcess {
    let db = write_geoip(dir);
    let config = dir.join("regions.yaml");
    std::fs::write(&config, regions_yaml_with(&db, "30s", report_interval)).expect("write config");
    let addr = free_addr();
    let log = std::fs::File::create(dir.join("locator.log")).expect("log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_locator"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--listen", &addr.to_string(), "--database", url])
        .env("LOCATOR_EDGE_KEY", EDGE_KEY)
        .env("LOCATOR_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("LOCUS_TEST_TURN_SECRET", "turn-secret-for-tests")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn the locator");
    let process = LocatorProcess { child, addr };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http()
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return process;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "locator on {addr} not ready: {}",
            std::fs::read_to_string(dir.join("locator.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn joined(seq: u64) -> SpoolEntry {
    SpoolEntry {
        seq,
        at_unix_ms: 1_700_000_000_000 + seq as i64,
        body: SpoolBody::ParticipantJoined {
            session_id: format!("s-{seq}"),
            participant: format!("p-{seq}"),
        },
    }
}

/// Sends entries `seqs` and waits for the acknowledgement of the last.
async fn relay(edge: &mut TestEdge, seqs: std::ops::RangeInclusive<u64>) {
    let last = *seqs.end();
    let entries: Vec<SpoolEntry> = seqs.map(joined).collect();
    send(&mut edge.ws, &EdgeMessage::Spool { entries }).await;
    loop {
        match next_message(&mut edge.ws).await {
            Some(LocatorMessage::Ack { seq }) if seq == last => return,
            Some(_) => continue,
            None => panic!("link closed before the ack of {last}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_locator_loses_no_session_and_no_acknowledged_audit_entry() {
    let Some((_db, url)) = scratch("replicas_kill_one").await else {
        return;
    };
    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let a = spawn_locator(dirs[0].path(), &url, "30s").await;
    let b = spawn_locator(dirs[1].path(), &url, "30s").await;

    let mut edge = TestEdge::connect(a.addr, register("us-1", "us-east", 100)).await;
    edge.report(0).await;
    let mut sessions = Vec::new();
    for _ in 0..20 {
        let (status, answer) = create(a.addr, "8.8.8.8", serde_json::json!({})).await;
        assert_eq!(status, 201, "{answer}");
        sessions.push(answer["session_id"].as_str().expect("id").to_string());
    }
    relay(&mut edge, 1..=50).await;

    // SIGKILL: no goodbye to the edge, no flush.
    drop(a);
    assert!(
        next_message(&mut edge.ws).await.is_none(),
        "the edge sees its link die"
    );
    // The edge's next locator: B, which has every acknowledged entry already.
    let mut edge = TestEdge::connect(b.addr, register("us-1", "us-east", 100)).await;
    match &edge.welcome {
        LocatorMessage::Welcome { acked_seq, .. } => assert_eq!(*acked_seq, 50),
        other => panic!("{other:?}"),
    }
    edge.report(20).await;
    relay(&mut edge, 51..=80).await;
    for id in &sessions {
        let (status, answer) = get_session(b.addr, id).await;
        assert_eq!(status, 200, "session {id} survives the locator: {answer}");
        assert_eq!(edge_of(&answer), "us-1");
    }
    let (status, answer) = create(b.addr, "8.8.8.8", serde_json::json!({})).await;
    assert_eq!(status, 201, "{answer}");

    let store = Store::open(&url).await.expect("open");
    let audit = store
        .audit(&AuditFilter {
            edge_id: Some("us-1".into()),
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .expect("audit");
    let seqs: Vec<u64> = audit
        .iter()
        .filter(|r| r.source == AuditSource::Edge)
        .filter_map(|r| r.seq)
        .collect();
    let distinct: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(seqs.len(), 80, "every acknowledged entry stored once");
    assert_eq!(distinct, (1..=80).collect());
    store.close().await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locators_recover_from_a_database_restart_under_load_without_a_restart() {
    let Some(server) = PrivatePostgres::start("replicas_database_restart") else {
        return;
    };
    let url = server.url();
    let (_dirs, a, b) = two_locators(&url, "30s").await;
    let mut us1 = TestEdge::connect(a.addr, register("us-1", "us-east", 10_000)).await;
    let mut us2 = TestEdge::connect(b.addr, register("us-2", "us-east", 10_000)).await;
    us1.report(0).await;
    us2.report(0).await;
    wait_all(&a, &["us-1", "us-2"], "active").await;
    wait_all(&b, &["us-1", "us-2"], "active").await;

    // Clients keep creating sessions on both locators through the restart.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let addr = if c % 2 == 0 { a.addr } else { b.addr };
            let (stop, acknowledged, refused) =
                (stop.clone(), acknowledged.clone(), refused.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, answer) = create(addr, "8.8.8.8", serde_json::json!({})).await;
                    if status == 201 {
                        let id = answer["session_id"].as_str().expect("id").to_string();
                        acknowledged.lock().expect("lock").push(id);
                    } else {
                        assert!(status >= 500, "{status} {answer}");
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    let count = || acknowledged.lock().expect("lock").len();
    let before = count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count() < before + 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "50 creations before the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::block_in_place(|| server.stop());
    // Down: not ready, creations refused (never answered as created).
    for locator in [&a, &b] {
        let readyz = http()
            .get(locator.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(readyz.status().as_u16(), 503);
    }
    let during = count();
    tokio::task::block_in_place(|| server.restart());

    // Back, without restarting the locators: ready, creating, and following each other.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count() < during + 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "creations resume after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for locator in [&a, &b] {
        let readyz = http()
            .get(locator.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(readyz.status().as_u16(), 200);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }
    // A suspension after the restart still reaches the other locator (the listener
    // reconnected).
    let (status, _) = admin_action(b.addr, "us-1", "suspend").await;
    assert_eq!(status, 200);
    wait_all(&a, &["us-1"], "suspended").await;

    // Every creation answered 201 is in the database.
    let store = Store::open(&url).await.expect("open");
    let acknowledged = acknowledged.lock().expect("lock").clone();
    for id in &acknowledged {
        assert!(
            store.get_session(id).await.expect("read").is_some(),
            "acknowledged session {id} lost"
        );
    }
    assert!(
        refused.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the restart was felt"
    );
    store.close().await;
    a.stop().await;
    b.stop().await;
    drop(server);
}

/// Polls `check` until it holds (for the state of other processes), at most 30 s.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn edge_status(edge: &EdgeProcess) -> Value {
    match http().get(format!("{}/v1/status", edge.url)).send().await {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// A client's websocket on the edge an answer names.
async fn join_edge(answer: &Value) -> Ws {
    let url = format!(
        "{}?token={}",
        answer["ws_url"].as_str().expect("ws_url"),
        answer["join_token"].as_str().expect("join_token")
    );
    tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("join {answer}: {e}"))
        .0
}

/// The real edge binary, given two locators: when the first is killed it moves to the
/// second; clients keep their sessions, and every entry of its spool (audit and metrics)
/// is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_edge_moves_to_its_next_locator_when_its_own_dies_and_loses_nothing() {
    let Some((_db, url)) = scratch("replicas_real_edge_moves").await else {
        return;
    };
    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let a = spawn_locator(dirs[0].path(), &url, "1s").await;
    let b = spawn_locator(dirs[1].path(), &url, "1s").await;
    let edge = spawn_edge(
        &[a.addr, b.addr],
        "us-real",
        "us-east",
        &dirs[2].path().join("spool"),
    );
    let linked_to = |addr: SocketAddr| {
        let edge = &edge;
        async move {
            edge_status(edge).await["locator"]
                .as_str()
                .is_some_and(|l| l.contains(&addr.to_string()))
        }
    };
    eventually("the edge links to its first locator", || linked_to(a.addr)).await;
    eventually("the other locator routes to it", || async {
        create(b.addr, "8.8.8.8", serde_json::json!({"key": "probe"}))
            .await
            .0
            == 201
    })
    .await;

    // Sessions made through both locators, each with a client holding its websocket.
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..6 {
        let (locator, body) = if i % 2 == 0 {
            (a.addr, serde_json::json!({}))
        } else {
            (b.addr, serde_json::json!({"key": format!("room-{i}")}))
        };
        let (status, answer) = create(locator, "8.8.8.8", body).await;
        assert_eq!(status, 201, "{answer}");
        assert_eq!(edge_of(&answer), "us-real");
        clients.push(join_edge(&answer).await);
        sessions.push(answer["session_id"].as_str().expect("id").to_string());
    }
    eventually("the spool relayed", || async {
        let status = edge_status(&edge).await;
        status["spool"]["len"] == 0 && status["spool"]["last_seq"].as_u64() > Some(0)
    })
    .await;

    // SIGKILL the edge's locator: it moves to the other, sessions go on.
    drop(a);
    eventually("the edge links to its next locator", || linked_to(b.addr)).await;
    for id in &sessions {
        let (status, answer) = get_session(b.addr, id).await;
        assert_eq!(status, 200, "session {id} after its locator died: {answer}");
        assert_eq!(edge_of(&answer), "us-real");
        clients.push(join_edge(&answer).await);
    }
    drop(clients);
    eventually("every client gone and the spool relayed", || async {
        let status = edge_status(&edge).await;
        status["connections"] == 0 && status["spool"]["len"] == 0
    })
    .await;
    let last_seq = edge_status(&edge).await["spool"]["last_seq"]
        .as_u64()
        .expect("last_seq");

    // Every entry up to the last relayed one is stored, once (audit rows and metrics
    // samples share the edge's sequence).
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect");
    let seqs: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM audit WHERE edge_id = 'us-real' AND source = 'edge' \
         UNION ALL SELECT seq FROM metrics WHERE edge_id = 'us-real'",
    )
    .fetch_all(&mut db)
    .await
    .expect("seqs");
    let distinct: HashSet<u64> = seqs.iter().map(|&s| s as u64).collect();
    assert_eq!(distinct.len(), seqs.len(), "no entry stored twice");
    let missing: Vec<u64> = (1..=last_seq).filter(|s| !distinct.contains(s)).collect();
    assert!(missing.is_empty(), "entries lost: {missing:?}");
    let joins: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit WHERE edge_id = 'us-real' AND kind = 'participant_joined'",
    )
    .fetch_one(&mut db)
    .await
    .expect("joins");
    assert_eq!(
        joins, 12,
        "one participant_joined per client, before and after the move"
    );
    drop(edge);
    drop(b);
}

/// The locator holding an edge dies with the edge: every other locator notices (the
/// holder's publishing stops, then the edge's `/healthz` does not answer), and exactly
/// one of them handles the failure: the edge's ad-hoc sessions end, one `edge_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_noticed_by_several_locators_is_handled_once() {
    let Some((_db, url)) = scratch("replicas_failure_handled_once").await else {
        return;
    };
    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let start = |i: usize| TestLocator::start_on(dirs[i].path(), &url, "30s", "1s", "127.0.0.1:0");
    let (a, b, c) = (start(0).await, start(1).await, start(2).await);
    // Its public URL does not answer: a probe finds it dead at once.
    let mut edge = TestEdge::connect(a.addr, register("us-1", "us-east", 100)).await;
    edge.report(0).await;
    wait_all(&b, &["us-1"], "active").await;
    wait_all(&c, &["us-1"], "active").await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (status, answer) = create(b.addr, "8.8.8.8", serde_json::json!({})).await;
        assert_eq!(status, 201, "{answer}");
        sessions.push(answer["session_id"].as_str().expect("id").to_string());
    }
    // The holder stops (its publishing with it); the edge says nothing more.
    a.stop().await;
    wait_all(&b, &["us-1"], "failed").await;
    wait_all(&c, &["us-1"], "failed").await;
    for id in &sessions {
        let (status, answer) = get_session(c.addr, id).await;
        assert_eq!(
            status, 410,
            "an ad-hoc session of a failed edge ends: {answer}"
        );
    }
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect");
    let failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit WHERE edge_id = 'us-1' AND kind = 'edge_failed'",
    )
    .fetch_one(&mut db)
    .await
    .expect("count");
    assert_eq!(failures, 1, "one locator handled the failure");
    drop(edge);
    b.stop().await;
    c.stop().await;
}
