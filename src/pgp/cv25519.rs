//! The session key of a mail, encrypted to a customer's Curve25519 key
//! (OpenPGP's ECDH over Cv25519, RFC 6637 as RFC 9580 §11.5 keeps it for
//! version 4 keys) with the two X25519 scalar multiplications it takes.
//!
//! Sequoia's OpenSSL backend makes three: it generates the ephemeral key,
//! exports its secret and imports it again to derive the shared point,
//! and OpenSSL derives the public key once more on that import. With
//! OpenSSL's own handle on the ephemeral key the import goes, and with it
//! a third of the cost of a signed and encrypted mail's key agreement
//! (BENCHMARKS.md, stop 31). What follows the shared secret is Sequoia's
//! where it is public ([`aes_key_wrap`], the packet, its serialisation);
//! only the key derivation's few bytes (RFC 6637 §7 and §8) are written
//! out here, as RFC 9580 §11.5 gives them, and the tests check every
//! byte of it by decrypting with Sequoia and with GnuPG.

use openpgp::crypto::SessionKey;
use openpgp::crypto::ecdh::aes_key_wrap;
use openpgp::crypto::mem::Protected;
use openpgp::crypto::mpi::{self, MPI};
use openpgp::packet::key::{PublicParts, UnspecifiedRole};
use openpgp::packet::pkesk::PKESK3;
use openpgp::packet::{Key, PKESK};
use openpgp::types::{Curve, PublicKeyAlgorithm, SymmetricAlgorithm};
use openssl::derive::Deriver;
use openssl::pkey::{Id, PKey};
use sequoia_openpgp as openpgp;

/// The padded plain text is always this long, whatever the session key's
/// size (RFC 6637 §8: it hides that size).
const PADDED: usize = 40;

