//! The operator's own key: Ed25519 for certifying and signing every mail,
//! a Cv25519 subkey so customers (and the submission address) can encrypt
//! to the operator. Made by `kci keys generate`, read from the file
//! `[email] signing_key` names.

use super::{PgpError, fingerprint_hex, policy_at};
use base64::Engine;
use chrono::{DateTime, Utc};
use openpgp::Profile;
use openpgp::cert::prelude::*;
use openpgp::crypto::mpi;
use openpgp::packet::Key;
use openpgp::packet::key::{PublicParts, SecretKeyMaterial, UnspecifiedRole};
use openpgp::parse::Parse;
use openpgp::serialize::{Serialize, SerializeInto};
use openpgp::types::HashAlgorithm;
use openpgp::types::{Curve, Features, KeyFlags, PublicKeyAlgorithm};
use openssl::pkey::{Id, PKey, Private};
use sequoia_openpgp as openpgp;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The operator's secret signing key, ready to sign.
#[derive(Clone)]
pub struct OperatorKey {
    /// Public parts only: what is published and attached.
    public: Cert,
    signer: Ed25519Signer,
    fingerprint: String,
    /// The `Autocrypt:` header for each address of the key's user IDs,
    /// made once: every mail carries one, and making it
    /// (copy, trim and serialise the key, Base64) cost about a fifth of
    /// signing a mail.
    autocrypt: Arc<HashMap<String, String>>,
}

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "OperatorKey({})", self.fingerprint)
    }
}

impl OperatorKey {
    /// Generates a key for `user_id` (`Name <address>`): an Ed25519 primary
    /// key for certification and signing, a Cv25519 subkey for encryption,
    /// OpenPGP v4 (RFC 4880) advertising SEIPDv1 only, so GnuPG 2.2 and
    /// every mail reader can use it. `validity` None: no expiry. Returns the
    /// key and its armored secret form (the file to keep).
    pub fn generate(
        user_id: &str,
        validity: Option<Duration>,
    ) -> Result<(OperatorKey, String), PgpError> {
        Self::generate_protected(user_id, validity, None)
    }

    /// As [`OperatorKey::generate`], the secret form protected by
    /// `passphrase` when one is given.
    pub fn generate_protected(
        user_id: &str,
        validity: Option<Duration>,
        passphrase: Option<&str>,
    ) -> Result<(OperatorKey, String), PgpError> {
        Self::generate_with_revocation(user_id, validity, passphrase)
            .map(|(key, secret, _)| (key, secret))
    }

    /// As [`OperatorKey::generate_protected`], with the key's revocation
    /// certificate: the public key revoked, armored — to keep offline, and
    /// to publish (or `gpg --import`) if the secret key is ever lost or
    /// leaked.
    pub fn generate_with_revocation(
        user_id: &str,
        validity: Option<Duration>,
        passphrase: Option<&str>,
    ) -> Result<(OperatorKey, String, String), PgpError> {
        let (cert, revocation) = CertBuilder::new()
            .set_password(passphrase.map(openpgp::crypto::Password::from))
            .set_profile(Profile::RFC4880)
            .map_err(PgpError::crypto)?
            .set_cipher_suite(CipherSuite::Cv25519)
            .set_features(Features::empty().set_seipdv1())
            .map_err(PgpError::crypto)?
            .set_primary_key_flags(KeyFlags::empty().set_certification().set_signing())
            .set_validity_period(validity)
            .add_userid(user_id)
            .add_subkey(
                KeyFlags::empty()
                    .set_transport_encryption()
                    .set_storage_encryption(),
                None,
                None,
            )
            .generate()
            .map_err(PgpError::crypto)?;
        let tsk = cert.as_tsk().armored().to_vec().map_err(PgpError::crypto)?;
        let tsk = String::from_utf8(tsk).map_err(PgpError::crypto)?;
        let (revoked, _) = cert
            .clone()
            .strip_secret_key_material()
            .insert_packets(revocation)
            .map_err(PgpError::crypto)?;
        let revoked = String::from_utf8(revoked.armored().to_vec().map_err(PgpError::crypto)?)
            .map_err(PgpError::crypto)?;
        Ok((OperatorKey::from_cert(cert, passphrase)?, tsk, revoked))
    }

    /// Reads an armored secret key (a transferable secret key). Refused:
    /// public keys, and keys whose signing key is not a valid Ed25519 key
    /// now. A passphrase-protected key needs its passphrase.
    pub fn from_armored(text: &str) -> Result<OperatorKey, PgpError> {
        Self::from_armored_with(text, None)
    }

