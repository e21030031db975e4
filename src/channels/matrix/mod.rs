//! Matrix (`matrix:r/room:example.org` or `matrix:roomid/…` destinations)
//! through the client-server API: a room alias is resolved first
//! (`GET /_matrix/client/v3/directory/room/{alias}`), then
//! `PUT /_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}`
//! with the notification's id as the transaction id, so a retry of the same
//! notice never posts twice.
//!
//! A rate-limited request is answered `429` with `{"errcode":
//! "M_LIMIT_EXCEEDED", "retry_after_ms": …}`; servers following MSC4041
//! (spec v1.10) also send `Retry-After` and deprecate the body field. The
//! header counts whole seconds, rounded up: where it is the body's
//! milliseconds rounded up, kci takes the milliseconds (Synapse answers a
//! 40 ms wait with `Retry-After: 1`, and a channel pacing itself by the
//! header would send at a twenty-fifth of the rate allowed); where they
//! disagree otherwise, the longer wait, so kci comes back early to no one.

use super::{Channel, DeliveryError, Outgoing, Receipt};
use crate::model::{ChannelKind, Secret, Span};
use async_trait::async_trait;
use serde::Deserialize;

/// `[channels.matrix]`: present means enabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// The homeserver of kci's account.
    pub homeserver: url::Url,
    /// That account's access token.
    pub access_token: Secret<String>,
    /// Give up on one request after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// Rate limit, such as `5/s`.
    #[serde(default)]
    pub rate: Option<crate::model::Cap>,
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(15))
}

pub struct MatrixChannel {
    client: reqwest::Client,
    homeserver: url::Url,
    token: Secret<String>,
}

/// The room id (`!…`) or alias (`#…`) a destination names.
fn target(uri: &str) -> Result<(bool, String), DeliveryError> {
    let rest = uri.strip_prefix("matrix:").unwrap_or(uri);
    match rest.split_once('/') {
        Some(("roomid", id)) => Ok((true, format!("!{id}"))),
        Some(("r", alias)) => Ok((false, format!("#{alias}"))),
        _ => Err(DeliveryError::Permanent {
            reason: "bad_uri",
            detail: format!("`{uri}` names no room"),
        }),
    }
}

fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl MatrixChannel {
    pub fn from_config(cfg: &MatrixConfig) -> anyhow::Result<Self> {
        Ok(Self {
            client: super::http::client(cfg.timeout.0)?,
            homeserver: cfg.homeserver.clone(),
            token: cfg.access_token.clone(),
        })
    }

    fn url(&self, path: &str) -> Result<url::Url, DeliveryError> {
        self.homeserver
            .join(path)
            .map_err(|e| DeliveryError::Permanent {
                reason: "bad_uri",
                detail: e.to_string(),
            })
    }

    async fn room_id(&self, alias: &str) -> Result<String, DeliveryError> {
        let url = self.url(&format!(
            "_matrix/client/v3/directory/room/{}",
            segment(alias)
        ))?;
        let resp = self
            .client
            .get(url)
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| super::http::unanswered(&e))?;
        let (_, text) = super::http::answer(resp).await.map_err(explain)?;
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("room_id")
                    .and_then(|r| r.as_str())
                    .map(str::to_string)
            })
            .ok_or_else(|| DeliveryError::Permanent {
                reason: "bad_answer",
                detail: format!("no room_id for {alias}"),
            })
    }
}

#[async_trait]
impl Channel for MatrixChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Matrix
    }

    /// A room alias that does not resolve is refused when the destination
    /// is made (a room id is taken as it is: whether kci's account may post
    /// there shows at the first delivery).
    async fn check_destination(
        &self,
        uri: &crate::model::DestinationUri,
    ) -> Result<(), DeliveryError> {
        match target(&uri.to_string())? {
            (false, alias) => self.room_id(&alias).await.map(|_| ()),
            (true, _) => Ok(()),
        }
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let n = &msg.notification;
        let (is_id, name) = target(&n.uri)?;
        let room = if is_id {
            name
        } else {
            self.room_id(&name).await?
        };
        let body = msg.text();
        let url = self.url(&format!(
            "_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            segment(&room),
            segment(&n.id)
        ))?;
        let resp = self
            .client
            .put(url)
            .bearer_auth(self.token.expose())
            .json(&serde_json::json!({ "msgtype": "m.text", "body": body }))
            .send()
            .await
            .map_err(|e| super::http::unanswered(&e))?;
        let (_, text) = super::http::answer(resp).await.map_err(explain)?;
        let event = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("event_id")
                    .and_then(|e| e.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        Ok(Receipt {
            detail: Some(format!("matrix event {event}")),
            ..Default::default()
        })
    }
}

