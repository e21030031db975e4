//! Durations as people write them in config and API bodies: `90s`, `3m`,
//! `12h`, `1h 30m`, `7d`.

use super::ParseError;
use serde::{Deserialize, Deserializer};
use std::fmt;

/// A non-negative span of time written in humantime syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Span(pub std::time::Duration);

impl Span {
    pub fn chrono(self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl std::str::FromStr for Span {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim()).map(Span).map_err(|e| {
            ParseError::new(format!(
                "`{s}` is not a duration such as 90s, 3m, 12h or 7d ({e})"
            ))
        })
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!("3m".parse::<Span>().unwrap().0.as_secs(), 180);
        assert_eq!("12h".parse::<Span>().unwrap().0.as_secs(), 43_200);
        assert_eq!("1h 30m".parse::<Span>().unwrap().0.as_secs(), 5_400);
        assert_eq!("7d".parse::<Span>().unwrap().0.as_secs(), 604_800);
        assert!("soon".parse::<Span>().is_err());
        assert!("-3m".parse::<Span>().is_err());
    }
}
