//! The locator over real sockets: client API, edge link, fallback, suspension, grace
//! period, rooms under concurrency, restart on the same SQLite file.

mod support;

use locus_protocol::join_token::JoinKey;
use locus_protocol::{EdgeMessage, LocatorMessage, SpoolBody, SpoolEntry};
use serde_json::{Value, json};
use support::*;

async fn locate(loc: &TestLocator, forwarded_for: Option<&str>) -> (u16, Value) {
    let mut request = http().get(loc.url("/v1/locate"));
    if let Some(xff) = forwarded_for {
        request = request.header("x-forwarded-for", xff);
    }
    let response = request.send().await.expect("locate");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

async fn create(loc: &TestLocator, body: Value, forwarded_for: &str) -> (u16, Value) {
    let response = http()
        .post(loc.url("/v1/sessions"))
        .header("x-forwarded-for", forwarded_for)
        .json(&body)
        .send()
        .await
        .expect("create");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

async fn get_session(loc: &TestLocator, id: &str) -> (u16, Value) {
    let response = http()
        .get(loc.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

async fn admin(loc: &TestLocator, edge: &str, action: &str) -> (u16, Value) {
    let response = http()
        .post(loc.url(&format!("/v1/admin/edges/{edge}/{action}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"actor": "alice"}))
        .send()
        .await
        .expect("admin");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

/// A tiny HTTP server answering `/healthz` like a live edge: the locator's probe finds
/// it alive, so a cut link stays `link-lost` for the grace period.
async fn live_edge_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn unauthenticated_edges_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    for token in [None, Some("wrong-token-0123456789")] {
        let err = connect_link(loc.addr, token).await.expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("401"), "{text}");
    }
    assert!(loc.state.registry.snapshot().edges.is_empty());
    loc.stop().await;
}

#[tokio::test]
async fn region_from_a_trusted_proxy_and_fallback_when_the_region_has_no_edge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let (status, body) = locate(&loc, Some("81.2.69.142")).await;
    assert_eq!(status, 503, "no edge at all: {body}");
    assert_eq!(body["type"], "urn:locus:problem:no-edge-available");

    let mut us = TestEdge::connect(loc.addr, register("us-1", "us-east", 100)).await;
    us.report(0).await;
    // GB via X-Forwarded-For from loopback (a trusted proxy): region eu-west, which has no
    // edge: eu-west falls back to eu-central (no edge) then us-east.
    let (status, body) = locate(&loc, Some("203.0.113.50, 81.2.69.142")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["region"], "eu-west");
    assert_eq!(body["rule"], "country");
    assert_eq!(body["fallback"], true);
    assert_eq!(body["reason_code"], "region-unavailable");
    assert_eq!(body["edge"]["id"], "us-1");
    assert_eq!(body["edge"]["region"], "us-east");
    assert!(
        body["reason"].as_str().expect("reason").contains("eu-west"),
        "{body}"
    );
    // ICE servers come from the serving edge's region: us-east's TURN secret is unset in
    // tests and its fallback has no relay, so it has none to give.
    assert_eq!(body["ice_servers"], json!([]));

    // An eu-west edge arrives: GB clients stay home.
    let mut eu = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    eu.report(0).await;
    wait_for(&loc.state, "eu-1 active", |s| {
        edge_state(s, "eu-1") == Some("active")
    })
    .await;
    let (_, body) = locate(&loc, Some("81.2.69.142")).await;
    assert_eq!(body["edge"]["id"], "eu-1");
    assert_eq!(body["fallback"], false);
    assert_eq!(body["reason_code"], "in-region");
    // eu-west's pool is STUN only: STUN is handed out, without credentials.
    assert_eq!(
        body["ice_servers"][0]["urls"][0],
        "stun:stun.eu-west.example.net"
    );
    assert!(body["ice_servers"][0].get("credential").is_none());
    loc.stop().await;
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut edge = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    edge.report(0).await;
    // Make loopback untrusted by installing a config without trusted proxies.
    let mut config = loc.state.routing().config.clone();
    config.trusted_proxies.clear();
    loc.state.apply_config(config);
    let (_, body) = locate(&loc, Some("81.2.69.142")).await;
    assert_eq!(
        body["region"], "us-east",
        "the spoofed GB address must be ignored: {body}"
    );
    assert_eq!(body["rule"], "default");
    // Garbage in the header from a trusted proxy is a clear 400.
    let mut config = loc.state.routing().config.clone();
    config.trusted_proxies = vec!["127.0.0.0/8".parse().expect("net")];
    loc.state.apply_config(config);
    let (status, body) = locate(&loc, Some("81.2.69.142, <script>")).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("X-Forwarded-For")
    );
    loc.stop().await;
}

#[tokio::test]
async fn a_dead_edge_is_failed_and_answers_fall_back_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut eu = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    let mut de = TestEdge::connect(loc.addr, register("de-1", "eu-central", 100)).await;
    eu.report(0).await;
    de.report(0).await;
    let (status, session) = create(&loc, json!({}), "81.2.69.142").await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["edge"]["id"], "eu-1");
    let session_id = session["session_id"].as_str().expect("id").to_string();
    // The token verifies on the edge side, offline, for this session and edge only.
    let key = JoinKey::from_edge_token(&edge_credential("eu-1", "eu-west"));
    let token = session["join_token"].as_str().expect("token");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(key.verify(token, &session_id, "eu-1", now).is_ok());
    assert!(key.verify(token, &session_id, "de-1", now).is_err());
    // Another edge's key does not verify it either.
    let other = JoinKey::from_edge_token(&edge_credential("de-1", "eu-central"));
    assert!(other.verify(token, &session_id, "eu-1", now).is_err());
    assert!(
        session["ws_url"]
            .as_str()
            .expect("ws_url")
            .ends_with(&format!("/v1/sessions/{session_id}/ws"))
    );

    // The edge process dies: its socket closes and its /healthz (port 1) does not answer.
    drop(eu);
    wait_for(&loc.state, "eu-1 failed", |s| {
        edge_state(s, "eu-1") == Some("failed")
    })
    .await;
    let (_, body) = locate(&loc, Some("81.2.69.142")).await;
    assert_eq!(body["edge"]["id"], "de-1");
    assert_eq!(body["fallback"], true);
    assert_eq!(body["reason_code"], "region-unavailable");
    // Its ad-hoc session ended: 410, the client starts a new one.
    let (status, body) = get_session(&loc, &session_id).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["type"], "urn:locus:problem:session-ended");
    let (status, _) = get_session(&loc, "no-such-session").await;
    assert_eq!(status, 404);
    loc.stop().await;
}

#[tokio::test]
async fn a_keyed_room_on_a_failed_edge_moves_on_the_next_join() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut eu = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    let mut de = TestEdge::connect(loc.addr, register("de-1", "eu-central", 100)).await;
    eu.report(0).await;
    de.report(0).await;
    let (status, room) = create(&loc, json!({"key": "standup"}), "81.2.69.142").await;
    assert_eq!(status, 201);
    assert_eq!(room["edge"]["id"], "eu-1");
    drop(eu);
    wait_for(&loc.state, "eu-1 failed", |s| {
        edge_state(s, "eu-1") == Some("failed")
    })
    .await;
    let (status, joined) = create(&loc, json!({"key": "standup"}), "81.2.69.142").await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["session_id"], room["session_id"], "same room");
    assert_eq!(joined["created"], false);
    assert_eq!(joined["edge"]["id"], "de-1", "moved off the failed edge");
    let (status, again) = get_session(&loc, room["session_id"].as_str().expect("id")).await;
    assert_eq!(status, 200);
    assert_eq!(again["edge"]["id"], "de-1");
    loc.stop().await;
}

