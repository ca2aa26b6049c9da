//! One run: addresses, the topology (started here, or a running one by URL), the client
//! tasks, the phases, then the audit read back and the report.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use locus_geo::config::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::client::{ClientOptions, Clients};
use crate::record::{EdgeSamples, Recorder};
use crate::report::{self, AuditRows, Report, Target};
use crate::scenario::{self, PhaseOptions, Runner};
use crate::topology::{Topology, TopologyOptions, admin_status, status_edges};

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: String,
    /// Locator URLs of a running topology (no local topology is started).
    pub url: Vec<String>,
    /// Admin token of a running topology (its audit log), from `LOCATOR_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    pub bin_dir: PathBuf,
    pub config: PathBuf,
    pub geoip: Option<PathBuf>,
    pub database: Option<String>,
    pub replicas: usize,
    pub edges_per_region: usize,
    pub regions: Option<Vec<String>>,
    pub capacity: u32,
    pub edge_linger: Duration,
    pub edge_drain_deadline: Duration,
    pub clients: ClientOptions,
    pub phase: PhaseOptions,
    pub addresses: usize,
    pub seed: u64,
    pub balance_limit: f64,
    pub work_dir: Option<PathBuf>,
    pub keep: bool,
}

/// Client addresses: from the GeoIP file, or from the built-in demo networks.
pub fn addresses(
    geoip: Option<&std::path::Path>,
    count: usize,
    seed: u64,
) -> Result<(Vec<IpAddr>, String), String> {
    match geoip {
        Some(path) => {
            let list = crate::addresses::sample_addresses(path, count, 0.2, seed)?;
            Ok((list, format!("networks of {}", path.display())))
        }
        None => {
            let mut rng = StdRng::seed_from_u64(seed);
            let networks: Vec<ipnet::IpNet> = locus_geo::demo::DEMO_NETWORKS
                .iter()
                .filter_map(|(net, _)| net.parse().ok())
                .collect();
            let list = (0..count)
                .map(|_| {
                    let net = networks[rng.random_range(0..networks.len())];
                    crate::addresses::sample_in(net.network(), net.prefix_len(), &mut rng)
                })
                .collect();
            Ok((list, "the built-in demo networks".into()))
        }
    }
}

