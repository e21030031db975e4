//! Pushover (`pushover:<user-key>` destinations) through the Messages API:
//! `POST /1/messages.json`, form-encoded `token, user, message, title,
//! priority`. kci's priorities map to Pushover's (-1 quiet … 2 emergency);
//! an urgent notice is an emergency that repeats every `emergency_retry`
//! until acknowledged or `emergency_expire` runs out, and its receipt is
//! kept in the record.
//!
//! Pushover answers `429` once the application's monthly quota is used up,
//! and every answer carries `X-Limit-App-Reset` (a Unix time) saying when
//! the quota renews; a 429 is retried no earlier than that.

use super::{Channel, DeliveryError, Outgoing, Receipt};
use crate::model::{ChannelKind, Priority, Secret, Span};
use async_trait::async_trait;
use serde::Deserialize;

/// `[channels.pushover]`: present means enabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushoverConfig {
    /// The application's API token.
    pub token: Secret<String>,
    /// The API server.
    #[serde(default = "default_api")]
    pub api: url::Url,
    /// How often an emergency notice repeats (Pushover's minimum is 30s).
    #[serde(default = "default_retry")]
    pub emergency_retry: Span,
    /// When it stops repeating (Pushover's maximum is 3h).
    #[serde(default = "default_expire")]
    pub emergency_expire: Span,
    /// Give up on one request after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// Rate limit, such as `2/s`.
    #[serde(default)]
    pub rate: Option<crate::model::Cap>,
}

fn default_api() -> url::Url {
    url::Url::parse("https://api.pushover.net").expect("a valid URL")
}
fn default_retry() -> Span {
    Span(std::time::Duration::from_secs(60))
}
fn default_expire() -> Span {
    Span(std::time::Duration::from_secs(3600))
}
fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(10))
}

/// Pushover's priority for a kci priority.
pub fn priority(p: Priority) -> i8 {
    match p {
        Priority::Low => -1,
        Priority::Normal => 0,
        Priority::High => 1,
        Priority::Urgent => 2,
    }
}

pub struct PushoverChannel {
    client: reqwest::Client,
    messages: url::Url,
    token: Secret<String>,
    retry: u64,
    expire: u64,
}

impl PushoverChannel {
    pub fn from_config(cfg: &PushoverConfig) -> anyhow::Result<Self> {
        let messages = cfg
            .api
            .join("1/messages.json")
            .map_err(|e| anyhow::anyhow!("channels.pushover.api: {e}"))?;
        Ok(Self {
            client: super::http::client(cfg.timeout.0)?,
            messages,
            token: cfg.token.clone(),
            retry: cfg.emergency_retry.0.as_secs().clamp(30, 10_800),
            expire: cfg.emergency_expire.0.as_secs().clamp(30, 10_800),
        })
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    receipt: Option<String>,
    #[serde(default)]
    errors: Vec<String>,
}

#[async_trait]
impl Channel for PushoverChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Pushover
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let n = &msg.notification;
        let user = msg.address();
        let message = msg.text();
        let p = priority(n.priority);
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", self.token.expose())
                .append_pair("user", user)
                .append_pair("message", &message)
                .append_pair("title", &msg.rendered.subject)
                .append_pair("priority", &p.to_string());
            if p == 2 {
                form.append_pair("retry", &self.retry.to_string())
                    .append_pair("expire", &self.expire.to_string());
            }
            form.finish()
        };
        let resp = self
            .client
            .post(self.messages.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| super::http::unanswered(&e))?;
        let renewal = quota_renewal(&resp);
        match super::http::answer(resp).await {
            Ok((_, text)) => {
                let a: Option<Answer> = serde_json::from_str(&text).ok();
                let request = a
                    .as_ref()
                    .and_then(|a| a.request.clone())
                    .unwrap_or_default();
                let detail = match a.and_then(|a| a.receipt) {
                    Some(receipt) => {
                        format!("pushover request {request}, emergency receipt {receipt}")
                    }
                    None => format!("pushover request {request}"),
                };
                Ok(Receipt {
                    detail: Some(detail),
                })
            }
            Err(e) => Err(with_their_words(e).with_retry_after(renewal)),
        }
    }
}

