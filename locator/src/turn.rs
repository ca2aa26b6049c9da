//! ICE servers per region, with TURN credentials in the coturn REST convention
//! (`use-auth-secret`): `username = "<expiry unix time>:<id>"`,
//! `credential = base64(HMAC-SHA1(secret, username))`.
//!
//! What a region hands out follows the checks of [`health`]: only servers that
//! are up (or not checked yet), fastest first. A region whose own pool has no TURN server
//! up (none listed, its secret variable unset, or every one down) gets the relays of the
//! first region of its fallback order (configured fallbacks, then the others by distance)
//! that has one up, and the answer says so (`turn_fallback`); with none up anywhere the
//! answer carries STUN only, and says that too. Its own STUN servers are kept.
//!
//! The choice is made when a check result arrives, not per answer: [`TurnPools::apply_health`]
//! computes a [`Selection`] for every region and swaps it in whole; an answer loads it once.
//!
//! Secrets are read from the environment once per config load and never logged or
//! serialised. A pool's variable may hold several secrets separated by commas (a rotation
//! in progress): the first mints credentials and is used by the checks; coturn is given
//! all of them (`static-auth-secret` lines), so credentials minted with a retiring one keep
//! working until they expire.

pub mod health;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use hmac::{KeyInit, Mac};
use locus_geo::{Config, RegionIndex};
use serde::Serialize;

use crate::selection::RegionPlan;
use health::{CheckError, ServerHealth, ServerKey, ServerState};

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

/// The id TURN usernames minted for the locator's own checks carry.
pub const CHECK_ID: &str = "locus-check";

/// One entry of `ice_servers` (the shape of WebRTC's `RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Lifetime of the credential in seconds (TURN entries only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// Mints coturn REST credentials from a pool's first secret.
#[derive(Clone)]
pub struct Minter {
    /// HMAC-SHA1 keyed with the secret, ready to be cloned per credential (the key
    /// schedule is done once per config load, not per answer).
    mac: HmacSha1,
    ttl: Duration,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// `(username, credential)` for `id`, valid from `now_unix` for `ttl`.
    pub fn mint(&self, id: &str, now_unix: u64, ttl: Duration) -> (String, String) {
        let mut expiry = itoa::Buffer::new();
        let expiry = expiry.format(now_unix + ttl.as_secs());
        let mut username = String::with_capacity(expiry.len() + 1 + id.len());
        username.push_str(expiry);
        username.push(':');
        username.push_str(id);
        let mut mac = self.mac.clone();
        mac.update(username.as_bytes());
        let credential =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        (username, credential)
    }

    /// The pool's credential lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// One region's pool as configured.
struct Pool {
    id: String,
    stun: Vec<String>,
    turn: Vec<String>,
    /// Set when the pool can mint: it lists TURN servers and its secret is set.
    minter: Option<Minter>,
    /// Secrets in the pool's variable (more than one during a rotation).
    secrets: usize,
    /// Why the pool has no relay of its own even when its servers are up.
    problem: Option<String>,
}

/// Why a region's clients get another region's relays, or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TurnFallback {
    /// Region whose relays are handed out; `None`: no TURN server is up anywhere.
    pub region: Option<String>,
    /// True when the answer carries STUN servers only.
    pub stun_only: bool,
    /// `no-pool` (no TURN servers of its own), `no-secret` (its secret variable is unset)
    /// or `pool-down` (every one of its TURN servers is down).
    pub reason_code: &'static str,
    /// For people: what is wrong with the region's own pool, and what is used instead.
    pub reason: String,
}

/// A server as the admin page and explain show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ServerRow {
    pub url: String,
    /// `up`, `down`, or `unchecked` (handed out until its first check).
    pub state: ServerState,
    /// Unix time (ms) of the last check, if any.
    pub last_check_ms: Option<i64>,
    /// Round-trip time of the last successful check.
    pub rtt_ms: Option<f64>,
    /// The error of the last failed check.
    pub last_error: Option<CheckError>,
    /// Unix time (ms) since which it is in its state.
    pub since_ms: Option<i64>,
    /// Why it is not checked (a TURN server of a pool without a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_checked: Option<String>,
}

