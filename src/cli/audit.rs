//! `kci audit verify`: walks the audit log and its signed checkpoints.
//! Reads only, so it is safe while `kci serve` runs.

use super::ConfigArg;
use std::process::ExitCode;

pub async fn verify(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let public =
        crate::channels::email::load_signing_key(&config.email)?.map(|k| k.public_armored());
    let mut previous = Vec::new();
    for (i, p) in config.audit.previous_keys.iter().enumerate() {
        let armored = std::fs::read_to_string(&p.key).map_err(|e| {
            anyhow::anyhow!(
                "audit.previous_keys[{i}]: cannot read {}: {e}",
                p.key.display()
            )
        })?;
        previous.push((armored, p.until));
    }
    let signers = crate::audit::Signers {
        current: public,
        previous,
    };
    let store = crate::store::open(config.store.url.expose()).await?;
    match crate::audit::verify_with(store.as_ref(), &signers).await? {
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
