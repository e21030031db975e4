//! Delivery: one `Channel` trait, one folder per channel. Channels only talk
//! to their provider and classify failures; retrying, backoff and recording
//! live in `schedule`, in one place.

pub mod apprise;
mod config;
mod credentials;
pub mod email;
pub mod http;
pub mod letter;
pub mod matrix;
pub mod ntfy;
pub mod pushover;
pub mod recording;
#[cfg(test)]
mod retry_table;
pub mod signal;
pub mod sms;
pub mod telegram;
#[cfg(test)]
pub mod testkit;
pub mod webhook;
pub mod whatsapp;
pub mod x;

use crate::model::Notification;
use crate::model::{ChannelKind, Event};
use crate::text::Rendered;
use async_trait::async_trait;
pub use config::{ChannelLimits, ChannelsConfig, WebhookConfig};
pub use credentials::{CredentialStore, CredentialStoreError, StoredCredential};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Everything a channel needs to deliver one notification.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub notification: Notification,
    pub event: Option<Event>,
    pub rendered: Rendered,
    /// The destination's own signing secrets (webhooks), current first;
    /// during a rotation the previous one too.
    pub secrets: Vec<crate::model::Secret<String>>,
    /// Whether the channel's own secret signs too (a destination without
    /// secrets of its own, or in the overlap of its first).
    pub channel_secret: bool,
    /// Mail: the armored OpenPGP key registered as active for the
    /// destination's address, if any; the mail is then signed and
    /// encrypted to it, or not sent at all (never in clear).
    pub recipient_key: Option<String>,
    /// A letter's: the account's postal address as it is now.
    pub postal_address: Option<crate::model::PostalAddress>,
}

impl Outgoing {
    /// The text for channels that carry one short message: the short form,
    /// or the subject when there is none.
    pub fn text(&self) -> String {
        self.rendered
            .short
            .clone()
            .unwrap_or_else(|| self.rendered.subject.clone())
    }

    /// The destination without its scheme (`+447700900123` of `signal:+447700900123`).
    pub fn address(&self) -> &str {
        let uri = &self.notification.uri;
        uri.split_once(':').map_or(uri.as_str(), |(_, rest)| rest)
    }
}

pub use crate::model::{MAX_DETAIL, Receipt, Report, delivery_excerpt as excerpt};

/// A failed delivery, classified so the scheduler knows what to do next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth trying again later (timeouts, 5xx, 429, connection refused).
    #[error("{reason}: {detail}")]
    Transient {
        reason: &'static str,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// Will never work as it is (bad address, 4xx, refused by the provider).
    #[error("{reason}: {detail}")]
    Permanent {
        reason: &'static str,
        detail: String,
    },
}

impl DeliveryError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DeliveryError::Transient { .. })
    }

    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }

    /// The provider asked to slow down (HTTP 429 and its kin): pacing, not
    /// failure.
    pub fn is_pacing(&self) -> bool {
        matches!(
            self,
            DeliveryError::Transient {
                reason: "rate_limited",
                ..
            }
        )
    }

    /// How long the provider asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Transient { retry_after, .. } => *retry_after,
            DeliveryError::Permanent { .. } => None,
        }
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DeliveryError::Transient { reason, .. } | DeliveryError::Permanent { reason, .. } => {
                reason
            }
        }
    }

    /// The same failure in other words (the provider's own, say).
    pub fn with_detail(self, words: String) -> Self {
        match self {
            DeliveryError::Transient {
                reason,
                retry_after,
                ..
            } => DeliveryError::Transient {
                reason,
                detail: words,
                retry_after,
            },
            DeliveryError::Permanent { reason, .. } => DeliveryError::Permanent {
                reason,
                detail: words,
            },
        }
    }

    /// The same error asking to wait exactly `after` (where a channel
    /// knows better than the `Retry-After` header, see matrix).
    pub fn retry_after_exactly(self, after: Option<Duration>) -> Self {
        match self {
            DeliveryError::Transient { reason, detail, .. } => DeliveryError::Transient {
                reason,
                detail,
                retry_after: after,
            },
            permanent => permanent,
        }
    }

    /// A transient failure told (again) when to come back: when a provider
    /// gives two hints (a `Retry-After` header and its own field in the
    /// body), the later one stands, so kci never returns before either
    /// allows. A permanent failure stays as it is.
    pub fn with_retry_after(self, after: Option<Duration>) -> Self {
        match self {
            DeliveryError::Transient {
                reason,
                detail,
                retry_after,
            } => DeliveryError::Transient {
                reason,
                detail,
                retry_after: match (retry_after, after) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                },
            },
            permanent => permanent,
        }
    }

    /// The provider's own words (in full: the store keeps an
    /// [`excerpt`]).
    pub fn detail(&self) -> &str {
        match self {
            DeliveryError::Transient { detail, .. } | DeliveryError::Permanent { detail, .. } => {
                detail
            }
        }
    }
}

