//! The store against real SQLite files (one per test, in a temporary folder).

use std::collections::HashSet;
use std::path::Path;

use locus_locator::store::{
    AuditFilter, AuditSource, EdgeRecord, NewSession, SessionState, Store, StoreError, StoreOptions,
};
use locus_protocol::{LoadReport, SpoolBody, SpoolEntry};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn open_in(dir: &Path) -> Result<Store, StoreError> {
    Store::open(&dir.join("locator.db").display().to_string()).await
}

fn ad_hoc(id: &str, edge: &str, now_ms: i64) -> NewSession {
    NewSession {
        id: id.into(),
        room_key: None,
        region: "eu-west".into(),
        edge_id: edge.into(),
        now_ms,
    }
}

fn room(id: &str, key: &str, edge: &str, now_ms: i64) -> NewSession {
    NewSession {
        room_key: Some(key.into()),
        ..ad_hoc(id, edge, now_ms)
    }
}

fn edge(id: &str, now_ms: i64) -> EdgeRecord {
    EdgeRecord {
        id: id.into(),
        region: "eu-west".into(),
        public_url: format!("https://{id}.example.net"),
        capacity: 100,
        version: "1.0.0".into(),
        suspended: false,
        suspended_by: None,
        suspended_at_ms: None,
        first_seen_ms: now_ms,
        last_seen_ms: now_ms,
    }
}

fn entry(seq: u64, body: SpoolBody) -> SpoolEntry {
    SpoolEntry {
        seq,
        at_unix_ms: 1_000 + seq as i64,
        body,
    }
}

fn joined(session: &str, who: &str) -> SpoolBody {
    SpoolBody::ParticipantJoined {
        session_id: session.into(),
        participant: who.into(),
    }
}

fn metrics(sessions: u32) -> SpoolBody {
    SpoolBody::Metrics(LoadReport {
        cpu: 0.25,
        lag_ms: 1.5,
        connections: sessions * 2,
        sessions,
    })
}

#[test]
fn store_futures_are_send() {
    fn send<T: Send>(_: T) {}
    // Never polled: only the types are checked.
    let _ = |s: Store| {
        send(s.create_session(ad_hoc("a", "e", 0)));
        send(s.store_spool("e", &[]));
        send(s.set_suspended("e", true, "admin", 0));
        send(s.audit(&AuditFilter::default()));
        send(s.end_ad_hoc_sessions_on_edge("e", "failed", 0));
        send(s.record_locator_event("k", None, None, None, 0));
    };
}

#[tokio::test]
async fn a_fresh_file_is_migrated_and_state_survives_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nested/folder/locator.db");
    let url = format!("sqlite://{}", path.display());
    {
        let store = Store::open(&url).await?;
        store.ping().await?;
        let info = store.describe();
        assert_eq!(info.backend, "sqlite");
        assert_eq!(info.location, path.display().to_string());
        store.create_session(ad_hoc("s1", "e1", 10)).await?;
        store
            .create_session(room("r1", "team-42", "e1", 11))
            .await?;
        store.upsert_edge(&edge("e1", 5)).await?;
        store.upsert_edge(&edge("e2", 5)).await?;
        assert!(store.set_suspended("e1", true, "alice", 20).await?);
        store
            .store_spool("e1", &[entry(1, joined("s1", "p1"))])
            .await?;
        store.close().await;
    }
    assert!(
        path.exists(),
        "the database file and its folders are created"
    );

    // Reopen (also runs the migrations again: a no-op), with the plain-path form.
    let store = Store::open(&path.display().to_string()).await?;
    let s1 = store.get_session("s1").await?.ok_or("s1 lost")?;
    assert_eq!((s1.state, s1.edge_id.as_str()), (SessionState::Open, "e1"));
    let (r1, created) = store
        .create_session(room("r2", "team-42", "e2", 30))
        .await?;
    assert!(!created, "the room survived the restart");
    assert_eq!(r1.id, "r1");
    let edges = store.edges().await?;
    assert_eq!(edges.len(), 2);
    let e1 = store.edge("e1").await?.ok_or("e1 lost")?;
    assert!(e1.suspended);
    assert_eq!(e1.suspended_by.as_deref(), Some("alice"));
    assert_eq!(e1.suspended_at_ms, Some(20));
    assert!(!store.edge("e2").await?.ok_or("e2 lost")?.suspended);
    assert_eq!(store.acked_seq("e1").await?, 1);
    assert_eq!(
        store.count_audit(None).await?,
        2,
        "one spool row, one admin row"
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_url_forms_are_accepted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("a.db");
    for url in [
        format!("sqlite://{}", path.display()),
        format!("sqlite:{}", path.display()),
        path.display().to_string(),
    ] {
        let store = Store::open(&url).await?;
        store.ping().await?;
        store.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_file_that_is_not_a_database_gets_an_error_naming_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, vec![0x42_u8; 8192])?;
    let err = Store::open(&path.display().to_string())
        .await
        .expect_err("not a database");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("not a SQLite database"), "{text}");
    assert!(!text.to_ascii_uppercase().contains("SELECT"), "{text}");

    let err = Store::open("postgres://locator:hunter2@db.internal/locator")
        .await
        .expect_err("postgres is not built in yet");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    Ok(())
}

