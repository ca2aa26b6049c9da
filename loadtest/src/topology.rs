//! A local topology of real processes: one locator (or several replicas on one Postgres
//! database) and N edges per region, started from the built `locator` and `edge`
//! binaries, on loopback ports. Process faults are signals sent to those processes by pid
//! (`kill -KILL/-STOP/-CONT/-TERM`): only processes this module started are ever touched.
//! Link faults go through the [`LinkProxy`] every edge's locator link passes (one per
//! edge and locator): blackhole, delay, reset, heal. The locator probes the edge's
//! `/healthz` directly, as it would across a cut link that clients still reach.
//! Dropping the topology resumes stopped processes and kills every child.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use locus_geo::config::Config;
use serde::Serialize;

use crate::proxy::LinkProxy;
use crate::record::Recorder;

/// How to start the topology.
#[derive(Debug, Clone)]
pub struct TopologyOptions {
    /// Folder holding the `locator` and `edge` binaries.
    pub bin_dir: PathBuf,
    /// The regions file given to the locator.
    pub config_path: PathBuf,
    /// `--geoip` given to the locator (`None`: the file's own setting).
    pub geoip: Option<String>,
    /// `postgres://…` for replicas on one database; `None`: a SQLite file in `work_dir`.
    pub database: Option<String>,
    pub replicas: usize,
    pub edges_per_region: usize,
    /// Regions to put edges in (`None`: every region of the file).
    pub regions: Option<Vec<String>>,
    pub capacity: u32,
    /// `--linger` and `--drain-deadline` of the edges.
    pub edge_linger: Duration,
    pub edge_drain_deadline: Duration,
    /// Logs, spools and the SQLite file.
    pub work_dir: PathBuf,
}

/// One locator process.
#[derive(Debug)]
pub struct LocatorProcess {
    pub port: u16,
    child: Option<Child>,
}

/// One edge process.
#[derive(Debug)]
pub struct EdgeProcess {
    pub id: String,
    pub region: String,
    pub port: u16,
    spool_dir: PathBuf,
    child: Option<Child>,
    stopped: bool,
    /// The edge's link to each locator replica, in the replicas' order.
    links: Vec<LinkProxy>,
}

/// The running processes.
#[derive(Debug)]
pub struct Topology {
    options: TopologyOptions,
    pub config: Config,
    pub locators: Vec<LocatorProcess>,
    pub edges: Vec<EdgeProcess>,
    /// The locators' master edge key (`LOCATOR_EDGE_KEY`); each edge gets its own
    /// credential derived from it.
    pub edge_key: String,
    pub admin_token: String,
    http: reqwest::Client,
    replacements: u32,
}

/// How often [`Topology::watch_edge`] asks every locator for an edge's state.
const WATCH_EVERY: Duration = Duration::from_millis(50);
const WATCH_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// What the locators showed of one edge while a fault lasted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StateWatch {
    /// When (ms since the start of the run) every locator first showed the edge out of
    /// new sessions (any state but `active`); `None`: never while watched.
    pub detected_ms: Option<u64>,
    /// The same for each locator, in the replicas' order (the one holding the edge's
    /// link first, the others as they follow what it publishes).
    pub first_out_ms: Vec<Option<u64>>,
    /// How long at least one locator kept it out of new sessions.
    pub out_ms: u64,
    /// The states other than `active` seen, in the order first seen.
    pub states_seen: Vec<String>,
    /// States read, over every locator.
    pub polls: u64,
}

/// A running [`Topology::watch_edge`].
#[derive(Debug)]
pub struct EdgeWatch {
    stop: tokio::sync::watch::Sender<bool>,
    /// One per locator: its `(ms since the start, state)` samples.
    tasks: Vec<tokio::task::JoinHandle<Vec<(u64, String)>>>,
}

