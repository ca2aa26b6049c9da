//! The serve loop's bounds over real sockets: silent, slow and idle connections are closed
//! after the header-read timeout, a connection over the cap is closed on arrival, and a
//! websocket keeps its place under the cap (and outlives the header timeout) until it closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use locus_serve::{Counters, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(10);

struct Server {
    address: std::net::SocketAddr,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(limits: Limits) -> Server {
    start_on(limits, None).await
}

/// With `shards`, `serve_sharded` on that many `SO_REUSEPORT` listeners of one port.
async fn start_on(limits: Limits, shards: Option<usize>) -> Server {
    let router = Router::new()
        .route(
            "/peer",
            get(
                |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                    std::net::SocketAddr,
                >| async move { peer.to_string() },
            ),
        )
        .route(
            "/ws",
            get(|upgrade: WebSocketUpgrade| async move {
                upgrade.on_upgrade(|mut socket| async move {
                    while let Some(Ok(message)) = socket.recv().await {
                        if matches!(message, Message::Close(_))
                            || socket.send(message).await.is_err()
                        {
                            break;
                        }
                    }
                })
            }),
        );
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = oneshot::channel();
    let stopped = async move {
        let _ = stopped.await;
    };
    let (address, task) = match shards {
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address");
            let serve = locus_serve::serve(listener, router, limits, counters.clone(), stopped);
            (address, tokio::spawn(serve))
        }
        Some(shards) => {
            let listeners =
                locus_serve::bind_shards("127.0.0.1:0".parse().expect("address"), shards)
                    .expect("bind");
            let address = listeners[0].local_addr().expect("address");
            for listener in &listeners[1..] {
                assert_eq!(listener.local_addr().expect("address"), address);
            }
            let serve = locus_serve::serve_sharded(
                listeners,
                router,
                limits,
                counters.clone(),
                None,
                stopped,
            );
            (address, tokio::spawn(serve))
        }
    };
    Server {
        address,
        counters,
        stop: Some(stop),
        task,
    }
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("the server kept the connection open past {DEADLINE:?}"),
        }
    }
}

async fn get_peer(address: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what} did not happen within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn short_timeout(max_connections: usize) -> Limits {
    Limits {
        max_connections,
        header_read_timeout: Duration::from_millis(300),
    }
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed_after_the_header_timeout() {
    let server = start(short_timeout(100)).await;
    // Silent: connects and sends nothing.
    let mut silent = TcpStream::connect(server.address).await.expect("connect");
    // Slowloris: the start of a request, then nothing more.
    let mut slow = TcpStream::connect(server.address).await.expect("connect");
    slow.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    // Idle keep-alive: one full request answered, then silence.
    let mut idle = TcpStream::connect(server.address).await.expect("connect");
    idle.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    assert!(read_to_close(&mut silent).await.is_empty());
    let slow_answer = read_to_close(&mut slow).await;
    assert!(
        !String::from_utf8_lossy(&slow_answer).contains("200 OK"),
        "an incomplete request was answered"
    );
    let idle_answer = String::from_utf8_lossy(&read_to_close(&mut idle).await).into_owned();
    assert!(idle_answer.starts_with("HTTP/1.1 200 OK"), "{idle_answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    // A prompt client is served and sees its own address.
    let answer = get_peer(server.address).await;
    assert!(answer.contains("127.0.0.1:"), "{answer}");
    wait_for("every connection closed", || server.counters.open() == 0).await;
    stop(server).await;
}

#[tokio::test]
async fn a_connection_over_the_cap_is_closed_on_arrival_and_a_freed_place_is_reused() {
    let server = start(Limits {
        max_connections: 3,
        header_read_timeout: Duration::from_secs(60),
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.address).await.expect("connect"));
    }
    wait_for("three connections open", || server.counters.open() == 3).await;
    let mut over = TcpStream::connect(server.address).await.expect("connect");
    let _ = over
        .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert!(
        read_to_close(&mut over).await.is_empty(),
        "a connection over the cap was served"
    );
    assert_eq!(server.counters.refused(), 1);
    drop(held.pop());
    wait_for("a place freed", || server.counters.open() == 2).await;
    let answer = get_peer(server.address).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    drop(held);
    stop(server).await;
}

#[tokio::test]
async fn sharded_listeners_share_one_port_one_cap_and_stop_together() {
    let server = start_on(
        Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(60),
        },
        Some(2),
    )
    .await;
    // Enough connections that both listeners get some (the kernel hashes them over the
    // two); the cap counts them together.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.address).await.expect("connect"));
    }
    wait_for("four connections open", || server.counters.open() == 4).await;
    let mut over = TcpStream::connect(server.address).await.expect("connect");
    let _ = over
        .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert!(read_to_close(&mut over).await.is_empty());
    assert_eq!(server.counters.refused(), 1);
    drop(held);
    wait_for("every place freed", || server.counters.open() == 0).await;
    for _ in 0..8 {
        let answer = get_peer(server.address).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    }
    // A keep-alive connection with a request answered: shutdown closes it and returns.
    let mut idle = TcpStream::connect(server.address).await.expect("connect");
    idle.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 15];
    tokio::time::timeout(DEADLINE, idle.read_exact(&mut first))
        .await
        .expect("answer within the deadline")
        .expect("read");
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    let address = server.address;
    stop(server).await;
    read_to_close(&mut idle).await;
    assert!(
        TcpStream::connect(address).await.is_err(),
        "a listener still accepts after the shutdown"
    );
}

#[tokio::test]
async fn a_websocket_keeps_its_place_past_the_header_timeout_until_it_closes() {
    let server = start(short_timeout(2)).await;
    let url = format!("ws://{}/ws", server.address);
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket");
    // Quiet for longer than the header timeout: still open, still counted.
    tokio::time::sleep(Duration::from_millis(600)).await;
    socket
        .send(tokio_tungstenite::tungstenite::Message::text("ping"))
        .await
        .expect("send");
    let echoed = tokio::time::timeout(DEADLINE, socket.next())
        .await
        .expect("echo within the deadline");
    assert!(matches!(echoed, Some(Ok(m)) if m.to_text().ok() == Some("ping")));
    assert_eq!(server.counters.open(), 1);
    // With one place left, a second websocket fits and a third connection does not.
    let (second, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("second websocket");
    assert!(tokio_tungstenite::connect_async(&url).await.is_err());
    socket.close(None).await.expect("close");
    drop(socket);
    drop(second);
    wait_for("both websockets released their places", || {
        server.counters.open() == 0
    })
    .await;
    stop(server).await;
}

async fn stop(mut server: Server) {
    if let Some(stop) = server.stop.take() {
        let _ = stop.send(());
    }
    tokio::time::timeout(DEADLINE, server.task)
        .await
        .expect("the server stops within the deadline")
        .expect("the serve task did not panic")
        .expect("serve returned Ok");
}
