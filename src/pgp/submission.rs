//! A customer's key, checked before kci encrypts anything to it: at
//! submission ([`check_submission`], which also cleans it) and again at send
//! time ([`encryption_key_valid`]).
//!
//! Hostile input gets bounded work. In order, before anything expensive:
//! the size ([`MAX_KEY_BYTES`]); then one shallow pass over the packets
//! (never descending into containers, so a compressed packet cannot
//! expand) that refuses secret keys, more than one certificate, packets
//! that do not belong in a certificate, keys with algorithms kci does not
//! support, RSA moduli over [`MAX_RSA_BITS`] or public exponents over 32
//! bits (a huge exponent makes every verification a full modular
//! exponentiation), and more than [`MAX_PACKETS`], [`MAX_USER_IDS`],
//! [`MAX_SUBKEYS`] or [`MAX_SIGNATURES`]. Only then does Sequoia build the
//! certificate and verify self-signatures, at most [`MAX_SIGNATURES`] of
//! them with keys of bounded size.

use super::{fingerprint_hex, policy_at};
use chrono::{DateTime, Utc};
use openpgp::cert::prelude::*;
use openpgp::crypto::mpi;
use openpgp::packet::{Packet, Tag};
use openpgp::parse::{PacketParser, PacketParserResult, Parse};
use openpgp::policy::{Policy, StandardPolicy};
use openpgp::serialize::SerializeInto;
use openpgp::types::{HashAlgorithm, KeyFlags, PublicKeyAlgorithm, RevocationStatus};
use sequoia_openpgp as openpgp;
use std::time::SystemTime;

/// Largest key block accepted, armored or binary. A real key with a few
/// user IDs is 2–10 KiB; one carrying hundreds of third-party
/// certifications is refused with advice to export it minimal.
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// Most packets in one key block.
pub const MAX_PACKETS: usize = 512;
/// Most user IDs (and user attributes) in one key block.
pub const MAX_USER_IDS: usize = 32;
/// Most subkeys in one key block.
pub const MAX_SUBKEYS: usize = 32;
/// Most signatures in one key block (self-signatures and third-party
/// certifications together).
pub const MAX_SIGNATURES: usize = 256;
/// Largest RSA modulus accepted (GnuPG makes at most 4096 bits).
pub const MAX_RSA_BITS: usize = 8192;
/// Largest RSA public exponent accepted, in bits (65537 has 17).
const MAX_RSA_EXPONENT_BITS: usize = 32;
/// How far a customer's clock may run ahead of kci's: a key made a minute
/// ago on such a machine has self-signatures "from the future", which would
/// otherwise not count yet. Expiry and revocation are judged this much late,
/// which is harmless at this scale.
const CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(10);
/// A warning is given for a key that stops working within this long.
const EXPIRY_WARNING: chrono::Duration = chrono::Duration::days(30);

/// A customer's key that passed every check, cleaned: only the user IDs
/// for the submitted address, no third-party certifications, no user
/// attributes, public parts only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanKey {
    /// The certificate's fingerprint, hex, upper case.
    pub fingerprint: String,
    /// The cleaned certificate, ASCII-armored.
    pub armored: String,
    /// When the key stops being usable for encryption (the earlier of the
    /// certificate's expiry and the last of its encryption subkeys'), if
    /// ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Things the customer should hear about but that do not stop the key
    /// (it expires soon; user IDs or certifications were removed).
    pub warnings: Vec<String>,
}

