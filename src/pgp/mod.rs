//! OpenPGP for secure mail (DESIGN.md §6, issue 5): the operator's signing
//! key, the checks a customer's key passes before kci encrypts to it, PGP/MIME
//! (RFC 3156) signed and signed-then-encrypted mail, and the Web Key Directory
//! that publishes the operator's key. The email channel calls into it when
//! `[email] signing_key` is set; the key registry checks submissions with
//! [`check_submission`] and re-checks at send time with
//! [`encryption_key_valid`].
//!
//! # Backend
//!
//! Sequoia (`sequoia-openpgp` 2.4) with its OpenSSL backend
//! (`crypto-openssl`) instead of the default nettle. Both are production
//! backends and both bind their C library through bindgen, so either needs
//! libclang at build time (Debian `libclang-dev`, installed by
//! `scripts/deps`). OpenSSL was chosen because: the library is already on
//! every Debian host and is the one the distribution patches first; its
//! X25519, Ed25519 and RSA code paths are assembly-optimised and
//! constant-time, which is where kci's time per mail goes (one Ed25519
//! signature, one X25519 or RSA-3072 key encapsulation, see BENCHMARKS.md
//! "Secure mail"); and it keeps nettle and GMP out of the build. Release
//! figures for this backend against GnuPG are in BENCHMARKS.md; nettle was
//! not measured side by side (one release build per change on these two
//! shared cores).
//!
//! Two steps of every mail go to OpenSSL (the `openssl` crate) directly,
//! because Sequoia's backend pays about twice the primitive's cost there:
//! the operator's Ed25519 signature (`operator::Ed25519Signer`, the key
//! held by OpenSSL rather than unsealed and imported again per mail) and
//! the key agreement with a Cv25519 recipient ([`cv25519`], two scalar
//! multiplications instead of three). The packets, the key wrap and
//! everything else stay Sequoia's.
//!
//! # Policy
//!
//! Every check uses [`StandardPolicy`] at the caller's `now`. It rejects
//! SHA-1 in self-signatures from February 2023 on, and kci follows it:
//! a key whose user ID or subkey is bound only by SHA-1 self-signatures is
//! **refused**, with a reason that says how to fix it (see
//! [`KeyRefusal::Sha1SelfSignature`]). Accepting it with a warning would
//! need a policy weaker than Sequoia's standard, for keys that GnuPG has
//! not produced since 2.1 (2014), and would leave the door open to the
//! chosen-prefix collisions (SHA-mbles, 2020) that forge exactly such
//! bindings; re-signing is one gpg command for the customer.

mod cv25519;
mod mime;
mod operator;
mod recipient;
mod submission;
mod verify;
pub mod wkd;

#[cfg(test)]
mod gpg_tests;
#[doc(hidden)]
pub mod testkit;

pub use mime::{
    MailHeaders, NEUTRAL_SUBJECT, encrypted_mail, encrypted_mail_to, plain_headers,
    plain_text_part, signed_mail,
};
pub use operator::OperatorKey;
pub use recipient::{RecipientKey, RecipientKeys};
pub use submission::{
    CleanKey, KeyRefusal, MAX_KEY_BYTES, MAX_PACKETS, MAX_RSA_BITS, MAX_SIGNATURES, MAX_SUBKEYS,
    MAX_USER_IDS, check_submission, encryption_key_valid, merge_public,
};
pub use verify::{MAX_SIGNED_BYTES, Verified, verify_signed};

use chrono::{DateTime, Utc};
use sequoia_openpgp::policy::StandardPolicy;

/// An operation on kci's own keys or mail failed (not the customer's key:
/// that is a [`KeyRefusal`]).
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    /// The operator key is unusable; the text says why and what to do.
    #[error("{0}")]
    OperatorKey(String),
    /// The recipient's key may not be encrypted to (any more).
    #[error("recipient key: {0}")]
    Recipient(#[from] KeyRefusal),
    /// A signature did not verify; the text says why.
    #[error("signature: {0}")]
    BadSignature(String),
    /// Sequoia failed while signing, encrypting or serialising.
    #[error("OpenPGP: {0}")]
    Crypto(String),
}

impl PgpError {
    fn crypto(e: impl std::fmt::Display) -> Self {
        PgpError::Crypto(e.to_string())
    }
}

/// The policy every check uses, at `now`.
fn policy_at(now: DateTime<Utc>) -> StandardPolicy<'static> {
    StandardPolicy::at(std::time::SystemTime::from(now))
}

/// Hex, upper case, no spaces: how kci writes fingerprints everywhere.
fn fingerprint_hex(fp: &sequoia_openpgp::Fingerprint) -> String {
    fp.to_hex()
}
