//! `kci token create | list | revoke | rotate`: the life of an API token.
//! Only its hash is stored; a token is printed once, when it is made.
//! `--staff NAME` makes a token acting as that staff member, limited to
//! what their role allows; `--expires 90d` makes it stop by itself. Every
//! step is audited; `list` shows when and from where each was last used.

use super::ConfigArg;
use crate::model::Scope;
use crate::store::TokenRecord;
use std::process::ExitCode;

pub async fn create(
    arg: ConfigArg,
    name: String,
    scopes: Vec<String>,
    staff: Option<String>,
    expires: Option<String>,
    allow: Vec<String>,
    cert: Option<String>,
) -> anyhow::Result<ExitCode> {
    let cert = cert.as_deref().map(parse_cert).transpose()?;
    let now = chrono::Utc::now();
    let allow = parse_allow(&allow)?;
    let expires_at = match expires {
        None => None,
        Some(s) => {
            let span: crate::model::Span =
                s.parse().map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
            let span = chrono::Duration::from_std(span.0)
                .ok()
                .filter(|d| *d > chrono::Duration::zero())
                .ok_or_else(|| {
                    anyhow::anyhow!("--expires: must be a positive duration such as 90d")
                })?;
            Some(now + span)
        }
    };
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
        if config.staff.second_factor == crate::config::SecondFactor::Required {
            anyhow::bail!(
                "--staff: [staff] second_factor = \"required\": a staff member's token comes from a login (POST /v1/staff/login); enrol `{who}` with `kci staff enrol {who}`"
            );
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
        created_at: now,
        staff,
        expires_at,
        revoked_at: None,
        last_used_at: None,
        last_used_from: None,
        allow,
        cert,
        session: false,
    };
    store
        .create_token(&record, &crate::web::hash_token(&token))
        .await?;
    let scopes: Vec<_> = record.scopes.iter().map(|s| s.as_str()).collect();
    let mut draft = crate::model::audit::AuditDraft::new("cli", "token.created", "ok");
    draft.detail = Some(format!(
        "token {} {:?}{} with {}{}",
        record.id,
        record.name,
        record
            .staff
            .as_deref()
            .map(|s| format!(" acting as staff:{s}"))
            .unwrap_or_default(),
        scopes.join(" "),
        if record.allow.is_empty() {
            String::new()
        } else {
            let nets: Vec<String> = record.allow.iter().map(ToString::to_string).collect();
            format!(" from {}", nets.join(" "))
        }
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

/// `kci token list`: every token, newest first — id, name, who it acts
/// as, scopes, state, expiry, last use, and whether a staff login made it
/// (`session`) or `kci token create` did (`token`). Never a secret.
pub async fn list(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let store = crate::store::open(config.store.url.expose()).await?;
    let now = chrono::Utc::now();
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(|| "-".to_string(), crate::model::fmt_time)
    };
    println!(
        "id\tname\tstaff\tscopes\tnetworks\tcertificate\tstate\texpires\tlast used\tfrom\tkind"
    );
    for t in store.tokens().await? {
        // A disabled staff member's tokens stop at once (auth checks it).
        let staff_disabled = match &t.staff {
            Some(name) => store
                .staff(name)
                .await?
                .is_some_and(|s| s.disabled_at.is_some()),
            None => false,
        };
        let state = match (t.revoked_at, t.usable(now), staff_disabled) {
            (Some(_), _, _) => "revoked",
            (None, false, _) => "expired",
            (None, true, true) => "staff_disabled",
            (None, true, false) => "active",
        };
        let scopes: Vec<_> = t.scopes.iter().map(|s| s.as_str()).collect();
        let nets: Vec<String> = t.allow.iter().map(ToString::to_string).collect();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{state}\t{}\t{}\t{}\t{}",
            t.id,
            t.name,
            t.staff.as_deref().unwrap_or("-"),
            scopes.join(","),
            if nets.is_empty() {
                "any".to_string()
            } else {
                nets.join(",")
            },
            t.cert.as_deref().unwrap_or("-"),
            time(t.expires_at),
            time(t.last_used_at),
            t.last_used_from.as_deref().unwrap_or("-"),
            if t.session { "session" } else { "token" },
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kci token revoke ID`: the token stops working at once, on every node.
pub async fn revoke(arg: ConfigArg, id: String) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let store = crate::store::open(config.store.url.expose()).await?;
    let now = chrono::Utc::now();
    if !store.revoke_token(&id, now).await? {
        anyhow::bail!("no token `{id}` that is not revoked already (see `kci token list`)");
    }
    let mut draft = crate::model::audit::AuditDraft::new("cli", "token.revoked", "ok");
    draft.detail = Some(format!("token {id}"));
    draft.source = Some("cli".into());
    store.audit(draft, now).await?;
    // Back only once no node can still let it in from memory.
    crate::web::TokenCache::settle().await;
    eprintln!("revoked token {id}");
    Ok(ExitCode::SUCCESS)
}

/// `kci token rotate ID`: a new token with the same name, scopes, staff
/// member and remaining lifetime; the old one stops at once. The new one
/// is printed once, on the last line of stdout.
/// A `--cert` fingerprint: 64 hex digits, colons allowed; lower case.
fn parse_cert(c: &str) -> anyhow::Result<String> {
    let hex: String = c
        .chars()
        .filter(|ch| *ch != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(anyhow::anyhow!(
            "--cert: `{c}` is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
        ))
    }
}

/// `--allow` networks.
fn parse_allow(allow: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    allow
        .iter()
        .map(|n| {
            n.parse::<ipnet::IpNet>().map(|n| n.trunc()).map_err(|_| {
                anyhow::anyhow!("--allow: `{n}` is not a network such as 192.0.2.0/24")
            })
        })
        .collect()
}

/// `kci token rotate ID [--cert FP] [--allow CIDR…]`: a new secret for
/// the same name, scopes, staff member and expiry; the bindings kept, or
/// replaced by those given (a renewed client certificate, a new network).
pub async fn rotate(
    arg: ConfigArg,
    id: String,
    cert: Option<String>,
    allow: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let cert = cert.as_deref().map(parse_cert).transpose()?;
    let allow = parse_allow(&allow)?;
    let config = super::load_config(&arg)?;
    let store = crate::store::open(config.store.url.expose()).await?;
    let now = chrono::Utc::now();
    let Some(old) = store
        .tokens()
        .await?
        .into_iter()
        .find(|t| t.id == id && t.revoked_at.is_none())
    else {
        anyhow::bail!("no token `{id}` that is not revoked already (see `kci token list`)");
    };
    if !old.usable(now) {
        anyhow::bail!("token `{id}` has expired: create a new one instead");
    }
    let token = crate::web::new_token();
    let new = TokenRecord {
        id: crate::store::new_id(),
        created_at: now,
        revoked_at: None,
        last_used_at: None,
        last_used_from: None,
        cert: cert.or(old.cert.clone()),
        session: old.session,
        allow: if allow.is_empty() {
            old.allow.clone()
        } else {
            allow
        },
        ..old
    };
    if !store
        .rotate_token(&id, &new, &crate::web::hash_token(&token))
        .await?
    {
        anyhow::bail!("token `{id}` was revoked meanwhile");
    }
    let mut draft = crate::model::audit::AuditDraft::new("cli", "token.rotated", "ok");
    draft.detail = Some(format!("token {id} replaced by {}", new.id));
    draft.source = Some("cli".into());
    store.audit(draft, now).await?;
    crate::web::TokenCache::settle().await;
    eprintln!(
        "token {id} is revoked; its replacement {} is shown only once:",
        new.id
    );
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
