//! Email: over SMTP when `[email] smtp` is set (lettre, STARTTLS when the
//! server offers it), otherwise into a local Maildir outbox that `mutt -f`
//! can open. Every mail carries `Auto-Submitted: auto-generated`, a stable
//! `Message-ID` per notification (so a retry after a crash is recognisably
//! the same mail), and threading headers per correlation key.
//!
//! With `[email] signing_key` (DESIGN.md §6) every mail is PGP/MIME signed
//! by the operator's key and carries its Autocrypt header; a mail whose
//! [`Outgoing::recipient_key`] is set is signed and encrypted to that key
//! (see [`crate::pgp`]). If that key is no longer valid (expired or revoked
//! since it was registered) the delivery fails permanently instead of
//! going out in clear: the customer asked for encryption, and a fault
//! notice in clear tells every relay and mailbox provider on the way what
//! the customer wanted kept between them and the operator.

pub mod dkim;
mod maildir;
pub mod mta_sts;
mod mx;
mod smtp;

use super::{Channel, DeliveryError, Outgoing, Receipt};
mod config;
use crate::model::ChannelKind;
use crate::pgp::{MailHeaders, OperatorKey, PgpError};
use async_trait::async_trait;
pub use config::{DomainPolicy, EmailConfig, TlsPolicy};
use lettre::address::Envelope;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// RFC 3834's `Auto-Submitted` header.
#[derive(Debug, Clone)]
struct AutoSubmitted;

impl Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".into())
    }
}

enum Transport {
    Smtp(smtp::SmtpPool),
    /// Straight to the recipient domain's MX hosts, with the domain's own
    /// `tls` if it has one.
    Mx(Option<TlsPolicy>),
    Maildir(maildir::Maildir),
}

/// Where mail goes: by the recipient's domain when `[email.domains]` names
/// it, else the default.
struct Routes {
    default: Transport,
    domains: HashMap<String, Transport>,
    /// Set when a route is `mx`.
    direct: Option<mx::Direct>,
}

impl Routes {
    fn from_config(cfg: &EmailConfig) -> anyhow::Result<Routes> {
        let route = |url: &str, policy: &DomainPolicy| -> Result<Transport, String> {
            if url == "mx" {
                Ok(Transport::Mx(policy.tls))
            } else {
                smtp_pool(cfg, url, policy).map(Transport::Smtp)
            }
        };
        let default = match &cfg.smtp {
            Some(url) => route(url.expose(), &DomainPolicy::default())
                .map_err(|e| anyhow::anyhow!("email.smtp: {e}"))?,
            None => Transport::Maildir(maildir::Maildir::create(PathBuf::from(&cfg.outbox))?),
        };
        let mut domains = HashMap::new();
        for (domain, policy) in &cfg.domains {
            let url = policy.smtp.as_ref().or(cfg.smtp.as_ref()).ok_or_else(|| {
                anyhow::anyhow!(
                    "email.domains.{domain}: set its smtp, or [email] smtp (without one, mail goes to the outbox)"
                )
            })?;
            let transport = route(url.expose(), policy)
                .map_err(|e| anyhow::anyhow!("email.domains.{domain}: {e}"))?;
            domains.insert(domain.to_ascii_lowercase(), transport);
        }
        let uses_mx = matches!(default, Transport::Mx(_))
            || domains.values().any(|t| matches!(t, Transport::Mx(_)));
        let direct = if uses_mx {
            let from: Mailbox = cfg
                .from
                .parse()
                .map_err(|e| anyhow::anyhow!("email.from: {e}"))?;
            let files = tls_files(cfg, &DomainPolicy::default())
                .map_err(|e| anyhow::anyhow!("email.mx: {e}"))?;
            Some(
                mx::Direct::new(&cfg.mx, from.email.domain(), cfg.timeout.0, files)
                    .map_err(|e| anyhow::anyhow!("email.mx: {e}"))?,
            )
        } else {
            None
        };
        Ok(Routes {
            default,
            domains,
            direct,
        })
    }

    /// The route of mail to `to`.
    fn for_recipient(&self, to: &lettre::Address) -> &Transport {
        self.domains
            .get(&to.domain().to_ascii_lowercase())
            .unwrap_or(&self.default)
    }
}

