//! Signatures made by a customer's key, for requests that must come from
//! the holder of the current key ("signed by the current key" proofs):
//! cleartext-signed text (`gpg --clearsign`), inline-signed messages
//! (`gpg --sign`, compressed or not) and detached signatures
//! (`gpg --detach-sign`).
//!
//! Bounded: at most [`MAX_SIGNED_BYTES`] in, at most as much content out
//! (a compressed message that expands further is refused), and Sequoia
//! buffers no more than that while it waits for the signature.

use super::{PgpError, fingerprint_hex, policy_at};
use chrono::{DateTime, Utc};
use openpgp::KeyHandle;
use openpgp::cert::Cert;
use openpgp::parse::Parse;
use openpgp::parse::stream::{
    DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationHelper, VerifierBuilder,
};
use sequoia_openpgp as openpgp;
use std::io::Read;

/// Largest signed request, and largest content it may expand to.
pub const MAX_SIGNED_BYTES: usize = 1024 * 1024;

/// A good signature by the expected key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// What was signed (for a detached signature, the data given).
    pub content: Vec<u8>,
    /// The fingerprint of the (sub)key that signed, hex, upper case.
    pub signing_key: String,
    /// When the signature says it was made.
    pub signed_at: Option<DateTime<Utc>>,
}

struct Helper {
    cert: Cert,
    good: Option<(String, Option<DateTime<Utc>>)>,
}

impl VerificationHelper for Helper {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(vec![self.cert.clone()])
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        for layer in structure {
            match layer {
                MessageLayer::SignatureGroup { results } => {
                    for good in results.into_iter().flatten() {
                        self.good = Some((
                            fingerprint_hex(&good.ka.key().fingerprint()),
                            good.sig
                                .signature_creation_time()
                                .map(DateTime::<Utc>::from),
                        ));
                    }
                }
                MessageLayer::Compression { .. } => {}
                MessageLayer::Encryption { .. } => {
                    return Err(anyhow_like("an encrypted message is not a signed request"));
                }
            }
        }
        if self.good.is_some() {
            Ok(())
        } else {
            Err(anyhow_like("no good signature by the registered key"))
        }
    }
}

fn anyhow_like(text: &str) -> anyhow::Error {
    anyhow::anyhow!("{text}")
}

fn bad(e: impl std::fmt::Display) -> PgpError {
    PgpError::BadSignature(e.to_string())
}

/// Verifies `data` as signed by `signer_armored` (its primary key or a
/// signing subkey valid at `now`). `detached`: the signature, when `data`
/// is the signed content itself; otherwise `data` is a cleartext-signed or
/// inline-signed message, and its content is returned.
pub fn verify_signed(
    data: &[u8],
    detached: Option<&[u8]>,
    signer_armored: &str,
    now: DateTime<Utc>,
) -> Result<Verified, PgpError> {
    if data.len() > MAX_SIGNED_BYTES || detached.is_some_and(|s| s.len() > MAX_SIGNED_BYTES) {
        return Err(bad(format!("more than {MAX_SIGNED_BYTES} bytes")));
    }
    let cert = super::submission::parse_bounded(signer_armored.as_bytes())
        .map_err(|e| bad(format!("signer key: {e}")))?;
    let policy = policy_at(now);
    let t = std::time::SystemTime::from(now);
    let helper = Helper { cert, good: None };
    match detached {
        Some(sig) => {
            let mut v = DetachedVerifierBuilder::from_bytes(sig)
                .map_err(bad)?
                .with_policy(&policy, t, helper)
                .map_err(bad)?;
            v.verify_bytes(data).map_err(bad)?;
            let (signing_key, signed_at) = v
                .into_helper()
                .good
                .ok_or_else(|| bad("no good signature"))?;
            Ok(Verified {
                content: data.to_vec(),
                signing_key,
                signed_at,
            })
        }
        None => {
            let mut v = VerifierBuilder::from_bytes(data)
                .map_err(bad)?
                .buffer_size(MAX_SIGNED_BYTES)
                .with_policy(&policy, t, helper)
                .map_err(bad)?;
            let mut content = Vec::new();
            (&mut v)
                .take(MAX_SIGNED_BYTES as u64 + 1)
                .read_to_end(&mut content)
                .map_err(bad)?;
            if content.len() > MAX_SIGNED_BYTES {
                return Err(bad("the signed content is too large"));
            }
            if !v.message_processed() {
                return Err(bad("the message was not read to its end"));
            }
            let (signing_key, signed_at) = v
                .into_helper()
                .good
                .ok_or_else(|| bad("no good signature"))?;
            Ok(Verified {
                content,
                signing_key,
                signed_at,
            })
        }
    }
}