/// A draining edge admits joins only of the sessions it still runs: a room it still runs
/// stays there (its participants are there), a room everyone left moves on the next join
/// instead of sending clients to an edge that refuses them until its drain deadline.
#[tokio::test]
async fn a_room_its_draining_edge_no_longer_runs_moves_on_the_next_join() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut eu = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    let mut de = TestEdge::connect(loc.addr, register("de-1", "eu-central", 100)).await;
    eu.report(0).await;
    de.report(0).await;
    let (_, live) = create(&loc, json!({"key": "live"}), "81.2.69.142").await;
    let (_, left) = create(&loc, json!({"key": "left"}), "81.2.69.142").await;
    assert_eq!(live["edge"]["id"], "eu-1");
    assert_eq!(left["edge"]["id"], "eu-1");
    let id = |v: &Value| v["session_id"].as_str().expect("id").to_string();
    // What the edge spooled: both rooms started, everyone left "left" and it ended.
    let entry = |seq: u64, body: SpoolBody| SpoolEntry {
        seq,
        at_unix_ms: 1_700_000_000_000 + seq as i64,
        body,
    };
    let entries = vec![
        entry(
            1,
            SpoolBody::SessionStarted {
                session_id: id(&live),
            },
        ),
        entry(
            2,
            SpoolBody::SessionStarted {
                session_id: id(&left),
            },
        ),
        entry(
            3,
            SpoolBody::SessionEnded {
                session_id: id(&left),
            },
        ),
    ];
    send(&mut eu.ws, &EdgeMessage::Spool { entries }).await;
    assert!(matches!(
        next_message(&mut eu.ws).await,
        Some(LocatorMessage::Ack { seq: 3 })
    ));
    send(
        &mut eu.ws,
        &EdgeMessage::Draining {
            deadline_unix_ms: u64::MAX / 2,
        },
    )
    .await;
    wait_for(&loc.state, "eu-1 draining", |s| {
        edge_state(s, "eu-1") == Some("draining")
    })
    .await;

    let (status, joined) = create(&loc, json!({"key": "live"}), "81.2.69.142").await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(
        joined["edge"]["id"], "eu-1",
        "its participants are still there"
    );
    let (status, moved) = create(&loc, json!({"key": "left"}), "81.2.69.142").await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["session_id"], left["session_id"], "same room");
    assert_eq!(
        moved["edge"]["id"], "de-1",
        "moved off the draining edge: {moved}"
    );
    assert!(
        moved["reason"]
            .as_str()
            .is_some_and(|r| r.contains("draining")),
        "{moved}"
    );
    let (status, again) = get_session(&loc, &id(&left)).await;
    assert_eq!(status, 200);
    assert_eq!(again["edge"]["id"], "de-1");
    loc.stop().await;
}

