//! The template language kci's texts are written in.

use crate::model::{Event, Notification};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::{Environment, State, Value, context};

/// The template language of event types and SMS gateway fields:
/// minijinja, no auto-escaping, with kci's date filters (`time`, `date`,
/// `datetime`: an RFC 3339 value in the destination's zone).
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(false);
    env.add_filter("time", |state: &State, v: String| {
        format_in_zone(state, &v, "%H:%M")
    });
    env.add_filter("date", |state: &State, v: String| {
        format_in_zone(state, &v, "%a %-d %b %Y")
    });
    env.add_filter("datetime", |state: &State, v: String| {
        format_in_zone(state, &v, "%a %-d %b %Y %H:%M")
    });
    env
}

/// Formats an RFC 3339 timestamp in the destination's zone (the template
/// variable `timezone`).
fn format_in_zone(state: &State, v: &str, fmt: &str) -> Result<String, minijinja::Error> {
    let t: DateTime<Utc> = crate::model::parse_time(v)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.0))?;
    let tz: Tz = state
        .lookup("timezone")
        .and_then(|z| z.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(chrono_tz::UTC);
    Ok(t.with_timezone(&tz).format(fmt).to_string())
}

/// What a type's templates see for notice `n` of `event`: the event, its
/// data (also at the top level), and the notice's own fields.
pub fn event_context(n: &Notification, event: &Event) -> Value {
    context! {
        event => Value::from_serialize(event),
        data => Value::from_serialize(&event.data),
        id => &event.id,
        type => &event.type_name,
        account => &event.account,
        service => &event.service,
        contact => &n.contact,
        key => &event.key,
        priority => event.priority.as_str(),
        category => &event.category,
        occurred_at => crate::model::fmt_time(event.occurred_at),
        expires_at => event.expires_at.map(crate::model::fmt_time),
        timezone => &n.timezone,
        started_at => n.paired_from.map(crate::model::fmt_time),
        ended_at => crate::model::fmt_time(event.occurred_at),
        ..Value::from_serialize(&event.data)
    }
}

/// What a notice with no event to show sees (kci's own notices, digests,
/// content-free ones): its own fields only.
pub fn notice_context(n: &Notification) -> Value {
    context! {
        type => &n.type_name,
        account => &n.account,
        contact => &n.contact,
        key => &n.key,
        priority => n.priority.as_str(),
        timezone => &n.timezone,
    }
}

/// Checks that an expression (`data.ticket`, `occurred_at | time`)
/// compiles, for config validation.
pub fn check_expression(source: &str) -> Result<(), String> {
    // An expression has no template delimiters (and minijinja 2.24's
    // expression lexer panics on a closing one).
    if let Some(d) = ["{{", "}}", "{%", "%}", "{#", "#}"]
        .iter()
        .find(|d| source.contains(**d))
    {
        return Err(format!(
            "`{d}` cannot be in an expression: write the expression alone, without {{{{ }}}}"
        ));
    }
    let env = environment();
    env.compile_expression(source)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Checks that a template compiles, for config validation.
pub fn check(source: &str) -> Result<(), String> {
    let env = environment();
    env.template_from_str(source)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
