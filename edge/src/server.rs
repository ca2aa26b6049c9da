//! The running edge: HTTP routes and the serve loop, the top of the crate.
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
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::hub::Hub;
use crate::state::EdgeState;
use locus_serve::problem::Problem;

/// `GET /v1/status`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RtcView {
    /// WebRTC peers alive now, and the most this edge serves (`--max-rtc-peers`).
    pub peers: usize,
    pub max_peers: usize,
    /// Sessions with at least one WebRTC peer.
    pub rooms: usize,
    /// The media plane's counters (offers, answers, tracks, packets…).
    #[serde(flatten)]
    pub counters: crate::media::MediaSnapshot,
}

/// Resources of the process, to see leaks from outside (tests count them).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProcessView {
    /// Tokio tasks alive.
    pub tasks: usize,
    /// Open file descriptors (`/proc/self/fd`); `null` where that is not readable.
    pub fds: Option<usize>,
    /// Client connections open now (HTTP and websockets), the most allowed
    /// (`--max-connections`, as fitted to the descriptor limit), and how many were closed
    /// on arrival because it was reached.
    pub open_connections: usize,
    pub max_connections: usize,
    pub refused_connections: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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
                open_connections: self.http.open(),
                max_connections: self.settings.connections.max_connections,
                refused_connections: self.http.refused(),
            },
        }
    }
}

/// Every route of the edge, each registered with its OpenAPI operation (utoipa-axum's
/// `routes!`): the router and `/openapi.json` come from these same calls.
fn routes() -> OpenApiRouter<Arc<EdgeState>> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(status))
        .routes(routes!(metrics))
        .routes(routes!(crate::openapi::openapi_json))
}

fn session_routes() -> OpenApiRouter<Arc<Hub>> {
    OpenApiRouter::new().routes(routes!(crate::openapi::session_ws))
}

/// The edge's OpenAPI document (what `GET /openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes().into_openapi();
    doc.merge(session_routes().into_openapi());
    crate::openapi::finish(doc)
}

/// All routes of the edge.
pub fn router(state: Arc<EdgeState>) -> Router {
    let (sessions, _) = session_routes().split_for_parts();
    let (router, _) = routes().split_for_parts();
    let document = crate::openapi::Served::new(&openapi());
    router
        .with_state(state.clone())
        .merge(sessions.with_state(state.hub.clone()))
        .fallback(not_found)
        .layer(axum::middleware::map_response(
            locus_serve::problem::rejections_as_problems,
        ))
        .layer(axum::Extension(document))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness (the locator probes it to tell a dead edge from a cut link)",
    responses((status = 200, description = "The process serves", body = String, content_type = "text/plain")),
)]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: 503 while draining",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "Draining", body = String, content_type = "text/plain"),
    ),
)]
async fn readyz(State(state): State<Arc<EdgeState>>) -> Response {
    if state.drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ready".into_response()
    }
}

#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "operations",
    summary = "Link, sessions, connections, spool, media, process",
    responses((status = 200, description = "The edge's status", body = Status)),
)]
async fn status(State(state): State<Arc<EdgeState>>) -> Response {
    axum::Json(state.status()).into_response()
}

/// `GET /metrics`: a few gauges in the Prometheus text format, labelled with the edge
/// and its region (both validated to characters that need no escaping). Written by
/// hand: six gauges do not need a metrics library.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (text format)",
    responses((status = 200, description = "The metrics", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8")),
)]
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
    let process = &status.process;
    text.push_str(&format!(
        "# HELP edge_http_connections_open Client connections open (HTTP and websockets)\n\
         # TYPE edge_http_connections_open gauge\n\
         edge_http_connections_open{{{labels}}} {}\n\
         # HELP edge_http_connections_refused Connections closed on arrival because --max-connections were open\n\
         # TYPE edge_http_connections_refused counter\n\
         edge_http_connections_refused_total{{{labels}}} {}\n",
        process.open_connections, process.refused_connections
    ));
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
    Problem::with_status(
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
        .take_outbox()
        .ok_or_else(|| std::io::Error::other("this edge state is already running"))?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::link::run(state.clone(), outbox));
    tasks.spawn(crate::load::run_lag_ticker(state.load.clone()));
    tasks.spawn(crate::load::run_sampler(
        state.load.clone(),
        state.hub.clone(),
        state.media.clone(),
        state.spool.clone(),
    ));
    let drain = state.drain.clone();
    let supervisor = crate::drain::supervise(
        drain.clone(),
        state.hub.clone(),
        state.link.clone(),
        state.spool.clone(),
    );
    tasks.spawn(async move {
        // A drain that failed must not leave the edge running forever.
        if let Err(error) = tokio::spawn(supervisor).await {
            tracing::error!(%error, "the drain failed: stopping now");
            drain.finish();
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
    let result = locus_serve::serve_tls(
        listener,
        router(state.clone()),
        state.settings.connections,
        state.http.clone(),
        state.settings.tls.clone(),
        async move { finished.drain.finished().await },
    )
    .await;
    tasks.abort_all();
    result
}
