//! `kci simulate SCENARIO.toml` (DESIGN.md §5): the real ingest, plan,
//! schedule and render path on a virtual clock, with a throw-away in-memory
//! store and recording channels. Prints one JSON line per notification's
//! final fate, ordered by `at`.

use crate::channels::recording::RecordingChannel;
use crate::channels::{Channel, Channels};
use crate::config::Config;
use crate::ingest::{self, EventInput};
use crate::metrics::Metrics;
use crate::model::Preferences;
use crate::model::{
    Account, ChannelKind, Contact, Destination, DestinationUri, ManualClock, SecurityLevel, State,
    TimeZoneName, fmt_time,
};
use crate::render::Renderer;
use crate::schedule::Scheduler;
use crate::store::{IngestOutcome, Notification, Store, sqlite::SqliteStore};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// A scenario failed to parse or set up: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScenarioError(pub String);

/// An instant in a scenario: an RFC 3339 string or a TOML offset datetime.
#[derive(Deserialize)]
#[serde(untagged)]
enum Instant {
    Text(String),
    Toml(toml::value::Datetime),
}

#[derive(Deserialize)]
struct Scenario {
    start: Instant,
    until: Instant,
    #[serde(default)]
    account: Vec<toml::Spanned<ScenarioAccount>>,
    #[serde(default)]
    event: Vec<toml::Spanned<ScenarioEvent>>,
    #[serde(flatten)]
    config: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioAccount {
    id: String,
    name: Option<String>,
    timezone: Option<String>,
    security_level: Option<String>,
    #[serde(default)]
    paranoid: bool,
    #[serde(default)]
    defaults: Preferences,
    #[serde(default)]
    contact: Vec<ScenarioContact>,
}

#[derive(Deserialize)]
struct ScenarioContact {
    id: String,
    name: Option<String>,
    #[serde(default)]
    destination: Vec<toml::Table>,
    /// `timezone` and the preference fields for all its destinations.
    #[serde(flatten)]
    prefs: toml::Table,
}

#[derive(Deserialize)]
struct ScenarioEvent {
    at: Instant,
    #[serde(flatten)]
    fields: toml::Table,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

fn datetime(v: &Instant, what: &str) -> Result<DateTime<Utc>, ScenarioError> {
    let text = match v {
        Instant::Text(s) => s.clone(),
        Instant::Toml(d) => d.to_string(),
    };
    crate::model::parse_time(&text).map_err(|e| ScenarioError(format!("{what}: {e}")))
}

/// One printed fate.
#[derive(serde::Serialize)]
struct Fate<'a> {
    at: String,
    event: Option<&'a str>,
    #[serde(rename = "type")]
    type_name: &'a str,
    account: &'a str,
    contact: &'a str,
    destination: &'a str,
    state: State,
    reason: Option<crate::model::Reason>,
    text: Option<String>,
    subject: Option<String>,
}

pub async fn run(path: &Path) -> anyhow::Result<ExitCode> {
    match simulate(path).await {
        Ok(lines) => {
            let mut out = String::new();
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("kci simulate: {}: {e}", path.display());
            Ok(ExitCode::from(2))
        }
    }
}

/// Runs the scenario at `path`, returning the JSON lines.
pub async fn simulate(path: &Path) -> Result<Vec<String>, ScenarioError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ScenarioError(format!("cannot read: {e}")))?;
    simulate_text(&text, &path.display().to_string()).await
}

