//! X's OAuth 2.0 user-context tokens: the access token lives in memory
//! only (two hours), and the refresh token, which X replaces on every
//! refresh (the old one stops working), is kept sealed in the store all nodes share (`channels::credentials`,
//! `trust::seal`), so a restart or another node goes on from the newest.
//!
//! The refresh grant, as X's "OAuth 2.0 Authorization Code Flow with PKCE"
//! documents it: `POST {api}/2/oauth2/token`, form
//! `grant_type=refresh_token&refresh_token=…&client_id=…`; a confidential
//! client authenticates with HTTP Basic (client id and secret). The answer:
//! `{"token_type":"bearer","expires_in":7200,"access_token":…,"scope":…,
//! "refresh_token":…}`; a used or revoked token is refused with 400 and
//! an OAuth error (`{"error":"invalid_request","error_description":…}`),
//! wrong client credentials with 401.
//!
//! Two nodes refreshing at once both read version v; X honours the token
//! once, so one gets new tokens and swaps v → v+1, the other is refused,
//! reads again, finds v+1 and refreshes with that. The configured
//! `refresh_token` seeds the store only when none is stored, or when the
//! stored chain is refused and the configured one is not the one it grew
//! from (the operator authorized kci anew).

use crate::channels::{CredentialStore, DeliveryError, Keep};
use crate::model::Secret;
use crate::trust::seal::Sealer;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The store's name for X's refresh token.
pub const NAME: &str = "x.refresh_token";
/// An access token is renewed when less than this is left of it.
const MARGIN: Duration = Duration::from_secs(5 * 60);
/// X's access tokens last two hours unless the answer says otherwise.
const DEFAULT_LIFETIME: u64 = 7200;
/// Times a refresh reads the store again after losing a race.
const ROUNDS: usize = 3;

