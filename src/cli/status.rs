//! `kci status`: what the hub is doing, read from its database (safe
//! beside a running `kci serve`, on any node): the queue by state, what
//! is due next and how late, the latest failures with the providers'
//! words, and open incidents.

use super::ConfigArg;
use crate::model::State;
use std::process::ExitCode;

/// Failures shown, newest first.
const LAST_FAILURES: usize = 5;

pub async fn run(arg: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let store = crate::store::open_as_is(config.store.url.expose()).await?;
    let info = store.inspect().await?;
    let now = chrono::Utc::now();
    println!(
        "store: {} (schema {} of {})",
        if crate::store::sqlite_path(config.store.url.expose()).is_some() {
            "sqlite"
        } else {
            "postgres"
        },
        info.schema,
        info.latest
    );
    if info.schema < info.latest {
        println!("  kci migrate (or kci serve) brings it up to date");
        return Ok(ExitCode::from(1));
    }
    if info.schema > info.latest {
        println!("  a newer kci migrated it: run that version (or newer) on every node");
        return Ok(ExitCode::from(1));
    }
    let counts = store.count_by_state().await?;
    let line: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{} {n}", s.as_str()))
        .collect();
    println!(
        "notifications: {}",
        if line.is_empty() {
            "none".into()
        } else {
            line.join(", ")
        }
    );
    match store.next_due(None).await? {
        Some(due) if due <= now => println!(
            "next due: {} ({} s late)",
            crate::model::fmt_time(due),
            (now - due).num_seconds()
        ),
        Some(due) => println!(
            "next due: {} (in {} s)",
            crate::model::fmt_time(due),
            (due - now).num_seconds()
        ),
        None => println!("next due: nothing queued"),
    }
    let backlog = store.backlog().await?;
    println!(
        "protected changes pending: {}; unhealthy destinations: {}",
        backlog.changes_pending, backlog.destinations_unhealthy
    );
    let failed = store
        .notifications_in(State::Failed, None, LAST_FAILURES)
        .await?;
    if !failed.is_empty() {
        println!("last failures:");
        for n in &failed {
            println!(
                "  {} {} {} {}: {}",
                crate::model::fmt_time(n.decided_at),
                n.id,
                n.channel.as_str(),
                n.reason.map_or("-", |r| r.as_str()),
                n.detail.as_deref().unwrap_or("-")
            );
        }
    }
    let incidents = store.incidents(true, None, 100).await?;
    println!("open incidents: {}", incidents.len());
    for i in incidents.iter().take(LAST_FAILURES) {
        println!(
            "  {} {} {} {}",
            crate::model::fmt_time(i.opened_at),
            i.id,
            i.kind,
            i.account.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}
