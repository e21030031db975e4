//! Destination URIs (DESIGN.md §2, contract): standard schemes where one
//! exists, a short `scheme:value` form for services without one.

use super::ParseError;
use serde::{Serialize, Serializer};
use std::fmt;

/// The channel a destination is delivered through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelKind {
    Email,
    Sms,
    Webhook,
    Matrix,
    Pushover,
    Ntfy,
    Telegram,
    Signal,
    Apprise,
    /// A letter on paper, to the account's postal address.
    Letter,
    /// X (formerly Twitter) direct messages.
    X,
    /// WhatsApp through the Business Cloud API.
    WhatsApp,
}

impl ChannelKind {
    /// Every channel kind, for the places that set up one thing per kind
    /// (rate limiters, the simulator's recorders, reading a stored kind).
    pub const ALL: [ChannelKind; 12] = [
        ChannelKind::Email,
        ChannelKind::Sms,
        ChannelKind::Webhook,
        ChannelKind::Matrix,
        ChannelKind::Pushover,
        ChannelKind::Ntfy,
        ChannelKind::Telegram,
        ChannelKind::Signal,
        ChannelKind::Apprise,
        ChannelKind::Letter,
        ChannelKind::X,
        ChannelKind::WhatsApp,
    ];

    /// Whether the channel carries only a short text (SMS, push, chat), so
    /// a notice without a short form cannot go there. Apprise carries a
    /// title and a body and fits the body to each service itself, so it
    /// takes the long form, as mail does; so does a letter.
    pub fn needs_short(self) -> bool {
        !matches!(
            self,
            ChannelKind::Email | ChannelKind::Webhook | ChannelKind::Apprise | ChannelKind::Letter
        )
    }

    /// Whether every notice of the channel goes to one provider, whose
    /// "wait" speaks for all of them. Not webhooks (each destination its
    /// own server, and a customer's own: one must not hold up the others)
    /// nor mail (a relay, or each domain's own MX hosts).
    pub fn one_provider(self) -> bool {
        !matches!(self, ChannelKind::Email | ChannelKind::Webhook)
    }

    /// Whether the receiver drops a delivery sent again (Standard
    /// Webhooks' `webhook-id` is the notice's own, the same on every
    /// try): a delivery then gives its slot back as soon as the receiver
    /// answered, before its outcome is written, since a crash in between
    /// costs the customer nothing. Elsewhere a repeat reaches a person (a
    /// second text, a second mail), so the slot is held until the outcome
    /// is written and a crash repeats at most a lane's slots.
    pub fn drops_repeats(self) -> bool {
        matches!(self, ChannelKind::Webhook)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Email => "email",
            ChannelKind::Sms => "sms",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Matrix => "matrix",
            ChannelKind::Pushover => "pushover",
            ChannelKind::Ntfy => "ntfy",
            ChannelKind::Telegram => "telegram",
            ChannelKind::Signal => "signal",
            ChannelKind::Apprise => "apprise",
            ChannelKind::Letter => "letter",
            ChannelKind::X => "x",
            ChannelKind::WhatsApp => "whatsapp",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed, valid destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationUri {
    /// `mailto:alice@example.com` (RFC 6068, a single address, no headers).
    Mailto(super::EmailAddr),
    /// `sms:+447700900123` (RFC 5724, E.164).
    Sms(String),
    /// `https://…`, or `http://…` where the webhook channel allows it.
    Webhook(url::Url),
    /// `matrix:r/room:example.org` or `matrix:roomid/…`.
    Matrix(String),
    Pushover(String),
    Ntfy(String),
    Telegram(String),
    /// `signal:+447700900123`.
    Signal(String),
    /// `apprise:<tag>`: the operator's Apprise services carrying that tag
    /// (`apprise:all` for every one of them, Apprise's own word for it).
    Apprise(String),
    /// `postal:account`: a letter to the account's postal address (which
    /// lives on the account, so nothing else follows the scheme).
    Postal,
    /// `x:<numeric user id>`, or `x:@handle` as given (resolved to the id
    /// when the destination is created, so what is stored is the id).
    X(XUser),
    /// `whatsapp:+447700900123` (E.164).
    WhatsApp(String),
}

/// Whom an `x:` destination names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XUser {
    /// X's numeric user id (what direct messages are addressed to).
    Id(String),
    /// `@handle`, without the `@`: only until it is resolved.
    Handle(String),
}

impl XUser {
    /// An X user id: 1 to 19 digits (a 64-bit number), not starting with 0.
    pub fn parse_id(s: &str) -> Result<XUser, ParseError> {
        let ok = (1..=19).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_digit())
            && !s.starts_with('0')
            && s.parse::<u64>().is_ok();
        if ok {
            Ok(XUser::Id(s.to_string()))
        } else {
            Err(ParseError::new(format!(
                "`x:{s}` is neither a numeric X user id nor an @handle"
            )))
        }
    }

