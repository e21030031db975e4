//! Sealing a credential kci must keep in its database (X's refresh token,
//! which X rotates on every use, so it cannot live only in the config):
//! ChaCha20-Poly1305 with a key derived (HKDF-SHA256) from the code key,
//! which is kept outside the database (`[store] code_key`, or `code.key`
//! beside the SQLite file) and is the same on every node. A copy of the
//! database alone opens nothing; a sealed value moved to another name or
//! version does not open either (both are bound in as associated data).
//!
//! Sealed text: `v1.` and the base64url (no padding) of the 12-byte random
//! nonce followed by the ciphertext and its 16-byte tag.

use super::codes::CodeKey;
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

#[cfg(test)]
mod tests {
    use super::*;

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
