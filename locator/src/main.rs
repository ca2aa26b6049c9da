//! The `locator` binary: see `locus_locator::cli`.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc. Every request allocates and frees small blocks
/// across two worker threads (hyper's read buffer, header values, the answer, the
/// selection text): under `scripts/bench-locate`, glibc's malloc, free and consolidation
/// took about 7% of the locator's samples. Only the binary uses it; the library and its
/// tests keep the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    locus_locator::cli::init_logging();
    let cli = locus_locator::cli::Cli::parse();
    locus_locator::cli::run(cli)
}
