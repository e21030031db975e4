//! ntfy (`ntfy:<topic>` destinations): one JSON publish per notice to the
//! configured server, per ntfy's "publish as JSON" API — `POST /` with
//! `{topic, message, title, priority}` and the access token as a bearer.

use super::{Channel, DeliveryError, Outgoing, Receipt};
use crate::model::{ChannelKind, Priority, Secret, Span};
use async_trait::async_trait;
use serde::Deserialize;

/// `[channels.ntfy]`: present means enabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NtfyConfig {
    /// The ntfy server.
    #[serde(default = "default_url")]
    pub url: url::Url,
    /// An access token (`tk_…`), if the server wants one.
    #[serde(default)]
    pub token: Option<Secret<String>>,
    /// Give up on one request after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// The server's rate limit, such as `60/1m`.
    #[serde(default)]
    pub rate: Option<crate::model::Cap>,
}

fn default_url() -> url::Url {
    url::Url::parse("https://ntfy.sh").expect("a valid URL")
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(10))
}

/// ntfy's priorities run 1 (min) to 5 (max).
pub fn priority(p: Priority) -> u8 {
    match p {
        Priority::Low => 2,
        Priority::Normal => 3,
        Priority::High => 4,
        Priority::Urgent => 5,
    }
}

pub struct NtfyChannel {
    client: reqwest::Client,
    url: url::Url,
    token: Option<Secret<String>>,
}

impl NtfyChannel {
    pub fn from_config(cfg: &NtfyConfig) -> anyhow::Result<Self> {
        Ok(Self {
            client: super::http::client(cfg.timeout.0)?,
            url: cfg.url.clone(),
            token: cfg.token.clone(),
        })
    }
}

#[derive(Deserialize)]
struct Published {
    id: String,
}

#[async_trait]
impl Channel for NtfyChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Ntfy
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let n = &msg.notification;
        let topic = msg.address();
        let message = msg.text();
        let body = serde_json::json!({
            "topic": topic,
            "message": message,
            "title": msg.rendered.subject,
            "priority": priority(n.priority),
        });
        let mut req = self.client.post(self.url.clone()).json(&body);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose());
        }
        let resp = req.send().await.map_err(|e| super::http::unanswered(&e))?;
        let (_, text) = super::http::answer(resp).await?;
        let id = serde_json::from_str::<Published>(&text)
            .map(|p| p.id)
            .unwrap_or_default();
        Ok(Receipt {
            detail: Some(format!("ntfy message {id}")),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::testkit::{Provider, outgoing};

    fn channel(url: &str, token: Option<&str>) -> NtfyChannel {
        let cfg: NtfyConfig = toml::from_str(&format!(
            "url = \"{url}\"\n{}",
            token
                .map(|t| format!("token = \"{t}\""))
                .unwrap_or_default()
        ))
        .unwrap();
        NtfyChannel::from_config(&cfg).unwrap()
    }

    #[tokio::test]
    async fn publishes_as_json_per_the_api() {
        let ntfy = Provider::start(200, r#"{"id":"hwQ2YpKdmg","time":1735689600,"event":"message","topic":"alerts","message":"x"}"#).await;
        let ch = channel(&ntfy.url, Some("tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2"));
        let mut out = outgoing("ntfy:alerts", "Your line L1 went down.", "Line L1 is down");
        out.notification.priority = Priority::High;
        let receipt = ch.deliver(&out).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some("ntfy message hwQ2YpKdmg"));
        let req = ntfy.only_request();
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/"));
        assert_eq!(
            req.header("authorization"),
            Some("Bearer tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2")
        );
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(
            req.json(),
            serde_json::json!({"topic": "alerts", "message": "Your line L1 went down.", "title": "Line L1 is down", "priority": 4})
        );
    }

    #[tokio::test]
    async fn the_servers_errors_are_classified_and_the_token_never_shows() {
        let cases = [
            (
                403,
                r#"{"code":40301,"http":403,"error":"forbidden"}"#,
                false,
            ),
            (
                429,
                r#"{"code":42901,"http":429,"error":"limit reached: too many requests"}"#,
                true,
            ),
            (500, "", true),
        ];
        for (status, body, transient) in cases {
            let ntfy = Provider::start(status, body).await;
            let ch = channel(&ntfy.url, Some("tk_secretsecretsecret"));
            let err = ch
                .deliver(&outgoing("ntfy:alerts", "x", "y"))
                .await
                .unwrap_err();
            assert_eq!(err.is_transient(), transient, "{status}");
            assert!(err.detail().contains(&format!("HTTP {status}")), "{err}");
            assert!(!format!("{err} {err:?}").contains("tk_secret"), "{status}");
        }
    }
}
