//! Bearer tokens: `kci_` and 256 random bits, shown once, stored only as
//! SHA-256. A token is looked up by its hash (a high-entropy secret needs no
//! slow hash, and a lookup by hash reveals nothing usable through timing),
//! then its scopes are checked by each handler.

use super::{AppError, AppState};
use crate::model::Scope;
use crate::store::TokenRecord;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use rand::TryRngCore;

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

/// A fresh token secret from the operating system's CSPRNG.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random number generator failed");
    format!(
        "kci_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What is stored of a token.
pub fn hash_token(token: &str) -> String {
    crate::model::sha256_hex(token.as_bytes())
}

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
        let record = state
            .store
            .find_token(&hash_token(token))
            .await?
            .filter(|t| t.usable(now))
            .ok_or(AppError::Unauthenticated)?;
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
