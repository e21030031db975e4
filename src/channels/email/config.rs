//! `[email]`: the sender, the SMTP server or the Maildir outbox, and what
//! signs every mail.

use crate::model::{Secret, Span};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The sender, `Name <address>`.
    #[serde(default = "default_from")]
    pub from: String,
    /// SMTP server in lettre URL syntax (`smtp://host:587`, `smtps://…`),
    /// or `mx`: straight to each recipient domain's MX hosts, honouring
    /// their MTA-STS policies (`[email.mx]`).
    /// TLS is required by default, with the server's certificate verified:
    /// STARTTLS, or refused with reason `tls_required`; `?tls=opportunistic`
    /// or `?tls=none` in the URL, or a domain's `tls`, allow less. Absent:
    /// mail goes to the Maildir outbox instead. Secret: it may carry a
    /// password.
    #[serde(default)]
    pub smtp: Option<Secret<String>>,
    /// Extra roots (PEM) trusted for SMTP servers' certificates, besides
    /// the web's (a relay with a private CA).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM, chain) kci presents to SMTP servers that
    /// ask for one, with its key (`client_key`, PEM, keep it 0600).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Per recipient domain (`[email.domains."partner.example"]`): where its
    /// mail goes and how it is secured.
    #[serde(default)]
    pub domains: BTreeMap<String, DomainPolicy>,
    /// Delivery to recipients' MX hosts, where `smtp = "mx"`.
    #[serde(default)]
    pub mx: MxConfig,
    /// The Maildir written when no SMTP server is configured.
    #[serde(default = "default_outbox")]
    pub outbox: PathBuf,
    /// Give up on one SMTP conversation after this long.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// The operator's OpenPGP secret key (a file made by `kci keys
    /// generate`; its content is secret, keep it mode 0600). Set: every
    /// mail is signed (PGP/MIME) and mail to an address with an active key
    /// is encrypted too. Read at startup; kci refuses to start if it
    /// cannot use it.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// The passphrase of a protected `signing_key`: give it as
    /// `signing_key_passphrase_file` (a file, or a systemd credential's
    /// name), never in the config in clear.
    #[serde(default)]
    pub signing_key_passphrase: Option<Secret<String>>,
    /// The operator's S/MIME certificate (PEM, intermediates after it), for
    /// operators without an OpenPGP key: every mail is then S/MIME signed.
    #[serde(default)]
    pub smime_cert: Option<PathBuf>,
    /// Its private key (PEM, unencrypted; keep the file 0600).
    #[serde(default)]
    pub smime_key: Option<PathBuf>,
    /// DKIM: every mail signed for the sender's domain with each selector.
    #[serde(default)]
    pub dkim: Option<super::dkim::DkimConfig>,
}

/// How mail to one recipient domain leaves: its own route (a partner's MTA)
/// or `[email] smtp`, and its own transport security.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainPolicy {
    /// This domain's mail goes to this server instead of `[email] smtp`
    /// (`mx`: to the domain's own MX hosts).
    #[serde(default)]
    pub smtp: Option<Secret<String>>,
    /// Overrides the route's `tls`: `required`, `opportunistic` (clear when
    /// the server offers no STARTTLS) or `none`.
    #[serde(default)]
    pub tls: Option<TlsPolicy>,
    /// As `[email] tls_ca`, `client_cert` and `client_key`, for this
    /// domain's route (default: those of `[email]`).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// `[email.mx]`: how kci reaches recipients' MX hosts itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MxConfig {
    /// The transport policy where a domain has none of its own (an MTA-STS
    /// policy in `enforce` mode always requires verified TLS).
    #[serde(default = "required")]
    pub tls: TlsPolicy,
    /// The name kci says in EHLO; default: the domain of `from`.
    #[serde(default)]
    pub helo: Option<String>,
    /// DNS servers (`ip:port`) instead of the system's.
    #[serde(default)]
    pub nameservers: Vec<std::net::SocketAddr>,
    /// The SMTP port of MX hosts (25; another only in a lab).
    #[serde(default = "smtp_port")]
    pub port: u16,
    /// The HTTPS port MTA-STS policies are fetched from (443; another
    /// only in a lab).
    #[serde(default = "https_port")]
    pub https_port: u16,
}

fn required() -> TlsPolicy {
    TlsPolicy::Required
}
fn smtp_port() -> u16 {
    25
}
fn https_port() -> u16 {
    443
}

impl Default for MxConfig {
    fn default() -> Self {
        MxConfig {
            tls: required(),
            helo: None,
            nameservers: Vec::new(),
            port: smtp_port(),
            https_port: https_port(),
        }
    }
}

/// Whether a connection must be encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// STARTTLS with a verified certificate, or not sent.
    Required,
    /// STARTTLS when offered, else in clear.
    Opportunistic,
    /// Never STARTTLS (a relay on the same host).
    None,
}

impl EmailConfig {
    /// Who kci's mails come from, as people read it: the display name of
    /// `from` (`Example ISP`), else all of it.
    pub fn sender_name(&self) -> &str {
        self.from
            .split('<')
            .next()
            .map(|s| s.trim().trim_matches('"').trim())
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.from)
    }
}

fn default_from() -> String {
    "kci <kci@localhost>".into()
}

fn default_outbox() -> PathBuf {
    PathBuf::from("kci-data/outbox")
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(30))
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            from: default_from(),
            smtp: None,
            tls_ca: None,
            client_cert: None,
            client_key: None,
            domains: BTreeMap::new(),
            mx: MxConfig::default(),
            outbox: default_outbox(),
            timeout: default_timeout(),
            signing_key: None,
            signing_key_passphrase: None,
            smime_cert: None,
            smime_key: None,
            dkim: None,
        }
    }
}
