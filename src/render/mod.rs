//! Rendering: a notification becomes the texts its channel needs — a short
//! form (SMS, push, chat), a subject and a long form (mail) — from the
//! event's literal texts or its type's minijinja templates.

pub use crate::text::Rendered;

use crate::config::Config;
use crate::model::Event;
use crate::model::Notification;
use crate::text::sms;
use minijinja::{Environment, Value};

/// A template could not be rendered (bad data, a missing variable used in a
/// strict way); the notification fails with this reason.
#[derive(Debug, thiserror::Error)]
#[error("template {template}: {message}")]
pub struct RenderError {
    pub template: String,
    pub message: String,
}

/// Compiled templates of every configured type.
pub struct Renderer {
    env: Environment<'static>,
    /// Longest SMS per type, in segments, and for types that do not say.
    max_segments: std::collections::HashMap<String, usize>,
    default_max_segments: usize,
    /// The types whose config asks for letters (`letter = true`).
    letter_types: std::collections::HashSet<String>,
    /// Who sends (the display name of `[email] from`), for content-free notices.
    operator: String,
    portal: Option<String>,
}

fn template_name(type_name: &str, field: &str) -> String {
    format!("{type_name}#{field}")
}

impl Renderer {
    pub fn new(config: &Config) -> Result<Self, RenderError> {
        let mut env = crate::text::template::environment();
        for (name, t) in &config.types {
            for (field, source) in [
                ("short", &t.short),
                ("subject", &t.subject),
                ("body", &t.body),
                ("pair_summary", &t.pair_summary),
            ] {
                if let Some(source) = source {
                    env.add_template_owned(template_name(name, field), source.clone())
                        .map_err(|e| RenderError {
                            template: template_name(name, field),
                            message: e.to_string(),
                        })?;
                }
            }
        }
        let max_segments = config
            .types
            .iter()
            .filter_map(|(name, t)| t.max_segments.map(|m| (name.clone(), m)))
            .collect();
        let operator = config.email.sender_name().to_string();
        let letter_types = config
            .types
            .iter()
            .filter(|(_, t)| t.letter)
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Self {
            env,
            max_segments,
            letter_types,
            default_max_segments: config.channels.sms.max_segments,
            operator,
            portal: config.server.portal_url.as_ref().map(|u| u.to_string()),
        })
    }

    /// Whether type `type_name` asks to go by letter too (`letter = true`).
    pub fn asks_for_letter(&self, type_name: &str) -> bool {
        self.letter_types.contains(type_name)
    }

    /// The notice a `paranoid` account gets where content could leak (a
    /// channel that is not end-to-end encrypted, mail without a key): that
    /// there is a message, and where to read it — nothing of the message.
    pub fn content_free(&self) -> Rendered {
        let op = &self.operator;
        let short = match &self.portal {
            Some(url) => format!("You have a new message from {op}. Read it in your portal: {url}"),
            None => format!("You have a new message from {op}. Read it in your portal."),
        };
        Rendered {
            subject: format!("New message from {op}"),
            body: format!(
                "{short}\n\nYour account asks that nothing of a message be shown where it is not end-to-end encrypted, so this notice says only that there is one.\n"
            ),
            short: Some(short),
        }
    }

    /// The short text of `rendered` fitted to the SMS segments type
    /// `type_name` allows; returns the detail to record when it was cut.
    pub fn fit_sms(&self, type_name: &str, rendered: &mut Rendered) -> Option<String> {
        let max = self
            .max_segments
            .get(type_name)
            .copied()
            .unwrap_or(self.default_max_segments);
        let short = rendered.short.as_mut()?;
        let (fitted, segments) = sms::fit(short, max);
        if fitted == *short {
            return None;
        }
        let was = sms::segments(short).count;
        *short = fitted;
        Some(format!("cut from {was} to {segments} (type allows {max})"))
    }

    fn render_field(
        &self,
        event: &Event,
        field: &str,
        ctx: &Value,
    ) -> Result<Option<String>, RenderError> {
        let name = template_name(&event.type_name, field);
        let Ok(tmpl) = self.env.get_template(&name) else {
            return Ok(None);
        };
        tmpl.render(ctx)
            .map(|s| Some(s.trim().to_string()))
            .map_err(|e| RenderError {
                template: name,
                message: e.to_string(),
            })
    }

    /// Renders `n` (of `event`, if any). kci's own notices carry their texts.
    pub fn render(&self, n: &Notification, event: Option<&Event>) -> Result<Rendered, RenderError> {
        if let Some(m) = &n.message {
            return Ok(Rendered {
                short: Some(m.short.clone()),
                subject: m.subject.clone(),
                body: m.body.clone(),
            });
        }
        let Some(event) = event else {
            return Err(RenderError {
                template: n.type_name.clone(),
                message: "the event is missing".into(),
            });
        };
        let ctx = crate::text::template::event_context(n, event);
        if n.paired_from.is_some() {
            // One message tells of the whole pair.
            if let Some(text) = self.render_field(event, "pair_summary", &ctx)? {
                return Ok(Rendered {
                    short: Some(text.clone()),
                    subject: one_line(&text),
                    body: text,
                });
            }
        }
        let short = match &event.short {
            Some(s) => Some(s.clone()),
            None => self.render_field(event, "short", &ctx)?,
        };
        let subject = match &event.subject {
            Some(s) => Some(s.clone()),
            None => self.render_field(event, "subject", &ctx)?,
        };
        let body = match &event.body {
            Some(s) => Some(s.clone()),
            None => self.render_field(event, "body", &ctx)?,
        };
        let subject = subject
            .or_else(|| short.clone())
            .unwrap_or_else(|| format!("Notice: {}", event.type_name));
        let body = body
            .or_else(|| short.clone())
            .unwrap_or_else(|| subject.clone());
        Ok(Rendered {
            short,
            subject: one_line(&subject),
            body,
        })
    }
}