impl EdgeWatch {
    /// Stops watching; what was seen.
    pub async fn finish(self) -> StateWatch {
        let _ = self.stop.send(true);
        let mut per_locator = Vec::new();
        for task in self.tasks {
            per_locator.push(task.await.unwrap_or_default());
        }
        StateWatch::of(&per_locator)
    }
}

impl StateWatch {
    /// The figures of each locator's samples (in time order).
    pub fn of(per_locator: &[Vec<(u64, String)>]) -> StateWatch {
        let out = |state: &str| state != "active";
        let mut watched = StateWatch {
            first_out_ms: per_locator
                .iter()
                .map(|samples| samples.iter().find(|(_, s)| out(s)).map(|(t, _)| *t))
                .collect(),
            ..StateWatch::default()
        };
        // Out of new sessions everywhere once the last locator had it out.
        watched.detected_ms = watched
            .first_out_ms
            .iter()
            .try_fold(0, |latest, t| t.map(|t| t.max(latest)));
        let mut events: Vec<(u64, usize, bool)> = Vec::new();
        for (i, samples) in per_locator.iter().enumerate() {
            for (t, state) in samples {
                if out(state) && !watched.states_seen.contains(state) {
                    watched.states_seen.push(state.clone());
                }
                events.push((*t, i, out(state)));
            }
        }
        // Time during which at least one locator had it out.
        events.sort_unstable();
        let last = events.last().map_or(0, |e| e.0);
        let mut is_out = vec![false; per_locator.len()];
        let mut since: Option<u64> = None;
        for (t, i, o) in events {
            is_out[i] = o;
            let any = is_out.iter().any(|&o| o);
            match (any, since) {
                (true, None) => since = Some(t),
                (false, Some(from)) => {
                    watched.out_ms += t.saturating_sub(from);
                    since = None;
                }
                _ => {}
            }
        }
        if let Some(from) = since {
            watched.out_ms += last.saturating_sub(from);
        }
        watched.polls = per_locator.iter().map(|s| s.len() as u64).sum();
        watched
    }
}

/// A free loopback port (bound, then released: the child binds it next).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_token(prefix: &str) -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

fn signal(child: &Child, name: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{name} {} failed", child.id()))
    }
}

