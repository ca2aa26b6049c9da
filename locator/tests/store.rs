//! The storage test suite, written once over a [`Store`] and run against both backends:
//!
//! - `sqlite::<test>`: a real SQLite file in a temporary folder;
//! - `postgres::<test>`: a real Postgres database of its own (`locus_test_<time>_<random>`,
//!   created on the server `LOCUS_TEST_POSTGRES` names, default
//!   `postgres://postgres@127.0.0.1:5432/postgres`, and dropped when the test ends, even
//!   when it fails). A database per test keeps tests independent (each starts from the
//!   migrations, as a new deployment does) and parallel; creating one takes ~0.1 s.
//!
//! When the Postgres server cannot be reached the Postgres half fails under CI (`CI` set
//! to anything but `0`/`false`): CI must never pass by skipping. Elsewhere each Postgres
//! test prints a `SKIPPED` line to the terminal (not captured) and passes.
//! `./scripts/test` starts or installs a server and sets `LOCUS_TEST_POSTGRES`.
//!
//! A few tests are about one backend only (SQLite files and URL forms; Postgres
//! migrations under concurrent starts, outages, killed connections, credentials).

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use locus_locator::store::{
    AuditFilter, AuditSource, EdgeRecord, MetricRecord, NewSession, SessionRecord, SessionState,
    Store, StoreError, StoreInfo, StoreOptions,
};
use locus_protocol::{LoadReport, SpoolBody, SpoolEntry};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

#[path = "support/postgres.rs"]
mod postgres_support;
use postgres_support::{Scratch, ddl, password_of, postgres_server, with_database};

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------------------
// Reads only the tests make: SQL of the tests' own, through `Store::select` and
// `Store::count` (the store has no methods for them)
// ---------------------------------------------------------------------------------------

trait TestReads {
    async fn get_room(&self, key: &str) -> Result<Option<SessionRecord>, StoreError>;
    async fn open_sessions_on_edge(&self, edge: &str) -> Result<Vec<SessionRecord>, StoreError>;
    async fn edges(&self) -> Result<Vec<EdgeRecord>, StoreError>;
    async fn recent_metrics(&self, edge: &str) -> Result<Vec<MetricRecord>, StoreError>;
    async fn count_audit(&self, edge: Option<&str>) -> Result<u64, StoreError>;
    async fn count_metrics(&self, edge: Option<&str>) -> Result<u64, StoreError>;
}

impl TestReads for Store {
    async fn get_room(&self, key: &str) -> Result<Option<SessionRecord>, StoreError> {
        let rows = self
            .select("FROM sessions WHERE room_key = $1", &[key])
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Oldest first.
    async fn open_sessions_on_edge(&self, edge: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.select(
            "FROM sessions WHERE edge_id = $1 AND state = 'open' ORDER BY created_at_ms, id",
            &[edge],
        )
        .await
    }

    async fn edges(&self) -> Result<Vec<EdgeRecord>, StoreError> {
        self.select("FROM edges ORDER BY id", &[]).await
    }

    /// The ten newest.
    async fn recent_metrics(&self, edge: &str) -> Result<Vec<MetricRecord>, StoreError> {
        self.select(
            "FROM metrics WHERE edge_id = $1 ORDER BY seq DESC LIMIT 10",
            &[edge],
        )
        .await
    }

    async fn count_audit(&self, edge: Option<&str>) -> Result<u64, StoreError> {
        match edge {
            Some(edge) => self.count("FROM audit WHERE edge_id = $1", &[edge]).await,
            None => self.count("FROM audit", &[]).await,
        }
    }

    async fn count_metrics(&self, edge: Option<&str>) -> Result<u64, StoreError> {
        match edge {
            Some(edge) => self.count("FROM metrics WHERE edge_id = $1", &[edge]).await,
            None => self.count("FROM metrics", &[]).await,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The two backends
// ---------------------------------------------------------------------------------------

/// Instantiates each test, an `async fn(&TestDb) -> TestResult`, once per backend.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> super::TestResult {
                    super::run(super::Kind::Sqlite, stringify!($test), super::$test).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> super::TestResult {
                    super::run(super::Kind::Postgres, stringify!($test), super::$test).await
                }
            )*
        }
    };
}

