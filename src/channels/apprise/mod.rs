//! Apprise bridge (`apprise:<tag>` destinations): hands a notice to an
//! apprise-api server, so the operator's own system notices can reach any
//! of Apprise's services. It is for the operator's channels, not
//! customers': the services, and their credentials, are the operator's.
//!
//! Per apprise-api's published API (caronc/apprise-api README, "API
//! Details"; apprise-docs `api/usage`): with a `key`, `POST
//! {url}/notify/{key}` with `{body, title, type, format, tag}` notifies the
//! services saved under that key which carry the tag; without one,
//! `POST {url}/notify/` with `{urls, body, title, type, format}` notifies
//! the URLs given (stateless). The stateless endpoint ignores tags (it
//! always notifies `all` it is given), so in that mode kci picks the URLs
//! carrying the destination's tag itself. `type` is one of `info`,
//! `success`, `warning`, `failure`; `format` one of `text`, `markdown`,
//! `html`; kci's texts are plain, so `text`.
//!
//! Answers (apprise-docs `api/reference/response-codes`, and
//! `apprise_api/api/views.py`): 200 sent; 204 (older servers) nothing to
//! notify — no configuration under the key, or no valid URL — which is a
//! failure, not a delivery; 400 bad payload or tag; 401/403 auth or
//! access; 404 no configuration under the key (newer servers); 424 at
//! least one service failed; 431 payload too large; 429/5xx the server
//! or its proxy is overloaded or broken, worth retrying.

pub mod urls;

use super::{Channel, DeliveryError, Outgoing, Receipt};
use crate::model::{ChannelKind, Priority, Secret, Span};
use async_trait::async_trait;
use serde::Deserialize;

/// `[channels.apprise]`: present means enabled. Either `key` (the services
/// are saved on the apprise-api server) or `urls` (kci sends them along).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppriseConfig {
    /// The apprise-api server, such as `http://127.0.0.1:8000`.
    pub url: url::Url,
    /// The configuration key on that server (1 to 64 of letters, digits,
    /// `_` and `-`). Secret: where the server has no authentication, the
    /// key is what lets one use the services saved under it.
    #[serde(default)]
    pub key: Option<Secret<String>>,
    /// Apprise URLs, each optionally tagged as in Apprise's TEXT config
    /// (`devops,admin=tgram://…`). They carry the services' credentials.
    #[serde(default)]
    pub urls: Vec<Secret<String>>,
    /// A bearer token, for a server behind a proxy that wants one.
    #[serde(default)]
    pub token: Option<Secret<String>>,
    /// A Basic Auth user, for a server with authentication enabled.
    #[serde(default)]
    pub username: Option<String>,
    /// That user's password (alone: a password-only administrator login).
    #[serde(default)]
    pub password: Option<Secret<String>>,
    /// Give up on one request after this long (apprise-api answers only
    /// once every service has been tried).
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// Rate limit, such as `1/s`.
    #[serde(default)]
    pub rate: Option<crate::model::Cap>,
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(10))
}

impl AppriseConfig {
    /// Checks what serde cannot; errors name the key (under
    /// `channels.apprise`) and never quote a URL or a secret.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !matches!(self.url.scheme(), "http" | "https") {
            return Err(("url".into(), "must be http://… or https://…".into()));
        }
        match (&self.key, self.urls.is_empty()) {
            (Some(_), false) => {
                return Err((
                    "key".into(),
                    "set either `key` (services saved on the server) or `urls`, not both".into(),
                ));
            }
            (None, true) => {
                return Err((
                    "urls".into(),
                    "set `key` (services saved on the server) or `urls` (Apprise URLs)".into(),
                ));
            }
            _ => {}
        }
        if let Some(key) = &self.key {
            let k = key.expose();
            let ok = (1..=64).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err((
                    "key".into(),
                    "an apprise-api key is 1 to 64 letters, digits, _ or -".into(),
                ));
            }
        }
        for (i, line) in self.urls.iter().enumerate() {
            urls::Entry::parse(line.expose()).map_err(|e| (format!("urls[{i}]"), e))?;
        }
        if self.token.is_some() && (self.username.is_some() || self.password.is_some()) {
            return Err((
                "token".into(),
                "use either `token` (bearer) or `username`/`password` (Basic Auth), not both"
                    .into(),
            ));
        }
        if self.username.is_some() && self.password.is_none() {
            return Err((
                "password".into(),
                "Basic Auth with `username` needs `password`".into(),
            ));
        }
        Ok(())
    }
}

