//! The edge registry: every edge this locator knows, its link, its status and its last
//! load report. Mutations take a short `std::sync::Mutex` (never held across `.await`) and
//! publish a fresh immutable [`RegistrySnapshot`] for selection, plus a change counter
//! for live views.
//!
//! With several locators on one database (see [`crate::cluster`]) the registry also
//! holds *mirrors*: edges whose link another locator holds, kept from what that locator
//! publishes ([`Registry::apply_published`]). An edge's own link decides over a mirror
//! until a newer claim (the edge registered with another locator since) arrives; then
//! the local link is dropped. The edges held here collect what changed for publishing
//! ([`Registry::take_changed`]).
//!
//! Load reports are the one frequent change (every edge, every report interval, and
//! the mirrored ones of every edge another locator holds). They rebuild nothing: an
//! edge's load is a [`Live`] value shared by its entry and every snapshot (see
//! [`crate::load`]), written in place and visible to selection at once. A snapshot is
//! rebuilt, a copy of every edge, only when an edge joins, leaves, registers again or
//! changes state, or the config is reloaded. Every change, reports included, advances
//! the change counter live views and the cluster publisher wait on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use locus_geo::config::EdgeTiming;
use locus_protocol::{LoadReport, LocatorMessage, Register};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::edge_state::{EdgeStatus, Effect, Liveness, Probe, PublishedStatus};
use crate::load::Live;
use crate::routing::Routing;
use crate::snapshot::{EdgeView, RegistrySnapshot};
use crate::store::{LiveEdge, PublishedEdge, PublishedLiveness};

/// The sending half of an edge's link.
#[derive(Debug)]
struct Link {
    conn_id: u64,
    tx: mpsc::Sender<LocatorMessage>,
    /// The credential the edge authenticated this link with: join tokens for the edge
    /// are signed with a key derived from it, and a registration with another credential
    /// cannot replace this link.
    credential: Arc<str>,
    /// The edge reads [`LocatorMessage::SessionsEnded`] (it announced the feature).
    sessions_ended: bool,
}

#[derive(Debug)]
struct Entry {
    id: Arc<str>,
    region: String,
    public_url: Arc<str>,
    capacity: u32,
    version: Arc<str>,
    status: EdgeStatus,
    /// Its last report and the sessions assigned since (shared with the snapshots).
    live: Arc<Live>,
    link: Option<Link>,
    /// This locator holds the newest claim on the edge (it registered here last); false
    /// for a mirror of an edge held by another locator.
    held_here: bool,
    /// The rev of the claim this locator holds, or of the mirrored one.
    claim_rev: i64,
    /// Reports over the current claim (published; a change resets the assignments).
    reports: i64,
    /// Newest published rev applied to a mirror.
    published_rev: i64,
    /// Since when (by this locator's ticks) the edge has been `failed`: after
    /// `edges.forget_after` it is forgotten.
    failed_since: Option<Instant>,
    /// The state changed since it was last taken for publishing (edges held here).
    changed: bool,
}

