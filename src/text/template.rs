//! The template language kci's texts are written in.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::{Environment, State};

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

/// Checks that a template compiles, for config validation.
pub fn check(source: &str) -> Result<(), String> {
    let env = environment();
    env.template_from_str(source)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
