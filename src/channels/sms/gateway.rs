//! A generic HTTP SMS gateway, described in config rather than code: the
//! method and URL, the request's fields as templates sent as a form, JSON
//! or query string, headers (the credential), and what counts as success.
//!
//! ```toml
//! [channels.sms.http]
//! url = "https://gateway.example/v1/sms"
//! encoding = "json"                                   # form | json | query
//! headers = { Authorization = "Bearer ..." }
//! fields = { to = "{{ to }}", from = "ISP", message = "{{ text }}", reference = "{{ id }}" }
//! success_contains = "\"status\":\"queued\""           # optional
//! id_pointer = "/messages/0/id"                       # optional
//! ```
//!
//! Template variables: `to` (E.164), `to_digits` (without `+`), `text`,
//! `id` (the notification's id: pass it where the gateway takes a client
//! reference or idempotency key), `subject`, `priority`, `segments`,
//! `encoding` (`gsm7` or `ucs2`) and `unicode` (`true` for UCS-2, else
//! `false`). Fields go in the order of their names.

use crate::channels::{DeliveryError, Outgoing, Receipt};
use crate::model::{Secret, Span};
use crate::text::sms::{Encoding, Segments};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BodyEncoding {
    /// `application/x-www-form-urlencoded`.
    #[default]
    Form,
    /// A JSON object.
    Json,
    /// The fields in the URL's query string, no body.
    Query,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Post,
    Get,
    Put,
}

/// `[channels.sms.http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub url: url::Url,
    #[serde(default)]
    pub method: Method,
    #[serde(default)]
    pub encoding: BodyEncoding,
    /// Request fields: strings are templates, other values go as they are.
    pub fields: BTreeMap<String, serde_json::Value>,
    /// Extra headers, typically the credential; never shown anywhere.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret<String>>,
    /// Statuses that mean accepted (default: any 2xx).
    #[serde(default)]
    pub success_status: Vec<u16>,
    /// Text the answer must contain to count as accepted.
    #[serde(default)]
    pub success_contains: Option<String>,
    /// JSON pointer (RFC 6901) to the gateway's message id in its answer.
    #[serde(default)]
    pub id_pointer: Option<String>,
    /// Give up on one request after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// The key the gateway signs the texts it forwards to
    /// `POST /v1/inbound/sms` with (`X-Kci-Signature: sha256=<hex>`);
    /// without it, that webhook is off.
    #[serde(default)]
    pub inbound_secret: Option<Secret<String>>,
}

/// Checks an `X-Kci-Signature` (`sha256=` and the hex HMAC-SHA256 of
/// `body`, keyed with `secret`), in constant time.
pub fn valid_inbound_signature(secret: &str, body: &[u8], signature: &str) -> bool {
    super::super::http::valid_sha256_signature(secret, body, signature)
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(10))
}

impl GatewayConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.encoding == BodyEncoding::Query && self.method != Method::Get {
            return Err((
                "encoding".into(),
                "`query` sends no body: use it with method = \"GET\"".into(),
            ));
        }
        if self.method == Method::Get && self.encoding != BodyEncoding::Query {
            return Err((
                "encoding".into(),
                "a GET has no body: use encoding = \"query\"".into(),
            ));
        }
        if !self.fields.values().any(|v| {
            v.as_str()
                .is_some_and(|s| s.contains("text") && s.contains("{{"))
        }) {
            return Err((
                "fields".into(),
                "no field carries the message: one needs `{{ text }}`".into(),
            ));
        }
        for (name, value) in &self.fields {
            if let Some(t) = value.as_str() {
                crate::text::template::check(t).map_err(|e| (format!("fields.{name}"), e))?;
            }
        }
        for name in self.headers.keys() {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| (format!("headers.{name}"), "not a valid header name".into()))?;
        }
        if let Some(p) = &self.id_pointer
            && !p.starts_with('/')
        {
            return Err((
                "id_pointer".into(),
                format!("`{p}` is not a JSON pointer (it starts with /)"),
            ));
        }
        if self.success_status.iter().any(|s| !(100..600).contains(s)) {
            return Err((
                "success_status".into(),
                "HTTP statuses are 100 to 599".into(),
            ));
        }
        Ok(())
    }
}

