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

/// A new signing secret: `whsec_` and 32 bytes from the OS's RNG.
pub fn new_secret() -> String {
    use rand::TryRngCore;
    let mut key = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .expect("the OS random number generator");
    format!("whsec_{}", B64.encode(key))
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

    /// The `webhook-signature` header: one `v1,…` per secret in force —
    /// the destination's own, and the channel's where it still applies —
    /// space-separated as Standard Webhooks allows, so a receiver in the
    /// middle of a rotation accepts the delivery with either.
    fn signature(
        &self,
        msg: &Outgoing,
        ts: i64,
        body: &[u8],
    ) -> Result<Option<String>, DeliveryError> {
        let id = &msg.notification.id;
        let mut signatures = msg
            .secrets
            .iter()
            .map(|s| {
                decode_secret(s.expose())
                    .map(|key| sign(&key, id, ts, body))
                    .map_err(|e| DeliveryError::Permanent {
                        reason: "bad_secret",
                        detail: format!("the destination's signing secret: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if msg.channel_secret
            && let Some(key) = &self.key
        {
            signatures.push(sign(key.expose(), id, ts, body));
        }
        Ok((!signatures.is_empty()).then(|| signatures.join(" ")))
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
        if let Some(signature) = self.signature(msg, ts, &body)? {
            req = req.header("webhook-signature", signature);
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

    #[tokio::test]
    async fn a_destination_mid_rotation_is_signed_with_both_secrets() {
        let receiver = crate::channels::testkit::Provider::start(204, "").await;
        let cfg = WebhookConfig {
            secret: Some(Secret::new(new_secret())),
            ..Default::default()
        };
        let ch = WebhookChannel::from_config(&cfg).unwrap();
        let (new, old) = (new_secret(), new_secret());
        let mut out = crate::channels::testkit::outgoing(
            &format!("{}/hook", receiver.url),
            "Line down",
            "Line down",
        );
        out.secrets = vec![Secret::new(new.clone()), Secret::new(old.clone())];
        out.channel_secret = false;
        ch.deliver(&out).await.unwrap();
        let req = receiver.only_request();
        let ts: i64 = req.header("webhook-timestamp").unwrap().parse().unwrap();
        let id = req.header("webhook-id").unwrap();
        let want = format!(
            "{} {}",
            sign(&decode_secret(&new).unwrap(), id, ts, &req.body),
            sign(&decode_secret(&old).unwrap(), id, ts, &req.body)
        );
        assert_eq!(req.header("webhook-signature"), Some(want.as_str()));
        // The channel-wide secret is not used for a destination with its own.
        let global = sign(
            &decode_secret(cfg.secret.as_ref().unwrap().expose()).unwrap(),
            id,
            ts,
            &req.body,
        );
        assert!(!want.contains(&global));
    }

    #[test]
    fn new_secrets_are_valid_and_distinct() {
        let (a, b) = (new_secret(), new_secret());
        assert_eq!(decode_secret(&a).unwrap().len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn secret_format() {
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_!!!").is_err());
        assert!(decode_secret("whsec_c2hvcnQ=").is_err());
    }
}