on_both_backends!(
    a_fresh_database_is_migrated_and_state_survives_a_reopen,
    sessions_are_created_read_and_ended,
    one_hundred_concurrent_creates_of_one_key_give_one_room,
    concurrent_mixed_creates_all_commit,
    spool_batches_are_stored_once,
    many_edges_spooling_at_once_each_get_their_own_acks,
    a_reported_session_end_ends_ad_hoc_sessions_of_that_edge_only,
    suspension_is_idempotent_and_audited_once_per_change,
    a_failed_edge_ends_ad_hoc_sessions_and_rooms_move_by_compare_and_set,
    audit_pages_and_filters,
    several_stores_on_one_database_agree,
    whether_a_session_runs_on_an_edge_follows_its_reports,
    only_sessions_nobody_joined_expire,
    a_forgotten_edge_loses_its_records_but_not_its_history,
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

/// The database of one test.
struct TestDb {
    url: String,
    expected: StoreInfo,
    /// The SQLite file's folder.
    _dir: Option<tempfile::TempDir>,
    /// The Postgres database, dropped with it.
    scratch: Option<Scratch>,
}

impl TestDb {
    /// `None`: Postgres is unreachable outside CI (the test is skipped, loudly).
    async fn new(kind: Kind, test: &str) -> Result<Option<TestDb>, Box<dyn std::error::Error>> {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("locator.db").display().to_string();
                Ok(Some(TestDb {
                    url: path.clone(),
                    expected: StoreInfo {
                        backend: "sqlite",
                        location: path,
                    },
                    _dir: Some(dir),
                    scratch: None,
                }))
            }
            Kind::Postgres => {
                let Some(server) = postgres_server(test).await else {
                    return Ok(None);
                };
                let scratch = Scratch::create(&server).await?;
                let connect = PgConnectOptions::from_str(&server)?;
                Ok(Some(TestDb {
                    url: with_database(&server, &scratch.name),
                    expected: StoreInfo {
                        backend: "postgres",
                        location: format!(
                            "{}:{}/{}",
                            connect.get_host(),
                            connect.get_port(),
                            scratch.name
                        ),
                    },
                    _dir: None,
                    scratch: Some(scratch),
                }))
            }
        }
    }

    async fn open(&self) -> Result<Store, StoreError> {
        Store::open(&self.url).await
    }

    async fn open_with(&self, options: StoreOptions) -> Result<Store, StoreError> {
        Store::open_with(&self.url, options).await
    }

    /// A connection to the server as its administrator (Postgres tests only).
    async fn admin(&self) -> Result<PgConnection, Box<dyn std::error::Error>> {
        let scratch = self.scratch.as_ref().ok_or("not a Postgres test")?;
        Ok(PgConnection::connect(&scratch.server).await?)
    }

    fn database_name(&self) -> Result<&str, Box<dyn std::error::Error>> {
        Ok(&self.scratch.as_ref().ok_or("not a Postgres test")?.name)
    }
}

async fn run(kind: Kind, test: &str, body: impl AsyncFnOnce(&TestDb) -> TestResult) -> TestResult {
    let Some(db) = TestDb::new(kind, test).await? else {
        return Ok(());
    };
    body(&db).await
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

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
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------
// The suite, on both backends
// ---------------------------------------------------------------------------------------

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
        send(s.get_session("s"));
        send(s.expire_unjoined(&["s"], "expired", 0));
        send(s.forget_edge("e", 0));
        send(s.ping());
    };
}