    /// An X handle: 1 to 15 letters, digits and `_` (X's rule for usernames).
    pub fn parse_handle(s: &str) -> Result<XUser, ParseError> {
        let ok = (1..=15).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(XUser::Handle(s.to_string()))
        } else {
            Err(ParseError::new(format!(
                "`@{s}` is not an X handle (1 to 15 letters, digits and _)"
            )))
        }
    }
}

impl DestinationUri {
    pub fn channel(&self) -> ChannelKind {
        match self {
            DestinationUri::Mailto(_) => ChannelKind::Email,
            DestinationUri::Sms(_) => ChannelKind::Sms,
            DestinationUri::Webhook(_) => ChannelKind::Webhook,
            DestinationUri::Matrix(_) => ChannelKind::Matrix,
            DestinationUri::Pushover(_) => ChannelKind::Pushover,
            DestinationUri::Ntfy(_) => ChannelKind::Ntfy,
            DestinationUri::Telegram(_) => ChannelKind::Telegram,
            DestinationUri::Signal(_) => ChannelKind::Signal,
            DestinationUri::Apprise(_) => ChannelKind::Apprise,
            DestinationUri::Postal => ChannelKind::Letter,
            DestinationUri::X(_) => ChannelKind::X,
            DestinationUri::WhatsApp(_) => ChannelKind::WhatsApp,
        }
    }

    /// Whether a plain-`http` webhook points at this machine: allowed even
    /// when `[channels.webhook] allow_http` is off.
    pub fn is_loopback_http(&self) -> bool {
        let DestinationUri::Webhook(url) = self else {
            return false;
        };
        if url.scheme() != "http" {
            return false;
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        }
    }
}

/// `+` and 8 to 15 digits, the first not zero.
pub fn parse_e164(s: &str) -> Result<String, ParseError> {
    let digits = s.strip_prefix('+').ok_or_else(|| {
        ParseError::new(format!(
            "`{s}` is not an E.164 number (it must start with +)"
        ))
    })?;
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(s.to_string())
    } else {
        Err(ParseError::new(format!(
            "`{s}` is not an E.164 number (+ then 8 to 15 digits, no spaces)"
        )))
    }
}

fn non_empty_token(scheme: &str, v: &str) -> Result<String, ParseError> {
    if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(ParseError::new(format!(
            "`{scheme}:` needs a value without spaces"
        )))
    } else {
        Ok(v.to_string())
    }
}

/// The tag of an `apprise:` destination. Apprise's tags are words of
/// letters, digits, `_` and `-`: apprise-api refuses any other character
/// in a tag (its `TAG_VALIDATION_RE`), and space, `,`, `+`, `&` and `|`
/// would combine several tags, which a destination never does. `all` is
/// Apprise's own name for every service.
pub fn parse_apprise_tag(tag: &str) -> Result<String, ParseError> {
    if tag.is_empty() {
        return Err(ParseError::new(
            "`apprise:` needs a tag naming the Apprise services to notify (or `all`)",
        ));
    }
    if tag.len() > 64 {
        return Err(ParseError::new(
            "an Apprise tag is at most 64 characters long",
        ));
    }
    if let Some(bad) = tag
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(ParseError::new(format!(
            "`{}` cannot be in an Apprise tag (letters, digits, _ and - only; one tag per destination)",
            bad.escape_default()
        )));
    }
    Ok(tag.to_string())
}

