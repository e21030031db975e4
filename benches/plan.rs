//! `plan` alone, on one core: decisions per second for an event fanning out
//! to 3 destinations with windows in two zones, and a pairing partner with
//! notices pending at two of them.
//!
//!     cargo bench --bench plan

use chrono::{DateTime, Duration, Utc};
use kci::config::Config;
use kci::model::Preferences;
use kci::model::{
    Account, AccountView, Contact, ContactView, Destination, Event, Priority, SecurityLevel, State,
};
use kci::plan::{RelatedNotice, plan};
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let config = Config::parse(
        r#"
[types."line.down"]
hold = "3m"
expires_after = "12h"
[types."line.up"]
cancels = ["line.down"]
hold = "3m"
"#,
        "bench",
    )
    .unwrap();
    let dest = |id: &str, uri: &str, window: Option<&str>, tz: Option<&str>| Destination {
        id: id.into(),
        contact: "alice".into(),
        uri: uri.parse().unwrap(),
        prefs: Preferences {
            window: window.map(|w| w.parse().unwrap()),
            timezone: tz.map(|t| t.parse().unwrap()),
            ..Default::default()
        },
        verified: true,
        unhealthy_since: None,
    };
    let dir = AccountView {
        account: Account {
            id: "A1".into(),
            name: "Alice Ltd".into(),
            timezone: Some("Europe/London".parse().unwrap()),
            security_level: SecurityLevel::Standard,
            paranoid: false,
            defaults: Preferences::default(),
            prefixes: Vec::new(),
            postal_address: None,
        },
        contacts: vec![ContactView {
            contact: Contact {
                id: "alice".into(),
                name: "Alice".into(),
                timezone: None,
                prefs: Default::default(),
            },
            destinations: vec![
                dest(
                    "d-sms",
                    "sms:+447700900001",
                    Some("Mo-Fr 08:00-20:00"),
                    None,
                ),
                dest("d-mail", "mailto:alice@example.com", None, None),
                dest(
                    "d-hook",
                    "https://hooks.example.com/kci",
                    Some("Mo-Su 07:00-23:00"),
                    Some("America/New_York"),
                ),
            ],
        }],
    };
    let t0: DateTime<Utc> = "2026-03-24T03:01:00Z".parse().unwrap();
    let event = |i: i64| Event {
        id: format!("up-{i}"),
        type_name: "line.up".into(),
        account: "A1".into(),
        service: Some("L1".into()),
        contact: None,
        key: "L1".into(),
        priority: Priority::Normal,
        category: "line".into(),
        occurred_at: t0 + Duration::minutes(i % 10_000),
        not_before: None,
        expires_at: Some(t0 + Duration::hours(12)),
        received_at: t0 + Duration::minutes(i % 10_000),
        data: Default::default(),
        short: None,
        subject: None,
        body: None,
    };
    let related = |dest: &str| RelatedNotice {
        id: format!("n-{dest}"),
        event: "down-1".into(),
        type_name: "line.down".into(),
        destination: dest.into(),
        state: State::Pending,
        due_at: t0,
        occurred_at: t0 - Duration::minutes(1),
    };
    let pending = vec![related("d-sms"), related("d-mail")];
    let events: Vec<Event> = (0..1024).map(event).collect();
    let seen = kci::plan::Seen {
        related: &pending,
        recent: 0,
        loads: &[],
    };

    // Warm up, then measure for about two seconds.
    for e in &events {
        black_box(plan(e, &dir, &config, &seen, e.received_at));
    }
    let start = Instant::now();
    let mut rounds = 0usize;
    let mut decisions = 0usize;
    while start.elapsed().as_secs_f64() < 2.0 {
        for e in &events {
            let p = plan(
                black_box(e),
                black_box(&dir),
                &config,
                black_box(&seen),
                e.received_at,
            );
            decisions += p.decisions.len();
            black_box(p);
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "plan: {} events × 3 destinations in {secs:.2}s = {:.0} decisions/s ({:.0} events/s) on one core",
        rounds * events.len(),
        decisions as f64 / secs,
        (rounds * events.len()) as f64 / secs
    );
}
