//! What the locator's and the edge's HTTP servers share: the accept loop below, so that
//! neither server can be held open by clients that connect and then say nothing, and
//! [`problem`], their `application/problem+json` answers and its OpenAPI schema.
//!
//! `axum::serve` accepts every connection and waits for its request forever. This loop is
//! the same hyper-util connection builder with three bounds added, each written once here:
//!
//! - **A cap on open connections** ([`Limits::max_connections`]), counting HTTP connections
//!   and the websockets upgraded from them until their socket closes. A connection accepted
//!   over the cap is closed at once: the caller retries, and the process never reaches its
//!   file descriptor limit (where `accept` itself fails and every client times out).
//!   [`fit_to_fd_limit`] raises the soft descriptor limit and keeps the cap below it.
//! - **A header-read timeout** ([`Limits::header_read_timeout`]): hyper starts it when it
//!   waits for a request's headers, on a new connection and on a keep-alive connection after
//!   each answer, so it bounds slowloris senders and idle keep-alive connections alike.
//!   Upgraded websockets are past it; their own heartbeats bound them.
//! - **Graceful shutdown**: when `shutdown` completes, accepting stops and the requests in
//!   flight finish (websockets already upgraded are the application's to close).
//!
//! With a [`ServerTls`] ([`serve_tls`]), every connection is TLS: the handshake runs in the
//! connection's task, within the header-read timeout too (a client that opens a socket
//! and never finishes the handshake holds its place no longer than one that never sends
//! headers), and the certificate is reloaded when its files change (see [`tls`]).

pub mod problem;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

#[cfg(feature = "test-certs")]
pub mod test_certs;
pub mod tls;
pub use tls::ServerTls;

/// The bounds one server applies to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once, upgraded websockets included.
    pub max_connections: usize,
    /// Longest wait for a request's complete headers, from when the server starts waiting
    /// for them (a new connection, or a keep-alive one after its last answer).
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// The default connection cap (lowered by [`fit_to_fd_limit`] where descriptors are fewer).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The default header-read timeout: far above a real client's first bytes, short enough
/// that a flood of silent connections drains in seconds.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the loop has done, for the servers' metrics and status pages.
#[derive(Debug, Default)]
pub struct Counters {
    open: AtomicUsize,
    refused: AtomicU64,
    last_refusal_logged: Mutex<Option<Instant>>,
}

impl Counters {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed on arrival because the cap was reached, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn refuse(&self, peer: SocketAddr, max: usize) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        // One line per second at most: a flood must not become a flood of log lines.
        let mut last = self
            .last_refusal_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            *last = Some(now);
            tracing::warn!(
                %peer,
                max_connections = max,
                refused_since_start = refused,
                "connection refused: the server holds its most connections (--max-connections)"
            );
        }
    }
}

/// Raises the soft file descriptor limit to the hard one and returns `requested`, lowered
/// when the limit leaves fewer than `reserve` descriptors beside it (files, databases,
/// other sockets the process needs). Logs what it lowered and why.
pub fn fit_to_fd_limit(requested: usize, reserve: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the file descriptor limit");
            return requested;
        }
    };
    let available = usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserve)
        .max(1);
    if requested > available {
        tracing::warn!(
            requested,
            allowed = available,
            fd_limit = soft,
            reserved = reserve,
            "--max-connections lowered to fit the file descriptor limit (raise it with LimitNOFILE= or ulimit -n)"
        );
        available
    } else {
        requested
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then stops
/// accepting and waits for the requests in flight. Handlers see the peer address as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_tls(listener, router, limits, counters, None, shutdown).await
}

/// As [`serve`], over TLS with `tls`'s certificate when given (plain HTTP when `None`).
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    counters: Arc<Counters>,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // The shutdown future runs as a task of its own (as in axum::serve): what it does
    // (the locator closes its admin event streams) still happens when the caller drops
    // this future instead of letting it finish.
    let stopped = spawn_shutdown(shutdown);
    let shared = Shared {
        router,
        limits,
        counters,
        tls,
        permits,
    };
    serve_loop(listener, shared, stopped).await;
    Ok(())
}

/// Runs `shutdown` as a task of its own and returns a receiver that turns true when it
/// has completed.
fn spawn_shutdown(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::sync::watch::Receiver<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    stopped
}

/// What every accept loop of one server shares.
#[derive(Clone)]
struct Shared {
    router: Router,
    limits: Limits,
    counters: Arc<Counters>,
    tls: Option<Arc<ServerTls>>,
    /// The places under [`Limits::max_connections`], one pool for all loops.
    permits: Arc<Semaphore>,
}