impl std::str::FromStr for DestinationUri {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| ParseError::new(format!("`{s}` is not a URI (no scheme)")))?;
        match scheme.to_ascii_lowercase().as_str() {
            "mailto" => {
                if rest.contains('?') || rest.contains(',') {
                    return Err(ParseError::new(
                        "a mailto: destination is a single address without headers",
                    ));
                }
                // Percent-decoding (RFC 6068), not form-decoding: `+` in
                // `alice+tag@example.com` is a plus, not a space.
                let addr = percent_encoding::percent_decode_str(rest)
                    .decode_utf8()
                    .map_err(|_| ParseError::new("a mailto: address must be UTF-8"))?;
                super::EmailAddr::parse(&addr).map(DestinationUri::Mailto)
            }
            "sms" => parse_e164(rest).map(DestinationUri::Sms),
            "signal" => parse_e164(rest).map(DestinationUri::Signal),
            "https" | "http" => {
                let url = url::Url::parse(s)
                    .map_err(|e| ParseError::new(format!("`{s}` is not a valid URL ({e})")))?;
                if url.host().is_none() {
                    return Err(ParseError::new(format!("`{s}` has no host")));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(ParseError::new(
                        "credentials do not belong in a destination URI; configure them under [channels]",
                    ));
                }
                Ok(DestinationUri::Webhook(url))
            }
            "matrix" => {
                let valid = match rest.split_once('/') {
                    Some(("r", alias)) => alias.len() > 2 && alias.contains(':'),
                    Some(("roomid", id)) => !id.is_empty(),
                    _ => false,
                };
                if valid {
                    Ok(DestinationUri::Matrix(rest.to_string()))
                } else {
                    Err(ParseError::new(format!(
                        "`{s}` is not a Matrix room URI (matrix:r/room:server or matrix:roomid/…)"
                    )))
                }
            }
            "pushover" => non_empty_token("pushover", rest).map(DestinationUri::Pushover),
            "ntfy" => non_empty_token("ntfy", rest).map(DestinationUri::Ntfy),
            "telegram" => non_empty_token("telegram", rest).map(DestinationUri::Telegram),
            "apprise" => parse_apprise_tag(rest).map(DestinationUri::Apprise),
            // Bare `postal:` is the same: the account's address.
            "postal" => match rest {
                "" | "account" => Ok(DestinationUri::Postal),
                _ => Err(ParseError::new(
                    "a postal: destination is `postal:account`: the address is the account's own (set it with PUT /v1/accounts/{id}, `postal_address`)",
                )),
            },
            "x" => match rest.strip_prefix('@') {
                Some(handle) => XUser::parse_handle(handle),
                None => XUser::parse_id(rest),
            }
            .map(DestinationUri::X),
            "whatsapp" => parse_e164(rest).map(DestinationUri::WhatsApp),
            other => Err(ParseError::new(format!(
                "unknown scheme `{other}:`; use mailto:, sms:, https:, matrix:, pushover:, ntfy:, telegram:, signal:, apprise:, x:, whatsapp: or postal:"
            ))),
        }
    }
}

impl fmt::Display for DestinationUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestinationUri::Mailto(a) => f.write_str(&a.mailto()),
            DestinationUri::Sms(n) => write!(f, "sms:{n}"),
            DestinationUri::Webhook(u) => f.write_str(u.as_str()),
            DestinationUri::Matrix(r) => write!(f, "matrix:{r}"),
            DestinationUri::Pushover(k) => write!(f, "pushover:{k}"),
            DestinationUri::Ntfy(t) => write!(f, "ntfy:{t}"),
            DestinationUri::Telegram(c) => write!(f, "telegram:{c}"),
            DestinationUri::Signal(n) => write!(f, "signal:{n}"),
            DestinationUri::Apprise(t) => write!(f, "apprise:{t}"),
            DestinationUri::Postal => f.write_str("postal:account"),
            DestinationUri::X(XUser::Id(id)) => write!(f, "x:{id}"),
            DestinationUri::X(XUser::Handle(h)) => write!(f, "x:@{h}"),
            DestinationUri::WhatsApp(n) => write!(f, "whatsapp:{n}"),
        }
    }
}

