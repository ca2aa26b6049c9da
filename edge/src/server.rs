//! The running edge: shared state, HTTP routes and the serve loop.
//!
//! `run(listener, state, shutdown)` takes a bound listener and a shutdown future (as
//! mini-redis does): tests bind `127.0.0.1:0`; the binary passes its first SIGTERM.
//! Shutdown starts the drain; `run` returns when the drain is over.
//!
//! Routes: `GET /v1/sessions/{id}/ws` (the session websocket, see [`crate::hub`]),
//! `GET /healthz` (200 while the process runs: the locator probes it to tell a dead edge
//! from a cut link), `GET /readyz` (503 while draining), `GET /v1/status` (JSON: link,
//! sessions, connections, spool), `GET /metrics` (the same figures for Prometheus: the
//! spool backlog is only visible here, since it grows while the locator is unreachable).

use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use locus_protocol::EdgeMessage;
use locus_protocol::join_token::JoinKey;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{EdgeToken, Settings};
use crate::drain::Drain;
use crate::hub::{Hub, HubConfig};
use crate::link::LinkHandle;
use crate::load::LoadMeter;
use crate::media::Media;
use crate::problem::Problem;
use crate::spool::{Spool, SpoolError, SpoolOptions};

/// Everything the edge's tasks share.
#[derive(Debug)]
pub struct EdgeState {
    pub settings: Settings,
    pub token: EdgeToken,
    pub hub: Arc<Hub>,
    pub media: Arc<Media>,
    pub spool: Spool,
    pub load: Arc<LoadMeter>,
    pub drain: Drain,
    pub link: LinkHandle,
    outbox: Mutex<Option<mpsc::Receiver<EdgeMessage>>>,
}

impl EdgeState {
    /// Opens the spool and builds the state (nothing runs until [`run`]).
    pub async fn open(settings: Settings, token: EdgeToken) -> Result<Arc<EdgeState>, SpoolError> {
        let spool = Spool::open(
            &settings.spool_dir,
            SpoolOptions {
                max_entries: settings.spool_max_entries,
                ..SpoolOptions::default()
            },
        )
        .await?;
        let media = Media::new(settings.media.clone());
        let hub = Hub::new(
            HubConfig {
                edge_id: settings.edge_id.clone(),
                max_message_bytes: settings.max_message_bytes,
                max_participants: settings.max_participants,
                send_queue: settings.send_queue,
                linger: settings.linger,
            },
            JoinKey::from_edge_token(token.expose()),
            spool.clone(),
            media.clone(),
        );
        let (link, outbox) = LinkHandle::new();
        Ok(Arc::new(EdgeState {
            drain: Drain::new(settings.drain_deadline),
            settings,
            token,
            hub,
            media,
            spool,
            load: Arc::new(LoadMeter::new()),
            link,
            outbox: Mutex::new(Some(outbox)),
        }))
    }
}

/// `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub edge_id: String,
    pub region: String,
    pub version: &'static str,
    pub draining: bool,
    /// Link URL of the locator connected now, if any.
    pub locator: Option<String>,
    pub sessions: usize,
    pub connections: u32,
    pub spool: SpoolView,
    pub rtc: RtcView,
    pub process: ProcessView,
}

/// The media plane in `/v1/status`.
#[derive(Debug, Serialize)]
pub struct RtcView {
    /// WebRTC peers alive now, and the most this edge serves (`--max-rtc-peers`).
    pub peers: usize,
    pub max_peers: usize,
    /// Sessions with at least one WebRTC peer.
    pub rooms: usize,
    #[serde(flatten)]
    pub counters: crate::media::MediaSnapshot,
}

