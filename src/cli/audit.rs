//! `kci audit verify`: walks the audit log and its signed checkpoints.
//! Reads only, so it is safe while `kci serve` runs.

use super::ConfigArg;
use std::process::ExitCode;

pub async fn verify(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let public =
        crate::channels::email::load_signing_key(&config.email)?.map(|k| k.public_armored());
    let store = crate::store::open(config.store.url.expose()).await?;
    match crate::audit::verify(store.as_ref(), public.as_deref()).await? {
        Ok(intact) => {
            println!(
                "intact: {} entries, {} signed checkpoints",
                intact.entries, intact.checkpoints
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(t) => {
            println!("tampered: {t}");
            Ok(ExitCode::from(1))
        }
    }
}