impl Topology {
    /// Starts the locator(s) and the edges, and waits until every edge is registered.
    pub async fn start(options: TopologyOptions) -> Result<Topology, String> {
        let config = Config::load(&options.config_path).map_err(|e| e.to_string())?;
        for binary in ["locator", "edge"] {
            let path = options.bin_dir.join(binary);
            if !path.exists() {
                return Err(format!(
                    "{} is missing: build it with `cargo build --release -p locus-locator -p locus-edge` (or give --bin-dir)",
                    path.display()
                ));
            }
        }
        std::fs::create_dir_all(&options.work_dir)
            .map_err(|e| format!("cannot create {}: {e}", options.work_dir.display()))?;
        let regions: Vec<String> = match &options.regions {
            Some(list) => {
                for id in list {
                    if config.region(id).is_none() {
                        return Err(format!(
                            "--regions: {id} is not a region of {}",
                            options.config_path.display()
                        ));
                    }
                }
                list.clone()
            }
            None => config.regions.iter().map(|r| r.id.clone()).collect(),
        };
        let mut topology = Topology {
            config,
            locators: Vec::new(),
            edges: Vec::new(),
            edge_key: random_token("loadtest-edge-key"),
            admin_token: random_token("loadtest-admin"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .map_err(|e| e.to_string())?,
            replacements: 0,
            options,
        };
        for _ in 0..topology.options.replicas.max(1) {
            let port = free_port().map_err(|e| format!("no free port: {e}"))?;
            topology.locators.push(LocatorProcess { port, child: None });
        }
        for i in 0..topology.locators.len() {
            topology.spawn_locator(i)?;
        }
        for i in 0..topology.locators.len() {
            topology
                .wait_locator_healthy(i, Duration::from_secs(30))
                .await?;
        }
        for region in &regions {
            for n in 1..=topology.options.edges_per_region {
                let port = free_port().map_err(|e| format!("no free port: {e}"))?;
                let id = format!("{region}-{n}");
                let links = topology.link_proxies()?;
                topology.edges.push(EdgeProcess {
                    spool_dir: topology.options.work_dir.join(format!("spool-{id}")),
                    id,
                    region: region.clone(),
                    port,
                    child: None,
                    stopped: false,
                    links,
                });
            }
        }
        for i in 0..topology.edges.len() {
            topology.spawn_edge(i)?;
        }
        let ids: Vec<String> = topology.edges.iter().map(|e| e.id.clone()).collect();
        topology
            .wait_edges_active(&ids, Duration::from_secs(30))
            .await?;
        Ok(topology)
    }

    pub fn locator_urls(&self) -> Vec<String> {
        self.locators
            .iter()
            .map(|l| format!("http://127.0.0.1:{}", l.port))
            .collect()
    }

    /// The edges' `--drain-deadline`.
    /// Process ids of the running locators, in the replicas' order.
    pub fn locator_pids(&self) -> Vec<u32> {
        self.locators
            .iter()
            .filter_map(|l| l.child.as_ref().map(Child::id))
            .collect()
    }

    pub fn drain_deadline(&self) -> Duration {
        self.options.edge_drain_deadline
    }

    fn log_file(&self, name: &str) -> Result<std::fs::File, String> {
        let path = self.options.work_dir.join(format!("{name}.log"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
    }

    fn spawn_locator(&mut self, i: usize) -> Result<(), String> {
        let database = match &self.options.database {
            Some(url) => url.clone(),
            None => self
                .options
                .work_dir
                .join("locator.sqlite")
                .display()
                .to_string(),
        };
        let log = self.log_file(&format!("locator-{i}"))?;
        let mut command = Command::new(self.options.bin_dir.join("locator"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.options.config_path)
            .args(["--listen", &format!("127.0.0.1:{}", self.locators[i].port)])
            .args(["--database", &database]);
        if let Some(geoip) = &self.options.geoip {
            command.args(["--geoip", geoip]);
        }
        let child = command
            .env("LOCATOR_EDGE_KEY", &self.edge_key)
            .env("LOCATOR_ADMIN_TOKEN", &self.admin_token)
            .env(
                "RUST_LOG",
                std::env::var("LOADTEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start the locator: {e}"))?;
        self.locators[i].child = Some(child);
        Ok(())
    }

    /// A proxy in front of each locator replica, for one edge's link.
    fn link_proxies(&self) -> Result<Vec<LinkProxy>, String> {
        self.locators
            .iter()
            .map(|l| {
                LinkProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], l.port)))
                    .map_err(|e| format!("cannot start a link proxy: {e}"))
            })
            .collect()
    }

    fn spawn_edge(&mut self, i: usize) -> Result<(), String> {
        let edge = &self.edges[i];
        // The edge reaches its locators only through its link proxies.
        let locators = edge
            .links
            .iter()
            .map(|p| format!("http://{}", p.addr()))
            .collect::<Vec<_>>()
            .join(",");
        let log = self.log_file(&format!("edge-{}", edge.id))?;
        let child = Command::new(self.options.bin_dir.join("edge"))
            .args(["--locator", &locators])
            .args(["--region", &edge.region, "--id", &edge.id])
            .args(["--listen", &format!("127.0.0.1:{}", edge.port)])
            .args(["--public-url", &format!("http://127.0.0.1:{}", edge.port)])
            .args(["--capacity", &self.options.capacity.to_string()])
            .args([
                "--linger",
                &format!("{}ms", self.options.edge_linger.as_millis()),
            ])
            .args([
                "--drain-deadline",
                &format!("{}ms", self.options.edge_drain_deadline.as_millis()),
            ])
            .arg("--spool-dir")
            .arg(&edge.spool_dir)
            .env(
                "LOCATOR_EDGE_TOKEN",
                locus_protocol::edge_credential::derive(
                    self.edge_key.as_bytes(),
                    1,
                    &edge.region,
                    &edge.id,
                ),
            )
            .env(
                "RUST_LOG",
                std::env::var("LOADTEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start edge {}: {e}", edge.id))?;
        let edge = &mut self.edges[i];
        edge.child = Some(child);
        edge.stopped = false;
        Ok(())
    }

