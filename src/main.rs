//! The `kci` binary: parse the command line, set up logging, run.

use clap::Parser;
use std::process::ExitCode;

/// Rust's allocations go to mimalloc rather than glibc's malloc: a
/// request, a rendered notice and a signed mail are many small, short-lived
/// allocations across threads, which glibc serves with more locking and
/// gives back to the kernel between bursts (BENCHMARKS.md, stop 35).
/// SQLite and OpenSSL keep the C library's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = kci::cli::Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("KCI_LOG").unwrap_or_else(|_| "info".into());
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format() {
        kci::config::LogFormat::Json => log.json().init(),
        kci::config::LogFormat::Text => log.init(),
    }
    match kci::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kci: {e:#}");
            ExitCode::FAILURE
        }
    }
}
