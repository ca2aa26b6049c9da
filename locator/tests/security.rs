//! Security properties of the edge link (issue 16): per-edge credentials bound to an id
//! and region, a live link kept against another credential, revocation of one edge,
//! rotation of the master key, and the `locator edge-credential` command. In-process
//! locators over real sockets; the CLI as a real process.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use locus_geo::{Config, GeoResolver};
use locus_locator::state::{AppState, Secrets};
use locus_locator::store::Store;
use locus_protocol::edge_credential::derive;
use locus_protocol::{EdgeMessage, LocatorMessage};
use support::*;

/// The test regions with an `edge_credentials:` section appended.
fn config_with(dir: &Path, credentials: &str) -> Config {
    let db = write_geoip(dir);
    let yaml = format!(
        "{}\nedge_credentials:\n{credentials}",
        regions_yaml(&db, "30s")
    );
    Config::parse(&yaml, &dir.join("regions.yaml")).expect("config")
}

/// Opens a link with `credential` and registers `reg`: the welcome, or the refusal.
async fn try_register(
    addr: std::net::SocketAddr,
    credential: &str,
    reg: locus_protocol::Register,
) -> Result<Ws, String> {
    let mut ws = connect_link(addr, Some(credential))
        .await
        .map_err(|e| e.to_string())?;
    send(&mut ws, &EdgeMessage::Register(reg)).await;
    match next_message(&mut ws).await {
        Some(LocatorMessage::Welcome { .. }) => Ok(ws),
        Some(LocatorMessage::Error { reason }) => Err(reason),
        other => Err(format!("{other:?}")),
    }
}

fn public_url_of(loc: &TestLocator, id: &str) -> Option<String> {
    loc.state
        .registry
        .snapshot()
        .edges
        .iter()
        .find(|e| &*e.id == id)
        .map(|e| e.public_url.to_string())
}

#[tokio::test]
async fn a_credential_registers_only_its_own_edge_and_the_live_edge_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut real = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    real.report(0).await;
    let real_url = public_url_of(&loc, "eu-1").expect("registered");

    // Another edge's credential cannot register as eu-1 (finding 1: with the shared
    // token it replaced the real edge and took its sessions).
    let mut impostor = register("eu-1", "eu-west", u32::MAX);
    impostor.public_url = "http://attacker.example".into();
    let refused = try_register(
        loc.addr,
        &edge_credential("eu-2", "eu-west"),
        impostor.clone(),
    )
    .await
    .expect_err("refused");
    assert!(
        refused.contains("cannot register as edge \"eu-1\""),
        "{refused}"
    );
    // Nor in another region with its own id.
    let refused = try_register(loc.addr, &edge_credential("eu-1", "eu-west"), {
        let mut r = register("eu-1", "us-east", 100);
        r.public_url = "http://attacker.example".into();
        r
    })
    .await
    .expect_err("refused");
    assert!(refused.contains("in region \"eu-west\""), "{refused}");
    // A credential signed with another master key is refused before the upgrade.
    let forged = derive(
        b"not-the-locators-master-key-0123456789",
        1,
        "eu-west",
        "eu-1",
    );
    let error = try_register(loc.addr, &forged, impostor.clone())
        .await
        .expect_err("refused");
    assert!(error.contains("401"), "{error}");
    // So is the shared token of older versions.
    let error = try_register(loc.addr, "test-edge-token-0123456789", impostor.clone())
        .await
        .expect_err("refused");
    assert!(error.contains("401"), "{error}");

    // A valid credential of eu-1 of a later generation is another credential: while the
    // live link holds eu-1, it is refused and the live link kept.
    let later = derive(EDGE_KEY.as_bytes(), 2, "eu-west", "eu-1");
    let refused = try_register(loc.addr, &later, impostor)
        .await
        .expect_err("refused");
    assert!(
        refused.contains("connected with another credential"),
        "{refused}"
    );
    real.report(1).await;
    assert_eq!(public_url_of(&loc, "eu-1").as_deref(), Some(&*real_url));
    assert_eq!(edge_state(&loc.state, "eu-1"), Some("active"));
    let (status, body) = {
        let response = http()
            .post(loc.url("/v1/sessions"))
            .header("x-forwarded-for", "81.2.69.142")
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("create");
        let status = response.status().as_u16();
        (
            status,
            response.json::<serde_json::Value>().await.expect("json"),
        )
    };
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["edge"]["id"], "eu-1");
    assert!(
        body["ws_url"]
            .as_str()
            .expect("ws_url")
            .starts_with(&real_url.replace("http://", "ws://")),
        "{body}"
    );

    // The same credential reconnecting (the edge restarted) replaces its own link.
    let again = try_register(
        loc.addr,
        &edge_credential("eu-1", "eu-west"),
        register("eu-1", "eu-west", 100),
    )
    .await;
    assert!(again.is_ok(), "{:?}", again.err());
    loc.stop().await;
}

