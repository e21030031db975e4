//! A customer's key, checked once and kept: the keys mail to it is
//! encrypted to, chosen by the same rules as on submission, and how long
//! that choice holds.
//!
//! Parsing an armored key and checking it (self-signatures, expiry,
//! revocation, the encryption subkeys under the policy) costs about as much
//! as signing and encrypting a mail (BENCHMARKS.md "Secure mail"), and a
//! fault notice to thousands of customers would pay it again for every
//! mail to the same key. [`RecipientKeys`] remembers the outcome per key
//! text: a key that changes in any way (a new subkey, a revocation, a
//! refreshed expiry) is different text and is checked afresh; an entry is
//! used only until the first moment its choice could change (a key or
//! binding signature expiring) and at most [`RECHECK`] after it was made,
//! so a policy that changes with the date (SHA-1's cut-off) is applied
//! within that time too. A refused key is never remembered: it is refused
//! again, with its reason, every time.

use super::{PgpError, policy_at, submission};
use chrono::{DateTime, Utc};
use openpgp::KeyHandle;
use openpgp::cert::Preferences;
use openpgp::packet::Key;
use openpgp::packet::key::{PublicParts, UnspecifiedRole};
use openpgp::serialize::stream::Recipient;
use openpgp::types::Features;
use sequoia_openpgp as openpgp;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The longest a checked key is used without checking it again.
pub const RECHECK: chrono::Duration = chrono::Duration::hours(1);

/// How many checked keys one cache holds (a few KB each). Beyond it the
/// stale ones go, then the oldest half.
pub const CAPACITY: usize = 8192;

/// A recipient's key, checked at one time: the keys to encrypt to.
#[derive(Debug)]
pub struct RecipientKey {
    keys: Vec<(Features, KeyHandle, Key<PublicParts, UnspecifiedRole>)>,
    /// When it was checked (in judged time, [`submission::judged_at`]).
    checked: DateTime<Utc>,
    /// The first moment the choice could change, in judged time.
    fresh_until: DateTime<Utc>,
}

impl RecipientKey {
    /// Parses and checks `armored` at `now`: refused ([`PgpError::Recipient`])
    /// when it may not be encrypted to.
    pub fn check(armored: &str, now: DateTime<Utc>) -> Result<RecipientKey, PgpError> {
        let cert = submission::parse_bounded(armored.as_bytes())?;
        submission::assess(&cert, None, now)?;
        let judged = submission::judged_at(now);
        let policy = policy_at(judged);
        let t = SystemTime::from(judged);
        let vc = cert
            .with_policy(&policy, t)
            .map_err(|e| PgpError::Recipient(super::KeyRefusal::Invalid(e.to_string())))?;
        let features = vc.features().unwrap_or_else(Features::empty);
        let select = |storage: bool| {
            let keys = vc.keys().supported().alive().revoked(false);
            if storage {
                keys.for_storage_encryption().collect::<Vec<_>>()
            } else {
                keys.for_transport_encryption().collect::<Vec<_>>()
            }
        };
        let mut chosen = select(false);
        if chosen.is_empty() {
            // A key flagged for storage encryption only still serves.
            chosen = select(true);
        }
        // Each chosen key's own expiry and its binding's, and the
        // certificate's: the first of them ends the choice.
        let primary = vc.primary_key();
        let ends = [
            primary.key_expiration_time(),
            primary.binding_signature().signature_expiration_time(),
        ]
        .into_iter()
        .chain(chosen.iter().flat_map(|ka| {
            [
                ka.key_expiration_time(),
                ka.binding_signature().signature_expiration_time(),
            ]
        }))
        .flatten()
        .map(DateTime::<Utc>::from)
        .filter(|end| *end > judged);
        let fresh_until = ends.fold(judged + RECHECK, |a, b| a.min(b));
        let keys = chosen
            .iter()
            .map(|ka| {
                // As Sequoia names a recipient: by fingerprint where the
                // certificate supports SEIPDv2, else by key ID.
                let handle: KeyHandle = if features.supports_seipdv2() {
                    ka.key().fingerprint().into()
                } else {
                    ka.key().keyid().into()
                };
                let key = ka.key().clone().role_into_unspecified();
                (features.clone(), handle, key)
            })
            .collect();
        Ok(RecipientKey {
            keys,
            checked: judged,
            fresh_until,
        })
    }

    /// Whether the check still holds at `now`.
    pub fn fresh_at(&self, now: DateTime<Utc>) -> bool {
        let judged = submission::judged_at(now);
        // A clock that went back before the check may be before a key's
        // creation: check again.
        self.checked <= judged && judged < self.fresh_until
    }

    /// Whether every key asks for SEIPDv2 (AEAD), which Sequoia's
    /// encryptor then writes.
    pub(super) fn wants_seipdv2(&self) -> bool {
        !self.keys.is_empty() && self.keys.iter().all(|(f, _, _)| f.supports_seipdv2())
    }

    /// The keys to encrypt to, each with how a packet names it.
    pub(super) fn keys(
        &self,
    ) -> impl Iterator<Item = (&KeyHandle, &Key<PublicParts, UnspecifiedRole>)> {
        self.keys.iter().map(|(_, handle, key)| (handle, key))
    }

    /// The recipients for Sequoia's encryptor.
    pub(super) fn recipients(&self) -> Vec<Recipient<'_>> {
        self.keys
            .iter()
            .map(|(features, handle, key)| Recipient::new(features.clone(), handle.clone(), key))
            .collect()
    }
}