    /// As [`OperatorKey::from_armored`], unlocking a protected key with
    /// `passphrase` (kept only as the unlocked key, in memory).
    pub fn from_armored_with(
        text: &str,
        passphrase: Option<&str>,
    ) -> Result<OperatorKey, PgpError> {
        let cert = Cert::from_bytes(text.as_bytes())
            .map_err(|e| PgpError::OperatorKey(format!("not an OpenPGP key ({e})")))?;
        OperatorKey::from_cert(cert, passphrase)
    }

    fn from_cert(cert: Cert, passphrase: Option<&str>) -> Result<OperatorKey, PgpError> {
        let refuse = |why: &str| PgpError::OperatorKey(why.to_string());
        if !cert.is_tsk() {
            return Err(refuse(
                "this is a public key; kci needs the secret key made by `kci keys generate`",
            ));
        }
        let policy = policy_at(Utc::now());
        let vc = cert
            .with_policy(&policy, None)
            .map_err(|e| PgpError::OperatorKey(format!("the key is not valid ({e})")))?;
        vc.alive()
            .map_err(|e| PgpError::OperatorKey(format!("the key has expired ({e})")))?;
        if let openpgp::types::RevocationStatus::Revoked(_) = vc.revocation_status() {
            return Err(refuse("the key is revoked"));
        }
        let ka = vc
            .keys()
            .secret()
            .alive()
            .revoked(false)
            .for_signing()
            .find(|ka| is_ed25519(ka.key().pk_algo(), ka.key().mpis()))
            .ok_or_else(|| refuse("the key has no valid Ed25519 signing key with its secret"))?;
        let key = match (ka.key().has_unencrypted_secret(), passphrase) {
            (true, _) => ka.key().clone(),
            (false, None) => {
                return Err(refuse(
                    "the secret key is passphrase-protected; give its passphrase as \
                     [email] signing_key_passphrase_file (or a systemd credential)",
                ));
            }
            (false, Some(p)) => ka
                .key()
                .clone()
                .decrypt_secret(&openpgp::crypto::Password::from(p))
                .map_err(|_| refuse("the passphrase does not unlock the secret key"))?,
        };
        let signer = Ed25519Signer::new(key.role_into_unspecified())?;
        let fingerprint = fingerprint_hex(&cert.fingerprint());
        let public = cert.strip_secret_key_material();
        let autocrypt = public
            .userids()
            .filter_map(|ua| ua.userid().email().ok().flatten())
            .map(|addr| {
                let header = autocrypt_header(&public, addr);
                (addr.to_string(), header)
            })
            .collect();
        Ok(OperatorKey {
            public,
            signer,
            fingerprint,
            autocrypt: Arc::new(autocrypt),
        })
    }

    /// The primary key's fingerprint, hex, upper case.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The public key, ASCII-armored.
    pub fn public_armored(&self) -> String {
        super::submission::armored(&self.public).unwrap_or_default()
    }

    /// The public key, binary (what a Web Key Directory serves).
    pub fn public_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Serialising a parsed certificate into memory cannot fail.
        let _ = self.public.serialize(&mut out);
        out
    }

    /// The public certificate (for encrypt-to and tests).
    pub fn cert(&self) -> &Cert {
        &self.public
    }

    /// An ASCII-armored detached signature over `data` (a text
    /// signature, as PGP/MIME uses): what signs the audit log's
    /// checkpoints; `crate::pgp::verify_signed` checks it.
    pub fn sign_detached(&self, data: &[u8]) -> Result<String, PgpError> {
        super::mime::detached_signature(self, data, None)
    }

    /// As [`OperatorKey::sign_detached`], the signature made at `at`: a
    /// statement that names its own time (an audit checkpoint) is signed
    /// as of that time, so a check as of it holds however long the signing
    /// waited.
    pub fn sign_detached_at(&self, data: &[u8], at: DateTime<Utc>) -> Result<String, PgpError> {
        super::mime::detached_signature(self, data, Some(at.into()))
    }

    /// The key that signs mail.
    pub(super) fn signer(&self) -> Ed25519Signer {
        self.signer.clone()
    }

    /// The value of an `Autocrypt:` header (Autocrypt Level 1) for mail
    /// from `addr`: `addr=…; prefer-encrypt=mutual; keydata=…`, with a
    /// minimal key (primary key, the user IDs for `addr`, the subkeys, their
    /// self-signatures), folded for a mail header.
    pub fn autocrypt_header(&self, addr: &str) -> String {
        match self.autocrypt.get(addr) {
            Some(made) => made.clone(),
            None => autocrypt_header(&self.public, addr),
        }
    }
}

