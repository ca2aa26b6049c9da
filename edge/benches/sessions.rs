//! Session benchmark of the edge (issue 4), against a baseline measured in the same run.
//!
//! Run: `cargo bench -p locus-edge --bench sessions` (add `-- --quick` for a short run).
//!
//! - **Idle memory per connection**: the real `edge` binary, N websocket clients joined
//!   (sessions of 10) and then idle; the figure is the growth of the process's `VmRSS`
//!   (from `/proc/<pid>/status`) divided by N, at N = 1,000 and 10,000.
//! - **Fan-out throughput**: sessions of 2, 10 and 50 participants (100, 20 and 4
//!   sessions: 200 clients each time), one sender per session, 64-byte binary messages;
//!   the figure is deliveries per second (messages received by all receivers together),
//!   the median of 3 rounds. Senders keep a window of 64 messages over their slowest
//!   receiver, so nobody is ever disconnected as a slow consumer.
//!
//! Baseline: a bare relay written directly on tokio-tungstenite (no tokens, presence,
//! bounds, spool or link; unbounded queues; tungstenite's default 128 KiB buffers; writes
//! batched and flushed like the edge's), run as
//! a separate process exactly like the edge: this binary re-executed with
//! `LOCUS_BENCH_BASELINE=1`. Both servers run on the same machine as the load generator,
//! so absolute figures include the generator's share of the CPU; the ratios compare like
//! with like.
//!
//! File descriptors: 10,000 clients need 10,000 descriptors in this process and as many
//! in the server's; the soft limit (`ulimit -n`) must allow it. The run checks and skips
//! the 10,000 step otherwise.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use locus_protocol::join_token::{JoinClaims, JoinKey};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const BASELINE_ENV: &str = "LOCUS_BENCH_BASELINE";
const TOKEN: &str = "bench-edge-token-0123456789abcdef";
const WINDOW: usize = 64;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var_os(BASELINE_ENV).is_some() {
        runtime.block_on(baseline_server());
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    runtime.block_on(run(quick));
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Edge,
    Baseline,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Edge => "edge",
            Kind::Baseline => "baseline (bare tokio-tungstenite relay)",
        }
    }
}

struct Server {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(kind: Kind) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, addr) = match kind {
            Kind::Edge => {
                let port = {
                    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                    l.local_addr().expect("addr").port()
                };
                let closed = {
                    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                    l.local_addr().expect("addr").port()
                };
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
                let child = Command::new(env!("CARGO_BIN_EXE_edge"))
                    .args(["--id", "bench-edge", "--region", "bench", "--listen"])
                    .arg(addr.to_string())
                    .arg("--public-url")
                    .arg(format!("http://{addr}"))
                    .arg("--locator")
                    .arg(format!("http://127.0.0.1:{closed}"))
                    .arg("--spool-dir")
                    .arg(dir.path())
                    .args(["--capacity", "100000", "--linger", "1s"])
                    .env("LOCATOR_EDGE_TOKEN", TOKEN)
                    .env("RUST_LOG", "error")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("spawn edge");
                (child, addr)
            }
            Kind::Baseline => {
                let mut child = Command::new(std::env::current_exe().expect("exe"))
                    .env(BASELINE_ENV, "1")
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn baseline");
                let stdout = child.stdout.take().expect("stdout");
                let mut line = String::new();
                BufReader::new(stdout)
                    .read_line(&mut line)
                    .expect("address");
                (child, line.trim().parse().expect("address line"))
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "{} did not start", kind.name());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server {
            kind,
            child,
            addr,
            _dir: dir,
        }
    }

    fn url(&self, session: &str, pid: &str) -> String {
        match self.kind {
            Kind::Edge => {
                let token = JoinKey::from_edge_token(TOKEN).sign(&JoinClaims {
                    sid: session.into(),
                    eid: "bench-edge".into(),
                    pid: pid.into(),
                    exp: now_unix() + 300,
                });
                format!("ws://{}/v1/sessions/{session}/ws?token={token}", self.addr)
            }
            Kind::Baseline => format!("ws://{}/v1/sessions/{session}/ws", self.addr),
        }
    }

    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
}

