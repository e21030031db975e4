//! WhatsApp (`whatsapp:+E164` destinations) through Meta's WhatsApp
//! Business Cloud API: `POST {api}/{phone_number_id}/messages`,
//! `Authorization: Bearer <access token>`, JSON
//! `{"messaging_product":"whatsapp","recipient_type":"individual","to":…}`
//! with either `"type":"template","template":{"name","language":{"code"},
//! "components":[{"type":"body","parameters":[{"type":"text","text"}]}]}`
//! or `"type":"text","text":{"body","preview_url":false}`. WhatsApp
//! answers 200 `{"messaging_product":"whatsapp","contacts":[{"input",
//! "wa_id"}],"messages":[{"id":"wamid.…"}]}`; the wamid is kept, and the
//! status webhook (`web/api/callbacks.rs`) reports on it later.
//!
//! A business may start a conversation only with an approved template;
//! free text is accepted only within 24 hours of the customer's last
//! message (the "customer service window"). So each kci type — kci's own
//! notices (`kci.change.pending` …) too — may name its template in
//! `[channels.whatsapp.templates."TYPE"]`, whose parameters are minijinja
//! expressions over what the type's templates see (`text::template`);
//! a type without one goes as free text, and WhatsApp's error 131047
//! (re-engagement) then says to configure one.
//!
//! Errors are Graph API errors, `{"error":{"message","type","code",
//! "error_subcode","fbtrace_id"}}`, read by [`classify`].

use super::{Channel, DeliveryError, Outgoing, Receipt, Report};
use crate::model::{ChannelKind, ReceiptStatus, Secret, Span};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::BTreeMap;

/// WhatsApp's limit on a text message's body, in characters.
pub const MAX_TEXT: usize = 4096;
/// The most parameters a template's body takes here.
pub const MAX_PARAMETERS: usize = 32;
/// The template used for a paranoid account's content-free notices.
pub const CONTENT_FREE: &str = "kci.content_free";

/// `[channels.whatsapp]`: present means enabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsAppConfig {
    /// The business phone number's id (WhatsApp Manager, "API Setup"), not
    /// the number itself.
    pub phone_number_id: String,
    /// A system user's access token with `whatsapp_business_messaging`.
    pub access_token: Secret<String>,
    /// The Meta app's secret: status webhooks are signed with it
    /// (`X-Hub-Signature-256`). Without it kci takes no webhooks.
    #[serde(default)]
    pub app_secret: Option<Secret<String>>,
    /// The verify token given to Meta when subscribing the webhook
    /// (`hub.verify_token` of the challenge).
    #[serde(default)]
    pub verify_token: Option<Secret<String>>,
    /// The Graph API, with its version.
    #[serde(default = "default_api")]
    pub api: url::Url,
    /// Give up on one request after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// Rate limit, such as `20/s` (WhatsApp's throughput per number).
    #[serde(default)]
    pub rate: Option<crate::model::Cap>,
    /// The approved template each kci type goes as, by type (`line.down`,
    /// `kci.change.pending`, `kci.content_free` for a paranoid account's
    /// content-free notices); a type without one goes as free text.
    #[serde(default)]
    pub templates: BTreeMap<String, Template>,
}

/// One `[channels.whatsapp.templates."TYPE"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The template's name as approved (lower-case letters, digits, `_`).
    pub name: String,
    /// Its language code as approved, such as `en` or `en_US`.
    pub language: String,
    /// The body's parameters `{{1}}`, `{{2}}`… in order: minijinja
    /// expressions over what the type's templates see (`service`,
    /// `data.ticket`, `occurred_at | time`, and `short`, `subject`, `body`:
    /// the rendered texts).
    #[serde(default)]
    pub parameters: Vec<String>,
}

fn default_api() -> url::Url {
    url::Url::parse("https://graph.facebook.com/v21.0").expect("a valid URL")
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(10))
}

