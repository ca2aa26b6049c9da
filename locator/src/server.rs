//! The running locator: shared state, background tasks and the serve loop.
//!
//! `run(listener, state, shutdown)` takes a bound listener and a shutdown future (as
//! mini-redis does), so tests bind `127.0.0.1:0` and stop the server when they like.

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
    /// `LOCATOR_EDGE_KEY`, then (during a rotation) `LOCATOR_EDGE_KEY_PREVIOUS`: the
    /// master keys every edge credential is derived from. The first one issues
    /// credentials and signs join tokens for edges whose link is not held here; both are
    /// accepted from edges.
    pub edge_keys: Vec<String>,
    /// `LOCATOR_ADMIN_TOKEN`: the admin API and page; `None` disables them.
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("edge_keys", &self.edge_keys.len())
            .field("admin_token", &self.admin_token.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Weakest token accepted, as estimated by [`strength_bits`]: 16 random hexadecimal
/// digits pass (they would fail only with 5 or fewer distinct digits, about once in
/// 10^5), `aaaaaaaaaaaaaaaa` and `abcdabcdabcdabcd` do not.
pub const MIN_TOKEN_BITS: f64 = 40.0;

/// A cheap upper estimate of a token's entropy: its length times the bits of an alphabet
/// as large as its distinct characters. It catches repeated and patterned tokens; it
/// cannot tell a random token from a memorable one, so the docs ask for `openssl rand`.
pub fn strength_bits(token: &str) -> f64 {
    let distinct: std::collections::HashSet<char> = token.chars().collect();
    token.chars().count() as f64 * (distinct.len().max(1) as f64).log2()
}

impl Secrets {
    /// Secrets with one edge master key (tests, tools).
    pub fn with_edge_key(edge_key: &str, admin_token: Option<&str>) -> Secrets {
        Secrets {
            edge_keys: vec![edge_key.to_string()],
            admin_token: admin_token.map(str::to_string),
        }
    }

    /// The current master key (issues credentials).
    pub fn edge_key(&self) -> &str {
        self.edge_keys.first().map_or("", String::as_str)
    }

    /// Reads `LOCATOR_EDGE_KEY`, `LOCATOR_EDGE_KEY_PREVIOUS` and `LOCATOR_ADMIN_TOKEN`.
    pub fn from_env() -> Result<Secrets, String> {
        Secrets::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// As [`Secrets::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Secrets, String> {
        let min = locus_protocol::edge_credential::MIN_MASTER_KEY_LEN;
        let Some(edge_key) = var("LOCATOR_EDGE_KEY") else {
            return Err(if var("LOCATOR_EDGE_TOKEN").is_some() {
                format!(
                    "LOCATOR_EDGE_TOKEN (one token shared by every edge) is no longer accepted: set LOCATOR_EDGE_KEY to a random master key of at least {min} characters (e.g. `openssl rand -hex 32`) and give each edge its own credential, printed by `locator edge-credential --config regions.yaml --id EDGE_ID` (README \"Security\")"
                )
            } else {
                format!(
                    "LOCATOR_EDGE_KEY is not set: set it to a random master key of at least {min} characters (e.g. `openssl rand -hex 32`); each edge gets its own credential from `locator edge-credential --config regions.yaml --id EDGE_ID`"
                )
            });
        };
        let mut edge_keys = vec![edge_key];
        if let Some(previous) = var("LOCATOR_EDGE_KEY_PREVIOUS") {
            edge_keys.push(previous);
        }
        for (name, key) in ["LOCATOR_EDGE_KEY", "LOCATOR_EDGE_KEY_PREVIOUS"]
            .iter()
            .zip(&edge_keys)
        {
            if key.len() < min {
                return Err(format!(
                    "{name} is too short: use a random master key of at least {min} characters (e.g. `openssl rand -hex 32`)"
                ));
            }
        }
        let admin_token = var("LOCATOR_ADMIN_TOKEN");
        if let Some(token) = &admin_token
            && (token.len() < MIN_TOKEN_LEN || strength_bits(token) < MIN_TOKEN_BITS)
        {
            return Err(format!(
                "LOCATOR_ADMIN_TOKEN is too weak: use at least {MIN_TOKEN_LEN} random characters (e.g. `openssl rand -hex 32`), or unset it to disable the admin API"
            ));
        }
        Ok(Secrets {
            edge_keys,
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
pub const JOIN_TOKEN_TTL: Duration =
    Duration::from_secs(locus_protocol::join_token::JOIN_TOKEN_TTL_SECS);

/// The locator's shared state.
#[derive(Debug)]
pub struct AppState {
    pub routing: ArcSwap<Routing>,
    pub geo: Arc<GeoResolver>,
    pub registry: Arc<Registry>,
    pub store: Store,
    pub secrets: Secrets,
    pub metrics: Metrics,
    /// Admin page sessions, answer counters by region, event-stream shutdown.
    pub admin: crate::admin::AdminState,
    pub started: Instant,
    /// Set when the database is shared by several locators (Postgres).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The last checks of every TURN/STUN server (kept across config reloads).
    pub turn_health: Arc<crate::turn_health::TurnHealth>,
    /// Bounds of the HTTP server (`--max-connections`, `--header-read-timeout`).
    pub connection_limits: locus_serve::Limits,
    /// `--tls-cert`/`--tls-key`: the server's certificate (plain HTTP when `None`).
    pub tls: Option<Arc<locus_serve::ServerTls>>,
    /// Open and refused connections (the serve loop's cap).
    pub http: Arc<locus_serve::Counters>,
    /// Per-client buckets of the `limits:` section.
    pub rate_limits: crate::rate_limit::RateLimiter,
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
            secrets,
            metrics: Metrics::default(),
            started: Instant::now(),
            turn_health: Arc::default(),
            connection_limits: locus_serve::Limits::default(),
            tls: None,
            http: Arc::default(),
            rate_limits: crate::rate_limit::RateLimiter::default(),
        }
    }

    /// The key join tokens for `edge` are signed with: derived from the credential its
    /// live link here authenticated with, or (its link is held by another locator) from
    /// the credential the current master key issues it. The edge derives the same key
    /// from its `LOCATOR_EDGE_TOKEN`.
    pub fn join_key_for(&self, edge: &crate::snapshot::EdgeView) -> JoinKey {
        if let Some(credential) = self.registry.live_credential(&edge.id) {
            return JoinKey::from_edge_token(&credential);
        }
        let routing = self.routing.load();
        let region = routing
            .config
            .regions
            .get(edge.region)
            .map_or("", |r| r.id.as_str());
        let generation = routing.config.edge_credential_policy(&edge.id).generation;
        JoinKey::from_edge_token(&locus_protocol::edge_credential::derive(
            self.secrets.edge_key().as_bytes(),
            generation,
            region,
            &edge.id,
        ))
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
    if let Some(cluster) = &state.cluster {
        // Several locators may notice one failure: one of them handles it.
        let claim_rev = state.registry.claim_rev(edge_id);
        match cluster.store.claim_edge_failure(edge_id, claim_rev).await {
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
        Ok(ended) => {
            tracing::info!(edge = %edge_id, sessions = ended.len(), "ended the ad-hoc sessions of a failed edge; its rooms move on their next join");
            // A failed edge whose link is still up (its /healthz refused, or it was
            // stalled) hears it now; one that comes back later, at its registration.
            crate::housekeeping::tell_sessions_ended(state, edge_id, &ended, "edge-failed");
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
    tasks.spawn(crate::housekeeping::unjoined_loop(state.clone()));
    tasks.spawn(crate::housekeeping::forget_loop(state.clone()));
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
        tasks.spawn(crate::cluster::assignments_loop(cluster.clone()));
        tasks.spawn(crate::cluster::follow_loop(state.clone(), cluster));
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
    let result = locus_serve::serve_tls(listener, app, limits, counters, tls, shutdown).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterned_tokens_are_weak_and_random_ones_strong() {
        for weak in ["aaaaaaaaaaaaaaaa", "abababababababab", "abcdabcdabcdabcd"] {
            assert!(strength_bits(weak) < MIN_TOKEN_BITS, "{weak}");
        }
        for strong in [
            "3f9c1a7be05d2864",
            "admin-token-for-the-tests",
            "9b1f0c2e4d6a8b3c5e7f9a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d",
        ] {
            assert!(strength_bits(strong) >= MIN_TOKEN_BITS, "{strong}");
        }
    }
}
