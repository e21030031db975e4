//! `kci explain EVENT_ID`: the story of one event as a human-readable
//! timeline — who was to be told, where, and what kci decided when and why.

use super::ConfigArg;
use crate::model::{Event, State, fmt_time};
use crate::store::{Decided, Notification};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::fmt::Write;
use std::process::ExitCode;

pub async fn run(arg: ConfigArg, id: String) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&arg)?;
    let store = crate::store::open(config.store.url.expose()).await?;
    let Some((event, notes)) = store.event(&id).await? else {
        eprintln!("kci explain: no event `{id}`");
        return Ok(ExitCode::from(2));
    };
    let history = store.history(&id).await?;
    print!("{}", explain(&event, &notes, &history));
    Ok(ExitCode::SUCCESS)
}

fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%a %d %b %H:%M %Z").to_string()
}

/// The timeline of `event`. Times are in each destination's own zone, as
/// the customer lived them.
pub fn explain(event: &Event, notes: &[Notification], history: &[Decided]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} for account {}{}{} (key {})",
        event.id,
        event.type_name,
        event.account,
        event
            .service
            .as_deref()
            .map(|s| format!(", service {s}"))
            .unwrap_or_default(),
        event
            .contact
            .as_deref()
            .map(|c| format!(", contact {c} only"))
            .unwrap_or_default(),
        event.key,
    );
    let _ = writeln!(
        out,
        "  {} priority, category {}; occurred {}, received {}{}",
        event.priority,
        event.category,
        fmt_time(event.occurred_at),
        fmt_time(event.received_at),
        event
            .expires_at
            .map(|e| format!(", expires {}", fmt_time(e)))
            .unwrap_or_default(),
    );
    if notes.is_empty() {
        let _ = writeln!(
            out,
            "\n  No destination: the account has none (or the named contact has none)."
        );
    }
    for n in notes {
        let tz: Tz = n.timezone.parse().unwrap_or(chrono_tz::UTC);
        let _ = writeln!(out, "\n  {} → {} ({})", n.contact, n.uri, tz.name());
        for d in history.iter().filter(|d| d.notification == n.id) {
            let mut line = format!("    {}  {}", local(d.at, tz), d.state);
            let words = match (d.state, d.reason) {
                (State::Pending, None) => Some("due now".to_string()),
                (State::Pending, Some(r)) => {
                    Some(format!("{} until {}", deferral(r), local(d.due_at, tz)))
                }
                (_, Some(r)) => Some(r.to_string()),
                (_, None) => None,
            };
            if let Some(w) = words {
                let _ = write!(line, ": {w}");
            }
            if let Some(detail) = &d.detail {
                let _ = write!(line, " — {detail}");
            }
            let _ = writeln!(out, "{line}");
        }
        if n.state == State::Sent && n.attempts > 1 {
            let _ = writeln!(out, "    (sent on attempt {})", n.attempts);
        }
    }
    out
}

fn deferral(r: crate::model::Reason) -> &'static str {
    use crate::model::Reason::*;
    match r {
        Hold => "held",
        NotBefore => "not before",
        Window => "deferred by window",
        Retry => "retrying",
        Requeued => "requeued",
        _ => "waiting",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Reason;
    use crate::plan::testkit::{at, event};

    #[test]
    fn tells_the_story_in_local_time() {
        let ev = event("2026-03-24T03:00:00Z");
        let d = crate::plan::Decision {
            contact: "alice".into(),
            destination: "d1".into(),
            uri: "sms:+447700900001".into(),
            channel: crate::model::ChannelKind::Sms,
            state: State::Sent,
            reason: None,
            detail: None,
            due_at: at("2026-03-24T08:00:00Z"),
            expires_at: None,
            timezone: "Europe/London".parse().unwrap(),
            summary: None,
            is_digest: false,
            folded_into: None,
            paired_from: None,
        };
        let n = d.notification(&ev);
        let step = |t: &str, state, reason, detail: Option<&str>, due: &str| Decided {
            notification: n.id.clone(),
            at: at(t),
            state,
            reason,
            detail: detail.map(str::to_string),
            due_at: at(due),
        };
        let history = vec![
            step(
                "2026-03-24T03:00:00Z",
                State::Pending,
                Some(Reason::Window),
                Some("window Mo-Fr 08:00-20:00 (Europe/London)"),
                "2026-03-24T08:00:00Z",
            ),
            step(
                "2026-03-24T08:00:01Z",
                State::Sent,
                None,
                Some("HTTP 201"),
                "2026-03-24T08:00:00Z",
            ),
        ];
        let text = explain(&ev, &[n], &history);
        assert!(
            text.starts_with("e1 line.down for account A1, service L1 (key L1)"),
            "{text}"
        );
        assert!(
            text.contains("alice → sms:+447700900001 (Europe/London)"),
            "{text}"
        );
        assert!(
            text.contains(
                "Tue 24 Mar 03:00 GMT  pending: deferred by window until Tue 24 Mar 08:00 GMT — window Mo-Fr 08:00-20:00 (Europe/London)"
            ),
            "{text}"
        );
        assert!(
            text.contains("Tue 24 Mar 08:00 GMT  sent — HTTP 201"),
            "{text}"
        );
    }
}
