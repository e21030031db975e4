//! Ingest: an event as posted by a source system (DESIGN.md §3) is checked
//! field by field and normalised into a [`model::Event`](crate::model::Event).
//! Validation is pure; the handlers in `web::api::events` store the result.

pub mod coalesce;

use crate::config::Config;
use crate::model::AccountView;
use crate::model::{Event, Priority, check_id, parse_time};
use crate::plan::{self, Seen};
use crate::store::{Planner, Rejection};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::sync::Arc;

/// The JSON body of `POST /v1/events` (one line of a batch).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"id": "evt-1", "type": "notice", "account": "A1",
    "data": {"subject": "Your order shipped", "text": "Order 42 is on its way."}})))]
pub struct EventInput {
    /// The source system's id for the event; the same id again is a
    /// duplicate (absent: kci makes one, and a retry is a new event).
    pub id: Option<String>,
    /// An event type the config defines (`[types.NAME]`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// The account it concerns.
    pub account: String,
    /// The service it concerns (preferences can select by service).
    pub service: Option<String>,
    /// Only this contact of the account (absent: every contact).
    pub contact: Option<String>,
    /// Correlation key for pairing, superseding and flap counting.
    pub key: Option<String>,
    #[schema(value_type = Option<crate::model::Priority>)]
    pub priority: Option<String>,
    pub category: Option<String>,
    #[schema(format = DateTime)]
    pub occurred_at: Option<String>,
    /// Not to go out before this time.
    #[schema(format = DateTime)]
    pub not_before: Option<String>,
    /// Pointless after this time: not sent after it.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Values the type's templates use.
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    /// A short text (SMS-sized), instead of the type's template.
    pub short: Option<String>,
    pub subject: Option<String>,
    /// A long text (mail), instead of the type's template.
    pub body: Option<String>,
}

/// A field that failed validation (becomes a 422).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub code: &'static str,
    pub message: String,
}

fn bad(code: &'static str, field: &str, msg: impl std::fmt::Display) -> FieldError {
    FieldError {
        code,
        message: format!("{field}: {msg}"),
    }
}

/// Longest literal text accepted (a long mail body is fine; a novel is not).
const MAX_TEXT: usize = 64 * 1024;

/// Parses one event body. `Err` carries (HTTP status, error): 400 for
/// malformed JSON, 422 for well-formed JSON with bad fields.
pub fn parse(bytes: &[u8]) -> Result<EventInput, (u16, FieldError)> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => (422, bad("invalid_field", "body", "must be a JSON object")),
                Err(e) => (
                    400,
                    FieldError {
                        code: "malformed_json",
                        message: format!("the body is not valid JSON: {e}"),
                    },
                ),
            },
        );
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let input: EventInput = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => (
                400,
                FieldError {
                    code: "malformed_json",
                    message: format!("the body is not valid JSON: {inner}"),
                },
            ),
            Category::Data => {
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                (422, bad("invalid_field", &field, inner))
            }
        }
    })?;
    // One event per request: whatever follows it (a second object, an
    // NDJSON batch posted here by mistake) is refused, not dropped.
    de.end().map_err(|e| {
        (
            400,
            FieldError {
                code: "malformed_json",
                message: format!(
                    "the body holds more than one JSON value ({e}); post one event, or NDJSON to /v1/events/batch"
                ),
            },
        )
    })?;
    Ok(input)
}

/// The most events one batch may carry. A batch is answered line by line,
/// so its answer grows with its lines, not with its bytes: this bounds
/// both (a megabyte of one-character lines would otherwise cost a
/// 60-megabyte answer).
pub const MAX_BATCH_LINES: usize = 1000;

/// One line of an NDJSON batch: its line number and the event, or why not.
pub type BatchLine = (usize, Result<Event, (u16, FieldError)>);

/// Reads an NDJSON batch: each non-blank line parsed and validated on its
/// own. `Err` when there are more than [`MAX_BATCH_LINES`] events (found
/// as soon as line [`MAX_BATCH_LINES`]` + 1` is: the rest is not read).
pub fn parse_batch(
    body: &[u8],
    config: &Config,
    now: DateTime<Utc>,
) -> Result<Vec<BatchLine>, TooManyLines> {
    let lines = body
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(|b| b.is_ascii_whitespace()));
    let mut out = Vec::new();
    for (n, line) in lines {
        if out.len() == MAX_BATCH_LINES {
            return Err(TooManyLines);
        }
        let event =
            parse(line).and_then(|input| validate(input, config, now).map_err(|e| (422, e)));
        out.push((n, event));
    }
    Ok(out)
}

/// A batch of more than [`MAX_BATCH_LINES`] events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch has more than {MAX_BATCH_LINES} events; split it (nothing was stored)")]
pub struct TooManyLines;