#[tokio::test]
async fn sessions_are_created_read_and_ended() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_in(dir.path()).await?;

    let (s, created) = store.create_session(ad_hoc("s1", "e1", 100)).await?;
    assert!(created);
    assert_eq!(s.state, SessionState::Open);
    assert_eq!(
        (s.created_at_ms, s.updated_at_ms, s.ended_at_ms),
        (100, 100, None)
    );
    assert!(!s.is_room());
    assert_eq!(store.get_session("s1").await?, Some(s));

    // Unknown (404) versus ended (410).
    assert_eq!(store.get_session("nope").await?, None);
    assert!(store.end_session("s1", "client left", 200).await?);
    assert!(
        !store.end_session("s1", "again", 300).await?,
        "ending twice"
    );
    let ended = store.get_session("s1").await?.ok_or("ended session lost")?;
    assert_eq!(ended.state, SessionState::Ended);
    assert_eq!(ended.ended_at_ms, Some(200));
    assert_eq!(ended.end_reason.as_deref(), Some("client left"));
    assert!(!store.end_session("nope", "x", 1).await?);

    // An ad-hoc id cannot be reused.
    match store.create_session(ad_hoc("s1", "e2", 400)).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Rooms never end.
    let (r, created) = store.create_session(room("r1", "k", "e1", 500)).await?;
    assert!(created && r.is_room());
    assert!(!store.end_session("r1", "x", 600).await?);
    assert_eq!(
        store.get_room("k").await?.map(|r| r.state),
        Some(SessionState::Open)
    );
    // A room whose id is taken by another session is a conflict, not a join.
    assert!(matches!(
        store
            .create_session(room("s1", "other-key", "e1", 700))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    // Empty ids and keys are refused before they reach the database.
    assert!(matches!(
        store.create_session(ad_hoc("", "e1", 1)).await,
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        store.create_session(room("x", "", "e1", 1)).await,
        Err(StoreError::Invalid { .. })
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_creates_of_one_key_give_one_room() -> TestResult {
    for (name, options) in [
        ("group commit", StoreOptions::default()),
        (
            "one transaction per create",
            StoreOptions {
                create_batch_max: 1,
                ..StoreOptions::default()
            },
        ),
    ] {
        let dir = tempfile::tempdir()?;
        let url = dir.path().join("l.db").display().to_string();
        let store = Store::open_with(&url, options).await?;
        let mut tasks = Vec::new();
        for i in 0..100 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .create_session(room(
                        &format!("id-{i}"),
                        "standup",
                        &format!("e{}", i % 3),
                        i,
                    ))
                    .await
            }));
        }
        let mut ids = HashSet::new();
        let mut creators = 0;
        for task in tasks {
            let (record, created) = task.await??;
            ids.insert(record.id.clone());
            creators += usize::from(created);
        }
        assert_eq!(creators, 1, "{name}: exactly one creator");
        assert_eq!(ids.len(), 1, "{name}: every caller got the same room");
        let room_row = store.get_room("standup").await?.ok_or("room missing")?;
        assert!(ids.contains(&room_row.id), "{name}");
        let mut rows = 0;
        for e in ["e0", "e1", "e2"] {
            rows += store.open_sessions_on_edge(e).await?.len();
        }
        assert_eq!(rows, 1, "{name}: one row in the database");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_creates_all_commit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_in(dir.path()).await?;
    let mut tasks = Vec::new();
    for i in 0..300_i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let new = if i % 3 == 0 {
                room(&format!("r{i}"), &format!("key-{}", i % 10), "e1", i)
            } else {
                ad_hoc(&format!("s{i}"), "e1", i)
            };
            store.create_session(new).await
        }));
    }
    let mut created = 0;
    for task in tasks {
        created += usize::from(task.await??.1);
    }
    // 200 ad-hoc sessions + 10 distinct keys.
    assert_eq!(created, 210);
    assert_eq!(store.open_sessions_on_edge("e1").await?.len(), 210);
    Ok(())
}