#[tokio::test]
async fn suspended_edges_are_skipped_but_used_when_they_are_the_last_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut a = TestEdge::connect(loc.addr, register("eu-a", "eu-west", 100)).await;
    let mut b = TestEdge::connect(loc.addr, register("eu-b", "eu-west", 100)).await;
    a.report(0).await;
    b.report(0).await;
    let (status, body) = admin(&loc, "eu-a", "suspend").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    assert_eq!(body["state"], "suspended");
    let (_, again) = admin(&loc, "eu-a", "suspend").await;
    assert_eq!(again["changed"], false, "idempotent");
    for _ in 0..20 {
        let (_, body) = locate(&loc, Some("81.2.69.142")).await;
        assert_eq!(
            body["edge"]["id"], "eu-b",
            "never the suspended edge while another is active"
        );
    }
    // Only the suspended edge is left anywhere: it is used, and the answer says so.
    drop(b);
    wait_for(&loc.state, "eu-b failed", |s| {
        edge_state(s, "eu-b") == Some("failed")
    })
    .await;
    let (status, body) = locate(&loc, Some("81.2.69.142")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["edge"]["id"], "eu-a");
    assert_eq!(body["reason_code"], "only-suspended");
    // Audited once, with the actor.
    let audit = loc
        .state
        .store
        .audit(&locus_locator::store::AuditFilter {
            edge_id: Some("eu-a".into()),
            ..Default::default()
        })
        .await
        .expect("audit");
    let suspensions: Vec<_> = audit
        .iter()
        .filter(|a| a.kind == "edge_suspended")
        .collect();
    assert_eq!(suspensions.len(), 1);
    assert_eq!(suspensions[0].actor.as_deref(), Some("alice"));
    let (_, resumed) = admin(&loc, "eu-a", "resume").await;
    assert_eq!(resumed["state"], "active");
    let (status, _) = admin(&loc, "nobody", "suspend").await;
    assert_eq!(status, 404);
    let unauthorized = http()
        .post(loc.url("/v1/admin/edges/eu-a/suspend"))
        .send()
        .await
        .expect("post");
    assert_eq!(unauthorized.status().as_u16(), 401);
    loc.stop().await;
}

