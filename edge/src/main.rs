//! The `edge` binary: parses the command line, reads `LOCATOR_EDGE_TOKEN`, binds the
//! listener, wires SIGTERM/SIGINT (first: drain; second: exit at once) and runs the
//! server. See the `locus_edge` library for everything else.

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;
use locus_edge::config::{Cli, EdgeToken};
use locus_edge::server;
use locus_edge::state::EdgeState;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // tungstenite traces the whole client handshake request, `Authorization: Bearer
    // <credential>` included: that one target stays at debug whatever RUST_LOG says.
    let filter = match "tungstenite::handshake::client=debug".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // By default a failed log write is reported with `eprintln!`, which panics when
        // stderr is gone (a closed pipe): the task that logged would die. Logs are lost
        // then, the edge is not.
        .log_internal_errors(false)
        .init();
    let mut settings = match cli.settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("edge: {message}");
            return ExitCode::FAILURE;
        }
    };
    // Beside client connections the edge holds its spool, its locator link and a UDP
    // socket per WebRTC peer.
    let reserved = 256 + 2 * settings.media.max_peers;
    settings.connections.max_connections =
        locus_serve::fit_to_fd_limit(settings.connections.max_connections, reserved);
    let token = match EdgeToken::from_env() {
        Ok(token) => token,
        Err(message) => {
            eprintln!("edge: {message}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("edge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Handlers first: once the port accepts connections, SIGTERM means "drain", never
        // the default "die at once".
        let shutdown = signals();
        let listener = match tokio::net::TcpListener::bind(&cli.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!(
                    "edge: cannot listen on {}: {e} (use --listen HOST:PORT)",
                    cli.listen
                );
                return ExitCode::FAILURE;
            }
        };
        let state = match EdgeState::open(settings, token).await {
            Ok(state) => state,
            Err(e) => {
                eprintln!("edge: {e}");
                return ExitCode::FAILURE;
            }
        };
        let address = listener
            .local_addr()
            .map_or_else(|_| cli.listen.clone(), |a| a.to_string());
        tracing::info!(
            edge = %state.settings.edge_id,
            region = %state.settings.region,
            listen = %address,
            public_url = %state.settings.public_url,
            locators = ?state.settings.locators,
            spool = %state.spool.path().display(),
            "edge ready"
        );
        match server::run(listener, state, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edge: server error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Completes on the first SIGTERM or SIGINT; the second one exits the process at once.
/// The handlers are installed when this is called (not when the future is first polled).
fn signals() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let (first, rx) = tokio::sync::oneshot::channel::<()>();
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::warn!("cannot listen for SIGTERM/SIGINT: stop the edge with SIGKILL");
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("signal received: draining (send it again to exit at once)");
        let _ = first.send(());
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting at once");
        std::process::exit(1);
    });
    async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
