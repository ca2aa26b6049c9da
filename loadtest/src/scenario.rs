//! Scenarios: a list of phases run while the clients keep their load on. A phase may
//! inject one fault into the local topology and heal it; every fault is recorded with the
//! edges it took out and the bound within which answers must avoid them.
//!
//! | scenario | what happens |
//! |---|---|
//! | `steady` | load only |
//! | `burst` | a burst of session creates on top of the load (balance) |
//! | `edge-crash` | SIGKILL the busiest edge of a region that has another; restart it later (same id and spool) |
//! | `edge-hang` | five hangs (SIGSTOP, then SIGCONT) of the busiest edge of a region that has another, each with its detection time: four short ones (shorter than the silence that loses a link) and a last one long enough to fail the edge |
//! | `edge-stall` | SIGSTOP an edge for 1 s, then SIGCONT: no failover allowed |
//! | `slow-link` | +300 ms each way on an edge's locator link, longer than the suspect timeouts: no failover allowed |
//! | `link-partition` | blackhole an edge's locator link (packets held, connection open) for longer than `report_interval × missed_reports`, then heal: new sessions elsewhere, its sessions untouched, its spool stored once |
//! | `link-flap` | cut and restore an edge's locator link three times, each cut longer than the suspect timeout: no failover allowed |
//! | `region-outage` | SIGKILL every edge of the busiest region; restart them later |
//! | `locator-restart` | SIGTERM locator replica 0, then start it again on the same port and database |
//! | `rolling-drain` | for each edge of a region: start a replacement, SIGTERM the old one, wait until it exits |
//! | `mixed` | all of the above, one phase each |

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::client::{self, Clients};
use crate::topology::{EdgeWatch, StateWatch, Topology};

/// Hangs in one `edge-hang` phase.
pub const HANGS: usize = 5;
/// How long `edge-stall` stops the edge.
pub const STALL: Duration = Duration::from_secs(1);
/// The latency `slow-link` adds, each way.
pub const SLOW_LINK: Duration = Duration::from_millis(300);
/// Cuts in one `link-flap` phase.
pub const FLAPS: usize = 3;

/// One phase of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Steady,
    Burst,
    EdgeCrash,
    EdgeHang,
    EdgeStall,
    SlowLink,
    LinkPartition,
    LinkFlap,
    RegionOutage,
    LocatorRestart,
    RollingDrain,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Steady => "steady",
            Step::Burst => "burst",
            Step::EdgeCrash => "edge-crash",
            Step::EdgeHang => "edge-hang",
            Step::EdgeStall => "edge-stall",
            Step::SlowLink => "slow-link",
            Step::LinkPartition => "link-partition",
            Step::LinkFlap => "link-flap",
            Step::RegionOutage => "region-outage",
            Step::LocatorRestart => "locator-restart",
            Step::RollingDrain => "rolling-drain",
        }
    }

    /// Whether the step signals processes (needs the local topology).
    pub fn needs_topology(self) -> bool {
        !matches!(self, Step::Steady | Step::Burst)
    }
}

/// Scenario names accepted by `--scenario`.
pub const SCENARIOS: &[&str] = &[
    "steady",
    "burst",
    "edge-crash",
    "edge-hang",
    "edge-stall",
    "slow-link",
    "link-partition",
    "link-flap",
    "region-outage",
    "locator-restart",
    "rolling-drain",
    "mixed",
];

/// The phases of a scenario, or of several separated by commas (`steady,edge-crash`).
pub fn phases(name: &str) -> Option<Vec<Step>> {
    let mut all = Vec::new();
    for part in name.split(',') {
        all.extend(phases_of(part.trim())?);
    }
    (!all.is_empty()).then_some(all)
}