/// What one region hands out now.
#[derive(Debug, Clone, Default)]
struct RegionIce {
    /// Its own STUN servers that are up, fastest first.
    stun: Vec<String>,
    /// The region whose relays are handed out and their URLs that are up, fastest first.
    relay: Option<(RegionIndex, Vec<String>)>,
    /// Why its own relays are not handed out (when they are not).
    problem: Option<String>,
    fallback: Option<TurnFallback>,
}

/// Every region's choice, computed from the checks' results; swapped whole.
#[derive(Debug, Default)]
pub struct Selection {
    regions: Vec<RegionIce>,
    /// Per region: its servers (STUN then TURN, file order) with their last check.
    servers: Vec<Vec<ServerRow>>,
}

/// The ICE servers of one answer. Serializes as the `Vec<IceServer>` that
/// [`TurnPools::ice_servers`] returns: STUN entry first, then the TURN entry.
#[derive(Debug, Clone)]
pub struct IceServers<'a> {
    selection: Arc<Selection>,
    region: RegionIndex,
    turn: Option<Credential>,
    pools: std::marker::PhantomData<&'a TurnPools>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Credential {
    username: String,
    credential: String,
    ttl: u64,
}

/// One entry as serialized (the shape of [`IceServer`], borrowed).
#[derive(Serialize)]
struct IceServerView<'a> {
    urls: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u64>,
}

impl IceServers<'_> {
    fn ice(&self) -> Option<&RegionIce> {
        self.selection.regions.get(self.region.get())
    }

    fn views(&self) -> impl Iterator<Item = IceServerView<'_>> {
        let ice = self.ice();
        let stun = ice
            .map(|i| i.stun.as_slice())
            .filter(|s| !s.is_empty())
            .map(|urls| IceServerView {
                urls,
                username: None,
                credential: None,
                ttl: None,
            });
        let turn = ice
            .and_then(|i| i.relay.as_ref())
            .zip(self.turn.as_ref())
            .map(|((_, urls), t)| IceServerView {
                urls,
                username: Some(&t.username),
                credential: Some(&t.credential),
                ttl: Some(t.ttl),
            });
        stun.into_iter().chain(turn)
    }

    /// Owned entries.
    pub fn to_vec(&self) -> Vec<IceServer> {
        self.views()
            .map(|v| IceServer {
                urls: v.urls.to_vec(),
                username: v.username.map(str::to_string),
                credential: v.credential.map(str::to_string),
                ttl: v.ttl,
            })
            .collect()
    }

    /// Set when the relays are not the region's own (the answer's `turn_fallback`).
    pub fn fallback(&self) -> Option<&TurnFallback> {
        self.ice().and_then(|i| i.fallback.as_ref())
    }
}

impl Serialize for IceServers<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.views())
    }
}

/// A server the checker looks at.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    pub key: ServerKey,
    /// The pool's minter for `turn:`/`turns:` URLs (`None` for `stun:`).
    pub minter: Option<Minter>,
}

/// The ICE servers of every region, ready to mint credentials.
pub struct TurnPools {
    pools: Vec<Pool>,
    /// Per region: itself, its configured fallbacks, then the others by distance.
    order: Vec<Vec<RegionIndex>>,
    selection: ArcSwap<Selection>,
}

impl std::fmt::Debug for TurnPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnPools")
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

/// A region's TURN status, for logs, `/readyz` and the admin page.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PoolStatus {
    pub region: String,
    pub stun: Vec<String>,
    pub turn: Vec<String>,
    /// Region whose relay clients of this region get (itself when healthy; `None`: STUN
    /// only).
    pub relay_from: Option<String>,
    /// Why the region's own relay is not used, if it is not.
    pub problem: Option<String>,
    /// Set when the region borrows another region's relays (or has none).
    pub fallback: Option<TurnFallback>,
    /// Secrets in the pool's variable (2 or more: a rotation in progress).
    pub secrets: usize,
    /// Every server with its last check.
    pub servers: Vec<ServerRow>,
}

fn is_turn(url: &str) -> bool {
    url.starts_with("turn:") || url.starts_with("turns:")
}