#[tokio::test]
async fn during_the_grace_period_joins_route_to_a_link_lost_edge_but_new_sessions_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut reg = register("eu-1", "eu-west", 100);
    reg.public_url = live_edge_url().await;
    let mut eu = TestEdge::connect(loc.addr, reg).await;
    let mut de = TestEdge::connect(loc.addr, register("de-1", "eu-central", 100)).await;
    eu.report(0).await;
    de.report(0).await;
    let (_, session) = create(&loc, json!({}), "81.2.69.142").await;
    assert_eq!(session["edge"]["id"], "eu-1");
    // Only the link is cut: the edge still answers /healthz, so it stays link-lost.
    drop(eu);
    wait_for(&loc.state, "eu-1 link-lost", |s| {
        edge_state(s, "eu-1") == Some("link-lost")
    })
    .await;
    let id = session["session_id"].as_str().expect("id");
    let (status, joined) = get_session(&loc, id).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(
        joined["edge"]["id"], "eu-1",
        "joins still route to the link-lost edge"
    );
    let (_, new) = create(&loc, json!({}), "81.2.69.142").await;
    assert_eq!(new["edge"]["id"], "de-1", "new sessions go elsewhere");
    assert_eq!(new["fallback"], true);
    // The edge reconnects within the grace period: active again, nothing lost.
    let mut back = register("eu-1", "eu-west", 100);
    back.public_url = joined["edge"]["url"].as_str().expect("url").to_string();
    let mut eu = TestEdge::connect(loc.addr, back).await;
    eu.report(1).await;
    wait_for(&loc.state, "eu-1 active", |s| {
        edge_state(s, "eu-1") == Some("active")
    })
    .await;
    let (status, _) = get_session(&loc, id).await;
    assert_eq!(status, 200);
    loc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_creates_with_one_key_make_one_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut a = TestEdge::connect(loc.addr, register("eu-a", "eu-west", 1000)).await;
    let mut b = TestEdge::connect(loc.addr, register("eu-b", "eu-west", 1000)).await;
    a.report(0).await;
    b.report(0).await;
    let client = http();
    let url = loc.url("/v1/sessions");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let client = client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let response = client
                .post(url)
                .header("x-forwarded-for", "81.2.69.142")
                .json(&json!({"key": "pairing-42"}))
                .send()
                .await
                .expect("post");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (status, body)
        });
    }
    let mut ids = std::collections::HashSet::new();
    let mut edges = std::collections::HashSet::new();
    let mut created = 0;
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.expect("task");
        assert!(status == 201 || status == 200, "{status} {body}");
        created += usize::from(body["created"] == true);
        ids.insert(body["session_id"].as_str().expect("id").to_string());
        edges.insert(body["edge"]["id"].as_str().expect("edge").to_string());
    }
    assert_eq!(ids.len(), 1, "one room");
    assert_eq!(edges.len(), 1, "one edge for the room");
    assert_eq!(created, 1, "exactly one create");
    loc.stop().await;
}

#[tokio::test]
async fn sessions_and_suspensions_survive_a_locator_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut a = TestEdge::connect(loc.addr, register("eu-a", "eu-west", 100)).await;
    let mut b = TestEdge::connect(loc.addr, register("eu-b", "eu-west", 100)).await;
    a.report(0).await;
    b.report(0).await;
    admin(&loc, "eu-a", "suspend").await;
    let (_, session) = create(&loc, json!({"key": "room-1"}), "81.2.69.142").await;
    assert_eq!(session["edge"]["id"], "eu-b");
    let id = session["session_id"].as_str().expect("id").to_string();
    drop((a, b));
    loc.stop().await;

    let loc = TestLocator::start(dir.path()).await;
    // Before the edges reconnect, a join is told to retry shortly rather than losing the
    // room.
    let (status, _) = get_session(&loc, &id).await;
    assert_eq!(status, 503);
    let mut a = TestEdge::connect(loc.addr, register("eu-a", "eu-west", 100)).await;
    let mut b = TestEdge::connect(loc.addr, register("eu-b", "eu-west", 100)).await;
    a.report(0).await;
    b.report(0).await;
    assert!(
        matches!(
            a.welcome,
            LocatorMessage::Welcome {
                suspended: true,
                ..
            }
        ),
        "suspension survived"
    );
    assert_eq!(edge_state(&loc.state, "eu-a"), Some("suspended"));
    let (status, body) = get_session(&loc, &id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["edge"]["id"], "eu-b");
    let (_, again) = create(&loc, json!({"key": "room-1"}), "81.2.69.142").await;
    assert_eq!(again["session_id"], id.as_str());
    loc.stop().await;
}

