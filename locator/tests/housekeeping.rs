//! What the locator ends or forgets by itself (issue 16, findings 4 and 9), against an
//! in-process locator over real sockets and real `edge` processes:
//!
//! - sessions nobody joins expire after `limits.unjoined_session_ttl` (4 s here): their joins answer
//!   410 at the locator and at the edge, a joined one stays, and the region's clients are
//!   served at home again;
//! - a session the locator ends while its edge hosts it (the edge failed while its
//!   process lived on) is closed on the edge with 4410, and its tokens refused;
//! - an edge failed for `edges.forget_after` leaves the registry and the admin status,
//!   and the audit trail says so.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{
    ADMIN_TOKEN, TestEdge, TestLocator, eventually, http, register, spawn_edge_with_capacity,
};
use tokio_tungstenite::tungstenite::Message;

/// A client address the test GeoIP database places in the US (region us-east).
const US_CLIENT: &str = "8.8.8.8";

async fn create(loc: &TestLocator) -> Value {
    let response = http()
        .post(loc.url("/v1/sessions"))
        .header("x-forwarded-for", US_CLIENT)
        .json(&json!({}))
        .send()
        .await
        .expect("create");
    assert_eq!(response.status().as_u16(), 201);
    response.json().await.expect("json")
}

async fn session_status(loc: &TestLocator, id: &str) -> (u16, Value) {
    let response = http()
        .get(loc.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .expect("get session");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn admin_status(loc: &TestLocator) -> Value {
    http()
        .get(loc.url("/v1/admin/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin status")
        .json()
        .await
        .expect("json")
}

/// The admin status row of an edge, if listed.
fn edge_row(status: &Value, id: &str) -> Option<Value> {
    status["regions"]
        .as_array()?
        .iter()
        .flat_map(|r| r["edges"].as_array().cloned().unwrap_or_default())
        .find(|e| e["id"] == id)
}

fn ws_url(answer: &Value) -> String {
    format!(
        "{}?token={}",
        answer["ws_url"].as_str().expect("ws_url"),
        answer["join_token"].as_str().expect("token")
    )
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Joins a session with its answer's token; waits for the first presence frame.
async fn join(answer: &Value) -> Client {
    let (mut client, _) = tokio_tungstenite::connect_async(ws_url(answer))
        .await
        .expect("join");
    let frame = tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .expect("presence in time");
    match frame {
        Some(Ok(Message::Text(text))) => assert!(text.contains("\"presence\""), "{text}"),
        other => panic!("expected presence, got {other:?}"),
    }
    client
}

/// The HTTP status of a join refused before the upgrade, and its body.
async fn refused_join(answer: &Value) -> (u16, String) {
    match tokio_tungstenite::connect_async(ws_url(answer)).await {
        Ok(_) => (101, "admitted".into()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (status, body)
        }
        Err(e) => panic!("join: {e}"),
    }
}

/// The close frame a client receives (code and reason), within 20 s.
async fn closed(client: &mut Client) -> (u16, String) {
    let wait = async {
        while let Some(frame) = client.next().await {
            if let Ok(Message::Close(Some(frame))) = frame {
                return (u16::from(frame.code), frame.reason.to_string());
            }
        }
        (0, "no close frame".into())
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("closed in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_nobody_joins_expire_and_stop_counting_as_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("locator.sqlite").display().to_string();
    let loc = TestLocator::start_edited(dir.path(), &url, "30s", "1s", "127.0.0.1:0", |yaml| {
        yaml.replace(
            "locates_per_minute: off",
            "locates_per_minute: off, unjoined_session_ttl: 4s",
        )
    })
    .await;
    let home = spawn_edge_with_capacity(
        &[loc.addr],
        "us-east-1",
        "us-east",
        &dir.path().join("spool-us"),
        10,
    );
    let _away = spawn_edge_with_capacity(
        &[loc.addr],
        "eu-west-1",
        "eu-west",
        &dir.path().join("spool-eu"),
        100,
    );
    eventually("both edges linked and reporting", || async {
        let status = admin_status(&loc).await;
        ["us-east-1", "eu-west-1"].iter().all(|id| {
            edge_row(&status, id).is_some_and(|e| e["state"] == "active" && !e["load"].is_null())
        })
    })
    .await;

    // One session somebody joins, then twenty nobody joins.
    let joined = create(&loc).await;
    assert_eq!(joined["edge"]["id"], "us-east-1", "{joined}");
    let mut participant = join(&joined).await;
    // The join reaches the locator through the edge's spool (that is what keeps the
    // session from expiring): wait for it rather than race the TTL.
    let joined_id = joined["session_id"].as_str().expect("id").to_string();
    eventually("the join relayed to the locator", || async {
        let audit: Value = http()
            .get(loc.url(&format!("/v1/admin/audit?session={joined_id}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("audit")
            .json()
            .await
            .expect("json");
        audit.to_string().contains("participant_joined")
    })
    .await;
    let mut unjoined = Vec::new();
    for _ in 0..20 {
        unjoined.push(create(&loc).await);
    }
    let at_home: Vec<&Value> = unjoined
        .iter()
        .filter(|a| a["edge"]["id"] == "us-east-1")
        .collect();
    assert!(!at_home.is_empty(), "some went to the home edge");
    // Within the TTL they are open sessions a client could still join (the youngest, so
    // that a slow machine does not race the TTL).
    let youngest = unjoined.last().expect("created");
    let (status, _) = session_status(&loc, youngest["session_id"].as_str().expect("id")).await;
    assert_eq!(status, 200);

    // After the TTL every unjoined one has ended, like an ended session.
    eventually("the unjoined sessions to expire", || async {
        for answer in &unjoined {
            let (status, _) =
                session_status(&loc, answer["session_id"].as_str().expect("id")).await;
            if status != 410 {
                return false;
            }
        }
        true
    })
    .await;
    let (_, problem) = session_status(&loc, unjoined[0]["session_id"].as_str().expect("id")).await;
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("session-ended")),
        "{problem}"
    );
    // The home edge was told: the tokens handed out with them no longer admit anyone.
    let (status, body) = refused_join(at_home[0]).await;
    assert_eq!(status, 410, "{body}");
    assert!(body.contains("session-ended"), "{body}");

    // The joined session is untouched: open at the locator, its participant connected.
    let (status, _) = session_status(&loc, joined["session_id"].as_str().expect("id")).await;
    assert_eq!(status, 200);
    let frame = tokio::time::timeout(Duration::from_millis(300), participant.next()).await;
    assert!(
        frame.is_err(),
        "the participant was not disturbed: {frame:?}"
    );

    // They no longer count as load: the home edge counts its one hosted session, and a
    // client of its region is served at home.
    eventually(
        "the home edge's load to be its joined session only",
        || async {
            edge_row(&admin_status(&loc).await, "us-east-1").is_some_and(|e| {
                e["load"]["sessions"] == 1
                    && e["pending_assignments"] == 0
                    && e["takes_new_sessions"] == true
            })
        },
    )
    .await;
    let next = create(&loc).await;
    assert_eq!(next["edge"]["id"], "us-east-1", "{next}");
    assert_eq!(next["fallback"], false, "{next}");

    let audit: Value = http()
        .get(loc.url("/v1/admin/audit?edge=us-east-1&limit=1000"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("audit")
        .json()
        .await
        .expect("json");
    assert!(
        audit.to_string().contains("sessions_expired"),
        "the expiry is audited: {audit}"
    );
    drop(home);
    loc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_locator_ends_is_closed_on_its_edge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("locator.sqlite").display().to_string();
    let loc = TestLocator::start_edited(dir.path(), &url, "30s", "1s", "127.0.0.1:0", |y| y).await;
    let edge = spawn_edge_with_capacity(
        &[loc.addr],
        "us-east-1",
        "us-east",
        &dir.path().join("spool"),
        100,
    );
    eventually("the edge linked", || async {
        edge_row(&admin_status(&loc).await, "us-east-1").is_some_and(|e| e["state"] == "active")
    })
    .await;
    let answer = create(&loc).await;
    assert_eq!(answer["edge"]["id"], "us-east-1");
    let mut participant = join(&answer).await;

    // The edge's process stops (SIGSTOP): its link falls silent, its /healthz does not
    // answer, and the locator fails it and ends its ad-hoc session, while the process
    // (and its participant) live on.
    let pid = edge.child.id().to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {name} {pid}");
    };
    signal("-STOP");
    let session_id = answer["session_id"].as_str().expect("id").to_string();
    let ended = async {
        loop {
            if session_status(&loc, &session_id).await.0 == 410 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let within = tokio::time::timeout(Duration::from_secs(30), ended).await;
    signal("-CONT");
    within.expect("the locator ended the session of the failed edge");

    // Back, the edge hears that the session ended: its participant is closed with 4410,
    // and the session's tokens are refused like those of a session it ended itself.
    let (code, reason) = closed(&mut participant).await;
    assert_eq!(code, 4410, "{reason}");
    assert!(reason.contains("ended by the locator"), "{reason}");
    let (status, body) = refused_join(&answer).await;
    assert_eq!(status, 410, "{body}");
    loc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_failed_for_forget_after_is_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("locator.sqlite").display().to_string();
    let loc = TestLocator::start_edited(dir.path(), &url, "1s", "1s", "127.0.0.1:0", |yaml| {
        yaml.replace(
            "  probe_timeout: 1s\n",
            "  probe_timeout: 1s\n  forget_after: 2s\n",
        )
    })
    .await;
    assert_eq!(
        loc.state.routing().config.edges.forget_after,
        Duration::from_secs(2)
    );
    let mut gone = TestEdge::connect(loc.addr, register("gone-1", "eu-west", 10)).await;
    gone.report(0).await;
    let mut stays = TestEdge::connect(loc.addr, register("stays-1", "eu-west", 10)).await;
    stays.report(0).await;
    eventually("both listed", || async {
        let status = admin_status(&loc).await;
        edge_row(&status, "gone-1").is_some() && edge_row(&status, "stays-1").is_some()
    })
    .await;
    // Its link closes and its URL answers nothing: failed at once.
    drop(gone);
    eventually("the closed edge failed", || async {
        edge_row(&admin_status(&loc).await, "gone-1").is_some_and(|e| e["state"] == "failed")
    })
    .await;
    // Two seconds later it is forgotten; the live edge is not.
    let stays_alive = async {
        loop {
            stays.report(0).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let forgotten = eventually("the failed edge forgotten", || async {
        let status = admin_status(&loc).await;
        edge_row(&status, "gone-1").is_none() && edge_row(&status, "stays-1").is_some()
    });
    tokio::select! {
        () = forgotten => {}
        () = stays_alive => unreachable!(),
    }
    assert!(
        loc.state
            .store
            .edge("gone-1")
            .await
            .expect("store")
            .is_none()
    );
    let audit_kinds = || async {
        let audit = loc
            .state
            .store
            .audit(&locus_locator::store::AuditFilter {
                edge_id: Some("gone-1".into()),
                ..Default::default()
            })
            .await
            .expect("audit");
        audit.into_iter().map(|r| r.kind).collect::<Vec<String>>()
    };
    // The registry forgets the edge before the audit row is written: wait for the row.
    eventually("the forgetting audited", || async {
        audit_kinds().await.iter().any(|k| k == "edge_forgotten")
    })
    .await;
    let kinds = audit_kinds().await;
    let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
    assert!(
        kinds.contains(&"edge_failed"),
        "the history stays: {kinds:?}"
    );
    // An edge that comes back registers afresh.
    let back = TestEdge::connect(loc.addr, register("gone-1", "eu-west", 10)).await;
    eventually("the returning edge listed again", || async {
        edge_row(&admin_status(&loc).await, "gone-1").is_some_and(|e| e["state"] == "active")
    })
    .await;
    drop(back);
    loc.stop().await;
}
