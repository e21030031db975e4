//! The directory's rules for what comes in (DESIGN.md §2a): how an
//! account, a contact and a destination are read from what a caller sends.
//! The API (`web/api/directory.rs`) and the bulk import (`kci import
//! directory`, `import.rs` and `file.rs` here) both call these, so the two
//! refuse the same input with the same words. Pure: no store, no clock.

pub mod file;
pub mod import;

use crate::model::{
    Account, ChannelKind, Contact, DestinationUri, Preferences, SecurityLevel, TimeZoneName,
};
use serde_json::{Map, Value};

/// A field refused, and why: the API answers it as a 422 with `code`, the
/// import reports it on the row's line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The API's error code: `invalid_field` or `invalid_uri`.
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn field(field: &str, message: impl std::fmt::Display) -> Invalid {
        Invalid {
            code: "invalid_field",
            field: field.to_string(),
            message: message.to_string(),
        }
    }

    fn uri(message: impl std::fmt::Display) -> Invalid {
        Invalid {
            code: "invalid_uri",
            field: "uri".into(),
            message: message.to_string(),
        }
    }
}

/// An account's settings as a caller gives them; what is absent takes the
/// default (`PUT` replaces the account whole).
#[derive(Debug, Clone, Default)]
pub struct AccountFields {
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub security_level: Option<String>,
    pub paranoid: Option<bool>,
    pub defaults: Preferences,
}

/// The account `id` as `fields` describe it, without network prefixes
/// (setting those takes `directory:admin`: see [`prefixes`]).
pub fn account(id: String, fields: AccountFields) -> Result<Account, Invalid> {
    let timezone = fields
        .timezone
        .map(|t| t.parse::<TimeZoneName>())
        .transpose()
        .map_err(|e| Invalid::field("timezone", e))?;
    let security_level = fields
        .security_level
        .map(|s| s.parse::<SecurityLevel>())
        .transpose()
        .map_err(|e| Invalid::field("security_level", e))?
        .unwrap_or_default();
    Ok(Account {
        name: fields.name.unwrap_or_else(|| id.clone()),
        id,
        timezone,
        security_level,
        paranoid: fields.paranoid.unwrap_or(false),
        defaults: fields.defaults,
        prefixes: Vec::new(),
        postal_address: None,
    })
}

/// An account's own network prefixes (CIDR, at most
/// [`crate::model::MAX_PREFIXES`]), each cut to its network.
pub fn prefixes(list: &[String]) -> Result<Vec<ipnet::IpNet>, Invalid> {
    if list.len() > crate::model::MAX_PREFIXES {
        return Err(Invalid::field(
            "prefixes",
            format!("at most {} prefixes", crate::model::MAX_PREFIXES),
        ));
    }
    list.iter()
        .map(|p| {
            p.parse::<ipnet::IpNet>().map(|n| n.trunc()).map_err(|_| {
                Invalid::field(
                    "prefixes",
                    format!(
                        "`{}` is not a network prefix such as 203.0.113.0/24",
                        crate::model::excerpt(p, 64)
                    ),
                )
            })
        })
        .collect()
}

/// Reads the preference fields of a body (all that is left of it), naming
/// a bad or unknown one.
pub fn preferences(map: Map<String, Value>) -> Result<Preferences, Invalid> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let field = e.path().to_string();
        Invalid::field(&field, e.into_inner())
    })
}

/// The contact `id` from a body: `name` (default: the id), `timezone`,
/// and the preference fields, which apply to all its destinations.
pub fn contact(id: String, mut map: Map<String, Value>) -> Result<Contact, Invalid> {
    let name = match map.remove("name") {
        None | Some(Value::Null) => id.clone(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(Invalid::field("name", "must be a string")),
    };
    let mut prefs = preferences(map)?;
    Ok(Contact {
        name,
        id,
        timezone: prefs.timezone.take(),
        prefs,
    })
}

/// A destination body: `uri`, `verified`, and the preference fields.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationInput {
    pub uri: String,
    pub verified: bool,
    pub prefs: Preferences,
}

/// Reads a destination body.
pub fn destination_input(mut map: Map<String, Value>) -> Result<DestinationInput, Invalid> {
    let uri = match map.remove("uri") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(Invalid::field("uri", "must be a string")),
        None => return Err(Invalid::field("uri", "is required")),
    };
    let verified = match map.remove("verified") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(Invalid::field("verified", "must be true or false")),
    };
    let prefs = preferences(map)?;
    Ok(DestinationInput {
        uri,
        verified,
        prefs,
    })
}

