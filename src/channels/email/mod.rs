//! Email: over SMTP when `[email] smtp` is set (lettre, STARTTLS when the
//! server offers it), otherwise into a local Maildir outbox that `mutt -f`
//! can open. Every mail carries `Auto-Submitted: auto-generated`, a stable
//! `Message-ID` per notification (so a retry after a crash is recognisably
//! the same mail), and threading headers per correlation key.

mod maildir;
mod smtp;

use super::{Channel, DeliveryError, Outgoing, Receipt};
use crate::config::EmailConfig;
use crate::model::ChannelKind;
use async_trait::async_trait;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use std::path::PathBuf;

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
    Maildir(maildir::Maildir),
}

pub struct EmailChannel {
    from: Mailbox,
    domain: String,
    transport: Transport,
}

impl EmailChannel {
    pub fn from_config(cfg: &EmailConfig) -> anyhow::Result<Self> {
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("email.from: {e}"))?;
        let domain = from.email.domain().to_string();
        let transport = match &cfg.smtp {
            Some(url) => {
                let target = smtp::SmtpTarget::parse(url.expose())
                    .map_err(|e| anyhow::anyhow!("email.smtp: {e}"))?;
                Transport::Smtp(smtp::SmtpPool::new(target, cfg.timeout.0))
            }
            None => Transport::Maildir(maildir::Maildir::create(PathBuf::from(&cfg.outbox))?),
        };
        Ok(Self {
            from,
            domain,
            transport,
        })
    }

    /// Builds the mail for `msg` (public for tests and `kci simulate`).
    pub fn build(&self, msg: &Outgoing) -> Result<Message, DeliveryError> {
        let n = &msg.notification;
        let to: Mailbox = n
            .uri
            .strip_prefix("mailto:")
            .unwrap_or(&n.uri)
            .parse()
            .map_err(|e| DeliveryError::Permanent {
                reason: "bad_address",
                detail: format!("{e}"),
            })?;
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
    let h = crate::store::sha256_hex(format!("{account}\u{1f}{key}").as_bytes());
    format!("kci-thread-{}", &h[..24])
}

#[async_trait]
impl Channel for EmailChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Email
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let mail = self.build(msg)?;
        match &self.transport {
            Transport::Smtp(pool) => {
                let resp = pool.send(mail.envelope(), &mail.formatted()).await?;
                let words = resp.message().collect::<Vec<_>>().join(" ");
                Ok(Receipt {
                    detail: Some(format!("{} {}", resp.code(), words)),
                    ..Default::default()
                })
            }
            Transport::Maildir(m) => {
                let name =
                    m.deliver(&mail.formatted())
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
        match &self.transport {
            Transport::Smtp(pool) => pool.check().await.map_err(|e| e.to_string()),
            Transport::Maildir(m) => m.check(),
        }
    }
}
