//! The `loadtest` binary: runs a scenario against a local topology it starts (or a running
//! one by `--url`), prints a table, writes the JSON and HTML reports, and exits non-zero
//! when an invariant fails. `loadtest addresses` prints client addresses drawn from a
//! GeoIP database.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use locus_loadtest::client::ClientOptions;
use locus_loadtest::run::RunOptions;
use locus_loadtest::scenario::PhaseOptions;

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load and fault-injection driver for Locus",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print client addresses drawn from a GeoIP database's networks, one per line.
    Addresses {
        /// A MaxMind DB file (e.g. ../shared/geoip/dbip-country.mmdb).
        #[arg(long)]
        geoip: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Share of IPv6 addresses.
        #[arg(long, default_value_t = 0.2)]
        v6_share: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Simulate a fleet of edges (real link protocol, real websockets) against locators
    /// started here; writes `fleet-<N>.json` and fails when a goal is missed.
    Fleet(FleetArgs),
}

/// `loadtest fleet`.
#[derive(Debug, Args)]
struct FleetArgs {
    /// Simulated edges (one of them is the probe edge of region `probe`).
    #[arg(long, default_value_t = 1_000)]
    edges: usize,
    /// How often each edge reports (the locators' `edges.report_interval`), e.g. 1s, 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    report_interval: Duration,
    /// The locators' `edges.heartbeat_interval` (how often each edge beats), e.g. 500ms;
    /// unset: the locator's default.
    #[arg(long, value_parser = parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// `postgres://…`: the locators share this database (needed for --replicas > 1).
    #[arg(long)]
    database: Option<String>,
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// How long the fleet runs before measuring, once every edge is registered.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    /// Length of the edge-only window and of the client window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    window: Duration,
    /// Client requests per second in the client window (70% session creates and joins,
    /// 30% locates).
    #[arg(long, default_value_t = 200)]
    request_rate: u32,
    /// Each edge relays a spool entry this often.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    spool_every: Duration,
    /// Report-to-snapshot samples (flips of the probe edge).
    #[arg(long, default_value_t = 100)]
    probes: usize,
    /// Folder of the `locator` binary (default: this binary's folder).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where `fleet-<N>.json` goes.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
    /// Folder for the locators' logs and SQLite file (default: a temporary folder, kept
    /// when a goal is missed).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    #[arg(long)]
    keep: bool,
}

