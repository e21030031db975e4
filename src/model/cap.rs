//! A count per period such as `5/1h` or `10/s`: a destination's cap on
//! non-urgent notices, or a provider's rate limit for a channel.

use super::{ParseError, Span};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub count: u32,
    pub per: Span,
}

impl std::str::FromStr for Cap {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            ParseError::new(format!(
                "`{s}` is not a cap such as 5/1h (a count, a slash, a duration)"
            ))
        };
        let (count, per) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        // "10/s" reads as "10/1s".
        let per = per.trim();
        let per: Span = match per {
            "s" | "m" | "h" | "d" => format!("1{per}").parse(),
            _ => per.parse(),
        }
        .map_err(|_| bad())?;
        if count == 0 || per.0.is_zero() {
            return Err(ParseError::new(format!(
                "`{s}`: the count and the duration must be more than zero"
            )));
        }
        Ok(Cap { count, per })
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per)
    }
}

impl serde::Serialize for Cap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let c: Cap = "5/1h".parse().unwrap();
        assert_eq!((c.count, c.per.0.as_secs()), (5, 3600));
        assert_eq!(c.to_string(), "5/1h");
        let r: Cap = "10/s".parse().unwrap();
        assert_eq!((r.count, r.per.0.as_secs()), (10, 1));
        for bad in ["5", "x/1h", "5/soon", "0/1h", "5/0s"] {
            assert!(bad.parse::<Cap>().is_err(), "{bad}");
        }
    }
}
