//! Twilio's Programmable Messaging API:
//! `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded
//! `To`, `From` (or `MessagingServiceSid`), `Body`, `ValidityPeriod` and,
//! where kci is reachable, `StatusCallback`; HTTP basic auth with the
//! account SID and auth token. The answer's `sid` is kept, and the
//! message's status asked (`GET …/Messages/{sid}.json`) until Twilio says
//! `delivered`, `undelivered` or `failed`.
//!
//! The validity period is the shorter of the configured one and the time
//! left before the notice expires, so a text that can no longer matter also
//! expires in Twilio's queue instead of arriving late.
//!
//! Twilio's Messages API takes no idempotency key: a create whose answer
//! was lost (a timeout) may have been accepted, and the retry then sends
//! the text a second time. kci keeps the window small (the timeout), and
//! the delivery report of each SID shows what happened.

use crate::channels::{DeliveryError, Outgoing, Receipt, Report};
use crate::model::{ReceiptStatus, Secret, Span};
use serde::Deserialize;

/// `[channels.sms.twilio]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// `AC` and 32 hex digits.
    pub account_sid: String,
    pub auth_token: Secret<String>,
    /// The sending number (E.164) or alphanumeric sender id.
    #[serde(default)]
    pub from: Option<String>,
    /// Or a Messaging Service (`MG…`), which picks the sender.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// The API server.
    #[serde(default = "default_api")]
    pub api: url::Url,
    /// Longest time a text may wait in Twilio's queue (at most 10h).
    #[serde(default = "default_validity")]
    pub validity_period: Span,
    /// kci's public base URL, if Twilio can reach it: status callbacks go
    /// to `{status_callback}/v1/callbacks/twilio/{notification}`.
    #[serde(default)]
    pub status_callback: Option<url::Url>,
    /// Give up on one request after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
}

fn default_api() -> url::Url {
    url::Url::parse("https://api.twilio.com").expect("a valid URL")
}
fn default_validity() -> Span {
    Span(std::time::Duration::from_secs(4 * 3600))
}
fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(15))
}

/// Twilio's range for `ValidityPeriod`, in seconds.
const VALIDITY: std::ops::RangeInclusive<i64> = 1..=36_000;

fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl TwilioConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !is_sid(&self.account_sid, "AC") {
            return Err((
                "account_sid".into(),
                "an account SID is AC followed by 32 hex digits".into(),
            ));
        }
        match (&self.from, &self.messaging_service_sid) {
            (None, None) => {
                return Err((
                    "from".into(),
                    "set `from` (a number or sender id) or `messaging_service_sid`".into(),
                ));
            }
            (_, Some(mg)) if !is_sid(mg, "MG") => {
                return Err((
                    "messaging_service_sid".into(),
                    "a Messaging Service SID is MG followed by 32 hex digits".into(),
                ));
            }
            _ => {}
        }
        let secs = self.validity_period.0.as_secs() as i64;
        if !VALIDITY.contains(&secs) {
            return Err((
                "validity_period".into(),
                "Twilio accepts 1 second to 10 hours".into(),
            ));
        }
        Ok(())
    }
}

pub struct Twilio {
    client: reqwest::Client,
    cfg: TwilioConfig,
    messages: url::Url,
}

/// What Twilio answers about a message (create and fetch alike).
#[derive(Deserialize)]
struct Message {
    sid: String,
    status: String,
    #[serde(default)]
    num_segments: Option<String>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    error_message: Option<String>,
}

/// Twilio's error body.
#[derive(Deserialize)]
struct ApiError {
    code: Option<i64>,
    message: String,
}

impl Twilio {
    pub fn from_config(cfg: &TwilioConfig) -> anyhow::Result<Self> {
        let messages = cfg
            .api
            .join(&format!("2010-04-01/Accounts/{}/Messages", cfg.account_sid))
            .map_err(|e| anyhow::anyhow!("channels.sms.twilio.api: {e}"))?;
        Ok(Self {
            client: crate::channels::http::client(cfg.timeout.0)?,
            cfg: cfg.clone(),
            messages,
        })
    }