/// Checked keys by the SHA-256 of their armored text, shared by a node's
/// mail deliveries.
#[derive(Debug, Default)]
pub struct RecipientKeys {
    entries: Mutex<HashMap<[u8; 32], Arc<RecipientKey>>>,
}

impl RecipientKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// The checked key for `armored` at `now`: remembered while fresh,
    /// else checked (and remembered when it passes).
    pub fn get(&self, armored: &str, now: DateTime<Utc>) -> Result<Arc<RecipientKey>, PgpError> {
        let id: [u8; 32] = Sha256::digest(armored.as_bytes()).into();
        if let Some(hit) = self.lock().get(&id).filter(|k| k.fresh_at(now)) {
            return Ok(hit.clone());
        }
        let checked = Arc::new(RecipientKey::check(armored, now)?);
        let mut entries = self.lock();
        if entries.len() >= CAPACITY {
            entries.retain(|_, k| k.fresh_at(now));
        }
        if entries.len() >= CAPACITY {
            let mut ages: Vec<DateTime<Utc>> = entries.values().map(|k| k.checked).collect();
            ages.sort_unstable();
            let median = ages[ages.len() / 2];
            entries.retain(|_, k| k.checked > median);
        }
        entries.insert(id, checked.clone());
        Ok(checked)
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<RecipientKey>>> {
        // A panic elsewhere while holding the lock leaves a map that is
        // still whole: keep using it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openpgp::cert::CertBuilder;
    use openpgp::serialize::SerializeInto;

    fn armored(cert: &openpgp::Cert) -> String {
        String::from_utf8(cert.armored().to_vec().unwrap()).unwrap()
    }

    fn key(validity: Option<std::time::Duration>) -> (openpgp::Cert, String) {
        let (cert, _) = CertBuilder::general_purpose(Some("dana@example.org"))
            .set_creation_time(SystemTime::now() - std::time::Duration::from_secs(3600))
            .set_validity_period(validity)
            .generate()
            .unwrap();
        let text = armored(&cert);
        (cert, text)
    }

    #[test]
    fn a_key_is_checked_once_and_then_remembered() {
        let (_, text) = key(None);
        let cache = RecipientKeys::new();
        let now = Utc::now();
        let first = cache.get(&text, now).unwrap();
        let again = cache
            .get(&text, now + chrono::Duration::minutes(5))
            .unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second mail reuses the check"
        );
        assert_eq!(first.recipients().len(), 1);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_remembered_check_is_made_again_after_its_time() {
        let (_, text) = key(None);
        let cache = RecipientKeys::new();
        let now = Utc::now();
        let first = cache.get(&text, now).unwrap();
        let later = cache
            .get(&text, now + RECHECK + chrono::Duration::seconds(1))
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &later));
        // A clock gone back is no reason to trust an old check.
        let earlier = cache
            .get(&text, now - chrono::Duration::minutes(10))
            .unwrap();
        assert!(!Arc::ptr_eq(&later, &earlier));
    }

    #[test]
    fn an_expiring_key_is_used_until_it_expires_and_then_refused() {
        // Made an hour ago, valid for two: it expires in about an hour.
        let (_, text) = key(Some(std::time::Duration::from_secs(2 * 3600)));
        let cache = RecipientKeys::new();
        let now = Utc::now();
        let k = cache.get(&text, now).unwrap();
        assert!(k.fresh_until <= submission::judged_at(now) + chrono::Duration::hours(1));
        let after = now + chrono::Duration::hours(2);
        assert!(!k.fresh_at(after), "never past the expiry");
        let e = cache.get(&text, after).unwrap_err();
        assert!(
            matches!(e, PgpError::Recipient(super::super::KeyRefusal::Expired(_))),
            "{e}"
        );
    }

    #[test]
    fn a_changed_key_is_checked_afresh_and_a_revoked_one_refused() {
        use openpgp::types::ReasonForRevocation;
        let (cert, text) = key(None);
        let cache = RecipientKeys::new();
        let now = Utc::now();
        cache.get(&text, now).unwrap();
        // The holder revokes the key: the new text is refused at once,
        // whatever was remembered of the old one.
        let mut signer = cert
            .primary_key()
            .key()
            .clone()
            .parts_into_secret()
            .unwrap()
            .into_keypair()
            .unwrap();
        let rev = cert
            .revoke(&mut signer, ReasonForRevocation::KeyCompromised, b"lost")
            .unwrap();
        let (revoked, _) = cert.insert_packets(rev).unwrap();
        let revoked = armored(&revoked.strip_secret_key_material());
        let e = cache.get(&revoked, now).unwrap_err();
        assert!(
            matches!(e, PgpError::Recipient(super::super::KeyRefusal::Revoked(_))),
            "{e}"
        );
        assert_eq!(cache.len(), 1, "a refusal is not remembered");
    }

    #[test]
    fn a_full_cache_makes_room() {
        let (_, text) = key(None);
        let cache = RecipientKeys::new();
        let now = Utc::now();
        let k = Arc::new(RecipientKey::check(&text, now).unwrap());
        {
            let mut entries = cache.lock();
            for i in 0..CAPACITY {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(i as u64).to_le_bytes());
                entries.insert(id, k.clone());
            }
        }
        cache.get(&text, now).unwrap();
        assert!(cache.len() <= CAPACITY);
    }
}