/// What `policy`'s route trusts and presents (falling back on `[email]`'s
/// files).
fn tls_files(cfg: &EmailConfig, policy: &DomainPolicy) -> Result<smtp::TlsFiles, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let roots = policy
        .tls_ca
        .as_deref()
        .or(cfg.tls_ca.as_deref())
        .map(read)
        .transpose()?;
    let identity = match (
        policy.client_cert.as_deref().or(cfg.client_cert.as_deref()),
        policy.client_key.as_deref().or(cfg.client_key.as_deref()),
    ) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        (None, None) => None,
        _ => return Err("client_cert and client_key go together".into()),
    };
    Ok(smtp::TlsFiles { roots, identity })
}

/// A pool for `url` under `policy` (which falls back on `[email]`'s files).
fn smtp_pool(
    cfg: &EmailConfig,
    url: &str,
    policy: &DomainPolicy,
) -> Result<smtp::SmtpPool, String> {
    let target = smtp::SmtpTarget::parse(url)?.with_policy(policy.tls);
    smtp::SmtpPool::new(target, cfg.timeout.0, &tls_files(cfg, policy)?)
}

pub struct EmailChannel {
    from: Mailbox,
    domain: String,
    routes: Routes,
    /// The operator's key: set, every mail is signed.
    signing: Option<OperatorKey>,
    /// Customers' keys, checked once per key rather than per mail.
    recipients: crate::pgp::RecipientKeys,
    /// Or the operator's S/MIME certificate and key.
    smime: Option<crate::smime::SmimeSigner>,
    /// DKIM signatures on every mail, outermost.
    dkim: Option<dkim::Dkim>,
}

/// Reads the operator's secret key (`[email] signing_key`), unlocked with
/// `signing_key_passphrase` when it is protected; `None` when none is set.
pub fn load_signing_key(cfg: &EmailConfig) -> anyhow::Result<Option<OperatorKey>> {
    let Some(path) = &cfg.signing_key else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("email.signing_key: cannot read {}: {e}", path.display()))?;
    let passphrase = cfg
        .signing_key_passphrase
        .as_ref()
        .map(|p| p.expose().as_str());
    OperatorKey::from_armored_with(&text, passphrase)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("email.signing_key: {}: {e}", path.display()))
}

