//! `[channels.*]`: each channel's settings and provider credentials, the
//! webhook channel's own here, the others beside their channels.

use crate::model::{Secret, Span};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    /// Webhook deliveries (`https://…` destinations).
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// Mail (the transport itself is configured under `[email]`).
    #[serde(default)]
    pub email: ChannelLimits,
    /// SMS through an HTTP gateway or Twilio; enabled when one is set.
    #[serde(default)]
    pub sms: crate::channels::sms::SmsConfig,
    /// Pushover; present means enabled.
    #[serde(default)]
    pub pushover: Option<crate::channels::pushover::PushoverConfig>,
    /// ntfy; present means enabled.
    #[serde(default)]
    pub ntfy: Option<crate::channels::ntfy::NtfyConfig>,
    /// Telegram; present means enabled.
    #[serde(default)]
    pub telegram: Option<crate::channels::telegram::TelegramConfig>,
    /// Signal through a signal-cli REST API; present means enabled.
    #[serde(default)]
    pub signal: Option<crate::channels::signal::SignalConfig>,
    /// Matrix; present means enabled.
    #[serde(default)]
    pub matrix: Option<crate::channels::matrix::MatrixConfig>,
    /// An apprise-api server, for the operator's own notices to any of
    /// Apprise's services (`apprise:<tag>` destinations); present means enabled.
    #[serde(default)]
    pub apprise: Option<crate::channels::apprise::AppriseConfig>,
    /// Letters on paper (`postal:account` destinations), to a spool
    /// directory or a print-and-post service; present means enabled.
    #[serde(default)]
    pub letter: Option<crate::channels::letter::LetterConfig>,
    /// X direct messages (`x:` destinations); present means enabled.
    #[serde(default)]
    pub x: Option<crate::channels::x::XConfig>,
    /// WhatsApp through the Business Cloud API (`whatsapp:` destinations);
    /// present means enabled.
    #[serde(default)]
    pub whatsapp: Option<crate::channels::whatsapp::WhatsAppConfig>,
}

impl ChannelsConfig {
    /// The provider rate limit of a channel, if one is set.
    pub fn rate(&self, kind: crate::model::ChannelKind) -> Option<crate::model::Cap> {
        use crate::model::ChannelKind::*;
        match kind {
            Email => self.email.rate,
            Sms => self.sms.rate,
            Webhook => self.webhook.rate,
            Matrix => self.matrix.as_ref().and_then(|c| c.rate),
            Pushover => self.pushover.as_ref().and_then(|c| c.rate),
            Ntfy => self.ntfy.as_ref().and_then(|c| c.rate),
            Telegram => self.telegram.as_ref().and_then(|c| c.rate),
            Signal => self.signal.as_ref().and_then(|c| c.rate),
            Apprise => self.apprise.as_ref().and_then(|c| c.rate),
            Letter => self.letter.as_ref().and_then(|c| c.rate),
            X => self.x.as_ref().and_then(|c| c.rate),
            WhatsApp => self.whatsapp.as_ref().and_then(|c| c.rate),
        }
    }
}

/// Limits that apply to a whole channel.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelLimits {
    /// The provider's rate limit, such as `10/s`: notices beyond it wait in
    /// the queue (urgent first), never dropped.
    #[serde(default)]
    pub rate: Option<crate::model::Cap>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Standard Webhooks signing secret, `whsec_` followed by base64.
    #[serde(default)]
    pub secret: Option<Secret<String>>,
    /// Allow plain `http://` to hosts other than loopback.
    #[serde(default)]
    pub allow_http: bool,
    /// Allow webhooks to loopback, private, link-local, unique-local and
    /// other non-public addresses (the hub's own network). Off: such a
    /// destination is refused when created, and delivery never connects
    /// to one, whatever its name resolves to by then.
    #[serde(default)]
    pub allow_private: bool,
    /// Give up on one request after this long.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: Span,
    /// The receivers' rate limit, such as `50/s`.
    #[serde(default)]
    pub rate: Option<crate::model::Cap>,
    /// How long a destination's previous signing secret stays valid after
    /// a rotation, so its receiver can switch over.
    #[serde(default = "default_rotation_overlap")]
    pub rotation_overlap: Span,
}

fn default_rotation_overlap() -> Span {
    Span(std::time::Duration::from_secs(24 * 3600))
}

fn default_webhook_timeout() -> Span {
    Span(std::time::Duration::from_secs(10))
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            secret: None,
            allow_http: false,
            allow_private: false,
            timeout: default_webhook_timeout(),
            rate: None,
            rotation_overlap: default_rotation_overlap(),
        }
    }
}
