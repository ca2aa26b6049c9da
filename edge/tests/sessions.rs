//! Sessions over real sockets: join tokens, relay and presence, bounds, linger, drain
//! admission. The edge's locator link points at a closed port here (sessions must not
//! care); the tests with a locator are in `link.rs` and `process.rs`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use locus_edge::hub;
use locus_protocol::join_token::{JoinClaims, JoinKey};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn lone_edge(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut locus_edge::config::Settings),
) -> Edge {
    let nowhere = format!("http://127.0.0.1:{}", free_port().await);
    Edge::start("edge-a", vec![nowhere], dir, tweak).await
}

#[tokio::test]
async fn a_valid_token_joins_and_bad_tokens_are_refused_before_the_upgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = lone_edge(dir.path(), |_| {}).await;

    let mut alice = edge.join("s1", "alice").await;
    let hello = presence(&mut alice, &["alice"]).await;
    assert_eq!(hello["session"], "s1");
    assert_eq!(hello["you"], "alice");

    let expired = mint("edge-a", "s1", "bob", -5);
    let (status, problem) = refused(&edge.ws("s1", &expired)).await;
    assert_eq!(status, 401);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{problem}"
    );

    let claims = JoinClaims {
        sid: "s1".into(),
        eid: "edge-a".into(),
        pid: "mallory".into(),
        exp: locus_edge::now_unix() + 300,
    };
    let forged = JoinKey::from_edge_token("some-other-secret-0123456789").sign(&claims);
    let (status, problem) = refused(&edge.ws("s1", &forged)).await;
    assert_eq!(status, 401);
    assert_eq!(problem["type"], "urn:locus:problem:join-token-invalid");

    // A valid token's signature on a changed payload.
    let genuine = edge.token("s1", "mallory");
    let signature = genuine.rsplit_once('.').expect("three parts").1;
    let other_payload = JoinKey::from_edge_token(&credential("edge-a")).sign(&JoinClaims {
        exp: u64::MAX / 2,
        ..claims.clone()
    });
    let payload = other_payload.split('.').nth(1).expect("payload");
    let tampered = format!("v1.{payload}.{signature}");
    let (status, _) = refused(&edge.ws("s1", &tampered)).await;
    assert_eq!(status, 401);

    let (status, problem) = refused(&edge.ws("s1", &edge.token("s2", "bob"))).await;
    assert_eq!(status, 403);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("another session")
    );

    // Signed with this edge's key but naming another edge.
    let for_edge_b = JoinKey::from_edge_token(&credential("edge-a")).sign(&JoinClaims {
        eid: "edge-b".into(),
        ..claims.clone()
    });
    let (status, problem) = refused(&edge.ws("s1", &for_edge_b)).await;
    assert_eq!(status, 403);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("another edge")
    );

    let (status, problem) = refused(&format!("ws://{}/v1/sessions/s1/ws", edge.addr)).await;
    assert_eq!(status, 401);
    assert_eq!(problem["type"], "urn:locus:problem:join-token-missing");

    // The token may also come as a bearer header.
    let mut request = format!("ws://{}/v1/sessions/s1/ws", edge.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", edge.token("s1", "carol"))
            .parse()
            .expect("header"),
    );
    let (mut carol, _) = within("carol to join", tokio_tungstenite::connect_async(request))
        .await
        .expect("bearer join");
    presence(&mut carol, &["alice", "carol"]).await;
    presence(&mut alice, &["alice", "carol"]).await;
    assert_eq!(edge.state.hub.participants("s1"), ["alice", "carol"]);
}

/// What a test participant sends: `<sender>:<index>`, text for even indices, binary for
/// odd ones.
fn payload(sender: &str, i: usize) -> Message {
    let text = format!("{sender}:{i}");
    if i.is_multiple_of(2) {
        Message::Text(text.into())
    } else {
        Message::Binary(text.into_bytes().into())
    }
}

