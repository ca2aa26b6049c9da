//! [`GeoResolver`]: the database, the compiled rules and the cache behind one atomic
//! pointer, so lookups never wait while the database or the rules are replaced.
//!
//! A reload builds a complete new snapshot beside the old one and swaps it in whole
//! (`ArcSwap`); lookups in flight finish on the snapshot they started with. The cache
//! lives inside the snapshot, so a swap can never serve an answer computed under the old
//! database or rules.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::{Config, GeoIpSource};
use crate::database::{DatabaseError, DatabaseInfo, GeoDatabase};
use crate::rules::{DefaultReason, RegionRules, Resolution};

#[derive(Debug)]
struct Snapshot {
    database: Option<Arc<GeoDatabase>>,
    rules: Arc<RegionRules>,
    cache: Option<moka::sync::Cache<IpAddr, Resolution>>,
}

impl Snapshot {
    fn new(database: Option<Arc<GeoDatabase>>, rules: Arc<RegionRules>, cache_size: u64) -> Self {
        let cache = (cache_size > 0).then(|| moka::sync::Cache::new(cache_size));
        Snapshot {
            database,
            rules,
            cache,
        }
    }

    fn resolve_uncached(&self, rules: &RegionRules, ip: IpAddr) -> Resolution {
        rules.resolve(ip, |ip| match &self.database {
            None => Err(DefaultReason::NoDatabase),
            Some(db) => match db.lookup(ip) {
                Ok(Some(record)) => Ok(record),
                Ok(None) => Err(DefaultReason::NotInDatabase),
                Err(error) => {
                    tracing::warn!(%error, "GeoIP lookup failed; client sent to the default region");
                    Err(DefaultReason::LookupFailed)
                }
            },
        })
    }
}

/// Identity of a database file: a replacement by rename changes the inode, an in-place
/// rewrite the modification time or length.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileIdentity {
    inode: u64,
    modified: Option<SystemTime>,
    len: u64,
}

fn identity(path: &Path) -> std::io::Result<FileIdentity> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileIdentity {
        inode,
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// What a reload check did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// No database configured, or the file has not changed.
    Unchanged,
    /// The new file was loaded and is now serving.
    Reloaded(DatabaseInfo),
    /// The new file was refused; the previous database keeps serving.
    Refused(String),
}

/// Resolves client addresses to regions; cheap to share (`Arc`) across threads.
#[derive(Debug)]
pub struct GeoResolver {
    snapshot: ArcSwap<Snapshot>,
    database_path: Option<PathBuf>,
    cache_size: u64,
    /// The file identity last loaded or last refused, so one bad replacement is logged
    /// once, not at every check.
    last_seen: Mutex<Option<FileIdentity>>,
}

impl GeoResolver {
    /// Opens the configured database (if any) and compiles the rules. A configured but
    /// unusable database is an error: starting without the GeoIP the operator asked for
    /// would silently send everyone to the default region.
    pub fn open(config: &Config) -> Result<GeoResolver, DatabaseError> {
        let (database, database_path, seen) = match &config.geoip.database {
            GeoIpSource::Off => (None, None, None),
            GeoIpSource::BuiltinDemo => (
                Some(Arc::new(GeoDatabase::open_builtin_demo()?)),
                None,
                None,
            ),
            GeoIpSource::File(path) => {
                let seen = identity(path).ok();
                let database = GeoDatabase::open(path)?;
                (Some(Arc::new(database)), Some(path.clone()), seen)
            }
        };
        Ok(GeoResolver {
            snapshot: ArcSwap::from_pointee(Snapshot::new(
                database,
                Arc::new(RegionRules::new(config)),
                config.geoip.cache_size,
            )),
            database_path,
            cache_size: config.geoip.cache_size,
            last_seen: Mutex::new(seen),
        })
    }