async fn a_fresh_database_is_migrated_and_state_survives_a_reopen(db: &TestDb) -> TestResult {
    {
        let store = db.open().await?;
        store.ping().await?;
        assert_eq!(store.describe(), db.expected);
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

    // Reopen: runs the migrations again (a no-op) and finds everything.
    let store = db.open().await?;
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

async fn sessions_are_created_read_and_ended(db: &TestDb) -> TestResult {
    let store = db.open().await?;

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

async fn one_hundred_concurrent_creates_of_one_key_give_one_room(db: &TestDb) -> TestResult {
    for (mode, options) in [
        ("group", StoreOptions::default()),
        (
            "single",
            StoreOptions {
                create_batch_max: 1,
                ..StoreOptions::default()
            },
        ),
    ] {
        let store = db.open_with(options).await?;
        let key = format!("standup-{mode}");
        let mut tasks = Vec::new();
        for i in 0..100 {
            let store = store.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .create_session(room(
                        &format!("{mode}-id-{i}"),
                        &key,
                        &format!("{mode}-e{}", i % 3),
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
        assert_eq!(creators, 1, "{mode}: exactly one creator");
        assert_eq!(ids.len(), 1, "{mode}: every caller got the same room");
        let room_row = store.get_room(&key).await?.ok_or("room missing")?;
        assert!(ids.contains(&room_row.id), "{mode}");
        let mut rows = 0;
        for e in 0..3 {
            rows += store
                .open_sessions_on_edge(&format!("{mode}-e{e}"))
                .await?
                .len();
        }
        assert_eq!(rows, 1, "{mode}: one row in the database");
        store.close().await;
    }
    Ok(())
}

async fn concurrent_mixed_creates_all_commit(db: &TestDb) -> TestResult {
    let store = db.open().await?;
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

async fn spool_batches_are_stored_once(db: &TestDb) -> TestResult {
    let store = db.open().await?;
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
    let samples = store.recent_metrics("e1").await?;
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

/// Batches of many edges at once share transactions (the spool writer's group commit):
/// each edge's entries are stored once, in its own sequence, and each batch is answered
/// with its own edge's acknowledged sequence, also when one edge relays a batch twice at
/// once (a link replaced while its batch was being stored).
async fn many_edges_spooling_at_once_each_get_their_own_acks(db: &TestDb) -> TestResult {
    const EDGES: u64 = 100;
    const BATCHES: u64 = 5;
    let store = db.open().await?;
    let mut links = Vec::new();
    for e in 0..EDGES {
        let store = store.clone();
        links.push(tokio::spawn(async move {
            let edge = format!("edge-{e}");
            // Edge e relays batches of e % 3 + 1 entries, each after the previous ack.
            let size = e % 3 + 1;
            let mut acks = Vec::new();
            for b in 0..BATCHES {
                let batch: Vec<_> = (1..=size)
                    .map(|i| entry(b * size + i, joined(&format!("{edge}-s"), &format!("p{i}"))))
                    .collect();
                let (first, again) = tokio::join!(
                    store.store_spool(&edge, &batch),
                    store.store_spool(&edge, &batch)
                );
                acks.push((first?, again?));
            }
            Ok::<_, StoreError>((e, size, acks))
        }));
    }
    for link in links {
        let (e, size, acks) = link.await??;
        let expected: Vec<_> = (1..=BATCHES).map(|b| (b * size, b * size)).collect();
        assert_eq!(acks, expected, "edge-{e}");
        let edge = format!("edge-{e}");
        assert_eq!(store.acked_seq(&edge).await?, BATCHES * size);
        assert_eq!(store.count_audit(Some(&edge)).await?, BATCHES * size);
    }
    Ok(())
}

async fn whether_a_session_runs_on_an_edge_follows_its_reports(db: &TestDb) -> TestResult {
    let store = db.open().await?;
    let started = |id: &str| SpoolBody::SessionStarted {
        session_id: id.into(),
    };
    let ended = |id: &str| SpoolBody::SessionEnded {
        session_id: id.into(),
    };
    assert!(
        !store.session_running_on_edge("r1", "e1").await?,
        "nothing reported"
    );
    store
        .store_spool(
            "e1",
            &[entry(1, started("r1")), entry(2, joined("r1", "p"))],
        )
        .await?;
    assert!(store.session_running_on_edge("r1", "e1").await?);
    assert!(
        !store.session_running_on_edge("r1", "e2").await?,
        "another edge"
    );
    store.store_spool("e1", &[entry(3, ended("r1"))]).await?;
    assert!(
        !store.session_running_on_edge("r1", "e1").await?,
        "ended there"
    );
    store.store_spool("e1", &[entry(4, started("r1"))]).await?;
    assert!(
        store.session_running_on_edge("r1", "e1").await?,
        "started again"
    );
    Ok(())
}

async fn a_reported_session_end_ends_ad_hoc_sessions_of_that_edge_only(db: &TestDb) -> TestResult {
    let store = db.open().await?;
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

async fn suspension_is_idempotent_and_audited_once_per_change(db: &TestDb) -> TestResult {
    let store = db.open().await?;
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

    // The whole u32 range of capacities round-trips.
    again.capacity = u32::MAX;
    assert_eq!(store.upsert_edge(&again).await?.capacity, u32::MAX);

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

async fn a_failed_edge_ends_ad_hoc_sessions_and_rooms_move_by_compare_and_set(
    db: &TestDb,
) -> TestResult {
    let store = db.open().await?;
    store.create_session(ad_hoc("a1", "e1", 1)).await?;
    store.create_session(ad_hoc("a2", "e1", 2)).await?;
    store.create_session(ad_hoc("b1", "e2", 3)).await?;
    store.create_session(room("r1", "k1", "e1", 4)).await?;
    store.end_session("a2", "done", 5).await?;

    assert_eq!(
        store
            .end_ad_hoc_sessions_on_edge("e1", "edge failed", 10)
            .await?,
        vec!["a1".to_string()]
    );
    assert!(
        store
            .end_ad_hoc_sessions_on_edge("e1", "edge failed", 11)
            .await?
            .is_empty()
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

async fn only_sessions_nobody_joined_expire(db: &TestDb) -> TestResult {
    let store = db.open().await?;
    store.create_session(ad_hoc("started", "e1", 1)).await?;
    store.create_session(ad_hoc("joined", "e1", 2)).await?;
    store.create_session(ad_hoc("alone", "e1", 3)).await?;
    store.create_session(ad_hoc("elsewhere", "e2", 4)).await?;
    store.create_session(ad_hoc("late", "e1", 50)).await?;
    store.create_session(room("r1", "k1", "e1", 5)).await?;
    // The edge's spool records the joins; another edge cannot mark e1's session joined.
    store
        .store_spool(
            "e1",
            &[
                entry(
                    1,
                    SpoolBody::SessionStarted {
                        session_id: "started".into(),
                    },
                ),
                entry(2, joined("joined", "p1")),
            ],
        )
        .await?;
    store
        .store_spool("e2", &[entry(1, joined("alone", "p9"))])
        .await?;

    let candidates = store.unjoined_sessions(10, 100).await?;
    let mut ids: Vec<&str> = candidates.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["alone", "elsewhere"],
        "rooms, joined and newer ones are not candidates"
    );
    assert!(candidates.contains(&("elsewhere".to_string(), "e2".to_string())));
    assert_eq!(
        store.unjoined_sessions(10, 1).await?.len(),
        1,
        "the limit holds"
    );

    // A join recorded after the candidates were read keeps its session.
    store
        .store_spool("e2", &[entry(2, joined("elsewhere", "p2"))])
        .await?;
    let ended = store
        .expire_unjoined(
            &["alone", "elsewhere", "joined", "r1"],
            "expired-unjoined",
            60,
        )
        .await?;
    assert_eq!(ended, vec!["alone".to_string()]);
    let alone = store.get_session("alone").await?.ok_or("alone")?;
    assert_eq!(
        (alone.state, alone.end_reason.as_deref(), alone.ended_at_ms),
        (SessionState::Ended, Some("expired-unjoined"), Some(60))
    );
    for open in ["started", "joined", "elsewhere", "late", "r1"] {
        assert_eq!(
            store.get_session(open).await?.map(|s| s.state),
            Some(SessionState::Open),
            "{open}"
        );
    }
    assert!(
        store
            .expire_unjoined(&["alone"], "again", 70)
            .await?
            .is_empty(),
        "ended once"
    );
    Ok(())
}

async fn a_forgotten_edge_loses_its_records_but_not_its_history(db: &TestDb) -> TestResult {
    let store = db.open().await?;
    store.upsert_edge(&edge("gone", 1)).await?;
    store.upsert_edge(&edge("held", 1)).await?;
    store.set_suspended("held", true, "alice", 2).await?;
    store
        .record_locator_event("edge_failed", Some("gone"), None, Some("x"), 3)
        .await?;
    assert!(store.forget_edge("gone", 0).await?);
    assert!(store.forget_edge("held", 0).await?);
    assert_eq!(store.edge("gone").await?, None);
    assert!(
        store.edge("held").await?.is_some_and(|e| e.suspended),
        "a suspended edge keeps its row (and its suspension)"
    );
    assert_eq!(store.count_audit(Some("gone")).await?, 1);
    Ok(())
}

async fn audit_pages_and_filters(db: &TestDb) -> TestResult {
    let store = db.open().await?;
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

/// Three stores on one database stand for three locators: the database, not a process,
/// keeps one room per key, one winner of a move, one copy of a relayed spool entry and
/// one audit row per suspension change.
async fn several_stores_on_one_database_agree(db: &TestDb) -> TestResult {
    let stores = [
        db.open().await?,
        db.open().await?,
        db.open_with(StoreOptions {
            create_batch_max: 1,
            ..StoreOptions::default()
        })
        .await?,
    ];

    // 90 creations of one key, spread over the three.
    let mut tasks = Vec::new();
    for i in 0..90 {
        let store = stores[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            store
                .create_session(room(&format!("id-{i}"), "shared", "e1", i as i64))
                .await
        }));
    }
    let (mut ids, mut creators) = (HashSet::new(), 0);
    for task in tasks {
        let (record, created) = task.await??;
        ids.insert(record.id);
        creators += usize::from(created);
    }
    assert_eq!((creators, ids.len()), (1, 1), "one room, one creator");

    // All three try to move it away from e1 at once: one wins, all see the winner.
    let room_id = ids.into_iter().next().ok_or("no room")?;
    let mut moves = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let store = store.clone();
        let room_id = room_id.clone();
        moves.push(tokio::spawn(async move {
            store
                .reassign_session(&room_id, "e1", &format!("to-{i}"), "eu-west", 100)
                .await
        }));
    }
    let mut winners = 0;
    for task in moves {
        winners += usize::from(task.await??);
    }
    assert_eq!(winners, 1, "compare-and-set: exactly one move");
    let moved = stores[1].get_room("shared").await?.ok_or("room lost")?;
    assert!(moved.edge_id.starts_with("to-"), "{moved:?}");

    // An edge's spool batch relayed through all three at once is stored once.
    let batch: Vec<_> = (1..=20)
        .map(|seq| entry(seq, joined("s", &format!("p{seq}"))))
        .collect();
    let mut relays = Vec::new();
    for store in &stores {
        let store = store.clone();
        let batch = batch.clone();
        relays.push(tokio::spawn(async move {
            store.store_spool("e9", &batch).await
        }));
    }
    for task in relays {
        assert_eq!(task.await??, 20);
    }
    assert_eq!(stores[2].count_audit(Some("e9")).await?, 20);

    // Two admins suspend one edge through two locators at once: one change, one row.
    stores[0].upsert_edge(&edge("e5", 1)).await?;
    let (a, b) = tokio::join!(
        stores[0].set_suspended("e5", true, "alice", 200),
        stores[1].set_suspended("e5", true, "bob", 201),
    );
    assert_eq!(usize::from(a?) + usize::from(b?), 1);
    assert_eq!(stores[2].count_audit(Some("e5")).await?, 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// SQLite only
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn sqlite_files_and_folders_are_created_and_every_url_form_opens_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nested/folder/locator.db");
    let store = Store::open(&format!("sqlite://{}", path.display())).await?;
    store.create_session(ad_hoc("s1", "e1", 10)).await?;
    assert_eq!(store.describe().location, path.display().to_string());
    store.close().await;
    assert!(
        path.exists(),
        "the database file and its folders are created"
    );
    for url in [
        format!("sqlite://{}", path.display()),
        format!("sqlite:{}", path.display()),
        path.display().to_string(),
    ] {
        let store = Store::open(&url).await?;
        store.ping().await?;
        assert!(store.get_session("s1").await?.is_some(), "{url}");
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
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Postgres only
// ---------------------------------------------------------------------------------------

/// No server needed: a refused connection and an unparsable URL.
#[tokio::test]
async fn postgres_errors_never_show_the_password() -> TestResult {
    let err = Store::open_with(
        "postgres://locator:hunter2@127.0.0.1:1/locus",
        StoreOptions {
            acquire_timeout: Duration::from_millis(300),
            ..StoreOptions::default()
        },
    )
    .await
    .expect_err("nothing listens on port 1");
    let (text, debug) = (err.to_string(), format!("{err:?}"));
    assert!(text.contains("127.0.0.1:1/locus"), "{text}");
    assert!(text.contains("cannot connect"), "{text}");
    assert!(
        !text.contains("hunter2") && !debug.contains("hunter2"),
        "{debug}"
    );

    for bad in [
        "postgres://locator:hunter2@db:notaport/locus",
        "postgresql://locator:hunter2@db/locus?sslmode=hunter2",
    ] {
        let err = Store::open(bad).await.expect_err(bad);
        assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err:?}");
        let (text, debug) = (err.to_string(), format!("{err:?}"));
        assert!(
            !text.contains("hunter2") && !debug.contains("hunter2"),
            "{debug}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_describes_itself_without_credentials_and_names_a_missing_database() -> TestResult
{
    const TEST: &str = "postgres_describes_itself_without_credentials_and_names_a_missing_database";
    let Some(db) = TestDb::new(Kind::Postgres, TEST).await? else {
        return Ok(());
    };
    let store = db.open().await?;
    assert_eq!(store.describe(), db.expected);
    if let Some(password) = password_of(&db.url).filter(|p| !p.is_empty()) {
        // As in a URL or a Debug field (the bare word may be part of a database name).
        let debug = format!("{store:?}");
        for shown in [format!(":{password}@"), format!("{password:?}")] {
            assert!(!debug.contains(&shown), "{debug}");
        }
    }
    store.close().await;

    let missing = with_database(&db.url, "locus_no_such_database");
    let err = Store::open(&missing).await.expect_err("no such database");
    let text = err.to_string();
    assert!(text.contains("/locus_no_such_database"), "{text}");
    assert!(text.contains("does not exist"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_locators_starting_at_once_apply_the_migrations_once() -> TestResult {
    const TEST: &str = "postgres_locators_starting_at_once_apply_the_migrations_once";
    let Some(db) = TestDb::new(Kind::Postgres, TEST).await? else {
        return Ok(());
    };
    let opens = (0..6).map(|_| db.open());
    let stores = futures_util::future::join_all(opens).await;
    for store in &stores {
        let store = store.as_ref().map_err(|e| format!("open failed: {e}"))?;
        store.ping().await?;
    }
    let mut admin = PgConnection::connect(&db.url).await?;
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut admin)
            .await?;
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/postgres"
    ))?
    .filter(|f| {
        f.as_ref()
            .is_ok_and(|f| f.path().extension().is_some_and(|e| e == "sql"))
    })
    .count();
    assert_eq!(applied.len(), files, "each migration applied once");
    assert!(applied.iter().all(|(_, ok)| *ok));
    // No locator kept the migration lock.
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'")
        .fetch_one(&mut admin)
        .await?;
    assert_eq!(held, 0);
    let _ = admin.close().await;
    Ok(())
}

/// The database refuses connections for a while (as during a restart): calls fail with
/// an error instead of hanging or crashing, `ping` fails (so `/readyz` says not ready),
/// the group-commit writer answers every waiting caller; once the database is back the
/// same store works again without being reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_outage_fails_calls_and_readiness_then_the_store_recovers() -> TestResult {
    const TEST: &str = "postgres_an_outage_fails_calls_and_readiness_then_the_store_recovers";
    let Some(db) = TestDb::new(Kind::Postgres, TEST).await? else {
        return Ok(());
    };
    let store = db
        .open_with(StoreOptions {
            acquire_timeout: Duration::from_secs(1),
            ..StoreOptions::default()
        })
        .await?;
    store.create_session(ad_hoc("before", "e1", 1)).await?;

    let name = db.database_name()?;
    let mut admin = db.admin().await?;
    ddl(format!(
        "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false"
    ))
    .execute(&mut admin)
    .await?;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut admin)
    .await?;

    let deadline = Duration::from_secs(20);
    assert!(
        tokio::time::timeout(deadline, store.ping()).await?.is_err(),
        "ping fails while the database is down"
    );
    let mut creates = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        creates.push(tokio::spawn(async move {
            store
                .create_session(ad_hoc(&format!("during-{i}"), "e1", 2))
                .await
        }));
    }
    for task in creates {
        match tokio::time::timeout(deadline, task).await?? {
            Err(StoreError::Batch { .. }) => {}
            other => panic!("expected a batch error while down, got {other:?}"),
        }
    }
    assert!(store.get_session("before").await.is_err());
    assert!(
        store
            .store_spool("e1", &[entry(1, metrics(1))])
            .await
            .is_err()
    );

    ddl(format!(
        "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true"
    ))
    .execute(&mut admin)
    .await?;
    let _ = admin.close().await;

    store.ping().await?;
    let (_, created) = store.create_session(ad_hoc("after", "e1", 3)).await?;
    assert!(created, "the writer serves batches after the outage");
    assert!(store.get_session("before").await?.is_some());
    assert_eq!(store.store_spool("e1", &[entry(1, metrics(1))]).await?, 1);
    Ok(())
}

/// Every connection of the store is killed, repeatedly, while creations run (what a
/// server restart does to a busy locator). No creation is lost or answered wrongly:
/// each answered one is stored, once; later calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_under_load_are_replaced() -> TestResult {
    const TEST: &str = "postgres_connections_killed_under_load_are_replaced";
    let Some(db) = TestDb::new(Kind::Postgres, TEST).await? else {
        return Ok(());
    };
    let store = db.open().await?;
    let name = db.database_name()?.to_string();
    let mut admin = db.admin().await?;

    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for i in 0..40 {
                let id = format!("t{t}-{i}");
                match store.create_session(ad_hoc(&id, "e1", i)).await {
                    Ok((record, created)) => {
                        assert!(created, "{id} answered as not created");
                        assert_eq!(record.id, id);
                        answered.push(id);
                    }
                    Err(StoreError::Batch { .. }) => {}
                    Err(other) => panic!("{id}: unexpected error {other:?}"),
                }
            }
            answered
        }));
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .execute(&mut admin)
        .await?;
    }
    let mut answered = Vec::new();
    for task in tasks {
        answered.extend(task.await?);
    }
    let _ = admin.close().await;

    let stored: HashSet<String> = store
        .open_sessions_on_edge("e1")
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    for id in &answered {
        assert!(stored.contains(id), "{id} was answered but is not stored");
    }
    assert!(
        answered.len() * 2 >= 16 * 40,
        "most creations succeed despite the kills ({} of 640)",
        answered.len()
    );
    let (_, created) = store.create_session(ad_hoc("later", "e2", 1)).await?;
    assert!(created);
    store.ping().await?;
    Ok(())
}

/// A real stop and start of a Postgres server (one of this test's own: the shared one
/// serves the other tests meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_server_restart_is_survived() -> TestResult {
    const TEST: &str = "postgres_a_server_restart_is_survived";
    let Some(server) = postgres_support::PrivatePostgres::start(TEST) else {
        return Ok(());
    };
    let pg_ctl = |action: &'static str| {
        tokio::task::block_in_place(|| match action {
            "stop" => server.stop(),
            _ => server.restart(),
        });
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let url = server.url();
    let store = Store::open_with(
        &url,
        StoreOptions {
            acquire_timeout: Duration::from_secs(1),
            ..StoreOptions::default()
        },
    )
    .await?;
    store.create_session(ad_hoc("before", "e1", 1)).await?;

    pg_ctl("stop")?;
    let down = async {
        assert!(
            store.ping().await.is_err(),
            "ping fails while the server is down"
        );
        assert!(matches!(
            store.create_session(ad_hoc("during", "e1", 2)).await,
            Err(StoreError::Batch { .. })
        ));
        assert!(store.get_session("before").await.is_err());
    };
    let checked = tokio::time::timeout(Duration::from_secs(30), down).await;
    pg_ctl("start")?;
    checked?;

    // Back: the same store, without reopening.
    let mut ready = false;
    for _ in 0..50 {
        if store.ping().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "ping succeeds once the server is back");
    let (_, created) = store.create_session(ad_hoc("after", "e1", 3)).await?;
    assert!(created);
    assert!(store.get_session("before").await?.is_some());
    Ok(())
}