#[async_trait]
pub trait Channel: Send + Sync {
    fn kind(&self) -> ChannelKind;
    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError>;
    /// Checks with the provider, when a destination is created, what can
    /// be known then (an unknown chat, a bad user key): a permanent error
    /// refuses the destination with the provider's words; a transient one
    /// lets it through (delivery will tell).
    async fn check_destination(
        &self,
        _uri: &crate::model::DestinationUri,
    ) -> Result<(), DeliveryError> {
        Ok(())
    }

    /// The lasting form of a destination, asked of the provider once when
    /// it is created: a name the customer can change (an X `@handle`)
    /// becomes the provider's id, which is what is stored. A permanent
    /// error refuses the destination with the provider's words; a
    /// transient one refuses it for now (nothing lasting to store yet).
    /// Most channels store what they are given.
    async fn resolve_destination(
        &self,
        uri: &crate::model::DestinationUri,
    ) -> Result<crate::model::DestinationUri, DeliveryError> {
        Ok(uri.clone())
    }

    /// Asks the provider about a message it accepted with
    /// [`Receipt::awaiting`]; `Ok(None)` while it has nothing final to say.
    async fn poll_receipt(&self, _provider_ref: &str) -> Result<Option<Report>, DeliveryError> {
        Ok(None)
    }

    /// Whether the provider is reachable, for `/healthz`.
    async fn healthcheck(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod excerpt_tests {
    use super::*;

    #[test]
    fn excerpts_are_short_and_cut_on_characters() {
        assert_eq!(excerpt("HTTP 200 ok"), "HTTP 200 ok");
        let exact = "é".repeat(MAX_DETAIL);
        assert_eq!(excerpt(&exact), exact);
        let long = "é".repeat(MAX_DETAIL + 1);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), MAX_DETAIL);
        assert!(cut.ends_with('…'));
        assert!(long.starts_with(cut.trim_end_matches('…')));
        assert_eq!(excerpt(""), "");
    }
}

/// The channels a node delivers through, by kind.
#[derive(Clone, Default)]
pub struct Channels(HashMap<ChannelKind, Arc<dyn Channel>>);

impl Channels {
    pub fn insert(&mut self, channel: Arc<dyn Channel>) {
        self.0.insert(channel.kind(), channel);
    }

    pub fn get(&self, kind: ChannelKind) -> Option<&Arc<dyn Channel>> {
        self.0.get(&kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = ChannelKind> + '_ {
        self.0.keys().copied()
    }

    /// The channels a server runs with, from config. `keep` is where a
    /// channel keeps a credential its provider rotates (X's refresh token):
    /// `kci serve` passes its store; commands that only look at which
    /// channels exist or check their health pass `None`, and such an X
    /// channel never refreshes (it cannot keep what X hands back).
    pub fn from_config(
        config: &ChannelsConfig,
        mail: &email::EmailConfig,
        keep: Option<Keep>,
    ) -> anyhow::Result<Channels> {
        let mut channels = Channels::default();
        channels.insert(Arc::new(email::EmailChannel::from_config(mail)?));
        channels.insert(Arc::new(webhook::WebhookChannel::from_config(
            &config.webhook,
        )?));
        if let Some(sms) = sms::SmsChannel::from_config(&config.sms)? {
            channels.insert(Arc::new(sms));
        }
        if let Some(c) = &config.ntfy {
            channels.insert(Arc::new(ntfy::NtfyChannel::from_config(c)?));
        }
        if let Some(c) = &config.telegram {
            channels.insert(Arc::new(telegram::TelegramChannel::from_config(c)?));
        }
        if let Some(c) = &config.pushover {
            channels.insert(Arc::new(pushover::PushoverChannel::from_config(c)?));
        }
        if let Some(c) = &config.signal {
            channels.insert(Arc::new(signal::SignalChannel::from_config(c)?));
        }
        if let Some(c) = &config.matrix {
            channels.insert(Arc::new(matrix::MatrixChannel::from_config(c)?));
        }
        if let Some(c) = &config.apprise {
            channels.insert(Arc::new(apprise::AppriseChannel::from_config(c)?));
        }
        if let Some(c) = &config.letter {
            channels.insert(Arc::new(letter::LetterChannel::from_config(
                c,
                mail.sender_name(),
            )?));
        }
        if let Some(c) = &config.x {
            channels.insert(Arc::new(x::XChannel::from_config(c, keep)?));
        }
        if let Some(c) = &config.whatsapp {
            channels.insert(Arc::new(whatsapp::WhatsAppChannel::from_config(c)?));
        }
        Ok(channels)
    }
}

/// Where a channel keeps a credential its provider rotates: the store, and
/// the code key the sealing key is derived from (`trust::seal`).
#[derive(Clone)]
pub struct Keep {
    pub store: Arc<dyn CredentialStore>,
    pub code_key: crate::trust::codes::CodeKey,
}