/// The associated data a sealed refresh token is bound to.
pub fn context(version: i64) -> String {
    format!("{NAME}#{version}")
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct Grant {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// The token endpoint's error (RFC 6749 §5.2).
#[derive(Deserialize)]
struct GrantError {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// An access token and when kci stops using it.
#[derive(Clone)]
pub struct Access {
    pub token: Secret<String>,
    renew_at: Instant,
}

/// What the store holds, opened if it opens with this code key.
struct Chain {
    version: i64,
    refresh: Result<Secret<String>, crate::trust::seal::SealError>,
    seed: String,
}

/// Where the refresh token is kept.
struct Vault {
    store: Arc<dyn CredentialStore>,
    sealer: Sealer,
    /// The keyed hash of the configured refresh token.
    seed: String,
}

/// The token endpoint refused the refresh token (used, revoked, or the
/// client is wrong), as opposed to not answering.
enum Refresh {
    Granted(Grant),
    Refused(String),
}

pub struct Tokens {
    client: reqwest::Client,
    token_url: url::Url,
    client_id: String,
    client_secret: Option<Secret<String>>,
    configured: Secret<String>,
    vault: Option<Vault>,
    /// How long a refused refresh waits for another node's new token to
    /// reach the store before the chain is taken for dead.
    patience: Duration,
    /// The access token of this node, renewed by one task at a time.
    current: tokio::sync::Mutex<Option<Access>>,
}

impl Tokens {
    pub fn new(
        client: reqwest::Client,
        token_url: url::Url,
        cfg: &super::XConfig,
        keep: Option<Keep>,
    ) -> Tokens {
        let vault = keep.map(|k| Vault {
            seed: k.code_key.mac(&["kci-x-seed", cfg.refresh_token.expose()]),
            sealer: Sealer::new(&k.code_key, NAME),
            store: k.store,
        });
        Tokens {
            client,
            token_url,
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            configured: cfg.refresh_token.clone(),
            vault,
            patience: cfg.timeout.0.min(Duration::from_secs(3)),
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The access token to use now: the one in memory while it has more
    /// than a few minutes left, else a new one.
    pub async fn access(self: &Arc<Self>) -> Result<Secret<String>, DeliveryError> {
        let mut current = self.current.lock().await;
        if let Some(a) = current.as_ref().filter(|a| Instant::now() < a.renew_at) {
            return Ok(a.token.clone());
        }
        let fresh = self.refreshed().await?;
        *current = Some(fresh.clone());
        Ok(fresh.token)
    }

    /// A new access token after X refused `stale` (401): unless another
    /// task of this node renewed it meanwhile, refreshed now.
    pub async fn renew(
        self: &Arc<Self>,
        stale: &Secret<String>,
    ) -> Result<Secret<String>, DeliveryError> {
        let mut current = self.current.lock().await;
        if let Some(a) = current
            .as_ref()
            .filter(|a| a.token.expose() != stale.expose() && Instant::now() < a.renew_at)
        {
            return Ok(a.token.clone());
        }
        *current = None;
        let fresh = self.refreshed().await?;
        *current = Some(fresh.clone());
        Ok(fresh.token)
    }

    /// [`Tokens::refresh`] in a task of its own: a delivery given up on
    /// (its time ran out) must not stop a refresh between X's answer and
    /// the store, or the one refresh token X now honours would be lost.
    async fn refreshed(self: &Arc<Self>) -> Result<Access, DeliveryError> {
        let me = self.clone();
        tokio::spawn(async move { me.refresh().await })
            .await
            .unwrap_or_else(|e| {
                Err(DeliveryError::Transient {
                    reason: "x_auth",
                    detail: format!("the token refresh stopped: {e}"),
                    retry_after: None,
                })
            })
    }

    /// An access token for `token` and its lifetime, for tests that start
    /// from one already held.
    #[cfg(test)]
    pub async fn prime(&self, token: &str, lifetime: Duration) {
        *self.current.lock().await = Some(Access {
            token: Secret::new(token.to_string()),
            renew_at: Instant::now() + lifetime.saturating_sub(MARGIN),
        });
    }

    /// The refresh itself: the newest stored refresh token for a new pair,
    /// the new refresh token swapped in from the version read.
    async fn refresh(&self) -> Result<Access, DeliveryError> {
        let Some(vault) = &self.vault else {
            return Err(DeliveryError::Permanent {
                reason: "x_auth",
                detail: "this kci command keeps no X refresh token (only kci serve refreshes)"
                    .into(),
            });
        };
        for _ in 0..ROUNDS {
            let chain = self.chain(vault).await?;
            let refresh = match &chain.refresh {
                Ok(r) => r.clone(),
                Err(why) => return self.restart(vault, &chain, why).await,
            };
            match self.grant(&refresh).await? {
                Refresh::Granted(grant) => {
                    self.keep_new(vault, chain.version, &chain.seed, &grant)
                        .await?;
                    return Ok(access(grant));
                }
                Refresh::Refused(words) => {
                    if self.moved_on(vault, chain.version).await? {
                        // Another node refreshed with it first: go on from theirs.
                        continue;
                    }
                    if chain.seed != vault.seed {
                        // A new refresh token is configured: start from it.
                        let sealed = seal(vault, &self.configured, chain.version + 1)?;
                        vault
                            .store
                            .swap_credential(
                                NAME,
                                chain.version,
                                &sealed,
                                &vault.seed,
                                chrono::Utc::now(),
                            )
                            .await
                            .map_err(store_error)?;
                        tracing::info!(
                            "X refused the stored refresh token; starting again from the one configured in [channels.x] refresh_token"
                        );
                        continue;
                    }
                    return Err(DeliveryError::Permanent {
                        reason: "x_auth",
                        detail: format!(
                            "X refused kci's refresh token ({words}): authorize kci's X app again and put the new refresh token in [channels.x] refresh_token"
                        ),
                    });
                }
            }
        }
        Err(DeliveryError::Transient {
            reason: "x_auth",
            detail: "other nodes kept refreshing X's token at the same time; trying again later"
                .into(),
            retry_after: None,
        })
    }

    /// The stored token does not open with this code key (the key was
    /// replaced, or this node's is wrong): the configured refresh token is
    /// tried, and only what X accepts replaces the stored one — a node
    /// with a wrong key and a used-up token overwrites nothing.
    async fn restart(
        &self,
        vault: &Vault,
        chain: &Chain,
        why: &crate::trust::seal::SealError,
    ) -> Result<Access, DeliveryError> {
        match self.grant(&self.configured).await? {
            Refresh::Granted(grant) => {
                self.keep_new(vault, chain.version, &vault.seed, &grant)
                    .await?;
                tracing::warn!(
                    "the stored X refresh token does not open with this code key; started again from the one configured in [channels.x] refresh_token"
                );
                Ok(access(grant))
            }
            Refresh::Refused(words) => Err(DeliveryError::Permanent {
                reason: "x_auth",
                detail: format!(
                    "the stored X refresh token {why}, and X refused the configured one ({words}): authorize kci's X app again and put the new refresh token in [channels.x] refresh_token"
                ),
            }),
        }
    }

    /// Whether the stored chain moved past `version` (another node stored
    /// the token X handed it), waiting a little for a winner whose answer
    /// from X is still on its way to the store.
    async fn moved_on(&self, vault: &Vault, version: i64) -> Result<bool, DeliveryError> {
        let until = Instant::now() + self.patience;
        loop {
            if read(vault).await?.is_some_and(|c| c.version != version) {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The stored chain, seeded from the configured refresh token when the
    /// store holds none.
    async fn chain(&self, vault: &Vault) -> Result<Chain, DeliveryError> {
        if let Some(chain) = read(vault).await? {
            return Ok(chain);
        }
        let sealed = seal(vault, &self.configured, 1)?;
        // Another node may seed first: then theirs is read.
        vault
            .store
            .seed_credential(NAME, &sealed, &vault.seed, chrono::Utc::now())
            .await
            .map_err(store_error)?;
        read(vault).await?.ok_or_else(|| DeliveryError::Transient {
            reason: "store",
            detail: "the X refresh token just stored cannot be read back".into(),
            retry_after: None,
        })
    }

    /// Stores X's new refresh token, from the version it was refreshed
    /// from, with the seed its chain grew from. Losing the swap (another
    /// node got new tokens from the same one, which X should not allow)
    /// keeps theirs.
    async fn keep_new(
        &self,
        vault: &Vault,
        version: i64,
        seed: &str,
        grant: &Grant,
    ) -> Result<(), DeliveryError> {
        let Some(refresh) = grant.refresh_token.as_deref() else {
            tracing::warn!(
                "X issued no new refresh token: does kci's X app have the offline.access scope? The stored one is kept, but X may not honour it again"
            );
            return Ok(());
        };
        let sealed = seal(vault, &Secret::new(refresh.to_string()), version + 1)?;
        let swapped = vault
            .store
            .swap_credential(NAME, version, &sealed, seed, chrono::Utc::now())
            .await
            .map_err(store_error)?;
        if !swapped {
            tracing::warn!(
                version,
                "another node stored a new X refresh token at the same time; theirs is kept"
            );
        }
        Ok(())
    }

    /// One refresh grant at X's token endpoint.
    async fn grant(&self, refresh: &Secret<String>) -> Result<Refresh, DeliveryError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", refresh.expose())
            .append_pair("client_id", &self.client_id)
            .finish();
        let mut request = self
            .client
            .post(self.token_url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(secret) = &self.client_secret {
            request = request.basic_auth(&self.client_id, Some(secret.expose()));
        }
        let resp = request
            .send()
            .await
            .map_err(|e| crate::channels::http::unanswered(&e))?;
        let status = resp.status().as_u16();
        match crate::channels::http::answer(resp).await {
            Ok((_, text)) => serde_json::from_str::<Grant>(&text)
                .map(Refresh::Granted)
                .map_err(|e| DeliveryError::Transient {
                    reason: "bad_answer",
                    detail: format!("X's token endpoint answered something else than tokens: {e}"),
                    retry_after: None,
                }),
            Err(e) => {
                let words = match crate::channels::http::error_body::<GrantError>(&e) {
                    Some((_, g)) => [g.error, g.error_description]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": "),
                    None => e.detail().to_string(),
                };
                let words = self.scrub(&words, refresh);
                match status {
                    400 | 401 => Ok(Refresh::Refused(format!("HTTP {status} {words}"))),
                    _ => Err(e.with_detail(format!("X's token endpoint: HTTP {status} {words}"))),
                }
            }
        }
    }

    /// `words` without any credential in them, should X quote one.
    fn scrub(&self, words: &str, refresh: &Secret<String>) -> String {
        let mut out = words.to_string();
        for secret in [
            Some(refresh.expose()),
            Some(self.configured.expose()),
            self.client_secret.as_ref().map(|s| s.expose()),
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        {
            out = out.replace(secret.as_str(), "***");
        }
        out
    }
}

/// The stored chain, opened.
async fn read(vault: &Vault) -> Result<Option<Chain>, DeliveryError> {
    let Some(stored) = vault.store.credential(NAME).await.map_err(store_error)? else {
        return Ok(None);
    };
    let refresh = vault
        .sealer
        .open(&stored.sealed, &context(stored.version))
        .map(Secret::new);
    Ok(Some(Chain {
        version: stored.version,
        refresh,
        seed: stored.seed,
    }))
}

/// The access token of a grant, and when to renew it.
fn access(grant: Grant) -> Access {
    let lifetime = Duration::from_secs(grant.expires_in.unwrap_or(DEFAULT_LIFETIME));
    Access {
        token: Secret::new(grant.access_token),
        renew_at: Instant::now() + lifetime.saturating_sub(MARGIN),
    }
}

fn seal(vault: &Vault, token: &Secret<String>, version: i64) -> Result<String, DeliveryError> {
    vault
        .sealer
        .seal(token.expose(), &context(version))
        .map_err(|e| DeliveryError::Permanent {
            reason: "x_auth",
            detail: format!("X's refresh token cannot be sealed: {e}"),
        })
}

fn store_error(e: crate::channels::CredentialStoreError) -> DeliveryError {
    DeliveryError::Transient {
        reason: "store",
        detail: e.to_string(),
        retry_after: None,
    }
}