pub async fn simulate_text(text: &str, file: &str) -> Result<Vec<String>, ScenarioError> {
    let scenario: Scenario = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!("line {}: ", line_of(text, s.start)))
            .unwrap_or_default();
        ScenarioError(format!("{line}{}", e.message()))
    })?;
    let config = Arc::new(
        Config::from_table(scenario.config, file).map_err(|e| ScenarioError(e.to_string()))?,
    );
    let start = datetime(&scenario.start, "start")?;
    let until = datetime(&scenario.until, "until")?;
    if until < start {
        return Err(ScenarioError("until: is before start".into()));
    }

    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(":memory:").map_err(|e| ScenarioError(format!("store: {e}")))?);
    store
        .migrate()
        .await
        .map_err(|e| ScenarioError(format!("store: {e}")))?;
    for acc in &scenario.account {
        let line = line_of(text, acc.span().start);
        load_account(&*store, acc.get_ref())
            .await
            .map_err(|e| ScenarioError(format!("line {line}: account: {e}")))?;
    }

    let mut events = Vec::new();
    for ev in &scenario.event {
        let line = line_of(text, ev.span().start);
        let at = datetime(&ev.get_ref().at, &format!("line {line}: event.at"))?;
        let json =
            serde_json::to_vec(&ev.get_ref().fields).map_err(|e| ScenarioError(e.to_string()))?;
        let input: EventInput = ingest::parse(&json)
            .map_err(|(_, e)| ScenarioError(format!("line {line}: event: {}", e.message)))?;
        events.push((at, line, input));
    }
    events.sort_by_key(|(at, line, _)| (*at, *line));

    let clock = Arc::new(ManualClock::new(start));
    let mut channels = Channels::default();
    let mut recorders = Vec::new();
    for kind in ChannelKind::ALL {
        let rec = Arc::new(RecordingChannel::new(kind));
        recorders.push(rec.clone());
        channels.insert(rec as Arc<dyn Channel>);
    }
    let scheduler = Scheduler {
        store: store.clone(),
        channels,
        renderer: Arc::new(Renderer::new(&config).map_err(|e| ScenarioError(e.to_string()))?),
        delivery: config.delivery.clone(),
        metrics: Arc::new(Metrics::new()),
        clock: clock.clone(),
        wake: Default::default(),
        limits: crate::schedule::limiters(&config),
        pauses: Default::default(),
        windows: Default::default(),
        at_rest: Arc::new(crate::trust::seal::AtRest::new(&config.code_key)),
        outcomes: crate::schedule::outcomes(store.clone()),
    };
    let planner = ingest::planner(config.clone());

    let mut pending_events = events.into_iter().peekable();
    let mut event_ids = Vec::new();
    let mut now = start;
    loop {
        // Everything due now: arrivals first, then deliveries.
        let mut arrivals = Vec::new();
        while let Some((at, _, _)) = pending_events.peek() {
            if *at > now {
                break;
            }
            if let Some((_, line, input)) = pending_events.next() {
                arrivals.push((line, input));
            }
        }
        for (line, input) in arrivals {
            let event = ingest::validate(input, &config, now)
                .map_err(|e| ScenarioError(format!("line {line}: event: {}", e.message)))?;
            let outcome = store
                .ingest(vec![event], planner.clone())
                .await
                .map_err(|e| ScenarioError(format!("store: {e}")))?;
            match outcome.into_iter().next() {
                Some(IngestOutcome::Accepted { id, .. }) => event_ids.push(id),
                Some(IngestOutcome::Duplicate { .. }) => {}
                Some(IngestOutcome::Rejected(r)) => {
                    return Err(ScenarioError(format!("line {line}: event: {}", r.message)));
                }
                None => {}
            }
        }
        while scheduler
            .run_once(now)
            .await
            .map_err(|e| ScenarioError(format!("store: {e}")))?
            > 0
        {}

        let next_event = pending_events.peek().map(|(at, _, _)| *at);
        let next_due = store
            .next_due(None)
            .await
            .map_err(|e| ScenarioError(format!("store: {e}")))?;
        let next = match (next_event, next_due) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        if next > until {
            break;
        }
        now = next.max(now);
        clock.set(now);
    }

    let sent: std::collections::HashMap<String, crate::channels::Outgoing> = recorders
        .iter()
        .flat_map(|r| r.sent())
        .map(|o| (o.notification.id.clone(), o))
        .collect();
    let mut fates: Vec<(DateTime<Utc>, usize, Notification)> = Vec::new();
    for (i, id) in event_ids.iter().enumerate() {
        if let Some((_, notes)) = store
            .event(id)
            .await
            .map_err(|e| ScenarioError(format!("store: {e}")))?
        {
            for n in notes {
                let at = if n.state == State::Sent {
                    n.sent_at.unwrap_or(n.decided_at)
                } else {
                    n.decided_at
                };
                fates.push((at, i, n));
            }
        }
    }
    fates.sort_by(|a, b| {
        (a.0, a.1, &a.2.contact, &a.2.uri).cmp(&(b.0, b.1, &b.2.contact, &b.2.uri))
    });
    let lines = fates
        .iter()
        .map(|(at, _, n)| {
            let out = sent.get(&n.id);
            let (text, subject) = match (out, n.channel) {
                (Some(o), ChannelKind::Email | ChannelKind::Letter) => (
                    Some(o.rendered.body.clone()),
                    Some(o.rendered.subject.clone()),
                ),
                (Some(o), _) => (
                    Some(
                        o.rendered
                            .short
                            .clone()
                            .unwrap_or_else(|| o.rendered.subject.clone()),
                    ),
                    None,
                ),
                (None, _) => (None, None),
            };
            let fate = Fate {
                at: fmt_time(*at),
                event: n.event.as_deref(),
                type_name: &n.type_name,
                account: &n.account,
                contact: &n.contact,
                destination: &n.uri,
                state: n.state,
                reason: n.reason,
                text,
                subject,
            };
            serde_json::to_string(&fate).unwrap_or_default()
        })
        .collect();
    Ok(lines)
}

