//! S/MIME signing (RFC 8551) with the operator's X.509 certificate, so mail
//! readers without OpenPGP (Outlook, Apple Mail, webmail) still show a
//! verified sender. OpenSSL does the CMS work (`PKCS7_sign`, detached).
//!
//! One signature per mail: when the operator also has an OpenPGP key
//! (`[email] signing_key`), every mail is PGP/MIME signed as DESIGN.md §6
//! requires, and config validation refuses to set both, rather than nest
//! two signatures that mail readers would show only half of.

use crate::pgp::MailHeaders;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::X509;
use std::path::Path;

/// The operator's S/MIME certificate (with any intermediates after it, in
/// one PEM file) and its private key.
pub struct SmimeSigner {
    cert: X509,
    chain: Stack<X509>,
    key: PKey<Private>,
}

impl std::fmt::Debug for SmimeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmimeSigner")
            .field("subject", &self.cert.subject_name())
            .finish_non_exhaustive()
    }
}

impl SmimeSigner {
    /// Reads the certificate chain and key; refuses a key that does not
    /// belong to the certificate, and a certificate not valid now.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<SmimeSigner> {
        let pem = std::fs::read(cert_path).map_err(|e| {
            anyhow::anyhow!("email.smime_cert: cannot read {}: {e}", cert_path.display())
        })?;
        let mut certs = X509::stack_from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("email.smime_cert: not PEM certificates: {e}"))?
            .into_iter();
        let cert = certs
            .next()
            .ok_or_else(|| anyhow::anyhow!("email.smime_cert: no certificate in the file"))?;
        let mut chain = Stack::new()?;
        for c in certs {
            chain.push(c)?;
        }
        let key_pem = std::fs::read(key_path).map_err(|e| {
            anyhow::anyhow!("email.smime_key: cannot read {}: {e}", key_path.display())
        })?;
        let key = PKey::private_key_from_pem(&key_pem)
            .map_err(|_| anyhow::anyhow!("email.smime_key: not an unencrypted PEM private key"))?;
        let public = cert.public_key()?;
        if !key.public_eq(&public) {
            anyhow::bail!("email.smime_key: the key does not belong to email.smime_cert");
        }
        let now = openssl::asn1::Asn1Time::days_from_now(0)?;
        if cert.not_after() < now || cert.not_before() > now {
            anyhow::bail!("email.smime_cert: the certificate is not valid now");
        }
        Ok(SmimeSigner { cert, chain, key })
    }

    /// A complete `multipart/signed; protocol="application/pkcs7-signature"`
    /// mail: the headers, then `body` as a quoted-printable text part and
    /// its detached CMS signature (SHA-256).
    pub fn signed_mail(&self, headers: &MailHeaders, body: &str) -> Result<Vec<u8>, String> {
        let part = crate::pgp::plain_text_part(body);
        let flags = Pkcs7Flags::DETACHED | Pkcs7Flags::BINARY | Pkcs7Flags::CRLFEOL;
        let signed = Pkcs7::sign(&self.cert, &self.key, &self.chain, &part, flags)
            .map_err(|e| format!("S/MIME signing: {e}"))?;
        let smime = signed
            .to_smime(&part, flags)
            .map_err(|e| format!("S/MIME signing: {e}"))?;
        let mut out = crate::pgp::plain_headers(headers).into_bytes();
        // OpenSSL writes its own MIME-Version; the headers above carry it.
        // OpenSSL names the legacy `x-` types; RFC 8551 has dropped the
        // prefix. Both lie outside what was signed.
        let smime = String::from_utf8_lossy(strip_mime_version(&smime)).replace(
            "application/x-pkcs7-signature",
            "application/pkcs7-signature",
        );
        out.extend_from_slice(smime.as_bytes());
        Ok(out)
    }
}

fn strip_mime_version(b: &[u8]) -> &[u8] {
    for prefix in [&b"MIME-Version: 1.0\r\n"[..], &b"MIME-Version: 1.0\n"[..]] {
        if let Some(rest) = b.strip_prefix(prefix) {
            return rest;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed operator certificate made by the real `openssl` CLI.
    fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            ])
            .args(["-subj", "/CN=Example ISP/emailAddress=kci@isp.example"])
            .args(["-addext", "extendedKeyUsage=emailProtection"])
            .args(["-addext", "subjectAltName=email:kci@isp.example"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl CLI");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (cert, key)
    }

    fn headers() -> MailHeaders {
        MailHeaders {
            from: "Example ISP <kci@isp.example>".parse().unwrap(),
            to: "alice@example.com".parse().unwrap(),
            subject: "Line L1 is down".into(),
            date: chrono::Utc::now(),
            message_id: "<n1@isp.example>".into(),
            in_reply_to: None,
            references: None,
            auto_submitted: Some("auto-generated".into()),
        }
    }

    #[test]
    fn openssl_verifies_the_signed_mail_and_a_changed_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate(dir.path());
        let signer = SmimeSigner::load(&cert, &key).unwrap();
        let mail = signer
            .signed_mail(
                &headers(),
                "Your line L1 went down at 02:58.\nGrüße, Example ISP",
            )
            .unwrap();
        let text = String::from_utf8(mail.clone()).unwrap();
        assert!(text.contains("Subject: Line L1 is down"), "{text}");
        assert!(
            text.contains("protocol=\"application/pkcs7-signature\""),
            "{text}"
        );
        assert_eq!(text.matches("MIME-Version").count(), 1, "{text}");
        let verify = |bytes: &[u8]| {
            let file = dir.path().join("mail.eml");
            std::fs::write(&file, bytes).unwrap();
            Command::new("openssl")
                .args(["smime", "-verify", "-in"])
                .arg(&file)
                .arg("-CAfile")
                .arg(&cert)
                .output()
                .unwrap()
        };
        let out = verify(&mail);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("went down at 02:58"));
        let forged = text.replace("02:58", "03:58");
        assert!(!verify(forged.as_bytes()).status.success());
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (cert, _) = certificate(a.path());
        let (_, other_key) = certificate(b.path());
        let err = SmimeSigner::load(&cert, &other_key).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let err = SmimeSigner::load(&a.path().join("missing.pem"), &other_key).unwrap_err();
        assert!(err.to_string().starts_with("email.smime_cert"), "{err}");
    }
}
