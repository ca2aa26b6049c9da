//! The `locator` binary: see `locus_locator::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    locus_locator::cli::init_logging();
    let cli = locus_locator::cli::Cli::parse();
    locus_locator::cli::run(cli)
}