/// Resources of the process, to see leaks from outside (tests count them).
#[derive(Debug, Serialize)]
pub struct ProcessView {
    /// Tokio tasks alive.
    pub tasks: usize,
    /// Open file descriptors (`/proc/self/fd`); `null` where that is not readable.
    pub fds: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct SpoolView {
    pub len: u64,
    pub last_seq: u64,
    pub max_entries: u64,
}

impl EdgeState {
    pub fn status(&self) -> Status {
        let spool = self.spool.status();
        Status {
            edge_id: self.settings.edge_id.clone(),
            region: self.settings.region.clone(),
            version: env!("CARGO_PKG_VERSION"),
            draining: self.drain.is_draining(),
            locator: self.link.locator(),
            sessions: self.hub.session_count(),
            connections: self.hub.connections(),
            spool: SpoolView {
                len: spool.len,
                last_seq: spool.last_seq,
                max_entries: self.spool.max_entries(),
            },
            rtc: RtcView {
                peers: self.media.peer_count(),
                max_peers: self.media.config().max_peers,
                rooms: self.media.room_count(),
                counters: self.media.snapshot(),
            },
            process: ProcessView {
                tasks: tokio::runtime::Handle::try_current()
                    .map_or(0, |h| h.metrics().num_alive_tasks()),
                fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count()),
            },
        }
    }
}

/// All routes of the edge.
pub fn router(state: Arc<EdgeState>) -> Router {
    let sessions = Router::new()
        .route("/v1/sessions/{id}/ws", get(crate::hub::ws_handler))
        .with_state(state.hub.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(sessions)
        .fallback(not_found)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<EdgeState>>) -> Response {
    if state.drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ready".into_response()
    }
}

async fn status(State(state): State<Arc<EdgeState>>) -> Response {
    axum::Json(state.status()).into_response()
}

/// `GET /metrics`: a few gauges in the Prometheus text format, labelled with the edge
/// and its region (both validated to characters that need no escaping). Written by
/// hand: six gauges do not need a metrics library.
async fn metrics(State(state): State<Arc<EdgeState>>) -> Response {
    let status = state.status();
    let labels = format!("edge=\"{}\",region=\"{}\"", status.edge_id, status.region);
    let gauges: [(&str, &str, u64); 6] = [
        (
            "edge_spool_entries",
            "Entries in the durable spool not yet acknowledged by a locator",
            status.spool.len,
        ),
        (
            "edge_spool_max_entries",
            "Most entries the spool keeps (--spool-max-entries)",
            status.spool.max_entries,
        ),
        ("edge_sessions", "Sessions hosted", status.sessions as u64),
        (
            "edge_connections",
            "Open client websockets",
            u64::from(status.connections),
        ),
        (
            "edge_draining",
            "1 while the edge drains",
            u64::from(status.draining),
        ),
        (
            "edge_locator_connected",
            "1 while the link to a locator is up",
            u64::from(status.locator.is_some()),
        ),
    ];
    let mut text = String::new();
    for (name, help, value) in gauges {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value}\n"
        ));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no-such-route",
        "no such route: sessions are at /v1/sessions/{id}/ws",
    )
}

/// Serves until the drain (started by `shutdown` or by the locator) is over.
pub async fn run(
    listener: TcpListener,
    state: Arc<EdgeState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let outbox = state
        .outbox
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| std::io::Error::other("this edge state is already running"))?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::link::run(state.clone(), outbox));
    tasks.spawn(crate::load::run_lag_ticker(state.load.clone()));
    tasks.spawn(crate::load::run_sampler(state.clone()));
    let supervisor = state.clone();
    tasks.spawn(async move {
        // A drain that failed must not leave the edge running forever.
        if let Err(error) = tokio::spawn(crate::drain::supervise(supervisor.clone())).await {
            tracing::error!(%error, "the drain failed: stopping now");
            supervisor.drain.finish();
        }
    });
    let on_shutdown = state.clone();
    tasks.spawn(async move {
        shutdown.await;
        if on_shutdown.drain.start() {
            tracing::info!("shutdown requested: draining");
        }
    });
    let finished = state.clone();
    // Relayed messages are small and latency matters: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a client connection");
        }
    });
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { finished.drain.finished().await })
        .await;
    tasks.abort_all();
    result
}
