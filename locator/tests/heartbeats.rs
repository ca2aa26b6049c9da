//! Heartbeats over the edge link: an edge that announces `pong_heartbeats` is offered
//! them in its welcome and judged by its unsolicited pongs; an older edge (no features)
//! gets the welcome it always got and is judged by its pings, as before.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use locus_protocol::{EdgeMessage, LocatorMessage};
use support::*;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The welcome as the edge reads it: the raw text and the message.
async fn register_raw(ws: &mut Ws, reg: locus_protocol::Register) -> (String, LocatorMessage) {
    send(ws, &EdgeMessage::Register(reg)).await;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a welcome within 10 s")
            .expect("link open")
            .expect("frame");
        if let Message::Text(text) = frame {
            let message = serde_json::from_str(&text).expect("protocol message");
            return (text.to_string(), message);
        }
    }
}

/// Sends heartbeats (`pong`: unsolicited pongs, else pings) every 100 ms for 1.2 s, then
/// falls silent; returns how long until the locator stopped counting the edge active.
/// With reports every 10 s only heartbeats can make that fast: judged by its reports
/// alone, the edge would stay active for 30 s.
async fn silence_noticed_after(loc: &TestLocator, ws: &mut Ws, id: &str, pong: bool) -> Duration {
    for _ in 0..12 {
        let beat = if pong {
            Message::Pong(Default::default())
        } else {
            Message::Ping(Default::default())
        };
        ws.send(beat).await.expect("heartbeat");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(edge_state(&loc.state, id), Some("active"));
    let silent = Instant::now();
    wait_for(&loc.state, "the silent edge no longer active", |s| {
        edge_state(s, id) != Some("active")
    })
    .await;
    silent.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pong_heartbeats_are_offered_to_edges_that_announce_them_and_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = dir.path().join("locator.sqlite");
    let loc = TestLocator::start_on(
        dir.path(),
        url.to_str().expect("utf-8"),
        "30s",
        "10s",
        "127.0.0.1:0",
    )
    .await;

    // A newer edge: offered pong heartbeats, and its pongs are heartbeats.
    let mut reg = register("eu-new", "eu-west", 10);
    reg.features = locus_protocol::features::ALL
        .iter()
        .map(|f| f.to_string())
        .collect();
    let credential = edge_credential("eu-new", "eu-west");
    let mut ws = connect_link(loc.addr, Some(&credential))
        .await
        .expect("link");
    let (_, welcome) = register_raw(&mut ws, reg).await;
    assert!(
        matches!(
            welcome,
            LocatorMessage::Welcome {
                pong_heartbeats: true,
                ..
            }
        ),
        "{welcome:?}"
    );
    let noticed = silence_noticed_after(&loc, &mut ws, "eu-new", true).await;
    assert!(noticed < Duration::from_secs(5), "{noticed:?}");

    // An older edge (no features): a welcome without the field (its parser refuses
    // unknown fields), and judged by its pings as before.
    let credential = edge_credential("eu-old", "eu-west");
    let mut ws = connect_link(loc.addr, Some(&credential))
        .await
        .expect("link");
    let (text, _) = register_raw(&mut ws, register("eu-old", "eu-west", 10)).await;
    assert!(text.contains(r#""type":"welcome""#), "{text}");
    assert!(!text.contains("pong_heartbeats"), "{text}");
    // Its pings are answered: the pong it waits for to know the locator is there.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(payload))) => return payload,
                Some(Ok(_)) => continue,
                other => panic!("link ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong within 10 s");
    assert_eq!(&answer[..], b"are you there");
    let noticed = silence_noticed_after(&loc, &mut ws, "eu-old", false).await;
    assert!(noticed < Duration::from_secs(5), "{noticed:?}");
    loc.stop().await;
}
