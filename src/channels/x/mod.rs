//! X (formerly Twitter) direct messages (`x:<user id>` destinations)
//! through the X API v2 ("Manage Direct Messages"):
//! `POST {api}/2/dm_conversations/with/{participant_id}/messages`, JSON
//! `{"text": …}`, `Authorization: Bearer <OAuth 2.0 user-context access
//! token>` (scopes `dm.write dm.read tweet.read users.read`, and
//! `offline.access` for the refresh token). X answers 201
//! `{"data":{"dm_conversation_id":…,"dm_event_id":…}}`; the event id is
//! kept as the receipt's detail.
//!
//! Tokens are `tokens.rs`: the access token in memory, the rotating
//! refresh token sealed in the store. A 401 renews the access token once
//! and sends again.
//!
//! An `x:@handle` destination is resolved once, when it is created, with
//! `GET {api}/2/users/by/username/{username}` (`{"data":{"id":…}}`, or
//! `{"errors":[{"detail":"Could not find user with username: […]",…}]}`
//! with 200 for one that does not exist), and the numeric id is stored:
//! a handle can be changed or taken over, the id cannot.
//!
//! Failures in X's words: its problem details (`{"title","detail","type",
//! "status"}`) or its `errors` array. 400 and 403 ("You cannot send
//! messages to this user") are final, 429 and 5xx worth retrying — a 429
//! no earlier than `x-rate-limit-reset` (Unix seconds), which pauses the
//! channel (X's limits are per user of the app, so per kci).

mod tokens;

pub use tokens::{NAME as REFRESH_TOKEN, context as refresh_token_context};

use super::{Channel, DeliveryError, Keep, Outgoing, Receipt};
use crate::model::{ChannelKind, DestinationUri, Secret, Span, XUser};
use async_trait::async_trait;
use serde::Deserialize;

/// X's limit on a direct message's text, in characters.
pub const MAX_TEXT: usize = 10_000;

/// `[channels.x]`: present means enabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XConfig {
    /// The OAuth 2.0 client id of kci's X app (developer portal, "Keys and
    /// tokens").
    pub client_id: String,
    /// The client secret, for a confidential client: the token request
    /// then authenticates with HTTP Basic. Absent for a public client.
    #[serde(default)]
    pub client_secret: Option<Secret<String>>,
    /// A refresh token from authorizing the app as the sending account
    /// (scopes `dm.write dm.read tweet.read users.read offline.access`).
    /// It seeds kci's stored one only when none is stored (or the stored
    /// one is refused and this one is new): X replaces the refresh token
    /// on every refresh, and kci keeps the newest, sealed, in its store.
    pub refresh_token: Secret<String>,
    /// The API server.
    #[serde(default = "default_api")]
    pub api: url::Url,
    /// Give up on one request after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// Rate limit, such as `1/s` (X counts direct messages per user and
    /// app: on a 429, kci waits until `x-rate-limit-reset`).
    #[serde(default)]
    pub rate: Option<crate::model::Cap>,
}

fn default_api() -> url::Url {
    url::Url::parse("https://api.x.com").expect("a valid URL")
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(10))
}

impl XConfig {
    /// Checks what serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let id = self.client_id.trim();
        if id.is_empty()
            || id.len() > 128
            || id.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err((
                "client_id".into(),
                "must be the app's OAuth 2.0 client id (no spaces, at most 128 characters)".into(),
            ));
        }
        if self.refresh_token.expose().trim().is_empty() {
            return Err((
                "refresh_token".into(),
                "must be a refresh token from authorizing kci's X app with offline.access".into(),
            ));
        }
        if self
            .client_secret
            .as_ref()
            .is_some_and(|s| s.expose().trim().is_empty())
        {
            return Err((
                "client_secret".into(),
                "is empty: leave it out for a public client".into(),
            ));
        }
        if !matches!(self.api.scheme(), "https" | "http") || self.api.cannot_be_a_base() {
            return Err(("api".into(), "must be an http(s) base URL".into()));
        }
        Ok(())
    }
}