/// Binds `count` listeners to `address` with `SO_REUSEPORT`, for [`serve_sharded`]: the
/// kernel spreads new connections over them. Port 0 picks one free port for all. Call
/// within a tokio runtime (the sockets are made listening there, then handed over).
/// Without `SO_REUSEPORT` (not unix), one listener.
pub fn bind_shards(address: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let count = if cfg!(unix) { count.max(1) } else { 1 };
    let mut address = address;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restart can bind while old connections linger.
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        socket.set_reuseport(true)?;
        socket.bind(address)?;
        let listener = socket.listen(1024)?;
        address = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// As [`serve_tls`], with one thread per listener (from [`bind_shards`]), each running
/// its own single-threaded runtime: a connection is served start to end on the thread
/// that accepted it, as in nginx's one process per core, with no hand-over of woken
/// tasks between threads (what tokio's shared scheduler spends per request under load).
/// The connection cap counts all of them together. Returns when every loop has stopped
/// and its requests in flight have finished.
///
/// The threads outlive this call, driving their runtime until the process exits:
/// sockets opened by requests on them (a pooled database connection) may still be used
/// by the caller's runtime, and upgraded websockets stay served, as on the caller's
/// runtime until it ends.
pub async fn serve_sharded(
    listeners: Vec<std::net::TcpListener>,
    router: Router,
    limits: Limits,
    counters: Arc<Counters>,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shared = Shared {
        router,
        limits,
        counters,
        tls,
        permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
    };
    let stopped = spawn_shutdown(shutdown);
    let mut finished = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let (done, finished_here) = tokio::sync::oneshot::channel::<io::Result<()>>();
        let (shared, stopped) = (shared.clone(), stopped.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("http-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let result = match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            serve_loop(listener, shared, stopped).await;
                            Ok(())
                        }
                        Err(error) => Err(error),
                    };
                    let _ = done.send(result);
                    std::future::pending::<()>().await;
                });
            })?;
        finished.push(finished_here);
    }
    for finished_here in finished {
        finished_here
            .await
            .map_err(|_| io::Error::other("an HTTP thread ended early"))??;
    }
    Ok(())
}

/// Accepts on `listener` until `stopped` turns true, then stops accepting and waits for
/// the requests in flight.
async fn serve_loop(
    listener: TcpListener,
    shared: Shared,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let Shared {
        router,
        limits,
        counters,
        tls,
        permits,
    } = shared;
    // hyper's own HTTP/1 builder: hyper-util's "auto" builder first waits for bytes to
    // tell HTTP/1 from HTTP/2, with no timeout, so a silent socket would never be closed.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // Graceful shutdown as axum::serve does it: each connection task holds a receiver of
    // `closing`; the loop sends on it to start the shutdown and waits until every
    // receiver is gone.
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error, shutdown.as_mut()).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counters.refuse(peer, limits.max_connections);
            drop(tcp);
            continue;
        };
        // Relayed messages are small and latency matters: no Nagle delay.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
        let stream = Counted::new(tcp, permit, counters.clone());
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(request)
        });
        let closing_seen = closing_seen.clone();
        let builder = builder.clone();
        match &tls {
            None => {
                tokio::spawn(serve_connection(
                    builder,
                    stream,
                    service,
                    peer,
                    closing_seen,
                ));
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let handshake_timeout = limits.header_read_timeout;
                tokio::spawn(async move {
                    let mut closing = closing_seen.clone();
                    let handshake =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                    let stream = tokio::select! {
                        result = handshake => match result {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake not finished within the header-read timeout: closed");
                                return;
                            }
                        },
                        _ = closing.changed() => return,
                    };
                    drop(closing);
                    serve_connection(builder, stream, service, peer, closing_seen).await;
                });
            }
        }
    }
    drop(listener);
    drop(closing_seen);
    let _ = closing.send(true);
    closing.closed().await;
}

/// Serves one connection's requests until it ends, or until the server stops (then the
/// request in flight finishes first).
async fn serve_connection<S>(
    builder: hyper::server::conn::http1::Builder,
    stream: impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
    service: S,
    peer: SocketAddr,
    mut closing_seen: tokio::sync::watch::Receiver<bool>,
) where
    S: hyper::service::HttpService<Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let mut asked_to_close = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                break;
            }
            // A send, or the loop dropped: either way the server is stopping.
            _ = closing_seen.changed(), if !asked_to_close => {
                asked_to_close = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    drop(closing_seen);
}

/// An `accept` error: a connection that failed before it was accepted is nothing to wait
/// for; anything else (descriptors exhausted) is waited out briefly, as axum::serve does.
async fn accept_failed(error: io::Error, shutdown: Pin<&mut impl Future<Output = ()>>) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept failed; retrying in 100 ms");
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(100)) => {}
        () = shutdown => {}
    }
}

/// A TCP stream that holds its place under the cap until it is dropped: after a websocket
/// upgrade the stream moves to the websocket, and so does the place.
struct Counted {
    tcp: TcpStream,
    counters: Arc<Counters>,
    _permit: OwnedSemaphorePermit,
}

impl Counted {
    fn new(tcp: TcpStream, permit: OwnedSemaphorePermit, counters: Arc<Counters>) -> Self {
        counters.open.fetch_add(1, Ordering::Relaxed);
        Self {
            tcp,
            counters,
            _permit: permit,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
