//! The locator link against the real locator, in-process: registration, reports, spool
//! relay with acknowledgements, and a locator that dies while sessions run.

mod common;

use std::collections::HashSet;

use common::*;
use locus_locator::store::AuditRecord;
use tokio_tungstenite::tungstenite::Message;

/// `kind session participant` of each audit row.
fn keys(rows: &[AuditRecord]) -> Vec<String> {
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

/// Each audit row's idempotency key (edge, seq) and content appear once.
fn assert_each_once(rows: &[AuditRecord]) {
    let seqs: HashSet<u64> = rows.iter().filter_map(|r| r.seq).collect();
    assert_eq!(seqs.len(), rows.len(), "a sequence stored twice: {rows:#?}");
    let contents: HashSet<String> = keys(rows).into_iter().collect();
    assert_eq!(
        contents.len(),
        rows.len(),
        "an entry stored twice: {:#?}",
        keys(rows)
    );
}

/// Joins and leaves `session` with each participant in turn; returns the audit keys this
/// produces once the session has ended.
async fn visit(edge: &Edge, session: &str, participants: &[&str]) -> Vec<String> {
    let mut expected = vec![format!("session_started {session} -")];
    let mut clients = Vec::new();
    for (i, pid) in participants.iter().enumerate() {
        let mut client = edge.join(session, pid).await;
        presence(&mut client, &participants[..=i]).await;
        expected.push(format!("participant_joined {session} {pid}"));
        clients.push(client);
    }
    let mut connections = edge.state.hub.subscribe_connections();
    for (i, (client, pid)) in clients.iter_mut().zip(participants).enumerate() {
        client.close(None).await.expect("close");
        // One leave at a time, so the expected order is the real one.
        let remaining = (participants.len() - i - 1) as u32;
        within(
            "a participant to leave",
            connections.wait_for(|n| *n == remaining),
        )
        .await
        .expect("connections");
        expected.push(format!("participant_left {session} {pid}"));
    }
    let mut sessions = edge.state.hub.subscribe_sessions();
    within("the session to end", sessions.wait_for(|n| *n == 0))
        .await
        .expect("sessions");
    expected.push(format!("session_ended {session} -"));
    expected
}

#[tokio::test]
async fn spooled_entries_reach_the_locator_once_and_are_deleted_when_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("locator.sqlite");
    let locator = Locator::start(&db, 0).await;
    let edge = Edge::start(
        "edge-1",
        vec![locator.url()],
        &dir.path().join("spool"),
        |_| {},
    )
    .await;
    edge.linked().await;

    // Registered: the locator sends clients to this edge.
    let (status, body) = http(locator.addr, "GET", "/v1/locate", None).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer["edge"]["id"], "edge-1");
    assert_eq!(answer["edge"]["url"], format!("http://{}", edge.addr));

    let mut expected = visit(&edge, "s1", &["a", "b", "c"]).await;
    expected.extend(visit(&edge, "s2", &["d"]).await);

    let store = open_store(&db).await;
    eventually("the audit entries in the locator's database", || async {
        count_audit(&store, "edge-1").await >= expected.len() as u64
    })
    .await;
    let rows = audit_rows(&store, "edge-1").await;
    assert_each_once(&rows);
    assert_eq!(keys(&rows), expected);
    // Acknowledged entries leave the spool.
    let last = rows.last().and_then(|r| r.seq).expect("seq");
    eventually("the acknowledged entries to leave the spool", || async {
        edge.state
            .spool
            .pending(0, 1000)
            .await
            .expect("pending")
            .iter()
            .all(|e| e.seq > last)
    })
    .await;
    // Load samples are stored as metrics.
    eventually("metrics samples", || async {
        !recent_metrics(&store, "edge-1").await.is_empty()
    })
    .await;
    let samples = recent_metrics(&store, "edge-1").await;
    assert!(
        samples
            .iter()
            .all(|m| (0.0..=1.0).contains(&m.cpu) && m.lag_ms >= 0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_locator_disturbs_no_session_and_its_successor_gets_every_entry_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("locator.sqlite");
    let first = Locator::start(&db, 0).await;
    let second_port = free_port().await;
    let second_url = format!("http://127.0.0.1:{second_port}");
    let edge = Edge::start(
        "edge-k",
        vec![first.url(), second_url.clone()],
        &dir.path().join("spool"),
        |_| {},
    )
    .await;
    edge.linked().await;

    // Two running sessions.
    let mut a1 = edge.join("s1", "a1").await;
    let mut b1 = edge.join("s1", "b1").await;
    presence(&mut a1, &["a1", "b1"]).await;
    presence(&mut b1, &["a1", "b1"]).await;
    let mut a2 = edge.join("s2", "a2").await;
    let mut b2 = edge.join("s2", "b2").await;
    presence(&mut a2, &["a2", "b2"]).await;
    presence(&mut b2, &["a2", "b2"]).await;
    let mut expected: Vec<String> = [
        "session_started s1 -",
        "participant_joined s1 a1",
        "participant_joined s1 b1",
        "session_started s2 -",
        "participant_joined s2 a2",
        "participant_joined s2 b2",
    ]
    .map(String::from)
    .to_vec();
    let store = open_store(&db).await;
    eventually("the first entries in the database", || async {
        count_audit(&store, "edge-k").await >= 6
    })
    .await;
    drop(store);

    first.kill().await;
    let mut link = edge.state.link.subscribe();
    within(
        "the edge to notice the lost link",
        link.wait_for(Option::is_none),
    )
    .await
    .expect("link");

    // Sessions go on while the locator is gone, and produce audit entries.
    say(&mut a1, "one").await;
    assert_eq!(next_data(&mut b1).await, Message::Text("one".into()));
    say(&mut b2, "two").await;
    assert_eq!(next_data(&mut a2).await, Message::Text("two".into()));
    let mut c1 = edge.join("s1", "c1").await;
    presence(&mut c1, &["a1", "b1", "c1"]).await;
    c1.close(None).await.expect("close");
    presence(&mut a1, &["a1", "b1"]).await;
    expected.push("participant_joined s1 c1".into());
    expected.push("participant_left s1 c1".into());
    expected.extend(visit_alongside(&edge, "s3", "d3").await);
    assert!(edge.state.spool.len() >= 5, "entries wait in the spool");

    // A locator comes back at the second URL, on the same database.
    let second = Locator::start(&db, second_port).await;
    within(
        "the edge to register with the second locator",
        link.wait_for(|url| {
            url.as_deref()
                .is_some_and(|u| u.contains(&second_port.to_string()))
        }),
    )
    .await
    .expect("link");
    let store = open_store(&db).await;
    eventually("every entry in the database", || async {
        count_audit(&store, "edge-k").await >= expected.len() as u64
    })
    .await;
    let rows = audit_rows(&store, "edge-k").await;
    assert_each_once(&rows);
    assert_eq!(keys(&rows), expected);

    // The sessions never noticed.
    say(&mut a1, "three").await;
    assert_eq!(next_data(&mut b1).await, Message::Text("three".into()));
    drop(second);
}

/// A whole session (one participant) while other sessions run.
async fn visit_alongside(edge: &Edge, session: &str, pid: &str) -> Vec<String> {
    let mut client = edge.join(session, pid).await;
    presence(&mut client, &[pid]).await;
    client.close(None).await.expect("close");
    let edge_state = edge.state.clone();
    let session_id = session.to_string();
    eventually("the session to end", || {
        let state = edge_state.clone();
        let id = session_id.clone();
        async move { !state.hub.session_ids().contains(&id) }
    })
    .await;
    vec![
        format!("session_started {session} -"),
        format!("participant_joined {session} {pid}"),
        format!("participant_left {session} {pid}"),
        format!("session_ended {session} -"),
    ]
}

#[tokio::test]
async fn an_admin_drain_at_the_locator_drains_the_edge_and_stops_it() {
    const ADMIN: &str = "test-admin-token-0123456789";
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("locator.sqlite");
    let locator = Locator::start_with_admin(&db, 0, Some(ADMIN)).await;
    let mut edge = Edge::start(
        "edge-x",
        vec![locator.url()],
        &dir.path().join("spool"),
        |_| {},
    )
    .await;
    edge.linked().await;
    let mut client = edge.join("s1", "a").await;
    presence(&mut client, &["a"]).await;

    let (status, body) = http_with(
        locator.addr,
        "POST",
        "/v1/admin/edges/edge-x/drain",
        &format!("Authorization: Bearer {ADMIN}\r\n"),
        Some(r#"{"deadline_secs":1}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually("readyz to say draining", || async {
        http(edge.addr, "GET", "/readyz", None).await.0 == 503
    })
    .await;
    let (status, problem) = refused(&edge.ws("s2", &edge.token("s2", "b"))).await;
    assert_eq!(status, 503, "{problem}");
    // At the deadline the session (not a room the locator knows) is closed, and the
    // edge stops.
    assert_eq!(
        closed(&mut client).await,
        (
            locus_edge::hub::CLOSE_GOING_AWAY,
            locus_edge::hub::SHUTTING_DOWN.to_string()
        )
    );
    let result = within("the edge to stop", &mut edge.task).await;
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
}