/// The `Autocrypt:` header value for mail from `addr` with `public`'s key
/// (see [`OperatorKey::autocrypt_header`]).
fn autocrypt_header(public: &Cert, addr: &str) -> String {
    let minimal = public.clone().retain_userids(|ua| {
        ua.userid()
            .email()
            .ok()
            .flatten()
            .is_some_and(|e| e.eq_ignore_ascii_case(addr))
    });
    let bytes = minimal.to_vec().unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut value = format!("addr={addr}; prefer-encrypt=mutual; keydata=");
    for (i, chunk) in b64.as_bytes().chunks(72).enumerate() {
        if i > 0 {
            value.push_str("\r\n ");
        }
        value.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    value
}

/// The operator's Ed25519 signing key as OpenSSL holds it, made once
/// when the key is read. Sequoia's own key pair keeps the secret sealed
/// in its encrypted memory and unseals it (SHA-256 over a 16 KiB pre-key)
/// and hands it to OpenSSL again for every signature: a third of a
/// signed mail's cost (BENCHMARKS.md, stop 31). Whoever reads kci's memory
/// holds the key either way, since kci signs unattended (THREAT-MODEL.md,
/// "Data at rest"); OpenSSL cleanses it when it is freed.
#[derive(Clone)]
pub(super) struct Ed25519Signer {
    public: Key<PublicParts, UnspecifiedRole>,
    secret: PKey<Private>,
}

impl Ed25519Signer {
    fn new(key: Key<openpgp::packet::key::SecretParts, UnspecifiedRole>) -> Result<Self, PgpError> {
        let refuse = || PgpError::OperatorKey("the signing key is not an Ed25519 key".into());
        let SecretKeyMaterial::Unencrypted(secret) = key.secret() else {
            return Err(PgpError::OperatorKey(
                "the secret signing key is still locked".into(),
            ));
        };
        let secret = secret.map(|mpis| {
            let scalar = match mpis {
                mpi::SecretKeyMaterial::EdDSA { scalar } => scalar.value_padded(32),
                mpi::SecretKeyMaterial::Ed25519 { x } => x.clone(),
                _ => return Err(refuse()),
            };
            PKey::private_key_from_raw_bytes(&scalar, Id::ED25519).map_err(PgpError::crypto)
        })?;
        // The secret must belong to the key it claims to: a signature by
        // another key would be refused by every reader.
        let public = match key.mpis() {
            mpi::PublicKey::EdDSA {
                curve: Curve::Ed25519,
                q,
            } => q
                .decode_point(&Curve::Ed25519)
                .map_err(PgpError::crypto)?
                .0
                .to_vec(),
            mpi::PublicKey::Ed25519 { a } => a.to_vec(),
            _ => return Err(refuse()),
        };
        if secret.raw_public_key().map_err(PgpError::crypto)? != public {
            return Err(PgpError::OperatorKey(
                "the secret signing key does not match its public key".into(),
            ));
        }
        Ok(Ed25519Signer {
            public: key.take_secret().0,
            secret,
        })
    }
}

impl openpgp::crypto::Signer for Ed25519Signer {
    fn public(&self) -> &Key<PublicParts, UnspecifiedRole> {
        &self.public
    }

    fn sign(&mut self, _: HashAlgorithm, digest: &[u8]) -> openpgp::Result<mpi::Signature> {
        // Ed25519 signs the digest itself (RFC 9580 §5.2.3.4).
        let mut signer = openssl::sign::Signer::new_without_digest(&self.secret)?;
        let sig = signer.sign_oneshot_to_vec(digest)?;
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| anyhow::anyhow!("an Ed25519 signature is 64 bytes"))?;
        Ok(match self.public.pk_algo() {
            PublicKeyAlgorithm::Ed25519 => mpi::Signature::Ed25519 { s: Box::new(sig) },
            _ => mpi::Signature::EdDSA {
                r: mpi::MPI::new(&sig[..32]),
                s: mpi::MPI::new(&sig[32..]),
            },
        })
    }
}

