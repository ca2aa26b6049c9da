//! A database slow to write does not silence an edge's link: while a spool batch waits
//! for the database, the locator keeps reading the link's heartbeats and reports, so the
//! edge stays active (before, the link read nothing until the commit, and a commit slower
//! than the suspect timeout made a healthy edge suspect; at fleet scale on SQLite, every
//! spooling edge at once).

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use locus_protocol::{EdgeMessage, LocatorMessage, SpoolBody, SpoolEntry};
use sqlx::Connection;
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_reports_are_read_while_a_spool_batch_waits_for_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = TestLocator::start(dir.path()).await;
    let mut edge = TestEdge::connect(loc.addr, register("eu-a", "eu-west", 10)).await;
    edge.report(0).await;
    wait_for(&loc.state, "eu-a active", |s| {
        edge_state(s, "eu-a") == Some("active")
    })
    .await;

    // A rhythm of heartbeats every 100 ms, so the edge is judged by them (suspect after
    // 1 s of silence) rather than by its reports alone.
    for _ in 0..12 {
        edge.ws
            .send(Message::Ping(Default::default()))
            .await
            .expect("ping");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Another connection holds SQLite's write lock: the locator's commit waits (up to its
    // busy timeout, 5 s).
    let mut blocker =
        sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", loc.database.display()))
            .await
            .expect("open the database");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .expect("take the write lock");
    send(
        &mut edge.ws,
        &EdgeMessage::Spool {
            entries: vec![SpoolEntry {
                seq: 1,
                at_unix_ms: 1_700_000_000_000,
                body: SpoolBody::SessionStarted {
                    session_id: "s-slow".into(),
                },
            }],
        },
    )
    .await;

    // Three times the suspect timeout (1 s) of heartbeats every 100 ms and a report every
    // 500 ms: the edge must never leave `active`.
    for tick in 0..30 {
        edge.ws
            .send(Message::Ping(Default::default()))
            .await
            .expect("ping");
        if tick % 5 == 0 {
            edge.report(1).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            edge_state(&loc.state, "eu-a"),
            Some("active"),
            "after {} ms of a blocked commit",
            (tick + 1) * 100
        );
    }

    // The lock goes; the batch is stored and acknowledged.
    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("release the write lock");
    loop {
        match next_message(&mut edge.ws).await {
            Some(LocatorMessage::Ack { seq }) => {
                assert_eq!(seq, 1);
                break;
            }
            Some(_) => continue,
            None => panic!("the link closed before the ack"),
        }
    }
    loc.stop().await;
}
