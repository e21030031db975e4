//! The `kci` binary: parse the command line, set up logging, run.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KCI_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = kci::cli::Cli::parse();
    match kci::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kci: {e:#}");
            ExitCode::FAILURE
        }
    }
}