#[tokio::test]
async fn malformed_oversized_and_out_of_order_messages_close_only_that_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut good = TestEdge::connect(loc.addr, register("good", "eu-west", 100)).await;
    good.report(0).await;

    // Malformed JSON.
    let mut bad = TestEdge::connect(loc.addr, register("bad-1", "eu-west", 100)).await;
    use futures_util::SinkExt;
    bad.ws
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "{not json".into(),
        ))
        .await
        .expect("send");
    assert!(closed_reason(&mut bad.ws).await.contains("malformed"));

    // Register twice.
    let mut twice = TestEdge::connect(loc.addr, register("bad-2", "eu-west", 100)).await;
    send(
        &mut twice.ws,
        &EdgeMessage::Register(register("bad-2", "eu-west", 100)),
    )
    .await;
    assert!(
        closed_reason(&mut twice.ws)
            .await
            .contains("register sent twice")
    );

    // Spool entries going backwards.
    let mut backwards = TestEdge::connect(loc.addr, register("bad-3", "eu-west", 100)).await;
    let entry = |seq| SpoolEntry {
        seq,
        at_unix_ms: 1,
        body: SpoolBody::SessionStarted {
            session_id: "s".into(),
        },
    };
    send(
        &mut backwards.ws,
        &EdgeMessage::Spool {
            entries: vec![entry(5), entry(4)],
        },
    )
    .await;
    assert!(
        closed_reason(&mut backwards.ws)
            .await
            .contains("out of order")
    );

    // Oversized frame (over MAX_FRAME_BYTES).
    let mut big = TestEdge::connect(loc.addr, register("bad-4", "eu-west", 100)).await;
    let huge = "x".repeat(locus_protocol::MAX_FRAME_BYTES + 1024);
    let _ = big
        .ws
        .send(tokio_tungstenite::tungstenite::Message::Text(huge.into()))
        .await;
    let _ = closed_reason(&mut big.ws).await;

    // A message before register on a fresh link.
    let mut early = connect_link(loc.addr, Some(&edge_credential("bad-6", "eu-west")))
        .await
        .expect("link");
    send(
        &mut early,
        &EdgeMessage::Report(locus_protocol::LoadReport {
            cpu: 0.0,
            lag_ms: 0.0,
            connections: 0,
            sessions: 0,
            ..Default::default()
        }),
    )
    .await;
    assert!(
        closed_reason(&mut early)
            .await
            .contains("first message must be register")
    );

    // Unknown region.
    let mut lost = connect_link(loc.addr, Some(&edge_credential("bad-5", "mars")))
        .await
        .expect("link");
    send(
        &mut lost,
        &EdgeMessage::Register(register("bad-5", "mars", 100)),
    )
    .await;
    assert!(
        closed_reason(&mut lost)
            .await
            .contains("not in the locator's regions.yaml")
    );

    // The good edge was never disturbed: it still reports and gets answers.
    good.report(3).await;
    send(
        &mut good.ws,
        &EdgeMessage::Spool {
            entries: vec![entry(1), entry(2)],
        },
    )
    .await;
    assert_eq!(
        next_message(&mut good.ws).await,
        Some(LocatorMessage::Ack { seq: 2 })
    );
    assert_eq!(edge_state(&loc.state, "good"), Some("active"));
    loc.stop().await;
}

#[tokio::test]
async fn an_edge_registering_again_replaces_its_old_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut first = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    let mut second = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    assert!(
        closed_reason(&mut first.ws)
            .await
            .contains("replaced by a newer link")
    );
    second.report(0).await;
    // A round trip on the new link: by then the old link's close was handled, and it did
    // not make the edge link-lost (events of a replaced link are ignored).
    send(&mut second.ws, &EdgeMessage::Spool { entries: vec![] }).await;
    assert_eq!(
        next_message(&mut second.ws).await,
        Some(LocatorMessage::Ack { seq: 0 })
    );
    assert_eq!(edge_state(&loc.state, "eu-1"), Some("active"));
    assert_eq!(loc.state.registry.snapshot().edges.len(), 1);
    loc.stop().await;
}