impl TurnPools {
    /// Reads each pool's secrets from the variable it names (`env` is `std::env::var` in
    /// production, a map in tests). Every server counts as up until it is checked.
    pub fn new(config: &Config, env: impl Fn(&str) -> Option<String>) -> TurnPools {
        let pools = config
            .regions
            .iter()
            .map(|region| {
                let (turn, stun): (Vec<String>, Vec<String>) = region
                    .turn
                    .servers
                    .iter()
                    .cloned()
                    .partition(|u| is_turn(u));
                let secrets: Vec<String> = region
                    .turn
                    .secret_env
                    .as_deref()
                    .and_then(&env)
                    .map(|list| {
                        list.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let problem = if turn.is_empty() {
                    Some("no TURN servers of its own".to_string())
                } else if secrets.is_empty() {
                    Some(format!(
                        "secret variable {} is not set",
                        region.turn.secret_env.as_deref().unwrap_or("(none)")
                    ))
                } else {
                    None
                };
                let minter = match (&problem, secrets.first()) {
                    (None, Some(first)) => Some(Minter {
                        mac: hmac_sha1(first.as_bytes()),
                        ttl: region.turn.ttl,
                    }),
                    _ => None,
                };
                Pool {
                    id: region.id.clone(),
                    stun,
                    turn,
                    minter,
                    secrets: secrets.len(),
                    problem,
                }
            })
            .collect();
        let plan = RegionPlan::new(config);
        let order = config
            .region_indices()
            .map(|r| plan.order(r).to_vec())
            .collect();
        let pools = TurnPools {
            pools,
            order,
            selection: ArcSwap::from_pointee(Selection::default()),
        };
        pools.apply_health(&BTreeMap::new());
        pools
    }

    /// The servers the checker looks at: every STUN server, and the TURN servers of
    /// pools that can mint (a pool without its secret is never handed out).
    pub fn check_targets(&self) -> Vec<CheckTarget> {
        let mut out = Vec::new();
        for pool in &self.pools {
            for url in &pool.stun {
                out.push(CheckTarget {
                    key: ServerKey::new(&pool.id, url),
                    minter: None,
                });
            }
            if let Some(minter) = &pool.minter {
                for url in &pool.turn {
                    out.push(CheckTarget {
                        key: ServerKey::new(&pool.id, url),
                        minter: Some(minter.clone()),
                    });
                }
            }
        }
        out
    }

    /// Recomputes what every region hands out from the checks' results and swaps it in.
    pub fn apply_health(&self, health: &BTreeMap<ServerKey, ServerHealth>) {
        self.selection.store(Arc::new(self.select(health)));
    }

    /// The pure choice: up servers fastest first, own relays or the first fallback's.
    fn select(&self, health: &BTreeMap<ServerKey, ServerHealth>) -> Selection {
        let lookup = |pool: &Pool, url: &str| health.get(&ServerKey::new(&pool.id, url));
        // Servers of `pool` that may be handed out, fastest first (unmeasured ones after
        // measured ones, in file order: a stable sort).
        let up = |pool: &Pool, urls: &[String]| -> Vec<String> {
            let mut keep: Vec<(Duration, &String)> = urls
                .iter()
                .filter_map(|url| {
                    let h = lookup(pool, url);
                    let state = h.map_or(ServerState::Unchecked, |h| h.state);
                    state
                        .hands_out()
                        .then(|| (h.and_then(|h| h.rtt).unwrap_or(Duration::MAX), url))
                })
                .collect();
            keep.sort_by_key(|(rtt, _)| *rtt);
            keep.into_iter().map(|(_, url)| url.clone()).collect()
        };
        let relays: Vec<Option<Vec<String>>> = self
            .pools
            .iter()
            .map(|pool| {
                pool.minter
                    .as_ref()
                    .map(|_| up(pool, &pool.turn))
                    .filter(|urls| !urls.is_empty())
            })
            .collect();
        let regions = self
            .pools
            .iter()
            .enumerate()
            .map(|(r, pool)| {
                let relay = self
                    .order
                    .get(r)
                    .into_iter()
                    .flatten()
                    .find_map(|&c| relays[c.get()].as_ref().map(|urls| (c, urls.clone())));
                let mut problem = None;
                let fallback = match &relay {
                    Some((c, _)) if c.get() == r => None,
                    other => {
                        let (reason_code, own) = match &pool.problem {
                            Some(problem) if pool.turn.is_empty() => ("no-pool", problem.clone()),
                            Some(problem) => ("no-secret", problem.clone()),
                            None => (
                                "pool-down",
                                down_summary(&pool.turn, |url| lookup(pool, url)),
                            ),
                        };
                        problem = Some(own.clone());
                        let region = other.as_ref().map(|(c, _)| self.pools[c.get()].id.clone());
                        let reason = match &region {
                            Some(from) => {
                                format!("{}: {own}; relays of {from} handed out", pool.id)
                            }
                            None => format!(
                                "{}: {own}; no TURN server is up in any region: STUN only",
                                pool.id
                            ),
                        };
                        Some(TurnFallback {
                            stun_only: region.is_none(),
                            region,
                            reason_code,
                            reason,
                        })
                    }
                };
                RegionIce {
                    stun: up(pool, &pool.stun),
                    relay,
                    problem,
                    fallback,
                }
            })
            .collect();
        let servers = self
            .pools
            .iter()
            .map(|pool| {
                pool.stun
                    .iter()
                    .chain(&pool.turn)
                    .map(|url| {
                        let h = lookup(pool, url);
                        ServerRow {
                            url: url.clone(),
                            state: h.map_or(ServerState::Unchecked, |h| h.state),
                            last_check_ms: h.and_then(|h| h.last_check_ms),
                            rtt_ms: h.and_then(|h| h.rtt).map(|d| d.as_secs_f64() * 1000.0),
                            last_error: h.and_then(|h| h.last_error.clone()),
                            since_ms: h.and_then(|h| h.since_ms),
                            not_checked: (is_turn(url) && pool.minter.is_none())
                                .then(|| pool.problem.clone())
                                .flatten(),
                        }
                    })
                    .collect()
            })
            .collect();
        Selection { regions, servers }
    }

    /// What each region hands out, and why.
    pub fn status(&self, config: &Config) -> Vec<PoolStatus> {
        let selection = self.selection.load();
        config
            .regions
            .iter()
            .enumerate()
            .map(|(i, region)| {
                let pool = self.pools.get(i);
                let ice = selection.regions.get(i);
                let fallback = ice.and_then(|i| i.fallback.clone());
                PoolStatus {
                    region: region.id.clone(),
                    stun: pool.map(|p| p.stun.clone()).unwrap_or_default(),
                    turn: pool.map(|p| p.turn.clone()).unwrap_or_default(),
                    relay_from: ice
                        .and_then(|i| i.relay.as_ref())
                        .and_then(|(c, _)| self.pools.get(c.get()))
                        .map(|p| p.id.clone()),
                    problem: ice.and_then(|i| i.problem.clone()),
                    fallback,
                    secrets: pool.map_or(0, |p| p.secrets),
                    servers: selection.servers.get(i).cloned().unwrap_or_default(),
                }
            })
            .collect()
    }

    /// ICE servers for a client of `region`, credentials bound to `id` (a session or
    /// client id) and valid from `now_unix` for the pool's ttl.
    pub fn ice_servers(&self, region: RegionIndex, id: &str, now_unix: u64) -> Vec<IceServer> {
        self.ice_servers_for(region, now_unix, || id.to_string())
            .to_vec()
    }

    /// [`TurnPools::ice_servers`] as one value that also says whether the relays are
    /// borrowed ([`IceServers::fallback`]); `id` is only called when a relay is handed
    /// out (it names the client in the TURN username).
    pub fn ice_servers_for(
        &self,
        region: RegionIndex,
        now_unix: u64,
        id: impl FnOnce() -> String,
    ) -> IceServers<'_> {
        let selection = self.selection.load_full();
        let turn = selection
            .regions
            .get(region.get())
            .and_then(|ice| ice.relay.as_ref())
            .and_then(|(c, _)| self.pools.get(c.get()))
            .and_then(|pool| pool.minter.as_ref())
            .map(|minter| {
                let (username, credential) = minter.mint(&id(), now_unix, minter.ttl);
                Credential {
                    username,
                    credential,
                    ttl: minter.ttl.as_secs(),
                }
            });
        IceServers {
            selection,
            region,
            turn,
            pools: std::marker::PhantomData,
        }
    }
}

/// "its 2 TURN servers are down (turn:a…: timeout; turn:b…: 401 …)".
fn down_summary<'h>(urls: &[String], lookup: impl Fn(&str) -> Option<&'h ServerHealth>) -> String {
    let details: Vec<String> = urls
        .iter()
        .map(
            |url| match lookup(url).and_then(|h| h.last_error.as_ref()) {
                Some(error) => format!("{url}: {error}"),
                None => url.clone(),
            },
        )
        .collect();
    format!(
        "{} down ({})",
        if urls.len() == 1 {
            "its TURN server is".to_string()
        } else {
            format!("its {} TURN servers are", urls.len())
        },
        details.join("; ")
    )
}