fn phases_of(name: &str) -> Option<Vec<Step>> {
    Some(match name {
        "steady" => vec![Step::Steady],
        "burst" => vec![Step::Burst],
        "edge-crash" => vec![Step::EdgeCrash],
        "edge-hang" => vec![Step::EdgeHang],
        "edge-stall" => vec![Step::EdgeStall],
        "slow-link" => vec![Step::SlowLink],
        "link-partition" => vec![Step::LinkPartition],
        "link-flap" => vec![Step::LinkFlap],
        "region-outage" => vec![Step::RegionOutage],
        "locator-restart" => vec![Step::LocatorRestart],
        "rolling-drain" => vec![Step::RollingDrain],
        "mixed" => vec![
            Step::Steady,
            Step::Burst,
            Step::EdgeCrash,
            Step::EdgeHang,
            Step::EdgeStall,
            Step::SlowLink,
            Step::LinkPartition,
            Step::LinkFlap,
            Step::RegionOutage,
            Step::LocatorRestart,
            Step::RollingDrain,
        ],
        _ => return None,
    })
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// `edge-crash`, `edge-hang`, `edge-stall`, `slow-link`, `link-partition`,
    /// `link-flap`, `region-outage`, `locator-restart`, `edge-drain`.
    pub kind: &'static str,
    /// What was done, for people.
    pub action: String,
    /// When the fault was injected and healed (ms since the start of the run).
    pub at_ms: u64,
    /// When healing started (restart, SIGCONT): answers after it may name the edges
    /// again. `None` when the fault is not healed within its phase.
    pub healing_ms: Option<u64>,
    pub healed_ms: Option<u64>,
    /// Edges taken out (none for a locator restart).
    pub edges: Vec<String>,
    /// Answers must avoid those edges (the locator must answer again, for a restart)
    /// within this bound.
    pub bound_ms: u64,
    /// Only answers creating new sessions count (a draining edge still takes joins of
    /// its sessions, by design).
    pub new_sessions_only: bool,
    /// Whether answers must avoid the edges within `bound_ms` (a stall of a second or a
    /// slow link may be avoided for a moment, and that is reported, not required).
    pub must_avoid: bool,
    /// Whether the fault may end or move sessions (a crash, a hang past the failure
    /// deadline). When false, any session of the edges disrupted in the fault's window,
    /// or an `edge_failed` of them, is a false failover.
    pub failover_expected: bool,
    /// Whether every session of the edges must go on undisrupted (a stall of a second, a
    /// slow or cut link). A hang of seconds disrupts the clients that reach the stopped
    /// process whatever the locator does (a join's websocket times out), so a short hang
    /// may disrupt sessions but must not fail the edge over.
    pub sessions_must_survive: bool,
    /// Rooms disrupted by the fault must be back within this bound.
    pub recover_bound_ms: u64,
    /// The locators' view of the edge from the fault until it was healed and active
    /// again (faults of the failure detector; `None` for the others).
    pub watch: Option<StateWatch>,
}

/// One phase as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRun {
    pub name: &'static str,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Settings of the phases.
#[derive(Debug, Clone)]
pub struct PhaseOptions {
    pub duration: Duration,
    pub burst: usize,
    pub burst_concurrency: usize,
    pub seed: u64,
    /// Overrides the computed avoidance bounds.
    pub bound: Option<Duration>,
}

/// Runs the phases; returns what was done.
#[derive(Debug)]
pub struct Runner<'a> {
    pub topology: Option<&'a mut Topology>,
    pub clients: Arc<Clients>,
    pub options: PhaseOptions,
    pub faults: Vec<Fault>,
    pub phases: Vec<PhaseRun>,
    pub notes: Vec<String>,
    /// `(id, region)` of the edges running when the burst started.
    pub burst_edges: Vec<(String, String)>,
    /// The phase running now (for the progress line).
    pub current: Arc<std::sync::Mutex<&'static str>>,
}