/// Normalises a parsed event against the config: type defaults, times, key.
pub fn validate(
    input: EventInput,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<Event, FieldError> {
    let etype = config.types.get(&input.type_name).ok_or_else(|| {
        bad(
            "unknown_type",
            "type",
            format!("`{}` is not a configured event type", input.type_name),
        )
    })?;
    check_id(&input.account).map_err(|e| bad("invalid_field", "account", e))?;
    let id = match input.id {
        Some(id) => {
            check_id(&id).map_err(|e| bad("invalid_field", "id", e))?;
            id
        }
        None => crate::store::new_id(),
    };
    for (field, v) in [
        ("service", &input.service),
        ("contact", &input.contact),
        ("key", &input.key),
    ] {
        if let Some(v) = v {
            check_id(v).map_err(|e| bad("invalid_field", field, e))?;
        }
    }
    let priority = match &input.priority {
        Some(p) => p
            .parse::<Priority>()
            .map_err(|e| bad("invalid_field", "priority", e))?,
        None => etype.priority,
    };
    let time = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| parse_time(s).map_err(|e| bad("invalid_field", field, e)))
            .transpose()
    };
    let occurred_at = time("occurred_at", &input.occurred_at)?.unwrap_or(now);
    let not_before = time("not_before", &input.not_before)?;
    let expires_at = time("expires_at", &input.expires_at)?
        .or_else(|| etype.expires_after.map(|d| occurred_at + d.chrono()));
    let data = match input.data {
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err(bad("invalid_field", "data", "must be a JSON object")),
    };
    for (field, v) in [
        ("short", &input.short),
        ("subject", &input.subject),
        ("body", &input.body),
    ] {
        if v.as_ref().is_some_and(|s| s.len() > MAX_TEXT) {
            return Err(bad(
                "invalid_field",
                field,
                format!("longer than {MAX_TEXT} bytes"),
            ));
        }
    }
    let category = match input.category {
        Some(c) => {
            check_id(&c).map_err(|e| bad("invalid_field", "category", e))?;
            c
        }
        None => etype.category_for(&input.type_name).to_string(),
    };
    let key = input
        .key
        .or_else(|| input.service.clone())
        .unwrap_or_else(|| id.clone());
    Ok(Event {
        id,
        type_name: input.type_name,
        account: input.account,
        service: input.service,
        contact: input.contact,
        key,
        priority,
        category,
        occurred_at,
        not_before,
        expires_at,
        received_at: now,
        data,
        short: input.short,
        subject: input.subject,
        body: input.body,
    })
}

/// The planner the store calls inside its ingest transaction: the policy
/// of [`plan::plan`] as of the event's arrival, after refusing an event
/// that names a contact the account does not have.
pub struct PolicyPlanner {
    config: Arc<Config>,
    /// Every type some type's planning looks up by key: the union of
    /// [`related_of`] over the configured types.
    keyed: std::collections::HashSet<String>,
}

/// The types whose notices and events of the same key planning an event
/// of `type_name` must see: its pairing partners (either way), itself
/// when it supersedes, its flap family and the flap summary.
fn related_of(config: &Config, type_name: &str) -> Vec<String> {
    let Some(t) = config.types.get(type_name) else {
        return Vec::new();
    };
    let mut types = t.cancels.clone();
    types.extend(plan::cancelled_by(config, type_name));
    if t.supersedes {
        types.push(type_name.to_string());
    }
    if let Some((_, family)) = plan::flap::rule(config, type_name) {
        types.extend(family);
        types.push(plan::flap::SUMMARY_TYPE.to_string());
    }
    types.sort();
    types.dedup();
    types
}

impl Planner for PolicyPlanner {
    fn related_types(&self, event: &Event) -> Vec<String> {
        related_of(&self.config, &event.type_name)
    }

    fn keyed(&self, event: &Event) -> bool {
        self.keyed.contains(&event.type_name)
    }

    fn flap_window(&self, event: &Event) -> Option<(Vec<String>, chrono::Duration)> {
        plan::flap::rule(&self.config, &event.type_name)
            .map(|(flap, family)| (family, flap.within.chrono()))
    }

    fn loads_needed(
        &self,
        event: &Event,
        view: &AccountView,
    ) -> Vec<(String, Option<chrono::Duration>)> {
        let mut out = Vec::new();
        for cv in &view.contacts {
            if event.contact.as_deref().is_some_and(|c| c != cv.contact.id) {
                continue;
            }
            for d in &cv.destinations {
                let eff =
                    plan::effective(&d.prefs, &cv.contact, &view.account, &self.config.defaults);
                if eff.digest.is_some() || eff.max.is_some() {
                    out.push((d.id.clone(), eff.max.map(|m| m.per.chrono())));
                }
            }
        }
        out
    }

    fn plan(
        &self,
        event: &Event,
        view: &AccountView,
        seen: &Seen,
    ) -> Result<crate::model::Planned, Rejection> {
        if let Some(c) = &event.contact
            && !view.contacts.iter().any(|cv| &cv.contact.id == c)
        {
            return Err(Rejection {
                code: "unknown_contact",
                message: format!(
                    "contact: `{c}` is not a contact of account `{}`",
                    event.account
                ),
            });
        }
        Ok(plan::plan(event, view, &self.config, seen, event.received_at).planned(event))
    }
}

