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
    /// Where tapping a notice leads (the portal, say); an event's own
    /// `data.url` (http or https) wins.
    #[serde(default)]
    pub click: Option<url::Url>,
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
    click: Option<url::Url>,
}

impl NtfyChannel {
    pub fn from_config(cfg: &NtfyConfig) -> anyhow::Result<Self> {
        Ok(Self {
            client: super::http::client(cfg.timeout.0)?,
            url: cfg.url.clone(),
            token: cfg.token.clone(),
            click: cfg.click.clone(),
        })
    }
}

impl NtfyChannel {
    /// The click URL: the event's `data.url` if it is a web address, else
    /// the configured one.
    fn click(&self, msg: &Outgoing) -> Option<String> {
        let from_event = msg
            .event
            .as_ref()
            .and_then(|e| e.data.get("url"))
            .and_then(|u| u.as_str())
            .and_then(|u| url::Url::parse(u).ok())
            .filter(|u| matches!(u.scheme(), "https" | "http"));
        from_event
            .or_else(|| self.click.clone())
            .map(|u| u.to_string())
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
        let mut body = serde_json::json!({
            "topic": topic,
            "message": message,
            "title": msg.rendered.subject,
            "priority": priority(n.priority),
        });
        if let Some(click) = self.click(msg) {
            body["click"] = click.into();
        }
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

    #[tokio::test]
    async fn a_click_url_from_the_event_or_the_config() {
        let ntfy = Provider::start(200, r#"{"id":"x"}"#).await;
        let cfg: NtfyConfig = toml::from_str(&format!(
            "url = \"{}\"\nclick = \"https://my.isp.example/messages\"",
            ntfy.url
        ))
        .unwrap();
        let ch = NtfyChannel::from_config(&cfg).unwrap();
        let mut out = outgoing("ntfy:alerts", "Appointment booked", "Appointment");
        ch.deliver(&out).await.unwrap();
        let mut event: crate::model::Event = serde_json::from_value(serde_json::json!({
            "id": "e1", "type": "appointment.booked", "account": "A1", "key": "k",
            "priority": "normal", "category": "appointment",
            "occurred_at": "2026-07-01T09:00:00Z", "received_at": "2026-07-01T09:00:00Z",
            "data": {"url": "https://my.isp.example/appointments/42"}
        }))
        .unwrap();
        out.event = Some(event.clone());
        ch.deliver(&out).await.unwrap();
        // Not a web address: the configured one.
        event
            .data
            .insert("url".into(), "javascript:alert(1)".into());
        out.event = Some(event);
        ch.deliver(&out).await.unwrap();
        let clicks: Vec<_> = ntfy
            .requests()
            .iter()
            .map(|r| r.json()["click"].clone())
            .collect();
        assert_eq!(
            clicks,
            vec![
                serde_json::json!("https://my.isp.example/messages"),
                serde_json::json!("https://my.isp.example/appointments/42"),
                serde_json::json!("https://my.isp.example/messages"),
            ]
        );
    }
}
