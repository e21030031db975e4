//! `[email]`: the sender, the SMTP server or the Maildir outbox, and what
//! signs every mail.

use crate::model::{Secret, Span};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The sender, `Name <address>`.
    #[serde(default = "default_from")]
    pub from: String,
    /// SMTP server in lettre URL syntax (`smtp://host:587`, `smtps://…`);
    /// STARTTLS is used when offered unless the URL sets `tls=`. Absent: mail
    /// goes to the Maildir outbox instead. Secret: it may carry a password.
    #[serde(default)]
    pub smtp: Option<Secret<String>>,
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
    /// The operator's S/MIME certificate (PEM, intermediates after it), for
    /// operators without an OpenPGP key: every mail is then S/MIME signed.
    #[serde(default)]
    pub smime_cert: Option<PathBuf>,
    /// Its private key (PEM, unencrypted; keep the file 0600).
    #[serde(default)]
    pub smime_key: Option<PathBuf>,
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
            outbox: default_outbox(),
            timeout: default_timeout(),
            signing_key: None,
            smime_cert: None,
            smime_key: None,
        }
    }
}