impl EmailChannel {
    pub fn from_config(cfg: &EmailConfig) -> anyhow::Result<Self> {
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("email.from: {e}"))?;
        let domain = from.email.domain().to_string();
        let routes = Routes::from_config(cfg)?;
        let signing = load_signing_key(cfg)?;
        let smime = match (&cfg.smime_cert, &cfg.smime_key) {
            (Some(cert), Some(key)) => Some(crate::smime::SmimeSigner::load(cert, key)?),
            _ => None,
        };
        let dkim = cfg
            .dkim
            .as_ref()
            .map(|d| dkim::Dkim::load(d, &domain))
            .transpose()
            .map_err(|e| anyhow::anyhow!("email.dkim: {e}"))?;
        Ok(Self {
            dkim,
            from,
            domain,
            routes,
            signing,
            recipients: crate::pgp::RecipientKeys::new(),
            smime,
        })
    }

    /// The operator's key, when mail is signed.
    pub fn signing_key(&self) -> Option<&OperatorKey> {
        self.signing.as_ref()
    }

    /// The envelope and the bytes of the mail for `msg`: plain, signed, or
    /// signed and encrypted (see the module doc), and DKIM-signed when
    /// `[email.dkim]` is set.
    pub fn render(&self, msg: &Outgoing) -> Result<(Envelope, Vec<u8>), DeliveryError> {
        let (envelope, mail) = self.render_body(msg)?;
        match &self.dkim {
            Some(dkim) => {
                let mail = dkim.sign(mail).map_err(|detail| DeliveryError::Permanent {
                    reason: "dkim",
                    detail,
                })?;
                Ok((envelope, mail))
            }
            None => Ok((envelope, mail)),
        }
    }

    fn render_body(&self, msg: &Outgoing) -> Result<(Envelope, Vec<u8>), DeliveryError> {
        let n = &msg.notification;
        let to = self.to(msg)?;
        let envelope = Envelope::new(Some(self.from.email.clone()), vec![to.email.clone()])
            .map_err(|e| DeliveryError::Permanent {
                reason: "bad_address",
                detail: e.to_string(),
            })?;
        let thread = format!("<{}@{}>", thread_id(&n.account, &n.key), self.domain);
        let now = chrono::Utc::now();
        let headers = MailHeaders {
            from: self.from.clone(),
            to,
            subject: msg.rendered.subject.clone(),
            date: now,
            message_id: format!("<{}@{}>", n.id, self.domain),
            in_reply_to: Some(thread.clone()),
            references: Some(thread),
            auto_submitted: Some("auto-generated".into()),
        };
        let body = &msg.rendered.body;
        let bytes = match (&self.signing, &self.smime, &msg.recipient_key) {
            (Some(key), _, Some(recipient)) => self
                .recipients
                .get(recipient, now)
                .and_then(|r| crate::pgp::encrypted_mail_to(key, &r, &headers, body)),
            (Some(key), _, None) => crate::pgp::signed_mail(key, &headers, body),
            (None, _, Some(_)) => {
                return Err(DeliveryError::Permanent {
                    reason: "no_signing_key",
                    detail: "not sent (never in clear to a key holder): encrypted mail needs [email] signing_key".into(),
                });
            }
            (None, Some(smime), None) => {
                return smime
                    .signed_mail(&headers, body)
                    .map(|b| (envelope, b))
                    .map_err(|detail| DeliveryError::Permanent {
                        reason: "smime",
                        detail,
                    });
            }
            (None, None, None) => {
                let mail = self.build(msg)?;
                return Ok((mail.envelope().clone(), mail.formatted()));
            }
        }
        .map_err(|e| match e {
            PgpError::Recipient(refusal) => DeliveryError::Permanent {
                reason: "recipient_key_invalid",
                detail: format!("not sent (never in clear to a key holder): {refusal}"),
            },
            other => DeliveryError::Permanent {
                reason: "pgp",
                detail: other.to_string(),
            },
        })?;
        Ok((envelope, bytes))
    }

    fn to(&self, msg: &Outgoing) -> Result<Mailbox, DeliveryError> {
        let n = &msg.notification;
        n.uri
            .strip_prefix("mailto:")
            .unwrap_or(&n.uri)
            .parse()
            .map_err(|e| DeliveryError::Permanent {
                reason: "bad_address",
                detail: format!("{e}"),
            })
    }

    /// Builds the mail for `msg` (public for tests and `kci simulate`).
    pub fn build(&self, msg: &Outgoing) -> Result<Message, DeliveryError> {
        let n = &msg.notification;
        let to = self.to(msg)?;
        let thread = format!("<{}@{}>", thread_id(&n.account, &n.key), self.domain);
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(msg.rendered.subject.clone())
            .message_id(Some(format!("<{}@{}>", n.id, self.domain)))
            .in_reply_to(thread.clone())
            .references(thread)
            .header(AutoSubmitted)
            .header(ContentType::TEXT_PLAIN)
            .date_now()
            .body(msg.rendered.body.clone())
            .map_err(|e| DeliveryError::Permanent {
                reason: "build",
                detail: e.to_string(),
            })
    }
}

/// A stable, opaque id for the thread of one account's correlation key.
fn thread_id(account: &str, key: &str) -> String {
    let h = crate::model::sha256_hex(format!("{account}\u{1f}{key}").as_bytes());
    format!("kci-thread-{}", &h[..24])
}

