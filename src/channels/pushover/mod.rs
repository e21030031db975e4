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

use super::{Channel, DeliveryError, Outgoing, Receipt, Report};
use crate::model::{ChannelKind, Priority, ReceiptStatus, Secret, Span};
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
    api: url::Url,
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
            api: cfg.api.clone(),
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

/// `GET /1/receipts/{receipt}.json`: where an emergency notice stands.
#[derive(Deserialize)]
struct ReceiptAnswer {
    #[serde(default)]
    acknowledged: u8,
    #[serde(default)]
    acknowledged_at: i64,
    #[serde(default)]
    acknowledged_by_device: Option<String>,
    #[serde(default)]
    expired: u8,
}

/// A receipt is 30 letters and digits; anything else is not asked about
/// (it goes into a URL path).
fn plausible_receipt(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric())
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
                let receipt = a.and_then(|a| a.receipt);
                let detail = match &receipt {
                    Some(receipt) => {
                        format!("pushover request {request}, emergency receipt {receipt}")
                    }
                    None => format!("pushover request {request}"),
                };
                Ok(Receipt {
                    detail: Some(detail),
                    // An emergency's receipt says when someone acknowledged it.
                    awaiting: receipt.is_some(),
                    provider_ref: receipt,
                    segments: None,
                })
            }
            Err(e) => Err(with_their_words(e).with_retry_after(renewal)),
        }
    }

    /// `POST /1/users/validate.json`: a user or group key Pushover does not
    /// know (or one with no active device) is refused at creation.
    async fn check_destination(
        &self,
        uri: &crate::model::DestinationUri,
    ) -> Result<(), DeliveryError> {
        let crate::model::DestinationUri::Pushover(user) = uri else {
            return Ok(());
        };
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", self.token.expose())
            .append_pair("user", user)
            .finish();
        let url = self
            .api
            .join("1/users/validate.json")
            .map_err(|e| DeliveryError::Permanent {
                reason: "bad_uri",
                detail: e.to_string(),
            })?;
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| super::http::unanswered(&e))?;
        super::http::answer(resp)
            .await
            .map(|_| ())
            .map_err(with_their_words)
    }

    /// Polls an emergency's receipt: acknowledged (by whom, when), or
    /// expired without anyone acknowledging it.
    async fn poll_receipt(&self, receipt: &str) -> Result<Option<Report>, DeliveryError> {
        if !plausible_receipt(receipt) {
            return Err(DeliveryError::Permanent {
                reason: "bad_receipt",
                detail: format!("`{receipt}` is not a Pushover receipt"),
            });
        }
        let mut url = self
            .api
            .join(&format!("1/receipts/{receipt}.json"))
            .map_err(|e| DeliveryError::Permanent {
                reason: "bad_receipt",
                detail: e.to_string(),
            })?;
        url.query_pairs_mut()
            .append_pair("token", self.token.expose());
        let resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| super::http::unanswered(&e))?;
        let (_, text) = super::http::answer(resp).await.map_err(with_their_words)?;
        let a: ReceiptAnswer =
            serde_json::from_str(&text).map_err(|e| DeliveryError::Transient {
                reason: "bad_answer",
                detail: format!("receipt answer: {e}"),
                retry_after: None,
            })?;
        if a.acknowledged == 1 {
            let at = chrono::DateTime::from_timestamp(a.acknowledged_at, 0)
                .map(crate::model::fmt_time)
                .unwrap_or_default();
            let by = a
                .acknowledged_by_device
                .filter(|d| !d.is_empty())
                .map(|d| format!(" on {d}"))
                .unwrap_or_default();
            return Ok(Some(Report {
                status: ReceiptStatus::Acknowledged,
                detail: Some(format!("at {at}{by}")),
            }));
        }
        if a.expired == 1 {
            return Ok(Some(Report {
                status: ReceiptStatus::Unacknowledged,
                detail: Some("the emergency expired without acknowledgement".into()),
            }));
        }
        Ok(None)
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
    async fn an_unknown_user_key_is_refused_when_the_destination_is_made() {
        let po = Provider::start(
            400,
            r#"{"user":"invalid","errors":["user key is invalid"],"status":0,"request":"5042853c-402d-4a18-abcb-168734a801de"}"#,
        )
        .await;
        let ch = channel(&po.url);
        let uri = "pushover:uQiRzpo4DXghDmr9QzzfQu27cmVRsG".parse().unwrap();
        let err = ch.check_destination(&uri).await.unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(err.detail(), "HTTP 400 user key is invalid");
        assert!(!format!("{err:?}").contains("azGDORePK8gMaC0QOYAMyEEuzJnyUi"));
        let req = po.only_request();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/1/users/validate.json")
        );
        assert_eq!(
            std::str::from_utf8(&req.body).unwrap(),
            "token=azGDORePK8gMaC0QOYAMyEEuzJnyUi&user=uQiRzpo4DXghDmr9QzzfQu27cmVRsG"
        );
    }

    #[tokio::test]
    async fn an_emergency_receipt_is_polled_until_acknowledged() {
        let po = Provider::start(
            200,
            r#"{"status":1,"acknowledged":1,"acknowledged_at":1735689600,"acknowledged_by":"uQiRzpo4DXghDmr9QzzfQu27cmVRsG","acknowledged_by_device":"alice-phone","last_delivered_at":1735689500,"expired":0,"expires_at":1735693200,"called_back":0,"called_back_at":0,"request":"x"}"#,
        )
        .await;
        let ch = channel(&po.url);
        let report = ch
            .poll_receipt("rLqVuqTRh62UzxtmqiaLzQmVcPgiCy")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.status, ReceiptStatus::Acknowledged);
        assert_eq!(
            report.detail.as_deref(),
            Some("at 2025-01-01T00:00:00Z on alice-phone")
        );
        let req = po.only_request();
        assert_eq!(req.method, "GET");
        assert_eq!(
            req.path,
            "/1/receipts/rLqVuqTRh62UzxtmqiaLzQmVcPgiCy.json?token=azGDORePK8gMaC0QOYAMyEEuzJnyUi"
        );
        let po = Provider::start(
            200,
            r#"{"status":1,"acknowledged":0,"expired":0,"request":"x"}"#,
        )
        .await;
        assert_eq!(
            channel(&po.url)
                .poll_receipt("rLqVuqTRh62UzxtmqiaLzQmVcPgiCy")
                .await
                .unwrap(),
            None
        );
        let po = Provider::start(
            200,
            r#"{"status":1,"acknowledged":0,"expired":1,"request":"x"}"#,
        )
        .await;
        let report = channel(&po.url)
            .poll_receipt("rLqVuqTRh62UzxtmqiaLzQmVcPgiCy")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.status, ReceiptStatus::Unacknowledged);
        // A receipt that is no receipt never reaches a URL.
        assert!(ch.poll_receipt("../messages").await.is_err());
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
