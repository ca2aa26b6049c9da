//! The running locator: background tasks (state ticks, TURN checks, GeoIP and config
//! reload, the cluster listener) and the serve loop. The top of the crate: nothing
//! imports it but the command line.
//!
//! `run(listener, state, shutdown)` takes a bound listener and a shutdown future (as
//! mini-redis does), so tests bind `127.0.0.1:0` and stop the server when they like.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use locus_geo::{Config, TurnChecks};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::state::{AppState, now_ms, now_unix};
use crate::turn::CheckTarget;
use crate::turn::health::{
    CheckResult, CheckerEnv, ServerHealth, ServerKey, ServerState, Transition, TurnHealth, probe,
    run_checks,
};

/// How often the registry's clocks tick: the granularity of the failure detector
/// (suspicion comes at most this late after its timeout).
pub const TICK: Duration = Duration::from_millis(100);

/// Ticks the registry's clocks.
async fn tick_loop(state: Arc<AppState>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        let timing = state.routing().config.edges.clone();
        for (edge_id, effect) in state.registry.tick(Instant::now(), &timing) {
            crate::ops::apply_effect(&state, &edge_id, effect).await;
        }
    }
}

/// Checks the GeoIP file for replacement.
async fn geoip_reload_loop(state: Arc<AppState>) {
    loop {
        let every = state.routing().config.geoip.reload_check;
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
        let routing = state.routing();
        let (path, geoip) = (
            routing.config.source.clone(),
            routing.config.geoip.database.clone(),
        );
        drop(routing);
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

/// The locator's checker: real probes, metrics, audit entries, answers.
#[derive(Debug)]
struct AppChecker {
    state: Arc<AppState>,
}

impl AppChecker {
    fn new(state: Arc<AppState>) -> AppChecker {
        AppChecker { state }
    }
}

impl CheckerEnv for AppChecker {
    fn targets(&self) -> (TurnChecks, Vec<CheckTarget>) {
        let routing = self.state.routing();
        (routing.config.turn.clone(), routing.turn.check_targets())
    }

    fn probe(&self, target: &CheckTarget) -> BoxFuture<'static, CheckResult> {
        let target = target.clone();
        Box::pin(async move { probe::check(&target, now_unix()).await })
    }

    fn checked(
        &self,
        target: &CheckTarget,
        result: &CheckResult,
        elapsed: Duration,
        transition: Option<Transition>,
        health: &ServerHealth,
    ) {
        let key = &target.key;
        self.state
            .metrics
            .turn_checked(&key.region, &key.url, health.state.hands_out(), elapsed);
        if let Err(error) = result {
            tracing::debug!(region = %key.region, server = %key.url, %error, "TURN server check failed");
        }
        let Some(Transition { from, to }) = transition else {
            return;
        };
        // Unchecked → up is every server's first check: not news.
        if from == ServerState::Unchecked && to == ServerState::Up {
            return;
        }
        let detail = match (to, result) {
            (ServerState::Down, Err(error)) => format!(
                "{} of {} is down after {} failed check(s): {error}",
                key.url, key.region, health.fails_in_row
            ),
            _ => format!(
                "{} of {} is up after {} successful check(s)",
                key.url, key.region, health.oks_in_row
            ),
        };
        if to == ServerState::Down {
            tracing::warn!(region = %key.region, server = %key.url, "{detail}");
        } else {
            tracing::info!(region = %key.region, server = %key.url, "{detail}");
        }
        let kind = if to == ServerState::Down {
            "turn_server_down"
        } else {
            "turn_server_up"
        };
        let state = self.state.clone();
        tokio::spawn(async move {
            if let Err(error) = state
                .store
                .record_locator_event(kind, None, None, Some(&detail), now_ms())
                .await
            {
                tracing::warn!(%error, "could not write the audit entry of a TURN server's change of state");
            }
        });
    }

    fn removed(&self, key: &ServerKey) {
        self.state.metrics.turn_removed(&key.region, &key.url);
    }

    fn apply(&self, health: &TurnHealth) {
        health.apply(&self.state.routing().turn);
    }

    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// The locator's check loop of TURN and STUN servers.
async fn turn_check_loop(state: Arc<AppState>) {
    let health = state.turn_health.clone();
    run_checks(health, Arc::new(AppChecker::new(state))).await;
}

/// Where the locator accepts its HTTP connections.
#[derive(Debug)]
pub enum Listeners {
    /// One listener, served by the runtime `run` is called on (tests).
    One(TcpListener),
    /// Listeners of one address bound with `SO_REUSEPORT`
    /// ([`locus_serve::bind_shards`]), each served by a thread of its own (the binary).
    Shards(Vec<std::net::TcpListener>),
}

impl Listeners {
    /// The address they listen on.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self {
            Listeners::One(listener) => listener.local_addr(),
            Listeners::Shards(listeners) => listeners
                .first()
                .ok_or_else(|| std::io::Error::other("no listener"))?
                .local_addr(),
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
    run_on(Listeners::One(listener), state, shutdown).await
}

/// As [`run`], on `listeners`.
pub async fn run_on(
    listeners: Listeners,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(tick_loop(state.clone()));
    tasks.spawn(crate::housekeeping::unjoined_loop(state.clone()));
    tasks.spawn(crate::housekeeping::forget_loop(state.clone()));
    tasks.spawn(geoip_reload_loop(state.clone()));
    tasks.spawn(turn_check_loop(state.clone()));
    #[cfg(unix)]
    tasks.spawn(sighup_loop(state.clone()));
    if let Some(cluster) = state.cluster.clone() {
        // Know the edges other locators hold before answering the first client.
        let first = crate::cluster_sync::sync(&state, &cluster, None);
        match tokio::time::timeout(Duration::from_secs(5), first).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the edges other locators hold yet")
            }
            Err(_) => tracing::warn!("reading the edges other locators hold timed out"),
        }
        tracing::info!(locator = %cluster.id, "sharing the database with other locators");
        tasks.spawn(crate::cluster_sync::publish_loop(
            state.clone(),
            cluster.clone(),
        ));
        tasks.spawn(crate::cluster::assignments_loop(cluster.clone()));
        tasks.spawn(crate::cluster_sync::follow_loop(state.clone(), cluster));
    }
    let app = crate::api::router(state.clone());
    let (limits, counters, tls) = (
        state.connection_limits,
        state.http.clone(),
        state.tls.clone(),
    );
    // Admin event streams never end by themselves: close them when shutdown starts, or
    // the graceful shutdown would wait for them forever.
    let shutdown = async move {
        shutdown.await;
        state.admin.close_streams();
    };
    let result = match listeners {
        Listeners::One(listener) => {
            locus_serve::serve_tls(listener, app, limits, counters, tls, shutdown).await
        }
        Listeners::Shards(listeners) => {
            locus_serve::serve_sharded(listeners, app, limits, counters, tls, shutdown).await
        }
    };
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
