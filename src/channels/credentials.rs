//! The seam through which a channel keeps a credential its provider
//! replaces as it is used (X's refresh token is good for one refresh):
//! the channel seals it (`trust::seal`) and the store persists only the
//! sealed text, by name, with a version that moves by one on every swap.
//! A swap succeeds only from the version the channel read, so of two
//! nodes refreshing at once one wins and the other reads again. The
//! store implements this (`store/db.rs`); no rule lives there.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A credential as stored: sealed, never in clear.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCredential {
    /// 1 when seeded, one more at every swap.
    pub version: i64,
    /// The value sealed with [`crate::trust::seal::Sealer`], bound to the
    /// name and this version.
    pub sealed: String,
    /// A keyed hash of the configured value the chain grew from, so a new
    /// one configured (the operator authorized kci anew) is told apart.
    pub seed: String,
    pub updated_at: DateTime<Utc>,
}

/// The store could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("credential store: {0}")]
pub struct CredentialStoreError(pub String);

/// Where a channel keeps its rotating credentials.
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// The credential stored under `name`, if any.
    async fn credential(
        &self,
        name: &str,
    ) -> Result<Option<StoredCredential>, CredentialStoreError>;

    /// Stores version 1 of `name` unless one is stored; `false` if one was
    /// (another node seeded first: read it).
    async fn seed_credential(
        &self,
        name: &str,
        sealed: &str,
        seed: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, CredentialStoreError>;

    /// Replaces version `expected` of `name` with `expected + 1`; `false`
    /// when the stored version is not `expected` (another node swapped
    /// first: read it again).
    async fn swap_credential(
        &self,
        name: &str,
        expected: i64,
        sealed: &str,
        seed: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, CredentialStoreError>;
}
