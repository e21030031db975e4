//! DKIM (RFC 6376): every mail signed for the sender's domain with each
//! configured selector — Ed25519 (RFC 8463) and RSA side by side, since
//! many receivers still check only RSA. The keys are PKCS#8 PEM files
//! (`kci dkim generate`); the DNS records to publish are derived from them
//! (`kci dkim dns`).

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use openssl::pkey::{Id, PKey, Private};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[email.dkim]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The signing domain (`d=`); default: the domain of `[email] from`.
    #[serde(default)]
    pub domain: Option<String>,
    /// One signature per selector, in this order.
    pub selectors: Vec<SelectorConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorConfig {
    /// The selector (`s=`): the record is `<name>._domainkey.<domain>`.
    pub name: String,
    /// Its private key, PKCS#8 PEM (Ed25519 or RSA ≥ 2048 bits); secret,
    /// keep it 0600.
    pub key: PathBuf,
}

/// The headers signed: what a reader sees and what threads the mail. Each
/// is listed once more than it occurs (RFC 6376 §8.15), so none can be
/// added on the way.
const SIGNED: &[&str] = &[
    "From",
    "From",
    "To",
    "To",
    "Subject",
    "Subject",
    "Date",
    "Date",
    "Message-ID",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Autocrypt",
];

enum Signer {
    Ed25519(DkimSigner<Ed25519Key, Done>),
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
}

/// The signers of `[email.dkim]`, loaded once.
pub struct Dkim {
    signers: Vec<Signer>,
}

/// A DKIM key: its algorithm tag and its public key as the record's `p=`.
pub struct PublicRecord {
    pub k: &'static str,
    pub p: String,
}

impl PublicRecord {
    /// The TXT record's text.
    pub fn txt(&self) -> String {
        format!("v=DKIM1; k={}; p={}", self.k, self.p)
    }
}

/// Reads a PKCS#8 PEM private key, Ed25519 or RSA (≥ 2048 bits).
pub fn read_key(path: &Path) -> Result<PKey<Private>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = PKey::private_key_from_pem(&pem)
        .map_err(|_| format!("{}: not a PEM private key", path.display()))?;
    match key.id() {
        Id::ED25519 => Ok(key),
        Id::RSA if key.bits() >= 2048 => Ok(key),
        Id::RSA => Err(format!(
            "{}: an RSA key of {} bits; DKIM needs 2048 or more (RFC 8301)",
            path.display(),
            key.bits()
        )),
        _ => Err(format!("{}: neither Ed25519 nor RSA", path.display())),
    }
}

/// The record to publish for `key`: Ed25519's raw 32 bytes (RFC 8463), or
/// RSA's SubjectPublicKeyInfo (as `openssl rsa -pubout`).
pub fn public_record(key: &PKey<Private>) -> Result<PublicRecord, String> {
    use base64::Engine;
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    match key.id() {
        Id::ED25519 => Ok(PublicRecord {
            k: "ed25519",
            p: b64(key.raw_public_key().map_err(|e| e.to_string())?),
        }),
        _ => Ok(PublicRecord {
            k: "rsa",
            p: b64(key.public_key_to_der().map_err(|e| e.to_string())?),
        }),
    }
}

/// A new key: Ed25519, or RSA of `bits`, as PKCS#8 PEM.
pub fn generate(rsa_bits: Option<u32>) -> Result<Vec<u8>, String> {
    let key = match rsa_bits {
        None => PKey::generate_ed25519(),
        Some(bits) if bits >= 2048 => openssl::rsa::Rsa::generate(bits).and_then(PKey::from_rsa),
        Some(bits) => return Err(format!("RSA of {bits} bits; DKIM needs 2048 or more")),
    }
    .map_err(|e| e.to_string())?;
    key.private_key_to_pem_pkcs8().map_err(|e| e.to_string())
}

impl Dkim {
    /// Loads every selector's key; `from_domain` is the default `d=`.
    pub fn load(cfg: &DkimConfig, from_domain: &str) -> Result<Dkim, String> {
        if cfg.selectors.is_empty() {
            return Err("selectors: give at least one".into());
        }
        let domain = cfg.domain.as_deref().unwrap_or(from_domain);
        let mut signers = Vec::new();
        for s in &cfg.selectors {
            let named = |e: String| format!("selector {}: {e}", s.name);
            let key = read_key(&s.key).map_err(named)?;
            let der = key
                .private_key_to_pkcs8()
                .map_err(|e| named(e.to_string()))?;
            let signer = match key.id() {
                Id::ED25519 => Signer::Ed25519(
                    DkimSigner::from_key(
                        Ed25519Key::from_pkcs8_maybe_unchecked_der(&der)
                            .map_err(|e| named(e.to_string()))?,
                    )
                    .domain(domain)
                    .selector(&s.name)
                    .headers(SIGNED.iter().copied()),
                ),
                _ => Signer::Rsa(
                    DkimSigner::from_key(
                        RsaKey::<Sha256>::from_key_der(rustls::pki_types::PrivateKeyDer::Pkcs8(
                            der.into(),
                        ))
                        .map_err(|e| named(e.to_string()))?,
                    )
                    .domain(domain)
                    .selector(&s.name)
                    .headers(SIGNED.iter().copied()),
                ),
            };
            signers.push(signer);
        }
        Ok(Dkim { signers })
    }