#[tokio::test]
async fn spool_entries_are_stored_once_and_acknowledged_after_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut edge = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    let entries: Vec<SpoolEntry> = (1..=5)
        .map(|seq| SpoolEntry {
            seq,
            at_unix_ms: 1_700_000_000_000 + seq as i64,
            body: SpoolBody::ParticipantJoined {
                session_id: "s1".into(),
                participant: format!("p{seq}"),
            },
        })
        .collect();
    send(
        &mut edge.ws,
        &EdgeMessage::Spool {
            entries: entries.clone(),
        },
    )
    .await;
    assert_eq!(
        next_message(&mut edge.ws).await,
        Some(LocatorMessage::Ack { seq: 5 })
    );
    // Resent after a reconnect (the edge was not sure of the ack): stored once.
    drop(edge);
    let mut edge = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    assert!(
        matches!(edge.welcome, LocatorMessage::Welcome { acked_seq: 5, .. }),
        "{:?}",
        edge.welcome
    );
    send(&mut edge.ws, &EdgeMessage::Spool { entries }).await;
    assert_eq!(
        next_message(&mut edge.ws).await,
        Some(LocatorMessage::Ack { seq: 5 })
    );
    let audit = loc
        .state
        .store
        .audit(&locus_locator::store::AuditFilter {
            edge_id: Some("eu-1".into()),
            ..Default::default()
        })
        .await
        .expect("audit");
    let mut seqs: Vec<u64> = audit
        .iter()
        .filter(|a| a.source == locus_locator::store::AuditSource::Edge)
        .filter_map(|a| a.seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "each key stored once");
    loc.stop().await;
}

#[tokio::test]
async fn operations_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let health = http()
        .get(loc.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let ready: Value = http()
        .get(loc.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["ready"], true, "{ready}");
    let _ = locate(&loc, Some("81.2.69.142")).await;
    let metrics = http()
        .get(loc.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("locator_http_requests_total{route=\"/v1/locate\",status=\"503\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("locator_answers_total{region=\"eu-west\",rule=\"country\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("locator_edges{state=\"active\"} 0"));
    // Explain needs the admin token and explains.
    let refused = http()
        .get(loc.url("/v1/admin/explain?ip=81.2.69.142"))
        .send()
        .await
        .expect("explain");
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let mut edge = TestEdge::connect(loc.addr, register("de-1", "eu-central", 100)).await;
    edge.report(2).await;
    wait_for(&loc.state, "report", |s| {
        s.registry
            .snapshot()
            .edge("de-1")
            .is_some_and(|e| e.load().is_some())
    })
    .await;
    let explained: Value = http()
        .get(loc.url("/v1/admin/explain?ip=81.2.69.142"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("explain")
        .json()
        .await
        .expect("json");
    assert_eq!(explained["geoip"]["country"], "GB");
    assert_eq!(explained["geoip"]["rule"], "country");
    assert_eq!(explained["answer"]["edge"], "de-1");
    assert_eq!(explained["answer"]["fallback"], true);
    let candidate = &explained["candidates"][0];
    assert_eq!(candidate["edge"], "de-1");
    assert_eq!(candidate["load"]["sessions"], 2);
    assert!(candidate["report_age_ms"].is_number());
    let bad: Value = http()
        .get(loc.url("/v1/admin/explain?ip=999.1.1.1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("explain")
        .json()
        .await
        .expect("json");
    assert_eq!(bad["status"], 400);
    loc.stop().await;
}

/// The bodies of `POST /v1/sessions` and the admin edge actions are `Option<object>` in
/// the OpenAPI document: `null` is no body; an array is refused (serde would read
/// `[null, null]` as the struct's fields: schemathesis found it answered 201).
#[tokio::test]
async fn optional_bodies_take_null_and_refuse_arrays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut edge = TestEdge::connect(loc.addr, register("us-1", "us-east", 100)).await;
    edge.report(0).await;
    let (status, body) = create(&loc, Value::Null, "8.8.8.8").await;
    assert_eq!(status, 201, "null is no body: {body}");
    for refused in [json!([null, null]), json!(["room-1", "us-east"]), json!(42)] {
        let (status, body) = create(&loc, refused.clone(), "8.8.8.8").await;
        assert_eq!(status, 400, "{refused}: {body}");
        assert_eq!(body["type"], "urn:locus:problem:bad-body");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("JSON object")),
            "{body}"
        );
    }
    // `5.0` is an integer to JSON Schema (the document says `integer`); `1.5` is not.
    for (sent, expected) in [
        (json!(null), 200),
        (json!(["alice", 5]), 400),
        (json!({"deadline_secs": 5.0}), 200),
        (json!({"deadline_secs": 1.5}), 400),
        (json!({"deadline_secs": -1}), 400),
    ] {
        let response = http()
            .post(loc.url("/v1/admin/edges/us-1/suspend"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&sent)
            .send()
            .await
            .expect("admin");
        assert_eq!(response.status().as_u16(), expected, "{sent}");
    }
    loc.stop().await;
}
