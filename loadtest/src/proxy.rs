//! A user-space TCP proxy that injects link faults (the kernel's netem is not available
//! on the machines this runs on): every edge's locator link goes through one, so the
//! load test can cut, slow down and reset that link while the edge and its clients go on.
//!
//! One [`LinkProxy`] listens on a loopback port and relays each accepted connection to
//! one upstream address, in both directions, in the mode its controller sets:
//!
//! - **pass**: bytes go through as they come;
//! - **delay** `d`: each chunk is delivered `d` after it was read, in order (a fixed
//!   added latency, each way);
//! - **blackhole**: nothing passes and the connection stays open. The proxy stops
//!   reading, so the sender's kernel buffers fill and its writes stall, as across a
//!   partitioned network; a connection accepted meanwhile waits before reaching the
//!   upstream. On **heal** everything held is delivered in order, as TCP retransmission
//!   would after a partition ends.
//! - **reset**: every open connection is closed with a TCP RST (`SO_LINGER` 0) both ways.
//!
//! Modes apply to open connections at once. Dropping the proxy closes everything.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does to the bytes, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Mode {
    blackhole: bool,
    delay: Duration,
    /// Bumped by each reset: connections open at the time close with RST.
    resets: u64,
}

/// Chunks read but not yet delivered, per direction, before reading pauses.
const MAX_QUEUED: usize = 256;
const CHUNK: usize = 16 * 1024;

/// A fault-injecting TCP proxy in front of one upstream address.
#[derive(Debug)]
pub struct LinkProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free loopback port and relays to `upstream`. Must be called inside a
    /// tokio runtime.
    pub fn start(upstream: SocketAddr) -> io::Result<LinkProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::default());
        let task = tokio::spawn(accept_loop(listener, upstream, mode.subscribe()));
        Ok(LinkProxy { addr, mode, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Pass nothing, keep every connection open.
    pub fn blackhole(&self) {
        self.mode.send_modify(|m| m.blackhole = true);
    }

    /// Deliver each chunk `delay` after it was read, each way (zero: no added latency).
    pub fn delay(&self, delay: Duration) {
        self.mode.send_modify(|m| m.delay = delay);
    }

    /// Close every open connection with a TCP reset.
    pub fn reset(&self) {
        self.mode.send_modify(|m| m.resets += 1);
    }

    /// Back to passing bytes as they come: what a blackhole held is delivered.
    pub fn heal(&self) {
        self.mode.send_modify(|m| {
            m.blackhole = false;
            m.delay = Duration::ZERO;
        });
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        // The accept loop owns the connections' tasks: aborting it ends them all.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    connections.spawn(relay(client, upstream, mode.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Waits until the mode's reset count passes `seen`.
async fn reset_after(mode: &mut watch::Receiver<Mode>, seen: u64) {
    if mode.wait_for(|m| m.resets > seen).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let _ = client.set_nodelay(true);
    let resets = mode.borrow().resets;
    // A connection made across a partition does not reach the other side until it heals.
    let blackholed = mode.borrow().blackhole;
    if blackholed {
        let mut held = mode.clone();
        let healed = tokio::select! {
            ok = held.wait_for(|m| !m.blackhole) => ok.is_ok(),
            _ = reset_after(&mut mode, resets) => false,
        };
        if !healed {
            let _ = client.set_zero_linger();
            return;
        }
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // Nothing listens upstream: the client sees its connection refused, as a reset.
        let _ = client.set_zero_linger();
        return;
    };
    let _ = server.set_nodelay(true);
    let was_reset = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let mut watch_reset = mode.clone();
        tokio::select! {
            _ = async {
                tokio::join!(
                    pump(client_read, server_write, mode.clone()),
                    pump(server_read, client_write, mode.clone()),
                )
            } => false,
            _ = reset_after(&mut watch_reset, resets) => true,
        }
    };
    if was_reset {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// Copies one direction in the current mode until end of stream or an error.
async fn pump(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, mut mode: watch::Receiver<Mode>) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; CHUNK];
    let mut ended = false;
    loop {
        let now_mode = *mode.borrow_and_update();
        if ended && queue.is_empty() {
            let _ = to.shutdown().await;
            return;
        }
        let holding = now_mode.blackhole;
        let due = queue.front().map(|(at, _)| *at);
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            read = from.read(&mut buf), if !holding && !ended && queue.len() < MAX_QUEUED => {
                match read {
                    Ok(0) | Err(_) => ended = true,
                    Ok(n) => queue.push_back((Instant::now() + now_mode.delay, buf[..n].to_vec())),
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if !holding && due.is_some() => {
                if let Some((_, chunk)) = queue.pop_front()
                    && to.write_all(&chunk).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes everything back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, text: &[u8]) -> Vec<u8> {
        s.write_all(text).await.expect("write");
        let mut got = vec![0u8; text.len()];
        s.read_exact(&mut got).await.expect("read");
        got
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn passes_bytes_both_ways_and_a_delay_adds_latency() {
        let proxy = LinkProxy::start(echo_server().await).expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut s, b"hello").await, b"hello");
        proxy.delay(Duration::from_millis(150));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut s, b"slow").await, b"slow");
        let took = started.elapsed();
        // 150 ms each way.
        assert!(took >= Duration::from_millis(300), "{took:?}");
        proxy.heal();
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut s, b"fast").await, b"fast");
        assert!(started.elapsed() < Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_blackhole_holds_everything_without_closing_and_healing_delivers_it() {
        let proxy = LinkProxy::start(echo_server().await).expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut s, b"before").await, b"before");
        proxy.blackhole();
        s.write_all(b"held")
            .await
            .expect("write into the partition");
        let mut got = [0u8; 4];
        // Nothing comes back, and the connection is not closed either.
        assert!(
            tokio::time::timeout(Duration::from_millis(400), s.read(&mut got))
                .await
                .is_err(),
            "a blackholed link passes nothing"
        );
        // A connection made during the partition is accepted but reaches nothing yet.
        let mut late = TcpStream::connect(proxy.addr()).await.expect("connect");
        late.write_all(b"late").await.expect("write");
        proxy.heal();
        tokio::time::timeout(WAIT, s.read_exact(&mut got))
            .await
            .expect("delivered after healing")
            .expect("read");
        assert_eq!(&got, b"held");
        tokio::time::timeout(WAIT, late.read_exact(&mut got))
            .await
            .expect("the late connection goes through")
            .expect("read");
        assert_eq!(&got, b"late");
    }

    #[tokio::test]
    async fn a_reset_closes_open_connections_with_rst_and_new_ones_work() {
        let proxy = LinkProxy::start(echo_server().await).expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut s, b"x").await, b"x");
        proxy.reset();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the reset arrives");
        match read {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            Ok(n) => panic!("expected a reset, read {n} bytes"),
        }
        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut again, b"again").await, b"again");
    }

    #[tokio::test]
    async fn an_upstream_that_is_gone_is_a_reset_for_the_client() {
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let proxy = LinkProxy::start(gone).expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
