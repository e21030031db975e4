//! Sealing a secret kci must keep in its database and use again: X's
//! refresh token (X rotates it on every use, so it cannot live only in the
//! config), a webhook destination's signing secrets, and a pending
//! notice's one-time secret (a code, a key link, a T-word) until it is
//! sent ([`AtRest`]). ChaCha20-Poly1305 with a key derived (HKDF-SHA256) from the code key,
//! which is kept outside the database (`[store] code_key`, or `code.key`
//! beside the SQLite file) and is the same on every node. A copy of the
//! database alone opens nothing; a sealed value moved to another name or
//! version does not open either (both are bound in as associated data).
//!
//! Sealed text: `v1.` and the base64url (no padding) of the 12-byte random
//! nonce followed by the ciphertext and its 16-byte tag.

use super::codes::CodeKey;
use crate::model::{Notification, Secret};
use crate::store::SecretPlace;
use base64::Engine;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};

/// The prefix of every sealed value (the format's version).
const PREFIX: &str = "v1.";
/// The longest plaintext sealed (a refresh token is far shorter).
pub const MAX_PLAIN: usize = 4096;

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SealError {
    /// Not something [`Sealer::seal`] wrote.
    #[error("not a sealed value")]
    Malformed,
    /// Sealed with another key (the code key changed), for another name or
    /// version, or altered.
    #[error("does not open with this code key (was the code key changed, or the row altered?)")]
    Wrong,
    #[error("longer than {MAX_PLAIN} bytes")]
    TooLong,
}

/// Seals and opens values for one purpose.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)") // never the key
    }
}

impl Sealer {
    /// The key for `purpose`, derived from the code key: each purpose its
    /// own key, none of them the code key itself.
    pub fn new(code_key: &CodeKey, purpose: &str) -> Sealer {
        let prk = Salt::new(HKDF_SHA256, b"kci seal").extract(code_key.bytes());
        let info = [purpose.as_bytes()];
        let Ok(okm) = prk.expand(&info, &CHACHA20_POLY1305) else {
            unreachable!("HKDF-SHA256 gives 32 bytes for a ChaCha20-Poly1305 key")
        };
        Sealer {
            key: LessSafeKey::new(UnboundKey::from(okm)),
        }
    }

    /// `plain` sealed, bound to `context` (say, the row's name and version).
    pub fn seal(&self, plain: &str, context: &str) -> Result<String, SealError> {
        use rand::TryRngCore;
        if plain.len() > MAX_PLAIN {
            return Err(SealError::TooLong);
        }
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut nonce)
            .unwrap_or_else(|e| panic!("the OS random generator failed: {e}"));
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::TooLong)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// The value `sealed` holds, if it was sealed with this key for `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<String, SealError> {
        let body = sealed.strip_prefix(PREFIX).ok_or(SealError::Malformed)?;
        if body.len() > (MAX_PLAIN + NONCE_LEN + 16) * 4 / 3 + 4 {
            return Err(SealError::TooLong);
        }
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SealError::Malformed)?;
        if raw.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Malformed);
        }
        let mut data = raw.split_off(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = raw.try_into().map_err(|_| SealError::Malformed)?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Wrong)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Malformed)
    }
}

/// Whether `value` is in the sealed format (rather than a clear value an
/// earlier version stored).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(PREFIX)
}

/// The secrets kci keeps in its tables to use again, sealed: a copy of the
/// database (a backup, a replica, a read through an injection) shows
/// neither a pending notice's code or link nor a webhook's signing secret.
/// Each is bound to its row: a notice's to the notice's id, a webhook
/// secret to its destination's id (the current and the previous one both).
pub struct AtRest {
    notices: Sealer,
    webhooks: Sealer,
}

impl std::fmt::Debug for AtRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AtRest(..)")
    }
}