#[tokio::test]
async fn three_participants_relay_in_order_with_presence() {
    const N: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    // Queues hold a whole burst: this test is about order (slow consumers are in
    // `slow_consumer.rs`).
    let edge = lone_edge(dir.path(), |s| s.send_queue = 2 * N + 16).await;
    let mut a = edge.join("room", "a").await;
    presence(&mut a, &["a"]).await;
    let mut b = edge.join("room", "b").await;
    presence(&mut a, &["a", "b"]).await;
    presence(&mut b, &["a", "b"]).await;
    let mut c = edge.join("room", "c").await;
    for client in [&mut a, &mut b, &mut c] {
        presence(client, &["a", "b", "c"]).await;
    }

    let mut tasks = tokio::task::JoinSet::new();
    for (name, client) in [("a", a), ("b", b), ("c", c)] {
        let (mut sink, mut stream) = client.split();
        tasks.spawn(async move {
            let send = async {
                for i in 0..N {
                    sink.send(payload(name, i)).await.expect("send");
                }
            };
            let receive = async {
                let mut next: HashMap<String, usize> = HashMap::new();
                let mut received = 0;
                while received < 2 * N {
                    let message = stream.next().await.expect("open").expect("frame");
                    let (text, binary) = match &message {
                        Message::Text(t) => (t.to_string(), false),
                        Message::Binary(b) => (String::from_utf8(b.to_vec()).expect("utf8"), true),
                        _ => continue,
                    };
                    let (sender, index) = text
                        .split_once(':')
                        .unwrap_or_else(|| panic!("{name} got {text}"));
                    let index: usize = index
                        .parse()
                        .unwrap_or_else(|_| panic!("{name} got {text}"));
                    assert_ne!(sender, name, "nobody receives their own messages");
                    let expected = next.entry(sender.to_string()).or_default();
                    assert_eq!(
                        index, *expected,
                        "{name} got {sender}'s messages out of order"
                    );
                    assert_eq!(binary, index % 2 == 1, "frame type kept");
                    *expected += 1;
                    received += 1;
                }
                next
            };
            let ((), next) = tokio::join!(send, receive);
            (name, next, sink.reunite(stream).expect("same socket"))
        });
    }
    let mut clients = HashMap::new();
    while let Some(result) = within("the relay", tasks.join_next()).await {
        let (name, next, client) = result.expect("participant task");
        assert_eq!(
            next.values().copied().collect::<Vec<_>>(),
            [N, N],
            "{name}: {next:?}"
        );
        clients.insert(name, client);
    }

    // C leaves: A and B get the new list.
    let mut c = clients.remove("c").expect("c");
    c.close(None).await.expect("close");
    for name in ["a", "b"] {
        let client = clients.get_mut(name).expect("client");
        let list = presence(client, &["a", "b"]).await;
        assert_eq!(list["you"], name);
    }
}

