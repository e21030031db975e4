//! `kci staff add | list | disable`: staff as principals (DESIGN.md §7).
//! Each is audited.

use super::ConfigArg;
use crate::model::audit::AuditDraft;
use crate::model::{Role, Staff};
use std::process::ExitCode;

/// A staff name: what audits and approvals record.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        anyhow::bail!(
            "NAME: `{name}` must be 1 to 64 letters, digits, dots, hyphens or underscores"
        )
    }
}

async fn audit(store: &dyn crate::store::Store, action: &str, name: &str) -> anyhow::Result<()> {
    let mut d = AuditDraft::new("cli", action, "ok");
    d.detail = Some(format!("staff:{name}"));
    d.source = Some("cli".into());
    store.audit(d, chrono::Utc::now()).await?;
    Ok(())
}

pub async fn add(arg: ConfigArg, name: String, role: String) -> anyhow::Result<ExitCode> {
    check_name(&name)?;
    let role: Role = role.parse().map_err(|e| anyhow::anyhow!("--role: {e}"))?;
    let config = super::load_config(&arg)?;
    let store = crate::store::open(config.store.url.expose()).await?;
    let staff = Staff {
        name: name.clone(),
        role,
        created_at: chrono::Utc::now(),
        disabled_at: None,
    };
    if !store.add_staff(&staff).await? {
        anyhow::bail!("NAME: a staff member `{name}` exists already");
    }
    audit(store.as_ref(), "staff.added", &name).await?;
    eprintln!(
        "added staff member {name} ({role}); give them a token with `kci token create --staff {name} --name LABEL`"
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn list(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let store = crate::store::open(config.store.url.expose()).await?;
    for s in store.list_staff().await? {
        let state = match s.disabled_at {
            Some(at) => format!("disabled {}", crate::model::fmt_time(at)),
            None => "enabled".into(),
        };
        println!("{}\t{}\t{}", s.name, s.role, state);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn disable(arg: ConfigArg, name: String) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let store = crate::store::open(config.store.url.expose()).await?;
    if !store.disable_staff(&name, chrono::Utc::now()).await? {
        anyhow::bail!("NAME: no enabled staff member `{name}`");
    }
    audit(store.as_ref(), "staff.disabled", &name).await?;
    crate::web::TokenCache::settle().await;
    eprintln!("disabled {name}: their tokens no longer work");
    Ok(ExitCode::SUCCESS)
}