/// Why a key was refused: a short [`code`](KeyRefusal::code) for APIs and
/// metrics, and a sentence for the customer (Display).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error(
        "the key block is {bytes} bytes; at most {cap} are accepted (export it without third-party signatures: gpg --export --export-options export-minimal)"
    )]
    TooLarge { bytes: usize, cap: usize },
    #[error("this is not an OpenPGP public key ({0})")]
    Garbage(String),
    #[error(
        "this is a secret key: send only the public key (gpg --export --armor ADDRESS), and consider the secret key exposed if it left your machine"
    )]
    SecretKey,
    #[error("the block holds {0} keys; send exactly one")]
    MultipleCerts(usize),
    #[error("the block holds {count} {what}; at most {cap} are accepted")]
    TooMany {
        what: &'static str,
        count: usize,
        cap: usize,
    },
    #[error("a {0} packet does not belong in a public key")]
    UnexpectedPacket(String),
    #[error("unsupported key: {0}")]
    UnsupportedAlgorithm(String),
    #[error(
        "the key has no user ID for {0}; add one (gpg --quick-add-uid) or send the key for that address"
    )]
    NoMatchingUserId(String),
    #[error("the key's user ID for {0} is revoked")]
    UserIdRevoked(String),
    #[error(
        "the key's self-signatures use SHA-1, refused since 2023 (collisions can forge them); renew them with a current GnuPG, e.g. gpg --cert-digest-algo SHA256 --quick-set-expire FINGERPRINT 2y '*' and again without '*', then send the key again"
    )]
    Sha1SelfSignature,
    #[error("the key is revoked{0}")]
    Revoked(String),
    #[error("the key expired on {0}; extend it (gpg --quick-set-expire) and send it again")]
    Expired(String),
    #[error("the key has no usable encryption subkey ({0})")]
    NoEncryptionSubkey(String),
    #[error("the key is not valid: {0}")]
    Invalid(String),
}

impl KeyRefusal {
    /// The reason in kci's own words only, for the refusal mail (which
    /// the operator's key signs): nothing taken from the submitted key —
    /// no user ID, revocation text or parser message — can be carried
    /// into it.
    pub fn mail_reason(&self) -> String {
        match self {
            KeyRefusal::Garbage(_) => "this is not an OpenPGP public key".into(),
            KeyRefusal::UnexpectedPacket(_) => {
                "the key block holds a packet that does not belong in a public key".into()
            }
            KeyRefusal::UnsupportedAlgorithm(_) => {
                "the key uses an algorithm kci does not support".into()
            }
            KeyRefusal::Revoked(_) => "the key is revoked".into(),
            KeyRefusal::NoEncryptionSubkey(_) => "the key has no usable encryption subkey".into(),
            KeyRefusal::Invalid(_) => "the key is not valid".into(),
            // The rest carry only numbers, dates and the address kci was
            // asked about.
            other => other.to_string(),
        }
    }

    /// A short, stable label (`too_large`, `secret_key`, …).
    pub fn code(&self) -> &'static str {
        match self {
            KeyRefusal::TooLarge { .. } => "too_large",
            KeyRefusal::Garbage(_) => "not_a_key",
            KeyRefusal::SecretKey => "secret_key",
            KeyRefusal::MultipleCerts(_) => "multiple_keys",
            KeyRefusal::TooMany { .. } => "too_many_components",
            KeyRefusal::UnexpectedPacket(_) => "unexpected_packet",
            KeyRefusal::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            KeyRefusal::NoMatchingUserId(_) => "no_matching_user_id",
            KeyRefusal::UserIdRevoked(_) => "user_id_revoked",
            KeyRefusal::Sha1SelfSignature => "sha1_self_signature",
            KeyRefusal::Revoked(_) => "revoked",
            KeyRefusal::Expired(_) => "expired",
            KeyRefusal::NoEncryptionSubkey(_) => "no_encryption_subkey",
            KeyRefusal::Invalid(_) => "invalid",
        }
    }
}

fn garbage(e: impl std::fmt::Display) -> KeyRefusal {
    // Sequoia's first line is enough; the rest can be long.
    let text = e.to_string();
    KeyRefusal::Garbage(text.lines().next().unwrap_or("unreadable").to_string())
}

