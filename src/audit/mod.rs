//! The audit log's service side (DESIGN.md §7): checkpoints of its head
//! signed with the operator's OpenPGP key, and the walk `kci audit verify`
//! makes. The chain itself (what an entry's hash is, what a walk checks)
//! is `model::audit`'s, pure; appends are the stores'.

use crate::config::AuditConfig;
use crate::model::audit::{Checkpoint, Intact, Tampered, Walk, checkpoint_due};
use crate::pgp::OperatorKey;
use crate::store::{Result, Store};
use chrono::{DateTime, SubsecRound, Utc};

/// Entries read at a time by [`verify`].
const PAGE: usize = 5_000;

/// Signs the log's head if a checkpoint is due; the checkpoint made.
pub async fn checkpoint(
    store: &dyn Store,
    key: &OperatorKey,
    cfg: &AuditConfig,
    now: DateTime<Utc>,
) -> Result<Option<Checkpoint>> {
    let (head, last) = store.audit_head().await?;
    let Some((seq, hash)) = head else {
        return Ok(None);
    };
    let interval =
        chrono::Duration::from_std(cfg.checkpoint_interval.0).unwrap_or(chrono::Duration::MAX);
    let due = checkpoint_due(
        last.as_ref().map(|c| (c.seq, c.at)),
        seq,
        now,
        i64::from(cfg.checkpoint_every.max(1)),
        interval,
    );
    if !due {
        return Ok(None);
    }
    let at = now.trunc_subsecs(3);
    let statement = Checkpoint::statement(seq, &hash, at);
    let signature = key
        .sign_detached_at(statement.as_bytes(), at)
        .map_err(|e| crate::store::StoreError::Unavailable(format!("signing a checkpoint: {e}")))?;
    let cp = Checkpoint {
        seq,
        head: hash,
        at,
        signature,
    };
    Ok(store.add_checkpoint(&cp).await?.then_some(cp))
}

/// Whether `cp` is signed by the operator's key `public` (armored).
pub fn signed(cp: &Checkpoint, public: &str) -> bool {
    let statement = Checkpoint::statement(cp.seq, &cp.head, cp.at);
    crate::pgp::verify_signed(
        statement.as_bytes(),
        Some(cp.signature.as_bytes()),
        public,
        cp.at,
    )
    .is_ok()
}

/// The keys that may have signed checkpoints: the operator's now, and
/// retired ones, each only for checkpoints up to its retirement.
#[derive(Debug, Clone, Default)]
pub struct Signers {
    /// The operator's public key (armored).
    pub current: Option<String>,
    /// Retired public keys (armored) and when each was retired.
    pub previous: Vec<(String, DateTime<Utc>)>,
}

impl Signers {
    /// Whether `cp` is signed by a key allowed to sign it.
    pub fn vouch(&self, cp: &Checkpoint) -> bool {
        self.current.as_deref().is_some_and(|p| signed(cp, p))
            || self
                .previous
                .iter()
                .any(|(p, until)| cp.at <= *until && signed(cp, p))
    }
}

/// Walks the whole log and its checkpoints (see [`Walk`]). `public`: the
/// operator's public key, to check the checkpoints' signatures; without
/// one, any checkpoint counts as unchecked, which fails the walk.
pub async fn verify(
    store: &dyn Store,
    public: Option<&str>,
) -> Result<std::result::Result<Intact, Tampered>> {
    let signers = Signers {
        current: public.map(str::to_string),
        previous: Vec::new(),
    };
    verify_with(store, &signers).await
}