#[tokio::test]
async fn spool_batches_are_stored_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_in(dir.path()).await?;
    assert_eq!(store.acked_seq("e1").await?, 0);
    assert_eq!(store.store_spool("e1", &[]).await?, 0, "empty batch");

    let batch = vec![
        entry(
            1,
            SpoolBody::SessionStarted {
                session_id: "s1".into(),
            },
        ),
        entry(2, joined("s1", "p1")),
        entry(3, metrics(1)),
        entry(
            4,
            SpoolBody::ParticipantLeft {
                session_id: "s1".into(),
                participant: "p1".into(),
            },
        ),
        entry(5, metrics(0)),
    ];
    assert_eq!(store.store_spool("e1", &batch).await?, 5);
    assert_eq!(store.count_audit(Some("e1")).await?, 3);
    assert_eq!(store.count_metrics(Some("e1")).await?, 2);

    // The same batch again (the ack was lost): nothing changes.
    assert_eq!(store.store_spool("e1", &batch).await?, 5);
    assert_eq!(store.count_audit(Some("e1")).await?, 3);
    assert_eq!(store.count_metrics(Some("e1")).await?, 2);

    // Duplicates and disorder inside a batch; a partial overlap with the stored ones.
    let batch = vec![
        entry(4, joined("s1", "late-duplicate")),
        entry(7, joined("s1", "p3")),
        entry(6, joined("s1", "p2")),
        entry(7, joined("s1", "p3")),
        entry(8, metrics(2)),
    ];
    assert_eq!(store.store_spool("e1", &batch).await?, 8);
    assert_eq!(store.acked_seq("e1").await?, 8);
    assert_eq!(store.count_audit(Some("e1")).await?, 5);
    assert_eq!(store.count_metrics(Some("e1")).await?, 3);

    // An older entry after a newer one was acknowledged is a duplicate.
    assert_eq!(
        store
            .store_spool("e1", &[entry(2, joined("s1", "x"))])
            .await?,
        8
    );
    assert_eq!(store.count_audit(Some("e1")).await?, 5);

    // The rows carry what the entries said.
    let rows = store
        .audit(&AuditFilter {
            edge_id: Some("e1".into()),
            ..AuditFilter::default()
        })
        .await?;
    let seqs: Vec<_> = rows.iter().map(|r| r.seq).collect();
    // Newest first by id: within the third batch 7 came before 6.
    assert_eq!(seqs, [Some(6), Some(7), Some(4), Some(2), Some(1)]);
    let p2 = rows.iter().find(|r| r.seq == Some(6)).ok_or("seq 6")?;
    assert_eq!(p2.source, AuditSource::Edge);
    assert_eq!(p2.kind, "participant_joined");
    assert_eq!(p2.participant.as_deref(), Some("p2"));
    assert_eq!(p2.session_id.as_deref(), Some("s1"));
    assert_eq!(p2.at_ms, 1_006);
    let samples = store.recent_metrics("e1", 10).await?;
    assert_eq!(samples.iter().map(|m| m.seq).collect::<Vec<_>>(), [8, 5, 3]);
    assert_eq!(
        (
            samples[0].sessions,
            samples[0].connections,
            samples[0].cpu,
            samples[0].lag_ms
        ),
        (2, 4, 0.25, 1.5)
    );

    // Other edges have their own sequences.
    assert_eq!(store.acked_seq("e2").await?, 0);
    assert_eq!(store.store_spool("e2", &[entry(1, metrics(9))]).await?, 1);
    assert_eq!(store.count_metrics(None).await?, 4);

    // Invalid sequences refuse the whole batch.
    let bad = [entry(9, joined("s1", "p9")), entry(0, joined("s1", "p0"))];
    assert!(matches!(
        store.store_spool("e1", &bad).await,
        Err(StoreError::Invalid { .. })
    ));
    assert_eq!(store.acked_seq("e1").await?, 8);
    assert_eq!(store.count_audit(Some("e1")).await?, 5);
    Ok(())
}

