//! The locator's shared state: [`AppState`] (what every task and handler holds), the
//! [`Secrets`] read from the environment, and the clocks of database timestamps.
//!
//! A leaf of the crate's layering: it holds the registry, the store, the metrics, the
//! cluster handle and the TURN health records, and imports none of the modules that act
//! on them (handlers, the edge link, the cluster listener, the serve loop). Decisions
//! live in [`crate::ops`]; the routing config is reached through the registry's
//! [`Generation`] (see [`crate::routing`]), never beside it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use locus_geo::{Config, GeoResolver};
use locus_protocol::join_token::JoinKey;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::registry::{Generation, Registry};
use crate::routing::Routing;
use crate::store::Store;
use crate::turn::health::TurnHealth;

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
    pub fn from_env() -> Result<Secrets, SecretsError> {
        Secrets::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// As [`Secrets::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Secrets, SecretsError> {
        let Some(edge_key) = var("LOCATOR_EDGE_KEY") else {
            return Err(if var("LOCATOR_EDGE_TOKEN").is_some() {
                SecretsError::SharedEdgeToken
            } else {
                SecretsError::NoEdgeKey
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
            if key.len() < locus_protocol::edge_credential::MIN_MASTER_KEY_LEN {
                return Err(SecretsError::ShortEdgeKey(name));
            }
        }
        let admin_token = var("LOCATOR_ADMIN_TOKEN");
        if let Some(token) = &admin_token
            && (token.len() < MIN_TOKEN_LEN || strength_bits(token) < MIN_TOKEN_BITS)
        {
            return Err(SecretsError::WeakAdminToken);
        }
        Ok(Secrets {
            edge_keys,
            admin_token,
        })
    }
}

/// Why the secrets in the environment cannot be used (the message says what to do).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "LOCATOR_EDGE_TOKEN (one token shared by every edge) is no longer accepted: set LOCATOR_EDGE_KEY to a random master key of at least {min} characters (e.g. `openssl rand -hex 32`) and give each edge its own credential, printed by `locator edge-credential --config regions.yaml --id EDGE_ID` (README \"Security\")",
        min = locus_protocol::edge_credential::MIN_MASTER_KEY_LEN
    )]
    SharedEdgeToken,
    #[error(
        "LOCATOR_EDGE_KEY is not set: set it to a random master key of at least {min} characters (e.g. `openssl rand -hex 32`); each edge gets its own credential from `locator edge-credential --config regions.yaml --id EDGE_ID`",
        min = locus_protocol::edge_credential::MIN_MASTER_KEY_LEN
    )]
    NoEdgeKey,
    /// The variable named holds a key shorter than the minimum.
    #[error(
        "{0} is too short: use a random master key of at least {min} characters (e.g. `openssl rand -hex 32`)",
        min = locus_protocol::edge_credential::MIN_MASTER_KEY_LEN
    )]
    ShortEdgeKey(&'static str),
    #[error(
        "LOCATOR_ADMIN_TOKEN is too weak: use at least {MIN_TOKEN_LEN} random characters (e.g. `openssl rand -hex 32`), or unset it to disable the admin API"
    )]
    WeakAdminToken,
}

/// Lifetime of a join token: long enough to open a websocket after the answer, short
/// enough that a leaked one is soon useless. Clients get a fresh one from
/// `GET /v1/sessions/{id}`.
pub const JOIN_TOKEN_TTL: Duration =
    Duration::from_secs(locus_protocol::join_token::JOIN_TOKEN_TTL_SECS);

