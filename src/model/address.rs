//! Email addresses in the one form kci keys them by, everywhere: the key
//! registry, `mailto:` destinations, the sender of a submission mail, the
//! lookups that find who uses an address. Two spellings of one mailbox
//! (`Alice@Example.COM`, `alice@example.com`) must never be two entries,
//! or a key change would be told to nobody and cooled off at the wrong level.

use super::ParseError;
use std::fmt;

/// The longest address accepted (RFC 5321's path limit, less the brackets).
pub const MAX_ADDRESS: usize = 254;

/// A valid email address, trimmed and lower-cased. The domain is
/// case-insensitive by definition (RFC 5321 §2.4); the local part is
/// lower-cased too, because every mainstream MTA (Postfix, Exim, Exchange,
/// Gmail) delivers local parts regardless of case: a registry telling
/// `Alice@` from `alice@` would give one mailbox two keys. `+tags` are kept:
/// `alice+shop@` is an address of its own to the registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct EmailAddr(String);

impl EmailAddr {
    /// Parses and normalises `raw`.
    pub fn parse(raw: &str) -> Result<EmailAddr, ParseError> {
        let trimmed = raw.trim();
        if trimmed.len() > MAX_ADDRESS {
            return Err(ParseError::new(format!(
                "an email address is at most {MAX_ADDRESS} characters"
            )));
        }
        let lower = trimmed.to_ascii_lowercase();
        lower
            .parse::<lettre::Address>()
            .map_err(|e| ParseError::new(format!("`{trimmed}` is not an email address ({e})")))?;
        Ok(EmailAddr(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the `@`.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }

    /// Its `mailto:` destination URI, as stored: percent-encoded where
    /// RFC 6068 needs it, so it parses back to this address.
    pub fn mailto(&self) -> String {
        const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
            .add(b' ')
            .add(b'"')
            .add(b'#')
            .add(b'%')
            .add(b',')
            .add(b'<')
            .add(b'>')
            .add(b'?');
        format!(
            "mailto:{}",
            percent_encoding::utf8_percent_encode(&self.0, RESERVED)
        )
    }
}

impl fmt::Display for EmailAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for EmailAddr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EmailAddr::parse(s)
    }
}

impl AsRef<str> for EmailAddr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mailbox_one_form() {
        let cases = [
            ("alice@example.com", Some("alice@example.com")),
            ("  Alice@Example.COM ", Some("alice@example.com")),
            ("ALICE+Tag@EXAMPLE.com", Some("alice+tag@example.com")),
            ("alice", None),
            ("alice@", None),
            ("@example.com", None),
            ("a b@example.com", None),
        ];
        for (raw, want) in cases {
            assert_eq!(
                EmailAddr::parse(raw).ok().as_ref().map(EmailAddr::as_str),
                want,
                "{raw}"
            );
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(EmailAddr::parse(&long).is_err());
        let a = EmailAddr::parse("Bob@Example.org").unwrap();
        assert_eq!(
            (a.domain(), a.mailto().as_str()),
            ("example.org", "mailto:bob@example.org")
        );
        // What needs encoding in a URI is encoded, and parses back.
        let odd = EmailAddr::parse("\"a?b%c\"@example.org").unwrap();
        assert_eq!(odd.mailto(), "mailto:%22a%3Fb%25c%22@example.org");
    }
}