/// A version 3 PKESK packet that gives `session_key` (for `sym`) to
/// `key`, where that is a Cv25519 ECDH key; `None` for any other key,
/// which Sequoia's own `PKESK3::for_recipient` serves.
pub(super) fn pkesk3(
    sym: SymmetricAlgorithm,
    session_key: &SessionKey,
    key: &Key<PublicParts, UnspecifiedRole>,
) -> openpgp::Result<Option<PKESK>> {
    let mpi::PublicKey::ECDH {
        curve: Curve::Cv25519,
        q,
        hash,
        sym: kek,
    } = key.mpis()
    else {
        return Ok(None);
    };
    if key.pk_algo() != PublicKeyAlgorithm::ECDH || key.version() != 4 {
        return Ok(None);
    }
    let recipient = q.decode_point(&Curve::Cv25519)?.0;

    // The ephemeral key pair (v, V = vG) and the shared point S = vR. A
    // recipient point of small order gives S = 0, which OpenSSL refuses.
    let ephemeral = PKey::generate_x25519()?;
    let public = ephemeral.raw_public_key()?;
    let peer = PKey::public_key_from_raw_bytes(recipient, Id::X25519)?;
    let mut deriver = Deriver::new(&ephemeral)?;
    deriver.set_peer(&peer)?;
    let shared: Protected = deriver.derive_to_vec()?.into();

    // m = symmetric algorithm || session key || checksum || PKCS#5 padding.
    let mut m: Vec<u8> = Vec::with_capacity(PADDED);
    m.push(sym.into());
    m.extend_from_slice(session_key);
    let checksum = session_key
        .iter()
        .fold(0u16, |sum, b| sum.wrapping_add(u16::from(*b)));
    m.extend_from_slice(&checksum.to_be_bytes());
    let pad = PADDED
        .checked_sub(m.len())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            openpgp::Error::InvalidArgument(format!("a {}-byte session key", session_key.len()))
        })?;
    m.resize(PADDED, pad as u8);
    let m: Protected = m.into();

    // The wrapping key: Hash(00 00 00 01 || S || Param), its first bytes.
    let mut param = Vec::with_capacity(64);
    let oid = Curve::Cv25519.oid();
    param.push(oid.len() as u8);
    param.extend_from_slice(oid);
    param.push(PublicKeyAlgorithm::ECDH.into());
    param.extend_from_slice(&[3, 1, (*hash).into(), (*kek).into()]);
    param.extend_from_slice(b"Anonymous Sender    ");
    param.extend_from_slice(key.fingerprint().as_bytes());
    let mut digest = hash.context()?.for_digest();
    digest.update(&[0, 0, 0, 1]);
    digest.update(&shared);
    digest.update(&param);
    let mut z: Protected = vec![0; kek.key_size()?].into();
    digest.digest(&mut z)?;

    let wrapped = aes_key_wrap(*kek, &z, &m)?;
    let esk = mpi::Ciphertext::ECDH {
        e: MPI::new_compressed_point(&public),
        key: wrapped.into_boxed_slice(),
    };
    Ok(Some(
        PKESK3::new(Some(key.keyid()), PublicKeyAlgorithm::ECDH, esk)?.into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openpgp::cert::{CertBuilder, CipherSuite};
    use openpgp::policy::StandardPolicy;

    fn keys(suite: CipherSuite) -> openpgp::Cert {
        CertBuilder::general_purpose(Some("Dave <dave@example.org>"))
            .set_cipher_suite(suite)
            .generate()
            .unwrap()
            .0
    }

    /// The session key back, as the recipient's own software reads it.
    fn opened(cert: &openpgp::Cert, pkesk: &PKESK) -> (SymmetricAlgorithm, SessionKey) {
        let policy = StandardPolicy::new();
        let key = cert
            .keys()
            .with_policy(&policy, None)
            .secret()
            .for_transport_encryption()
            .next()
            .unwrap()
            .key()
            .clone();
        let mut pair = key.into_keypair().unwrap();
        let PKESK::V3(p) = pkesk else {
            panic!("a version 3 PKESK")
        };
        p.decrypt(&mut pair, None).unwrap()
    }

    fn encryption_key(cert: &openpgp::Cert) -> Key<PublicParts, UnspecifiedRole> {
        let policy = StandardPolicy::new();
        cert.keys()
            .with_policy(&policy, None)
            .for_transport_encryption()
            .next()
            .unwrap()
            .key()
            .clone()
            .role_into_unspecified()
    }

    #[test]
    fn sequoia_opens_what_is_wrapped_for_each_session_key_size() {
        let cert = keys(CipherSuite::Cv25519);
        let key = encryption_key(&cert);
        for sym in [
            SymmetricAlgorithm::AES128,
            SymmetricAlgorithm::AES192,
            SymmetricAlgorithm::AES256,
        ] {
            let sk = SessionKey::new(sym.key_size().unwrap()).unwrap();
            let pkesk = pkesk3(sym, &sk, &key).unwrap().unwrap();
            let PKESK::V3(p) = &pkesk else {
                panic!("a version 3 PKESK")
            };
            assert_eq!(p.recipient(), Some(&key.keyid()));
            assert_eq!(opened(&cert, &pkesk), (sym, sk));
        }
    }

    #[test]
    fn each_mail_has_an_ephemeral_key_of_its_own() {
        let cert = keys(CipherSuite::Cv25519);
        let key = encryption_key(&cert);
        let sk = SessionKey::new(32).unwrap();
        let ephemeral = |p: &PKESK| match p {
            PKESK::V3(p) => match p.esk() {
                mpi::Ciphertext::ECDH { e, .. } => e.value().to_vec(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let a = pkesk3(SymmetricAlgorithm::AES256, &sk, &key)
            .unwrap()
            .unwrap();
        let b = pkesk3(SymmetricAlgorithm::AES256, &sk, &key)
            .unwrap()
            .unwrap();
        assert_eq!(ephemeral(&a).len(), 33, "0x40 and the point");
        assert_eq!(ephemeral(&a)[0], 0x40);
        assert_ne!(ephemeral(&a), ephemeral(&b));
        assert_eq!(opened(&cert, &b), (SymmetricAlgorithm::AES256, sk));
    }

    #[test]
    fn other_keys_are_left_to_sequoia() {
        for suite in [CipherSuite::RSA3k, CipherSuite::P256] {
            let key = encryption_key(&keys(suite));
            let sk = SessionKey::new(32).unwrap();
            assert!(
                pkesk3(SymmetricAlgorithm::AES256, &sk, &key)
                    .unwrap()
                    .is_none(),
                "{suite:?}"
            );
        }
    }

    #[test]
    fn a_recipient_point_of_small_order_is_refused() {
        // The point of order 1 makes the shared point zero whatever the
        // ephemeral key: nothing would be secret.
        let cert = keys(CipherSuite::Cv25519);
        let key = encryption_key(&cert);
        let mpi::PublicKey::ECDH { hash, sym, .. } = key.mpis().clone() else {
            panic!("an ECDH key")
        };
        let mut point = [0u8; 32];
        point[0] = 1;
        let weak: Key<PublicParts, UnspecifiedRole> = openpgp::packet::key::Key4::new(
            key.creation_time(),
            PublicKeyAlgorithm::ECDH,
            mpi::PublicKey::ECDH {
                curve: Curve::Cv25519,
                q: MPI::new_compressed_point(&point),
                hash,
                sym,
            },
        )
        .unwrap()
        .into();
        let sk = SessionKey::new(32).unwrap();
        let e = pkesk3(SymmetricAlgorithm::AES256, &sk, &weak).unwrap_err();
        assert!(e.to_string().contains("failed during derivation"), "{e}");
    }
}