pub struct XChannel {
    client: reqwest::Client,
    api: url::Url,
    tokens: std::sync::Arc<tokens::Tokens>,
    /// The most one delivery may take: a refresh, a send, and after a 401
    /// another refresh and send (`Config::longest_delivery_timeout` counts
    /// three timeouts for X).
    budget: std::time::Duration,
}

impl XChannel {
    pub fn from_config(cfg: &XConfig, keep: Option<Keep>) -> anyhow::Result<Self> {
        let client = super::http::client(cfg.timeout.0)?;
        let token_url = endpoint(&cfg.api, &["2", "oauth2", "token"])
            .map_err(|e| anyhow::anyhow!("channels.x.api: {e}"))?;
        Ok(Self {
            tokens: std::sync::Arc::new(tokens::Tokens::new(client.clone(), token_url, cfg, keep)),
            client,
            api: cfg.api.clone(),
            budget: cfg.timeout.0 * 3,
        })
    }

    /// Starts with an access token already held, as after a refresh.
    #[cfg(test)]
    pub async fn prime(&self, token: &str) {
        self.tokens
            .prime(token, std::time::Duration::from_secs(7200))
            .await;
    }

    /// Sends `request` (built anew for each try) with the access token;
    /// on a 401, once more with a renewed one.
    async fn authorized(
        &self,
        request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, DeliveryError> {
        let mut token = self.tokens.access().await?;
        for first in [true, false] {
            let resp = request(&self.client)
                .bearer_auth(token.expose())
                .send()
                .await
                .map_err(|e| super::http::unanswered(&e))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && first {
                token = self.tokens.renew(&token).await?;
                continue;
            }
            return Ok(resp);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// X's numeric id of `@username`.
    async fn user_id(&self, username: &str) -> Result<String, DeliveryError> {
        let url =
            endpoint(&self.api, &["2", "users", "by", "username", username]).map_err(|e| {
                DeliveryError::Permanent {
                    reason: "bad_uri",
                    detail: e,
                }
            })?;
        let resp = self.authorized(|c| c.get(url.clone())).await?;
        let (_, text) = super::http::answer(resp).await.map_err(explain)?;
        let answer: UserAnswer =
            serde_json::from_str(&text).map_err(|e| DeliveryError::Transient {
                reason: "bad_answer",
                detail: format!("X's user lookup: {e}"),
                retry_after: None,
            })?;
        match answer.data {
            Some(user) if XUser::parse_id(&user.id).is_ok() => Ok(user.id),
            Some(user) => Err(DeliveryError::Transient {
                reason: "bad_answer",
                detail: format!(
                    "X's user lookup gave `{}`, not a user id",
                    user.id.escape_default()
                ),
                retry_after: None,
            }),
            None => Err(DeliveryError::Permanent {
                reason: "unknown_user",
                detail: answer
                    .errors
                    .iter()
                    .find_map(Problem::words)
                    .unwrap_or_else(|| format!("X knows no user @{username}")),
            }),
        }
    }
}

/// `base` with `segments` appended to its path, each percent-encoded.
fn endpoint(base: &url::Url, segments: &[&str]) -> Result<url::Url, String> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|_| "not a base URL".to_string())?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// X's text cut to its limit, on characters.
pub fn fit(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((at, _)) => text[..at].to_string(),
        None => text.to_string(),
    }
}

/// The answer to a direct message.
#[derive(Deserialize)]
struct Sent {
    data: SentData,
}

#[derive(Deserialize)]
struct SentData {
    #[serde(default)]
    dm_conversation_id: Option<String>,
    dm_event_id: String,
}

/// `GET /2/users/by/username/{username}`.
#[derive(Deserialize)]
struct UserAnswer {
    #[serde(default)]
    data: Option<User>,
    #[serde(default)]
    errors: Vec<Problem>,
}

#[derive(Deserialize)]
struct User {
    id: String,
}

/// X's problem details, and the entries of its `errors` array.
#[derive(Deserialize, Default)]
struct Problem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    errors: Vec<Problem>,
}