#[tokio::test]
async fn bounds_close_with_reasons_and_full_sessions_refuse_joiners() {
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = lone_edge(dir.path(), |s| {
        s.max_participants = 2;
        s.max_message_bytes = 1024;
    })
    .await;
    let mut a = edge.join("s", "a").await;
    presence(&mut a, &["a"]).await;
    let mut b = edge.join("s", "b").await;
    presence(&mut b, &["a", "b"]).await;

    let (status, problem) = refused(&edge.ws("s", &edge.token("s", "c"))).await;
    assert_eq!(status, 409);
    assert_eq!(problem["detail"], "session full: at most 2 participants");

    say(&mut a, r#"{"locus":"presence","participants":["fake"]}"#).await;
    let (code, reason) = closed(&mut a).await;
    assert_eq!(code, hub::CLOSE_POLICY);
    assert!(reason.contains("reserved"), "{reason}");

    // A left: there is room for C now.
    presence(&mut b, &["b"]).await;
    let mut c = edge.join("s", "c").await;
    presence(&mut c, &["b", "c"]).await;

    c.send(Message::Binary(vec![0u8; 2048].into()))
        .await
        .expect("send");
    let (code, reason) = closed(&mut c).await;
    assert_eq!(code, hub::CLOSE_TOO_BIG);
    assert_eq!(reason, "message too big: the limit is 1024 bytes");
    presence(&mut b, &["b"]).await;
}

fn audit(entries: &[locus_protocol::SpoolEntry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| {
            let kind = e.body.audit_kind()?;
            Some(match e.body.participant() {
                Some(p) => format!("{kind} {} {p}", e.body.session_id().unwrap_or_default()),
                None => format!("{kind} {}", e.body.session_id().unwrap_or_default()),
            })
        })
        .collect()
}

#[tokio::test]
async fn sessions_linger_then_end_and_every_change_is_spooled_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = lone_edge(dir.path(), |s| s.linger = Duration::from_secs(60)).await;
    let mut a = edge.join("keep", "a").await;
    presence(&mut a, &["a"]).await;
    a.close(None).await.expect("close");
    drop(a);
    let mut connections = edge.state.hub.subscribe_connections();
    within("a's connection to end", connections.wait_for(|n| *n == 0))
        .await
        .expect("connections");
    // Within the linger the session is still there: B joins the same session.
    assert_eq!(edge.state.hub.session_count(), 1);
    let mut b = edge.join("keep", "b").await;
    presence(&mut b, &["b"]).await;
    let entries = edge.state.spool.pending(0, 100).await.expect("pending");
    assert_eq!(
        audit(&entries),
        [
            "session_started keep",
            "participant_joined keep a",
            "participant_left keep a",
            "participant_joined keep b",
        ]
    );

    // A short linger: the session ends when its last participant has gone.
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = lone_edge(dir.path(), |s| s.linger = Duration::from_millis(50)).await;
    let mut sessions = edge.state.hub.subscribe_sessions();
    let mut a = edge.join("brief", "a").await;
    presence(&mut a, &["a"]).await;
    a.close(None).await.expect("close");
    within("the session to end", sessions.wait_for(|n| *n == 0))
        .await
        .expect("sessions");
    eventually("session_ended to be spooled", || async {
        audit(&edge.state.spool.pending(0, 100).await.expect("pending")).len() >= 4
    })
    .await;
    let entries = edge.state.spool.pending(0, 100).await.expect("pending");
    assert_eq!(
        audit(&entries),
        [
            "session_started brief",
            "participant_joined brief a",
            "participant_left brief a",
            "session_ended brief",
        ]
    );
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[tokio::test]
async fn a_draining_edge_refuses_new_sessions_and_keeps_serving_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut edge = lone_edge(dir.path(), |s| s.drain_deadline = Duration::from_secs(600)).await;
    let mut a = edge.join("old", "a").await;
    presence(&mut a, &["a"]).await;
    assert_eq!(http(edge.addr, "GET", "/readyz", None).await.0, 200);

    edge.sigterm();
    eventually("readyz to say draining", || async {
        http(edge.addr, "GET", "/readyz", None).await.0 == 503
    })
    .await;
    assert_eq!(
        http(edge.addr, "GET", "/healthz", None).await,
        (200, "ok".into())
    );

    let (status, problem) = refused(&edge.ws("new", &edge.token("new", "x"))).await;
    assert_eq!(status, 503);
    assert_eq!(problem["detail"], hub::DRAINING);

    // The hosted session still admits joiners and relays.
    let mut b = edge.join("old", "b").await;
    presence(&mut b, &["a", "b"]).await;
    say(&mut b, "still here").await;
    loop {
        if let Message::Text(text) = next_frame(&mut a).await
            && text.as_str() == "still here"
        {
            break;
        }
    }
}

#[tokio::test]
async fn a_full_spool_refuses_new_participants_but_running_sessions_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = lone_edge(dir.path(), |s| s.spool_max_entries = 100).await;
    let mut a = edge.join("running", "a").await;
    presence(&mut a, &["a"]).await;
    let mut b = edge.join("running", "b").await;
    presence(&mut b, &["a", "b"]).await;
    // A long locator outage, compressed: the spool reaches its bound.
    let spool = &edge.state.spool;
    while !spool.is_full() {
        spool
            .append(locus_protocol::SpoolBody::SessionStarted {
                session_id: "filler".into(),
            })
            .await
            .expect("append");
    }

    let (status, problem) = refused(&edge.ws("other", &edge.token("other", "c"))).await;
    assert_eq!(status, 503);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("audit spool full"),
        "{problem}"
    );
    let (status, _) = refused(&edge.ws("running", &edge.token("running", "c"))).await;
    assert_eq!(
        status, 503,
        "new participants of running sessions are refused too"
    );

    // What runs goes on, and is still recorded.
    say(&mut a, "hello").await;
    assert_eq!(next_data(&mut b).await, Message::Text("hello".into()));
    let before = spool.len();
    b.close(None).await.expect("close");
    presence(&mut a, &["a"]).await;
    assert_eq!(
        spool.len(),
        before + 1,
        "the leave is spooled beyond the bound"
    );
}