#[tokio::test]
async fn a_reported_session_end_ends_ad_hoc_sessions_of_that_edge_only() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_in(dir.path()).await?;
    store.create_session(ad_hoc("s1", "e1", 1)).await?;
    store.create_session(ad_hoc("s2", "e2", 1)).await?;
    store.create_session(room("r1", "k1", "e1", 1)).await?;
    let ended = |id: &str| SpoolBody::SessionEnded {
        session_id: id.into(),
    };
    store
        .store_spool(
            "e1",
            &[
                entry(1, ended("s1")),
                entry(2, ended("s2")),
                entry(3, ended("r1")),
            ],
        )
        .await?;
    let s1 = store.get_session("s1").await?.ok_or("s1")?;
    assert_eq!(s1.state, SessionState::Ended);
    assert_eq!(s1.ended_at_ms, Some(1_001), "the entry's time");
    assert_eq!(s1.end_reason.as_deref(), Some("ended_on_edge"));
    assert_eq!(
        store.get_session("s2").await?.map(|s| s.state),
        Some(SessionState::Open),
        "e1 cannot end a session hosted by e2"
    );
    assert_eq!(
        store.get_session("r1").await?.map(|s| s.state),
        Some(SessionState::Open),
        "rooms stay open"
    );
    assert_eq!(
        store.count_audit(Some("e1")).await?,
        3,
        "every entry is audited"
    );
    Ok(())
}

#[tokio::test]
async fn suspension_is_idempotent_and_audited_once_per_change() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_in(dir.path()).await?;
    let stored = store.upsert_edge(&edge("e1", 10)).await?;
    assert!(!stored.suspended);

    assert!(store.set_suspended("e1", true, "alice", 20).await?);
    assert!(!store.set_suspended("e1", true, "bob", 21).await?);
    let e1 = store.edge("e1").await?.ok_or("e1")?;
    assert_eq!(
        (e1.suspended, e1.suspended_by.as_deref(), e1.suspended_at_ms),
        (true, Some("alice"), Some(20))
    );

    // A re-registration updates the edge but keeps its suspension and first sighting.
    let mut again = edge("e1", 30);
    again.version = "1.1.0".into();
    again.capacity = 50;
    let stored = store.upsert_edge(&again).await?;
    assert!(stored.suspended);
    assert_eq!(stored.suspended_by.as_deref(), Some("alice"));
    assert_eq!((stored.version.as_str(), stored.capacity), ("1.1.0", 50));
    assert_eq!((stored.first_seen_ms, stored.last_seen_ms), (10, 30));

    assert!(store.set_suspended("e1", false, "carol", 40).await?);
    assert!(!store.set_suspended("e1", false, "carol", 41).await?);
    let e1 = store.edge("e1").await?.ok_or("e1")?;
    assert_eq!(
        (e1.suspended, e1.suspended_by, e1.suspended_at_ms),
        (false, None, None)
    );

    let rows = store
        .audit(&AuditFilter {
            edge_id: Some("e1".into()),
            ..AuditFilter::default()
        })
        .await?;
    let summary: Vec<_> = rows
        .iter()
        .map(|r| (r.source, r.kind.as_str(), r.actor.as_deref(), r.at_ms))
        .collect();
    assert_eq!(
        summary,
        [
            (AuditSource::Admin, "edge_resumed", Some("carol"), 40),
            (AuditSource::Admin, "edge_suspended", Some("alice"), 20),
        ]
    );

    assert!(matches!(
        store.set_suspended("ghost", true, "alice", 50).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.count_audit(None).await?, 2);

    let id = store
        .record_admin_action(
            "edge_drained",
            Some("e1"),
            "alice",
            Some("deadline 60s"),
            60,
        )
        .await?;
    let latest = store.audit(&AuditFilter::default()).await?;
    assert_eq!(latest[0].id, id);
    assert_eq!(latest[0].detail.as_deref(), Some("deadline 60s"));
    Ok(())
}