fn is_ed25519(algo: PublicKeyAlgorithm, mpis: &mpi::PublicKey) -> bool {
    match (algo, mpis) {
        (PublicKeyAlgorithm::Ed25519, _) => true,
        (PublicKeyAlgorithm::EdDSA, mpi::PublicKey::EdDSA { curve, .. }) => {
            *curve == Curve::Ed25519
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_and_refuse_public_keys() {
        let (key, tsk) = OperatorKey::generate("kci <kci@example.org>", None).unwrap();
        assert!(tsk.contains("PRIVATE KEY BLOCK"));
        let again = OperatorKey::from_armored(&tsk).unwrap();
        assert_eq!(again.fingerprint(), key.fingerprint());
        assert_eq!(key.fingerprint().len(), 40);
        assert!(!format!("{key:?}").contains("PRIVATE"));
        let e = OperatorKey::from_armored(&key.public_armored()).unwrap_err();
        assert!(e.to_string().contains("public key"), "{e}");
        assert!(OperatorKey::from_armored("nonsense").is_err());
        // Features: SEIPDv1 only.
        let p = policy_at(Utc::now());
        let f = key
            .cert()
            .with_policy(&p, None)
            .unwrap()
            .features()
            .unwrap();
        assert!(f.supports_seipdv1() && !f.supports_seipdv2());
    }

    #[test]
    fn v4_and_v6_ed25519_keys_sign_what_sequoia_verifies() {
        for profile in [Profile::RFC4880, Profile::RFC9580] {
            let (cert, _) = CertBuilder::new()
                .set_profile(profile)
                .unwrap()
                .set_cipher_suite(CipherSuite::Cv25519)
                .add_userid("kci <kci@example.org>")
                .add_signing_subkey()
                .generate()
                .unwrap();
            let tsk = String::from_utf8(cert.as_tsk().armored().to_vec().unwrap()).unwrap();
            let key = OperatorKey::from_armored(&tsk).unwrap();
            let data = b"checkpoint 7\r\n";
            let sig = key.sign_detached(data).unwrap();
            let v = super::super::verify_signed(
                data,
                Some(sig.as_bytes()),
                &key.public_armored(),
                Utc::now(),
            )
            .unwrap_or_else(|e| panic!("{profile:?}: {e}"));
            assert_eq!(v.content, data, "{profile:?}");
            let subkey = cert.keys().subkeys().next().unwrap().key().fingerprint();
            assert_eq!(v.signing_key, subkey.to_hex(), "{profile:?}");
            assert!(
                super::super::verify_signed(
                    b"checkpoint 8\r\n",
                    Some(sig.as_bytes()),
                    &key.public_armored(),
                    Utc::now()
                )
                .is_err()
            );
        }
    }

    /// A passphrase-protected key (the file alone is useless to a thief)
    /// is unlocked with its passphrase, refused without it or with another,
    /// and signs like any other once unlocked.
    #[test]
    fn a_protected_key_needs_its_passphrase() {
        let (key, tsk) =
            OperatorKey::generate_protected("kci <kci@example.org>", None, Some("correct horse"))
                .unwrap();
        let e = OperatorKey::from_armored(&tsk).unwrap_err().to_string();
        assert!(e.contains("passphrase-protected"), "{e}");
        let e = OperatorKey::from_armored_with(&tsk, Some("wrong horse"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not unlock"), "{e}");
        let unlocked = OperatorKey::from_armored_with(&tsk, Some("correct horse")).unwrap();
        assert_eq!(unlocked.fingerprint(), key.fingerprint());
        assert!(
            unlocked
                .sign_detached(b"hello")
                .unwrap()
                .contains("PGP SIGNATURE")
        );
        // An unprotected key ignores a passphrase.
        let (_, plain) = OperatorKey::generate("kci <kci@example.org>", None).unwrap();
        assert!(OperatorKey::from_armored_with(&plain, Some("x")).is_ok());
    }

    #[test]
    fn autocrypt_header_carries_a_minimal_key() {
        let (key, _) = OperatorKey::generate("kci <kci@example.org>", None).unwrap();
        let h = key.autocrypt_header("kci@example.org");
        assert!(h.starts_with("addr=kci@example.org; prefer-encrypt=mutual; keydata="));
        let data: String = h
            .split("keydata=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        let cert = Cert::from_bytes(&bytes).unwrap();
        assert_eq!(cert.fingerprint().to_hex(), key.fingerprint());
        assert!(!cert.is_tsk());
        assert_eq!(cert.userids().count(), 1);
    }
}