#[tokio::test]
async fn revoking_one_edge_closes_its_link_and_leaves_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut eu1 = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    let mut eu2 = TestEdge::connect(loc.addr, register("eu-2", "eu-west", 100)).await;

    // The operator raises eu-1's generation (its credential leaked) and reloads.
    loc.state.apply_config(config_with(
        dir.path(),
        "  eu-1: { region: eu-west, generation: 2 }\n",
    ));
    // eu-1's link is closed at its next frame, with the reason.
    send(
        &mut eu1.ws,
        &EdgeMessage::Report(locus_protocol::LoadReport {
            cpu: 0.0,
            lag_ms: 0.0,
            connections: 0,
            sessions: 0,
            ..Default::default()
        }),
    )
    .await;
    let reason = closed_reason(&mut eu1.ws).await;
    assert!(
        reason.contains("generation 1 of edge \"eu-1\" is revoked"),
        "{reason}"
    );
    // The old credential no longer opens a link; the new generation does.
    let error = try_register(
        loc.addr,
        &edge_credential("eu-1", "eu-west"),
        register("eu-1", "eu-west", 100),
    )
    .await
    .expect_err("refused");
    assert!(error.contains("401"), "{error}");
    let renewed = derive(EDGE_KEY.as_bytes(), 2, "eu-west", "eu-1");
    let _eu1 = try_register(loc.addr, &renewed, register("eu-1", "eu-west", 100))
        .await
        .expect("the new generation registers");
    // eu-2 was never touched.
    eu2.report(0).await;
    assert_eq!(edge_state(&loc.state, "eu-2"), Some("active"));

    // `revoked: true` refuses every credential of the edge.
    loc.state
        .apply_config(config_with(dir.path(), "  eu-1: { revoked: true }\n"));
    let error = try_register(loc.addr, &renewed, register("eu-1", "eu-west", 100))
        .await
        .expect_err("refused");
    assert!(error.contains("401"), "{error}");
    loc.stop().await;
}

#[tokio::test]
async fn during_a_rotation_both_master_keys_are_accepted_and_join_tokens_follow_the_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_key = "old-master-key-0123456789abcdef0123456789";
    let new_key = "new-master-key-0123456789abcdef0123456789";
    let config = config_with(dir.path(), "  eu-1: { region: eu-west }\n");
    let geo = GeoResolver::open(&config).expect("geoip");
    let store = Store::open(dir.path().join("locator.sqlite").to_str().expect("utf-8"))
        .await
        .expect("store");
    let secrets = Secrets {
        edge_keys: vec![new_key.into(), old_key.into()],
        admin_token: None,
    };
    let state = Arc::new(AppState::new(config, geo, store, secrets));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(locus_locator::server::run(
        listener,
        state.clone(),
        std::future::pending(),
    ));

    // eu-1 still holds a credential of the old key; eu-2 already one of the new key.
    let old_credential = derive(old_key.as_bytes(), 1, "eu-west", "eu-1");
    let mut eu1 = try_register(addr, &old_credential, register("eu-1", "eu-west", 100))
        .await
        .expect("old key accepted during the rotation");
    let new_credential = derive(new_key.as_bytes(), 1, "eu-west", "eu-2");
    let _eu2 = try_register(addr, &new_credential, register("eu-2", "eu-west", 100))
        .await
        .expect("new key accepted");
    send(
        &mut eu1,
        &EdgeMessage::Report(locus_protocol::LoadReport {
            cpu: 0.0,
            lag_ms: 0.0,
            connections: 0,
            sessions: 0,
            ..Default::default()
        }),
    )
    .await;
    // A key that is neither is refused.
    let stranger = derive(EDGE_KEY.as_bytes(), 1, "eu-west", "eu-3");
    let error = try_register(addr, &stranger, register("eu-3", "eu-west", 100))
        .await
        .expect_err("refused");
    assert!(error.contains("401"), "{error}");

    // Join tokens for eu-1 are signed with the key its own credential gives it.
    let generation = state.generation();
    let eu1_view = generation
        .edges
        .edges
        .iter()
        .find(|e| &*e.id == "eu-1")
        .expect("eu-1");
    let token = state.join_key_for(&generation.routing, eu1_view).sign(
        &locus_protocol::join_token::JoinClaims {
            sid: "s1".into(),
            eid: "eu-1".into(),
            pid: "p1".into(),
            exp: 2_000_000_000,
        },
    );
    let edge_key = locus_protocol::join_token::JoinKey::from_edge_token(&old_credential);
    assert!(
        edge_key
            .verify(&token, "s1", "eu-1", 2_000_000_000 - 100)
            .is_ok()
    );
    server.abort();
}