/// The client-server API's standard error body.
#[derive(Deserialize)]
struct MatrixError {
    errcode: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

/// "HTTP 429 {json}" becomes "HTTP 429 M_LIMIT_EXCEEDED: Too many
/// requests", and `retry_after_ms` is honoured beside `Retry-After`.
fn explain(e: DeliveryError) -> DeliveryError {
    let Some((status, body)) = super::http::error_body::<MatrixError>(&e) else {
        return e;
    };
    let words = match body.error {
        Some(words) => format!("{status} {}: {words}", body.errcode),
        None => format!("{status} {}", body.errcode),
    };
    let header = e.retry_after();
    e.with_detail(words)
        .retry_after_exactly(wait(header, body.retry_after_ms))
}

/// The wait a 429 asks for: `Retry-After` (whole seconds) and the body's
/// `retry_after_ms`, the milliseconds where the header is only those
/// rounded up, else the longer.
fn wait(header: Option<std::time::Duration>, body_ms: Option<u64>) -> Option<std::time::Duration> {
    let body = body_ms.map(std::time::Duration::from_millis);
    match (header, body_ms) {
        (Some(h), Some(ms)) if h.as_secs() == ms.div_ceil(1000) && h.subsec_nanos() == 0 => body,
        (h, _) => h.max(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::testkit::{Answer, Provider, outgoing};
    use std::time::Duration;

    fn channel(url: &str) -> MatrixChannel {
        let cfg: MatrixConfig = toml::from_str(&format!(
            "homeserver = \"{url}\"\naccess_token = \"syt_a2NpLWJvdA_secretsecret\""
        ))
        .unwrap();
        MatrixChannel::from_config(&cfg).unwrap()
    }

    #[tokio::test]
    async fn sends_to_a_room_id_with_the_notification_as_transaction() {
        let hs = Provider::start(200, r#"{"event_id":"$YUwRidLecu:example.org"}"#).await;
        let out = outgoing(
            "matrix:roomid/oGEIdfdOVebCBzdP:example.org",
            "Line L1 down.",
            "x",
        );
        let receipt = channel(&hs.url).deliver(&out).await.unwrap();
        assert_eq!(
            receipt.detail.as_deref(),
            Some("matrix event $YUwRidLecu:example.org")
        );
        let req = hs.only_request();
        assert_eq!(req.method, "PUT");
        assert_eq!(
            req.path,
            format!(
                "/_matrix/client/v3/rooms/%21oGEIdfdOVebCBzdP%3Aexample.org/send/m.room.message/{}",
                out.notification.id
            )
        );
        assert_eq!(
            req.header("authorization"),
            Some("Bearer syt_a2NpLWJvdA_secretsecret")
        );
        assert_eq!(
            req.json(),
            serde_json::json!({"msgtype": "m.text", "body": "Line L1 down."})
        );
    }

    #[tokio::test]
    async fn resolves_an_alias_first() {
        // The stand-in answers both calls alike: room_id for the lookup,
        // and the send ignores it.
        let hs = Provider::start(
            200,
            r#"{"room_id":"!abc:example.org","servers":["example.org"],"event_id":"$e"}"#,
        )
        .await;
        channel(&hs.url)
            .deliver(&outgoing("matrix:r/support:example.org", "x", "y"))
            .await
            .unwrap();
        let reqs = hs.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(
            (reqs[0].method.as_str(), reqs[0].path.as_str()),
            (
                "GET",
                "/_matrix/client/v3/directory/room/%23support%3Aexample.org"
            )
        );
        assert!(
            reqs[1]
                .path
                .starts_with("/_matrix/client/v3/rooms/%21abc%3Aexample.org/send/m.room.message/"),
            "{}",
            reqs[1].path
        );
    }

    #[tokio::test]
    async fn errors_are_classified_and_the_token_never_shows() {
        for (status, body, transient) in [
            (
                403,
                r#"{"errcode":"M_FORBIDDEN","error":"You are not in this room."}"#,
                false,
            ),
            (
                429,
                r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests","retry_after_ms":2000}"#,
                true,
            ),
        ] {
            let hs = Provider::start(status, body).await;
            let err = channel(&hs.url)
                .deliver(&outgoing("matrix:roomid/x:example.org", "x", "y"))
                .await
                .unwrap_err();
            assert_eq!(err.is_transient(), transient);
            assert!(err.detail().contains("M_"), "{err}");
            assert!(!format!("{err:?}").contains("secretsecret"));
        }
    }

    #[tokio::test]
    async fn an_alias_that_does_not_resolve_is_refused_when_the_destination_is_made() {
        let hs = Provider::start(
            404,
            r#"{"errcode":"M_NOT_FOUND","error":"Room alias #nope:example.org not found."}"#,
        )
        .await;
        let uri = "matrix:r/nope:example.org".parse().unwrap();
        let err = channel(&hs.url).check_destination(&uri).await.unwrap_err();
        assert!(err.is_permanent());
        assert!(err.detail().contains("M_NOT_FOUND"), "{err}");
        let req = hs.only_request();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            (
                "GET",
                "/_matrix/client/v3/directory/room/%23nope%3Aexample.org"
            )
        );
        // A room id is not looked up.
        let uri = "matrix:roomid/abc:example.org".parse().unwrap();
        channel(&hs.url).check_destination(&uri).await.unwrap();
        assert_eq!(hs.requests().len(), 1);
    }

    #[tokio::test]
    async fn a_rate_limit_waits_for_retry_after_ms_or_a_header_that_says_more() {
        const LIMITED: &str =
            r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests","retry_after_ms":2000}"#;
        let cases = [
            // An older server: the body's field only.
            (Answer::new(429, LIMITED), Duration::from_millis(2000)),
            // MSC4041: both, the header rounded up to whole seconds.
            (
                Answer::new(429, LIMITED).header("Retry-After", "2"),
                Duration::from_secs(2),
            ),
            // The header is the body's milliseconds rounded up (Synapse
            // 1.163 asking for 40 ms): the milliseconds.
            (
                Answer::new(
                    429,
                    r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests","retry_after_ms":40}"#,
                )
                .header("Retry-After", "1"),
                Duration::from_millis(40),
            ),
            (
                Answer::new(
                    429,
                    r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests","retry_after_ms":1200}"#,
                )
                .header("Retry-After", "2"),
                Duration::from_millis(1200),
            ),
            // They disagree: the later stands.
            (
                Answer::new(429, LIMITED).header("Retry-After", "7"),
                Duration::from_secs(7),
            ),
            (
                Answer::new(
                    429,
                    r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests","retry_after_ms":12500}"#,
                )
                .header("Retry-After", "1"),
                Duration::from_millis(12500),
            ),
            // The header only.
            (
                Answer::new(429, r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too many requests"}"#)
                    .header("Retry-After", "3"),
                Duration::from_secs(3),
            ),
        ];
        for (answer, wait) in cases {
            let hs = Provider::answering(answer.clone()).await;
            for uri in [
                "matrix:roomid/x:example.org",
                "matrix:r/support:example.org",
            ] {
                let err = channel(&hs.url)
                    .deliver(&outgoing(uri, "x", "y"))
                    .await
                    .unwrap_err();
                assert!(err.is_transient(), "{answer:?}");
                assert_eq!(err.retry_after(), Some(wait), "{answer:?} {uri}");
                assert!(
                    err.detail()
                        .starts_with("HTTP 429 M_LIMIT_EXCEEDED: Too many requests"),
                    "{err}"
                );
            }
        }
    }
}