    /// A resolver over an already opened database (tests, benchmarks).
    pub fn with_database(config: &Config, database: Option<GeoDatabase>) -> GeoResolver {
        GeoResolver {
            snapshot: ArcSwap::from_pointee(Snapshot::new(
                database.map(Arc::new),
                Arc::new(RegionRules::new(config)),
                config.geoip.cache_size,
            )),
            database_path: None,
            cache_size: config.geoip.cache_size,
            last_seen: Mutex::new(None),
        }
    }

    /// The region for a client address, under the rules installed last.
    pub fn resolve(&self, ip: IpAddr) -> Resolution {
        let snapshot = self.snapshot.load();
        Self::resolve_in(&snapshot, &snapshot.rules, ip)
    }

    /// The region for a client address under `rules` (its index is into the regions of
    /// the config `rules` were compiled from), whatever rules were installed since: a
    /// caller holding one generation of the config gets an answer of that generation.
    /// The cache serves only the rules installed last ([`GeoResolver::set_compiled_rules`]).
    pub fn resolve_for(&self, rules: &Arc<RegionRules>, ip: IpAddr) -> Resolution {
        Self::resolve_in(&self.snapshot.load(), rules, ip)
    }

    fn resolve_in(snapshot: &Snapshot, rules: &Arc<RegionRules>, ip: IpAddr) -> Resolution {
        match &snapshot.cache {
            Some(cache) if Arc::ptr_eq(rules, &snapshot.rules) => {
                let ip = ip.to_canonical();
                if let Some(hit) = cache.get(&ip) {
                    return hit;
                }
                let answer = snapshot.resolve_uncached(rules, ip);
                cache.insert(ip, answer);
                answer
            }
            _ => snapshot.resolve_uncached(rules, ip),
        }
    }

    /// The loaded database's facts, or `None` when GeoIP is off.
    pub fn database_info(&self) -> Option<DatabaseInfo> {
        self.snapshot
            .load()
            .database
            .as_ref()
            .map(|db| db.info().clone())
    }

    /// Installs new rules (a reloaded `regions.yaml`), keeping the database.
    pub fn set_rules(&self, config: &Config) {
        self.set_compiled_rules(Arc::new(RegionRules::new(config)));
    }

    /// Installs rules already compiled (the locator keeps them with its config, see
    /// [`GeoResolver::resolve_for`]).
    pub fn set_compiled_rules(&self, rules: Arc<RegionRules>) {
        let current = self.snapshot.load();
        self.snapshot.store(Arc::new(Snapshot::new(
            current.database.clone(),
            rules,
            self.cache_size,
        )));
    }

    /// Checks whether the database file was replaced and, if so, loads the new one. A
    /// missing or corrupt replacement is refused with one log line and the old database
    /// keeps serving. Blocking (it checks the whole file): call it off the async runtime.
    pub fn reload_database_if_changed(&self) -> ReloadOutcome {
        let Some(path) = &self.database_path else {
            return ReloadOutcome::Unchanged;
        };
        let mut last_seen = self
            .last_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = identity(path).ok();
        if current == *last_seen {
            return ReloadOutcome::Unchanged;
        }
        *last_seen = current.clone();
        let Some(_) = current else {
            let message = format!(
                "GeoIP database {} has disappeared; still serving the one loaded before",
                path.display()
            );
            tracing::error!("{message}");
            return ReloadOutcome::Refused(message);
        };
        match GeoDatabase::open(path) {
            Ok(database) => {
                let info = database.info().clone();
                let rules = self.snapshot.load().rules.clone();
                self.snapshot.store(Arc::new(Snapshot::new(
                    Some(Arc::new(database)),
                    rules,
                    self.cache_size,
                )));
                tracing::info!(
                    path = %path.display(),
                    database_type = %info.database_type,
                    networks = info.networks,
                    "GeoIP database reloaded"
                );
                ReloadOutcome::Reloaded(info)
            }
            Err(error) => {
                let message = format!(
                    "{error}; refusing the replacement, still serving the one loaded before"
                );
                tracing::error!("{message}");
                ReloadOutcome::Refused(message)
            }
        }
    }
}
