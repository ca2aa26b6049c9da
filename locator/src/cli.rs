//! The `locator` command line: `check-config` and `resolve` (the external contract in
//! the brief). Output for machines goes to stdout (one JSON line per answer); messages
//! for people go to stderr.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use locus_geo::config::GeoIpSource;
use locus_geo::{Config, DatabaseInfo, GeoResolver};

/// Region-aware geo-routing locator.
#[derive(Debug, Parser)]
#[command(name = "locator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the locator: client API, edge link, admin API.
    ///
    /// Secrets come from the environment: LOCATOR_EDGE_TOKEN (required; shared with the
    /// edges), LOCATOR_ADMIN_TOKEN (enables the admin API), and each TURN pool's secret
    /// variable.
    Serve {
        /// The regions file (re-read on SIGHUP).
        #[arg(long, default_value = "regions.yaml")]
        config: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: String,
        /// Database: a SQLite file path (created if absent), `sqlite://PATH`, or
        /// `postgres://USER@HOST:PORT/DB` (several locators on one database).
        #[arg(long, default_value = "data/locator.sqlite")]
        database: String,
        /// GeoIP database to use instead of the file's `geoip.database` (`builtin-demo`
        /// for the built-in demo database).
        #[arg(long)]
        geoip: Option<String>,
        /// Postgres: size of the connection pool of this locator (keep
        /// `locators × this` below the server's max_connections).
        #[arg(long, default_value_t = 10)]
        db_max_connections: u32,
    },
    /// Validate a regions file (and open its GeoIP database); exit non-zero when invalid.
    CheckConfig {
        /// The regions file.
        #[arg(long, default_value = "regions.yaml")]
        config: PathBuf,
        /// GeoIP database to use instead of the file's `geoip.database` (`builtin-demo`
        /// for the built-in demo database).
        #[arg(long)]
        geoip: Option<String>,
    },
    /// Print where each address goes: one JSON line per address.
    Resolve {
        /// The regions file.
        #[arg(long, default_value = "regions.yaml")]
        config: PathBuf,
        /// GeoIP database to use instead of the file's `geoip.database` (`builtin-demo`
        /// for the built-in demo database).
        #[arg(long)]
        geoip: Option<String>,
        /// Client addresses (IPv4 or IPv6).
        #[arg(required = true)]
        ips: Vec<String>,
    },
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A failed log write (stderr closed) must not panic the task that logged.
        .log_internal_errors(false)
        .init();
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve {
            config,
            listen,
            database,
            geoip,
            db_max_connections,
        } => serve(
            &config,
            &listen,
            &database,
            geoip.as_deref(),
            db_max_connections,
        ),
        Command::CheckConfig { config, geoip } => check_config(&config, geoip.as_deref()),
        Command::Resolve { config, geoip, ips } => resolve(&config, geoip.as_deref(), &ips),
    }
}

/// Loads the config and applies a `--geoip` override (relative to the working directory).
fn load_config(path: &Path, geoip: Option<&str>) -> Result<Config, String> {
    let mut config = Config::load(path).map_err(|e| e.to_string())?;
    if let Some(value) = geoip {
        config.geoip.database = GeoIpSource::from_setting(value, Path::new("."));
    }
    Ok(config)
}

fn open_resolver(config: &Config) -> Result<GeoResolver, String> {
    if config.geoip.database == GeoIpSource::Off {
        tracing::warn!(
            "GeoIP is OFF: no geoip.database in {}; every client goes to the default region \"{}\"",
            config.source.display(),
            config.default_region().id
        );
    }
    let resolver = GeoResolver::open(config).map_err(|e| e.to_string())?;
    if let Some(info) = resolver.database_info()
        && info.database_type == locus_geo::demo::DEMO_DATABASE_TYPE
    {
        tracing::warn!(
            "using the built-in DEMO GeoIP database: a few well-known networks, not real geolocation (see README to use GeoLite2 or DB-IP Lite)"
        );
    }
    Ok(resolver)
}

fn describe_database(info: &DatabaseInfo) -> String {
    let built = info
        .build_time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!(
        "{} ({}, {} schema, {} networks, built at unix time {built})",
        info.path.display(),
        info.database_type,
        info.schema.as_str(),
        info.networks
    )
}