pub struct Gateway {
    client: reqwest::Client,
    cfg: GatewayConfig,
    env: minijinja::Environment<'static>,
}

impl Gateway {
    pub fn from_config(cfg: &GatewayConfig) -> anyhow::Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        for (name, value) in &cfg.fields {
            if let Some(t) = value.as_str() {
                env.add_template_owned(name.clone(), t.to_string())
                    .map_err(|e| anyhow::anyhow!("channels.sms.http.fields.{name}: {e}"))?;
            }
        }
        Ok(Self {
            client: crate::channels::http::client(cfg.timeout.0)?,
            cfg: cfg.clone(),
            env,
        })
    }

    /// The request fields for one message.
    fn fields(
        &self,
        msg: &Outgoing,
        to: &str,
        text: &str,
        segments: Segments,
    ) -> Result<Vec<(String, serde_json::Value)>, DeliveryError> {
        let ctx = minijinja::context! {
            to => to,
            to_digits => to.trim_start_matches('+'),
            text => text,
            id => msg.notification.id,
            subject => msg.rendered.subject,
            priority => msg.notification.priority.as_str(),
            segments => segments.count,
            encoding => match segments.encoding { Encoding::Gsm7 => "gsm7", Encoding::Ucs2 => "ucs2" },
            unicode => if segments.encoding == Encoding::Ucs2 { "true" } else { "false" },
        };
        self.cfg
            .fields
            .iter()
            .map(|(name, value)| {
                let value = match value.as_str() {
                    Some(_) => {
                        let t = self
                            .env
                            .get_template(name)
                            .map_err(|e| render_error(name, &e))?;
                        serde_json::Value::String(
                            t.render(&ctx).map_err(|e| render_error(name, &e))?,
                        )
                    }
                    None => value.clone(),
                };
                Ok((name.clone(), value))
            })
            .collect()
    }

    pub async fn send(
        &self,
        msg: &Outgoing,
        to: &str,
        text: &str,
        segments: Segments,
    ) -> Result<Receipt, DeliveryError> {
        let fields = self.fields(msg, to, text, segments)?;
        let as_text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let method = match self.cfg.method {
            Method::Post => reqwest::Method::POST,
            Method::Get => reqwest::Method::GET,
            Method::Put => reqwest::Method::PUT,
        };
        let mut url = self.cfg.url.clone();
        if self.cfg.encoding == BodyEncoding::Query {
            let mut q = url.query_pairs_mut();
            for (k, v) in &fields {
                q.append_pair(k, &as_text(v));
            }
        }
        let mut req = self.client.request(method, url);
        for (name, value) in &self.cfg.headers {
            req = req.header(name.as_str(), value.expose());
        }
        req = match self.cfg.encoding {
            BodyEncoding::Form => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in &fields {
                    form.append_pair(k, &as_text(v));
                }
                req.header("content-type", "application/x-www-form-urlencoded")
                    .body(form.finish())
            }
            BodyEncoding::Json => req.json(&fields.into_iter().collect::<serde_json::Map<_, _>>()),
            BodyEncoding::Query => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| crate::channels::http::unanswered(&e))?;
        let status = resp.status().as_u16();
        let (status, answer) = if self.cfg.success_status.is_empty() {
            crate::channels::http::answer(resp).await?
        } else if self.cfg.success_status.contains(&status) {
            (status, crate::channels::http::text(resp).await)
        } else {
            // Not a listed success: classified like any HTTP answer, and a
            // 2xx outside the list is a refusal.
            let (status, text) = crate::channels::http::answer(resp).await?;
            return Err(refused(status, &text));
        };
        if let Some(needle) = &self.cfg.success_contains
            && !answer.contains(needle.as_str())
        {
            return Err(refused(status, &answer));
        }
        let id = self.cfg.id_pointer.as_deref().and_then(|p| {
            let v: serde_json::Value = serde_json::from_str(&answer).ok()?;
            Some(as_text(v.pointer(p)?))
        });
        Ok(Receipt {
            detail: Some(match id {
                Some(ref id) => format!("gateway message {id}"),
                None => format!("gateway accepted (HTTP {status})"),
            }),
            provider_ref: id,
            awaiting: false,
            segments: None,
        })
    }
}

