//! The admin API and page over real sockets: auth (bearer and page session), suspend,
//! resume and drain applied to selection and audited, the audit log's filters and pages,
//! the region status with fallback traffic, the live event stream, and shutdown.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use locus_geo::{Config, GeoResolver};
use locus_locator::state::{AppState, Secrets};
use locus_locator::store::Store;
use locus_protocol::{EdgeMessage, LocatorMessage, SpoolBody, SpoolEntry};
use serde_json::{Value, json};
use support::*;

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn status_bearer(loc: &TestLocator) -> Value {
    let (code, body) = json_of(
        http()
            .get(loc.url("/v1/admin/status"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("status"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    body
}

fn region<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("region {id} in {status}"))
}

fn edge_row<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .flat_map(|r| r["edges"].as_array().expect("edges"))
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("edge {id} in {status}"))
}

async fn action(loc: &TestLocator, edge: &str, what: &str) -> (u16, Value) {
    json_of(
        http()
            .post(loc.url(&format!("/v1/admin/edges/{edge}/{what}")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"actor": "alice"}))
            .send()
            .await
            .expect("action"),
    )
    .await
}

async fn locate_from(loc: &TestLocator, ip: &str) -> Value {
    let (code, body) = json_of(
        http()
            .get(loc.url("/v1/locate"))
            .header("x-forwarded-for", ip)
            .send()
            .await
            .expect("locate"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    body
}

async fn audit(loc: &TestLocator, query: &str) -> (u16, Value) {
    json_of(
        http()
            .get(loc.url(&format!("/v1/admin/audit?{query}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("audit"),
    )
    .await
}

#[tokio::test]
async fn the_admin_api_and_page_need_the_token_or_a_signed_in_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut edge = TestEdge::connect(loc.addr, register("eu-a", "eu-west", 100)).await;
    edge.report(0).await;

    // No credentials, or a wrong bearer token: 401 problem+json on every admin route.
    for path in [
        "/v1/admin/status",
        "/v1/admin/events",
        "/v1/admin/audit",
        "/v1/admin/explain?ip=81.2.69.142",
    ] {
        let response = raw_client().get(loc.url(path)).send().await.expect("get");
        assert_eq!(response.status().as_u16(), 401, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let wrong = raw_client()
            .get(loc.url(path))
            .bearer_auth("test-admin-token-0123456780")
            .send()
            .await
            .expect("get");
        assert_eq!(wrong.status().as_u16(), 401, "{path}");
    }
    // A forged cookie is no session.
    let forged = raw_client()
        .get(loc.url("/v1/admin/status"))
        .header("cookie", format!("locus_admin={ADMIN_TOKEN}"))
        .send()
        .await
        .expect("get");
    assert_eq!(forged.status().as_u16(), 401);

    // The page shows the sign-in form, and nothing else, without a session.
    let page = raw_client()
        .get(loc.url("/admin"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.expect("html");
    assert!(html.contains("action=\"/admin/login\""), "{html}");
    assert!(!html.contains("id=\"cards\""));

    // A wrong token: 401, no cookie, the name kept for the retry.
    let refused = post_form(
        loc.url("/admin/login"),
        &[("token", "not-the-token-at-all"), ("name", "mallory")],
    )
    .send()
    .await
    .expect("login");
    assert_eq!(refused.status().as_u16(), 401);
    assert!(refused.headers().get("set-cookie").is_none());
    assert!(
        refused
            .text()
            .await
            .expect("html")
            .contains("not the admin token")
    );
    // From another site: refused before the token is looked at.
    let cross = post_form(
        loc.url("/admin/login"),
        &[("token", ADMIN_TOKEN), ("name", "mallory")],
    )
    .header("origin", "https://evil.example")
    .send()
    .await
    .expect("login");
    assert_eq!(cross.status().as_u16(), 403);
    assert!(cross.headers().get("set-cookie").is_none());

    // The right token: a strict, HttpOnly session cookie that is not the token.
    let (set, cookie) = sign_in(&loc, "Ada <ops>", &[]).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain http from loopback: {set}");
    assert!(!set.contains(ADMIN_TOKEN), "{set}");
    // Behind a trusted proxy that terminated HTTPS, the cookie is Secure.
    let (set_https, _) = sign_in(&loc, "ada", &[("x-forwarded-proto", "https")]).await;
    assert!(set_https.contains("Secure"), "{set_https}");

    let page = raw_client()
        .get(loc.url("/admin"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(page.contains("id=\"cards\""), "the dashboard");
    assert!(page.contains("Ada &lt;ops&gt;"), "the name, escaped");
    assert!(!page.contains(ADMIN_TOKEN));
    let (code, status) = json_of(
        raw_client()
            .get(loc.url("/v1/admin/status"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("status"),
    )
    .await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(edge_row(&status, "eu-a")["state"], "active");
    // Behind a proxy that passes on its own Basic credentials, the cookie still works.
    let behind_proxy = raw_client()
        .get(loc.url("/v1/admin/status"))
        .header("cookie", &cookie)
        .header("authorization", "Basic b3BzOnNlY3JldA==")
        .send()
        .await
        .expect("status");
    assert_eq!(behind_proxy.status().as_u16(), 200);

    // A change with the cookie needs the page's header (a cross-site form cannot send it).
    let (code, body) = json_of(
        raw_client()
            .post(loc.url("/v1/admin/edges/eu-a/suspend"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("suspend"),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["type"], "urn:locus:problem:csrf-header-missing");
    assert_eq!(edge_state(&loc.state, "eu-a"), Some("active"));
    let (code, body) = json_of(
        raw_client()
            .post(loc.url("/v1/admin/edges/eu-a/suspend"))
            .header("cookie", &cookie)
            .header("x-locus-admin", "1")
            .json(&json!({"actor": "someone else"}))
            .send()
            .await
            .expect("suspend"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["state"], "suspended");
    let (_, log) = audit(&loc, "edge=eu-a").await;
    assert_eq!(log["entries"][0]["kind"], "edge_suspended");
    assert_eq!(
        log["entries"][0]["actor"], "Ada <ops>",
        "a page session acts under its signed-in name"
    );

    // Sign out: the cookie is cleared and the session is gone.
    let out = raw_client()
        .post(loc.url("/admin/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status().as_u16(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0")
    );
    let after = raw_client()
        .get(loc.url("/v1/admin/status"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("status");
    assert_eq!(after.status().as_u16(), 401);
    loc.stop().await;
}

#[tokio::test]
async fn suspend_resume_and_drain_are_applied_persisted_idempotent_and_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut a = TestEdge::connect(loc.addr, register("eu-a", "eu-west", 100)).await;
    let mut b = TestEdge::connect(loc.addr, register("eu-b", "eu-west", 100)).await;
    a.report(0).await;
    b.report(0).await;
    wait_for(&loc.state, "both reported", |s| {
        let snap = s.registry.snapshot();
        ["eu-a", "eu-b"]
            .iter()
            .all(|id| snap.edge(id).is_some_and(|e| e.load().is_some()))
    })
    .await;
    assert_eq!(
        region(&status_bearer(&loc).await, "eu-west")["state"],
        "healthy"
    );

    // Suspend: applied to selection at once, shown, persisted, audited once.
    let (code, body) = action(&loc, "eu-a", "suspend").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["changed"], true);
    let (_, again) = action(&loc, "eu-a", "suspend").await;
    assert_eq!(again["changed"], false, "idempotent");
    for _ in 0..20 {
        assert_eq!(locate_from(&loc, "81.2.69.142").await["edge"]["id"], "eu-b");
    }
    let status = status_bearer(&loc).await;
    let eu_west = region(&status, "eu-west");
    assert_eq!(eu_west["state"], "degraded");
    assert_eq!(
        eu_west["summary"],
        "1 of 2 edges takes new sessions: eu-a suspended"
    );
    assert_eq!(edge_row(&status, "eu-a")["state"], "suspended");
    assert_eq!(edge_row(&status, "eu-a")["suspended"], true);
    let stored = loc
        .state
        .store
        .edge("eu-a")
        .await
        .expect("store")
        .expect("edge");
    assert!(stored.suspended);
    assert_eq!(stored.suspended_by.as_deref(), Some("alice"));

    // Persisted: a restarted locator on the same database still has it suspended.
    drop((a, b));
    loc.stop().await;
    let loc = TestLocator::start(dir.path()).await;
    let mut a = TestEdge::connect(loc.addr, register("eu-a", "eu-west", 100)).await;
    let mut b = TestEdge::connect(loc.addr, register("eu-b", "eu-west", 100)).await;
    a.report(0).await;
    b.report(0).await;
    assert_eq!(edge_state(&loc.state, "eu-a"), Some("suspended"));
    assert_eq!(
        edge_row(&status_bearer(&loc).await, "eu-a")["state"],
        "suspended"
    );

    // Resume: takes sessions again.
    let (code, body) = action(&loc, "eu-a", "resume").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["state"], "active");
    let (_, again) = action(&loc, "eu-a", "resume").await;
    assert_eq!(again["changed"], false);
    assert_eq!(
        region(&status_bearer(&loc).await, "eu-west")["state"],
        "healthy"
    );

    // Drain: the edge is told, new sessions stop at once, a repeat changes nothing.
    let (code, body) = action(&loc, "eu-b", "drain").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["changed"], true);
    assert_eq!(body["state"], "draining");
    assert!(matches!(
        next_message(&mut b.ws).await,
        Some(LocatorMessage::Drain { .. })
    ));
    let (_, again) = action(&loc, "eu-b", "drain").await;
    assert_eq!(again["changed"], false, "idempotent");
    for _ in 0..10 {
        assert_eq!(locate_from(&loc, "81.2.69.142").await["edge"]["id"], "eu-a");
    }
    assert_eq!(
        edge_row(&status_bearer(&loc).await, "eu-b")["state"],
        "draining"
    );

    // Every change is in the audit log once, with who and when, newest first (the
    // locator's own rows, e.g. edges failing at the restart, are left out here).
    let (code, log) = audit(&loc, "").await;
    assert_eq!(code, 200, "{log}");
    let admin_rows: Vec<&Value> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["source"] == "admin")
        .collect();
    let kinds: Vec<(&str, &str)> = admin_rows
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().expect("kind"),
                e["edge_id"].as_str().expect("edge"),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("edge_drain_requested", "eu-b"),
            ("edge_resumed", "eu-a"),
            ("edge_suspended", "eu-a"),
        ]
    );
    for entry in admin_rows {
        assert_eq!(entry["actor"], "alice");
        assert!(entry["at_ms"].as_i64().expect("time") > 1_600_000_000_000);
    }
    let _ = a;
    loc.stop().await;
}

#[tokio::test]
async fn the_audit_log_is_filtered_by_edge_session_and_time_and_paginated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut a = TestEdge::connect(loc.addr, register("eu-a", "eu-west", 100)).await;
    let _b = TestEdge::connect(loc.addr, register("eu-b", "eu-west", 100)).await;
    // Five admin rows about eu-a, two about eu-b.
    for what in ["suspend", "resume", "suspend", "resume", "suspend"] {
        assert_eq!(action(&loc, "eu-a", what).await.0, 200);
    }
    for what in ["suspend", "resume"] {
        assert_eq!(action(&loc, "eu-b", what).await.0, 200);
    }
    // Edge rows about two sessions, at known times (the edge's clock).
    let entries: Vec<SpoolEntry> = (1..=4)
        .map(|seq| SpoolEntry {
            seq,
            at_unix_ms: 1_700_000_000_000 + seq as i64 * 1000,
            body: SpoolBody::ParticipantJoined {
                session_id: if seq <= 3 { "s-one" } else { "s-two" }.into(),
                participant: format!("p{seq}"),
            },
        })
        .collect();
    send(&mut a.ws, &EdgeMessage::Spool { entries }).await;
    assert_eq!(
        next_message(&mut a.ws).await,
        Some(LocatorMessage::Ack { seq: 4 })
    );

    // Pages of two, newest first, following the cursor to the end.
    let mut ids = Vec::new();
    let mut query = "edge=eu-a&limit=2".to_string();
    loop {
        let (code, page) = audit(&loc, &query).await;
        assert_eq!(code, 200, "{page}");
        let entries = page["entries"].as_array().expect("entries");
        assert!(entries.len() <= 2);
        ids.extend(entries.iter().map(|e| e["id"].as_i64().expect("id")));
        match page["next_before"].as_i64() {
            Some(before) => query = format!("edge=eu-a&limit=2&before={before}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 9, "5 admin rows and 4 edge rows about eu-a");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let (_, b_rows) = audit(&loc, "edge=eu-b").await;
    assert_eq!(b_rows["entries"].as_array().expect("entries").len(), 2);
    assert!(b_rows["next_before"].is_null());

    // By session, and by time.
    let (_, one) = audit(&loc, "session=s-one").await;
    let participants: Vec<&str> = one["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["participant"].as_str().expect("participant"))
        .collect();
    assert_eq!(participants, vec!["p3", "p2", "p1"]);
    let (_, window) = audit(&loc, "edge=eu-a&since=1700000002000&until=1700000004000").await;
    let seqs: Vec<i64> = window["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![3, 2], "since inclusive, until exclusive");

    // Bad queries are clear 400s.
    for bad in [
        "limit=0",
        "limit=5000",
        "edges=eu-a",
        "since=5&until=5",
        "before=abc",
    ] {
        let (code, body) = audit(&loc, bad).await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert_eq!(body["type"], "urn:locus:problem:bad-audit-query", "{bad}");
    }
    loc.stop().await;
}

#[tokio::test]
async fn the_status_shows_edges_turn_pools_and_traffic_served_by_fallback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut us = TestEdge::connect(loc.addr, register("us-1", "us-east", 50)).await;
    let mut eu = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    us.report(5).await;
    eu.report(7).await;
    wait_for(&loc.state, "reports", |s| {
        let snap = s.registry.snapshot();
        ["us-1", "eu-1"]
            .iter()
            .all(|id| snap.edge(id).is_some_and(|e| e.load().is_some()))
    })
    .await;
    // Japan has no edge: its clients go to its fallback, us-east.
    for _ in 0..3 {
        let answer = locate_from(&loc, "133.1.1.1").await;
        assert_eq!(answer["edge"]["id"], "us-1");
    }
    for _ in 0..2 {
        locate_from(&loc, "81.2.69.142").await;
    }

    let status = status_bearer(&loc).await;
    assert_eq!(status["summary"]["regions"]["healthy"], 2);
    assert_eq!(status["summary"]["regions"]["fallback"], 2, "{status}");
    assert_eq!(status["summary"]["edges"]["active"], 2);
    assert!(status["geoip"]["attribution"].is_null(), "not a DB-IP file");
    assert_eq!(status["edge_timing"]["report_interval_ms"], 1000);

    let ap = region(&status, "ap-northeast");
    assert_eq!(ap["state"], "fallback");
    assert_eq!(ap["own_state"], "down");
    assert_eq!(ap["summary"], "no edges registered");
    assert_eq!(ap["served_by"]["region"], "us-east");
    assert_eq!(ap["served_by"]["edge"], "us-1");
    assert_eq!(ap["served_by"]["reason_code"], "region-unavailable");
    assert_eq!(ap["traffic"]["answers"], 3);
    assert_eq!(ap["traffic"]["elsewhere"], 3);
    assert_eq!(ap["traffic"]["share_elsewhere"], 1.0);
    assert_eq!(
        ap["traffic"]["to"],
        json!([{"region": "us-east", "answers": 3}])
    );
    assert_eq!(region(&status, "us-east")["traffic"]["absorbed"], 3);
    let eu_west = region(&status, "eu-west");
    assert_eq!(eu_west["state"], "healthy");
    assert_eq!(eu_west["traffic"]["answers"], 2);
    assert_eq!(eu_west["traffic"]["elsewhere"], 0);
    assert_eq!(eu_west["fallback_order"], json!(["eu-central", "us-east"]));
    assert_eq!(eu_west["sessions"], 7);
    assert_eq!(eu_west["capacity"], 100);
    assert!(status["traffic_window_secs"].as_u64().is_some());

    // TURN pools: us-east's secret variable is unset in tests; eu-west is STUN only.
    let us_turn = &region(&status, "us-east")["turn"];
    assert_eq!(
        us_turn["problem"],
        "secret variable LOCUS_TEST_TURN_SECRET is not set"
    );
    assert_eq!(
        us_turn["turn"],
        json!(["turn:turn1.us-east.example.net:3478"])
    );
    assert_eq!(
        region(&status, "eu-west")["turn"]["stun"],
        json!(["stun:stun.eu-west.example.net"])
    );

    let row = edge_row(&status, "us-1");
    assert_eq!(row["state"], "active");
    assert_eq!(row["capacity"], 50);
    assert_eq!(row["version"], "test");
    assert_eq!(row["load"]["sessions"], 5);
    assert_eq!(row["load"]["connections"], 10);
    assert_eq!(row["takes_new_sessions"], true);
    assert!((row["utilisation"].as_f64().expect("util") - 0.1).abs() < 1e-9);
    assert!(row["report_age_ms"].as_u64().expect("age") < 5_000);

    // The eu-west edge dies: its region's new sessions go elsewhere.
    drop(eu);
    wait_for(&loc.state, "eu-1 failed", |s| {
        edge_state(s, "eu-1") == Some("failed")
    })
    .await;
    let status = status_bearer(&loc).await;
    let eu_west = region(&status, "eu-west");
    assert_eq!(eu_west["state"], "fallback");
    assert_eq!(eu_west["own_state"], "down");
    assert_eq!(eu_west["served_by"]["region"], "us-east");
    assert_eq!(
        edge_row(&status, "eu-1")["failed_because"],
        "link lost and its /healthz does not answer"
    );
    loc.stop().await;
}

/// Reads server-sent events from a streaming response.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(url: String, header: (&str, String)) -> Events {
        let response = raw_client()
            .get(url)
            .header(header.0, header.1)
            .send()
            .await
            .expect("events");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next `status` event's data; `None` when the stream ended.
    async fn next_status(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if block.lines().any(|l| l == "event: status") {
                    let data = block
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .expect("data line");
                    return Some(serde_json::from_str(data).expect("status json"));
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.response.chunk())
                .await
                .expect("an event within 5 s (the stream ticks every second)")
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads events until `condition` holds; fails after `within`.
    async fn until(&mut self, within: Duration, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let event = tokio::time::timeout_at(deadline, self.next_status())
                .await
                .expect("the change within the deadline")
                .expect("stream open");
            if condition(&event) {
                return event;
            }
        }
    }
}

#[tokio::test]
async fn the_event_stream_shows_a_change_within_two_seconds_and_ends_at_sign_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut a = TestEdge::connect(loc.addr, register("eu-a", "eu-west", 100)).await;
    a.report(1).await;
    let (_, cookie) = sign_in(&loc, "grace", &[]).await;
    let mut events = Events::open(loc.url("/v1/admin/events"), ("cookie", cookie.clone())).await;
    let first = events.next_status().await.expect("first event");
    assert_eq!(edge_row(&first, "eu-a")["id"], "eu-a");

    // A change reaches the stream within two seconds.
    let changed_at = tokio::time::Instant::now();
    assert_eq!(action(&loc, "eu-a", "suspend").await.0, 200);
    events
        .until(Duration::from_secs(2), |s| {
            edge_row(s, "eu-a")["state"] == "suspended"
        })
        .await;
    assert!(changed_at.elapsed() < Duration::from_secs(2));
    // Without changes it still ticks (report ages move on).
    let one = events.next_status().await.expect("tick");
    let two = events.next_status().await.expect("tick");
    assert!(two["generated_at_ms"].as_i64() > one["generated_at_ms"].as_i64());

    // A bearer stream works too.
    let mut bearer = Events::open(
        loc.url("/v1/admin/events"),
        ("authorization", format!("Bearer {ADMIN_TOKEN}")),
    )
    .await;
    assert!(bearer.next_status().await.is_some());

    // Signing out ends the page session's stream.
    raw_client()
        .post(loc.url("/admin/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("logout");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let next = tokio::time::timeout_at(deadline, events.next_status())
            .await
            .expect("the stream ends within a few seconds of signing out");
        if next.is_none() {
            break;
        }
    }
    loc.stop().await;
}

/// A locator with its own GeoIP setting and admin token, and the handle of its `run`.
struct Custom {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_custom(dir: &std::path::Path, geoip: &str, admin_token: Option<&str>) -> Custom {
    let yaml = format!(
        "geoip: {{ database: {geoip} }}\ndefault_region: us-east\nregions:\n  - id: us-east\n    location: {{ lat: 39.0, lon: -77.5 }}\n"
    );
    let config = Config::parse(&yaml, &dir.join("regions.yaml")).expect("config");
    let geo = GeoResolver::open(&config).expect("geoip");
    let store = Store::open(dir.join("l.sqlite").to_str().expect("utf-8"))
        .await
        .expect("store");
    let state = Arc::new(AppState::new(
        config,
        geo,
        store,
        Secrets {
            edge_keys: vec![EDGE_KEY.into()],
            admin_token: admin_token.map(String::from),
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(locus_locator::server::run(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Custom {
        addr,
        state,
        stop,
        task,
    }
}

#[tokio::test]
async fn dbip_attribution_is_given_and_shutdown_ends_open_event_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The built-in demo database carries DB-IP data: the status gives the credit link.
    let loc = start_custom(dir.path(), "builtin-demo", Some(ADMIN_TOKEN)).await;
    let status: Value = http()
        .get(format!("http://{}/v1/admin/status", loc.addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(
        status["geoip"]["attribution"],
        json!({"text": "IP Geolocation by DB-IP", "url": "https://db-ip.com"})
    );
    // The page links it (the script fills the text from the status).
    let (_, cookie) = {
        let response = post_form(
            format!("http://{}/admin/login", loc.addr),
            &[("token", ADMIN_TOKEN), ("name", "ops")],
        )
        .send()
        .await
        .expect("login");
        let set = response.headers()["set-cookie"]
            .to_str()
            .expect("ascii")
            .to_string();
        ((), set.split(';').next().expect("pair").to_string())
    };
    let page = raw_client()
        .get(format!("http://{}/admin", loc.addr))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(page.contains("href=\"https://db-ip.com\""));

    // Graceful shutdown does not wait forever for an open event stream.
    let mut events = Events::open(
        format!("http://{}/v1/admin/events", loc.addr),
        ("cookie", cookie),
    )
    .await;
    assert!(events.next_status().await.is_some());
    let _ = loc.stop.send(());
    let finished = tokio::time::timeout(Duration::from_secs(10), loc.task)
        .await
        .expect("the server stops with an event stream open");
    assert!(finished.expect("join").is_ok());
    loc.state.store.close().await;

    // Without LOCATOR_ADMIN_TOKEN the page and the API say they are disabled.
    let dir = tempfile::tempdir().expect("tempdir");
    let off = start_custom(dir.path(), "builtin-demo", None).await;
    let page = raw_client()
        .get(format!("http://{}/admin", off.addr))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 403);
    assert!(
        page.text()
            .await
            .expect("html")
            .contains("set LOCATOR_ADMIN_TOKEN")
    );
    let (code, body) = json_of(
        raw_client()
            .get(format!("http://{}/v1/admin/status", off.addr))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("status"),
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(body["type"], "urn:locus:problem:admin-disabled");
    let login = post_form(
        format!("http://{}/admin/login", off.addr),
        &[("token", ""), ("name", "x")],
    )
    .send()
    .await
    .expect("login");
    assert_eq!(login.status().as_u16(), 403);
    assert!(login.headers().get("set-cookie").is_none());
    let _ = off.stop.send(());
    let _ = off.task.await;
    off.state.store.close().await;
}

#[tokio::test]
async fn assets_are_embedded_and_cacheable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    for (name, kind) in [
        ("admin.js", "text/javascript; charset=utf-8"),
        ("admin.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let response = raw_client()
            .get(loc.url(&format!("/admin/assets/{name}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(response.status().as_u16(), 200, "{name}");
        assert_eq!(response.headers()["content-type"], kind);
        let etag = response.headers()["etag"].clone();
        let again = raw_client()
            .get(loc.url(&format!("/admin/assets/{name}")))
            .header("if-none-match", etag)
            .send()
            .await
            .expect("asset");
        assert_eq!(again.status().as_u16(), 304, "{name}");
    }
    let missing = raw_client()
        .get(loc.url("/admin/assets/../../etc/passwd"))
        .send()
        .await
        .expect("asset");
    assert_eq!(missing.status().as_u16(), 404);
    // Nothing on the page comes from elsewhere: no CDN, no web font.
    let js = raw_client()
        .get(loc.url("/admin/assets/admin.js"))
        .send()
        .await
        .expect("js")
        .text()
        .await
        .expect("text");
    let css = raw_client()
        .get(loc.url("/admin/assets/admin.css"))
        .send()
        .await
        .expect("css")
        .text()
        .await
        .expect("text");
    for text in [&js, &css] {
        assert!(!text.contains("https://cdn"), "no CDN");
        assert!(!text.contains("@import"), "no imports");
    }
    loc.stop().await;
}