impl AtRest {
    pub fn new(code_key: &CodeKey) -> AtRest {
        AtRest {
            notices: Sealer::new(code_key, "notice secret"),
            webhooks: Sealer::new(code_key, "webhook signing secret"),
        }
    }

    /// `n` carrying the one-time `secret` its texts reveal at
    /// [`crate::model::SECRET_MARK`], sealed to its id: the one way a
    /// secret enters a notice. One that cannot be sealed (longer than
    /// [`MAX_PLAIN`]: none kci makes) is left out, so the notice is
    /// withheld rather than kept in clear.
    pub fn with_secret(&self, mut n: Notification, secret: &str) -> Notification {
        n.secret = self.notices.seal(secret, &n.id).ok().map(Secret::new);
        n
    }

    /// The one-time secret of notice `n`, opened. A clear value (written by
    /// an earlier version, before [`seal_clear`] ran) is taken as it is.
    pub fn open_notice(&self, n: &Notification) -> Result<Option<Secret<String>>, SealError> {
        match &n.secret {
            None => Ok(None),
            Some(s) if !is_sealed(s.expose()) => Ok(Some(s.clone())),
            Some(s) => self
                .notices
                .open(s.expose(), &n.id)
                .map(|p| Some(Secret::new(p))),
        }
    }

    /// A webhook signing secret of `destination`, sealed to it.
    pub fn seal_webhook(&self, destination: &str, secret: &str) -> Result<String, SealError> {
        self.webhooks.seal(secret, destination)
    }

    /// A webhook signing secret of `destination` as stored, opened (a clear
    /// one from an earlier version as it is).
    pub fn open_webhook(&self, destination: &str, stored: &str) -> Result<String, SealError> {
        if is_sealed(stored) {
            self.webhooks.open(stored, destination)
        } else {
            Ok(stored.to_string())
        }
    }

    /// `value` of `place` sealed, for [`seal_clear`].
    fn seal_found(&self, place: SecretPlace, id: &str, value: &str) -> Result<String, SealError> {
        match place {
            SecretPlace::Notice => self.notices.seal(value, id),
            SecretPlace::Webhook | SecretPlace::WebhookPrevious => self.webhooks.seal(value, id),
        }
    }
}

