//! Bearer tokens: `kci_` and 256 random bits, shown once, stored only as
//! SHA-256. A token is looked up by its hash (a high-entropy secret needs no
//! slow hash, and a lookup by hash reveals nothing usable through timing),
//! then its scopes are checked by each handler. Lookups are kept in memory
//! ([`TokenCache`]) for as long as the store's token epoch says they hold.

use super::{AppError, AppState};
use crate::model::Scope;
use crate::store::TokenRecord;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub TokenRecord);

impl Caller {
    /// Refuses the request (403) unless the token grants `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), AppError> {
        if self.0.scopes.iter().any(|s| s.grants(scope)) {
            Ok(())
        } else {
            Err(AppError::Forbidden { scope })
        }
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.require(scope).is_ok()
    }

    /// Who acts, as changes and the audit log record it: `staff:<name>`
    /// for a staff member's token, else `token:<id>`.
    pub fn actor(&self) -> String {
        match &self.0.staff {
            Some(name) => format!("staff:{name}"),
            None => format!("token:{}", self.0.id),
        }
    }

    /// The staff member acting, or 403: some steps only a person may take.
    pub fn staff(&self) -> Result<&str, AppError> {
        self.0.staff.as_deref().ok_or(AppError::StaffOnly)
    }
}

pub use crate::trust::codes::{hash_token, new_token};

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(AppError::Unauthenticated)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() < 256)
            .ok_or(AppError::Unauthenticated)?;
        let now = state.clock.now();
        let hash = hash_token(token);
        let record = state
            .tokens
            .find(state.store.as_ref(), &hash)
            .await?
            .filter(|t| t.usable(now))
            .ok_or(AppError::Unauthenticated)?;
        // A staff member's token must come from a login when a second
        // factor is required; one made by `kci token create --staff` does
        // not show one.
        if record.staff.is_some()
            && !record.session
            && state.config.staff.second_factor == crate::config::SecondFactor::Required
        {
            tracing::warn!(token = %record.id, "a staff token not made by a login, refused: [staff] second_factor = \"required\"");
            return Err(AppError::Unauthenticated);
        }
        let client = parts
            .extensions
            .get::<super::perimeter::ClientAddr>()
            .map(|c| c.0);
        // A token bound to networks works only from inside them. Refused
        // as any bad token is: a thief learns nothing from the answer
        // (the log says why).
        if !record.allow.is_empty()
            && client.is_none_or(|c| !super::perimeter::allowed(c, &record.allow))
        {
            tracing::warn!(token = %record.id, client = ?client, "token used from outside its networks");
            state.metrics.limit_hit("api", "token_network");
            return Err(AppError::Unauthenticated);
        }
        // A token bound to a client certificate works only over a
        // connection that presented it.
        if let Some(want) = &record.cert {
            let presented = parts.extensions.get::<super::tls::ClientCert>();
            if presented.is_none_or(|c| &c.0 != want) {
                tracing::warn!(token = %record.id, "token used without its client certificate");
                state.metrics.limit_hit("api", "token_cert");
                return Err(AppError::Unauthenticated);
            }
        }
        if let Err(wait) = state.limits.token(&record.id) {
            state.metrics.limit_hit("api", "token");
            return Err(super::perimeter::too_many("token", wait));
        }
        // Its last use, written down at most once a minute per token and
        // address, off the request's path.
        let from = client.map(|c| c.to_string());
        if record.needs_touch(now, from.as_deref()) {
            state.tokens.used(&hash, now, from.as_deref());
            let store = state.store.clone();
            let id = record.id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.touch_token(&id, now, from.as_deref()).await {
                    tracing::warn!(token = %id, error = %e, "recording a token's last use failed");
                }
            });
        }
        Ok(Caller(record))
    }
}

