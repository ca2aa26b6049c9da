//! The running locator: shared state, background tasks and the serve loop.
//!
//! `run(listener, state, shutdown)` takes a bound listener and a shutdown future (as
//! mini-redis does), so tests bind `127.0.0.1:0` and stop the server when they like.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use locus_geo::{Config, GeoResolver};
use locus_protocol::join_token::JoinKey;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::edge_state::Effect;
use crate::metrics::{AnswerCounters, Metrics};
use crate::registry::Registry;
use crate::selection::RegionPlan;
use crate::store::Store;
use crate::turn::TurnPools;

/// Secrets and settings read from the environment, in one place.
#[derive(Clone)]
pub struct Secrets {
    /// `LOCATOR_EDGE_TOKEN`: edges authenticate with it; join tokens are signed with a
    /// key derived from it.
    pub edge_token: String,
    /// `LOCATOR_ADMIN_TOKEN`: the admin API and page; `None` disables them.
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("admin_token", &self.admin_token.as_ref().map(|_| "…"))
            .finish_non_exhaustive()
    }
}

/// Shortest edge token accepted: it guards who may receive users' traffic.
pub const MIN_TOKEN_LEN: usize = 16;

impl Secrets {
    /// Reads `LOCATOR_EDGE_TOKEN` and `LOCATOR_ADMIN_TOKEN`.
    pub fn from_env() -> Result<Secrets, String> {
        let edge_token = std::env::var("LOCATOR_EDGE_TOKEN").unwrap_or_default();
        if edge_token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "LOCATOR_EDGE_TOKEN is {}: set it to a random secret of at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`), the same for the locator and its edges",
                if edge_token.is_empty() {
                    "not set"
                } else {
                    "too short"
                }
            ));
        }
        let admin_token = std::env::var("LOCATOR_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        if let Some(token) = &admin_token
            && token.len() < MIN_TOKEN_LEN
        {
            return Err(format!(
                "LOCATOR_ADMIN_TOKEN is too short: use at least {MIN_TOKEN_LEN} random characters, or unset it to disable the admin API"
            ));
        }
        Ok(Secrets {
            edge_token,
            admin_token,
        })
    }
}

/// Everything derived from one `regions.yaml`, swapped whole on reload.
#[derive(Debug)]
pub struct Routing {
    pub config: Config,
    pub plan: RegionPlan,
    pub turn: TurnPools,
    /// `locator_answers_total` handles for this config's regions.
    pub answers: AnswerCounters,
}

impl Routing {
    pub fn new(config: Config) -> Routing {
        Routing {
            plan: RegionPlan::new(&config),
            answers: AnswerCounters::new(config.regions.len()),
            turn: TurnPools::new(&config, |name| std::env::var(name).ok()),
            config,
        }
    }
}

/// Lifetime of a join token: long enough to open a websocket after the answer, short
/// enough that a leaked one is soon useless. Clients get a fresh one from
/// `GET /v1/sessions/{id}`.
pub const JOIN_TOKEN_TTL: Duration = Duration::from_secs(300);

/// The locator's shared state.
#[derive(Debug)]
pub struct AppState {
    pub routing: ArcSwap<Routing>,
    pub geo: Arc<GeoResolver>,
    pub registry: Arc<Registry>,
    pub store: Store,
    pub join_key: JoinKey,
    pub secrets: Secrets,
    pub metrics: Metrics,
    /// Admin page sessions, answer counters by region, event-stream shutdown.
    pub admin: crate::admin::AdminState,
    pub started: Instant,
    /// Set when the database is shared by several locators (Postgres).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The last checks of every TURN/STUN server (kept across config reloads).
    pub turn_health: Arc<crate::turn_health::TurnHealth>,
}

impl AppState {
    pub fn new(config: Config, geo: GeoResolver, store: Store, secrets: Secrets) -> AppState {
        let regions: Vec<String> = config.regions.iter().map(|r| r.id.clone()).collect();
        AppState {
            routing: ArcSwap::from_pointee(Routing::new(config)),
            geo: Arc::new(geo),
            admin: crate::admin::AdminState::new(regions.clone()),
            registry: Arc::new(Registry::new(regions)),
            cluster: crate::cluster::Cluster::for_store(&store),
            store,
            join_key: JoinKey::from_edge_token(&secrets.edge_token),
            secrets,
            metrics: Metrics::default(),
            started: Instant::now(),
            turn_health: Arc::default(),
        }
    }

    /// Counts a session just assigned to `edge` (here, and on the other locators).
    pub fn note_assignment(&self, edge: &crate::snapshot::EdgeView) {
        edge.note_assignment();
        if let Some(cluster) = &self.cluster {
            cluster.note_assignment(&edge.id);
        }
    }

    /// Installs a reloaded, validated config.
    pub fn apply_config(&self, config: Config) {
        self.geo.set_rules(&config);
        self.registry
            .set_regions(config.regions.iter().map(|r| r.id.clone()).collect());
        let routing = Routing::new(config);
        // Servers already checked keep their state in the new pools.
        self.turn_health.apply(&routing.turn);
        self.routing.store(Arc::new(routing));
    }
}