impl WhatsAppConfig {
    /// Checks what serde cannot; errors name the key (under
    /// `channels.whatsapp.`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let id = &self.phone_number_id;
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err((
                "phone_number_id".into(),
                "must be the phone number's id: digits (not the number itself)".into(),
            ));
        }
        if self.access_token.expose().trim().is_empty() {
            return Err(("access_token".into(), "must not be empty".into()));
        }
        for (key, secret) in [
            ("app_secret", &self.app_secret),
            ("verify_token", &self.verify_token),
        ] {
            if secret
                .as_ref()
                .is_some_and(|s| s.expose().trim().is_empty())
            {
                return Err((key.into(), "is empty: leave it out, or set it".into()));
            }
        }
        if !matches!(self.api.scheme(), "https" | "http") || self.api.cannot_be_a_base() {
            return Err(("api".into(), "must be an http(s) base URL".into()));
        }
        for (ty, t) in &self.templates {
            let key = |field: &str| format!("templates.\"{ty}\".{field}");
            crate::model::check_id(ty).map_err(|e| (format!("templates.\"{ty}\""), e.0))?;
            let name_ok = !t.name.is_empty()
                && t.name.len() <= 512
                && t.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !name_ok {
                return Err((
                    key("name"),
                    format!(
                        "`{}` is not a WhatsApp template name (lower-case letters, digits and _)",
                        t.name.escape_default()
                    ),
                ));
            }
            if !language_code(&t.language) {
                return Err((
                    key("language"),
                    format!(
                        "`{}` is not a WhatsApp language code (such as en, en_US, pt_BR)",
                        t.language.escape_default()
                    ),
                ));
            }
            if t.parameters.len() > MAX_PARAMETERS {
                return Err((key("parameters"), format!("at most {MAX_PARAMETERS}")));
            }
            for (i, expr) in t.parameters.iter().enumerate() {
                if expr.len() > 1000 {
                    return Err((
                        format!("{}[{i}]", key("parameters")),
                        "longer than 1000 bytes".into(),
                    ));
                }
                crate::text::template::check_expression(expr)
                    .map_err(|e| (format!("{}[{i}]", key("parameters")), e))?;
            }
        }
        Ok(())
    }
}

/// `en`, `fil`, `en_US`, `es_419`: two or three letters, then perhaps `_`
/// and a region of two to four letters or digits.
fn language_code(s: &str) -> bool {
    let (lang, region) = match s.split_once('_') {
        Some((l, r)) => (l, Some(r)),
        None => (s, None),
    };
    (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_lowercase())
        && region.is_none_or(|r| {
            (2..=4).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

pub struct WhatsAppChannel {
    client: reqwest::Client,
    messages: url::Url,
    access_token: Secret<String>,
    /// Each type's template, its parameters compiled (`TYPE#i`).
    templates: BTreeMap<String, Template>,
    env: minijinja::Environment<'static>,
    /// Whether WhatsApp will report by webhook (an app secret to check it).
    webhooks: bool,
}

impl WhatsAppChannel {
    pub fn from_config(cfg: &WhatsAppConfig) -> anyhow::Result<Self> {
        cfg.validate()
            .map_err(|(key, msg)| anyhow::anyhow!("channels.whatsapp.{key}: {msg}"))?;
        let mut messages = cfg.api.clone();
        messages
            .path_segments_mut()
            .map_err(|_| anyhow::anyhow!("channels.whatsapp.api: not a base URL"))?
            .pop_if_empty()
            .extend([cfg.phone_number_id.as_str(), "messages"]);
        let mut env = crate::text::template::environment();
        for (ty, t) in &cfg.templates {
            for (i, expr) in t.parameters.iter().enumerate() {
                // A checked expression, so wrapping it cannot open a tag.
                env.add_template_owned(format!("{ty}#{i}"), format!("{{{{ ({expr}) }}}}"))
                    .map_err(|e| {
                        anyhow::anyhow!("channels.whatsapp.templates.\"{ty}\".parameters[{i}]: {e}")
                    })?;
            }
        }
        Ok(Self {
            client: super::http::client(cfg.timeout.0)?,
            messages,
            access_token: cfg.access_token.clone(),
            templates: cfg.templates.clone(),
            env,
            webhooks: cfg.app_secret.is_some(),
        })
    }

    /// The template `msg` goes as, if its type has one: for a content-free
    /// notice (its event withheld) the content-free one.
    fn template_of(&self, msg: &Outgoing) -> Option<(&str, &Template)> {
        let n = &msg.notification;
        let withheld = n.event.is_some() && msg.event.is_none() && !n.type_name.starts_with("kci.");
        let ty = if withheld {
            CONTENT_FREE
        } else {
            n.type_name.as_str()
        };
        self.templates
            .get_key_value(ty)
            .map(|(k, t)| (k.as_str(), t))
    }

    /// The body parameters of `ty`'s template for `msg`, in order.
    fn parameters(
        &self,
        ty: &str,
        t: &Template,
        msg: &Outgoing,
    ) -> Result<Vec<String>, DeliveryError> {
        let n = &msg.notification;
        let base = match &msg.event {
            Some(event) => crate::text::template::event_context(n, event),
            None => crate::text::template::notice_context(n),
        };
        let ctx = minijinja::context! {
            short => msg.text(),
            subject => &msg.rendered.subject,
            body => &msg.rendered.body,
            ..base
        };
        (0..t.parameters.len())
            .map(|i| {
                let failed = |why: String| DeliveryError::Permanent {
                    reason: "render",
                    detail: format!(
                        "[channels.whatsapp.templates.\"{ty}\"] parameters[{i}] (`{}`): {why}",
                        t.parameters[i]
                    ),
                };
                let text = self
                    .env
                    .get_template(&format!("{ty}#{i}"))
                    .and_then(|tmpl| tmpl.render(&ctx))
                    .map_err(|e| failed(e.to_string()))?;
                let text = text.trim().to_string();
                if text.is_empty() {
                    // WhatsApp refuses an empty parameter.
                    return Err(failed("renders empty for this notice".into()));
                }
                Ok(text)
            })
            .collect()
    }

    /// The request body for `msg` to `to` (digits only).
    fn payload(
        &self,
        msg: &Outgoing,
        to: &str,
    ) -> Result<(serde_json::Value, Option<String>), DeliveryError> {
        let mut body = serde_json::json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
        });
        match self.template_of(msg) {
            Some((ty, t)) => {
                let parameters = self.parameters(ty, t, msg)?;
                let mut template = serde_json::json!({
                    "name": t.name,
                    "language": { "code": t.language },
                });
                if !parameters.is_empty() {
                    let parameters: Vec<_> = parameters
                        .iter()
                        .map(|p| serde_json::json!({"type": "text", "text": p}))
                        .collect();
                    template["components"] =
                        serde_json::json!([{ "type": "body", "parameters": parameters }]);
                }
                body["type"] = "template".into();
                body["template"] = template;
                Ok((body, Some(t.name.clone())))
            }
            None => {
                body["type"] = "text".into();
                body["text"] =
                    serde_json::json!({ "body": fit(&msg.text()), "preview_url": false });
                Ok((body, None))
            }
        }
    }
}

/// A text cut to WhatsApp's limit, on characters.
pub fn fit(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((at, _)) => text[..at].to_string(),
        None => text.to_string(),
    }
}