fn locator_cli(dir: &Path, args: &[&str], key: Option<&str>) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_locator"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("LOCATOR_EDGE_KEY")
        .env_remove("LOCATOR_EDGE_KEY_PREVIOUS")
        .env_remove("LOCATOR_EDGE_TOKEN");
    if let Some(key) = key {
        command.env("LOCATOR_EDGE_KEY", key);
    }
    let output = command.output().expect("run locator");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn edge_credential_prints_the_credential_the_locator_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = write_geoip(dir.path());
    let yaml = format!(
        "{}\nedge_credentials:\n  eu-1: {{ region: eu-west, generation: 3 }}\n",
        regions_yaml(&db, "30s")
    );
    std::fs::write(dir.path().join("regions.yaml"), &yaml).expect("write");

    // Listed: region and generation from the file.
    let (ok, stdout, stderr) = locator_cli(
        dir.path(),
        &[
            "edge-credential",
            "--config",
            "regions.yaml",
            "--id",
            "eu-1",
        ],
        Some(EDGE_KEY),
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.trim(),
        derive(EDGE_KEY.as_bytes(), 3, "eu-west", "eu-1")
    );

    // Not listed, several regions, no database: the command says what it needs.
    let (ok, _, stderr) = locator_cli(
        dir.path(),
        &[
            "edge-credential",
            "--config",
            "regions.yaml",
            "--id",
            "us-1",
        ],
        Some(EDGE_KEY),
    );
    assert!(!ok);
    assert!(
        stderr.contains("which region is edge \"us-1\" in?"),
        "{stderr}"
    );

    // With --database: the region of the edge's last registration.
    let loc = TestLocator::start(dir.path()).await;
    let _us1 = TestEdge::connect(loc.addr, register("us-1", "us-east", 100)).await;
    let database = loc.database.to_str().expect("utf-8").to_string();
    let (ok, stdout, stderr) = locator_cli(
        dir.path(),
        &[
            "edge-credential",
            "--config",
            "regions.yaml",
            "--database",
            &database,
            "--id",
            "us-1",
        ],
        Some(EDGE_KEY),
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), edge_credential("us-1", "us-east"));
    loc.stop().await;

    // No master key: a clear error, and `serve` refuses the old shared token by name.
    let (ok, _, stderr) = locator_cli(
        dir.path(),
        &[
            "edge-credential",
            "--config",
            "regions.yaml",
            "--id",
            "eu-1",
        ],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("LOCATOR_EDGE_KEY is not set"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_locator"))
        .args([
            "serve",
            "--config",
            "regions.yaml",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .env_remove("LOCATOR_EDGE_KEY")
        .env("LOCATOR_EDGE_TOKEN", "an-old-shared-token-0123456789")
        .output()
        .expect("run locator");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("LOCATOR_EDGE_TOKEN (one token shared by every edge) is no longer accepted"),
        "{stderr}"
    );
}

fn joined(seq: u64, participant: &str) -> locus_protocol::SpoolEntry {
    locus_protocol::SpoolEntry {
        seq,
        at_unix_ms: 1_000,
        body: locus_protocol::SpoolBody::ParticipantJoined {
            session_id: "s1".into(),
            participant: participant.into(),
        },
    }
}

async fn relay(
    edge: &mut TestEdge,
    entries: Vec<locus_protocol::SpoolEntry>,
) -> Result<u64, String> {
    send(&mut edge.ws, &EdgeMessage::Spool { entries }).await;
    match next_message(&mut edge.ws).await {
        Some(LocatorMessage::Ack { seq }) => Ok(seq),
        Some(LocatorMessage::Error { reason }) => Err(reason),
        other => Err(format!("{other:?}")),
    }
}

async fn audit_of(loc: &TestLocator, edge: &str) -> Vec<locus_locator::store::AuditRecord> {
    loc.state
        .store
        .audit(&locus_locator::store::AuditFilter {
            edge_id: Some(edge.into()),
            ..Default::default()
        })
        .await
        .expect("audit")
}

#[tokio::test]
async fn the_spool_must_continue_the_stored_sequence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut edge = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    assert_eq!(
        relay(&mut edge, vec![joined(1, "a"), joined(2, "b")]).await,
        Ok(2)
    );

    // Finding 2: one entry numbered i64::MAX was acknowledged and ended the trail.
    let refused = relay(&mut edge, vec![joined(i64::MAX as u64, "forged")])
        .await
        .expect_err("refused");
    assert!(refused.contains("spool"), "{refused}");
    assert_eq!(loc.state.store.acked_seq("eu-1").await.expect("acked"), 2);
    let rows = audit_of(&loc, "eu-1").await;
    assert!(
        !rows
            .iter()
            .any(|r| r.participant.as_deref() == Some("forged")),
        "{rows:#?}"
    );
    // The refusal itself is in the audit trail.
    assert!(
        rows.iter().any(|r| r.kind == "spool_refused"
            && r.detail
                .as_deref()
                .is_some_and(|d| d.contains("9223372036854775807"))),
        "{rows:#?}"
    );

    // A small gap closes the link too; the welcome says where to continue.
    let mut edge = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    assert!(matches!(
        edge.welcome,
        LocatorMessage::Welcome { acked_seq: 2, .. }
    ));
    let refused = relay(&mut edge, vec![joined(4, "c")])
        .await
        .expect_err("gap");
    assert!(refused.contains("spool gap"), "{refused}");
    let mut edge = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    // Resent entries are skipped; the next ones are stored, exactly once.
    assert_eq!(
        relay(
            &mut edge,
            vec![joined(2, "b"), joined(3, "c"), joined(4, "d")]
        )
        .await,
        Ok(4)
    );
    assert_eq!(
        relay(&mut edge, vec![joined(3, "c"), joined(4, "d")]).await,
        Ok(4)
    );
    let stored: Vec<u64> = audit_of(&loc, "eu-1")
        .await
        .iter()
        .filter(|r| r.kind == "participant_joined")
        .filter_map(|r| r.seq)
        .collect();
    assert_eq!(stored, vec![4, 3, 2, 1]);
    loc.stop().await;
}

#[tokio::test]
async fn one_link_cannot_flood_the_audit_trail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut edge = TestEdge::connect(loc.addr, register("eu-1", "eu-west", 100)).await;
    let batch = locus_protocol::MAX_SPOOL_BATCH as u64;
    let batches = 8;
    let began = std::time::Instant::now();
    for b in 0..batches {
        let entries = (1..=batch).map(|i| joined(b * batch + i, "p")).collect();
        assert_eq!(relay(&mut edge, entries).await, Ok((b + 1) * batch));
    }
    let elapsed = began.elapsed();
    // 4,000 entries: the burst (1,000) at once, the other 3,000 at 2,000 a second.
    let total = batches * batch;
    let floor = std::time::Duration::from_millis(
        (total - locus_locator::edge_link::SPOOL_BURST) * 1_000
            / locus_locator::edge_link::SPOOL_ENTRIES_PER_SECOND,
    );
    assert!(
        elapsed >= floor.mul_f64(0.9),
        "{total} entries stored in {elapsed:?}, under the rate limit's {floor:?}"
    );
    loc.stop().await;
}
