//! Webhooks: an HTTP POST of the event and its rendered texts, signed per
//! Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`).
//! The id is the notification's, so a receiver can drop a retried duplicate.

use super::{Channel, DeliveryError, Outgoing, Receipt};
use crate::config::WebhookConfig;
use crate::model::{ChannelKind, Secret, fmt_time};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};

/// Decodes a `whsec_…` secret into the HMAC key.
pub fn decode_secret(s: &str) -> Result<Vec<u8>, String> {
    let b64 = s.strip_prefix("whsec_").ok_or("must start with whsec_")?;
    let key = B64
        .decode(b64)
        .map_err(|_| "the part after whsec_ is not base64".to_string())?;
    if key.len() < 16 {
        return Err("the key must be at least 16 bytes (24 base64 characters)".into());
    }
    Ok(key)
}

/// The `webhook-signature` value for one delivery.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

pub struct WebhookChannel {
    client: reqwest::Client,
    key: Option<Secret<Vec<u8>>>,
    allow_http: bool,
}

impl WebhookChannel {
    pub fn from_config(cfg: &WebhookConfig) -> anyhow::Result<Self> {
        let key = cfg
            .secret
            .as_ref()
            .map(|s| decode_secret(s.expose()).map(Secret::new))
            .transpose()
            .map_err(|e| anyhow::anyhow!("channels.webhook.secret: {e}"))?;
        let client = super::http::client(cfg.timeout.0)?;
        Ok(Self {
            client,
            key,
            allow_http: cfg.allow_http,
        })
    }

    /// The JSON body: Standard Webhooks' `{type, timestamp, data}` envelope.
    pub fn body(msg: &Outgoing, now: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
        let n = &msg.notification;
        serde_json::json!({
            "type": n.type_name,
            "timestamp": fmt_time(now),
            "data": {
                "notification": n.id,
                "event": msg.event,
                "account": n.account,
                "contact": n.contact,
                "destination": n.uri,
                "priority": n.priority,
                "short": msg.rendered.short,
                "subject": msg.rendered.subject,
                "body": msg.rendered.body,
            }
        })
    }
}

#[async_trait]
impl Channel for WebhookChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Webhook
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let n = &msg.notification;
        let dest: crate::model::DestinationUri =
            n.uri.parse().map_err(|e| DeliveryError::Permanent {
                reason: "bad_url",
                detail: format!("{e}"),
            })?;
        let crate::model::DestinationUri::Webhook(url) = &dest else {
            return Err(DeliveryError::Permanent {
                reason: "bad_url",
                detail: format!("`{}` is not a web address", n.uri),
            });
        };
        if url.scheme() == "http" && !self.allow_http && !dest.is_loopback_http() {
            return Err(DeliveryError::Permanent {
                reason: "insecure_url",
                detail:
                    "plain http is only allowed to loopback unless [channels.webhook] allow_http"
                        .into(),
            });
        }
        let now = chrono::Utc::now();
        let body =
            serde_json::to_vec(&Self::body(msg, now)).map_err(|e| DeliveryError::Permanent {
                reason: "encode",
                detail: e.to_string(),
            })?;
        let ts = now.timestamp();
        let mut req = self
            .client
            .post(url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &n.id)
            .header("webhook-timestamp", ts.to_string());
        if let Some(key) = &self.key {
            req = req.header("webhook-signature", sign(key.expose(), &n.id, ts, &body));
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| super::http::unanswered(&e))?;
        let (status, words) = super::http::answer(resp).await?;
        Ok(Receipt {
            detail: Some(format!("HTTP {status} {}", words.trim()).trim().to_string()),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_reference_signature() {
        // The example from the Standard Webhooks specification.
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secret_format() {
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_!!!").is_err());
        assert!(decode_secret("whsec_c2hvcnQ=").is_err());
    }
}