    fn url(&self, tail: &str) -> url::Url {
        let mut u = self.messages.clone();
        u.set_path(&format!("{}{tail}", self.messages.path()));
        u
    }

    /// Seconds the text may wait at Twilio: the configured period, or less
    /// when the notice expires sooner.
    fn validity(&self, msg: &Outgoing) -> i64 {
        let configured = self.cfg.validity_period.0.as_secs() as i64;
        let left = msg
            .notification
            .expires_at
            .map(|exp| (exp - chrono::Utc::now()).num_seconds())
            .unwrap_or(configured);
        left.min(configured)
            .clamp(*VALIDITY.start(), *VALIDITY.end())
    }

    pub async fn send(
        &self,
        msg: &Outgoing,
        to: &str,
        text: &str,
    ) -> Result<Receipt, DeliveryError> {
        let request = self
            .client
            .post(self.url(".json"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(self.form(msg, to, text));
        let m = self.call(request).await?;
        Ok(Receipt {
            detail: Some(format!("twilio {} {}", m.sid, m.status)),
            segments: m.num_segments.and_then(|s| s.parse().ok()),
            awaiting: true,
            provider_ref: Some(m.sid),
        })
    }

    /// Sends `request` with the account's credentials; Twilio's message
    /// resource, or the failure in Twilio's words.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Message, DeliveryError> {
        let resp = request
            .basic_auth(&self.cfg.account_sid, Some(self.cfg.auth_token.expose()))
            .send()
            .await
            .map_err(|e| crate::channels::http::unanswered(&e))?;
        let (_, answer) = crate::channels::http::answer(resp)
            .await
            .map_err(with_their_words)?;
        serde_json::from_str(&answer).map_err(|e| DeliveryError::Transient {
            reason: "bad_answer",
            detail: format!("Twilio's answer: {e}"),
            retry_after: None,
        })
    }

    /// The Messages API form for one text.
    fn form(&self, msg: &Outgoing, to: &str, text: &str) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("To", to);
        match (&self.cfg.messaging_service_sid, &self.cfg.from) {
            (Some(mg), _) => form.append_pair("MessagingServiceSid", mg),
            (None, Some(from)) => form.append_pair("From", from),
            (None, None) => &mut form,
        };
        form.append_pair("Body", text)
            .append_pair("ValidityPeriod", &self.validity(msg).to_string());
        if let Some(cb) = self
            .cfg
            .status_callback
            .as_ref()
            .and_then(|base| callback_url(base, &msg.notification.id))
        {
            form.append_pair("StatusCallback", cb.as_str());
        }
        form.finish()
    }

    /// Where message `sid` stands: final states only.
    pub async fn status(&self, sid: &str) -> Result<Option<Report>, DeliveryError> {
        if !is_sid(sid, "SM") && !is_sid(sid, "MM") {
            return Err(DeliveryError::Permanent {
                reason: "bad_receipt",
                detail: format!("`{sid}` is not a Twilio message SID"),
            });
        }
        let m = self
            .call(self.client.get(self.url(&format!("/{sid}.json"))))
            .await?;
        Ok(report(&m.status, m.error_code, m.error_message.as_deref()))
    }
}

/// Where Twilio reports on notification `id`: kci's public base URL and
/// `v1/callbacks/twilio/{id}`.
pub fn callback_url(base: &url::Url, id: &str) -> Option<url::Url> {
    base.join(&format!("v1/callbacks/twilio/{id}")).ok()
}

/// Checks an `X-Twilio-Signature`: base64 of HMAC-SHA1, keyed with the
/// auth token, over the URL Twilio called followed by each POST parameter's
/// name and value, sorted by name. Compared in constant time.
pub fn valid_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    use base64::Engine;
    use hmac::Mac;
    use subtle::ConstantTimeEq;
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()) else {
        return false;
    };
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
}