/// What a destination's URI is held to besides its syntax: a channel this
/// hub runs, and plain `http://` webhooks only to loopback unless
/// `[channels.webhook] allow_http`. (Asking the provider, where one can
/// tell at once, is the API's own further step.)
pub fn destination_uri(
    raw: &str,
    configured: impl Fn(ChannelKind) -> bool,
    allow_http: bool,
) -> Result<DestinationUri, Invalid> {
    let uri: DestinationUri = raw.parse().map_err(Invalid::uri)?;
    let kind = uri.channel();
    if !configured(kind) {
        return Err(Invalid::uri(format!(
            "no {kind} channel is configured on this hub"
        )));
    }
    // The parsed scheme, not the raw text: `HTTP://` is plain http too.
    let plain_http = matches!(&uri, DestinationUri::Webhook(u) if u.scheme() == "http");
    if plain_http && !uri.is_loopback_http() && !allow_http {
        return Err(Invalid::uri(
            "plain http:// is only allowed to loopback (with [channels.webhook] allow_private); use https:// (or set [channels.webhook] allow_http)",
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("an object"),
        }
    }

    #[test]
    fn accounts_take_defaults_and_name_a_bad_field() {
        let a = account("A1".into(), AccountFields::default()).unwrap();
        assert_eq!(
            (a.name.as_str(), a.security_level, a.paranoid, a.timezone),
            ("A1", SecurityLevel::Standard, false, None)
        );
        // (fields, the field named, or None for valid)
        let cases: [(AccountFields, Option<&str>); 4] = [
            (
                AccountFields {
                    timezone: Some("Europe/London".into()),
                    security_level: Some("high".into()),
                    ..AccountFields::default()
                },
                None,
            ),
            (
                AccountFields {
                    timezone: Some("Mars/Olympus".into()),
                    ..AccountFields::default()
                },
                Some("timezone"),
            ),
            (
                AccountFields {
                    security_level: Some("extreme".into()),
                    ..AccountFields::default()
                },
                Some("security_level"),
            ),
            (
                AccountFields {
                    security_level: Some("High".into()),
                    ..AccountFields::default()
                },
                Some("security_level"),
            ),
        ];
        for (fields, bad) in cases {
            let got = account("A1".into(), fields.clone());
            assert_eq!(
                got.as_ref().err().map(|e| e.field.as_str()),
                bad,
                "{fields:?}: {got:?}"
            );
        }
    }

    #[test]
    fn prefixes_are_bounded_and_cut_to_their_network() {
        assert_eq!(
            prefixes(&["203.0.113.7/24".into()]).unwrap(),
            vec!["203.0.113.0/24".parse::<ipnet::IpNet>().unwrap()]
        );
        assert!(prefixes(&["203.0.113.7".into()]).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("10.{i}.0.0/16")).collect();
        assert!(prefixes(&many).unwrap_err().message.contains("at most 32"));
    }

    #[test]
    fn contacts_and_destinations_name_what_is_wrong() {
        let c = contact(
            "alice".into(),
            map(json!({"timezone": "Europe/Paris", "min_priority": "high"})),
        )
        .unwrap();
        assert_eq!(c.name, "alice");
        assert_eq!(
            c.timezone.map(|t| t.to_string()).as_deref(),
            Some("Europe/Paris")
        );
        assert!(c.prefs.timezone.is_none());
        // (body, the field named)
        for (body, field) in [
            (json!({"name": 5}), "name"),
            (json!({"colour": "red"}), "."),
            (json!({"timezone": "Nowhere"}), "timezone"),
            (json!({"window": "sometimes"}), "window"),
        ] {
            let err = contact("alice".into(), map(body.clone())).unwrap_err();
            assert!(
                err.field == field || (field == "." && err.message.contains("colour")),
                "{body}: {err}"
            );
        }
        for (body, field) in [
            (json!({}), "uri"),
            (json!({"uri": 5}), "uri"),
            (
                json!({"uri": "sms:+447700900123", "verified": "yes"}),
                "verified",
            ),
            (
                json!({"uri": "sms:+447700900123", "digest": "often"}),
                "digest",
            ),
        ] {
            let err = destination_input(map(body.clone())).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err}");
        }
        let ok =
            destination_input(map(json!({"uri": "sms:+447700900123", "verified": true}))).unwrap();
        assert!(ok.verified);
    }

    #[test]
    fn a_uri_needs_a_configured_channel_and_https_beyond_loopback() {
        let only_mail_and_hooks = |k| matches!(k, ChannelKind::Email | ChannelKind::Webhook);
        // (uri, allow_http, valid)
        for (uri, allow_http, ok) in [
            ("mailto:alice@example.com", false, true),
            ("https://hooks.example.com/kci", false, true),
            ("http://127.0.0.1:9000/hook", false, true),
            ("http://hooks.example.com/kci", false, false),
            ("HTTP://hooks.example.com/kci", false, false),
            ("http://hooks.example.com/kci", true, true),
            ("sms:+447700900123", false, false),
            ("mailto:", false, false),
        ] {
            let got = destination_uri(uri, only_mail_and_hooks, allow_http);
            assert_eq!(got.is_ok(), ok, "{uri}: {got:?}");
            if let Err(e) = got {
                assert_eq!((e.code, e.field.as_str()), ("invalid_uri", "uri"));
            }
        }
    }
}