impl Entry {
    /// Marks a change of an edge held here, to be published.
    fn touch(&mut self) {
        if self.held_here {
            self.changed = true;
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// By id, in id order: a rebuild walks it into a snapshot already sorted (selection
    /// is deterministic for a seed, and the snapshot finds an edge by binary search).
    edges: BTreeMap<String, Entry>,
    /// The routing generation snapshots are built for: an edge's region index is looked
    /// up in its regions at each rebuild, so a reloaded config that reorders regions
    /// never leaves stale indices.
    routing: Arc<Routing>,
    next_conn_id: u64,
}

/// One routing generation and the registry snapshot built for it, published together:
/// the region indices of `edges` (and of selection's plan, and of GeoIP resolutions under
/// `routing.rules`) all refer to `routing.config.regions`. Load one per answer.
#[derive(Debug)]
pub struct Generation {
    pub routing: Arc<Routing>,
    pub edges: Arc<RegistrySnapshot>,
}

/// Every edge this locator knows.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    published: ArcSwap<Generation>,
    changes: watch::Sender<u64>,
}

/// What `register` did.
#[derive(Debug)]
pub struct Registered {
    /// Identifies this link; events from an older link of the same edge are ignored.
    pub conn_id: u64,
    /// True when an older link of the same edge was replaced.
    pub replaced: bool,
}

/// `register` refused: a live link of the same edge holds another credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldByAnotherCredential;

impl Registry {
    pub fn new(routing: Arc<Routing>) -> Registry {
        Registry {
            published: ArcSwap::from_pointee(Generation {
                routing: routing.clone(),
                edges: Arc::new(RegistrySnapshot::empty()),
            }),
            inner: Mutex::new(Inner {
                edges: BTreeMap::new(),
                routing,
                next_conn_id: 0,
            }),
            changes: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current generation: routing and edges of one config (cheap: an `Arc` clone).
    pub fn generation(&self) -> Arc<Generation> {
        self.published.load_full()
    }

    /// The current routing (settings that do not index regions; for an answer, use
    /// [`Registry::generation`]).
    pub fn routing(&self) -> Arc<Routing> {
        self.published.load().routing.clone()
    }

    /// The current snapshot of the edges (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.published.load().edges.clone()
    }

    /// A receiver that changes whenever the registry does (for live admin views).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Rebuilds the snapshot and publishes it (membership, state or config changed).
    fn publish(&self, inner: &mut Inner) {
        let config = &inner.routing.config;
        let edges: Vec<EdgeView> = inner
            .edges
            .values()
            .filter_map(|e| {
                let region = config.region_index(&e.region)?;
                Some(EdgeView {
                    id: e.id.clone(),
                    region,
                    public_url: e.public_url.clone(),
                    capacity: e.capacity.max(1),
                    version: e.version.clone(),
                    status: e.status,
                    live: e.live.clone(),
                })
            })
            .collect();
        self.published.store(Arc::new(Generation {
            routing: inner.routing.clone(),
            edges: Arc::new(RegistrySnapshot::new(edges)),
        }));
        self.changed();
    }

    /// Advances the change counter (for live views and the cluster publisher).
    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Installs a (re)loaded config: the next generation, published at once with the
    /// edges indexed by its regions.
    pub fn set_routing(&self, routing: Arc<Routing>) {
        let mut inner = self.lock();
        inner.routing = routing;
        self.publish(&mut inner);
    }

    /// The credential of the live link of `edge_id`, if this locator holds one.
    pub fn live_credential(&self, edge_id: &str) -> Option<Arc<str>> {
        let inner = self.lock();
        let entry = inner.edges.get(edge_id)?;
        entry.link.as_ref().map(|l| l.credential.clone())
    }

    /// A (re)registered edge with its new link. An older link of the same id with the
    /// same credential is replaced (the edge reconnected before the old socket closed):
    /// its sender is dropped, which ends that connection's task cleanly. A live link
    /// with a *different* credential is kept and the new one refused (`Err`).
    pub fn register(
        &self,
        reg: &Register,
        credential: Arc<str>,
        suspended: bool,
        tx: mpsc::Sender<LocatorMessage>,
        now: Instant,
        claim_rev: i64,
    ) -> Result<Registered, HeldByAnotherCredential> {
        let mut inner = self.lock();
        if let Some(live) = inner.edges.get(&reg.edge_id).and_then(|e| e.link.as_ref())
            && live.credential != credential
        {
            return Err(HeldByAnotherCredential);
        }
        inner.next_conn_id += 1;
        let conn_id = inner.next_conn_id;
        let link = Link {
            conn_id,
            tx,
            credential,
            sessions_ended: reg
                .features
                .iter()
                .any(|f| f == locus_protocol::features::SESSIONS_ENDED),
        };
        let replaced = match inner.edges.get_mut(&reg.edge_id) {
            Some(entry) => {
                let replaced = entry.link.is_some();
                entry.region = reg.region.clone();
                entry.public_url = reg.public_url.as_str().into();
                entry.capacity = reg.capacity;
                entry.version = reg.version.as_str().into();
                entry.status.suspended = suspended;
                entry.status.on_register(now, reg.draining);
                entry.live.report(None, now);
                entry.link = Some(link);
                entry.held_here = true;
                entry.claim_rev = claim_rev;
                entry.reports = 0;
                entry.changed = true;
                replaced
            }
            None => {
                inner.edges.insert(
                    reg.edge_id.clone(),
                    Entry {
                        id: reg.edge_id.as_str().into(),
                        region: reg.region.clone(),
                        public_url: reg.public_url.as_str().into(),
                        capacity: reg.capacity,
                        version: reg.version.as_str().into(),
                        status: EdgeStatus::registered(now, suspended, reg.draining),
                        live: Live::new(None, 0),
                        link: Some(link),
                        held_here: true,
                        claim_rev,
                        reports: 0,
                        published_rev: 0,
                        failed_since: None,
                        changed: true,
                    },
                );
                false
            }
        };
        self.publish(&mut inner);
        Ok(Registered { conn_id, replaced })
    }

    fn with_current_link<T>(
        &self,
        edge_id: &str,
        conn_id: u64,
        f: impl FnOnce(&mut Entry) -> T,
    ) -> Option<T> {
        let mut inner = self.lock();
        let entry = inner.edges.get_mut(edge_id)?;
        if entry.link.as_ref().map(|l| l.conn_id) != Some(conn_id) {
            return None;
        }
        let out = f(entry);
        self.publish(&mut inner);
        Some(out)
    }

    /// A load report over link `conn_id`. Resets the edge's count of assignments since
    /// its last report: the report's `sessions` now carries what the edge has. Selection
    /// sees it at once; the snapshot is rebuilt only when the report changes the edge's
    /// state (a link-lost edge reporting again).
    pub fn report(&self, edge_id: &str, conn_id: u64, report: LoadReport, now: Instant) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.edges.get_mut(edge_id) else {
            return false;
        };
        if entry.link.as_ref().map(|l| l.conn_id) != Some(conn_id) {
            return false;
        }
        entry.live.report(Some(report), now);
        let before = entry.status.state();
        entry.status.on_report(now);
        let state_changed = entry.status.state() != before;
        entry.reports += 1;
        entry.touch();
        if state_changed {
            self.publish(&mut inner);
        } else {
            self.changed();
        }
        true
    }