#[async_trait]
impl Channel for EmailChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Email
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let (envelope, mail) = self.render(msg)?;
        let to = envelope.to().first().ok_or(DeliveryError::Permanent {
            reason: "bad_address",
            detail: "no recipient".into(),
        })?;
        let said = |resp: lettre::transport::smtp::response::Response| {
            let words = resp.message().collect::<Vec<_>>().join(" ");
            Receipt {
                detail: Some(format!("{} {}", resp.code(), words)),
                ..Default::default()
            }
        };
        match self.routes.for_recipient(to) {
            Transport::Smtp(pool) => Ok(said(pool.send(&envelope, &mail).await?)),
            Transport::Mx(tls) => {
                let direct = self
                    .routes
                    .direct
                    .as_ref()
                    .ok_or(DeliveryError::Permanent {
                        reason: "config",
                        detail: "an mx route without [email.mx]".into(),
                    })?;
                Ok(said(
                    direct.send(to.domain(), *tls, &envelope, &mail).await?,
                ))
            }
            Transport::Maildir(m) => {
                let name = m
                    .deliver(&mail)
                    .await
                    .map_err(|e| DeliveryError::Transient {
                        reason: "outbox",
                        detail: e.to_string(),
                        retry_after: None,
                    })?;
                Ok(Receipt {
                    detail: Some(format!("outbox {name}")),
                    ..Default::default()
                })
            }
        }
    }

    async fn healthcheck(&self) -> Result<(), String> {
        match &self.routes.default {
            Transport::Smtp(pool) => pool.check().await.map_err(|e| e.to_string())?,
            Transport::Maildir(m) => m.check()?,
            Transport::Mx(_) => {} // every domain its own hosts
        }
        for (domain, route) in &self.routes.domains {
            if let Transport::Smtp(pool) = route {
                pool.check()
                    .await
                    .map_err(|e| format!("route of {domain}: {e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::testkit::outgoing;

    fn channel(dir: &std::path::Path, key: Option<&str>) -> anyhow::Result<EmailChannel> {
        let mut cfg = EmailConfig {
            from: "NOC <noc@isp.example>".into(),
            outbox: dir.join("outbox"),
            ..Default::default()
        };
        if let Some(text) = key {
            let path = dir.join("operator.asc");
            std::fs::write(&path, text)?;
            cfg.signing_key = Some(path);
        }
        EmailChannel::from_config(&cfg)
    }

    fn outbox(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir.join("outbox/new"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn without_a_key_mail_is_plain_text() {
        let dir = tempfile::tempdir().unwrap();
        let ch = channel(dir.path(), None).unwrap();
        ch.deliver(&outgoing("mailto:carol@example.org", "down", "Line down"))
            .await
            .unwrap();
        let mail = &outbox(dir.path())[0];
        assert!(mail.contains("Content-Type: text/plain"), "{mail}");
        assert!(!mail.contains("Autocrypt"));
    }

    #[tokio::test]
    async fn with_a_key_every_mail_is_signed_and_keyed_mail_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let (operator, tsk) = OperatorKey::generate("NOC <noc@isp.example>", None).unwrap();
        let ch = channel(dir.path(), Some(&tsk)).unwrap();
        assert_eq!(
            ch.signing_key().unwrap().fingerprint(),
            operator.fingerprint()
        );

        ch.deliver(&outgoing("mailto:carol@example.org", "down", "Line down"))
            .await
            .unwrap();
        let (customer, _) = OperatorKey::generate("Dave <dave@example.org>", None).unwrap();
        let mut keyed = outgoing("mailto:dave@example.org", "down", "Line down");
        keyed.recipient_key = Some(customer.public_armored());
        ch.deliver(&keyed).await.unwrap();

        let mails = outbox(dir.path());
        let signed = mails
            .iter()
            .find(|m| m.contains("multipart/signed"))
            .unwrap();
        assert!(signed.contains("Subject: Line down\r\n"));
        assert!(signed.contains("Auto-Submitted: auto-generated\r\n"));
        assert!(signed.contains("Message-ID: <01a20000-0000-7000-8000-000000000001@isp.example>"));
        assert!(signed.contains("References: <kci-thread-"));
        assert!(signed.contains("Autocrypt: addr=noc@isp.example;"));
        let encrypted = mails
            .iter()
            .find(|m| m.contains("multipart/encrypted"))
            .unwrap();
        assert!(encrypted.contains("Subject: ...\r\n"));
        assert!(!encrypted.contains("Line down"));
        assert!(encrypted.contains("References: <kci-thread-"));
    }

    #[tokio::test]
    async fn a_key_no_longer_valid_fails_the_delivery_instead_of_sending_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let (_, tsk) = OperatorKey::generate("NOC <noc@isp.example>", None).unwrap();
        let ch = channel(dir.path(), Some(&tsk)).unwrap();
        // A key revoked since it was registered.
        use sequoia_openpgp::cert::prelude::*;
        use sequoia_openpgp::serialize::SerializeInto;
        let (cert, revocation) = CertBuilder::general_purpose(Some("olga@example.org"))
            .generate()
            .unwrap();
        let registered = String::from_utf8(cert.armored().to_vec().unwrap()).unwrap();
        crate::pgp::encryption_key_valid(&registered, chrono::Utc::now()).unwrap();
        let (revoked, _) = cert.insert_packets(revocation).unwrap();
        let revoked = String::from_utf8(revoked.armored().to_vec().unwrap()).unwrap();
        let mut msg = outgoing("mailto:olga@example.org", "down", "Line down");
        msg.recipient_key = Some(revoked);
        let e = ch.deliver(&msg).await.unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(e.reason(), "recipient_key_invalid");
        assert!(e.detail().contains("revoked"), "{e}");
        assert!(outbox(dir.path()).is_empty(), "nothing sent");
    }

    /// A TLS file kci cannot use stops it at startup, naming the setting.
    #[test]
    fn unusable_transport_settings_stop_startup_with_the_setting_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let base = EmailConfig {
            outbox: dir.path().join("outbox"),
            ..Default::default()
        };
        let smtp = Some(crate::model::Secret::new("smtp://127.0.0.1:25".to_string()));
        let cases = [
            (
                EmailConfig {
                    smtp: smtp.clone(),
                    tls_ca: Some(garbage.clone()),
                    ..base.clone()
                },
                "email.smtp: tls_ca",
            ),
            (
                EmailConfig {
                    smtp: smtp.clone(),
                    client_cert: Some(garbage.clone()),
                    ..base.clone()
                },
                "email.smtp: client_cert and client_key go together",
            ),
            (
                EmailConfig {
                    smtp: smtp.clone(),
                    client_cert: Some(garbage.clone()),
                    client_key: Some(garbage.clone()),
                    ..base.clone()
                },
                "email.smtp: client_cert/client_key",
            ),
            (
                EmailConfig {
                    domains: [("x.example".to_string(), DomainPolicy::default())].into(),
                    ..base.clone()
                },
                "email.domains.x.example: set its smtp",
            ),
            (
                EmailConfig {
                    smtp,
                    domains: [(
                        "x.example".to_string(),
                        DomainPolicy {
                            tls_ca: Some(dir.path().join("missing.pem")),
                            ..Default::default()
                        },
                    )]
                    .into(),
                    ..base.clone()
                },
                "email.domains.x.example: cannot read",
            ),
        ];
        for (cfg, named) in cases {
            let e = EmailChannel::from_config(&cfg).err().unwrap().to_string();
            assert!(e.starts_with(named), "{named}: {e}");
        }
    }

    /// A protected operator key with its passphrase from a file named in
    /// the config (`signing_key_passphrase_file`): kci signs; without the
    /// passphrase it refuses to start, saying what to give.
    #[test]
    fn a_protected_signing_key_is_unlocked_by_its_passphrase_file() {
        let dir = tempfile::tempdir().unwrap();
        let (key, tsk) = OperatorKey::generate_protected(
            "NOC <noc@isp.example>",
            None,
            Some("a long enough passphrase"),
        )
        .unwrap();
        let (key_path, pass_path) = (dir.path().join("op.asc"), dir.path().join("pass"));
        std::fs::write(&key_path, tsk).unwrap();
        std::fs::write(&pass_path, "a long enough passphrase\n").unwrap();
        let config = |extra: &str| {
            crate::config::Config::parse(
                &format!(
                    "[email]\nsigning_key = \"{}\"\noutbox = \"{}\"\n{extra}",
                    key_path.display(),
                    dir.path().join("outbox").display()
                ),
                "test.toml",
            )
            .unwrap()
        };
        let cfg = config(&format!(
            "signing_key_passphrase_file = \"{}\"\n",
            pass_path.display()
        ));
        let ch = EmailChannel::from_config(&cfg.email).unwrap();
        assert_eq!(ch.signing_key().unwrap().fingerprint(), key.fingerprint());
        let e = EmailChannel::from_config(&config("").email)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("signing_key_passphrase_file"), "{e}");
    }

    #[test]
    fn unusable_signing_keys_stop_startup_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EmailConfig {
            outbox: dir.path().join("outbox"),
            signing_key: Some(dir.path().join("missing.asc")),
            ..Default::default()
        };
        let e = EmailChannel::from_config(&cfg).err().unwrap().to_string();
        assert!(e.starts_with("email.signing_key: cannot read"), "{e}");
        let (key, _) = OperatorKey::generate("NOC <noc@isp.example>", None).unwrap();
        let public = dir.path().join("public.asc");
        std::fs::write(&public, key.public_armored()).unwrap();
        cfg.signing_key = Some(public);
        let e = EmailChannel::from_config(&cfg).err().unwrap().to_string();
        assert!(
            e.contains("email.signing_key") && e.contains("public key"),
            "{e}"
        );
    }
}