async fn connect(url: String) -> Client {
    let mut attempt = 0;
    loop {
        match tokio_tungstenite::connect_async_with_config(
            url.as_str(),
            Some(client_config()),
            true,
        )
        .await
        {
            Ok((client, _)) => return client,
            Err(e) => {
                attempt += 1;
                assert!(attempt < 5, "cannot connect: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Soft limit of open files of this process.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(1024)
}

/// Connects clients `from..to` (sessions of 10); each then drains its socket forever.
async fn connect_idle(
    server: &Server,
    from: usize,
    to: usize,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let gate = Arc::new(Semaphore::new(128));
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1024);
    for i in from..to {
        let url = server.url(&format!("idle-{}", i / 10), &format!("p{i}"));
        let gate = gate.clone();
        let ready = ready_tx.clone();
        let kind = server.kind;
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate");
            let mut client = connect(url).await;
            if kind == Kind::Edge {
                // Admitted once the first presence list arrives.
                let _ = client.next().await;
            }
            drop(permit);
            let _ = ready.send(()).await;
            while let Some(Ok(_)) = client.next().await {}
        });
    }
    drop(ready_tx);
    for _ in from..to {
        ready_rx.recv().await.expect("client ready");
    }
}

async fn idle_memory(kind: Kind, steps: &[usize]) -> Vec<(usize, f64)> {
    let server = Server::start(kind).await;
    // Warm up (first connection, first session, lazy allocations), then the base line.
    let mut warm = tokio::task::JoinSet::new();
    connect_idle(&server, 1_000_000, 1_000_010, &mut warm).await;
    warm.abort_all();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let base = server.rss();
    let mut tasks = tokio::task::JoinSet::new();
    let mut results = Vec::new();
    let mut connected = 0;
    for &n in steps {
        connect_idle(&server, connected, n, &mut tasks).await;
        connected = n;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = server.rss();
        results.push((n, rss.saturating_sub(base) as f64 / n as f64));
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    results
}

/// `sessions` sessions of `size` participants; one sender each sends `messages`.
/// Returns deliveries per second.
async fn fanout(kind: Kind, size: usize, sessions: usize, messages: usize) -> f64 {
    let server = Server::start(kind).await;
    let start = Arc::new(tokio::sync::Barrier::new(sessions + 1));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..sessions {
        let session = format!("fan-{size}-{s}");
        let mut clients = Vec::new();
        for p in 0..size {
            let mut client = connect(server.url(&session, &format!("p{p}"))).await;
            if kind == Kind::Edge {
                let _ = client.next().await;
            }
            clients.push(client);
        }
        let mut sender = clients.remove(0);
        let mut progress = Vec::new();
        for mut receiver in clients {
            let (tx, rx) = watch::channel(0usize);
            progress.push(rx);
            let delivered = delivered.clone();
            tasks.spawn(async move {
                let mut got = 0;
                while got < messages {
                    match receiver.next().await {
                        Some(Ok(Message::Binary(_))) => {
                            got += 1;
                            if got % 16 == 0 || got == messages {
                                tx.send_replace(got);
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => panic!("receiver lost its connection"),
                    }
                }
                delivered.fetch_add(got as u64, Ordering::Relaxed);
            });
        }
        let start = start.clone();
        tasks.spawn(async move {
            start.wait().await;
            let payload = bytes_of(64);
            for i in 0..messages {
                if i >= WINDOW && i % (WINDOW / 4) == 0 {
                    for rx in &mut progress {
                        let _ = rx.wait_for(|got| got + WINDOW > i).await;
                    }
                }
                sender
                    .send(Message::Binary(payload.clone()))
                    .await
                    .expect("send");
            }
            // Keep the sender connected until its receivers are done.
            for rx in &mut progress {
                let _ = rx.wait_for(|got| *got >= messages).await;
            }
        });
    }
    // Let presence traffic settle, then go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    start.wait().await;
    while let Some(result) = tasks.join_next().await {
        result.expect("bench task");
    }
    let elapsed = began.elapsed().as_secs_f64();
    delivered.load(Ordering::Relaxed) as f64 / elapsed
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn bytes_of(n: usize) -> tokio_tungstenite::tungstenite::Bytes {
    vec![7u8; n].into()
}

async fn run(quick: bool) {
    let limit = open_files_limit();
    let mut steps = vec![1_000];
    if quick {
        println!("quick run: 1,000 idle clients only");
    } else if limit >= 10_500 {
        steps.push(10_000);
    } else {
        println!(
            "skipping 10,000 idle clients: open files limit is {limit} (raise it with `ulimit -n 21000`)"
        );
    }
    println!("\n== idle memory per connection (RSS growth / clients; sessions of 10) ==");
    let edge = idle_memory(Kind::Edge, &steps).await;
    let base = idle_memory(Kind::Baseline, &steps).await;
    println!(
        "{:>8}  {:>14}  {:>14}  {:>8}",
        "clients", "edge", "baseline", "ratio"
    );
    for ((n, e), (_, b)) in edge.iter().zip(&base) {
        println!(
            "{n:>8}  {:>10.1} KiB  {:>10.1} KiB  {:>8.3}",
            e / 1024.0,
            b / 1024.0,
            e / b
        );
    }

    println!("\n== fan-out deliveries per second (64-byte messages, one sender per session) ==");
    let total = if quick { 100_000 } else { 1_000_000 };
    println!(
        "{:>5} {:>9}  {:>12}  {:>12}  {:>6}",
        "size", "sessions", "edge", "baseline", "ratio"
    );
    let rounds = if quick { 1 } else { 3 };
    for size in [2usize, 10, 50] {
        let sessions = (200 / size).max(1);
        let messages = total / (sessions * (size - 1));
        let mut e = Vec::new();
        let mut b = Vec::new();
        for _ in 0..rounds {
            e.push(fanout(Kind::Edge, size, sessions, messages).await);
            b.push(fanout(Kind::Baseline, size, sessions, messages).await);
        }
        let (e, b) = (median(e), median(b));
        println!(
            "{size:>5} {sessions:>9}  {e:>12.0}  {b:>12.0}  {:>6.2}",
            e / b
        );
    }
}

// ---------------------------------------------------------------------------------------
// The baseline: a bare relay on tokio-tungstenite with default settings.

type Rooms = Arc<
    std::sync::Mutex<std::collections::HashMap<String, Vec<(u64, mpsc::UnboundedSender<Message>)>>>,
>;

async fn baseline_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("{}", listener.local_addr().expect("addr"));
    let rooms: Rooms = Arc::default();
    let mut next_id = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        next_id += 1;
        tokio::spawn(baseline_connection(stream, rooms.clone(), next_id));
    }
}

// The handshake callback's error type is tungstenite's (an HTTP response).
#[allow(clippy::result_large_err)]
async fn baseline_connection(stream: TcpStream, rooms: Rooms, id: u64) {
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    let callback = |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                    response| {
        path = request.uri().path().to_string();
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let session = path.split('/').nth(3).unwrap_or_default().to_string();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    rooms
        .lock()
        .expect("rooms")
        .entry(session.clone())
        .or_default()
        .push((id, tx));
    let (mut sink, mut stream) = ws.split();
    // Writes what is queued in one go, like the edge (a flush per message would make
    // the baseline look slow for the wrong reason).
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let mut batch = vec![message];
            while batch.len() < 64 {
                match rx.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            for message in batch {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        if message.is_binary() || message.is_text() {
            let rooms = rooms.lock().expect("rooms");
            for (other, tx) in rooms.get(&session).into_iter().flatten() {
                if *other != id {
                    let _ = tx.send(message.clone());
                }
            }
        }
    }
    if let Some(peers) = rooms.lock().expect("rooms").get_mut(&session) {
        peers.retain(|(other, _)| *other != id);
    }
    writer.abort();
}
