//! A consumer that never reads is disconnected with a reason while the others keep
//! receiving, and the edge's memory stays bounded. Alone in its test binary: it reads the
//! process's resident memory, which other tests running alongside would disturb.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use locus_edge::hub;
use tokio_tungstenite::tungstenite::Message;

const MESSAGE: usize = 16 * 1024;
const TOTAL: usize = 3000;
const QUEUE: usize = 64;
/// A stays at most this many messages ahead of B, so B (which reads) never fills its
/// queue: only C, which does not read, can fall behind.
const WINDOW: usize = QUEUE / 2;

/// A `VmRSS:`/`VmHWM:` line of /proc/self/status, in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("field present")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_is_disconnected_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = format!("http://127.0.0.1:{}", free_port().await);
    let edge = Edge::start("edge-a", vec![nowhere], dir.path(), |s| {
        s.send_queue = QUEUE;
        s.linger = Duration::from_secs(60);
    })
    .await;
    let mut a = edge.join("s", "a").await;
    presence(&mut a, &["a"]).await;
    let mut b = edge.join("s", "b").await;
    presence(&mut b, &["a", "b"]).await;
    // C never reads, and its socket buffers as little as the kernel allows.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(edge.addr).await.expect("connect");
    let (mut c, _) = tokio_tungstenite::client_async(
        edge.ws("s", &edge.token("s", "c")),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("c joins");
    presence(&mut b, &["a", "b", "c"]).await;

    // Peak resident memory from here on.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let before = proc_status_bytes("VmRSS:");

    let (kicked_tx, kicked_rx) = tokio::sync::oneshot::channel::<usize>();
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let sender = async {
        for i in 0..TOTAL {
            progress
                .wait_for(|received| i < received + WINDOW)
                .await
                .expect("B reading");
            let mut body = vec![0u8; MESSAGE];
            body[..8].copy_from_slice(&(i as u64).to_le_bytes());
            a.send(Message::Binary(body.into())).await.expect("a sends");
        }
    };
    let receiver = async {
        let mut kicked = Some(kicked_tx);
        let mut received = 0usize;
        while received < TOTAL {
            match b.next().await.expect("b open").expect("b frame") {
                Message::Binary(body) => {
                    let index = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                    assert_eq!(index as usize, received, "B receives everything, in order");
                    received += 1;
                    progress_tx.send_replace(received);
                }
                Message::Text(text) if text.contains(r#""participants":["a","b"]"#) => {
                    if let Some(tx) = kicked.take() {
                        let _ = tx.send(received);
                    }
                }
                _ => {}
            }
        }
        kicked.is_none()
    };
    let slow = async {
        // C starts reading only once it is out: everything buffered for it, then the
        // close frame with the reason.
        let at = kicked_rx.await.ok();
        (at, closed(&mut c).await)
    };
    let ((), kicked, (at, (code, reason))) = within("the relay past a slow consumer", async {
        tokio::join!(sender, receiver, slow)
    })
    .await;
    assert!(kicked, "B saw C leave");
    assert_eq!(code, hub::CLOSE_POLICY);
    assert_eq!(reason, hub::SLOW_CONSUMER);
    let at = at.expect("kicked");
    assert!(
        at < TOTAL,
        "C was disconnected while A was still sending ({at} of {TOTAL})"
    );

    let peak = proc_status_bytes("VmHWM:");
    let growth = peak.saturating_sub(before);
    let sent = (TOTAL * MESSAGE) as u64;
    eprintln!(
        "slow consumer kicked after {at} messages; sent {} MiB; peak RSS growth {} KiB",
        sent >> 20,
        growth >> 10
    );
    // Without the bound the edge would hold tens of MiB for C; with it, one queue.
    assert!(
        growth < 16 << 20,
        "resident memory grew by {growth} bytes while relaying {sent} bytes past a consumer that does not read"
    );
    assert_eq!(edge.state.hub.participants("s"), ["a", "b"]);
}