impl Serialize for DestinationUri {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        let ok = [
            ("mailto:alice@example.com", ChannelKind::Email),
            ("sms:+447700900123", ChannelKind::Sms),
            ("https://hooks.example.com/kci", ChannelKind::Webhook),
            ("matrix:r/support:example.org", ChannelKind::Matrix),
            (
                "pushover:uQiRzpo4DXghDmr9QzzfQu27cmVRsG",
                ChannelKind::Pushover,
            ),
            ("ntfy:alerts", ChannelKind::Ntfy),
            ("telegram:123456789", ChannelKind::Telegram),
            ("signal:+447700900123", ChannelKind::Signal),
            ("apprise:devops", ChannelKind::Apprise),
            ("apprise:all", ChannelKind::Apprise),
            ("apprise:on-call_2", ChannelKind::Apprise),
            ("postal:account", ChannelKind::Letter),
            ("x:2244994945", ChannelKind::X),
            ("x:@XDevelopers", ChannelKind::X),
            ("x:@a_1", ChannelKind::X),
            ("whatsapp:+447700900123", ChannelKind::WhatsApp),
        ];
        for (s, kind) in ok {
            let uri: DestinationUri = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(uri.channel(), kind);
            assert_eq!(uri.to_string(), s);
        }
    }

    #[test]
    fn refuses_bad_ones() {
        for s in [
            "alice@example.com",
            "mailto:not-an-address",
            "mailto:a@example.com?subject=x",
            "sms:07700900123",
            "sms:+44 7700 900123",
            "sms:+0123456789",
            "https://user:pw@example.com/",
            "matrix:room",
            "gopher://x",
            "ntfy:",
            "apprise:",
            "apprise:ops.eu",
            "apprise:devops,admin",
            "apprise:dev ops",
            "postal:Hauptstraße 5",
            "postal:account:x",
            "x:",
            "x:@",
            "x:0123",
            "x:12a",
            "x:99999999999999999999",
            "x:@has-dash",
            "x:@sixteen_chars_xx",
            "x:@",
            "whatsapp:447700900123",
            "whatsapp:+44 7700 900123",
        ] {
            assert!(
                s.parse::<DestinationUri>().is_err(),
                "{s} should be refused"
            );
        }
    }

    #[test]
    fn a_plus_in_a_mail_address_is_a_plus_and_case_is_one_mailbox() {
        let cases = [
            (
                "mailto:alice+tag@example.com",
                "mailto:alice+tag@example.com",
            ),
            ("mailto:Alice@Example.COM", "mailto:alice@example.com"),
            (
                "MAILTO:alice%2Btag@example.com",
                "mailto:alice+tag@example.com",
            ),
            (
                "mailto:%22a%3Fb%22@example.com",
                "mailto:%22a%3Fb%22@example.com",
            ),
        ];
        for (raw, stored) in cases {
            let uri: DestinationUri = raw.parse().unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(uri.to_string(), stored, "{raw}");
            // What is stored parses back to itself.
            assert_eq!(stored.parse::<DestinationUri>().unwrap(), uri);
        }
    }

    #[test]
    fn apprise_tags_say_what_is_wrong() {
        let e = "apprise:ops.eu".parse::<DestinationUri>().unwrap_err();
        assert!(e.0.contains("`.` cannot be in an Apprise tag"), "{e}");
        let e = "apprise:".parse::<DestinationUri>().unwrap_err();
        assert!(e.0.contains("needs a tag"), "{e}");
        let long = format!("apprise:{}", "a".repeat(65));
        assert!(long.parse::<DestinationUri>().is_err());
    }

    #[test]
    fn all_lists_every_kind_once() {
        // A new kind makes this match fail to compile: whoever adds one is
        // sent here, next to ALL, to add it there too.
        for kind in ChannelKind::ALL {
            match kind {
                ChannelKind::Email
                | ChannelKind::Sms
                | ChannelKind::Webhook
                | ChannelKind::Matrix
                | ChannelKind::Pushover
                | ChannelKind::Ntfy
                | ChannelKind::Telegram
                | ChannelKind::Signal
                | ChannelKind::Apprise
                | ChannelKind::Letter => {}
                ChannelKind::X | ChannelKind::WhatsApp => {}
            }
        }
        let names: std::collections::BTreeSet<_> =
            ChannelKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ChannelKind::ALL.len());
    }

    #[test]
    fn bare_postal_is_the_accounts_address_stored_canonically() {
        for raw in ["postal:", "postal:account", "POSTAL:account"] {
            let uri: DestinationUri = raw.parse().unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(uri, DestinationUri::Postal);
            assert_eq!(uri.to_string(), "postal:account");
        }
        let e = "postal:10115 Berlin".parse::<DestinationUri>().unwrap_err();
        assert!(e.0.contains("the address is the account's own"), "{e}");
    }

    #[test]
    fn loopback_http() {
        let yes: DestinationUri = "http://127.0.0.1:9/x".parse().unwrap();
        let no: DestinationUri = "http://example.com/x".parse().unwrap();
        assert!(yes.is_loopback_http());
        assert!(!no.is_loopback_http());
    }
}