/// Checks and cleans a key submitted for `address` (armored or binary):
/// the checks of the module doc, then the key must have a valid user ID for
/// exactly `address` (local part as written, domain case-insensitive), not
/// be revoked or expired at `now`, and have an encryption-capable subkey
/// that is valid at `now`.
pub fn check_submission(
    data: &[u8],
    address: &str,
    now: DateTime<Utc>,
) -> Result<CleanKey, KeyRefusal> {
    let cert = parse_bounded(data)?;
    let mut warnings = Vec::new();

    let matching = |uid: &openpgp::packet::UserID| {
        uid.email()
            .ok()
            .flatten()
            .is_some_and(|e| same_address(e, address))
    };
    let all_uids = cert.userids().count();
    let kept_uids = cert.userids().filter(|u| matching(u.userid())).count();
    if kept_uids == 0 {
        return Err(KeyRefusal::NoMatchingUserId(address.to_string()));
    }
    if all_uids > kept_uids {
        warnings.push(format!(
            "{} user ID(s) for other addresses were removed",
            all_uids - kept_uids
        ));
    }
    let third_party: usize = cert
        .userids()
        .map(|u| u.bundle().certifications().count())
        .sum::<usize>()
        + cert.primary_key().bundle().certifications().count();
    if third_party > 0 {
        warnings.push(format!(
            "{third_party} third-party certification(s) were removed"
        ));
    }
    if cert.user_attributes().count() > 0 {
        warnings.push("photo IDs (user attributes) were removed".into());
    }

    let cert = clean(&cert, &matching)?;
    let usable_until = assess(&cert, Some(address), now)?;
    if let Some(until) = usable_until
        && until - now < EXPIRY_WARNING
    {
        warnings.push(format!(
            "the key expires on {}; extend it soon",
            until.format("%Y-%m-%d")
        ));
    }
    let armored = armored(&cert).map_err(KeyRefusal::Invalid)?;
    Ok(CleanKey {
        fingerprint: fingerprint_hex(&cert.fingerprint()),
        armored,
        expires_at: usable_until,
        warnings,
    })
}

/// A newer copy of a registered key (new subkeys, a later expiry, a
/// revocation) merged into the stored one: a union, so nothing the stored
/// copy knew (a revocation) is lost by sending an older or stripped copy.
/// Not checked: pass the result to [`check_submission`]. Refused when
/// `data` is another key.
pub fn merge_public(stored_armored: &str, data: &[u8]) -> Result<String, KeyRefusal> {
    let stored = parse_bounded(stored_armored.as_bytes())?;
    let newer = parse_bounded(data)?;
    if stored.fingerprint() != newer.fingerprint() {
        return Err(KeyRefusal::Invalid("it is another key".into()));
    }
    let merged = stored
        .merge_public(newer)
        .map_err(|e| KeyRefusal::Invalid(e.to_string()))?;
    armored(&merged).map_err(KeyRefusal::Invalid)
}

/// Whether an (already registered) key may still be encrypted to at `now`:
/// not revoked, not expired, and with a valid encryption subkey.
pub fn encryption_key_valid(armored: &str, now: DateTime<Utc>) -> Result<(), KeyRefusal> {
    let cert = parse_bounded(armored.as_bytes())?;
    assess(&cert, None, now).map(|_| ())
}

/// Parses one public certificate within the module's bounds.
pub(super) fn parse_bounded(data: &[u8]) -> Result<Cert, KeyRefusal> {
    if data.len() > MAX_KEY_BYTES {
        return Err(KeyRefusal::TooLarge {
            bytes: data.len(),
            cap: MAX_KEY_BYTES,
        });
    }
    scan(data)?;
    Cert::from_bytes(data).map_err(garbage)
}