/// Apprise's message type for a kci priority.
pub fn notify_type(p: Priority) -> &'static str {
    match p {
        Priority::Low | Priority::Normal => "info",
        Priority::High => "warning",
        Priority::Urgent => "failure",
    }
}

enum Mode {
    /// Services saved on the server under a key; the server applies tags.
    Stateful,
    /// Services given with every request; kci applies tags.
    Stateless(Vec<urls::Entry>),
}

enum Auth {
    None,
    Bearer(Secret<String>),
    Basic(String, Secret<String>),
}

pub struct AppriseChannel {
    client: reqwest::Client,
    /// `{url}/notify/{key}` or `{url}/notify/`; with a key, secret as a whole.
    notify: Secret<url::Url>,
    mode: Mode,
    auth: Auth,
    /// Every secret string, to scrub from anything shown.
    secrets: Vec<String>,
}

impl AppriseChannel {
    pub fn from_config(cfg: &AppriseConfig) -> anyhow::Result<Self> {
        cfg.validate()
            .map_err(|(key, message)| anyhow::anyhow!("channels.apprise.{key}: {message}"))?;
        let mut base = cfg.url.clone();
        if !base.path().ends_with('/') {
            // So that `notify/` is added to the path, not put in its last place.
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let path = match &cfg.key {
            Some(key) => format!("notify/{}", key.expose()),
            None => "notify/".to_string(),
        };
        let notify = base
            .join(&path)
            .map_err(|e| anyhow::anyhow!("channels.apprise.url: {e}"))?;
        let mode = if cfg.key.is_some() {
            Mode::Stateful
        } else {
            Mode::Stateless(
                cfg.urls
                    .iter()
                    .map(|u| urls::Entry::parse(u.expose()).map_err(|e| anyhow::anyhow!(e)))
                    .collect::<anyhow::Result<_>>()?,
            )
        };
        let auth = match (&cfg.token, &cfg.password) {
            (Some(t), _) => Auth::Bearer(t.clone()),
            (None, Some(p)) => Auth::Basic(cfg.username.clone().unwrap_or_default(), p.clone()),
            (None, None) => Auth::None,
        };
        let mut secrets: Vec<String> = cfg
            .urls
            .iter()
            .map(|u| u.expose().clone())
            .chain(cfg.key.iter().map(|k| k.expose().clone()))
            .chain(cfg.token.iter().map(|t| t.expose().clone()))
            .chain(cfg.password.iter().map(|p| p.expose().clone()))
            .collect();
        if let Mode::Stateless(entries) = &mode {
            secrets.extend(entries.iter().flat_map(|e| e.secret_parts()));
        }
        secrets.retain(|s| s.len() >= 4);
        // Longest first, so a URL is scrubbed whole before its parts.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(Self {
            client: super::http::client(cfg.timeout.0)?,
            notify: Secret::new(notify),
            mode,
            auth,
            secrets,
        })
    }

    /// `s` with every configured secret blanked out.
    fn scrub(&self, mut s: String) -> String {
        for secret in &self.secrets {
            if s.contains(secret.as_str()) {
                s = s.replace(secret.as_str(), "***");
            }
        }
        s
    }

    /// A failure from [`super::http::answer`] in apprise-api's own words:
    /// its JSON `error` (a fixed sentence), never the log lines that come
    /// with it, which may name the services.
    fn failure(&self, e: DeliveryError) -> DeliveryError {
        #[derive(Deserialize)]
        struct ErrorBody {
            error: Option<String>,
        }
        let status = e
            .detail()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let words = match super::http::error_body::<ErrorBody>(&e) {
            Some((status, ErrorBody { error: Some(msg) })) => format!("{status} {msg}"),
            _ => status.clone(),
        };
        let words = self.scrub(words);
        if status == "HTTP 424" {
            // Some (or all) of the services failed, and the others have
            // been told. Retrying would tell those others again, every
            // attempt, and a service failing for good (a revoked token)
            // fails every time; so kci does not retry but records the
            // notice as failed, where the dead-letter list shows it and
            // an operator may re-drive it once the service is fixed.
            return DeliveryError::Permanent {
                reason: "apprise_partial",
                detail: format!(
                    "{words} (not retried: the services that worked would be told twice)"
                ),
            };
        }
        e.with_detail(words)
    }
}

