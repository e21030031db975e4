//! `kci token create`: mint an API token. Only its hash is stored; the
//! token itself is printed once. `--staff NAME` makes a token acting as
//! that staff member, limited to what their role allows.

use super::ConfigArg;
use crate::model::Scope;
use crate::store::TokenRecord;
use std::process::ExitCode;

pub async fn create(
    arg: ConfigArg,
    name: String,
    scopes: Vec<String>,
    staff: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut scopes = scopes
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
    if let Some(who) = &staff {
        let Some(person) = store.staff(who).await? else {
            anyhow::bail!("--staff: no staff member `{who}`; add them with `kci staff add`");
        };
        if person.disabled_at.is_some() {
            anyhow::bail!("--staff: `{who}` is disabled");
        }
        if scopes.is_empty() {
            scopes = person.role.scopes();
        }
        if let Some(s) = scopes.iter().find(|s| !person.role.allows(**s)) {
            anyhow::bail!(
                "--scope: {s} is more than the role {} of `{who}` allows",
                person.role
            );
        }
    } else if scopes.is_empty() {
        anyhow::bail!("--scope: give at least one (or --staff NAME for a staff member's role)");
    }
    let token = crate::web::new_token();
    let record = TokenRecord {
        id: crate::store::new_id(),
        name,
        scopes,
        created_at: chrono::Utc::now(),
        staff,
    };
    store
        .create_token(&record, &crate::web::hash_token(&token))
        .await?;
    let scopes: Vec<_> = record.scopes.iter().map(|s| s.as_str()).collect();
    let mut draft = crate::model::audit::AuditDraft::new("cli", "token.created", "ok");
    draft.detail = Some(format!(
        "token {} {:?}{} with {}",
        record.id,
        record.name,
        record
            .staff
            .as_deref()
            .map(|s| format!(" acting as staff:{s}"))
            .unwrap_or_default(),
        scopes.join(" ")
    ));
    draft.source = Some("cli".into());
    store.audit(draft, chrono::Utc::now()).await?;
    eprintln!(
        "created token {} for {:?}{} with scopes {}; it is shown only once:",
        record.id,
        record.name,
        record
            .staff
            .as_deref()
            .map(|s| format!(" acting as staff member {s}"))
            .unwrap_or_default(),
        scopes.join(" ")
    );
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