#[tokio::test]
async fn a_failed_edge_ends_ad_hoc_sessions_and_rooms_move_by_compare_and_set() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_in(dir.path()).await?;
    store.create_session(ad_hoc("a1", "e1", 1)).await?;
    store.create_session(ad_hoc("a2", "e1", 2)).await?;
    store.create_session(ad_hoc("b1", "e2", 3)).await?;
    store.create_session(room("r1", "k1", "e1", 4)).await?;
    store.end_session("a2", "done", 5).await?;

    assert_eq!(
        store
            .end_ad_hoc_sessions_on_edge("e1", "edge failed", 10)
            .await?,
        1
    );
    assert_eq!(
        store
            .end_ad_hoc_sessions_on_edge("e1", "edge failed", 11)
            .await?,
        0
    );
    let a1 = store.get_session("a1").await?.ok_or("a1")?;
    assert_eq!(
        (a1.state, a1.end_reason.as_deref()),
        (SessionState::Ended, Some("edge failed"))
    );
    assert_eq!(
        store.get_session("a2").await?.and_then(|s| s.end_reason),
        Some("done".into()),
        "an ended session keeps its first end"
    );
    assert_eq!(
        store.get_session("b1").await?.map(|s| s.state),
        Some(SessionState::Open)
    );
    let left: Vec<_> = store
        .open_sessions_on_edge("e1")
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, ["r1"]);

    // Two locators race to move the room: one wins.
    assert!(
        store
            .reassign_session("r1", "e1", "e3", "eu-central", 20)
            .await?
    );
    assert!(
        !store
            .reassign_session("r1", "e1", "e4", "eu-west", 21)
            .await?
    );
    let r1 = store.get_room("k1").await?.ok_or("r1")?;
    assert_eq!(
        (
            r1.edge_id.as_str(),
            r1.region.as_str(),
            r1.updated_at_ms,
            r1.state
        ),
        ("e3", "eu-central", 20, SessionState::Open)
    );
    assert!(store.open_sessions_on_edge("e1").await?.is_empty());
    // Ended sessions are not moved.
    assert!(
        !store
            .reassign_session("a1", "e1", "e3", "eu-west", 30)
            .await?
    );
    Ok(())
}

#[tokio::test]
async fn audit_pages_and_filters() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open_in(dir.path()).await?;
    // 25 rows: edges alternate, sessions cycle through three, times increase by 10.
    let mut ids = Vec::new();
    for i in 0..25_i64 {
        let edge = if i % 2 == 0 { "e1" } else { "e2" };
        let session = format!("s{}", i % 3);
        ids.push(
            store
                .record_locator_event("room_reassigned", Some(edge), Some(&session), None, i * 10)
                .await?,
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase");

    // Pages of 10, newest first, by cursor.
    let mut seen = Vec::new();
    let mut filter = AuditFilter {
        limit: 10,
        ..AuditFilter::default()
    };
    let mut pages = 0;
    loop {
        let page = store.audit(&filter).await?;
        if page.is_empty() {
            break;
        }
        pages += 1;
        assert!(page.len() <= 10);
        filter.before_id = page.last().map(|r| r.id);
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(pages, 3);
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);

    let by_edge = store
        .audit(&AuditFilter {
            edge_id: Some("e2".into()),
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(by_edge.len(), 12);
    assert!(by_edge.iter().all(|r| r.edge_id.as_deref() == Some("e2")));
    assert_eq!(store.count_audit(Some("e2")).await?, 12);
    assert_eq!(store.count_audit(None).await?, 25);

    let combined = store
        .audit(&AuditFilter {
            edge_id: Some("e1".into()),
            session_id: Some("s0".into()),
            since_ms: Some(50),
            until_ms: Some(200),
            ..AuditFilter::default()
        })
        .await?;
    // e1: even i; s0: i % 3 == 0; 50 <= 10 i < 200: i in 5..20 → i = 6, 12, 18.
    let times: Vec<_> = combined.iter().map(|r| r.at_ms).collect();
    assert_eq!(times, [180, 120, 60]);
    assert!(combined.iter().all(|r| r.source == AuditSource::Locator));

    // A zero limit means the default page; huge limits are capped.
    let all = store
        .audit(&AuditFilter {
            limit: u32::MAX,
            ..AuditFilter::default()
        })
        .await?;
    assert_eq!(all.len(), 25);
    assert_eq!(store.audit(&AuditFilter::default()).await?.len(), 25);
    Ok(())
}
