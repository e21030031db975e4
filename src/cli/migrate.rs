//! `kci migrate`: bring the store's schema up to date.

use super::ConfigArg;
use std::process::ExitCode;

pub async fn run(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    crate::store::open(config.store.url.expose()).await?;
    eprintln!("schema is up to date");
    Ok(ExitCode::SUCCESS)
}