/// The shallow pass: packet tags, counts and key sizes, nothing verified.
fn scan(data: &[u8]) -> Result<(), KeyRefusal> {
    let (mut packets, mut primaries, mut uids, mut subkeys, mut sigs) = (0, 0, 0, 0, 0);
    let too_many = |what: &'static str, count: usize, cap: usize| {
        if count > cap {
            Err(KeyRefusal::TooMany { what, count, cap })
        } else {
            Ok(())
        }
    };
    let mut ppr = PacketParser::from_bytes(data).map_err(garbage)?;
    while let PacketParserResult::Some(pp) = ppr {
        packets += 1;
        too_many("packets", packets, MAX_PACKETS)?;
        match &pp.packet {
            Packet::SecretKey(_) | Packet::SecretSubkey(_) => return Err(KeyRefusal::SecretKey),
            Packet::PublicKey(k) => {
                primaries += 1;
                check_algorithm(k.pk_algo(), k.mpis())?;
            }
            Packet::PublicSubkey(k) => {
                subkeys += 1;
                check_algorithm(k.pk_algo(), k.mpis())?;
            }
            Packet::UserID(_) | Packet::UserAttribute(_) => uids += 1,
            Packet::Signature(_) => sigs += 1,
            Packet::Trust(_) | Packet::Marker(_) | Packet::Padding(_) => {}
            Packet::Unknown(u) => match u.tag() {
                Tag::SecretKey | Tag::SecretSubkey => return Err(KeyRefusal::SecretKey),
                // Components Sequoia cannot parse (future algorithms,
                // broken signatures) are skipped by the certificate
                // parser; they still count.
                Tag::PublicKey => primaries += 1,
                Tag::PublicSubkey => subkeys += 1,
                Tag::UserID | Tag::UserAttribute => uids += 1,
                Tag::Signature => sigs += 1,
                tag => return Err(KeyRefusal::UnexpectedPacket(tag.to_string())),
            },
            other => return Err(KeyRefusal::UnexpectedPacket(other.tag().to_string())),
        }
        too_many("keys", primaries, 1).map_err(|_| KeyRefusal::MultipleCerts(primaries))?;
        too_many("user IDs", uids, MAX_USER_IDS)?;
        too_many("subkeys", subkeys, MAX_SUBKEYS)?;
        too_many("signatures", sigs, MAX_SIGNATURES)?;
        // `next`, never `recurse`: containers are not opened.
        ppr = pp.next().map_err(garbage)?.1;
    }
    if primaries == 0 {
        return Err(KeyRefusal::Garbage("no public key packet".into()));
    }
    Ok(())
}

fn check_algorithm(algo: PublicKeyAlgorithm, mpis: &mpi::PublicKey) -> Result<(), KeyRefusal> {
    use PublicKeyAlgorithm::*;
    #[allow(deprecated)]
    match (algo, mpis) {
        (RSAEncryptSign | RSAEncrypt | RSASign, mpi::PublicKey::RSA { e, n }) => {
            if n.bits() > MAX_RSA_BITS {
                return Err(KeyRefusal::UnsupportedAlgorithm(format!(
                    "RSA with {} bits (at most {MAX_RSA_BITS})",
                    n.bits()
                )));
            }
            if e.bits() > MAX_RSA_EXPONENT_BITS {
                return Err(KeyRefusal::UnsupportedAlgorithm(format!(
                    "RSA public exponent of {} bits",
                    e.bits()
                )));
            }
            Ok(())
        }
        (EdDSA | ECDSA | ECDH | X25519 | X448 | Ed25519 | Ed448, _) => Ok(()),
        (algo, _) => Err(KeyRefusal::UnsupportedAlgorithm(format!(
            "{algo} (use ed25519/cv25519 or RSA)"
        ))),
    }
}