/// Milliseconds since the Unix epoch (database timestamps).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch (token and TURN expiries).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Carries out what the state machine asked for.
pub async fn apply_effect(state: &Arc<AppState>, edge_id: &str, effect: Effect) {
    match effect {
        Effect::None => {}
        Effect::ProbeHealth => {
            let state = state.clone();
            let edge_id = edge_id.to_string();
            tokio::spawn(async move {
                let timeout = state.routing.load().config.edges.probe_timeout;
                let probe = match state.registry.public_url(&edge_id) {
                    Some(url) => crate::probe::healthz(&url, timeout).await,
                    None => crate::edge_state::Probe::Dead,
                };
                tracing::info!(edge = %edge_id, ?probe, "probed the /healthz of a suspect or link-lost edge");
                if let Effect::Failed(why) = state.registry.probe_result(&edge_id, probe) {
                    edge_failed(&state, &edge_id, why).await;
                }
            });
        }
        Effect::Failed(why) => edge_failed(state, edge_id, why).await,
    }
}

/// An edge became unavailable: its ad-hoc sessions end; its rooms move on their next
/// join.
async fn edge_failed(state: &Arc<AppState>, edge_id: &str, why: crate::edge_state::FailReason) {
    if state.cluster.is_some() {
        // Several locators may notice one failure: one of them handles it.
        let claim_rev = state.registry.claim_rev(edge_id);
        match state.store.claim_edge_failure(edge_id, claim_rev).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(edge = %edge_id, reason = why.describe(), "edge failed (handled by another locator)");
                return;
            }
            Err(error) => {
                tracing::warn!(edge = %edge_id, %error, "cannot tell whether another locator handles this failure; handling it");
            }
        }
    }
    if why == crate::edge_state::FailReason::Drained {
        // An upgrade or a scale-down, not a failure: no warning.
        tracing::info!(edge = %edge_id, "edge drained and left (retired)");
    } else {
        tracing::warn!(edge = %edge_id, reason = why.describe(), "edge failed");
    }
    match state
        .store
        .end_ad_hoc_sessions_on_edge(edge_id, "edge failed", now_ms())
        .await
    {
        Ok(n) => {
            tracing::info!(edge = %edge_id, sessions = n, "ended the ad-hoc sessions of a failed edge; its rooms move on their next join")
        }
        Err(error) => {
            tracing::error!(edge = %edge_id, %error, "could not end the sessions of a failed edge")
        }
    }
    let _ = state
        .store
        .record_locator_event(
            "edge_failed",
            Some(edge_id),
            None,
            Some(why.describe()),
            now_ms(),
        )
        .await;
}

/// How often the registry's clocks tick: the granularity of the failure detector
/// (suspicion comes at most this late after its timeout).
pub const TICK: Duration = Duration::from_millis(100);

/// Ticks the registry's clocks.
async fn tick_loop(state: Arc<AppState>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let timing = state.routing.load().config.edges.clone();
        for (edge_id, effect) in state.registry.tick(Instant::now(), &timing) {
            apply_effect(&state, &edge_id, effect).await;
        }
    }
}

/// Checks the GeoIP file for replacement.
async fn geoip_reload_loop(state: Arc<AppState>) {
    loop {
        let every = state.routing.load().config.geoip.reload_check;
        tokio::time::sleep(every).await;
        let geo = state.geo.clone();
        // Opening checks the whole file: off the async workers.
        let _ = tokio::task::spawn_blocking(move || geo.reload_database_if_changed()).await;
    }
}

/// Re-reads `regions.yaml` on SIGHUP; an invalid file is refused and the old config
/// stays.
#[cfg(unix)]
async fn sighup_loop(state: Arc<AppState>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: config reload by signal is off");
        return;
    };
    while hup.recv().await.is_some() {
        let path = state.routing.load().config.source.clone();
        let geoip = state.routing.load().config.geoip.database.clone();
        match Config::load(&path) {
            Ok(mut config) => {
                // The database in use stays (a --geoip override keeps applying).
                config.geoip.database = geoip;
                state.apply_config(config);
                tracing::info!(path = %path.display(), "configuration reloaded");
            }
            Err(error) => {
                tracing::error!(path = %path.display(), "configuration NOT reloaded, keeping the previous one: {error}");
            }
        }
    }
}

/// Serves until `shutdown` completes, then stops accepting and lets requests in flight
/// finish.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(tick_loop(state.clone()));
    tasks.spawn(geoip_reload_loop(state.clone()));
    tasks.spawn(crate::turn_health::check_loop(state.clone()));
    #[cfg(unix)]
    tasks.spawn(sighup_loop(state.clone()));
    if let Some(cluster) = state.cluster.clone() {
        // Know the edges other locators hold before answering the first client.
        let first = crate::cluster::sync(&state, &cluster, None);
        match tokio::time::timeout(Duration::from_secs(5), first).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the edges other locators hold yet")
            }
            Err(_) => tracing::warn!("reading the edges other locators hold timed out"),
        }
        tracing::info!(locator = %cluster.id, "sharing the database with other locators");
        tasks.spawn(crate::cluster::publish_loop(state.clone(), cluster.clone()));
        tasks.spawn(crate::cluster::assignments_loop(
            state.clone(),
            cluster.clone(),
        ));
        tasks.spawn(crate::cluster::follow_loop(state.clone(), cluster));
    }
    let app = crate::api::router(state.clone());
    // Admin event streams never end by themselves: close them when shutdown starts, or
    // the graceful shutdown would wait for them forever.
    let shutdown = async move {
        shutdown.await;
        state.admin.close_streams();
    };
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    tasks.abort_all();
    result
}

/// Completes on SIGTERM or SIGINT. The handlers are installed by this call (it must run
/// inside the runtime), so calling it before binding the port makes a signal right after
/// start-up a graceful shutdown rather than the default immediate death.
#[cfg(unix)]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                tracing::warn!("cannot listen for SIGTERM/SIGINT: stop the locator with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutting down: no new connections, finishing requests in flight");
    }
}