impl Renderer {
    /// Composes one message from the notices folded into a digest: a short
    /// text listing each one's short form, and a mail with each in full.
    pub fn render_digest(
        &self,
        members: &[crate::store::Claimed],
    ) -> Result<Rendered, RenderError> {
        let mut shorts = Vec::with_capacity(members.len());
        let mut body = String::new();
        for m in members {
            let r = self.render(&m.notification, m.event.as_ref())?;
            shorts.push(r.short.clone().unwrap_or_else(|| r.subject.clone()));
            if !body.is_empty() {
                body.push_str("\n\n");
            }
            body.push_str(&format!("* {}\n{}", r.subject, r.body));
        }
        let n = members.len();
        let noun = if n == 1 { "notice" } else { "notices" };
        Ok(Rendered {
            short: Some(format!("{n} {noun}: {}", shorts.join(" | "))),
            subject: format!("{n} {noun} from your provider"),
            body,
        })
    }
}

/// A subject is one line: newlines from data would otherwise break headers.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testkit::event;

    fn notification(tz: &str) -> Notification {
        let ev = event("2026-03-22T03:00:00Z");
        let d = crate::plan::Decision {
            contact: "alice".into(),
            destination: "d1".into(),
            uri: "mailto:alice@example.com".into(),
            channel: crate::model::ChannelKind::Email,
            state: crate::model::State::Pending,
            reason: None,
            detail: None,
            due_at: ev.occurred_at,
            expires_at: None,
            timezone: tz.parse().unwrap(),
            summary: None,
            is_digest: false,
            folded_into: None,
            paired_from: None,
        };
        d.notification(&ev)
    }

    #[test]
    fn type_templates_with_zone_aware_time() {
        let config = Config::parse(
            r#"
[types."line.down"]
short = "Your line {{ service }} went down at {{ occurred_at | time }}."
subject = "Line {{ service }} is down"
body = "Dear customer,\n\nline {{ service }} ({{ data.postcode }}) went down on {{ occurred_at | datetime }}."
"#,
            "t",
        )
        .unwrap();
        let r = Renderer::new(&config).unwrap();
        let mut ev = event("2026-07-01T03:00:00Z");
        ev.data.insert("postcode".into(), "SW1A 1AA".into());
        let out = r.render(&notification("Europe/London"), Some(&ev)).unwrap();
        assert_eq!(
            out.short.as_deref(),
            Some("Your line L1 went down at 04:00.")
        );
        assert_eq!(out.subject, "Line L1 is down");
        assert!(
            out.body
                .contains("(SW1A 1AA) went down on Wed 1 Jul 2026 04:00."),
            "{}",
            out.body
        );
    }

    #[test]
    fn literal_texts_override_and_are_not_templates() {
        let config = Config::parse("[types.\"line.down\"]\nshort = \"templated\"\n", "t").unwrap();
        let r = Renderer::new(&config).unwrap();
        let mut ev = event("2026-07-01T03:00:00Z");
        ev.short = Some("literal {{ service }}".into());
        ev.subject = Some("Two\nlines".into());
        let out = r.render(&notification("UTC"), Some(&ev)).unwrap();
        assert_eq!(out.short.as_deref(), Some("literal {{ service }}"));
        assert_eq!(out.subject, "Two lines");
        assert_eq!(out.body, "literal {{ service }}");
    }

    #[test]
    fn no_templates_still_renders_something() {
        let config = Config::parse("[types.\"line.down\"]\n", "t").unwrap();
        let r = Renderer::new(&config).unwrap();
        let out = r
            .render(&notification("UTC"), Some(&event("2026-07-01T03:00:00Z")))
            .unwrap();
        assert_eq!(out.short, None);
        assert_eq!(out.subject, "Notice: line.down");
    }
}