async fn load_account(store: &dyn Store, a: &ScenarioAccount) -> Result<(), String> {
    let tz = |v: &Option<String>, what: &str| {
        v.as_deref()
            .map(|s| {
                s.parse::<TimeZoneName>()
                    .map_err(|e| format!("{what}: {e}"))
            })
            .transpose()
    };
    let account = Account {
        id: a.id.clone(),
        name: a.name.clone().unwrap_or_else(|| a.id.clone()),
        timezone: tz(&a.timezone, "timezone")?,
        security_level: a
            .security_level
            .as_deref()
            .map(|s| {
                s.parse::<SecurityLevel>()
                    .map_err(|e| format!("security_level: {e}"))
            })
            .transpose()?
            .unwrap_or_default(),
        paranoid: a.paranoid,
        defaults: a.defaults.clone(),
        prefixes: Vec::new(),
        postal_address: None,
    };
    store
        .put_account(&account)
        .await
        .map_err(|e| e.to_string())?;
    for c in &a.contact {
        let mut prefs: Preferences = toml::Value::Table(c.prefs.clone())
            .try_into()
            .map_err(|e| format!("contact {}: {e}", c.id))?;
        let contact = Contact {
            id: c.id.clone(),
            name: c.name.clone().unwrap_or_else(|| c.id.clone()),
            timezone: prefs.timezone.take(),
            prefs,
        };
        store
            .put_contact(&account.id, &contact)
            .await
            .map_err(|e| e.to_string())?;
        for d in &c.destination {
            let mut d = d.clone();
            let uri = match d.remove("uri") {
                Some(toml::Value::String(s)) => s
                    .parse::<DestinationUri>()
                    .map_err(|e| format!("destination.uri: {e}"))?,
                _ => return Err(format!("contact {}: destination needs a uri", c.id)),
            };
            let prefs: Preferences = toml::Value::Table(d)
                .try_into()
                .map_err(|e| format!("destination: {e}"))?;
            let dest = Destination {
                id: crate::store::new_id(),
                contact: c.id.clone(),
                uri,
                prefs,
                verified: true,
                unhealthy_since: None,
            };
            store
                .add_destination(&account.id, &dest, None, None)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_scenario_names_the_line() {
        let e = simulate_text("start = \"2026-03-22T02:55:00Z\"\nuntil = 5\n", "s.toml")
            .await
            .unwrap_err();
        assert!(e.0.contains("line 2"), "{e}");
        let e = simulate_text("start = 2026-03-22T02:55:00Z\nuntil = 2026-03-23T00:00:00Z\n\n[[event]]\nat = 2026-03-22T03:00:00Z\ntype = \"nope\"\naccount = \"A1\"\n", "s.toml")
            .await
            .unwrap_err();
        assert!(e.0.contains("line 4") && e.0.contains("type"), "{e}");
    }

    mod properties {
        use super::super::simulate_text;
        use proptest::prelude::*;

        const TYPES: &str = r#"
start = "2026-03-23T00:00:00Z"
until = "2026-03-27T00:00:00Z"

[types."line.down"]
hold = "3m"
expires_after = "12h"
short = "down {{ service }}"
[types."line.up"]
cancels = ["line.down"]
hold = "3m"
short = "up {{ service }}"
[types."appointment.booked"]
supersedes = true
short = "booked {{ key }}"
[types."notice"]
short = "notice"

[[account]]
id = "A1"
timezone = "Europe/London"
  [[account.contact]]
  id = "alice"
    [[account.contact.destination]]
    uri = "sms:+447700900001"
    window = "Mo-Fr 08:00-20:00"
    [[account.contact.destination]]
    uri = "mailto:alice@example.com"
"#;

        fn run(text: &str) -> Vec<String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(simulate_text(text, "property"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"))
        }

        fn event(
            id: &str,
            at_s: i64,
            type_name: &str,
            key: &str,
            occurred_s: Option<i64>,
        ) -> String {
            let base: chrono::DateTime<chrono::Utc> = "2026-03-23T00:00:00Z".parse().unwrap();
            let at = base + chrono::Duration::seconds(at_s);
            let occurred = occurred_s
                .map(|s| {
                    format!(
                        "occurred_at = \"{}\"\n",
                        crate::model::fmt_time(base + chrono::Duration::seconds(s))
                    )
                })
                .unwrap_or_default();
            format!(
                "\n[[event]]\nat = \"{}\"\nid = \"{id}\"\ntype = \"{type_name}\"\naccount = \"A1\"\nkey = \"{key}\"\nservice = \"{key}\"\n{occurred}",
                crate::model::fmt_time(at)
            )
        }

        fn events() -> impl Strategy<Value = Vec<(i64, &'static str, &'static str)>> {
            prop::collection::vec(
                (
                    0i64..(3 * 24 * 60),
                    prop::sample::select(vec![
                        "line.down",
                        "line.up",
                        "appointment.booked",
                        "notice",
                    ]),
                    prop::sample::select(vec!["L1", "L2"]),
                ),
                1..12,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]

            /// Posting any event a second time, at any later moment, never
            /// changes what anyone is told.
            #[test]
            fn posting_twice_never_changes_the_outcome(evs in events(), delays in prop::collection::vec(1i64..600, 12)) {
                let mut once = TYPES.to_string();
                let mut twice = TYPES.to_string();
                for (i, (at, t, key)) in evs.iter().enumerate() {
                    let e = event(&format!("e{i}"), at * 60, t, key, None);
                    once.push_str(&e);
                    twice.push_str(&e);
                    twice.push_str(&event(&format!("e{i}"), (at + delays[i]) * 60, t, key, None));
                }
                prop_assert_eq!(run(&once), run(&twice));
            }

            /// A drop and a reconnect inside the hold: whatever the arrival
            /// jitter (the reconnect may even reach kci first), every notice
            /// has the fate it has when both arrive as they happen, and
            /// nobody is told.
            #[test]
            fn pairing_commutes_with_arrival_order(
                start in 0i64..(3 * 24 * 3600 - 600),
                (gap, up_late) in (1i64..170).prop_flat_map(|gap| (Just(gap), 0i64..(180 - gap))),
                down_late in 0i64..180,
            ) {
                let fates = |down_at: i64, up_at: i64| {
                    let mut text = TYPES.to_string();
                    text.push_str(&event("down", down_at, "line.down", "L1", Some(start)));
                    text.push_str(&event("up", up_at, "line.up", "L1", Some(start + gap)));
                    let mut out: Vec<(String, String, String)> = run(&text)
                        .iter()
                        .map(|l| {
                            let v: serde_json::Value = serde_json::from_str(l).unwrap();
                            let f = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                            (f("event"), f("destination"), f("state"))
                        })
                        .collect();
                    out.sort();
                    out
                };
                let in_order = fates(start, start + gap);
                let jittered = fates(start + down_late, start + gap + up_late);
                prop_assert_eq!(in_order.len(), 4);
                prop_assert!(in_order.iter().all(|(_, _, s)| s != "sent"), "{:?}", in_order);
                prop_assert_eq!(jittered, in_order);
            }
        }
    }
}
