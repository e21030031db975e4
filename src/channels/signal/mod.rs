//! Signal (`signal:+447700900123` destinations) through a signal-cli REST
//! API server (bbernhard/signal-cli-rest-api): `POST /v2/send` with
//! `{message, number, recipients}`, sent from the operator's registered
//! number.
//!
//! The REST API answers every failed send `400 {"error": "…"}`, signal-cli's
//! words included; one of them, "Failed to send message due to rate
//! limiting" (signal-cli's `RateLimitErrorException`), is Signal's server
//! asking to slow down, so it is worth retrying rather than final.

use super::{Channel, DeliveryError, Outgoing, Receipt};
use crate::model::{ChannelKind, Secret, Span};
use async_trait::async_trait;
use serde::Deserialize;

/// `[channels.signal]`: present means enabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalConfig {
    /// The signal-cli REST API server.
    pub url: url::Url,
    /// The operator's registered Signal number (E.164).
    pub number: String,
    /// A bearer token, if the server sits behind one.
    #[serde(default)]
    pub token: Option<Secret<String>>,
    /// Give up on one request after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// Rate limit, such as `1/s`.
    #[serde(default)]
    pub rate: Option<crate::model::Cap>,
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(30))
}

pub struct SignalChannel {
    client: reqwest::Client,
    send: url::Url,
    number: String,
    token: Option<Secret<String>>,
}

impl SignalChannel {
    pub fn from_config(cfg: &SignalConfig) -> anyhow::Result<Self> {
        let send = cfg
            .url
            .join("v2/send")
            .map_err(|e| anyhow::anyhow!("channels.signal.url: {e}"))?;
        Ok(Self {
            client: super::http::client(cfg.timeout.0)?,
            send,
            number: cfg.number.clone(),
            token: cfg.token.clone(),
        })
    }
}

#[async_trait]
impl Channel for SignalChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Signal
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let recipient = msg.address();
        let message = msg.text();
        let body = serde_json::json!({ "message": message, "number": self.number, "recipients": [recipient] });
        let mut req = self.client.post(self.send.clone()).json(&body);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose());
        }
        let resp = req.send().await.map_err(|e| super::http::unanswered(&e))?;
        let (_, text) = super::http::answer(resp).await.map_err(explain)?;
        let stamp = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("timestamp")
                    .map(|t| t.to_string().trim_matches('"').to_string())
            })
            .unwrap_or_default();
        Ok(Receipt {
            detail: Some(format!("signal timestamp {stamp}")),
            ..Default::default()
        })
    }
}

/// The REST API's error body.
#[derive(Deserialize)]
struct ApiError {
    error: String,
}

/// "HTTP 400 {json}" becomes "HTTP 400 <signal-cli's words>"; a rate limit
/// passed through as 400 becomes transient.
fn explain(e: DeliveryError) -> DeliveryError {
    let Some((status, body)) = super::http::error_body::<ApiError>(&e) else {
        return e;
    };
    let detail = format!("{status} {}", body.error);
    if e.is_permanent() && body.error.to_ascii_lowercase().contains("rate limit") {
        return DeliveryError::Transient {
            reason: "rate_limited",
            detail,
            retry_after: None,
        };
    }
    e.with_detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::testkit::{Provider, outgoing};

    fn channel(url: &str) -> SignalChannel {
        let cfg: SignalConfig =
            toml::from_str(&format!("url = \"{url}\"\nnumber = \"+447700900999\"")).unwrap();
        SignalChannel::from_config(&cfg).unwrap()
    }

    #[tokio::test]
    async fn sends_per_the_rest_api() {
        let server = Provider::start(201, r#"{"timestamp":"1735689600123"}"#).await;
        let receipt = channel(&server.url)
            .deliver(&outgoing("signal:+447700900123", "Line L1 down.", "x"))
            .await
            .unwrap();
        assert_eq!(
            receipt.detail.as_deref(),
            Some("signal timestamp 1735689600123")
        );
        let req = server.only_request();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/v2/send")
        );
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(
            req.json(),
            serde_json::json!({"message": "Line L1 down.", "number": "+447700900999", "recipients": ["+447700900123"]})
        );
    }

    #[tokio::test]
    async fn an_unregistered_recipient_is_refused_for_good() {
        let server = Provider::start(
            400,
            r#"{"error":"Failed to send message: Unregistered user +447700900123"}"#,
        )
        .await;
        let err = channel(&server.url)
            .deliver(&outgoing("signal:+447700900123", "x", "y"))
            .await
            .unwrap_err();
        assert!(err.is_permanent());
        assert!(err.detail().contains("Unregistered user"), "{err}");
    }

    #[tokio::test]
    async fn a_rate_limit_passed_through_as_400_is_retried() {
        let server = Provider::start(
            400,
            r#"{"error":"Failed to send message due to rate limiting"}"#,
        )
        .await;
        let err = channel(&server.url)
            .deliver(&outgoing("signal:+447700900123", "x", "y"))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(err.reason(), "rate_limited");
        assert_eq!(
            err.detail(),
            "HTTP 400 Failed to send message due to rate limiting"
        );
    }
}
