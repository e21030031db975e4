//! Telegram (`telegram:<chat-id>` destinations) through the Bot API's
//! `sendMessage`: `POST {api}/bot<token>/sendMessage` with `{chat_id,
//! text}`. The bot token is part of the URL, so no URL ever reaches an
//! error or a log line.

use super::{Channel, DeliveryError, Outgoing, Receipt};
use crate::model::{ChannelKind, Priority, Secret, Span};
use async_trait::async_trait;
use serde::Deserialize;

/// `[channels.telegram]`: present means enabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The bot's token from @BotFather (`123456:ABC-…`).
    pub bot_token: Secret<String>,
    /// The Bot API server.
    #[serde(default = "default_api")]
    pub api: url::Url,
    /// Give up on one request after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// The bot's rate limit (Telegram allows about 30 messages a second).
    #[serde(default)]
    pub rate: Option<crate::model::Cap>,
}

fn default_api() -> url::Url {
    url::Url::parse("https://api.telegram.org").expect("a valid URL")
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(10))
}

pub struct TelegramChannel {
    client: reqwest::Client,
    /// `{api}/bot<token>/sendMessage`: secret as a whole.
    send_message: Secret<String>,
    /// `{api}/bot<token>/getChat`.
    get_chat: Secret<String>,
}

impl TelegramChannel {
    pub fn from_config(cfg: &TelegramConfig) -> anyhow::Result<Self> {
        let base = cfg.api.as_str().trim_end_matches('/');
        let send_message = Secret::new(format!("{base}/bot{}/sendMessage", cfg.bot_token.expose()));
        let get_chat = Secret::new(format!("{base}/bot{}/getChat", cfg.bot_token.expose()));
        Ok(Self {
            client: super::http::client(cfg.timeout.0)?,
            send_message,
            get_chat,
        })
    }
}

/// The Bot API's answer envelope.
#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct Parameters {
    retry_after: Option<u64>,
}

#[async_trait]
impl Channel for TelegramChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Telegram
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let n = &msg.notification;
        let chat = msg.address();
        let text = msg.text();
        let mut body = serde_json::json!({ "chat_id": chat, "text": text });
        if n.priority == Priority::Low {
            // Arrives silently: no sound for a low-priority notice.
            body["disable_notification"] = true.into();
        }
        let resp = self
            .client
            .post(self.send_message.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| super::http::unanswered(&e.without_url()))?;
        match super::http::answer(resp).await {
            Ok((_, text)) => {
                let id = serde_json::from_str::<Answer>(&text)
                    .ok()
                    .and_then(|a| a.result)
                    .and_then(|r| r.get("message_id").cloned())
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                Ok(Receipt {
                    detail: Some(format!("telegram message {id}")),
                    ..Default::default()
                })
            }
            Err(e) => Err(explain(e)),
        }
    }

    /// `getChat`: a chat the bot cannot see ("chat not found", or a user
    /// who never started the bot) is refused when the destination is made.
    async fn check_destination(
        &self,
        uri: &crate::model::DestinationUri,
    ) -> Result<(), DeliveryError> {
        let crate::model::DestinationUri::Telegram(chat) = uri else {
            return Ok(());
        };
        let resp = self
            .client
            .post(self.get_chat.expose())
            .json(&serde_json::json!({ "chat_id": chat }))
            .send()
            .await
            .map_err(|e| super::http::unanswered(&e.without_url()))?;
        super::http::answer(resp).await.map(|_| ()).map_err(explain)
    }
}

/// Replaces "HTTP 400 {json}" with the API's own description, and honours
/// its `retry_after`.
fn explain(e: DeliveryError) -> DeliveryError {
    let Some((status, answer)) = super::http::error_body::<Answer>(&e) else {
        return e;
    };
    let after = answer
        .parameters
        .and_then(|p| p.retry_after)
        .map(std::time::Duration::from_secs);
    match (answer.description, answer.ok) {
        (Some(words), false) => e.with_detail(format!("{status} {words}")),
        _ => e,
    }
    .with_retry_after(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::testkit::{Provider, outgoing};

    const TOKEN: &str = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";

    fn channel(api: &str) -> TelegramChannel {
        let cfg: TelegramConfig =
            toml::from_str(&format!("bot_token = \"{TOKEN}\"\napi = \"{api}\"")).unwrap();
        TelegramChannel::from_config(&cfg).unwrap()
    }

    #[tokio::test]
    async fn sends_a_message_per_the_bot_api() {
        let tg = Provider::start(
            200,
            r#"{"ok":true,"result":{"message_id":4711,"chat":{"id":123456789,"type":"private"},"date":1735689600,"text":"x"}}"#,
        )
        .await;
        let mut out = outgoing(
            "telegram:123456789",
            "Your line L1 went down.",
            "Line L1 is down",
        );
        out.notification.priority = Priority::Low;
        let receipt = channel(&tg.url).deliver(&out).await.unwrap();
        assert_eq!(receipt.detail.as_deref(), Some("telegram message 4711"));
        let req = tg.only_request();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, format!("/bot{TOKEN}/sendMessage"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(
            req.json(),
            serde_json::json!({"chat_id": "123456789", "text": "Your line L1 went down.", "disable_notification": true})
        );
    }

    #[tokio::test]
    async fn the_apis_errors_are_classified_with_its_words_and_no_token() {
        let cases = [
            (
                400,
                r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
                false,
                "chat not found",
                None,
            ),
            (
                403,
                r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
                false,
                "blocked",
                None,
            ),
            (
                429,
                r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#,
                true,
                "Too Many Requests",
                Some(7),
            ),
        ];
        for (status, body, transient, words, after) in cases {
            let tg = Provider::start(status, body).await;
            let err = channel(&tg.url)
                .deliver(&outgoing("telegram:42", "x", "y"))
                .await
                .unwrap_err();
            assert_eq!(err.is_transient(), transient, "{status}");
            assert!(
                err.detail().contains(words) && err.detail().starts_with(&format!("HTTP {status}")),
                "{err}"
            );
            assert_eq!(err.retry_after().map(|d| d.as_secs()), after, "{status}");
            assert!(!format!("{err} {err:?}").contains("AAHdqTcv"), "{status}");
        }
        // No answer at all: the error must not carry the URL (and its token).
        // (Below: the same holds when checking a new destination.)
        let err = channel("http://127.0.0.1:9")
            .deliver(&outgoing("telegram:42", "x", "y"))
            .await
            .unwrap_err();
        assert!(err.is_transient());
        assert!(!format!("{err} {err:?}").contains("AAHdqTcv"), "{err}");
    }

    #[tokio::test]
    async fn an_unknown_chat_is_refused_when_the_destination_is_made() {
        let tg = Provider::start(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
        )
        .await;
        let uri = "telegram:987654321".parse().unwrap();
        let err = channel(&tg.url).check_destination(&uri).await.unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(err.detail(), "HTTP 400 Bad Request: chat not found");
        assert!(!format!("{err:?}").contains("AAHdqTcv"));
        let req = tg.only_request();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", format!("/bot{TOKEN}/getChat").as_str())
        );
        assert_eq!(req.json(), serde_json::json!({"chat_id": "987654321"}));

        let tg = Provider::start(
            200,
            r#"{"ok":true,"result":{"id":987654321,"type":"private","first_name":"Alice"}}"#,
        )
        .await;
        channel(&tg.url).check_destination(&uri).await.unwrap();
        // Unreachable: transient, so the destination is let through.
        let err = channel("http://127.0.0.1:9")
            .check_destination(&uri)
            .await
            .unwrap_err();
        assert!(err.is_transient());
    }
}