/// Whether a user ID's address is `address`, compared as kci keys
/// addresses everywhere ([`EmailAddr`](crate::model::EmailAddr)): in any
/// case, as mainstream MTAs deliver them.
fn same_address(uid_email: &str, address: &str) -> bool {
    match (
        crate::model::EmailAddr::parse(uid_email),
        crate::model::EmailAddr::parse(address),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The certificate with only the primary key's and matching user IDs'
/// self-signatures, and the subkeys with their bindings.
fn clean(
    cert: &Cert,
    keep_uid: &dyn Fn(&openpgp::packet::UserID) -> bool,
) -> Result<Cert, KeyRefusal> {
    let mut packets: Vec<Packet> = Vec::new();
    let primary = cert.primary_key();
    packets.push(primary.key().clone().into());
    let own = |b: &mut Vec<Packet>, sigs: Vec<&openpgp::packet::Signature>| {
        b.extend(sigs.into_iter().cloned().map(Packet::from))
    };
    own(&mut packets, primary.bundle().self_signatures().collect());
    own(&mut packets, primary.bundle().self_revocations().collect());
    for ua in cert.userids().filter(|u| keep_uid(u.userid())) {
        packets.push(ua.userid().clone().into());
        own(&mut packets, ua.bundle().self_signatures().collect());
        own(&mut packets, ua.bundle().self_revocations().collect());
    }
    for ka in cert.keys().subkeys() {
        packets.push(ka.key().clone().into());
        own(&mut packets, ka.bundle().self_signatures().collect());
        own(&mut packets, ka.bundle().self_revocations().collect());
    }
    Cert::from_packets(packets.into_iter()).map_err(|e| KeyRefusal::Invalid(e.to_string()))
}

/// The checks shared by submission and send time; returns until when the
/// key can be encrypted to.
pub(super) fn assess(
    cert: &Cert,
    address: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, KeyRefusal> {
    let now = judged_at(now);
    let policy = policy_at(now);
    let t = SystemTime::from(now);
    let mut relaxed = policy_at(now);
    relaxed.accept_hash(HashAlgorithm::SHA1);
    // Whether the same check passes when SHA-1 is allowed: then SHA-1 is
    // the reason, and the customer can be told exactly that.
    let sha1_only = |check: &dyn Fn(&StandardPolicy) -> bool| !check(&policy) && check(&relaxed);

    // Revocation first: a revoked key says so even if it is also invalid.
    if let RevocationStatus::Revoked(sigs) = cert.revocation_status(&policy, t) {
        // The reason's code only: its free text is the key holder's (or a
        // forger's) words, and kci never repeats submitted text.
        let why = sigs
            .first()
            .and_then(|s| s.reason_for_revocation())
            .map(|(code, _)| format!(" ({code})"))
            .unwrap_or_default();
        return Err(KeyRefusal::Revoked(why));
    }
    let vc = match cert.with_policy(&policy, t) {
        Ok(vc) => vc,
        Err(e) => {
            if sha1_only(&|p| cert.with_policy(p, t).is_ok()) {
                return Err(KeyRefusal::Sha1SelfSignature);
            }
            return Err(KeyRefusal::Invalid(e.to_string()));
        }
    };
    if let Err(e) = vc.alive() {
        let expired = vc
            .primary_key()
            .key_expiration_time()
            .filter(|exp| *exp <= t)
            .map(|exp| DateTime::<Utc>::from(exp).format("%Y-%m-%d").to_string());
        return Err(match expired {
            Some(day) => KeyRefusal::Expired(day),
            None => KeyRefusal::Invalid(e.to_string()),
        });
    }

    if let Some(address) = address {
        let matching = |p: &dyn Policy| {
            cert.with_policy(p, t).is_ok_and(|vc| {
                vc.userids().any(|u| {
                    u.userid()
                        .email()
                        .ok()
                        .flatten()
                        .is_some_and(|e| same_address(e, address))
                })
            })
        };
        if !matching(&policy) {
            if sha1_only(&|p| matching(p)) {
                return Err(KeyRefusal::Sha1SelfSignature);
            }
            return Err(KeyRefusal::Invalid(format!(
                "the user ID for {address} is not self-signed"
            )));
        }
        let revoked = vc.userids().all(|u| {
            !u.userid()
                .email()
                .ok()
                .flatten()
                .is_some_and(|e| same_address(e, address))
                || matches!(u.revocation_status(), RevocationStatus::Revoked(_))
        });
        if revoked {
            return Err(KeyRefusal::UserIdRevoked(address.to_string()));
        }
    }

    let encryption = KeyFlags::empty()
        .set_transport_encryption()
        .set_storage_encryption();
    let usable = |p: &dyn Policy| -> Vec<Option<SystemTime>> {
        cert.with_policy(p, t)
            .map(|vc| {
                vc.keys()
                    .supported()
                    .alive()
                    .revoked(false)
                    .key_flags(encryption.clone())
                    .map(|ka| ka.key_expiration_time())
                    .collect()
            })
            .unwrap_or_default()
    };
    let expiries = usable(&policy);
    if expiries.is_empty() {
        if sha1_only(&|p| !usable(p).is_empty()) {
            return Err(KeyRefusal::Sha1SelfSignature);
        }
        let any_enc = cert.keys().any(|ka| {
            ka.self_signatures().any(|s| {
                s.key_flags()
                    .is_some_and(|f| !(&f & &encryption).is_empty())
            })
        });
        let why = if any_enc {
            "its encryption subkeys are expired, revoked or use an algorithm kci does not support"
        } else {
            "it is a signing-only key; add one with gpg --quick-add-key FINGERPRINT cv25519 encr"
        };
        return Err(KeyRefusal::NoEncryptionSubkey(why.into()));
    }
    // Usable until the last encryption subkey expires, and not past the
    // certificate's own expiry.
    let last_subkey = if expiries.iter().any(Option::is_none) {
        None
    } else {
        expiries.iter().flatten().max().copied()
    };
    let until = match (vc.primary_key().key_expiration_time(), last_subkey) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(until.map(DateTime::<Utc>::from))
}

/// The time keys are judged at for `now` (see [`CLOCK_SKEW`]).
pub(super) fn judged_at(now: DateTime<Utc>) -> DateTime<Utc> {
    now + CLOCK_SKEW
}

pub(super) fn armored(cert: &Cert) -> Result<String, String> {
    let bytes = cert.armored().to_vec().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_compare_as_one_mailbox_in_any_case() {
        assert!(same_address("Alice@Example.ORG", "Alice@example.org"));
        assert!(same_address("alice@example.org", "Alice@example.org"));
        assert!(!same_address("alice+x@example.org", "alice@example.org"));
        assert!(!same_address("alice", "alice@example.org"));
    }

    /// A revocation's free text is the key's (or a forger's) words: it is
    /// never carried into what kci says, least of all into the refusal
    /// mail the operator's key signs.
    #[test]
    fn a_revocation_reason_is_never_echoed_into_a_signed_refusal() {
        use openpgp::cert::CertBuilder;
        use openpgp::types::ReasonForRevocation;
        let (cert, _) = CertBuilder::general_purpose(Some("grace@example.org"))
            .generate()
            .unwrap();
        let mut signer = cert
            .primary_key()
            .key()
            .clone()
            .parts_into_secret()
            .unwrap()
            .into_keypair()
            .unwrap();
        let phishing = b"ACTION REQUIRED: your account is locked, log in at https://evil.example/";
        let rev = cert
            .revoke(&mut signer, ReasonForRevocation::KeyCompromised, phishing)
            .unwrap();
        let (revoked, _) = cert.insert_packets(rev).unwrap();
        let armored = revoked.armored().to_vec().unwrap();
        let e = check_submission(&armored, "grace@example.org", Utc::now()).unwrap_err();
        assert_eq!(e.code(), "revoked");
        for said in [e.to_string(), e.mail_reason()] {
            assert!(!said.contains("ACTION") && !said.contains("evil"), "{said}");
        }
    }

    #[test]
    fn huge_and_garbage_blocks_are_refused_before_parsing() {
        let now = Utc::now();
        let huge = vec![b'A'; MAX_KEY_BYTES + 1];
        let e = check_submission(&huge, "a@example.org", now).unwrap_err();
        assert_eq!(e.code(), "too_large");
        for junk in [
            &b""[..],
            b"hello",
            &[0xff; 300],
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n",
        ] {
            let e = check_submission(junk, "a@example.org", now).unwrap_err();
            assert_eq!(e.code(), "not_a_key", "{e}");
        }
    }

    #[test]
    fn every_refusal_has_a_code_and_a_sentence() {
        let e = KeyRefusal::TooMany {
            what: "user IDs",
            count: 40,
            cap: 32,
        };
        assert_eq!(e.code(), "too_many_components");
        assert!(e.to_string().contains("40 user IDs"));
    }
}