/// The locator's shared state.
#[derive(Debug)]
pub struct AppState {
    pub geo: Arc<GeoResolver>,
    /// The edges, and the routing generation they are indexed for ([`Generation`]).
    pub registry: Arc<Registry>,
    pub store: Store,
    pub secrets: Secrets,
    pub metrics: Metrics,
    /// The signal that ends the admin event streams on shutdown.
    pub admin: AdminState,
    pub started: Instant,
    /// Set when the database is shared by several locators (Postgres).
    pub cluster: Option<Arc<Cluster>>,
    /// The last checks of every TURN/STUN server (kept across config reloads).
    pub turn_health: Arc<TurnHealth>,
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
        let routing = Arc::new(Routing::new(config));
        geo.set_compiled_rules(routing.rules.clone());
        AppState {
            geo: Arc::new(geo),
            admin: AdminState::new(),
            registry: Arc::new(Registry::new(routing)),
            cluster: Cluster::for_store(&store),
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
    /// `edge` comes from a snapshot of the generation `routing` belongs to.
    pub fn join_key_for(&self, routing: &Routing, edge: &crate::snapshot::EdgeView) -> JoinKey {
        if let Some(credential) = self.registry.live_credential(&edge.id) {
            return JoinKey::from_edge_token(&credential);
        }
        let region = routing.region_id(edge.region);
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

    /// The current generation: routing and edges of one config. Load it once per
    /// answer and take every region from it.
    pub fn generation(&self) -> Arc<Generation> {
        self.registry.generation()
    }

    /// The current routing, for settings that index no region (timeouts, limits).
    pub fn routing(&self) -> Arc<Routing> {
        self.registry.routing()
    }

    /// Installs a reloaded, validated config as the next generation, published whole.
    pub fn apply_config(&self, config: Config) {
        let routing = Arc::new(Routing::after(config, &self.routing()));
        // Servers already checked keep their state in the new pools.
        self.turn_health.apply(&routing.turn);
        // The resolver's cache follows the new rules; answers of the old generation still
        // resolve under its own rules (`GeoResolver::resolve_for`).
        self.geo.set_compiled_rules(routing.rules.clone());
        self.registry.set_routing(routing);
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

/// Admin state kept by the locator: the signal that ends event streams on shutdown
/// (page sessions are rows of the store; answer counts are per routing generation,
/// [`Routing::traffic`]).
#[derive(Debug, Default)]
pub struct AdminState {
    /// Becomes true when shutdown starts (event streams end).
    pub closing: watch::Sender<bool>,
}

impl AdminState {
    pub fn new() -> AdminState {
        AdminState {
            closing: watch::channel(false).0,
        }
    }

    /// Ends every event stream (graceful shutdown would otherwise wait for them forever).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_secrets_are_refused_with_what_to_do() {
        let key = "k".repeat(locus_protocol::edge_credential::MIN_MASTER_KEY_LEN);
        let vars = |pairs: &'static [(&'static str, &'static str)], key: Option<String>| {
            move |name: &str| {
                if name == "LOCATOR_EDGE_KEY" {
                    return key.clone();
                }
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let refused = |var| Secrets::from_vars(var).expect_err("refused");
        assert_eq!(refused(vars(&[], None)), SecretsError::NoEdgeKey);
        assert_eq!(
            refused(vars(&[("LOCATOR_EDGE_TOKEN", "old")], None)),
            SecretsError::SharedEdgeToken
        );
        assert_eq!(
            refused(vars(&[], Some("short".into()))),
            SecretsError::ShortEdgeKey("LOCATOR_EDGE_KEY")
        );
        assert_eq!(
            refused(vars(
                &[("LOCATOR_EDGE_KEY_PREVIOUS", "short")],
                Some(key.clone())
            )),
            SecretsError::ShortEdgeKey("LOCATOR_EDGE_KEY_PREVIOUS")
        );
        assert_eq!(
            refused(vars(
                &[("LOCATOR_ADMIN_TOKEN", "aaaaaaaaaaaaaaaa")],
                Some(key.clone())
            )),
            SecretsError::WeakAdminToken
        );
        assert!(
            SecretsError::NoEdgeKey.to_string().starts_with(
                "LOCATOR_EDGE_KEY is not set: set it to a random master key of at least"
            )
        );
        let secrets = Secrets::from_vars(vars(&[], Some(key.clone()))).expect("usable");
        assert_eq!(secrets.edge_key(), key);
    }

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