fn render_error(field: &str, e: &minijinja::Error) -> DeliveryError {
    DeliveryError::Permanent {
        reason: "render",
        detail: format!("channels.sms.http.fields.{field}: {e}"),
    }
}

/// An answer that does not meet the success rule: the gateway's words.
fn refused(status: u16, answer: &str) -> DeliveryError {
    let words: String = answer.trim().chars().take(300).collect();
    DeliveryError::Permanent {
        reason: "refused",
        detail: format!("HTTP {status} without the success mark: {words}"),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn inbound_texts_are_signed_with_the_secret() {
        // Computed with Python's hmac module, as a gateway would.
        let body = br#"{"from":"+447700900123","text":"123456"}"#;
        let good = "sha256=d443223d6ce5e5be732b51a2afd7e6d111cf0299c75f16d268b9c35f5dcb8be7";
        // (secret, body, header, accepted)
        for (secret, body, header, want) in [
            ("gateway-secret", &body[..], good, true),
            (
                "gateway-secret",
                &body[..],
                &good.to_ascii_uppercase().replace("SHA256=", "sha256="),
                true,
            ),
            ("other-secret", &body[..], good, false),
            (
                "gateway-secret",
                &br#"{"from":"+15550001111","text":"123456"}"#[..],
                good,
                false,
            ),
            ("gateway-secret", &body[..], &good["sha256=".len()..], false),
            ("gateway-secret", &body[..], "", false),
        ] {
            assert_eq!(
                super::valid_inbound_signature(secret, body, header),
                want,
                "{secret} {header}"
            );
        }
    }

    use crate::channels::Channel;
    use crate::channels::sms::{SmsChannel, SmsConfig};
    use crate::channels::testkit::{Provider, outgoing};

    fn channel(url: &str, extra: &str) -> SmsChannel {
        let cfg: SmsConfig =
            toml::from_str(&format!("[http]\nurl = \"{url}/sms/send\"\n{extra}")).unwrap();
        cfg.validate().unwrap();
        SmsChannel::from_config(&cfg).unwrap().unwrap()
    }

    const JSON_GATEWAY: &str = r#"encoding = "json"
headers = { Authorization = "Bearer gw_live_4f9a8c" }
fields = { to = "{{ to_digits }}", from = "ExampleISP", message = "{{ text }}", reference = "{{ id }}", unicode = "{{ unicode }}", flash = false }
success_contains = '"status":"queued"'
id_pointer = "/messages/0/id"
"#;

    #[tokio::test]
    async fn sends_json_fields_from_templates_with_the_auth_header() {
        let gw = Provider::start(
            200,
            r#"{"messages":[{"id":"m-7731","status":"queued"}],"status":"queued"}"#,
        )
        .await;
        let ch = channel(&gw.url, JSON_GATEWAY);
        let out = outgoing("sms:+447700900123", "Your line L1 is down.", "Line down");
        let receipt = ch.deliver(&out).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some("gateway message m-7731"));
        assert_eq!(receipt.provider_ref.as_deref(), Some("m-7731"));
        assert_eq!(receipt.segments, Some(1));
        let req = gw.only_request();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/sms/send")
        );
        assert_eq!(req.header("authorization"), Some("Bearer gw_live_4f9a8c"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(
            req.json(),
            serde_json::json!({
                "to": "447700900123",
                "from": "ExampleISP",
                "message": "Your line L1 is down.",
                "reference": out.notification.id,
                "unicode": "false",
                "flash": false,
            })
        );
    }

    #[tokio::test]
    async fn sends_a_form_or_a_query() {
        let gw = Provider::start(202, "OK 1 message queued").await;
        let ch = channel(
            &gw.url,
            "fields = { dest = \"{{ to }}\", msg = \"{{ text }}\" }\nsuccess_status = [202]\nsuccess_contains = \"OK\"",
        );
        let out = outgoing("sms:+447700900123", "Grüße & 50€ credit", "x");
        let receipt = ch.deliver(&out).await.unwrap();
        assert_eq!(receipt.segments, Some(1));
        let req = gw.only_request();
        assert_eq!(
            req.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            std::str::from_utf8(&req.body).unwrap(),
            "dest=%2B447700900123&msg=Gr%C3%BC%C3%9Fe+%26+50%E2%82%AC+credit"
        );

        let gw = Provider::start(200, "OK").await;
        let ch = channel(
            &gw.url,
            "method = \"GET\"\nencoding = \"query\"\nfields = { to = \"{{ to }}\", text = \"{{ text }}\", enc = \"{{ encoding }}\" }",
        );
        ch.deliver(&outgoing("sms:+447700900123", "Zażółć", "x"))
            .await
            .unwrap();
        let req = gw.only_request();
        assert_eq!(req.method, "GET");
        assert_eq!(
            req.path,
            "/sms/send?enc=ucs2&text=Za%C5%BC%C3%B3%C5%82%C4%87&to=%2B447700900123"
        );
        assert!(req.body.is_empty());
    }

    #[tokio::test]
    async fn an_answer_without_the_success_mark_is_refused_and_statuses_classified() {
        let gw = Provider::start(200, r#"{"status":"error","error":"invalid destination"}"#).await;
        let ch = channel(&gw.url, JSON_GATEWAY);
        let err = ch
            .deliver(&outgoing("sms:+447700900123", "x", "y"))
            .await
            .unwrap_err();
        assert!(err.is_permanent());
        assert!(err.detail().contains("invalid destination"), "{err}");
        for (status, transient) in [(429, true), (503, true), (401, false), (400, false)] {
            let gw = Provider::start(status, r#"{"status":"error"}"#).await;
            let ch = channel(&gw.url, JSON_GATEWAY);
            let err = ch
                .deliver(&outgoing("sms:+447700900123", "x", "y"))
                .await
                .unwrap_err();
            assert_eq!(err.is_transient(), transient, "{status}");
            assert!(!format!("{err} {err:?}").contains("gw_live"), "{status}");
        }
    }

    #[tokio::test]
    async fn a_bad_number_is_refused_before_any_request() {
        let gw = Provider::start(200, "OK").await;
        let ch = channel(
            &gw.url,
            "fields = { to = \"{{ to }}\", text = \"{{ text }}\" }",
        );
        let mut out = outgoing("sms:+447700900123", "x", "y");
        out.notification.uri = "sms:07700900123".into();
        let err = ch.deliver(&out).await.unwrap_err();
        assert_eq!(err.reason(), "bad_number");
        assert!(gw.requests().is_empty());
    }

    #[test]
    fn config_mistakes_name_the_key() {
        let cases = [
            ("fields = { to = \"{{ to }}\" }", "channels.sms.http.fields"),
            (
                "method = \"GET\"\nfields = { text = \"{{ text }}\" }",
                "channels.sms.http.encoding",
            ),
            (
                "fields = { text = \"{{ text }\" }",
                "channels.sms.http.fields.text",
            ),
            (
                "fields = { text = \"{{ text }}\" }\nid_pointer = \"id\"",
                "channels.sms.http.id_pointer",
            ),
        ];
        for (extra, key) in cases {
            let cfg: SmsConfig =
                toml::from_str(&format!("[http]\nurl = \"https://gw.example/\"\n{extra}")).unwrap();
            assert_eq!(cfg.validate().unwrap_err().0, key, "{extra}");
        }
        let secret: SmsConfig = toml::from_str(
            "[http]\nurl = \"https://gw.example/\"\nheaders = { Authorization = \"Bearer gw_live_4f9a8c\" }\nfields = { text = \"{{ text }}\" }",
        )
        .unwrap();
        assert!(!format!("{secret:?}").contains("gw_live"));
    }
}
