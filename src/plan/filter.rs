//! Filters (DESIGN.md §4.1): verification, category, service, priority. A
//! filtered notice is `suppressed` with the filter as its reason.

use super::Effective;
use crate::model::{Destination, Event, Reason};

/// Why this destination must not get `event`, or `None` if it may.
pub fn check(event: &Event, dest: &Destination, prefs: &Effective) -> Option<Reason> {
    if !dest.verified {
        return Some(Reason::Unverified);
    }
    if dest.unhealthy_since.is_some() {
        return Some(Reason::Unhealthy);
    }
    if let Some(cats) = prefs.categories.filter(|c| !c.is_empty())
        && !cats.contains(&event.category)
    {
        return Some(Reason::Category);
    }
    // An event about no particular service concerns the whole account.
    if let Some(services) = prefs.services.filter(|s| !s.is_empty())
        && let Some(service) = &event.service
        && !services.contains(service)
    {
        return Some(Reason::Service);
    }
    if event.priority < prefs.min_priority {
        return Some(Reason::MinPriority);
    }
    None
}

/// The filter's verdict in words.
pub fn explain(reason: Reason, event: &Event, prefs: &Effective) -> String {
    let list = |l: Option<&[String]>| l.unwrap_or_default().join(", ");
    match reason {
        Reason::Unverified => "the destination is not verified yet".into(),
        Reason::Unhealthy => {
            "the destination failed permanently too often in a row; it gets nothing until verified again"
                .into()
        }
        Reason::Category => format!(
            "category {} is not among {}",
            event.category,
            list(prefs.categories)
        ),
        Reason::Service => format!(
            "service {} is not among {}",
            event.service.as_deref().unwrap_or(""),
            list(prefs.services)
        ),
        Reason::MinPriority => format!(
            "priority {} is below min_priority {}",
            event.priority, prefs.min_priority
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preferences;
    use crate::model::Priority;
    use crate::plan::testkit::event;

    fn as_effective(p: &Preferences) -> Effective<'_> {
        Effective {
            categories: p.categories.as_deref(),
            services: p.services.as_deref(),
            min_priority: p.min_priority.unwrap_or(Priority::Low),
            ..Default::default()
        }
    }

    fn destination(
        verified: bool,
        unhealthy_since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Destination {
        Destination {
            id: "d1".into(),
            contact: "alice".into(),
            uri: "sms:+447700900001".parse().unwrap(),
            prefs: Preferences::default(),
            verified,
            unhealthy_since,
        }
    }

    #[test]
    fn table() {
        let prefs =
            |cats: Option<&[&str]>, services: Option<&[&str]>, min: Option<Priority>| Preferences {
                categories: cats.map(|c| c.iter().map(|s| s.to_string()).collect()),
                services: services.map(|c| c.iter().map(|s| s.to_string()).collect()),
                min_priority: min,
                ..Default::default()
            };
        let ev = event("2026-03-22T03:00:00Z"); // category line, service L1, normal
        let cases: &[(&str, bool, Preferences, Option<Reason>)] = &[
            ("no filters", true, prefs(None, None, None), None),
            (
                "unverified",
                false,
                prefs(None, None, None),
                Some(Reason::Unverified),
            ),
            (
                "category wanted",
                true,
                prefs(Some(&["line", "order"]), None, None),
                None,
            ),
            (
                "category not wanted",
                true,
                prefs(Some(&["order"]), None, None),
                Some(Reason::Category),
            ),
            (
                "empty list means all",
                true,
                prefs(Some(&[]), None, None),
                None,
            ),
            (
                "service wanted",
                true,
                prefs(None, Some(&["L1"]), None),
                None,
            ),
            (
                "other service",
                true,
                prefs(None, Some(&["L2"]), None),
                Some(Reason::Service),
            ),
            (
                "priority high enough",
                true,
                prefs(None, None, Some(Priority::Normal)),
                None,
            ),
            (
                "priority too low",
                true,
                prefs(None, None, Some(Priority::High)),
                Some(Reason::MinPriority),
            ),
        ];
        for (name, verified, p, want) in cases {
            let eff = as_effective(p);
            let dest = destination(*verified, None);
            assert_eq!(check(&ev, &dest, &eff), *want, "{name}");
        }
        // Unhealthy comes after unverified, before any preference.
        let eff = as_effective(&cases[0].2);
        let since = Some(ev.received_at);
        assert_eq!(
            check(&ev, &destination(true, since), &eff),
            Some(Reason::Unhealthy)
        );
        assert_eq!(
            check(&ev, &destination(false, since), &eff),
            Some(Reason::Unverified)
        );
    }

    #[test]
    fn account_wide_event_passes_service_filter() {
        let mut ev = event("2026-03-22T03:00:00Z");
        ev.service = None;
        let p = Preferences {
            services: Some(vec!["L2".into()]),
            ..Default::default()
        };
        assert_eq!(
            check(&ev, &destination(true, None), &as_effective(&p)),
            None
        );
    }
}