    /// A heartbeat (`heartbeat: true`, the edge's websocket ping) or another frame
    /// arrived over link `conn_id`. Cheap on the common path: the snapshot is rebuilt (and
    /// the change published to other locators) only when the edge's state changes, e.g.
    /// a suspect edge answering again.
    pub fn heard(
        &self,
        edge_id: &str,
        conn_id: u64,
        heartbeat: bool,
        now: Instant,
        timing: &EdgeTiming,
    ) {
        let mut inner = self.lock();
        let Some(entry) = inner.edges.get_mut(edge_id) else {
            return;
        };
        if entry.link.as_ref().map(|l| l.conn_id) != Some(conn_id) {
            return;
        }
        let before = entry.status.state();
        if heartbeat {
            entry.status.on_heartbeat(now, timing);
        } else {
            entry.status.on_heard(now);
        }
        if entry.status.state() != before {
            entry.touch();
            self.publish(&mut inner);
        }
    }

    /// The edge announced it is draining.
    pub fn draining(&self, edge_id: &str, conn_id: u64) -> bool {
        self.with_current_link(edge_id, conn_id, |entry| {
            entry.status.on_draining();
            entry.touch();
        })
        .is_some()
    }

    /// Link `conn_id` of the edge closed. Ignored when a newer link replaced it.
    pub fn link_closed(&self, edge_id: &str, conn_id: u64, now: Instant) -> Effect {
        self.with_current_link(edge_id, conn_id, |entry| {
            entry.link = None;
            entry.touch();
            entry.status.on_link_closed(now)
        })
        .unwrap_or(Effect::None)
    }

    /// Advances every edge's clock; returns the effects to carry out.
    pub fn tick(&self, now: Instant, timing: &EdgeTiming) -> Vec<(String, Effect)> {
        let mut inner = self.lock();
        let effects: Vec<(String, Effect)> = inner
            .edges
            .iter_mut()
            .map(|(id, e)| {
                let effect = e.status.on_tick(now, timing);
                if effect != Effect::None {
                    e.touch();
                }
                if !matches!(e.status.liveness, Liveness::Failed { .. }) {
                    e.failed_since = None;
                } else if e.failed_since.is_none() {
                    e.failed_since = Some(now);
                }
                (id.clone(), effect)
            })
            .filter(|(_, effect)| *effect != Effect::None)
            .collect();
        if !effects.is_empty() {
            self.publish(&mut inner);
        }
        effects
    }

    /// Result of a `/healthz` probe of a suspect or link-lost edge.
    pub fn probe_result(&self, edge_id: &str, probe: Probe) -> Effect {
        let mut inner = self.lock();
        let Some(entry) = inner.edges.get_mut(edge_id) else {
            return Effect::None;
        };
        let effect = entry.status.on_probe(probe);
        entry.touch();
        self.publish(&mut inner);
        effect
    }

    /// An admin asked the edge to drain: no new sessions from now on, without waiting for
    /// the edge to announce it (a later registration carries the edge's own flag). False
    /// when the edge is unknown here.
    pub fn set_draining(&self, edge_id: &str) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.edges.get_mut(edge_id) else {
            return false;
        };
        entry.status.on_draining();
        entry.touch();
        self.publish(&mut inner);
        true
    }