/// `1s`, `500ms`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, ""), |i| text.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a duration such as 1s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: a duration such as 1s, 500ms or 2m")),
    };
    if !(seconds > 0.0 && seconds < 86_400.0) {
        return Err(format!("{text:?}: more than 0 and less than a day"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Run a scenario (the default command).
#[derive(Debug, Args)]
struct RunArgs {
    /// steady, burst, edge-crash, edge-hang, edge-stall, slow-link, link-partition,
    /// link-flap, region-outage, locator-restart, rolling-drain, or mixed (all of them,
    /// one phase each); several separated by commas run one after the other.
    #[arg(long, default_value = "steady")]
    scenario: String,
    /// Locator URL(s) of a running topology (comma-separated); without it a local
    /// topology is started. Set LOCATOR_ADMIN_TOKEN to check its audit log.
    #[arg(long, value_delimiter = ',')]
    url: Vec<String>,
    /// Folder of the `locator` and `edge` binaries (default: this binary's folder).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The regions file of the local topology.
    #[arg(long, default_value = "regions.yaml")]
    config: PathBuf,
    /// GeoIP database: client addresses are drawn from its networks and the local
    /// locator uses it (default: the built-in demo networks and the file's setting).
    #[arg(long)]
    geoip: Option<PathBuf>,
    /// postgres://… for the local locator(s) (default: a SQLite file in the work folder).
    #[arg(long)]
    database: Option<String>,
    /// Locator replicas of the local topology (several need --database postgres://…).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Edge processes per region.
    #[arg(long, default_value_t = 2)]
    edges_per_region: usize,
    /// Only these regions get edges (comma-separated ids; default: every region).
    #[arg(long, value_delimiter = ',')]
    regions: Option<Vec<String>>,
    /// `--capacity` of each edge. Small, so that sessions are the bottleneck of the
    /// locator's load score: with 1,000, one session is 0.1% and the event-loop lag of 16
    /// edges sharing the machine's cores decides where a burst goes.
    #[arg(long, default_value_t = 100)]
    capacity: u32,
    /// `--linger` of each edge (ms).
    #[arg(long, default_value_t = 2000)]
    edge_linger_ms: u64,
    /// `--drain-deadline` of each edge (ms).
    #[arg(long, default_value_t = 8000)]
    edge_drain_deadline_ms: u64,
    /// Concurrent simulated clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Participants per session: MIN-MAX.
    #[arg(long, default_value = "2-3")]
    participants: String,
    /// Message rounds per session.
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    /// Pause between rounds (ms).
    #[arg(long, default_value_t = 250)]
    think_ms: u64,
    /// Share of sessions that are keyed rooms.
    #[arg(long, default_value_t = 0.4)]
    room_share: f64,
    /// Share of sessions in which a participant disconnects and re-joins.
    #[arg(long, default_value_t = 0.2)]
    rejoin_share: f64,
    /// How long a disrupted session may take to come back (ms).
    #[arg(long, default_value_t = 20_000)]
    rejoin_bound_ms: u64,
    /// How long a participant waits for a frame it is due (ms).
    #[arg(long, default_value_t = 5_000)]
    read_timeout_ms: u64,
    /// Length of each phase (s); `mixed` has seven.
    #[arg(long, default_value_t = 20)]
    phase_secs: u64,
    /// Most locator requests in the run.
    #[arg(long, default_value_t = 200_000)]
    max_requests: u64,
    /// Session creates in the burst, and how many at once.
    #[arg(long, default_value_t = 600)]
    burst: usize,
    #[arg(long, default_value_t = 32)]
    burst_concurrency: usize,
    /// Largest max/mean sessions per edge after the burst.
    #[arg(long, default_value_t = 1.25)]
    max_balance: f64,
    /// Bound (ms) within which answers must avoid a failed edge (default: from the
    /// regions file's edge timing).
    #[arg(long)]
    avoid_bound_ms: Option<u64>,
    /// Client addresses drawn.
    #[arg(long, default_value_t = 10_000)]
    addresses: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the JSON and HTML reports go.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
    /// Folder for logs, spools and the SQLite file (default: a temporary folder, kept
    /// when an invariant fails).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work folder.
    #[arg(long)]
    keep: bool,
}

fn parse_range(text: &str) -> Result<(usize, usize), String> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let lo: usize = lo
        .trim()
        .parse()
        .map_err(|_| format!("--participants {text}: use MIN-MAX, e.g. 2-3"))?;
    let hi: usize = hi
        .trim()
        .parse()
        .map_err(|_| format!("--participants {text}: use MIN-MAX, e.g. 2-3"))?;
    if lo < 2 || hi < lo {
        return Err(format!("--participants {text}: at least 2, and MIN <= MAX"));
    }
    Ok((lo, hi))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Addresses {
            geoip,
            count,
            v6_share,
            seed,
        }) => match locus_loadtest::addresses::sample_addresses(&geoip, count, v6_share, seed) {
            Ok(addresses) => {
                let mut out = std::io::stdout().lock();
                for ip in addresses {
                    if writeln!(out, "{ip}").is_err() {
                        return ExitCode::FAILURE;
                    }
                }
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("loadtest: {message}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Fleet(args)) => fleet(args),
        None => run(cli.run),
    }
}

/// Runs `job` to its end on a fresh runtime. Ctrl-C drops it, and with it the processes it
/// started (their drops stop them). `Err`: the exit code, the reason printed after `name`.
fn run_to_end<T>(
    name: &str,
    job: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("{name}: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })?;
    runtime
        .block_on(async {
            tokio::select! {
                outcome = job => outcome,
                _ = tokio::signal::ctrl_c() => Err("interrupted: the processes it started were stopped".to_string()),
            }
        })
        .map_err(|message| {
            eprintln!("{name}: {message}");
            ExitCode::FAILURE
        })
}

fn bin_dir_or_default(bin_dir: Option<PathBuf>) -> PathBuf {
    bin_dir.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("target/release"))
    })
}

fn fleet(args: FleetArgs) -> ExitCode {
    if args.replicas > 1
        && !args
            .database
            .as_deref()
            .is_some_and(|d| d.starts_with("postgres"))
    {
        eprintln!(
            "loadtest fleet: --replicas {} needs --database postgres://… (replicas share one database)",
            args.replicas
        );
        return ExitCode::from(2);
    }
    let options = locus_loadtest::fleet::FleetOptions {
        edges: args.edges,
        report_interval: args.report_interval,
        heartbeat_interval: args.heartbeat_interval,
        database: args.database,
        replicas: args.replicas.max(1),
        bin_dir: bin_dir_or_default(args.bin_dir),
        work_dir: args.work_dir,
        keep: args.keep,
        warmup: args.warmup,
        window: args.window,
        request_rate: args.request_rate,
        spool_every: args.spool_every,
        probes: args.probes.max(2),
        goals: locus_loadtest::fleet::Goals::default(),
    };
    let (report, kept) = match run_to_end("loadtest fleet", locus_loadtest::fleet::run(options)) {
        Ok(done) => done,
        Err(code) => return code,
    };
    print!("{}", locus_loadtest::fleet::terminal(&report));
    match locus_loadtest::fleet::write_report(&report, &args.out) {
        Ok(path) => println!("\nreport: {}", path.display()),
        Err(message) => {
            eprintln!("loadtest fleet: {message}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(dir) = kept {
        println!("logs and database: {}", dir.display());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        let failed: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        eprintln!("loadtest fleet: goals missed: {}", failed.join("; "));
        ExitCode::from(1)
    }
}

fn run(args: RunArgs) -> ExitCode {
    let participants = match parse_range(&args.participants) {
        Ok(range) => range,
        Err(message) => {
            eprintln!("loadtest: {message}");
            return ExitCode::from(2);
        }
    };
    if args.replicas > 1
        && !args
            .database
            .as_deref()
            .is_some_and(|d| d.starts_with("postgres"))
    {
        eprintln!(
            "loadtest: --replicas {} needs --database postgres://… (replicas share one database)",
            args.replicas
        );
        return ExitCode::from(2);
    }
    let bin_dir = bin_dir_or_default(args.bin_dir.clone());
    let options = RunOptions {
        scenario: args.scenario.clone(),
        url: args.url.clone(),
        admin_token: std::env::var("LOCATOR_ADMIN_TOKEN").ok(),
        bin_dir,
        config: args.config.clone(),
        geoip: args.geoip.clone(),
        database: args.database.clone(),
        replicas: args.replicas.max(1),
        edges_per_region: args.edges_per_region.max(1),
        regions: args.regions.clone(),
        capacity: args.capacity,
        edge_linger: Duration::from_millis(args.edge_linger_ms),
        edge_drain_deadline: Duration::from_millis(args.edge_drain_deadline_ms),
        clients: ClientOptions {
            clients: args.clients.max(1),
            participants,
            rounds: args.rounds.max(1),
            think: Duration::from_millis(args.think_ms),
            room_share: args.room_share,
            rejoin_share: args.rejoin_share,
            rejoin_bound: Duration::from_millis(args.rejoin_bound_ms),
            max_requests: args.max_requests,
            read_timeout: Duration::from_millis(args.read_timeout_ms),
        },
        phase: PhaseOptions {
            duration: Duration::from_secs(args.phase_secs.max(1)),
            burst: args.burst,
            burst_concurrency: args.burst_concurrency,
            seed: args.seed,
            bound: args.avoid_bound_ms.map(Duration::from_millis),
        },
        addresses: args.addresses.max(1),
        seed: args.seed,
        balance_limit: args.max_balance,
        work_dir: args.work_dir.clone(),
        keep: args.keep,
    };
    let (report, kept) = match run_to_end("loadtest", locus_loadtest::run::run(options)) {
        Ok(done) => done,
        Err(code) => return code,
    };
    print!("{}", locus_loadtest::report::terminal(&report));
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("loadtest: cannot create {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    let base = args
        .out
        .join(format!("report-{}", report.scenario.replace(',', "+")));
    let json = base.with_extension("json");
    let html = base.with_extension("html");
    let written = serde_json::to_vec_pretty(&report)
        .map_err(|e| e.to_string())
        .and_then(|bytes| std::fs::write(&json, bytes).map_err(|e| e.to_string()))
        .and_then(|()| {
            std::fs::write(&html, locus_loadtest::html::render(&report)).map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        eprintln!("loadtest: cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    println!("\nreports: {} and {}", json.display(), html.display());
    if let Some(dir) = kept {
        println!("logs, spools and database: {}", dir.display());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        let failed: Vec<&str> = report
            .invariants
            .iter()
            .filter(|i| !i.ok)
            .map(|i| i.name.as_str())
            .collect();
        eprintln!("loadtest: invariants failed: {}", failed.join("; "));
        ExitCode::from(1)
    }
}