/// As [`verify`], with retired keys too.
pub async fn verify_with(
    store: &dyn Store,
    signers: &Signers,
) -> Result<std::result::Result<Intact, Tampered>> {
    let public = signers.current.as_deref();
    let checkpoints = store.checkpoints().await?;
    for cp in &checkpoints {
        if !signers.vouch(cp) {
            return Ok(Err(Tampered {
                seq: cp.seq,
                why: match public {
                    Some(_) => format!(
                        "the checkpoint at entry {} is not signed by the operator's key (nor by a retired one before its retirement)",
                        cp.seq
                    ),
                    None => format!(
                        "the checkpoint at entry {} cannot be checked: no [email] signing_key is configured",
                        cp.seq
                    ),
                },
            }));
        }
    }
    let mut walk = Walk::new(checkpoints);
    let mut after = 0;
    loop {
        let page = store.audit_entries(None, after, PAGE).await?;
        for e in &page {
            if let Err(t) = walk.step(e) {
                return Ok(Err(t));
            }
        }
        match page.last() {
            Some(e) if page.len() == PAGE => after = e.seq,
            _ => break,
        }
    }
    Ok(walk.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::prelude::*;

    /// A checkpoint names its own time and is signed as of it: one whose
    /// signing came late (a busy node: the time was taken before other
    /// work) still verifies, as `kci audit verify` checks it.
    #[tokio::test]
    async fn a_checkpoint_signed_late_still_verifies() {
        let store = crate::store::sqlite::SqliteStore::open(":memory:").unwrap();
        store.migrate().await.unwrap();
        let (key, _) = OperatorKey::generate("kci <kci@isp.example>", None).unwrap();
        let now = Utc::now();
        store
            .audit(
                crate::model::audit::AuditDraft::new("kci", "test.entry", "ok"),
                now,
            )
            .await
            .unwrap();
        let cfg = AuditConfig {
            checkpoint_every: 1,
            checkpoint_interval: crate::model::Span(std::time::Duration::from_secs(1)),
            previous_keys: Vec::new(),
        };
        let late = now - chrono::Duration::seconds(30);
        let cp = checkpoint(&store, &key, &cfg, late)
            .await
            .unwrap()
            .expect("a checkpoint");
        assert!(signed(&cp, &key.public_armored()));
        let walk = verify(&store, Some(&key.public_armored())).await.unwrap();
        assert!(walk.is_ok(), "{walk:?}");
    }

    /// After the operator key is replaced, the checkpoints the old one
    /// signed still count — up to its retirement, and not one after, so a
    /// leaked old key cannot vouch for entries added later.
    #[tokio::test]
    async fn a_retired_key_vouches_only_for_what_it_signed_before_retirement() {
        let store = crate::store::sqlite::SqliteStore::open(":memory:").unwrap();
        store.migrate().await.unwrap();
        let (old, _) = OperatorKey::generate("kci <kci@isp.example>", None).unwrap();
        let (new, _) = OperatorKey::generate("kci <kci@isp.example>", None).unwrap();
        let cfg = AuditConfig {
            checkpoint_every: 1,
            checkpoint_interval: crate::model::Span(std::time::Duration::from_secs(1)),
            previous_keys: Vec::new(),
        };
        let t0 = Utc::now();
        let entry = |at| {
            store.audit(
                crate::model::audit::AuditDraft::new("kci", "test.entry", "ok"),
                at,
            )
        };
        entry(t0).await.unwrap();
        checkpoint(&store, &old, &cfg, t0).await.unwrap().unwrap();
        // Retired an hour later; the new key signs from then on.
        let retired = t0 + chrono::Duration::hours(1);
        let t1 = retired + chrono::Duration::minutes(5);
        entry(t1).await.unwrap();
        checkpoint(&store, &new, &cfg, t1).await.unwrap().unwrap();
        let with = |previous: Vec<(String, DateTime<Utc>)>| Signers {
            current: Some(new.public_armored()),
            previous,
        };
        let verify = |s: Signers| {
            let store = &store;
            async move { verify_with(store, &s).await.unwrap().map(|i| i.checkpoints) }
        };
        assert!(verify(with(vec![])).await.is_err(), "the old key unknown");
        assert_eq!(
            verify(with(vec![(old.public_armored(), retired)])).await,
            Ok(2)
        );
        // A checkpoint the old key made after its retirement (its thief)
        // does not count.
        let t2 = t1 + chrono::Duration::minutes(5);
        entry(t2).await.unwrap();
        checkpoint(&store, &old, &cfg, t2).await.unwrap().unwrap();
        let e = verify(with(vec![(old.public_armored(), retired)]))
            .await
            .unwrap_err();
        assert_eq!(e.seq, 3, "{e}");
    }
}