    /// Admin suspension (the caller persists it). False when the edge is unknown here.
    pub fn set_suspended(&self, edge_id: &str, suspended: bool) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.edges.get_mut(edge_id) else {
            return false;
        };
        if suspended {
            entry.status.on_suspend();
        } else {
            entry.status.on_resume();
        }
        entry.touch();
        self.publish(&mut inner);
        true
    }

    /// Sends a message to the edge over its current link. False when it has none or its
    /// queue is full (the edge is not reading: the link will be found dead).
    pub fn send(&self, edge_id: &str, message: LocatorMessage) -> bool {
        let inner = self.lock();
        inner
            .edges
            .get(edge_id)
            .and_then(|e| e.link.as_ref())
            .is_some_and(|link| link.tx.try_send(message).is_ok())
    }

    /// Sends the ids of sessions the locator ended to the edge over its current link, in
    /// messages of at most [`locus_protocol::MAX_SESSIONS_ENDED`]. False when it has no
    /// link here, does not read the message (an older edge), or its queue is full.
    pub fn tell_sessions_ended(&self, edge_id: &str, sessions: &[String], reason: &str) -> bool {
        let inner = self.lock();
        let Some(link) = inner.edges.get(edge_id).and_then(|e| e.link.as_ref()) else {
            return false;
        };
        if !link.sessions_ended {
            return false;
        }
        sessions
            .chunks(locus_protocol::MAX_SESSIONS_ENDED)
            .all(|chunk| {
                link.tx
                    .try_send(LocatorMessage::SessionsEnded {
                        sessions: chunk.to_vec(),
                        reason: reason.to_string(),
                    })
                    .is_ok()
            })
    }

    /// Who may expire the unjoined sessions of `edge_id`: this locator when it holds the
    /// edge (it tells the edge), or when nobody does (the edge is unknown, forgotten or
    /// failed). Not while the edge is link-lost here (its spool, which records the joins,
    /// may be behind) nor while another locator holds it.
    pub fn expires_sessions_of(&self, edge_id: &str) -> bool {
        let inner = self.lock();
        match inner.edges.get(edge_id) {
            None => true,
            Some(e) => match e.status.liveness {
                Liveness::Failed { .. } => true,
                Liveness::LinkLost { .. } => false,
                _ => e.held_here,
            },
        }
    }

    /// Edges failed for at least `forget_after`, with their claim revs: to forget (their
    /// records first, then [`Registry::forget`]).
    pub fn forgettable(
        &self,
        now: Instant,
        forget_after: std::time::Duration,
    ) -> Vec<(String, i64)> {
        let inner = self.lock();
        inner
            .edges
            .iter()
            .filter(|(_, e)| {
                e.link.is_none()
                    && e.failed_since
                        .is_some_and(|since| now.saturating_duration_since(since) >= forget_after)
            })
            .map(|(id, e)| (id.clone(), e.claim_rev))
            .collect()
    }

    /// Removes an edge that is still failed, unlinked and on claim `claim_rev` (one that
    /// came back meanwhile is kept). Returns whether it was removed.
    pub fn forget(&self, edge_id: &str, claim_rev: i64) -> bool {
        let mut inner = self.lock();
        let gone = inner.edges.get(edge_id).is_some_and(|e| {
            e.link.is_none()
                && e.claim_rev == claim_rev
                && matches!(e.status.liveness, Liveness::Failed { .. })
        });
        if gone {
            inner.edges.remove(edge_id);
            self.publish(&mut inner);
        }
        gone
    }

    /// The public URL the edge registered with (for health probes).
    pub fn public_url(&self, edge_id: &str) -> Option<Arc<str>> {
        self.lock().edges.get(edge_id).map(|e| e.public_url.clone())
    }

    /// Counts sessions another locator assigned to the edge since its last report.
    pub fn add_assignments(&self, edge_id: &str, n: u32) {
        if let Some(entry) = self.lock().edges.get(edge_id) {
            entry.live.add_pending(n);
        }
    }

    /// The rev of the edge's newest claim known here (0 when unknown).
    pub fn claim_rev(&self, edge_id: &str) -> i64 {
        self.lock().edges.get(edge_id).map_or(0, |e| e.claim_rev)
    }

    /// Whether this locator holds the edge's link (its newest claim).
    pub fn holds(&self, edge_id: &str) -> bool {
        self.lock().edges.get(edge_id).is_some_and(|e| e.held_here)
    }

    /// Whether the edge is known here (held or mirrored), whatever its region: an edge
    /// known but missing from a snapshot is in a region the current config does not have.
    pub fn knows(&self, edge_id: &str) -> bool {
        self.lock().edges.contains_key(edge_id)
    }

    /// The state of the edges held here that changed since the last call, for
    /// publishing. What could not be published is given back with [`Registry::retake`].
    pub fn take_changed(&self) -> Vec<PublishedEdge> {
        let mut inner = self.lock();
        inner
            .edges
            .values_mut()
            .filter(|e| e.held_here && e.changed)
            .map(|e| {
                e.changed = false;
                PublishedEdge {
                    edge_id: e.id.to_string(),
                    claim_rev: e.claim_rev,
                    liveness: match e.status.liveness {
                        Liveness::Connected => PublishedLiveness::Connected,
                        Liveness::Suspect { .. } => PublishedLiveness::Suspect,
                        Liveness::LinkLost { .. } => PublishedLiveness::LinkLost,
                        Liveness::Failed { why } => PublishedLiveness::Failed(why),
                    },
                    draining: e.status.draining,
                    load: e.live.figures().load,
                    report_seq: e.reports,
                }
            })
            .collect()
    }

    /// Marks edges as changed again (their publishing failed).
    pub fn retake(&self, edge_ids: &[String]) {
        let mut inner = self.lock();
        for id in edge_ids {
            if let Some(entry) = inner.edges.get_mut(id) {
                entry.touch();
            }
        }
    }

    /// Applies what the locators holding edges published (`me` is this locator: its own
    /// rows are skipped). An edge held here whose newest claim is now another locator's
    /// becomes a mirror and its local link is dropped (the edge registered elsewhere
    /// since). Returns the edges that moved away from here. A row that changes only a
    /// mirror's load is written to its live value and rebuilds nothing.
    pub fn apply_published(&self, rows: &[LiveEdge], me: &str, now: Instant) -> Vec<String> {
        let mut inner = self.lock();
        let mut moved = Vec::new();
        // A snapshot must be rebuilt (membership, state or what an edge registered with
        // changed), or only loads changed.
        let mut rebuild = false;
        let mut loads = false;
        for row in rows {
            // The suspension is the database's (set by whichever locator an admin used):
            // applied to every edge, also those held here, whatever the rev.
            if let Some(entry) = inner.edges.get_mut(&row.edge.id)
                && entry.status.suspended != row.edge.suspended
            {
                if row.edge.suspended {
                    entry.status.on_suspend();
                } else {
                    entry.status.on_resume();
                }
                entry.touch();
                rebuild = true;
            }
            if row.holder == me {
                continue;
            }
            let liveness = match row.liveness {
                PublishedLiveness::Connected => Liveness::Connected,
                PublishedLiveness::Suspect => Liveness::Suspect { since: now },
                PublishedLiveness::LinkLost => Liveness::LinkLost { since: now },
                PublishedLiveness::Failed(why) => Liveness::Failed { why },
            };
            let published = PublishedStatus {
                liveness,
                suspended: row.edge.suspended,
                draining: row.draining,
                age: std::time::Duration::from_millis(row.age_ms.max(0) as u64),
            };
            let known = inner.edges.contains_key(&row.edge.id);
            let entry = inner
                .edges
                .entry(row.edge.id.clone())
                .or_insert_with(|| Entry {
                    id: row.edge.id.as_str().into(),
                    region: row.edge.region.clone(),
                    public_url: row.edge.public_url.as_str().into(),
                    capacity: row.edge.capacity,
                    version: row.edge.version.as_str().into(),
                    status: EdgeStatus::registered(now, false, false),
                    live: Live::new(None, 0),
                    link: None,
                    held_here: false,
                    claim_rev: row.claim_rev,
                    reports: -1,
                    published_rev: 0,
                    failed_since: None,
                    changed: false,
                });
            if entry.held_here {
                if row.claim_rev <= entry.claim_rev {
                    continue; // an older claim: this locator's link is the edge's latest
                }
                entry.held_here = false;
                entry.changed = false;
                // Dropping the sender ends that link's task ("replaced by a newer link").
                entry.link = None;
                moved.push(row.edge.id.clone());
                rebuild = true;
            } else if row.rev <= entry.published_rev {
                continue;
            }
            let before = entry.status.state();
            let same_view = known
                && entry.region == row.edge.region
                && *entry.public_url == *row.edge.public_url
                && entry.capacity == row.edge.capacity
                && *entry.version == *row.edge.version;
            entry.published_rev = row.rev;
            entry.claim_rev = row.claim_rev;
            if !same_view {
                entry.region.clone_from(&row.edge.region);
                entry.public_url = row.edge.public_url.as_str().into();
                entry.capacity = row.edge.capacity;
                entry.version = row.edge.version.as_str().into();
                rebuild = true;
            }
            entry.status.on_published(&published, now);
            rebuild |= entry.status.state() != before;
            let fresh = row.report_seq != entry.reports;
            entry.reports = row.report_seq;
            entry
                .live
                .mirror(row.load, fresh, entry.status.last_report_at);
            loads = true;
        }
        if rebuild {
            self.publish(&mut inner);
        } else if loads {
            self.changed();
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::{SelectReason, select_edge};
    use locus_geo::Config;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const YAML: &str = r#"
default_region: a
regions:
  - id: a
    location: { lat: 0.0, lon: 0.0 }
  - id: b
    location: { lat: 0.0, lon: 10.0 }
"#;

    fn registry() -> Registry {
        let config = Config::parse(YAML, std::path::Path::new("t.yaml")).expect("config");
        Registry::new(Arc::new(Routing::new(config)))
    }

    fn register(registry: &Registry, id: &str, region: &str) -> u64 {
        let reg = Register {
            protocol: locus_protocol::PROTOCOL_VERSION,
            edge_id: id.to_string(),
            region: region.to_string(),
            public_url: format!("https://{id}.example"),
            capacity: 100,
            version: "1".to_string(),
            sessions: Vec::new(),
            draining: false,
            features: Vec::new(),
        };
        let (tx, rx) = mpsc::channel(4);
        std::mem::forget(rx); // the link stays open for the test
        registry
            .register(&reg, "credential".into(), false, tx, Instant::now(), 1)
            .expect("registered")
            .conn_id
    }

    fn load(sessions: u32) -> LoadReport {
        LoadReport {
            sessions,
            ..LoadReport::default()
        }
    }

    fn pick(registry: &Registry) -> (String, SelectReason, f64) {
        let generation = registry.generation();
        let snapshot = &generation.edges;
        let region = generation.routing.config.default_region;
        let sel = select_edge(
            snapshot,
            &generation.routing.plan,
            region,
            &mut StdRng::seed_from_u64(1),
        )
        .expect("an edge");
        (
            snapshot.edges[sel.edge].id.to_string(),
            sel.reason,
            sel.why.load,
        )
    }

    /// A report that changes no state rebuilds nothing and is seen by the next answer;
    /// the change counter still moves (live views, the cluster publisher).
    #[tokio::test(start_paused = true)]
    async fn a_report_is_visible_at_once_without_a_rebuild() {
        let registry = registry();
        let a1 = register(&registry, "a1", "a");
        let b1 = register(&registry, "b1", "b");
        let before = registry.snapshot();
        let changes = registry.subscribe();
        let seen = *changes.borrow();
        assert!(registry.report("a1", a1, load(100), Instant::now()));
        assert!(registry.report("b1", b1, load(30), Instant::now()));
        assert!(Arc::ptr_eq(&before, &registry.snapshot()), "no rebuild");
        assert_eq!(*changes.borrow(), seen + 2);
        assert_eq!(
            pick(&registry),
            ("b1".to_string(), SelectReason::RegionSaturated, 0.3)
        );
        assert!(registry.report("a1", a1, load(10), Instant::now()));
        assert_eq!(
            pick(&registry),
            ("a1".to_string(), SelectReason::InRegion, 0.1)
        );
        // Assignments noted on any snapshot count at once, and a report resets them.
        let snapshot = registry.snapshot();
        let a = snapshot.edge("a1").expect("a1");
        for _ in 0..90 {
            a.note_assignment();
        }
        assert_eq!(pick(&registry).1, SelectReason::RegionSaturated);
        assert!(registry.report("a1", a1, load(20), Instant::now()));
        assert_eq!(
            pick(&registry),
            ("a1".to_string(), SelectReason::InRegion, 0.2)
        );
        assert!(
            Arc::ptr_eq(&before, &registry.snapshot()),
            "still no rebuild"
        );
        // A change of state rebuilds it, with the live load carried.
        assert!(registry.set_suspended("b1", true));
        let after = registry.snapshot();
        assert!(!Arc::ptr_eq(&before, &after));
        assert_eq!(after.edge("a1").expect("a1").load(), Some(load(20)));
    }
}