impl axum::extract::OptionalFromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    /// No `Authorization` header: `None`; a bad one is still refused.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        if parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION)
        {
            <Caller as FromRequestParts<AppState>>::from_request_parts(parts, state)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Token lookups kept in memory, so that a request costs no store read.
///
/// What is kept is only trusted while [`watch`](Self::watch) has read the
/// store's token epoch ([`TokenStore::token_epoch`]) within the last
/// [`TRUST`](Self::TRUST); when the epoch moves (a token revoked, rotated
/// or deleted, a staff member disabled — by any process or node, on either
/// store) everything is dropped. A revocation made anywhere therefore
/// takes effect here within `TRUST`; when the store cannot be read, or
/// nothing watches (commands other than `kci serve`), every lookup goes to
/// the store as if there were no cache. Unknown tokens are never kept, so
/// guessing fills nothing; known ones are bounded by [`MAX`](Self::MAX).
///
/// [`TokenStore::token_epoch`]: crate::store::TokenStore::token_epoch
pub struct TokenCache {
    /// Moves on every invalidation. A lookup records it before asking the
    /// store and keeps its answer only if it has not moved since: an
    /// answer read before a revocation is never kept after it.
    generation: AtomicU64,
    /// Until when (milliseconds after `started`) entries may be used.
    trusted_until: AtomicU64,
    started: Instant,
    entries: RwLock<HashMap<String, TokenRecord>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(0),
            trusted_until: AtomicU64::new(0),
            started: Instant::now(),
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl TokenCache {
    /// How often [`watch`](Self::watch) reads the epoch.
    pub const POLL: Duration = Duration::from_millis(100);
    /// How long after the start of the last epoch read entries are used:
    /// the longest a revocation elsewhere goes unnoticed.
    pub const TRUST: Duration = Duration::from_millis(250);
    /// The most tokens kept; past it, the cache starts again.
    pub const MAX: usize = 4096;

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    fn trusted(&self) -> bool {
        self.millis(Instant::now()) < self.trusted_until.load(Ordering::SeqCst)
    }

    /// The token whose secret hashes to `hash`, from memory when that can
    /// be trusted, else from `store` (and then kept, if it exists).
    pub async fn find(
        &self,
        store: &dyn crate::store::Store,
        hash: &str,
    ) -> Result<Option<TokenRecord>, crate::store::StoreError> {
        if self.trusted()
            && let Some(found) = self.read().get(hash)
        {
            return Ok(Some(found.clone()));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let found = store.find_token(hash).await?;
        if let Some(record) = &found {
            let mut entries = self.write();
            if self.generation.load(Ordering::SeqCst) == generation {
                if entries.len() >= Self::MAX {
                    entries.clear();
                }
                entries.insert(hash.to_string(), record.clone());
            }
        }
        Ok(found)
    }

    /// Records a use written down, so that the next request does not
    /// write it again.
    pub fn used(&self, hash: &str, at: chrono::DateTime<chrono::Utc>, from: Option<&str>) {
        if let Some(record) = self.write().get_mut(hash) {
            record.last_used_at = Some(at);
            record.last_used_from = from.map(str::to_string);
        }
    }

    /// Waits until no node can still use what it kept before this call:
    /// called after a change that moved the epoch has committed (a
    /// revocation), it returns once the change holds everywhere. Every
    /// node either reads the new epoch or stops trusting within
    /// [`TRUST`](Self::TRUST) of the commit, by its own clock.
    pub async fn settle() {
        tokio::time::sleep(Self::TRUST).await;
    }

    /// Drops everything kept.
    pub fn invalidate(&self) {
        let mut entries = self.write();
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.clear();
    }

    /// Reads the store's token epoch every [`POLL`](Self::POLL) until
    /// shutdown: drops everything when it moved, and trusts what is kept
    /// for [`TRUST`](Self::TRUST) from the start of each read that
    /// succeeded.
    pub async fn watch(
        self: Arc<Self>,
        store: Arc<dyn crate::store::Store>,
        shutdown: crate::shutdown::Shutdown,
    ) {
        let mut seen: Option<i64> = None;
        let mut failing = false;
        while !shutdown.is_triggered() {
            let began = Instant::now();
            match store.token_epoch().await {
                Ok(epoch) => {
                    self.saw(&mut seen, epoch, began);
                    if failing {
                        tracing::info!("token epoch readable again; tokens cached");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read the token epoch; every request reads its token from the store");
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Self::POLL) => {}
                _ = shutdown.wait() => {}
            }
        }
    }

    /// The epoch read at `began` is `epoch`; `seen` the one before.
    fn saw(&self, seen: &mut Option<i64>, epoch: i64, began: Instant) {
        if *seen != Some(epoch) {
            self.invalidate();
            *seen = Some(epoch);
        }
        let until = self.millis(began + Self::TRUST);
        self.trusted_until.store(until, Ordering::SeqCst);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, TokenRecord>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, TokenRecord>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Store, TokenStore};

    async fn store_with(token: &str) -> (Arc<dyn Store>, String) {
        let store = SqliteStore::open(":memory:").unwrap();
        store.migrate().await.unwrap();
        let id = crate::model::new_id();
        let rec = TokenRecord {
            id: id.clone(),
            name: "billing".into(),
            scopes: vec![Scope::EventsWrite],
            created_at: chrono::Utc::now(),
            staff: None,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            last_used_from: None,
            allow: vec![],
            cert: None,
            session: false,
        };
        store.create_token(&rec, &hash_token(token)).await.unwrap();
        (Arc::new(store), id)
    }

    /// A cache that has just read the store's epoch.
    async fn watched(store: &dyn Store) -> (TokenCache, Option<i64>) {
        let cache = TokenCache::default();
        let mut seen = None;
        cache.saw(
            &mut seen,
            store.token_epoch().await.unwrap(),
            Instant::now(),
        );
        (cache, seen)
    }

    async fn revoked(cache: &TokenCache, store: &dyn Store, hash: &str) -> bool {
        let found = cache.find(store, hash).await.unwrap().unwrap();
        found.revoked_at.is_some()
    }

    #[tokio::test]
    async fn a_revocation_empties_the_cache_once_the_epoch_moves() {
        let (store, id) = store_with("kci_a").await;
        let hash = hash_token("kci_a");
        let (cache, mut seen) = watched(store.as_ref()).await;
        assert!(!revoked(&cache, store.as_ref(), &hash).await);
        // Revoked by another process: what is kept still answers until
        // the epoch is read again (that is what makes it a cache)…
        assert!(store.revoke_token(&id, chrono::Utc::now()).await.unwrap());
        assert!(!revoked(&cache, store.as_ref(), &hash).await);
        // …and no longer once it has been.
        cache.saw(
            &mut seen,
            store.token_epoch().await.unwrap(),
            Instant::now(),
        );
        assert!(revoked(&cache, store.as_ref(), &hash).await);
    }

    #[tokio::test]
    async fn nothing_is_trusted_without_a_recent_epoch_read() {
        let (store, id) = store_with("kci_b").await;
        let hash = hash_token("kci_b");
        // Never watched (a command other than `kci serve`).
        let cache = TokenCache::default();
        assert!(!revoked(&cache, store.as_ref(), &hash).await);
        assert!(store.revoke_token(&id, chrono::Utc::now()).await.unwrap());
        assert!(revoked(&cache, store.as_ref(), &hash).await);

        // Watched, but the last read is older than TRUST (the store
        // stopped answering): the store is asked again.
        let (store, id) = store_with("kci_c").await;
        let hash = hash_token("kci_c");
        let cache = TokenCache::default();
        let long_ago = Instant::now() - TokenCache::TRUST;
        let mut seen = None;
        cache.saw(&mut seen, store.token_epoch().await.unwrap(), long_ago);
        assert!(!revoked(&cache, store.as_ref(), &hash).await);
        assert!(store.revoke_token(&id, chrono::Utc::now()).await.unwrap());
        assert!(revoked(&cache, store.as_ref(), &hash).await);
    }

    #[tokio::test]
    async fn unknown_tokens_are_not_kept_and_known_ones_are_bounded() {
        let (store, _) = store_with("kci_d").await;
        let (cache, _) = watched(store.as_ref()).await;
        for i in 0..100 {
            let guess = hash_token(&format!("kci_guess{i}"));
            assert!(cache.find(store.as_ref(), &guess).await.unwrap().is_none());
        }
        assert_eq!(cache.read().len(), 0, "guesses fill nothing");
        cache
            .find(store.as_ref(), &hash_token("kci_d"))
            .await
            .unwrap();
        assert_eq!(cache.read().len(), 1);
        // At the bound, the cache starts again rather than grow.
        {
            let mut entries = cache.write();
            let any = entries.drain().next().unwrap().1;
            for i in 0..TokenCache::MAX {
                entries.insert(format!("filler{i}"), any.clone());
            }
        }
        cache
            .find(store.as_ref(), &hash_token("kci_d"))
            .await
            .unwrap();
        assert_eq!(cache.read().len(), 1);
    }

    #[tokio::test]
    async fn a_use_written_down_is_remembered() {
        let (store, _) = store_with("kci_e").await;
        let hash = hash_token("kci_e");
        let (cache, _) = watched(store.as_ref()).await;
        let at = chrono::Utc::now();
        let first = cache.find(store.as_ref(), &hash).await.unwrap().unwrap();
        assert!(first.needs_touch(at, Some("192.0.2.1")));
        cache.used(&hash, at, Some("192.0.2.1"));
        let again = cache.find(store.as_ref(), &hash).await.unwrap().unwrap();
        assert!(!again.needs_touch(at, Some("192.0.2.1")));
    }
}