    /// `mail` with a `DKIM-Signature` header per selector in front.
    pub fn sign(&self, mail: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut headers = String::new();
        for signer in &self.signers {
            let signature = match signer {
                Signer::Ed25519(s) => s.sign(&mail),
                Signer::Rsa(s) => s.sign(&mail),
            }
            .map_err(|e| format!("DKIM: {e}"))?;
            headers.push_str(&signature.to_header());
        }
        let mut out = headers.into_bytes();
        out.extend_from_slice(&mail);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, ResolverCache, Txt};
    use std::borrow::Borrow;
    use std::collections::HashMap;
    use std::hash::Hash;
    use std::sync::Arc;

    /// DNS as published: the records `kci dkim dns` prints, by name.
    struct Published(HashMap<Box<str>, Txt>);

    impl ResolverCache<Box<str>, Txt> for Published {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.get(name).cloned()
        }
        fn remove<Q>(&self, _: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            None
        }
        fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
    }

    const MAIL: &str = "From: Example ISP <kci@isp.example>\r\nTo: alice@example.org\r\n\
        Subject: Line L1 is down\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n\
        Message-ID: <n1@isp.example>\r\nMIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\r\nYour line L1 went down.\r\n";

    fn setup(dir: &Path) -> (Dkim, Published) {
        let mut selectors = Vec::new();
        let mut dns = HashMap::new();
        for (name, bits) in [("ed", None), ("rsa", Some(2048))] {
            let path = dir.join(format!("{name}.pem"));
            std::fs::write(&path, generate(bits).unwrap()).unwrap();
            let record = public_record(&read_key(&path).unwrap()).unwrap();
            let key = DomainKey::parse(record.txt().as_bytes()).unwrap();
            dns.insert(
                format!("{name}._domainkey.isp.example.").into_boxed_str(),
                Txt::DomainKey(Arc::new(key)),
            );
            selectors.push(SelectorConfig {
                name: name.into(),
                key: path,
            });
        }
        let cfg = DkimConfig {
            domain: None,
            selectors,
        };
        (Dkim::load(&cfg, "isp.example").unwrap(), Published(dns))
    }

    async fn verify(mail: &[u8], dns: &Published) -> Vec<String> {
        let auth = MessageAuthenticator::new_system_conf()
            .or_else(|_| MessageAuthenticator::new_cloudflare())
            .unwrap();
        let msg = AuthenticatedMessage::parse(mail).unwrap();
        let params = mail_auth::Parameters::new(&msg).with_txt_cache(dns);
        auth.verify_dkim(params)
            .await
            .iter()
            .map(|o| match o.result() {
                DkimResult::Pass => "pass".to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// Both signatures verify with mail-auth's verifier against the
    /// records derived from the keys; a changed body or an added header
    /// breaks both.
    #[tokio::test]
    async fn each_selector_signs_and_mail_auth_verifies_them() {
        let dir = tempfile::tempdir().unwrap();
        let (dkim, dns) = setup(dir.path());
        let signed = dkim.sign(MAIL.as_bytes().to_vec()).unwrap();
        let text = String::from_utf8(signed.clone()).unwrap();
        assert!(text.contains("a=ed25519-sha256") && text.contains("a=rsa-sha256"));
        assert!(text.contains("d=isp.example") && text.contains("s=ed;"));
        assert_eq!(verify(&signed, &dns).await, ["pass", "pass"]);

        let tampered = text.replace("went down", "is fine");
        for r in verify(tampered.as_bytes(), &dns).await {
            assert_ne!(r, "pass", "a changed body");
        }
        let added = text.replace(
            "Subject: Line",
            "Subject: Urgent\r\nX-Y: z\r\nSubject: Line",
        );
        for r in verify(added.as_bytes(), &dns).await {
            assert_ne!(r, "pass", "a second Subject");
        }
    }

    #[test]
    fn unusable_keys_are_refused_with_the_selector_named() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.pem");
        let rsa = openssl::rsa::Rsa::generate(1024).unwrap();
        std::fs::write(
            &small,
            PKey::from_rsa(rsa)
                .unwrap()
                .private_key_to_pem_pkcs8()
                .unwrap(),
        )
        .unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        for (path, want) in [
            (small, "selector s: "),
            (junk.clone(), "not a PEM private key"),
            (dir.path().join("missing.pem"), "cannot read"),
        ] {
            let cfg = DkimConfig {
                domain: None,
                selectors: vec![SelectorConfig {
                    name: "s".into(),
                    key: path,
                }],
            };
            let e = Dkim::load(&cfg, "isp.example").err().unwrap();
            assert!(e.starts_with("selector s: ") && e.contains(want), "{e}");
        }
        assert!(generate(Some(1024)).is_err());
        let empty = DkimConfig {
            domain: None,
            selectors: vec![],
        };
        assert!(Dkim::load(&empty, "isp.example").is_err());
    }
}
