//! ICE servers per region, with TURN credentials in the coturn REST convention
//! (`use-auth-secret`): `username = "<expiry unix time>:<id>"`,
//! `credential = base64(HMAC-SHA1(secret, username))`.
//!
//! A region whose pool has no usable TURN relay (no `turn:` server, or its secret variable
//! unset) gets the TURN servers of the first region of its fallback list that has one;
//! its own STUN servers are kept. Secrets are read from the environment once per config
//! load and never logged or serialised.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use hmac::{KeyInit, Mac};
use locus_geo::Config;
use serde::Serialize;

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

/// One entry of `ice_servers` (the shape of WebRTC's `RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

struct Relay {
    urls: Vec<String>,
    /// HMAC-SHA1 keyed with the secret, ready to be cloned per credential (the key
    /// schedule is done once per config load, not per answer).
    mac: HmacSha1,
    ttl: Duration,
}

/// The ICE servers of one answer, borrowing the pools' URL lists (nothing is cloned but
/// the credential strings). Serializes exactly as the `Vec<IceServer>` that
/// [`TurnPools::ice_servers`] returns: STUN entry first, then the TURN entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServers<'a> {
    stun: Option<&'a [String]>,
    turn: Option<TurnEntry<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TurnEntry<'a> {
    urls: &'a [String],
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
    fn views(&self) -> impl Iterator<Item = IceServerView<'_>> {
        let stun = self.stun.map(|urls| IceServerView {
            urls,
            username: None,
            credential: None,
            ttl: None,
        });
        let turn = self.turn.as_ref().map(|t| IceServerView {
            urls: t.urls,
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
}

impl Serialize for IceServers<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.views())
    }
}

/// The ICE servers of every region, ready to mint credentials.
pub struct TurnPools {
    stun: Vec<Vec<String>>,
    /// Per region: index of the region whose relay serves it (itself or a fallback).
    relay_of: Vec<Option<usize>>,
    relays: HashMap<usize, Relay>,
}

impl std::fmt::Debug for TurnPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnPools")
            .field("relay_of", &self.relay_of)
            .finish_non_exhaustive()
    }
}

/// A region's TURN status, for logs, `/readyz` and the admin page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    pub region: String,
    pub stun: Vec<String>,
    pub turn: Vec<String>,
    /// Region whose relay clients of this region get (itself when healthy).
    pub relay_from: Option<String>,
    /// Why the region's own relay is not used, if it is not.
    pub problem: Option<String>,
}

impl TurnPools {
    /// Reads each pool's secret from the variable it names (`env` is `std::env::var` in
    /// production, a map in tests).
    pub fn new(config: &Config, env: impl Fn(&str) -> Option<String>) -> TurnPools {
        let mut relays = HashMap::new();
        let mut stun = Vec::new();
        for (i, region) in config.regions.iter().enumerate() {
            let (turn_urls, stun_urls): (Vec<String>, Vec<String>) = region
                .turn
                .servers
                .iter()
                .cloned()
                .partition(|url| url.starts_with("turn"));
            stun.push(stun_urls);
            let secret = region
                .turn
                .secret_env
                .as_deref()
                .and_then(&env)
                .filter(|s| !s.is_empty());
            if let (false, Some(secret)) = (turn_urls.is_empty(), secret) {
                relays.insert(
                    i,
                    Relay {
                        urls: turn_urls,
                        mac: hmac_sha1(secret.as_bytes()),
                        ttl: region.turn.ttl,
                    },
                );
            }
        }
        let relay_of = (0..config.regions.len())
            .map(|i| {
                std::iter::once(i)
                    .chain(config.regions[i].fallback.iter().copied())
                    .find(|r| relays.contains_key(r))
            })
            .collect();
        TurnPools {
            stun,
            relay_of,
            relays,
        }
    }

    /// What each region hands out, and why.
    pub fn status(&self, config: &Config) -> Vec<PoolStatus> {
        config
            .regions
            .iter()
            .enumerate()
            .map(|(i, region)| {
                let own_turn: Vec<String> = region
                    .turn
                    .servers
                    .iter()
                    .filter(|u| u.starts_with("turn"))
                    .cloned()
                    .collect();
                let problem = if self.relays.contains_key(&i) {
                    None
                } else if own_turn.is_empty() {
                    Some("no TURN servers of its own".to_string())
                } else {
                    Some(format!(
                        "secret variable {} is not set",
                        region.turn.secret_env.as_deref().unwrap_or("(none)")
                    ))
                };
                PoolStatus {
                    region: region.id.clone(),
                    stun: self.stun.get(i).cloned().unwrap_or_default(),
                    turn: own_turn,
                    relay_from: self
                        .relay_of
                        .get(i)
                        .copied()
                        .flatten()
                        .map(|r| config.regions[r].id.clone()),
                    problem,
                }
            })
            .collect()
    }

    /// ICE servers for a client of `region`, credentials bound to `id` (a session or
    /// client id) and valid from `now_unix` for the pool's ttl.
    pub fn ice_servers(&self, region: usize, id: &str, now_unix: u64) -> Vec<IceServer> {
        self.ice_servers_for(region, now_unix, || id.to_string())
            .to_vec()
    }

    /// [`TurnPools::ice_servers`] borrowing the URL lists; `id` is only called when the
    /// region has a relay (it names the client in the TURN username).
    pub fn ice_servers_for(
        &self,
        region: usize,
        now_unix: u64,
        id: impl FnOnce() -> String,
    ) -> IceServers<'_> {
        let stun = self
            .stun
            .get(region)
            .filter(|s| !s.is_empty())
            .map(Vec::as_slice);
        let turn = self
            .relay_of
            .get(region)
            .copied()
            .flatten()
            .and_then(|r| self.relays.get(&r))
            .map(|relay| {
                let ttl = relay.ttl.as_secs();
                let id = id();
                let mut expiry = itoa::Buffer::new();
                let expiry = expiry.format(now_unix + ttl);
                let mut username = String::with_capacity(expiry.len() + 1 + id.len());
                username.push_str(expiry);
                username.push(':');
                username.push_str(&id);
                let mut mac = relay.mac.clone();
                mac.update(username.as_bytes());
                TurnEntry {
                    urls: &relay.urls,
                    credential: base64::engine::general_purpose::STANDARD
                        .encode(mac.finalize().into_bytes()),
                    username,
                    ttl,
                }
            });
        IceServers { stun, turn }
    }
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
        let servers = pools.ice_servers(0, "s1", 1_700_000_000);
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
        let servers = pools.ice_servers(1, "s2", 0);
        assert_eq!(
            servers[0].urls,
            vec!["stun:stun.ap-northeast.example.net:3478"]
        );
        assert_eq!(
            servers[1].urls,
            vec!["turn:turn1.eu-west.example.net:3478?transport=udp"]
        );
        // us-east's secret is unset: its pool is unusable, eu-west's relay serves it.
        let servers = pools.ice_servers(2, "s3", 0);
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

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let pools = TurnPools::new(&config(), |_| Some("super-secret-value".to_string()));
        assert!(!format!("{pools:?}").contains("super-secret-value"));
    }
}