/// Issue 16, finding 6: a replayed join token took over its connected participant (the
/// real client was closed 4001), recreated a session that had ended, and a token valid
/// for 50 years was accepted.
#[tokio::test]
async fn join_tokens_cannot_be_replayed_outlive_their_session_or_last_for_years() {
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = lone_edge(dir.path(), |s| s.linger = Duration::from_millis(50)).await;
    let mut sessions = edge.state.hub.subscribe_sessions();

    // The legitimate client joins; the same token again is refused, the client kept.
    // Its lifetime is a second short of the locator's: as if issued a second earlier, so
    // it predates the session's end below even when the whole test runs within one
    // second (the edge counts whole seconds, and a token of the end's own second counts
    // as issued after it).
    let token = mint(edge.id(), "s1", "alice", 299);
    let mut alice = connect(&edge.ws("s1", &token)).await;
    presence(&mut alice, &["alice"]).await;
    let (status, problem) = refused(&edge.ws("s1", &token)).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "urn:locus:problem:join-token-in-use");
    let mut bob = edge.join("s1", "bob").await;
    presence(&mut bob, &["alice", "bob"]).await;
    presence(&mut alice, &["alice", "bob"]).await;
    say(&mut alice, "still here").await;
    assert_eq!(
        next_data(&mut bob).await,
        Message::Text("still here".into())
    );

    // Everyone leaves and the session ends: its old tokens do not bring it back.
    alice.close(None).await.expect("close");
    bob.close(None).await.expect("close");
    within("the session to end", sessions.wait_for(|n| *n == 0))
        .await
        .expect("sessions");
    let (status, problem) = refused(&edge.ws("s1", &token)).await;
    assert_eq!(status, 410, "{problem}");
    assert_eq!(problem["type"], "urn:locus:problem:session-ended");
    assert_eq!(edge.state.hub.session_count(), 0);
    // A token the locator issues after the end (a room moved back here) is honoured.
    let fresh = mint(edge.id(), "s1", "carol", 300);
    let mut carol = connect(&edge.ws("s1", &fresh)).await;
    presence(&mut carol, &["carol"]).await;

    // A correctly signed token valid for 50 years is refused.
    let forever = mint(edge.id(), "s2", "mallory", 50 * 365 * 86_400);
    let (status, problem) = refused(&edge.ws("s2", &forever)).await;
    assert_eq!(status, 401, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("lifetime is too long"),
        "{problem}"
    );
}

/// Issue 16, finding 3: idle and slow connections used to hold an edge for as long as the
/// client liked. They are closed after the header-read timeout, a connection over the
/// cap is closed on arrival, and a joined participant's websocket is past both.
#[tokio::test]
async fn idle_connections_are_closed_and_the_cap_holds_while_participants_stay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = lone_edge(dir.path(), |s| {
        s.connections.max_connections = 12;
        s.connections.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut alice = edge.join("s1", "alice").await;
    presence(&mut alice, &["alice"]).await;
    let mut idle = Vec::new();
    for i in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(edge.addr)
            .await
            .expect("connect");
        if i % 2 == 0 {
            // A slowloris sender: the start of a request, then nothing.
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\n").await;
        }
        idle.push(stream);
    }
    for mut stream in idle {
        let mut buffer = [0u8; 256];
        within("the edge closes an idle connection", async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    let status = edge.state.status();
    assert!(
        status.process.refused_connections >= 9,
        "20 idle connections beside one websocket and a cap of 12: {:?}",
        status.process
    );
    // Alice, joined before the flood, is still served.
    say(&mut alice, "still here").await;
    let (code, body) = http(edge.addr, "GET", "/metrics", None).await;
    assert_eq!(code, 200);
    assert!(
        body.contains("edge_http_connections_refused_total{"),
        "{body}"
    );
}