/// Seals what an earlier version kept in clear (see [`AtRest`]); each value
/// is replaced only if it is still the one read. How many were sealed.
pub async fn seal_clear(
    store: &dyn crate::store::Store,
    at_rest: &AtRest,
) -> crate::store::Result<usize> {
    let mut sealed = 0;
    for found in store.clear_secrets().await? {
        let value = found.value.expose();
        let new = match at_rest.seal_found(found.place, &found.id, value) {
            Ok(new) => new,
            Err(e) => {
                // Left as it is (longer than anything kci makes): said.
                tracing::warn!(place = ?found.place, id = %found.id, error = %e, "a secret kept in clear could not be sealed");
                continue;
            }
        };
        if store
            .replace_secret(found.place, &found.id, value, &new)
            .await?
        {
            sealed += 1;
        }
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(id: &str) -> Notification {
        let dest = crate::model::Destination {
            id: "d".into(),
            contact: "c".into(),
            uri: "ntfy:alerts".parse().unwrap(),
            prefs: Default::default(),
            verified: true,
            unhealthy_since: None,
        };
        let message = crate::model::Message {
            short: "code {kci:secret}".into(),
            subject: String::new(),
            body: String::new(),
            encrypt_to: None,
        };
        let now = chrono::Utc::now();
        let priority = crate::model::Priority::High;
        let mut n = Notification::own("A1", &dest, "kci.verify", priority, message, now, None);
        n.id = id.into();
        n
    }

    #[test]
    fn secrets_at_rest_open_only_for_their_own_row() {
        let key = CodeKey::random();
        let at_rest = AtRest::new(&key);
        // As an earlier version stored it: in clear.
        let n = Notification {
            secret: Some(Secret::new("424242".into())),
            ..notice("n1")
        };
        let sealed = at_rest.with_secret(notice("n1"), "424242");
        let stored = sealed.secret.as_ref().unwrap().expose().to_string();
        assert!(is_sealed(&stored) && !stored.contains("424242"));
        let opened = at_rest.open_notice(&sealed).unwrap().unwrap();
        assert_eq!(opened.expose(), "424242");
        // Moved to another notice, or opened with another code key: no.
        let moved = Notification {
            id: "n2".into(),
            ..sealed.clone()
        };
        assert_eq!(at_rest.open_notice(&moved).err(), Some(SealError::Wrong));
        let other = AtRest::new(&CodeKey::random());
        assert_eq!(other.open_notice(&sealed).err(), Some(SealError::Wrong));
        // A notice without a secret, and one an earlier version stored.
        assert!(at_rest.open_notice(&notice("n3")).unwrap().is_none());
        assert_eq!(at_rest.open_notice(&n).unwrap().unwrap().expose(), "424242");

        let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let stored = at_rest.seal_webhook("d1", whsec).unwrap();
        assert!(is_sealed(&stored) && !stored.contains("MfKQ9r8G"));
        assert_eq!(at_rest.open_webhook("d1", &stored).unwrap(), whsec);
        assert_eq!(at_rest.open_webhook("d2", &stored), Err(SealError::Wrong));
        assert_eq!(at_rest.open_webhook("d1", whsec).unwrap(), whsec);
        // A webhook secret does not open as a notice's, nor the reverse.
        let as_notice = Notification {
            id: "d1".into(),
            secret: Some(Secret::new(stored)),
            ..notice("d1")
        };
        assert_eq!(
            at_rest.open_notice(&as_notice).err(),
            Some(SealError::Wrong)
        );
        assert_eq!(format!("{at_rest:?}"), "AtRest(..)");
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_purpose_and_context() {
        let key = CodeKey::random();
        let sealer = Sealer::new(&key, "x.refresh_token");
        let sealed = sealer.seal("bWFkZS11cC1yZWZyZXNoLXRva2Vu", "x#1").unwrap();
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("bWFkZS11cC1yZWZyZXNoLXRva2Vu"));
        // Sealed twice, never the same text (a fresh nonce each time).
        assert_ne!(
            sealed,
            sealer.seal("bWFkZS11cC1yZWZyZXNoLXRva2Vu", "x#1").unwrap()
        );
        // The same code key read again (another node) opens it.
        let again = Sealer::new(
            &CodeKey::from_hex(&key.to_hex()).unwrap(),
            "x.refresh_token",
        );
        assert_eq!(
            again.open(&sealed, "x#1").unwrap(),
            "bWFkZS11cC1yZWZyZXNoLXRva2Vu"
        );

        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let cases: [(&Sealer, &str, &str, SealError); 6] = [
            (
                &Sealer::new(&CodeKey::random(), "x.refresh_token"),
                &sealed,
                "x#1",
                SealError::Wrong,
            ),
            (
                &Sealer::new(&key, "other purpose"),
                &sealed,
                "x#1",
                SealError::Wrong,
            ),
            (&sealer, &sealed, "x#2", SealError::Wrong),
            (&sealer, &flipped, "x#1", SealError::Wrong),
            (&sealer, "v1.AAAA", "x#1", SealError::Malformed),
            (
                &sealer,
                "bWFkZS11cC1yZWZyZXNoLXRva2Vu",
                "x#1",
                SealError::Malformed,
            ),
        ];
        for (i, (s, text, context, want)) in cases.into_iter().enumerate() {
            assert_eq!(s.open(text, context), Err(want), "case {i}");
        }
        assert_eq!(
            sealer.seal(&"a".repeat(MAX_PLAIN + 1), "x#1"),
            Err(SealError::TooLong)
        );
        assert_eq!(format!("{sealer:?}"), "Sealer(..)");
    }
}