/// A Twilio message status as kci's receipt; `None` while not final.
pub fn report(status: &str, code: Option<i64>, words: Option<&str>) -> Option<Report> {
    let why = || match (code, words) {
        (Some(c), Some(w)) => Some(format!("{status}, error {c}: {w}")),
        (Some(c), None) => Some(format!("{status}, error {c}")),
        _ => Some(status.to_string()),
    };
    match status {
        "delivered" | "read" => Some(Report {
            status: ReceiptStatus::Delivered,
            detail: None,
        }),
        "undelivered" | "failed" | "canceled" => Some(Report {
            status: ReceiptStatus::Undelivered,
            detail: why(),
        }),
        _ => None,
    }
}

/// "HTTP 400 {json}" becomes "HTTP 400 21211 The 'To' number … is not valid".
fn with_their_words(e: DeliveryError) -> DeliveryError {
    match crate::channels::http::error_body::<ApiError>(&e) {
        Some((status, a)) => {
            let code = a.code.map(|c| format!("{c} ")).unwrap_or_default();
            e.with_detail(format!("{status} {code}{}", a.message))
        }
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::Channel;
    use crate::channels::sms::{SmsChannel, SmsConfig};
    use crate::channels::testkit::{Provider, outgoing};

    const SID: &str = "AC1234567890abcdef1234567890abcdef";
    const TOKEN: &str = "f00dcafe0123456789abcdef01234567";

    fn channel(url: &str, extra: &str) -> SmsChannel {
        let cfg: SmsConfig = toml::from_str(&format!(
            "[twilio]\naccount_sid = \"{SID}\"\nauth_token = \"{TOKEN}\"\nfrom = \"+447700900000\"\napi = \"{url}\"\n{extra}"
        ))
        .unwrap();
        cfg.validate().unwrap();
        SmsChannel::from_config(&cfg).unwrap().unwrap()
    }

    const CREATED: &str = r#"{"account_sid":"AC1234567890abcdef1234567890abcdef","api_version":"2010-04-01","body":"Your line L1 is down.","date_created":"Thu, 24 Aug 2023 05:01:45 +0000","direction":"outbound-api","error_code":null,"error_message":null,"from":"+447700900000","messaging_service_sid":null,"num_media":"0","num_segments":"1","price":null,"price_unit":"USD","sid":"SM1234567890abcdef1234567890abcdef","status":"queued","to":"+447700900123","uri":"/2010-04-01/Accounts/AC1234567890abcdef1234567890abcdef/Messages/SM1234567890abcdef1234567890abcdef.json"}"#;

    #[tokio::test]
    async fn creates_a_message_per_the_api_with_a_validity_period() {
        let twilio = Provider::start(201, CREATED).await;
        let ch = channel(
            &twilio.url,
            "validity_period = \"2h\"\nstatus_callback = \"https://kci.isp.example/\"",
        );
        let mut out = outgoing("sms:+447700900123", "Your line L1 is down.", "Line down");
        // Expires in 30 minutes: Twilio must not hold it longer.
        out.notification.expires_at = Some(chrono::Utc::now() + chrono::Duration::minutes(30));
        let receipt = ch.deliver(&out).await.unwrap();
        assert_eq!(
            receipt.provider_ref.as_deref(),
            Some("SM1234567890abcdef1234567890abcdef")
        );
        assert!(receipt.awaiting);
        assert_eq!(receipt.segments, Some(1));
        let req = twilio.only_request();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            (
                "POST",
                format!("/2010-04-01/Accounts/{SID}/Messages.json").as_str()
            )
        );
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"));
        assert_eq!(
            req.header("authorization"),
            Some(format!("Basic {basic}").as_str())
        );
        assert_eq!(
            req.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(&req.body)
                .into_owned()
                .collect();
        assert_eq!(form["To"], "+447700900123");
        assert_eq!(form["From"], "+447700900000");
        assert_eq!(form["Body"], "Your line L1 is down.");
        let validity: i64 = form["ValidityPeriod"].parse().unwrap();
        assert!((1790..=1800).contains(&validity), "{validity}");
        assert_eq!(
            form["StatusCallback"],
            format!(
                "https://kci.isp.example/v1/callbacks/twilio/{}",
                out.notification.id
            )
        );
        assert_eq!(form.len(), 5);
    }

    #[tokio::test]
    async fn errors_carry_twilios_words_never_the_token() {
        let cases = [
            (
                400,
                r#"{"code":21211,"message":"The 'To' number +447700900123 is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#,
                false,
                "HTTP 400 21211 The 'To' number",
            ),
            (
                401,
                r#"{"code":20003,"message":"Authenticate","more_info":"https://www.twilio.com/docs/errors/20003","status":401}"#,
                false,
                "HTTP 401 20003 Authenticate",
            ),
            (
                429,
                r#"{"code":20429,"message":"Too Many Requests","more_info":"https://www.twilio.com/docs/errors/20429","status":429}"#,
                true,
                "HTTP 429 20429 Too Many Requests",
            ),
            (503, "", true, "HTTP 503"),
        ];
        for (status, body, transient, words) in cases {
            let twilio = Provider::start(status, body).await;
            let ch = channel(&twilio.url, "");
            let err = ch
                .deliver(&outgoing("sms:+447700900123", "x", "y"))
                .await
                .unwrap_err();
            assert_eq!(err.is_transient(), transient, "{status}");
            assert!(err.detail().starts_with(words), "{err}");
            assert!(!format!("{err} {err:?}").contains(TOKEN), "{status}");
        }
    }

    #[tokio::test]
    async fn delivery_reports_are_asked_for_until_final() {
        let fetched = r#"{"sid":"SM1234567890abcdef1234567890abcdef","status":"undelivered","error_code":30003,"error_message":"Unreachable destination handset","num_segments":"1"}"#;
        let twilio = Provider::start(200, fetched).await;
        let ch = channel(&twilio.url, "");
        let report = ch
            .poll_receipt("SM1234567890abcdef1234567890abcdef")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(report.status, ReceiptStatus::Undelivered);
        assert_eq!(
            report.detail.as_deref(),
            Some("undelivered, error 30003: Unreachable destination handset")
        );
        let req = twilio.only_request();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            (
                "GET",
                format!(
                    "/2010-04-01/Accounts/{SID}/Messages/SM1234567890abcdef1234567890abcdef.json"
                )
                .as_str()
            )
        );
        // Not final yet; delivered; a SID that is no SID is never asked.
        assert_eq!(report_of("sent"), None);
        assert_eq!(
            report_of("delivered").map(|r| r.status),
            Some(ReceiptStatus::Delivered)
        );
        assert!(ch.poll_receipt("../../Calls").await.is_err());
        assert_eq!(twilio.requests().len(), 1);
    }

    #[test]
    fn request_signatures_per_twilios_reference() {
        // The example in Twilio's "Webhooks security" documentation.
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let token = "12345";
        let good = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert!(valid_signature(token, url, &params, good));
        assert!(!valid_signature(
            token,
            url,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgR="
        ));
        assert!(!valid_signature("54321", url, &params, good));
        assert!(!valid_signature(token, url, &params[1..], good));
    }

    fn report_of(status: &str) -> Option<Report> {
        report(status, None, None)
    }

    #[test]
    fn config_mistakes_name_the_key() {
        let base = |extra: &str| -> SmsConfig {
            toml::from_str(&format!("[twilio]\nauth_token = \"t\"\n{extra}")).unwrap()
        };
        let cases = [
            (
                "account_sid = \"AC123\"\nfrom = \"+447700900000\"",
                "account_sid",
            ),
            (&format!("account_sid = \"{SID}\"") as &str, "from"),
            (
                &format!("account_sid = \"{SID}\"\nfrom = \"x\"\nvalidity_period = \"11h\""),
                "validity_period",
            ),
            (
                &format!("account_sid = \"{SID}\"\nmessaging_service_sid = \"MGxyz\""),
                "messaging_service_sid",
            ),
        ];
        for (extra, key) in cases {
            assert_eq!(
                base(extra).validate().unwrap_err().0,
                format!("channels.sms.twilio.{key}"),
                "{extra}"
            );
        }
    }
}