    fn edge_index(&self, id: &str) -> Result<usize, String> {
        self.edges
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| format!("no edge {id}"))
    }

    async fn wait_locator_healthy(&mut self, i: usize, within: Duration) -> Result<(), String> {
        let url = format!("http://127.0.0.1:{}/healthz", self.locators[i].port);
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(child) = self.locators[i].child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "the locator exited at start ({status}); see {}",
                    self.options
                        .work_dir
                        .join(format!("locator-{i}.log"))
                        .display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the locator on {url} is not healthy after {within:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until every edge of `ids` is `active` on every locator replica.
    pub async fn wait_edges_active(&self, ids: &[String], within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let mut all = true;
            for url in self.locator_urls() {
                let ok = match admin_status(&self.http, &url, &self.admin_token).await {
                    Some(status) => {
                        let active: Vec<&str> = status_edges(&status)
                            .filter(|(_, e)| e["state"] == "active")
                            .filter_map(|(_, e)| e["id"].as_str())
                            .collect();
                        ids.iter().all(|id| active.contains(&id.as_str()))
                    }
                    None => false,
                };
                all &= ok;
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "edges {ids:?} are not all active after {within:?}; logs in {}",
                    self.options.work_dir.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Follows the state of edge `id` on every locator until [`EdgeWatch::finish`]: the
    /// locators' own view of a fault (when they stopped offering the edge for new
    /// sessions), which the clients' answers only bound from below when few new sessions
    /// happen to go its way. Each locator is asked on its own, and each state is dated by
    /// the locator's `generated_at_ms` (same host, same clock): when it held, not when the
    /// answer came back through a loaded machine.
    pub fn watch_edge(&self, id: &str, recorder: Arc<Recorder>) -> EdgeWatch {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = self
            .locator_urls()
            .into_iter()
            .map(|url| {
                let http = self.http.clone();
                let token = self.admin_token.clone();
                let id = id.to_string();
                let recorder = recorder.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    loop {
                        let status = tokio::time::timeout(
                            WATCH_REQUEST_TIMEOUT,
                            admin_status(&http, &url, &token),
                        )
                        .await
                        .ok()
                        .flatten();
                        // Run time of the locator's clock reading (ms since the start).
                        let offset = crate::now_ms() - recorder.now_ms() as i64;
                        if let Some(status) = status {
                            let state = status_edges(&status)
                                .find(|(_, e)| e["id"] == id.as_str())
                                .and_then(|(_, e)| e["state"].as_str().map(str::to_string));
                            let t = status["generated_at_ms"].as_i64().map_or_else(
                                || recorder.now_ms(),
                                |g| u64::try_from(g - offset).unwrap_or(0),
                            );
                            if let Some(state) = state {
                                samples.push((t, state));
                            }
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(WATCH_EVERY) => {}
                            _ = stopped.changed() => break,
                        }
                    }
                    samples
                })
            })
            .collect();
        EdgeWatch { stop, tasks }
    }

    /// SIGKILL.
    pub fn kill_edge(&mut self, id: &str) -> Result<(), String> {
        let i = self.edge_index(id)?;
        let edge = &mut self.edges[i];
        if let Some(mut child) = edge.child.take() {
            if edge.stopped {
                let _ = signal(&child, "CONT");
                edge.stopped = false;
            }
            let killed = child.kill();
            let _ = child.wait();
            killed.map_err(|e| format!("cannot kill edge {id}: {e}"))?;
        }
        Ok(())
    }

    /// SIGSTOP: the process hangs, its sockets stay open.
    pub fn stop_edge(&mut self, id: &str) -> Result<(), String> {
        let i = self.edge_index(id)?;
        let edge = &mut self.edges[i];
        if let Some(child) = &edge.child {
            signal(child, "STOP")?;
            edge.stopped = true;
        }
        Ok(())
    }

    /// SIGCONT.
    pub fn continue_edge(&mut self, id: &str) -> Result<(), String> {
        let i = self.edge_index(id)?;
        let edge = &mut self.edges[i];
        if let Some(child) = &edge.child
            && edge.stopped
        {
            signal(child, "CONT")?;
            edge.stopped = false;
        }
        Ok(())
    }

    /// The link proxies of an edge.
    fn links(&self, id: &str) -> Result<&[LinkProxy], String> {
        Ok(&self.edges[self.edge_index(id)?].links)
    }

    /// Cuts the edge's locator links: nothing passes, the connections stay open.
    pub fn blackhole_link(&self, id: &str) -> Result<(), String> {
        self.links(id)?.iter().for_each(LinkProxy::blackhole);
        Ok(())
    }

    /// Adds `delay` each way on the edge's locator links.
    pub fn delay_link(&self, id: &str, delay: Duration) -> Result<(), String> {
        self.links(id)?.iter().for_each(|p| p.delay(delay));
        Ok(())
    }

    /// Resets the edge's open locator links (TCP RST).
    pub fn reset_link(&self, id: &str) -> Result<(), String> {
        self.links(id)?.iter().for_each(LinkProxy::reset);
        Ok(())
    }

    /// Restores the edge's locator links: what a blackhole held is delivered.
    pub fn heal_link(&self, id: &str) -> Result<(), String> {
        self.links(id)?.iter().for_each(LinkProxy::heal);
        Ok(())
    }

    /// SIGTERM: the edge drains and exits by itself.
    pub fn terminate_edge(&mut self, id: &str) -> Result<(), String> {
        let i = self.edge_index(id)?;
        if let Some(child) = &self.edges[i].child {
            signal(child, "TERM")?;
        }
        Ok(())
    }

    /// Waits for a terminated edge to exit (then SIGKILL); returns whether it exited by
    /// itself.
    pub async fn wait_edge_exit(&mut self, id: &str, within: Duration) -> Result<bool, String> {
        let i = self.edge_index(id)?;
        let deadline = Instant::now() + within;
        loop {
            let Some(child) = self.edges[i].child.as_mut() else {
                return Ok(true);
            };
            if let Ok(Some(_)) = child.try_wait() {
                self.edges[i].child = None;
                return Ok(true);
            }
            if Instant::now() > deadline {
                self.kill_edge(id)?;
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a killed edge again: same id, port and spool (its unsent entries are
    /// relayed), and waits until it is active.
    pub async fn restart_edge(&mut self, id: &str) -> Result<(), String> {
        let i = self.edge_index(id)?;
        if self.edges[i].child.is_some() {
            return Ok(());
        }
        self.spawn_edge(i)?;
        self.wait_edges_active(&[id.to_string()], Duration::from_secs(30))
            .await
    }

    /// A new edge in `region` (a replacement), started and active; returns its id.
    pub async fn add_edge(&mut self, region: &str) -> Result<String, String> {
        self.replacements += 1;
        let id = format!("{region}-r{}", self.replacements);
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let links = self.link_proxies()?;
        self.edges.push(EdgeProcess {
            spool_dir: self.options.work_dir.join(format!("spool-{id}")),
            id: id.clone(),
            region: region.to_string(),
            port,
            child: None,
            stopped: false,
            links,
        });
        let i = self.edges.len() - 1;
        self.spawn_edge(i)?;
        self.wait_edges_active(std::slice::from_ref(&id), Duration::from_secs(30))
            .await?;
        Ok(id)
    }

    /// Stops locator replica `i` with SIGTERM (SIGKILL after 15 s).
    pub async fn stop_locator(&mut self, i: usize) -> Result<(), String> {
        let Some(mut child) = self.locators.get_mut(i).and_then(|l| l.child.take()) else {
            return Ok(());
        };
        if let Err(error) = signal(&child, "TERM") {
            // It left the topology: it must not outlive it.
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts locator replica `i` again on the same port and database.
    pub async fn start_locator(&mut self, i: usize) -> Result<(), String> {
        self.spawn_locator(i)?;
        self.wait_locator_healthy(i, Duration::from_secs(30)).await
    }

    /// Edges of a region that run now.
    pub fn running_edges(&self, region: &str) -> Vec<String> {
        self.edges
            .iter()
            .filter(|e| e.region == region && e.child.is_some())
            .map(|e| e.id.clone())
            .collect()
    }

    /// `(id, region, url)` of every edge that runs.
    pub fn edge_urls(&self) -> Vec<(String, String, String)> {
        self.edges
            .iter()
            .filter(|e| e.child.is_some())
            .map(|e| {
                (
                    e.id.clone(),
                    e.region.clone(),
                    format!("http://127.0.0.1:{}", e.port),
                )
            })
            .collect()
    }

    /// Every edge's id and region (also the ones not running).
    pub fn all_edges(&self) -> Vec<(String, String)> {
        self.edges
            .iter()
            .map(|e| (e.id.clone(), e.region.clone()))
            .collect()
    }

    /// Stops everything (resumes stopped edges first so they can exit).
    pub fn shutdown(&mut self) {
        for edge in &mut self.edges {
            if let Some(mut child) = edge.child.take() {
                if edge.stopped {
                    let _ = signal(&child, "CONT");
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for locator in &mut self.locators {
            if let Some(mut child) = locator.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The admin status (`GET /v1/admin/status`) of the locator at `base`, when it answers.
pub async fn admin_status(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> Option<serde_json::Value> {
    http.get(format!("{base}/v1/admin/status"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Every edge of an admin status, with its region's id.
pub fn status_edges(
    status: &serde_json::Value,
) -> impl Iterator<Item = (&str, &serde_json::Value)> {
    status["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|region| {
            let id = region["id"].as_str().unwrap_or_default();
            region["edges"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |edge| (id, edge))
        })
}

#[cfg(test)]
mod tests {
    use super::StateWatch;

    fn samples(list: &[(u64, &str)]) -> Vec<(u64, String)> {
        list.iter().map(|(t, s)| (*t, s.to_string())).collect()
    }

    #[test]
    fn an_edge_is_detected_when_the_last_locator_has_it_out() {
        let holder = samples(&[(0, "active"), (1_000, "suspect"), (3_000, "active")]);
        let mirror = samples(&[(50, "active"), (1_100, "suspect"), (3_100, "active")]);
        let w = StateWatch::of(&[holder.clone(), mirror]);
        assert_eq!(w.first_out_ms, vec![Some(1_000), Some(1_100)]);
        assert_eq!(w.detected_ms, Some(1_100));
        assert_eq!(
            w.out_ms, 2_100,
            "out from the first locator's 1 s to the last's 3.1 s"
        );
        assert_eq!(w.states_seen, vec!["suspect".to_string()]);
        assert_eq!(w.polls, 6);
        // A locator that never had it out: not detected, though another did.
        let never = samples(&[(0, "active"), (2_000, "active")]);
        let w = StateWatch::of(&[holder, never]);
        assert_eq!(w.detected_ms, None);
        assert_eq!(w.out_ms, 2_000);
        // Still out when the watch ended: counted up to the last sample.
        let w = StateWatch::of(&[samples(&[
            (0, "active"),
            (500, "link-lost"),
            (900, "failed"),
        ])]);
        assert_eq!(w.out_ms, 400);
        assert_eq!(
            w.states_seen,
            vec!["link-lost".to_string(), "failed".to_string()]
        );
    }
}
