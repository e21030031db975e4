//! `kci staff add | list | disable`: staff as principals (DESIGN.md §7).
//! Each is audited.

use super::ConfigArg;
use crate::model::audit::AuditDraft;
use crate::model::{Role, Staff};
use std::process::ExitCode;

async fn audit(store: &dyn crate::store::Store, action: &str, name: &str) -> anyhow::Result<()> {
    let mut d = AuditDraft::new("cli", action, "ok");
    d.detail = Some(format!("staff:{name}"));
    d.source = Some("cli".into());
    store.audit(d, chrono::Utc::now()).await?;
    Ok(())
}

pub async fn add(arg: ConfigArg, name: String, role: String) -> anyhow::Result<ExitCode> {
    crate::model::check_staff_name(&name).map_err(|e| anyhow::anyhow!("NAME: {e}"))?;
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
        "added staff member {name} ({role}); give them an enrolment code with `kci staff enrol {name}` (a password and an authenticator), or a token with `kci token create --staff {name} --name LABEL`"
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn list(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let store = crate::store::open(config.store.url.expose()).await?;
    let now = chrono::Utc::now();
    for s in store.list_staff().await? {
        let state = match s.disabled_at {
            Some(at) => format!("disabled {}", crate::model::fmt_time(at)),
            None => "enabled".into(),
        };
        let (_, login) = store.staff_login(&s.name).await?;
        let login = crate::trust::staff::login_state(login.as_ref(), now);
        println!("{}\t{}\t{}\t{}", s.name, s.role, state, login);
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

pub async fn enrol(arg: ConfigArg, name: String) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let store = crate::store::open(config.store.url.expose()).await?;
    let logins = crate::staff::Logins {
        store: store.as_ref(),
        config: &config,
        now: chrono::Utc::now(),
    };
    let Some(issued) = logins.issue(&name).await? else {
        anyhow::bail!("NAME: no enabled staff member `{name}`; add them with `kci staff add`");
    };
    crate::web::TokenCache::settle().await;
    eprintln!(
        "enrolment code for {name}, valid until {} (single use; hand it over in person). \
         They enrol with POST /v1/staff/enrol {{\"name\", \"code\", \"password\"}}; \
         any earlier password, authenticator and login of theirs no longer works:",
        crate::model::fmt_time(issued.expires_at)
    );
    println!("{}", issued.code);
    Ok(ExitCode::SUCCESS)
}
