//! SMS (`sms:+447700900123` destinations, E.164) through one of two
//! providers, chosen in config:
//!
//! * `[channels.sms.http]`: a generic HTTP gateway — method, URL, form,
//!   JSON or query fields rendered from templates, an auth header, and a
//!   success rule — enough for most UK/EU gateways ([`gateway`]);
//! * `[channels.sms.twilio]`: Twilio's Messages API, with a validity period
//!   so a stale text also expires in Twilio's queue, and delivery reports
//!   asked for until final ([`twilio`]).
//!
//! Either way the text is fitted to `max_segments` (per type, else the
//! channel's) before it goes out, and the segments billed are recorded.

pub mod gateway;
pub mod twilio;

use super::{Channel, DeliveryError, Outgoing, Receipt, Report};
use crate::model::{Cap, ChannelKind};
use async_trait::async_trait;
use serde::Deserialize;

/// `[channels.sms]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// The provider's rate limit, such as `10/s`.
    #[serde(default)]
    pub rate: Option<Cap>,
    /// Longest text in segments (parts billed); a longer one is cut to fit.
    /// A type's own `max_segments` wins.
    #[serde(default = "default_max_segments")]
    pub max_segments: usize,
    /// A generic HTTP gateway.
    #[serde(default)]
    pub http: Option<gateway::GatewayConfig>,
    /// Twilio's Messages API.
    #[serde(default)]
    pub twilio: Option<twilio::TwilioConfig>,
}

fn default_max_segments() -> usize {
    3
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            rate: None,
            max_segments: default_max_segments(),
            http: None,
            twilio: None,
        }
    }
}

impl SmsConfig {
    /// Config errors as (key, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.http.is_some() && self.twilio.is_some() {
            return Err((
                "channels.sms".into(),
                "configure one provider: [channels.sms.http] or [channels.sms.twilio], not both"
                    .into(),
            ));
        }
        if !(1..=10).contains(&self.max_segments) {
            return Err((
                "channels.sms.max_segments".into(),
                format!("{} is not between 1 and 10", self.max_segments),
            ));
        }
        if let Some(g) = &self.http {
            g.validate()
                .map_err(|(k, m)| (format!("channels.sms.http.{k}"), m))?;
        }
        if let Some(t) = &self.twilio {
            t.validate()
                .map_err(|(k, m)| (format!("channels.sms.twilio.{k}"), m))?;
        }
        Ok(())
    }

    /// Whether a provider is configured.
    pub fn enabled(&self) -> bool {
        self.http.is_some() || self.twilio.is_some()
    }
}

/// The SMS channel over whichever provider is configured.
pub struct SmsChannel {
    provider: Provider,
}

enum Provider {
    Gateway(gateway::Gateway),
    Twilio(twilio::Twilio),
}

impl SmsChannel {
    /// `None` when no provider is configured.
    pub fn from_config(cfg: &SmsConfig) -> anyhow::Result<Option<Self>> {
        let provider = match (&cfg.http, &cfg.twilio) {
            (Some(g), _) => Provider::Gateway(gateway::Gateway::from_config(g)?),
            (None, Some(t)) => Provider::Twilio(twilio::Twilio::from_config(t)?),
            (None, None) => return Ok(None),
        };
        Ok(Some(Self { provider }))
    }
}

/// The number a notice goes to, checked again at delivery (the store may
/// hold a destination from before a stricter rule).
fn number(msg: &Outgoing) -> Result<&str, DeliveryError> {
    let to = msg.address();
    crate::model::parse_e164(to).map_err(|e| DeliveryError::Permanent {
        reason: "bad_number",
        detail: e.0,
    })?;
    Ok(to)
}

#[async_trait]
impl Channel for SmsChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Sms
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        let to = number(msg)?;
        let text = msg.text();
        let segments = crate::text::sms::segments(&text);
        let mut receipt = match &self.provider {
            Provider::Gateway(g) => g.send(msg, to, &text, segments).await?,
            Provider::Twilio(t) => t.send(msg, to, &text).await?,
        };
        // The provider's count where it gave one, else ours.
        receipt.segments = receipt.segments.or(u32::try_from(segments.count).ok());
        Ok(receipt)
    }

    async fn poll_receipt(&self, provider_ref: &str) -> Result<Option<Report>, DeliveryError> {
        match &self.provider {
            Provider::Gateway(_) => Ok(None),
            Provider::Twilio(t) => t.status(provider_ref).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_provider_and_a_sane_maximum() {
        let both: SmsConfig = toml::from_str(
            "[http]\nurl = \"https://gw.example/send\"\n[http.fields]\nto = \"{{ to }}\"\ntext = \"{{ text }}\"\n\
             [twilio]\naccount_sid = \"AC00000000000000000000000000000000\"\nauth_token = \"t\"\nfrom = \"+447700900000\"\n",
        )
        .unwrap();
        assert_eq!(both.validate().unwrap_err().0, "channels.sms");
        let zero: SmsConfig = toml::from_str("max_segments = 0").unwrap();
        assert_eq!(zero.validate().unwrap_err().0, "channels.sms.max_segments");
        assert!(!SmsConfig::default().enabled());
    }
}