impl Runner<'_> {
    fn now_ms(&self) -> u64 {
        self.clients.recorder().now_ms()
    }

    fn bound(&self, computed: Duration) -> u64 {
        self.options.bound.unwrap_or(computed).as_millis() as u64
    }

    pub async fn run(&mut self, steps: &[Step]) -> Result<(), String> {
        for &step in steps {
            if let Ok(mut current) = self.current.lock() {
                *current = step.name();
            }
            let start = Instant::now();
            let start_ms = self.now_ms();
            self.step(step, start).await?;
            self.phases.push(PhaseRun {
                name: step.name(),
                start_ms,
                end_ms: self.now_ms(),
            });
            if self.clients.stopping() {
                self.notes.push(format!(
                    "the request budget ran out during phase {}",
                    step.name()
                ));
                break;
            }
        }
        Ok(())
    }

    async fn sleep_until(&self, at: Instant) {
        tokio::time::sleep_until(at).await;
    }

    /// The region with at least `min_edges` running edges that received the most answers
    /// lately, and its running edges sorted busiest first.
    fn busiest(&self, min_edges: usize) -> Option<(String, Vec<String>)> {
        let topology = self.topology.as_deref()?;
        let since = self.now_ms().saturating_sub(5_000);
        let counts = self.clients.recorder().answers_by_edge_since(since);
        let count = |id: &str| counts.iter().find(|(e, _)| e == id).map_or(0, |(_, n)| *n);
        let mut best: Option<(u64, String, Vec<String>)> = None;
        for region in &topology.config.regions {
            let mut edges = topology.running_edges(&region.id);
            if edges.len() < min_edges {
                continue;
            }
            edges.sort_by_key(|e| std::cmp::Reverse(count(e)));
            let total: u64 = edges.iter().map(|e| count(e)).sum();
            if best.as_ref().is_none_or(|(n, _, _)| total > *n) {
                best = Some((total, region.id.clone(), edges));
            }
        }
        best.map(|(_, region, edges)| (region, edges))
    }

    /// The busiest running edge of the busiest region that has another running edge
    /// (new sessions have somewhere else to go), with its region.
    fn victim(&self) -> Option<(String, String)> {
        let (region, edges) = self.busiest(2)?;
        Some((region, edges.into_iter().next()?))
    }

    /// Records a fault injected now; returns its index.
    fn begin(&mut self, fault: Fault) -> usize {
        self.faults.push(fault);
        self.faults.len() - 1
    }

    fn topology(&mut self) -> Result<&mut Topology, String> {
        self.topology
            .as_deref_mut()
            .ok_or_else(|| "no topology".into())
    }

    /// Starts following edge `id` on every locator, for the fault just begun.
    fn watch(&self, id: &str) -> Option<EdgeWatch> {
        let topology = self.topology.as_deref()?;
        Some(topology.watch_edge(id, self.clients.recorder().clone()))
    }

    /// Stores what the locators showed of fault `index`'s edge.
    async fn watched(&mut self, index: usize, watch: Option<EdgeWatch>) {
        if let Some(watch) = watch {
            self.faults[index].watch = Some(watch.finish().await);
        }
    }

    /// Waits until `id` is active on every locator again (after a heal).
    async fn back_active(&mut self, id: &str) -> Result<(), String> {
        let topology = self.topology.as_deref().ok_or("no topology")?;
        topology
            .wait_edges_active(&[id.to_string()], Duration::from_secs(30))
            .await
    }

    /// `edge-hang`: five hangs, each of the busiest edge then, each its own fault with
    /// its detection time. Four are shorter than the silence that loses a link (the
    /// edge must be avoided fast, and nothing may fail); the last outlasts it and the
    /// probe, so the edge fails and its rooms move, as a real hang would.
    async fn hangs(
        &mut self,
        end: Instant,
        timing: &locus_geo::config::EdgeTiming,
    ) -> Result<(), String> {
        tokio::time::sleep(self.options.duration / 5).await;
        let lost_after = timing.report_interval * timing.missed_reports;
        let detect = self.bound(timing.suspect_after_max + Duration::from_millis(500));
        for n in 1..=HANGS {
            let Some((region, id)) = self.victim() else {
                self.notes
                    .push("edge-hang: no region with two running edges; skipped".into());
                break;
            };
            let long = n == HANGS;
            // A short hang outlasts the suspect timeout well, and ends a second before
            // the silence that loses a link: it must fail nothing.
            let hold = if long {
                lost_after + timing.probe_timeout + Duration::from_secs(3)
            } else {
                (timing.suspect_after_max + Duration::from_millis(1_500))
                    .min(lost_after.saturating_sub(Duration::from_secs(1)))
            };
            let recover = timing.report_interval * (timing.missed_reports + 1)
                + timing.probe_timeout
                + Duration::from_secs(5);
            let at_ms = self.now_ms();
            self.topology()?.stop_edge(&id)?;
            let index = self.begin(Fault {
                kind: "edge-hang",
                action: format!(
                    "hang {n}/{HANGS}: SIGSTOP {id} ({region}) for {} ms{}",
                    hold.as_millis(),
                    if long {
                        ", past the failure deadline"
                    } else {
                        ""
                    }
                ),
                at_ms,
                healing_ms: None,
                healed_ms: None,
                edges: vec![id.clone()],
                bound_ms: detect,
                // A suspect edge still takes joins of its sessions, by design: the goal is
                // that it gets no new ones.
                new_sessions_only: true,
                must_avoid: true,
                failover_expected: long,
                sessions_must_survive: false,
                recover_bound_ms: recover.as_millis() as u64,
                watch: None,
            });
            let watch = self.watch(&id);
            tokio::time::sleep(hold).await;
            self.faults[index].healing_ms = Some(self.now_ms());
            self.topology()?.continue_edge(&id)?;
            if !long {
                self.back_active(&id).await?;
            }
            self.faults[index].healed_ms = Some(self.now_ms());
            // Let the edge take sessions again before the next hang picks the busiest.
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.watched(index, watch).await;
        }
        self.sleep_until(end.max(Instant::now() + Duration::from_secs(2)))
            .await;
        Ok(())
    }

    /// `edge-stall`, `slow-link`, `link-partition`, `link-flap`: faults that must not
    /// fail the edge over.
    async fn link_or_stall(
        &mut self,
        step: Step,
        end: Instant,
        timing: &locus_geo::config::EdgeTiming,
    ) -> Result<(), String> {
        tokio::time::sleep(self.options.duration / 5).await;
        let Some((region, id)) = self.victim() else {
            self.notes.push(format!(
                "{}: no region with two running edges; skipped",
                step.name()
            ));
            self.sleep_until(end).await;
            return Ok(());
        };
        let lost_after = timing.report_interval * timing.missed_reports;
        let detect = self.bound(timing.suspect_after_max + Duration::from_millis(500));
        let fault = |action: String, at_ms: u64, must_avoid: bool| Fault {
            kind: step.name(),
            action,
            at_ms,
            healing_ms: None,
            healed_ms: None,
            edges: vec![id.clone()],
            bound_ms: detect,
            // The edge's sessions stay there by design: joins of them may name it.
            new_sessions_only: true,
            must_avoid,
            failover_expected: false,
            sessions_must_survive: true,
            recover_bound_ms: detect,
            watch: None,
        };
        match step {
            Step::EdgeStall => {
                let at_ms = self.now_ms();
                self.topology()?.stop_edge(&id)?;
                let index = self.begin(fault(
                    format!("SIGSTOP {id} ({region}) for 1 s, then SIGCONT"),
                    at_ms,
                    false,
                ));
                let watch = self.watch(&id);
                tokio::time::sleep(STALL).await;
                self.faults[index].healing_ms = Some(self.now_ms());
                self.topology()?.continue_edge(&id)?;
                self.faults[index].healed_ms = Some(self.now_ms());
                self.back_active(&id).await?;
                // A suspicion may still come just after the heal: watch a little longer.
                tokio::time::sleep(timing.suspect_after_max).await;
                self.watched(index, watch).await;
            }
            Step::SlowLink => {
                let at_ms = self.now_ms();
                self.topology()?.delay_link(&id, SLOW_LINK)?;
                let hold = lost_after + Duration::from_secs(2);
                let index = self.begin(fault(
                    format!(
                        "+{} ms each way on the locator link of {id} ({region}) for {} ms",
                        SLOW_LINK.as_millis(),
                        hold.as_millis()
                    ),
                    at_ms,
                    false,
                ));
                let watch = self.watch(&id);
                tokio::time::sleep(hold).await;
                self.faults[index].healing_ms = Some(self.now_ms());
                self.topology()?.heal_link(&id)?;
                self.faults[index].healed_ms = Some(self.now_ms());
                self.back_active(&id).await?;
                tokio::time::sleep(timing.suspect_after_max).await;
                self.watched(index, watch).await;
            }
            Step::LinkPartition => {
                let at_ms = self.now_ms();
                self.topology()?.blackhole_link(&id)?;
                let hold = lost_after + Duration::from_secs(2);
                let index = self.begin(fault(
                    format!(
                        "blackhole the locator link of {id} ({region}) for {} ms (packets held, connection open), then heal",
                        hold.as_millis()
                    ),
                    at_ms,
                    true,
                ));
                let watch = self.watch(&id);
                tokio::time::sleep(hold).await;
                self.faults[index].healing_ms = Some(self.now_ms());
                self.topology()?.heal_link(&id)?;
                self.back_active(&id).await?;
                self.faults[index].healed_ms = Some(self.now_ms());
                self.watched(index, watch).await;
            }
            Step::LinkFlap => {
                let cut = timing.suspect_after_max + Duration::from_millis(700);
                for n in 1..=FLAPS {
                    let at_ms = self.now_ms();
                    self.topology()?.blackhole_link(&id)?;
                    let index = self.begin(fault(
                        format!(
                            "cut {n}/{FLAPS}: blackhole the locator link of {id} ({region}) for {} ms, then heal",
                            cut.as_millis()
                        ),
                        at_ms,
                        true,
                    ));
                    let watch = self.watch(&id);
                    tokio::time::sleep(cut).await;
                    self.faults[index].healing_ms = Some(self.now_ms());
                    self.topology()?.heal_link(&id)?;
                    self.faults[index].healed_ms = Some(self.now_ms());
                    tokio::time::sleep(cut).await;
                    self.watched(index, watch).await;
                }
                self.back_active(&id).await?;
            }
            _ => {}
        }
        self.sleep_until(end.max(Instant::now() + Duration::from_secs(2)))
            .await;
        Ok(())
    }

    async fn step(&mut self, step: Step, start: Instant) -> Result<(), String> {
        let d = self.options.duration;
        let end = start + d;
        let timing = self
            .topology
            .as_deref()
            .map(|t| t.config.edges.clone())
            .unwrap_or_default();
        match step {
            Step::Steady => self.sleep_until(end).await,
            Step::Burst => {
                tokio::time::sleep(d / 5).await;
                if let Some(topology) = self.topology.as_deref() {
                    self.burst_edges = topology
                        .edge_urls()
                        .into_iter()
                        .map(|(id, region, _)| (id, region))
                        .collect();
                }
                client::burst(
                    self.clients.clone(),
                    self.options.burst,
                    self.options.burst_concurrency,
                    self.options.seed,
                )
                .await;
                self.sleep_until(end).await;
            }
            Step::EdgeHang => self.hangs(end, &timing).await?,
            Step::EdgeStall | Step::SlowLink | Step::LinkPartition | Step::LinkFlap => {
                self.link_or_stall(step, end, &timing).await?
            }
            Step::EdgeCrash | Step::RegionOutage => {
                tokio::time::sleep(d / 5).await;
                let outage = step == Step::RegionOutage;
                let Some((region, edges)) = self.busiest(if outage { 1 } else { 2 }) else {
                    self.notes.push(format!(
                        "{}: no region with enough running edges; skipped",
                        step.name()
                    ));
                    self.sleep_until(end).await;
                    return Ok(());
                };
                let victims: Vec<String> = if outage {
                    edges
                } else {
                    edges.into_iter().take(1).collect()
                };
                let computed =
                    timing.probe_timeout + timing.report_interval + Duration::from_secs(5);
                let bound_ms = self.bound(computed);
                let at_ms = self.now_ms();
                let topology = self.topology.as_deref_mut().ok_or("no topology")?;
                for id in &victims {
                    topology.kill_edge(id)?;
                }
                let action = match step {
                    Step::RegionOutage => {
                        format!("SIGKILL every edge of {region}: {}", victims.join(", "))
                    }
                    _ => format!("SIGKILL {} ({region})", victims.join(", ")),
                };
                let index = self.faults.len();
                self.faults.push(Fault {
                    kind: step.name(),
                    action,
                    at_ms,
                    healing_ms: None,
                    healed_ms: None,
                    edges: victims.clone(),
                    bound_ms,
                    new_sessions_only: false,
                    must_avoid: true,
                    failover_expected: true,
                    sessions_must_survive: false,
                    recover_bound_ms: bound_ms,
                    watch: None,
                });
                let heal_at = (start + d * 7 / 10)
                    .max(Instant::now() + Duration::from_millis(bound_ms + 1_000));
                self.sleep_until(heal_at).await;
                self.faults[index].healing_ms = Some(self.now_ms());
                let topology = self.topology.as_deref_mut().ok_or("no topology")?;
                for id in &victims {
                    topology.restart_edge(id).await?;
                }
                self.faults[index].healed_ms = Some(self.now_ms());
                self.sleep_until(end.max(Instant::now() + Duration::from_secs(2)))
                    .await;
            }
            Step::LocatorRestart => {
                tokio::time::sleep(d / 4).await;
                let at_ms = self.now_ms();
                let bound_ms = self.bound(Duration::from_secs(20));
                let topology = self.topology.as_deref_mut().ok_or("no topology")?;
                topology.stop_locator(0).await?;
                topology.start_locator(0).await?;
                let replicas = topology.locators.len();
                self.faults.push(Fault {
                    kind: "locator-restart",
                    action: format!(
                        "SIGTERM locator replica 0 of {replicas}, then start it again (same port, same database)"
                    ),
                    at_ms,
                    healing_ms: Some(at_ms),
                    healed_ms: Some(self.now_ms()),
                    edges: Vec::new(),
                    bound_ms,
                    new_sessions_only: false,
                    must_avoid: true,
                    failover_expected: true,
                    sessions_must_survive: false,
                    recover_bound_ms: bound_ms,
                    watch: None,
                });
                self.sleep_until(end.max(Instant::now() + Duration::from_secs(2)))
                    .await;
            }
            Step::RollingDrain => {
                tokio::time::sleep(d / 5).await;
                let Some((region, edges)) = self.busiest(1) else {
                    self.notes
                        .push("rolling-drain: no region with a running edge; skipped".into());
                    self.sleep_until(end).await;
                    return Ok(());
                };
                let bound_ms = self.bound(Duration::from_secs(5));
                let recorder = self.clients.recorder().clone();
                for old in edges {
                    let topology = self.topology.as_deref_mut().ok_or("no topology")?;
                    let replacement = topology.add_edge(&region).await?;
                    let deadline = topology.drain_deadline() + Duration::from_secs(20);
                    let at_ms = recorder.now_ms();
                    topology.terminate_edge(&old)?;
                    let index = self.faults.len();
                    self.faults.push(Fault {
                        kind: "edge-drain",
                        action: format!(
                            "SIGTERM {old} ({region}) after starting its replacement {replacement}"
                        ),
                        at_ms,
                        healing_ms: None,
                        healed_ms: None,
                        edges: vec![old.clone()],
                        bound_ms,
                        new_sessions_only: true,
                        must_avoid: true,
                        failover_expected: true,
                        sessions_must_survive: false,
                        recover_bound_ms: bound_ms,
                        watch: None,
                    });
                    let topology = self.topology.as_deref_mut().ok_or("no topology")?;
                    let exited = topology.wait_edge_exit(&old, deadline).await?;
                    if !exited {
                        self.notes.push(format!(
                            "{old} did not exit within {deadline:?} of SIGTERM: killed"
                        ));
                    }
                    let now = self.now_ms();
                    self.faults[index].healing_ms = Some(now);
                    self.faults[index].healed_ms = Some(now);
                }
                self.sleep_until(end.max(Instant::now() + Duration::from_secs(2)))
                    .await;
            }
        }
        Ok(())
    }
}
