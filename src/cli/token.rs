//! `kci token create`: mint an API token. Only its hash is stored; the
//! token itself is printed once.

use super::ConfigArg;
use crate::model::Scope;
use crate::store::TokenRecord;
use std::process::ExitCode;

pub async fn create(arg: ConfigArg, name: String, scopes: Vec<String>) -> anyhow::Result<ExitCode> {
    let scopes = scopes
        .iter()
        .map(|s| {
            s.parse::<Scope>()
                .map_err(|e| anyhow::anyhow!("--scope: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if name.trim().is_empty() {
        anyhow::bail!("--name: must not be empty");
    }
    let config = super::load_config(&arg)?;
    let store = crate::store::open(config.store.url.expose()).await?;
    let token = crate::web::new_token();
    let record = TokenRecord {
        id: crate::store::new_id(),
        name,
        scopes,
        created_at: chrono::Utc::now(),
    };
    store
        .create_token(&record, &crate::web::hash_token(&token))
        .await?;
    let scopes: Vec<_> = record.scopes.iter().map(|s| s.as_str()).collect();
    eprintln!(
        "created token {} for {:?} with scopes {}; it is shown only once:",
        record.id,
        record.name,
        scopes.join(" ")
    );
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