/// For a 429, how long until `X-Limit-App-Reset` renews the quota.
fn quota_renewal(resp: &reqwest::Response) -> Option<std::time::Duration> {
    if resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let reset: i64 = resp
        .headers()
        .get("x-limit-app-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (reset - chrono::Utc::now().timestamp())
        .try_into()
        .ok()
        .map(std::time::Duration::from_secs)
}

/// "HTTP 400 {json}" becomes "HTTP 400 user identifier is invalid".
fn with_their_words(e: DeliveryError) -> DeliveryError {
    match super::http::error_body::<Answer>(&e) {
        Some((status, a)) if !a.errors.is_empty() => {
            e.with_detail(format!("{status} {}", a.errors.join("; ")))
        }
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::testkit::{Answer, Provider, outgoing};

    const TOKEN: &str = "azGDORePK8gMaC0QOYAMyEEuzJnyUi";
    const USER: &str = "uQiRzpo4DXghDmr9QzzfQu27cmVRsG";

    fn channel(api: &str) -> PushoverChannel {
        let cfg: PushoverConfig =
            toml::from_str(&format!("token = \"{TOKEN}\"\napi = \"{api}\"")).unwrap();
        PushoverChannel::from_config(&cfg).unwrap()
    }

    fn form(body: &[u8]) -> Vec<(String, String)> {
        url::form_urlencoded::parse(body).into_owned().collect()
    }

    #[tokio::test]
    async fn posts_the_form_per_the_messages_api() {
        let api = Provider::start(
            200,
            r#"{"status":1,"request":"647d2300-702c-4b38-8b2f-d56326ae460b"}"#,
        )
        .await;
        let mut out = outgoing(&format!("pushover:{USER}"), "Line L1 down.", "Line L1");
        out.notification.priority = Priority::High;
        let receipt = channel(&api.url).deliver(&out).await.unwrap();
        assert_eq!(
            receipt.detail.as_deref(),
            Some("pushover request 647d2300-702c-4b38-8b2f-d56326ae460b")
        );
        let req = api.only_request();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/1/messages.json")
        );
        assert_eq!(
            req.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let want: Vec<(String, String)> = [
            ("token", TOKEN),
            ("user", USER),
            ("message", "Line L1 down."),
            ("title", "Line L1"),
            ("priority", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(form(&req.body), want);
    }

    #[tokio::test]
    async fn urgent_is_an_emergency_that_repeats_and_keeps_its_receipt() {
        let api = Provider::start(
            200,
            r#"{"status":1,"request":"r1","receipt":"rLqVuqTRh62UzxtmqiaLzQmVcPgiCy"}"#,
        )
        .await;
        let mut out = outgoing(&format!("pushover:{USER}"), "Security alert.", "Alert");
        out.notification.priority = Priority::Urgent;
        let receipt = channel(&api.url).deliver(&out).await.unwrap();
        assert!(
            receipt
                .detail
                .unwrap()
                .ends_with("emergency receipt rLqVuqTRh62UzxtmqiaLzQmVcPgiCy")
        );
        let f = form(&api.only_request().body);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            (get("priority"), get("retry"), get("expire")),
            (Some("2"), Some("60"), Some("3600"))
        );
    }

    #[tokio::test]
    async fn an_invalid_user_is_refused_for_good_in_pushovers_words() {
        let api = Provider::start(
            400,
            r#"{"user":"invalid","errors":["user identifier is not a valid user, group, or subscribed user key"],"status":0,"request":"r2"}"#,
        )
        .await;
        let err = channel(&api.url)
            .deliver(&outgoing(&format!("pushover:{USER}"), "x", "y"))
            .await
            .unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(
            err.detail(),
            "HTTP 400 user identifier is not a valid user, group, or subscribed user key"
        );
        assert!(!format!("{err:?}").contains(TOKEN));
    }

    #[tokio::test]
    async fn a_used_up_quota_is_retried_when_it_renews() {
        let renews = chrono::Utc::now().timestamp() + 3 * 86_400;
        let api = Provider::answering(
            Answer::new(
                429,
                r#"{"status":0,"errors":["application has exceeded its message limit"],"request":"r3"}"#,
            )
            .header("X-Limit-App-Limit", "10000")
            .header("X-Limit-App-Remaining", "0")
            .header("X-Limit-App-Reset", &renews.to_string()),
        )
        .await;
        let err = channel(&api.url)
            .deliver(&outgoing(&format!("pushover:{USER}"), "x", "y"))
            .await
            .unwrap_err();
        assert!(err.is_transient());
        let wait = err.retry_after().unwrap().as_secs();
        assert!((3 * 86_400 - 5..=3 * 86_400).contains(&wait), "{wait}");
        assert_eq!(
            err.detail(),
            "HTTP 429 application has exceeded its message limit"
        );
    }
}