fn check_config(path: &Path, geoip: Option<&str>) -> ExitCode {
    let config = match load_config(path, geoip) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let resolver = match open_resolver(&config) {
        Ok(resolver) => resolver,
        Err(message) => {
            eprintln!("{}: geoip.database: {message}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let ids: Vec<&str> = config.regions.iter().map(|r| r.id.as_str()).collect();
    println!(
        "{} is valid: {} regions ({}), default region {}",
        path.display(),
        ids.len(),
        ids.join(", "),
        config.default_region().id
    );
    match resolver.database_info() {
        Some(info) => println!("GeoIP database: {}", describe_database(&info)),
        None => println!("GeoIP: off (every client goes to the default region)"),
    }
    // Secrets are read at serve time; say now which are missing from this environment.
    for region in &config.regions {
        if let Some(var) = &region.turn.secret_env
            && std::env::var_os(var).is_none()
        {
            println!(
                "note: {var} (TURN secret of region {}) is not set in this environment; without it the region's TURN pool is unusable and clients get its fallback's pool",
                region.id
            );
        }
    }
    ExitCode::SUCCESS
}

fn resolve(path: &Path, geoip: Option<&str>, ips: &[String]) -> ExitCode {
    let config = match load_config(path, geoip) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let resolver = match open_resolver(&config) {
        Ok(resolver) => resolver,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let mut failures = 0;
    for raw in ips {
        let line = match raw.trim().parse::<IpAddr>() {
            Ok(ip) => serde_json::to_string(&resolver.resolve(ip).view(&config)),
            Err(_) => {
                failures += 1;
                serde_json::to_string(&serde_json::json!({
                    "ip": raw,
                    "error": format!(
                        "\"{raw}\" is not an IP address: give an IPv4 (203.0.113.7) or IPv6 (2001:db8::7) address"
                    ),
                }))
            }
        };
        let line = line.unwrap_or_else(|e| format!("{{\"error\":\"cannot print answer: {e}\"}}"));
        if writeln!(out, "{line}").is_err() {
            // stdout closed (e.g. piped into `head`): nothing more to say.
            return ExitCode::FAILURE;
        }
    }
    if let Some(info) = resolver.database_info()
        && let Some(credit) = &info.attribution
    {
        eprintln!("{} <{}>", credit.text, credit.url);
    }
    if failures > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

fn serve(
    path: &Path,
    listen: &str,
    database: &str,
    geoip: Option<&str>,
    db_max_connections: u32,
) -> ExitCode {
    let secrets = match crate::server::Secrets::from_env() {
        Ok(secrets) => secrets,
        Err(message) => {
            eprintln!("locator: {message}");
            return ExitCode::FAILURE;
        }
    };
    let config = match load_config(path, geoip) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let resolver = match open_resolver(&config) {
        Ok(resolver) => resolver,
        Err(message) => {
            eprintln!("{}: geoip.database: {message}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("locator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = crate::server::shutdown_signal();
        let options = crate::store::StoreOptions {
            max_connections: db_max_connections.max(1),
            ..crate::store::StoreOptions::default()
        };
        let store = match crate::store::Store::open_with(database, options).await {
            Ok(store) => store,
            Err(e) => {
                eprintln!("locator: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("locator: cannot listen on {listen}: {e} (use --listen HOST:PORT)");
                return ExitCode::FAILURE;
            }
        };
        let address = listener
            .local_addr()
            .map_or_else(|_| listen.to_string(), |a| a.to_string());
        if let Some(info) = resolver.database_info()
            && let Some(credit) = info.attribution {
                tracing::info!("GeoIP: {} <{}>", credit.text, credit.url);
            }
        let state = std::sync::Arc::new(crate::server::AppState::new(config, resolver, store, secrets));
        for pool in state.routing.load().turn.status(&state.routing.load().config) {
            if let Some(problem) = &pool.problem {
                tracing::warn!(region = %pool.region, relay_from = ?pool.relay_from, "TURN pool: {problem}");
            }
        }
        tracing::info!(
            listen = %address,
            database = %state.store.describe().location,
            admin_api = state.secrets.admin_token.is_some(),
            "locator ready: edges connect to ws://{address}{}, clients call http://{address}/v1/locate",
            locus_protocol::EDGE_LINK_PATH
        );
        match crate::server::run(listener, state, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("locator: server error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