impl Problem {
    /// The most telling words: the detail, else a message of `errors`,
    /// else the title.
    fn words(&self) -> Option<String> {
        let nonempty = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        nonempty(&self.detail)
            .or_else(|| nonempty(&self.message))
            .or_else(|| self.errors.iter().find_map(Problem::words))
            .or_else(|| nonempty(&self.title))
    }
}

/// "HTTP 403 {json}" becomes "HTTP 403 You cannot send messages to this user."
fn explain(e: DeliveryError) -> DeliveryError {
    match super::http::error_body::<Problem>(&e) {
        Some((status, p)) => match p.words() {
            Some(words) => e.with_detail(format!("{status} {words}")),
            None => e,
        },
        None => e,
    }
}

/// For a 429, how long until `x-rate-limit-reset` (Unix seconds).
fn rate_limit_reset(resp: &reqwest::Response) -> Option<std::time::Duration> {
    if resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let reset: i64 = resp
        .headers()
        .get("x-rate-limit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    u64::try_from(reset - chrono::Utc::now().timestamp())
        .ok()
        .map(std::time::Duration::from_secs)
}

#[async_trait]
impl Channel for XChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::X
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        tokio::time::timeout(self.budget, self.send(msg))
            .await
            .unwrap_or_else(|_| {
                Err(DeliveryError::Transient {
                    reason: "timeout",
                    detail: format!("X did not answer within {}", Span(self.budget)),
                    retry_after: None,
                })
            })
    }

    /// `x:@handle` becomes `x:<id>`, asked of X once; an unknown handle is
    /// refused with X's words.
    async fn resolve_destination(
        &self,
        uri: &DestinationUri,
    ) -> Result<DestinationUri, DeliveryError> {
        match uri {
            DestinationUri::X(XUser::Handle(h)) => {
                Ok(DestinationUri::X(XUser::Id(self.user_id(h).await?)))
            }
            other => Ok(other.clone()),
        }
    }
}

impl XChannel {
    /// One delivery (see [`Channel::deliver`], which bounds its time).
    async fn send(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let uri: DestinationUri =
            msg.notification
                .uri
                .parse()
                .map_err(|e: crate::model::ParseError| DeliveryError::Permanent {
                    reason: "bad_uri",
                    detail: e.0,
                })?;
        let participant = match uri {
            DestinationUri::X(XUser::Id(id)) => id,
            // Stored as a handle (a scenario, a row from before): asked now.
            DestinationUri::X(XUser::Handle(h)) => self.user_id(&h).await?,
            other => {
                return Err(DeliveryError::Permanent {
                    reason: "bad_uri",
                    detail: format!("`{other}` is not an X destination"),
                });
            }
        };
        let url = endpoint(
            &self.api,
            &["2", "dm_conversations", "with", &participant, "messages"],
        )
        .map_err(|e| DeliveryError::Permanent {
            reason: "bad_uri",
            detail: e,
        })?;
        let body = serde_json::json!({ "text": fit(&msg.text()) });
        let resp = self.authorized(|c| c.post(url.clone()).json(&body)).await?;
        let reset = rate_limit_reset(&resp);
        match super::http::answer(resp).await {
            Ok((_, text)) => {
                // Accepted: sent, whatever the answer says (a retry would
                // send it twice).
                let detail = match serde_json::from_str::<Sent>(&text) {
                    Ok(sent) => {
                        let conversation = sent
                            .data
                            .dm_conversation_id
                            .map(|c| format!(" in conversation {c}"))
                            .unwrap_or_default();
                        format!("x dm_event {}{conversation}", sent.data.dm_event_id)
                    }
                    Err(e) => format!("x: accepted, but its answer is not understood ({e})"),
                };
                Ok(Receipt {
                    detail: Some(detail),
                    ..Default::default()
                })
            }
            Err(e) => Err(explain(e).with_retry_after(reset)),
        }
    }
}

#[cfg(test)]
mod tests;
