//! Prometheus metrics: accepted events, notifications by state and reason,
//! deliveries and their latency per channel, provider errors, and the
//! current backlog per state.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every limit kci counts, as `(what, by)`: made at 0 when kci starts, so
/// the first refusal is an increase `rate()` sees (a counter that appears
/// at 1 shows none).
pub const LIMITS: [(&str, &str); 14] = [
    ("api", "network"),
    ("api", "source"),
    ("api", "token"),
    ("api", "token_cert"),
    ("api", "token_network"),
    ("key_submissions", "address"),
    ("key_submissions", "source"),
    ("staff_logins", "name"),
    ("staff_logins", "source"),
    ("verification_codes", "destination"),
    ("veto_links", "source"),
    ("wrong_codes", "token"),
    ("wrong_recovery_links", "source"),
    ("wrong_call_links", "source"),
];

pub struct Metrics {
    registry: Registry,
    pub events_accepted: Counter,
    pub events_rejected: Family<Labels, Counter>,
    pub decisions: Family<Labels, Counter>,
    pub deliveries: Family<Labels, Counter>,
    pub delivery_seconds: Family<Labels, Histogram>,
    /// Deliveries each channel may have in flight, as its provider allows.
    pub delivery_window: Family<Labels, Gauge>,
    pub notifications: Family<Labels, Gauge>,
    pub rate_backlog: Family<Labels, Gauge>,
    pub receipts: Family<Labels, Counter>,
    pub unhealthy_destinations: Counter,
    /// The backlog, read from the store at each scrape.
    queue_oldest_due_age: Gauge,
    changes_pending: Gauge,
    incidents_open: Gauge,
    destinations_unhealthy: Gauge,
    /// Requests an outsider could repeat, refused by a limit: key
    /// submissions (by address or source), wrong codes (by token), code
    /// renewals (by destination).
    pub limited: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kci");
        let events_accepted = Counter::default();
        registry.register(
            "events_accepted",
            "Events stored durably and answered 202",
            events_accepted.clone(),
        );
        let events_rejected = Family::<Labels, Counter>::default();
        registry.register(
            "events_rejected",
            "Events refused, by error code",
            events_rejected.clone(),
        );
        let decisions = Family::<Labels, Counter>::default();
        registry.register(
            "notification_decisions",
            "Fates decided for notifications, by state and reason",
            decisions.clone(),
        );
        let deliveries = Family::<Labels, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts by channel and outcome (sent, transient, permanent) and provider reason",
            deliveries.clone(),
        );
        let delivery_seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "delivery_seconds",
            "Time one delivery attempt took, by channel",
            delivery_seconds.clone(),
        );
        let delivery_window = Family::<Labels, Gauge>::default();
        registry.register(
            "delivery_window",
            "Deliveries a channel may have in flight: halved when its provider asks to slow down (429), widened by each delivery it accepts, at most [delivery] concurrency",
            delivery_window.clone(),
        );
        let notifications = Family::<Labels, Gauge>::default();
        registry.register(
            "notifications",
            "Notifications currently in each state",
            notifications.clone(),
        );
        let rate_backlog = Family::<Labels, Gauge>::default();
        registry.register(
            "rate_backlog",
            "Notifications queued behind a channel's provider rate limit on this node",
            rate_backlog.clone(),
        );
        let receipts = Family::<Labels, Counter>::default();
        registry.register(
            "receipts",
            "Providers' later reports on sent messages, by channel and status",
            receipts.clone(),
        );
        let unhealthy_destinations = Counter::default();
        registry.register(
            "destinations_marked_unhealthy",
            "Destinations marked unhealthy after permanent failures in a row",
            unhealthy_destinations.clone(),
        );
        let queue_oldest_due_age = Gauge::default();
        registry.register(
            "queue_oldest_due_age_seconds",
            "How long the oldest pending notification is past its due time (0: none overdue)",
            queue_oldest_due_age.clone(),
        );
        let changes_pending = Gauge::default();
        registry.register(
            "changes_pending",
            "Protected changes waiting for proof, cooling-off or approval",
            changes_pending.clone(),
        );
        let incidents_open = Gauge::default();
        registry.register(
            "incidents_open",
            "Incidents open for staff (vetoes, refused approvals, failed call verifications, locked recoveries)",
            incidents_open.clone(),
        );
        let destinations_unhealthy = Gauge::default();
        registry.register(
            "destinations_unhealthy",
            "Destinations currently marked unhealthy",
            destinations_unhealthy.clone(),
        );
        let limited = Family::<Labels, Counter>::default();
        registry.register(
            "limited",
            "Requests refused by a limit on what outsiders can make kci do, by what and by which key (address, source, token, destination)",
            limited.clone(),
        );
        for (what, by) in LIMITS {
            drop(limited.get_or_create(&vec![("what", what.to_string()), ("by", by.to_string())]));
        }
        Self {
            registry,
            limited,
            receipts,
            unhealthy_destinations,
            queue_oldest_due_age,
            changes_pending,
            incidents_open,
            destinations_unhealthy,
            events_accepted,
            events_rejected,
            decisions,
            deliveries,
            delivery_seconds,
            delivery_window,
            notifications,
            rate_backlog,
        }
    }

    /// With the store's write times (`kci_store_write_seconds`, by
    /// durability) and the SQLite writer's folds of its log
    /// (`kci_store_fold_seconds`), as `store` keeps them.
    pub fn with_store(mut self, store: &dyn crate::store::Store) -> Self {
        let times = store.write_times();
        let store_writes: Family<Labels, Histogram> = times.family();
        self.registry.register(
            "store_write_seconds",
            "Time a store write took from being asked for to being answered (waiting for the writer or a connection, the work, the commit), by durability: durable writes wait for the disk",
            store_writes,
        );
        let folds: Histogram = times.folds();
        self.registry.register(
            "store_fold_seconds",
            "Time the SQLite writer took to fold its write-ahead log into the database, inside the commit that made the log 1,000 pages long and at each truncation of the log; writes queued meanwhile wait for it (none on PostgreSQL)",
            folds,
        );
        self
    }

    /// Counts an event refused, by its error code.
    pub fn event_rejected(&self, code: &str) {
        self.events_rejected
            .get_or_create(&vec![("code", code.to_string())])
            .inc();
    }

    /// Counts a request refused by the limit on `what`, kept `by` a key.
    pub fn limit_hit(&self, what: &'static str, by: &'static str) {
        debug_assert!(
            LIMITS.contains(&(what, by)),
            "({what}, {by}) is missing from metrics::LIMITS"
        );
        self.limited
            .get_or_create(&vec![("what", what.to_string()), ("by", by.to_string())])
            .inc();
    }

    pub fn decided(&self, state: crate::model::State, reason: Option<crate::model::Reason>) {
        self.decisions
            .get_or_create(&vec![
                ("state", state.as_str().to_string()),
                (
                    "reason",
                    reason.map(|r| r.as_str()).unwrap_or("").to_string(),
                ),
            ])
            .inc();
    }

    /// The notifications gauge from the store's count by state. A state the
    /// store no longer has any of reads 0: the count leaves it out, and a
    /// gauge left alone would show its last count for ever (a drained
    /// queue still "pending").
    pub fn set_notifications(&self, counts: &[(crate::model::State, i64)]) {
        for state in crate::model::State::ALL {
            let n = counts
                .iter()
                .filter(|(s, _)| *s == state)
                .map(|(_, n)| *n)
                .sum();
            self.notifications
                .get_or_create(&vec![("state", state.as_str().to_string())])
                .set(n);
        }
    }

    /// The backlog gauges from the store's reading at `now`.
    pub fn set_backlog(&self, b: &crate::store::Backlog, now: chrono::DateTime<chrono::Utc>) {
        let age = b
            .oldest_due
            .map(|due| (now - due).num_seconds().max(0))
            .unwrap_or(0);
        self.queue_oldest_due_age.set(age);
        self.changes_pending.set(b.changes_pending);
        self.incidents_open.set(b.incidents_open);
        self.destinations_unhealthy.set(b.destinations_unhealthy);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
impl Metrics {
    /// The value of `series` (its name and labels as rendered, e.g.
    /// `kci_store_fold_seconds_count`) in the text now; panics if absent.
    pub(crate) fn value_of(&self, series: &str) -> u64 {
        let text = self.render();
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::State;

    #[test]
    fn a_state_that_empties_reads_zero() {
        let m = Metrics::new();
        m.set_notifications(&[(State::Pending, 22), (State::Sent, 278)]);
        assert!(
            m.render()
                .contains("kci_notifications{state=\"pending\"} 22")
        );
        m.set_notifications(&[(State::Sent, 300)]);
        let text = m.render();
        assert!(
            text.contains("kci_notifications{state=\"pending\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kci_notifications{state=\"sent\"} 300"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_store_s_writes_are_timed_by_durability() {
        use crate::store::{QueueStore, Store, sqlite::SqliteStore};
        let store = SqliteStore::open(":memory:").unwrap();
        store.migrate().await.unwrap();
        let m = Metrics::new().with_store(&store);
        let count = |d: &str| {
            m.value_of(&format!(
                "kci_store_write_seconds_count{{durability=\"{d}\"}}"
            ))
        };
        let (durable, relaxed) = (count("durable"), count("relaxed"));
        assert!(
            durable >= 1,
            "the migration is a durable write: {}",
            m.render()
        );
        let now = chrono::Utc::now();
        store.claim_due(now, now, 10).await.unwrap();
        assert_eq!(count("relaxed"), relaxed + 1, "a claim is relaxed");
        assert_eq!(count("durable"), durable);
        let text = m.render();
        let first = "kci_store_write_seconds_bucket{le=\"0.0001\",durability=\"durable\"}";
        assert!(text.contains(first), "buckets from 0.1 ms: {text}");
    }

    #[test]
    fn every_limit_reads_zero_before_its_first_refusal() {
        let text = Metrics::new().render();
        for (what, by) in LIMITS {
            let line = format!("kci_limited_total{{what=\"{what}\",by=\"{by}\"}} 0");
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn the_queue_age_counts_only_what_is_overdue() {
        use chrono::{TimeZone, Utc};
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap();
        let m = Metrics::new();
        let cases = [
            (None, 0),
            (Some(now - chrono::Duration::seconds(90)), 90),
            (Some(now + chrono::Duration::hours(8)), 0),
        ];
        for (oldest_due, age) in cases {
            let b = crate::store::Backlog {
                oldest_due,
                changes_pending: 2,
                incidents_open: 1,
                destinations_unhealthy: 3,
            };
            m.set_backlog(&b, now);
            let text = m.render();
            assert!(
                text.contains(&format!("kci_queue_oldest_due_age_seconds {age}\n")),
                "{oldest_due:?}: {text}"
            );
            assert!(text.contains("kci_changes_pending 2\n"), "{text}");
            assert!(text.contains("kci_incidents_open 1\n"), "{text}");
            assert!(text.contains("kci_destinations_unhealthy 3\n"), "{text}");
        }
    }
}