/// Runs the scenario and builds the report (not written yet).
pub async fn run(options: RunOptions) -> Result<(Report, Option<PathBuf>), String> {
    let steps = scenario::phases(&options.scenario).ok_or_else(|| {
        format!(
            "--scenario {}: unknown; one of {}",
            options.scenario,
            scenario::SCENARIOS.join(", ")
        )
    })?;
    let local = options.url.is_empty();
    if !local && let Some(step) = steps.iter().find(|s| s.needs_topology()) {
        return Err(format!(
            "--scenario {}: the {} phase signals processes, so it needs the local topology (drop --url)",
            options.scenario,
            step.name()
        ));
    }
    if local {
        let config = Config::load(&options.config).map_err(|e| e.to_string())?;
        if !config.is_trusted_proxy(IpAddr::from([127, 0, 0, 1])) {
            return Err(format!(
                "{}: trusted_proxies does not include 127.0.0.1, so the locator would ignore the clients' X-Forwarded-For; add 127.0.0.0/8",
                options.config.display()
            ));
        }
    }
    let (addresses, address_source) =
        addresses(options.geoip.as_deref(), options.addresses, options.seed)?;
    if addresses.is_empty() {
        return Err("no client address could be drawn".into());
    }

    let started_unix_ms = crate::now_ms();
    let run_id = format!("lt{}", started_unix_ms % 100_000_000);
    let work_dir = options.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("locus-loadtest-{}-{run_id}", std::process::id()))
    });
    let mut topology = if local {
        Some(
            Topology::start(TopologyOptions {
                bin_dir: options.bin_dir.clone(),
                config_path: options.config.clone(),
                geoip: options.geoip.as_ref().map(|p| p.display().to_string()),
                database: options.database.clone(),
                replicas: options.replicas,
                edges_per_region: options.edges_per_region,
                regions: options.regions.clone(),
                capacity: options.capacity,
                edge_linger: options.edge_linger,
                edge_drain_deadline: options.edge_drain_deadline,
                work_dir: work_dir.clone(),
            })
            .await?,
        )
    } else {
        None
    };
    let locators = match &topology {
        Some(t) => t.locator_urls(),
        None => options.url.clone(),
    };
    let admin_token = match &topology {
        Some(t) => Some(t.admin_token.clone()),
        None => options.admin_token.clone(),
    };

    let start = std::time::Instant::now();
    let recorder = Arc::new(Recorder::new(start));
    let clients = Clients::new(
        locators.clone(),
        addresses.clone(),
        recorder.clone(),
        options.clients.clone(),
        run_id,
    )?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..options.clients.clients.max(1) {
        tasks.spawn(
            clients
                .clone()
                .run_client(i, options.seed.wrapping_mul(31).wrapping_add(i as u64)),
        );
    }
    let samples: Arc<std::sync::Mutex<EdgeSamples>> = Arc::default();
    let sampler = admin_token.clone().map(|token| {
        tokio::spawn(sample_edges(
            locators.clone(),
            token,
            recorder.clone(),
            samples.clone(),
        ))
    });
    let current = Arc::new(std::sync::Mutex::new("start"));
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(progress_line(recorder.clone(), current.clone())));

    let mut runner = Runner {
        topology: topology.as_mut(),
        clients: clients.clone(),
        options: options.phase.clone(),
        faults: Vec::new(),
        phases: Vec::new(),
        notes: Vec::new(),
        burst_edges: Vec::new(),
        current: current.clone(),
    };
    let outcome = runner.run(&steps).await;
    let (faults, phases, mut notes, burst_edges) = (
        runner.faults,
        runner.phases,
        runner.notes,
        runner.burst_edges,
    );
    if let Ok(mut c) = current.lock() {
        *c = "finishing";
    }
    clients.stop();
    let wait = options.clients.rejoin_bound + Duration::from_secs(15);
    let drained =
        tokio::time::timeout(wait, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        notes.push(format!(
            "{} client tasks did not finish within {wait:?} of the end: aborted",
            tasks.len()
        ));
        tasks.abort_all();
    }
    let duration_ms = recorder.now_ms();
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let edge_sessions = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    if let Err(message) = outcome {
        if let Some(p) = progress {
            p.abort();
        }
        return Err(format!(
            "{message} (logs and spools in {})",
            work_dir.display()
        ));
    }
    if let Ok(mut c) = current.lock() {
        *c = "audit";
    }
    let audit = match &admin_token {
        Some(token) => Some(
            read_audit(
                &locators,
                token,
                topology.as_ref(),
                started_unix_ms.saturating_sub(2_000),
            )
            .await,
        ),
        None => None,
    };
    if let Some(p) = progress {
        p.abort();
        eprint!("\r\x1b[2K");
    }
    let edges = topology
        .as_ref()
        .map(Topology::all_edges)
        .unwrap_or_default();
    let requests = recorder.requests.load(Ordering::Relaxed);
    let records = recorder.take();
    let report = report::build(report::Inputs {
        scenario: options.scenario.clone(),
        started_unix_ms,
        duration_ms,
        target: Target {
            locators,
            edges,
            database: match (&options.database, local) {
                (_, false) => "running topology".into(),
                (Some(url), true) => redact(url),
                (None, true) => "SQLite (a file in the work folder)".into(),
            },
            geoip: options
                .geoip
                .as_ref()
                .map_or_else(|| "the file's setting".into(), |p| p.display().to_string()),
            addresses: addresses.len(),
            address_source,
            clients: options.clients.clients,
        },
        phases,
        faults,
        records,
        requests,
        audit,
        balance_limit: options.balance_limit,
        burst_ran: steps.contains(&scenario::Step::Burst),
        burst_edges,
        edge_sessions,
        disruption_slack_ms: (options.clients.read_timeout + Duration::from_secs(5)).as_millis()
            as u64,
        notes,
    });
    let keep_dir = if let Some(mut t) = topology {
        t.shutdown();
        // A folder the operator named is theirs: never removed.
        if options.keep || !report.ok || options.work_dir.is_some() {
            Some(work_dir)
        } else {
            let _ = std::fs::remove_dir_all(&work_dir);
            None
        }
    } else {
        None
    };
    Ok((report, keep_dir))
}