#[async_trait]
impl Channel for AppriseChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Apprise
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let tag = msg.address();
        let mut body = serde_json::json!({
            "title": msg.rendered.subject,
            "body": msg.rendered.body,
            "type": notify_type(msg.notification.priority),
            "format": "text",
        });
        match &self.mode {
            Mode::Stateful => body["tag"] = tag.into(),
            Mode::Stateless(entries) => {
                let urls: Vec<&str> = entries
                    .iter()
                    .filter(|e| e.matches(tag))
                    .map(|e| e.url.expose().as_str())
                    .collect();
                if urls.is_empty() {
                    return Err(DeliveryError::Permanent {
                        reason: "bad_uri",
                        detail: format!(
                            "no URL in [channels.apprise] urls carries the tag `{tag}`"
                        ),
                    });
                }
                body["urls"] = urls.into();
            }
        }
        let mut req = self
            .client
            .post(self.notify.expose().clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body);
        req = match &self.auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t.expose()),
            Auth::Basic(user, pass) => req.basic_auth(user, Some(pass.expose())),
        };
        let resp = req.send().await.map_err(|e| {
            let e = super::http::unanswered(&e);
            let words = self.scrub(e.detail().to_string());
            e.with_detail(words)
        })?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Err(DeliveryError::Permanent {
                reason: "nothing_notified",
                detail: "HTTP 204: apprise-api had nothing to notify (no configuration under the key, or no valid URL)".into(),
            });
        }
        super::http::answer(resp)
            .await
            .map_err(|e| self.failure(e))?;
        Ok(Receipt {
            detail: Some(format!("apprise-api notified `{tag}`")),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::testkit::{Provider, outgoing};

    const TG: &str = "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/12315544/";
    const MAIL: &str = "mailtos://ops:Sup3rS3cret@example.com";

    fn channel(toml_text: &str) -> AppriseChannel {
        let cfg: AppriseConfig = toml::from_str(toml_text).unwrap();
        AppriseChannel::from_config(&cfg).unwrap()
    }

    fn stateless(url: &str) -> AppriseChannel {
        channel(&format!(
            "url = \"{url}\"\nurls = [\"devops,admin={TG}\", \"admin={MAIL}\", \"ntfys://alerts\"]\n"
        ))
    }

    #[tokio::test]
    async fn stateful_posts_to_the_key_with_the_tag() {
        let api = Provider::start(200, r#"{"error": null, "details": [["INFO", "2025-01-01 12:00:00,000", "Sent Telegram notification."]]}"#).await;
        let ch = channel(&format!(
            "url = \"{}/apprise\"\nkey = \"kci-ops\"\nusername = \"kci\"\npassword = \"pw-hunter2\"\n",
            api.url
        ));
        let mut out = outgoing("apprise:devops", "Line L1 down", "Line L1 is down");
        out.rendered.body = "Line L1 went down at 03:00.\nWe are on it.".into();
        out.notification.priority = Priority::High;
        let receipt = ch.deliver(&out).await.unwrap();
        assert_eq!(
            receipt.detail.as_deref(),
            Some("apprise-api notified `devops`")
        );
        let req = api.only_request();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/apprise/notify/kci-ops")
        );
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header("accept"), Some("application/json"));
        // base64("kci:pw-hunter2")
        assert_eq!(
            req.header("authorization"),
            Some("Basic a2NpOnB3LWh1bnRlcjI=")
        );
        assert_eq!(
            req.json(),
            serde_json::json!({
                "title": "Line L1 is down",
                "body": "Line L1 went down at 03:00.\nWe are on it.",
                "type": "warning",
                "format": "text",
                "tag": "devops",
            })
        );
    }

    #[tokio::test]
    async fn stateless_sends_only_the_urls_carrying_the_tag() {
        let api = Provider::start(200, r#"{"error": null, "details": []}"#).await;
        let ch = stateless(&api.url);
        let mut out = outgoing("apprise:admin", "x", "Disk full");
        out.notification.priority = Priority::Urgent;
        ch.deliver(&out).await.unwrap();
        let req = api.only_request();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/notify/")
        );
        assert_eq!(req.header("authorization"), None);
        assert_eq!(
            req.json(),
            serde_json::json!({
                "urls": [TG, MAIL],
                "title": "Disk full",
                "body": "x",
                "type": "failure",
                "format": "text",
            })
        );

        let api = Provider::start(200, r#"{"error": null, "details": []}"#).await;
        let ch = stateless(&api.url);
        ch.deliver(&outgoing("apprise:all", "x", "y"))
            .await
            .unwrap();
        assert_eq!(
            api.only_request().json()["urls"],
            serde_json::json!([TG, MAIL, "ntfys://alerts"])
        );
    }

    #[tokio::test]
    async fn a_tag_no_url_carries_fails_without_asking_the_server() {
        let api = Provider::start(200, "{}").await;
        let ch = stateless(&api.url);
        let err = ch
            .deliver(&outgoing("apprise:billing", "x", "y"))
            .await
            .unwrap_err();
        assert!(err.is_permanent());
        assert!(err.detail().contains("`billing`"), "{err}");
        assert!(api.requests().is_empty());
    }

    #[tokio::test]
    async fn a_bearer_token_goes_as_one() {
        let api = Provider::start(200, "{}").await;
        let ch = channel(&format!(
            "url = \"{}\"\nkey = \"ops\"\ntoken = \"tok-hunter3\"\n",
            api.url
        ));
        ch.deliver(&outgoing("apprise:all", "x", "y"))
            .await
            .unwrap();
        let req = api.only_request();
        assert_eq!(req.path, "/notify/ops");
        assert_eq!(req.header("authorization"), Some("Bearer tok-hunter3"));
        assert_eq!(req.json()["tag"], "all");
    }

    #[tokio::test]
    async fn the_servers_answers_are_classified_and_nothing_secret_shows() {
        // (status, body, transient, words the detail must carry)
        let cases: [(u16, &'static str, bool, &str); 9] = [
            (204, "", false, "nothing to notify"),
            (
                400,
                r#"{"error": "Unsupported characters found in tag definition"}"#,
                false,
                "HTTP 400 Unsupported characters",
            ),
            (401, "", false, "HTTP 401"),
            (
                404,
                r#"{"error": "There was no configuration found"}"#,
                false,
                "HTTP 404 There was no configuration found",
            ),
            (
                424,
                r#"{"error": "One or more notifications could not be sent", "details": [["WARNING", "2025-01-01 12:00:00,000", "Failed to send to tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/12315544/"]]}"#,
                false,
                "HTTP 424 One or more notifications could not be sent (not retried",
            ),
            (
                431,
                r#"{"error": "JSON Payload provided is to large"}"#,
                false,
                "HTTP 431",
            ),
            (429, "<html>Too Many Requests</html>", true, "HTTP 429"),
            (
                500,
                r#"{"error": "An error occured accessing configuration"}"#,
                true,
                "HTTP 500 An error occured",
            ),
            (
                502,
                "<html>mailtos://ops:Sup3rS3cret@example.com</html>",
                true,
                "HTTP 502",
            ),
        ];
        for (status, body, transient, words) in cases {
            let api = Provider::start(status, body).await;
            let ch = stateless(&api.url);
            let err = ch
                .deliver(&outgoing("apprise:devops", "x", "y"))
                .await
                .unwrap_err();
            assert_eq!(err.is_transient(), transient, "{status}");
            assert!(err.detail().contains(words), "{status}: {err}");
            let shown = format!("{err} {err:?} {}", err.reason());
            for secret in [
                "AAHdqTcv",
                "Sup3rS3cret",
                "12315544",
                "tgram://",
                "mailtos://",
            ] {
                assert!(!shown.contains(secret), "{status}: {secret} in {shown}");
            }
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retried_and_the_key_never_shows() {
        let ch = channel("url = \"http://127.0.0.1:9/\"\nkey = \"secret-key-hunter4\"\n");
        let err = ch
            .deliver(&outgoing("apprise:all", "x", "y"))
            .await
            .unwrap_err();
        assert!(err.is_transient());
        assert!(!format!("{err} {err:?}").contains("hunter4"), "{err}");
    }

    #[test]
    fn config_parses_and_never_prints_its_secrets() {
        let text = format!(
            "url = \"http://127.0.0.1:8000\"\nurls = [\"devops={TG}\"]\ntoken = \"tok-hunter5\"\ntimeout = \"20s\"\nrate = \"1/s\"\n"
        );
        let cfg: AppriseConfig = toml::from_str(&text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.timeout.0, std::time::Duration::from_secs(20));
        assert!(cfg.rate.is_some());
        let dump = format!("{cfg:?}");
        assert!(
            !dump.contains("AAHdqTcv") && !dump.contains("hunter5"),
            "{dump}"
        );
        assert!(toml::from_str::<AppriseConfig>("url = \"http://x\"\nkeys = \"a\"\n").is_err());
    }

    #[test]
    fn config_mistakes_are_named() {
        let cases = [
            ("url = \"http://x\"\n", "urls"),
            (
                "url = \"http://x\"\nkey = \"a\"\nurls = [\"json://h\"]\n",
                "key",
            ),
            ("url = \"http://x\"\nkey = \"a/b\"\n", "key"),
            ("url = \"ftp://x\"\nkey = \"a\"\n", "url"),
            ("url = \"http://x\"\nurls = [\"not a url\"]\n", "urls[0]"),
            (
                "url = \"http://x\"\nkey = \"a\"\ntoken = \"t\"\npassword = \"p\"\n",
                "token",
            ),
            (
                "url = \"http://x\"\nkey = \"a\"\nusername = \"u\"\n",
                "password",
            ),
        ];
        for (text, key) in cases {
            let cfg: AppriseConfig = toml::from_str(text).unwrap();
            let (k, message) = cfg.validate().unwrap_err();
            assert_eq!(k, key, "{text}: {message}");
        }
        let cfg: AppriseConfig = toml::from_str(
            "url = \"http://x\"\nurls = [\"ops=json://h\", \"a.b=json://hunter6\"]\n",
        )
        .unwrap();
        let (_, message) = cfg.validate().unwrap_err();
        assert!(!message.contains("hunter6"), "{message}");
    }

    #[test]
    fn priorities_map_to_apprise_types() {
        assert_eq!(notify_type(Priority::Low), "info");
        assert_eq!(notify_type(Priority::Normal), "info");
        assert_eq!(notify_type(Priority::High), "warning");
        assert_eq!(notify_type(Priority::Urgent), "failure");
    }
}
