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
    /// Secrets come from the environment: LOCATOR_EDGE_KEY (required; the master key
    /// every edge credential derives from), LOCATOR_EDGE_KEY_PREVIOUS (accepted too,
    /// during a rotation), LOCATOR_ADMIN_TOKEN (enables the admin API), and each TURN
    /// pool's secret variable.
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
        /// Most HTTP connections open at once (edge links and admin streams included);
        /// more are closed on arrival. Lowered at start to fit the descriptor limit.
        #[arg(long, default_value_t = locus_serve::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// Longest wait for a request's headers, on a new connection or an idle
        /// keep-alive one, before it is closed (e.g. 10s, 500ms).
        #[arg(long, default_value = "10s", value_parser = locus_geo::config::parse_duration)]
        header_read_timeout: std::time::Duration,
        /// Threads serving HTTP, each with its own listener on the address
        /// (SO_REUSEPORT: the kernel spreads connections over them) and its own event
        /// loop, as nginx's worker processes. 0 (default): one listener served by the
        /// shared runtime's worker threads. Its gain is not shown yet (README, locate
        /// against nginx).
        #[arg(long, default_value_t = 0)]
        http_threads: usize,
        /// Serve HTTPS/WSS with this certificate chain (PEM; with --tls-key). Reloaded
        /// when the file changes. Not given: plain HTTP (behind a TLS proxy).
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC).
        #[arg(long)]
        tls_key: Option<PathBuf>,
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
    /// Print an edge's credential (its LOCATOR_EDGE_TOKEN), derived from LOCATOR_EDGE_KEY.
    ///
    /// The credential names the edge's id, region and generation; the locator accepts it
    /// only for that edge in that region, and only while `edge_credentials:` in the
    /// regions file does not revoke it. The region comes from `--region`, else the
    /// file's `edge_credentials.<ID>.region`, else the edge's last registration in
    /// `--database`, else the only region of the file.
    EdgeCredential {
        /// The regions file (its `edge_credentials:` gives the generation and region).
        #[arg(long, default_value = "regions.yaml")]
        config: PathBuf,
        /// Database to look up the region of an edge that registered before.
        #[arg(long)]
        database: Option<String>,
        /// The edge's id (its `--id`).
        #[arg(long)]
        id: String,
        /// The edge's region (its `--region`), when the file does not name it.
        #[arg(long)]
        region: Option<String>,
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
            max_connections,
            header_read_timeout,
            http_threads,
            tls_cert,
            tls_key,
        } => serve(
            &config,
            (&listen, http_threads),
            &database,
            geoip.as_deref(),
            db_max_connections,
            locus_serve::Limits {
                max_connections,
                header_read_timeout,
            },
            (tls_cert.as_deref(), tls_key.as_deref()),
        ),
        Command::CheckConfig { config, geoip } => check_config(&config, geoip.as_deref()),
        Command::Resolve { config, geoip, ips } => resolve(&config, geoip.as_deref(), &ips),
        Command::EdgeCredential {
            config,
            database,
            id,
            region,
        } => match edge_credential(&config, database.as_deref(), &id, region.as_deref()) {
            Ok(credential) => {
                println!("{credential}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("locator: {message}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `locator edge-credential`: the credential edge `id` must present.
fn edge_credential(
    path: &Path,
    database: Option<&str>,
    id: &str,
    region: Option<&str>,
) -> Result<String, String> {
    let secrets = crate::state::Secrets::from_env().map_err(|e| e.to_string())?;
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !id_ok {
        return Err("--id must be 1-64 characters of letters, digits, '-', '_', '.'".into());
    }
    let policy = config.edge_credential_policy(id);
    if policy.revoked {
        return Err(format!(
            "edge \"{id}\" is revoked in {} (edge_credentials.{id}.revoked): remove that line first",
            path.display()
        ));
    }
    let region = match (region, &policy.region) {
        (Some(given), Some(listed)) if given != listed => {
            return Err(format!(
                "{} says edge \"{id}\" is in region \"{listed}\", not \"{given}\"",
                path.display()
            ));
        }
        (Some(given), _) => given.to_string(),
        (None, Some(listed)) => listed.clone(),
        (None, None) => match registered_region(database, id)? {
            Some(region) => region,
            None if config.regions.len() == 1 => config.regions[0].id.clone(),
            None => {
                return Err(format!(
                    "which region is edge \"{id}\" in? Add `edge_credentials: {{ {id}: {{ region: REGION }} }}` to {}, pass --region REGION, or --database of a locator it registered with",
                    path.display()
                ));
            }
        },
    };
    if config.region(&region).is_none() {
        return Err(format!("region \"{region}\" is not in {}", path.display()));
    }
    Ok(locus_protocol::edge_credential::derive(
        secrets.edge_key().as_bytes(),
        policy.generation,
        &region,
        id,
    ))
}

/// The region edge `id` last registered in, from the database (when one is given).
fn registered_region(database: Option<&str>, id: &str) -> Result<Option<String>, String> {
    let Some(database) = database else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let store = crate::store::Store::open(database)
            .await
            .map_err(|e| e.to_string())?;
        let edge = store.edge(id).await.map_err(|e| e.to_string());
        store.close().await;
        Ok(edge?.map(|e| e.region))
    })
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
    (listen, http_threads): (&str, usize),
    database: &str,
    geoip: Option<&str>,
    db_max_connections: u32,
    mut limits: locus_serve::Limits,
    (tls_cert, tls_key): (Option<&Path>, Option<&Path>),
) -> ExitCode {
    if limits.max_connections == 0 || limits.header_read_timeout.is_zero() {
        eprintln!("locator: --max-connections and --header-read-timeout must be more than 0");
        return ExitCode::FAILURE;
    }
    let tls = match locus_serve::tls::from_flags(tls_cert, tls_key) {
        Ok(tls) => tls.map(std::sync::Arc::new),
        Err(message) => {
            eprintln!("locator: {message}");
            return ExitCode::FAILURE;
        }
    };
    let secrets = match crate::state::Secrets::from_env() {
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
        let listeners = match bind_listeners(listen, http_threads).await {
            Ok(listeners) => listeners,
            Err(e) => {
                eprintln!("locator: cannot listen on {listen}: {e} (use --listen HOST:PORT)");
                return ExitCode::FAILURE;
            }
        };
        let address = listeners.local_addr().map_or_else(|_| listen.to_string(), |a| a.to_string());
        if let Some(info) = resolver.database_info()
            && let Some(credit) = info.attribution {
                tracing::info!("GeoIP: {} <{}>", credit.text, credit.url);
            }
        // Beside its clients the locator holds its database pool, TURN checks and files.
        limits.max_connections = locus_serve::fit_to_fd_limit(
            limits.max_connections,
            128 + db_max_connections as usize,
        );
        let mut state = crate::state::AppState::new(config, resolver, store, secrets);
        state.connection_limits = limits;
        let (http, ws) = if tls.is_some() { ("https", "wss") } else { ("http", "ws") };
        state.tls = tls;
        let state = std::sync::Arc::new(state);
        let routing = state.routing();
        for pool in routing.turn.status(&routing.config) {
            if let Some(problem) = &pool.problem {
                tracing::warn!(region = %pool.region, relay_from = ?pool.relay_from, "TURN pool: {problem}");
            }
        }
        tracing::info!(
            listen = %address,
            database = %state.store.describe().location,
            admin_api = state.secrets.admin_token.is_some(),
            "locator ready: edges connect to {ws}://{address}{}, clients call {http}://{address}/v1/locate",
            locus_protocol::EDGE_LINK_PATH
        );
        match crate::server::run_on(listeners, state, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("locator: server error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The listeners of `--listen` for `--http-threads` (a host name is resolved: the first
/// of its addresses that binds is used).
async fn bind_listeners(listen: &str, threads: usize) -> std::io::Result<crate::server::Listeners> {
    use crate::server::Listeners;
    if threads == 0 {
        return Ok(Listeners::One(tokio::net::TcpListener::bind(listen).await?));
    }
    let mut failed = None;
    for address in tokio::net::lookup_host(listen).await? {
        match locus_serve::bind_shards(address, threads) {
            Ok(listeners) => return Ok(Listeners::Shards(listeners)),
            Err(error) => failed = Some(error),
        }
    }
    Err(failed
        .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address")))
}