/// A Postgres URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Waits (bounded) for every running edge's spool to be acknowledged, then reads the
/// edge rows of the audit log written since `since_unix_ms`.
async fn read_audit(
    locators: &[String],
    token: &str,
    topology: Option<&Topology>,
    since_unix_ms: i64,
) -> AuditRows {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            return AuditRows {
                note: Some(format!("not checked: HTTP client: {e}")),
                ..AuditRows::default()
            };
        }
    };
    let mut unacknowledged = std::collections::BTreeMap::new();
    // The edges to wait for: the topology's, or those the locator lists as serving.
    let (edges, report_interval) = match topology {
        Some(topology) => (
            topology
                .edge_urls()
                .into_iter()
                .map(|(id, _, url)| (id, url))
                .collect(),
            topology.config.edges.report_interval,
        ),
        None => (
            listed_edges(&http, locators, token).await,
            Duration::from_secs(2),
        ),
    };
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            unacknowledged.clear();
            for (id, url) in &edges {
                let len = match http.get(format!("{url}/v1/status")).send().await {
                    Ok(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["spool"]["len"].as_u64())
                        .unwrap_or(u64::MAX),
                    Err(_) => u64::MAX,
                };
                // Metrics samples keep arriving: a few entries in flight are normal.
                if len > 2 {
                    unacknowledged.insert(id.clone(), len);
                }
            }
            if unacknowledged.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The last entries of a spool may be a relay away: let one report interval pass.
        tokio::time::sleep(report_interval).await;
    }
    let mut rows = Vec::new();
    let mut edge_failures = Vec::new();
    let mut before: Option<i64> = None;
    let mut errors = Vec::new();
    'pages: for _ in 0..10_000 {
        let mut page = None;
        for base in locators {
            let mut url = format!("{base}/v1/admin/audit?since={since_unix_ms}&limit=1000");
            if let Some(b) = before {
                url.push_str(&format!("&before={b}"));
            }
            match http.get(&url).bearer_auth(token).send().await {
                Ok(r) if r.status().is_success() => {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        page = Some(v);
                        break;
                    }
                }
                Ok(r) => errors.push(format!("{url}: HTTP {}", r.status())),
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        let Some(page) = page else {
            return AuditRows {
                note: Some(format!(
                    "not checked: the audit log could not be read ({})",
                    errors.join("; ")
                )),
                ..AuditRows::default()
            };
        };
        for entry in page["entries"].as_array().into_iter().flatten() {
            if entry["kind"] == "edge_failed" {
                edge_failures.push((
                    entry["edge_id"].as_str().unwrap_or_default().to_string(),
                    entry["at_ms"].as_i64().unwrap_or_default(),
                ));
            }
            if entry["source"] != "edge" {
                continue;
            }
            rows.push((
                entry["kind"].as_str().unwrap_or_default().to_string(),
                entry["session_id"].as_str().unwrap_or_default().to_string(),
                entry["participant"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
        match page["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break 'pages,
        }
    }
    AuditRows {
        rows,
        edge_failures,
        unacknowledged,
        note: None,
    }
}

/// One status line on stderr (a terminal only), redrawn four times a second.
async fn progress_line(recorder: Arc<Recorder>, current: Arc<std::sync::Mutex<&'static str>>) {
    use std::io::Write;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let phase = current.lock().map(|c| *c).unwrap_or("?");
        let secs = recorder.start().elapsed().as_secs_f64();
        let requests = recorder.requests.load(Ordering::Relaxed);
        let line = format!(
            "\r\x1b[2K[{phase}] {secs:6.1} s  requests {requests} ({:.0}/s)  answers ok {}  errors {}",
            requests as f64 / secs.max(0.001),
            recorder.ok.load(Ordering::Relaxed),
            recorder.failed.load(Ordering::Relaxed),
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }
}

async fn sample_edges(
    locators: Vec<String>,
    token: String,
    recorder: Arc<Recorder>,
    samples: Arc<std::sync::Mutex<EdgeSamples>>,
) {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_millis(900))
        .build()
    else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let second = recorder.now_ms() / 1000;
        for base in &locators {
            let Some(status) = admin_status(&http, base, &token).await else {
                continue;
            };
            let row: Vec<_> = status_edges(&status)
                .filter(|(_, e)| e["state"] != "failed" && e["retired"] != true)
                .filter_map(|(region, e)| {
                    Some((
                        e["id"].as_str()?.to_string(),
                        region.to_string(),
                        e["load"]["sessions"].as_u64().unwrap_or(0),
                    ))
                })
                .collect();
            if let Ok(mut samples) = samples.lock() {
                samples.push((second, row));
            }
            break;
        }
    }
}

/// `(id, url)` of the edges a locator lists as serving (not failed, not retired).
async fn listed_edges(
    http: &reqwest::Client,
    locators: &[String],
    token: &str,
) -> Vec<(String, String)> {
    for base in locators {
        let Some(status) = admin_status(http, base, token).await else {
            continue;
        };
        return status_edges(&status)
            .filter(|(_, e)| e["state"] != "failed" && e["retired"] != true)
            .filter_map(|(_, e)| {
                Some((
                    e["id"].as_str()?.to_string(),
                    e["url"].as_str()?.trim_end_matches('/').to_string(),
                ))
            })
            .collect();
    }
    Vec::new()
}