fn hmac_sha1(secret: &[u8]) -> HmacSha1 {
    match <HmacSha1 as KeyInit>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

/// `base64(HMAC-SHA1(secret, username))`, as coturn computes it.
pub fn turn_credential(secret: &[u8], username: &str) -> String {
    let mut mac = hmac_sha1(secret);
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::health::ErrorKind;
    use super::*;
    use std::path::Path;

    const YAML: &str = r#"
default_region: eu-west
regions:
  - id: eu-west
    location: { lat: 53.35, lon: -6.26 }
    turn:
      secret_env: TURN_SECRET_EU_WEST
      ttl: 1h
      servers: ["turn:turn1.eu-west.example.net:3478?transport=udp", "stun:stun.eu-west.example.net"]
  - id: ap-northeast
    location: { lat: 35.68, lon: 139.69 }
    fallback: [eu-west]
    turn:
      servers: ["stun:stun.ap-northeast.example.net:3478"]
  - id: us-east
    location: { lat: 39.0, lon: -77.5 }
    fallback: [eu-west]
    turn:
      secret_env: TURN_SECRET_US_EAST
      servers: ["turn:turn1.us-east.example.net:3478"]
"#;

    fn config() -> Config {
        Config::parse(YAML, Path::new("t.yaml")).expect("valid")
    }

    #[test]
    fn credentials_follow_the_coturn_rest_convention() {
        // Reference value: python3 -c "import hmac,hashlib,base64;
        // print(base64.b64encode(hmac.new(b'north', b'1700003600:s1', hashlib.sha1).digest()))"
        assert_eq!(
            turn_credential(b"north", "1700003600:s1"),
            "zqVCs17zFe4Xy+TQS+0iOseRx90="
        );
        let pools = TurnPools::new(&config(), |name| {
            (name == "TURN_SECRET_EU_WEST").then(|| "north".to_string())
        });
        let servers = pools.ice_servers(RegionIndex::for_tests(0), "s1", 1_700_000_000);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls, vec!["stun:stun.eu-west.example.net"]);
        let turn = &servers[1];
        assert_eq!(turn.username.as_deref(), Some("1700003600:s1"));
        assert_eq!(
            turn.credential.as_deref(),
            Some("zqVCs17zFe4Xy+TQS+0iOseRx90=")
        );
        assert_eq!(turn.ttl, Some(3600));
    }

    #[test]
    fn a_region_without_a_relay_keeps_its_stun_and_borrows_its_fallbacks_turn() {
        let pools = TurnPools::new(&config(), |name| {
            (name == "TURN_SECRET_EU_WEST").then(|| "north".to_string())
        });
        let servers = pools.ice_servers(RegionIndex::for_tests(1), "s2", 0);
        assert_eq!(
            servers[0].urls,
            vec!["stun:stun.ap-northeast.example.net:3478"]
        );
        assert_eq!(
            servers[1].urls,
            vec!["turn:turn1.eu-west.example.net:3478?transport=udp"]
        );
        // us-east's secret is unset: its pool is unusable, eu-west's relay serves it.
        let servers = pools.ice_servers(RegionIndex::for_tests(2), "s3", 0);
        assert_eq!(servers.len(), 1);
        assert!(servers[0].urls[0].contains("eu-west"));
        let status = pools.status(&config());
        assert_eq!(status[2].relay_from.as_deref(), Some("eu-west"));
        assert!(
            status[2]
                .problem
                .as_deref()
                .unwrap_or_default()
                .contains("TURN_SECRET_US_EAST")
        );
    }

    fn record(
        book: &mut BTreeMap<ServerKey, ServerHealth>,
        region: &str,
        url: &str,
        result: Result<u64, ErrorKind>,
    ) {
        let policy = locus_geo::TurnChecks {
            down_after: 1,
            ..Default::default()
        };
        let result = result
            .map(Duration::from_millis)
            .map_err(|kind| CheckError::new(kind, format!("{} (test)", kind.as_str())));
        book.entry(ServerKey::new(region, url))
            .or_default()
            .record(&result, 1, &policy);
    }

    const TWO: &str = r#"
default_region: eu-west
regions:
  - id: eu-west
    location: { lat: 53.35, lon: -6.26 }
    fallback: [us-east]
    turn:
      secret_env: TURN_SECRET_EU_WEST
      servers: ["turn:a.eu:3478", "turn:b.eu:3478", "turn:c.eu:3478", "stun:s.eu:3478"]
  - id: us-east
    location: { lat: 39.0, lon: -77.5 }
    turn:
      secret_env: TURN_SECRET_US_EAST
      servers: ["turn:a.us:3478"]
"#;

    fn two_pools() -> TurnPools {
        let config = Config::parse(TWO, Path::new("t.yaml")).expect("valid");
        TurnPools::new(&config, |_| Some("s".to_string()))
    }

    fn turn_urls(pools: &TurnPools, region: usize) -> Vec<String> {
        pools
            .ice_servers(RegionIndex::for_tests(region), "c", 0)
            .into_iter()
            .find(|s| s.username.is_some())
            .map(|s| s.urls)
            .unwrap_or_default()
    }

    #[test]
    fn only_servers_that_are_up_are_handed_out_fastest_first_unchecked_counting_as_up() {
        let pools = two_pools();
        // Nothing checked yet: everything, in file order.
        assert_eq!(
            turn_urls(&pools, 0),
            vec!["turn:a.eu:3478", "turn:b.eu:3478", "turn:c.eu:3478"]
        );
        let mut book = BTreeMap::new();
        record(&mut book, "eu-west", "turn:a.eu:3478", Ok(30));
        record(
            &mut book,
            "eu-west",
            "turn:b.eu:3478",
            Err(ErrorKind::Timeout),
        );
        pools.apply_health(&book);
        // a measured, c not yet (after the measured ones), b down.
        assert_eq!(
            turn_urls(&pools, 0),
            vec!["turn:a.eu:3478", "turn:c.eu:3478"]
        );
        record(&mut book, "eu-west", "turn:c.eu:3478", Ok(10));
        pools.apply_health(&book);
        assert_eq!(
            turn_urls(&pools, 0),
            vec!["turn:c.eu:3478", "turn:a.eu:3478"]
        );
        assert_eq!(
            pools
                .ice_servers_for(RegionIndex::for_tests(0), 0, String::new)
                .fallback(),
            None
        );
        let status = &pools.status(&config_two())[0];
        assert_eq!(status.relay_from.as_deref(), Some("eu-west"));
        let b = status
            .servers
            .iter()
            .find(|s| s.url == "turn:b.eu:3478")
            .expect("b");
        assert_eq!(b.state, ServerState::Down);
        assert_eq!(
            b.last_error.as_ref().map(|e| e.kind),
            Some(ErrorKind::Timeout)
        );
    }

    fn config_two() -> Config {
        Config::parse(TWO, Path::new("t.yaml")).expect("valid")
    }

    #[test]
    fn a_region_with_its_pool_down_borrows_the_next_regions_and_says_why() {
        let pools = two_pools();
        let mut book = BTreeMap::new();
        for url in ["turn:a.eu:3478", "turn:b.eu:3478", "turn:c.eu:3478"] {
            record(&mut book, "eu-west", url, Err(ErrorKind::Auth));
        }
        pools.apply_health(&book);
        let ice = pools.ice_servers_for(RegionIndex::for_tests(0), 0, || "c".into());
        let fallback = ice.fallback().cloned().expect("fallback");
        assert_eq!(fallback.region.as_deref(), Some("us-east"));
        assert_eq!(fallback.reason_code, "pool-down");
        assert!(!fallback.stun_only);
        assert!(
            fallback.reason.contains("its 3 TURN servers are down"),
            "{}",
            fallback.reason
        );
        assert!(
            fallback.reason.contains("auth (test)"),
            "{}",
            fallback.reason
        );
        // Its own STUN server stays; the relays are us-east's.
        let servers = ice.to_vec();
        assert_eq!(servers[0].urls, vec!["stun:s.eu:3478"]);
        assert_eq!(servers[1].urls, vec!["turn:a.us:3478"]);

        // Nothing up anywhere: STUN only, said so.
        record(
            &mut book,
            "us-east",
            "turn:a.us:3478",
            Err(ErrorKind::Timeout),
        );
        pools.apply_health(&book);
        let ice = pools.ice_servers_for(RegionIndex::for_tests(0), 0, || {
            panic!("no credential is minted")
        });
        let fallback = ice.fallback().cloned().expect("fallback");
        assert!(fallback.stun_only && fallback.region.is_none());
        assert!(fallback.reason.contains("STUN only"));
        assert_eq!(ice.to_vec().len(), 1);
        let status = pools.status(&config_two());
        assert_eq!(status[1].relay_from, None);
        assert_eq!(
            status[1].fallback.as_ref().map(|f| f.reason_code),
            Some("pool-down")
        );

        // One comes back (two successes: turn.up_after): its own relays again.
        record(&mut book, "eu-west", "turn:b.eu:3478", Ok(5));
        pools.apply_health(&book);
        assert!(turn_urls(&pools, 0).is_empty(), "one success is not enough");
        record(&mut book, "eu-west", "turn:b.eu:3478", Ok(5));
        pools.apply_health(&book);
        assert_eq!(turn_urls(&pools, 0), vec!["turn:b.eu:3478"]);
        assert_eq!(
            pools
                .ice_servers_for(RegionIndex::for_tests(0), 0, String::new)
                .fallback(),
            None
        );
        // us-east borrows eu-west's now.
        assert_eq!(turn_urls(&pools, 1), vec!["turn:b.eu:3478"]);
    }

    #[test]
    fn during_a_rotation_the_first_secret_mints_and_all_are_counted() {
        let config = config();
        let pools = TurnPools::new(&config, |name| {
            (name == "TURN_SECRET_EU_WEST").then(|| " north , south,".to_string())
        });
        let servers = pools.ice_servers(RegionIndex::for_tests(0), "s1", 1_700_000_000);
        assert_eq!(
            servers[1].credential.as_deref(),
            Some(turn_credential(b"north", "1700003600:s1").as_str())
        );
        assert_eq!(pools.status(&config)[0].secrets, 2);
        // The checks mint with the same first secret.
        let target = pools
            .check_targets()
            .into_iter()
            .find(|t| t.key.url.starts_with("turn:") && t.key.region == "eu-west")
            .expect("a TURN target");
        let (user, credential) =
            target
                .minter
                .expect("minter")
                .mint(CHECK_ID, 1_700_000_000, Duration::from_secs(60));
        assert_eq!(user, "1700000060:locus-check");
        assert_eq!(credential, turn_credential(b"north", &user));
        // A pool without its secret is not checked (it is never handed out).
        assert!(
            !pools
                .check_targets()
                .iter()
                .any(|t| t.key.region == "us-east" && t.key.url.starts_with("turn"))
        );
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let pools = TurnPools::new(&config(), |_| Some("super-secret-value".to_string()));
        assert!(!format!("{pools:?}").contains("super-secret-value"));
    }
}
