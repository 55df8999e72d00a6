//! The `loadimpact-exporter` binary: parse the flags, set up logging, run.

// Input never reaches a panic: no unwrap, expect, panic or unchecked
// indexing outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use clap::Parser;
use loadimpact_exporter::config::{Cli, Command, SimulateArgs};
use std::process::ExitCode;

/// jemalloc rather than glibc's malloc: after a flood of deliveries glibc's
/// arenas kept about twice the live heap resident (fragmented, beyond what
/// malloc_trim returns); jemalloc gives it back (bench/RESULTS.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read by jemalloc itself before `main` (its
/// `malloc_conf`, under the `_rjem_` prefix this crate builds it with; the
/// `_RJEM_MALLOC_CONF` environment variable still adds to it). One arena
/// rather than one per CPU: the exporter's few threads allocate little, and
/// each extra arena kept about 0.3 MiB resident at idle for no measured gain
/// in ingest (bench/run.sh).
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &u8 = &b"narenas:1\0"[0];

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = loadimpact_exporter::logging::init(&cli.server.log_level, cli.server.log_format)
    {
        eprintln!("loadimpact-exporter: {e:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Some(Command::Simulate(args)) => simulate(args).await,
        None => loadimpact_exporter::server::run(cli.server).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "simulate")]
async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    loadimpact_exporter::simulate::run(args).await
}

#[cfg(not(feature = "simulate"))]
async fn simulate(_: SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("this build has no simulator: build with the `simulate` feature (on by default)")
}