pub fn planner(config: Arc<Config>) -> Arc<dyn Planner> {
    let keyed = config
        .types
        .keys()
        .flat_map(|t| related_of(&config, t))
        .collect();
    Arc::new(PolicyPlanner { config, keyed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "[types.\"line.down\"]\npriority = \"high\"\nexpires_after = \"12h\"\n[types.\"appointment.booked\"]\n",
            "t",
        )
        .unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2026-03-22T03:00:00Z".parse().unwrap()
    }

    fn check(body: &str) -> Result<Event, (u16, FieldError)> {
        let input = parse(body.as_bytes())?;
        validate(input, &config(), now()).map_err(|e| (422, e))
    }

    #[test]
    fn normalises_defaults() {
        let ev = check(r#"{"type":"line.down","account":"A1","service":"L1"}"#).unwrap();
        assert_eq!(ev.priority, Priority::High);
        assert_eq!(ev.category, "line");
        assert_eq!(ev.key, "L1");
        assert_eq!(ev.occurred_at, now());
        assert_eq!(ev.expires_at, Some("2026-03-22T15:00:00Z".parse().unwrap()));
        let ev =
            check(r#"{"id":"e9","type":"appointment.booked","account":"A1","priority":"low"}"#)
                .unwrap();
        assert_eq!((ev.key.as_str(), ev.priority), ("e9", Priority::Low));
    }

    #[test]
    fn a_second_event_behind_the_first_is_refused_not_dropped() {
        let one = r#"{"type":"line.down","account":"A1"}"#;
        for body in [
            format!("{one}{one}"),
            format!("{one}\n{one}\n"),
            format!("{one} x"),
        ] {
            let Err((status, e)) = parse(body.as_bytes()) else {
                panic!("refused: {body}")
            };
            assert_eq!((status, e.code), (400, "malformed_json"), "{body}");
            assert!(
                e.message.contains("more than one JSON value"),
                "{}",
                e.message
            );
        }
        // Whitespace after the one event is fine.
        assert!(parse(format!("{one}\r\n  ").as_bytes()).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"type":"line.down","#,
                400,
                "malformed_json",
                "body is not valid JSON",
            ),
            (r#"[1,2]"#, 422, "invalid_field", "body:"),
            (
                r#"{"type":"nope","account":"A1"}"#,
                422,
                "unknown_type",
                "type:",
            ),
            (r#"{"type":"line.down"}"#, 422, "invalid_field", "account"),
            (
                r#"{"type":"line.down","account":"A1","priority":"meh"}"#,
                422,
                "invalid_field",
                "priority:",
            ),
            (
                r#"{"type":"line.down","account":"A1","occurred_at":"yesterday"}"#,
                422,
                "invalid_field",
                "occurred_at:",
            ),
            (
                r#"{"type":"line.down","account":"A1","expires_at":5}"#,
                422,
                "invalid_field",
                "expires_at:",
            ),
            (
                r#"{"type":"line.down","account":"A1","data":[1]}"#,
                422,
                "invalid_field",
                "data:",
            ),
            (
                r#"{"type":"line.down","account":"A1","colour":"red"}"#,
                422,
                "invalid_field",
                "colour",
            ),
            (
                r#"{"type":"line.down","account":"A 1"}"#,
                422,
                "invalid_field",
                "account:",
            ),
        ];
        for (body, status, code, needle) in cases {
            let (s, e) = check(body).unwrap_err();
            assert_eq!((s, e.code), (status, code), "{body}: {e:?}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    /// An event is indexed by key exactly when some type's planning looks
    /// its type up: a pairing partner either way, a type that supersedes,
    /// a flap family and its summary.
    #[test]
    fn only_events_some_planning_looks_up_are_keyed() {
        let config = Config::parse(
            r#"
[types."line.down"]
flap = { threshold = 4, within = "1h" }
[types."line.up"]
cancels = ["line.down"]
[types."ont.down"]
[types."ont.up"]
cancels = ["ont.down"]
[types."appointment.booked"]
supersedes = true
[types."order.accepted"]
"#,
            "t",
        )
        .unwrap();
        let config = Arc::new(config);
        let planner = planner(config.clone());
        let body = r#"{"type":"order.accepted","account":"A1","service":"L1"}"#;
        let event = validate(parse(body.as_bytes()).unwrap(), &config, now()).unwrap();
        let cases = [
            ("line.down", true),
            ("line.up", true),
            ("ont.down", true), // ont.up cancels it
            ("ont.up", true),   // ont.down's planning looks for what cancels it
            ("appointment.booked", true),
            (plan::flap::SUMMARY_TYPE, true),
            ("order.accepted", false),
            ("never.configured", false),
        ];
        for (type_name, keyed) in cases {
            let event = Event {
                type_name: type_name.into(),
                ..event.clone()
            };
            assert_eq!(planner.keyed(&event), keyed, "{type_name}");
        }
    }
}