/// The answer to a message.
#[derive(Deserialize)]
struct Sent {
    #[serde(default)]
    messages: Vec<SentMessage>,
}

#[derive(Deserialize)]
struct SentMessage {
    id: String,
}

/// A Graph API error body.
#[derive(Debug, Deserialize)]
pub struct GraphError {
    pub error: GraphErrorBody,
}

#[derive(Debug, Deserialize)]
pub struct GraphErrorBody {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub error_subcode: Option<i64>,
    #[serde(default)]
    pub error_data: Option<ErrorData>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorData {
    #[serde(default)]
    pub details: Option<String>,
}

/// A failed send, classified by WhatsApp's error code, else by the HTTP
/// status. `words` are WhatsApp's (or the bare status); `ty` the notice's
/// type, named in what to do about 131047.
pub fn classify(status: u16, code: Option<i64>, ty: &str, words: &str) -> DeliveryError {
    let transient = |reason| DeliveryError::Transient {
        reason,
        detail: words.to_string(),
        retry_after: None,
    };
    let permanent = |reason, detail: String| DeliveryError::Permanent { reason, detail };
    match code {
        // Cloud API throughput, pair rate limit (too many to one number),
        // and the app's rate limit: pacing.
        Some(130429 | 131056 | 80007) => transient("rate_limited"),
        Some(131047) => permanent(
            "outside_window",
            format!(
                "{words} — more than 24 hours since the customer last wrote, so WhatsApp takes only an approved template: configure [channels.whatsapp.templates.\"{ty}\"]"
            ),
        ),
        Some(131026) => permanent("undeliverable", words.to_string()),
        Some(190) => permanent(
            "token_expired",
            format!(
                "{words} — the access token has expired or was revoked: set a new [channels.whatsapp] access_token"
            ),
        ),
        // Unknown, service unavailable, something went wrong, and
        // WhatsApp's own trouble (131016): worth another try.
        Some(1 | 2 | 131000 | 131016) => transient("provider_error"),
        _ if status == 429 => transient("rate_limited"),
        _ if status == 408 || status >= 500 => transient("http_status"),
        _ => permanent("http_status", words.to_string()),
    }
}

/// WhatsApp's words for a failed send: `HTTP 400 131047: Re-engagement
/// message (details)`.
fn words(status: u16, body: &str) -> (Option<i64>, String) {
    match serde_json::from_str::<GraphError>(body) {
        Ok(g) => {
            let e = g.error;
            let code = e.code.map(|c| format!(" {c}:")).unwrap_or_default();
            let message = e.message.unwrap_or_default();
            let details = e
                .error_data
                .and_then(|d| d.details)
                .filter(|d| !d.is_empty() && *d != message)
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            (
                e.code,
                format!("HTTP {status}{code} {message}{details}")
                    .trim()
                    .to_string(),
            )
        }
        Err(_) => {
            let excerpt: String = body.trim().chars().take(500).collect();
            (None, format!("HTTP {status} {excerpt}").trim().to_string())
        }
    }
}

/// One status of a message, as the webhook reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    /// The wamid.
    pub id: String,
    /// sent, delivered, read, failed.
    pub status: String,
    #[serde(default)]
    pub errors: Vec<StatusError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatusError {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub error_data: Option<ErrorData>,
}

/// A status as kci's receipt: delivered or read are delivered, failed is
/// undelivered with WhatsApp's words; sent (and anything else) says
/// nothing final.
pub fn report(s: &Status) -> Option<Report> {
    match s.status.as_str() {
        "delivered" | "read" => Some(Report {
            status: ReceiptStatus::Delivered,
            detail: None,
        }),
        "failed" => {
            let why: Vec<String> = s
                .errors
                .iter()
                .take(5)
                .map(|e| {
                    let code = e.code.map(|c| format!("error {c}: ")).unwrap_or_default();
                    let text = e
                        .message
                        .as_deref()
                        .or(e.title.as_deref())
                        .unwrap_or("no reason given");
                    let details = e
                        .error_data
                        .as_ref()
                        .and_then(|d| d.details.as_deref())
                        .filter(|d| !d.is_empty() && Some(*d) != e.message.as_deref())
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default();
                    format!("{code}{text}{details}")
                })
                .collect();
            Some(Report {
                status: ReceiptStatus::Undelivered,
                detail: Some(if why.is_empty() {
                    "failed".into()
                } else {
                    format!("failed, {}", why.join("; "))
                }),
            })
        }
        _ => None,
    }
}

/// Checks `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body,
/// keyed with the app secret>`, in constant time.
pub fn valid_signature(app_secret: &str, body: &[u8], header: &str) -> bool {
    super::http::valid_sha256_signature(app_secret, body, header)
}

/// Checks the subscription challenge's verify token, in constant time.
pub fn valid_verify_token(configured: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(configured.as_bytes().ct_eq(given.as_bytes()))
}

#[async_trait]
impl Channel for WhatsAppChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::WhatsApp
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        // `whatsapp:+447700900123`: WhatsApp wants the digits.
        let to = msg.address().trim_start_matches('+');
        let (body, template) = self.payload(msg, to)?;
        let resp = self
            .client
            .post(self.messages.clone())
            .bearer_auth(self.access_token.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| super::http::unanswered(&e))?;
        let status = resp.status().as_u16();
        let after = super::http::retry_after(resp.headers());
        let text = super::http::text(resp).await;
        if !(200..300).contains(&status) {
            let (code, words) = words(status, &text);
            let words = words.replace(self.access_token.expose().as_str(), "***");
            return Err(
                classify(status, code, &msg.notification.type_name, &words).with_retry_after(after)
            );
        }
        // Accepted: sent, whatever the answer says (a retry would send it
        // twice); without its wamid no report can be matched to it.
        let wamid = serde_json::from_str::<Sent>(&text)
            .ok()
            .and_then(|s| s.messages.into_iter().next())
            .map(|m| m.id)
            .filter(|id| !id.is_empty() && id.len() <= 256);
        let Some(wamid) = wamid else {
            return Ok(Receipt {
                detail: Some("whatsapp: accepted, but its answer names no message".into()),
                ..Default::default()
            });
        };
        let how = template
            .map(|t| format!(" (template {t})"))
            .unwrap_or_default();
        Ok(Receipt {
            detail: Some(format!("whatsapp {wamid}{how}")),
            // Its status webhook tells later, when kci takes it.
            awaiting: self.webhooks,
            provider_ref: Some(wamid),
            segments: None,
        })
    }
}

#[cfg(test)]
mod tests;
