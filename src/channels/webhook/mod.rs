//! Webhooks: an HTTP POST of the event and its rendered texts, signed per
//! Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`).
//! The id is the notification's, so a receiver can drop a retried duplicate.
//! Only to public addresses unless `[channels.webhook] allow_private`
//! (see [`target`]).

pub mod target;

use super::WebhookConfig;
use super::{Channel, DeliveryError, Outgoing, Receipt};
use crate::model::{ChannelKind, Secret, fmt_time};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use std::sync::Arc;

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
    /// `None` with `allow_private`; else how names are looked up when a
    /// destination is created (connections go through the same lookup,
    /// filtered, in the client's resolver).
    lookup: Option<Arc<dyn target::Lookup>>,
}

impl WebhookChannel {
    pub fn from_config(cfg: &WebhookConfig) -> anyhow::Result<Self> {
        Self::with_lookup(cfg, Arc::new(target::SystemLookup))
    }

    /// As [`WebhookChannel::from_config`], names looked up by `lookup`
    /// (tests stand in a DNS of their own).
    pub fn with_lookup(
        cfg: &WebhookConfig,
        lookup: Arc<dyn target::Lookup>,
    ) -> anyhow::Result<Self> {
        let key = cfg
            .secret
            .as_ref()
            .map(|s| decode_secret(s.expose()).map(Secret::new))
            .transpose()
            .map_err(|e| anyhow::anyhow!("channels.webhook.secret: {e}"))?;
        let mut client = super::http::builder(cfg.timeout.0);
        let lookup = (!cfg.allow_private).then_some(lookup);
        if let Some(lookup) = &lookup {
            // Every connection is to an address the resolver let through,
            // and to no proxy: kci cannot tell where a proxy would connect.
            client = client
                .dns_resolver(Arc::new(target::PublicOnly(lookup.clone())))
                .no_proxy();
        }
        Ok(Self {
            client: client.build()?,
            key,
            allow_http: cfg.allow_http,
            lookup,
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
        // An address literal never reaches the resolver: checked here.
        if self.lookup.is_some() {
            let ip = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
                _ => None,
            };
            if let Some(ip) = ip {
                target::literal(ip).map_err(not_public)?;
            }
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
            .map_err(|e| match target::not_public(&e) {
                Some(words) => not_public(words),
                None => super::http::unanswered(&e),
            })?;
        let (status, words) = super::http::answer(resp).await?;
        Ok(Receipt {
            detail: Some(format!("HTTP {status} {}", words.trim()).trim().to_string()),
            ..Default::default()
        })
    }

    /// Refuses a webhook to the hub's own network unless allowed: an
    /// address literal that is not public, `localhost`, or a name that
    /// resolves to such an address now.
    async fn check_destination(
        &self,
        uri: &crate::model::DestinationUri,
    ) -> Result<(), DeliveryError> {
        let (Some(lookup), crate::model::DestinationUri::Webhook(url)) = (&self.lookup, uri) else {
            return Ok(());
        };
        target::check(url, lookup.as_ref())
            .await
            .map_err(not_public)
    }
}

/// A webhook that would reach a non-public address: never worth retrying.
fn not_public(words: String) -> DeliveryError {
    DeliveryError::Permanent {
        reason: "not_public",
        detail: words,
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
            // The stand-in receiver is on loopback.
            allow_private: true,
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

    /// A DNS that answers each name with the next of its answers (the
    /// last one for ever): a name that resolves to a public address when
    /// the destination is created and to loopback when kci connects.
    struct Rebinding(std::sync::Mutex<Vec<Vec<std::net::SocketAddr>>>);

    impl Rebinding {
        fn new(answers: &[&str]) -> Arc<Rebinding> {
            let answers = answers
                .iter()
                .map(|ip| vec![std::net::SocketAddr::new(ip.parse().unwrap(), 0)])
                .collect();
            Arc::new(Rebinding(std::sync::Mutex::new(answers)))
        }
    }

    impl target::Lookup for Rebinding {
        fn lookup(
            &self,
            _host: &str,
        ) -> futures_util::future::BoxFuture<'static, std::io::Result<Vec<std::net::SocketAddr>>>
        {
            let mut answers = self.0.lock().unwrap();
            let next = if answers.len() > 1 {
                answers.remove(0)
            } else {
                answers[0].clone()
            };
            Box::pin(async move { Ok(next) })
        }
    }

    fn private_off() -> WebhookConfig {
        WebhookConfig {
            // The stand-in receiver speaks plain http.
            allow_http: true,
            allow_private: false,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_webhook_name_rebound_to_loopback_is_not_called() {
        let receiver = crate::channels::testkit::Provider::start(204, "").await;
        let port = receiver.url.rsplit(':').next().unwrap().to_string();
        // Public when the destination is created, loopback ever after.
        let dns = Rebinding::new(&["93.184.215.14", "127.0.0.1"]);
        let ch = WebhookChannel::with_lookup(&private_off(), dns).unwrap();
        let uri = format!("http://hooks.example.com:{port}/hook");
        ch.check_destination(&uri.parse().unwrap())
            .await
            .expect("public when created");
        let out = crate::channels::testkit::outgoing(&uri, "Line down", "Line down");
        let e = ch.deliver(&out).await.unwrap_err();
        assert!(e.is_permanent(), "{e:?}");
        assert_eq!(e.reason(), "not_public");
        assert!(
            e.detail().contains("127.0.0.1") && e.detail().contains("allow_private"),
            "{e}"
        );
        // Nor by the system's own names for this machine, nor by address.
        let ch = WebhookChannel::from_config(&private_off()).unwrap();
        for uri in [
            format!("http://localhost:{port}/hook"),
            format!("http://127.0.0.1:{port}/hook"),
            format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        ] {
            let out = crate::channels::testkit::outgoing(&uri, "Line down", "Line down");
            let e = ch.deliver(&out).await.unwrap_err();
            assert_eq!(
                (e.is_permanent(), e.reason()),
                (true, "not_public"),
                "{uri}: {e}"
            );
        }
        assert!(receiver.requests().is_empty(), "{:?}", receiver.requests());
        // With the operator's leave, the same receiver is reached.
        let allowed = WebhookConfig {
            allow_private: true,
            ..private_off()
        };
        let ch = WebhookChannel::from_config(&allowed).unwrap();
        let uri = format!("http://localhost:{port}/hook");
        ch.deliver(&crate::channels::testkit::outgoing(
            &uri,
            "Line down",
            "Line down",
        ))
        .await
        .unwrap();
        assert_eq!(receiver.requests().len(), 1);
    }

    #[tokio::test]
    async fn a_new_webhook_into_the_hubs_own_network_is_refused() {
        let dns = Rebinding::new(&["10.20.30.40"]);
        let ch = WebhookChannel::with_lookup(&private_off(), dns).unwrap();
        for uri in [
            "https://intranet.example.com/hook",
            "https://127.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://[::1]/hook",
            "https://169.254.169.254/latest/meta-data/",
            "https://localhost/hook",
            "https://localhost./hook",
            "https://admin.localhost/hook",
            "https://[fd00::1]/hook",
            "https://[::ffff:192.168.0.1]/hook",
            "https://0x7f.1/hook",
        ] {
            let e = ch
                .check_destination(&uri.parse().unwrap())
                .await
                .unwrap_err();
            assert!(e.is_permanent(), "{uri}");
            assert!(e.detail().contains("allow_private"), "{uri}: {e}");
        }
        let dns = Rebinding::new(&["93.184.215.14"]);
        let ch = WebhookChannel::with_lookup(&private_off(), dns).unwrap();
        ch.check_destination(&"https://hooks.example.com/kci".parse().unwrap())
            .await
            .unwrap();
        ch.check_destination(&"https://8.8.8.8/kci".parse().unwrap())
            .await
            .unwrap();
        // With allow_private, the operator's own network is fine.
        let ch = WebhookChannel::from_config(&WebhookConfig {
            allow_private: true,
            ..private_off()
        })
        .unwrap();
        ch.check_destination(&"https://127.0.0.1/hook".parse().unwrap())
            .await
            .unwrap();
    }

    /// A receiver that answers `status` with a body of 50 MB, streamed;
    /// the bytes it got out, counted.
    async fn huge_answer(status: u16) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let app = axum::Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
                let body = futures_util::stream::iter((0..800).map(move |_| {
                    counter.fetch_add(chunk.len(), Ordering::Relaxed);
                    Ok::<_, std::io::Error>(chunk.clone())
                }));
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    axum::body::Body::from_stream(body),
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, sent)
    }

    #[tokio::test]
    async fn a_receiver_answering_50_mb_costs_kci_nothing() {
        use std::sync::atomic::Ordering;
        const FIFTY_MB: usize = 800 * 64 * 1024;
        let ch = WebhookChannel::from_config(&WebhookConfig {
            allow_private: true,
            ..Default::default()
        })
        .unwrap();
        let now = chrono::Utc::now();
        for status in [200, 500] {
            let (url, sent) = huge_answer(status).await;
            let out = crate::channels::testkit::outgoing(&url, "Line down", "Line down");
            let finish = match ch.deliver(&out).await {
                Ok(receipt) => {
                    let words = receipt.detail.clone().unwrap_or_default();
                    assert!(words.len() <= 64 * 1024 + 16, "read {} bytes", words.len());
                    crate::store::Finish::Sent { at: now, receipt }
                }
                Err(e) => {
                    assert!(e.is_transient(), "{e}");
                    crate::store::Finish::Retry {
                        at: now,
                        due_at: now,
                        detail: e.to_string(),
                    }
                }
            };
            // kci stopped reading long before the end (what the receiver
            // got out is what sits in the sockets' buffers).
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let out = sent.load(Ordering::Relaxed);
            assert!(
                out < FIFTY_MB / 2,
                "HTTP {status}: the receiver got {out} bytes out"
            );
            // And what the store keeps is an excerpt.
            let kept = crate::store::codec::finish_row(&finish).detail.unwrap();
            assert!(
                kept.chars().count() <= crate::channels::MAX_DETAIL,
                "{kept}"
            );
            assert!(
                kept.starts_with(&format!("HTTP {status}"))
                    || kept.contains(&format!("HTTP {status}")),
                "{kept}"
            );
        }
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
