//! The `loadtest` binary. Today: `loadtest addresses`, client addresses drawn from a
//! GeoIP database for load runs (the scenarios come with the loadtest issue).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load and fault-injection driver for Locus"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Addresses {
            geoip,
            count,
            v6_share,
            seed,
        } => match locus_loadtest::addresses::sample_addresses(&geoip, count, v6_share, seed) {
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
    }
}
