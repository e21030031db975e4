//! An account's postal address: where a `postal:account` destination's
//! letters go. Parsed at the edge ([`PostalAddress::parse`]), so one held
//! inside kci always fits the window of a C5/6 envelope (DIN 5008: six
//! lines of address — the recipient, up to three street lines, postcode
//! and town, the country).

use serde::{Deserialize, Serialize};

/// The most characters on one line of an address.
pub const MAX_LINE: usize = 50;
/// The most street lines (street and number, c/o, flat, PO box).
pub const MAX_LINES: usize = 3;
/// The most characters of a postcode.
pub const MAX_POSTCODE: usize = 12;

/// A postal address, valid (see the module's bounds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "PostalInput")]
#[schema(examples(json!({"name": "Jörg Müller", "lines": ["Hauptstraße 5"], "postcode": "10115", "town": "Berlin", "country": "DE"})))]
pub struct PostalAddress {
    /// The recipient as printed (a person, or a company and a person).
    pub name: String,
    /// Street and number, and any further lines (c/o, flat, PO box): one
    /// to three.
    pub lines: Vec<String>,
    /// Empty where the country has none.
    pub postcode: String,
    pub town: String,
    /// ISO 3166-1 alpha-2, upper case (`DE`, `GB`).
    #[schema(pattern = "^[A-Z]{2}$")]
    pub country: String,
}

/// A postal address as a caller sends it, not yet checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostalInput {
    pub name: String,
    #[serde(default)]
    pub lines: Vec<String>,
    #[serde(default)]
    pub postcode: String,
    pub town: String,
    pub country: String,
}

/// A field of a postal address refused: its path (`lines[1]`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PostalError {
    pub field: String,
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> PostalError {
    PostalError {
        field: field.into(),
        message: message.into(),
    }
}

/// One printed line: trimmed, not empty (unless `may_be_empty`), at most
/// [`MAX_LINE`] characters, no control characters (a line break would add
/// a line the window has no room for).
fn line(field: &str, raw: &str, may_be_empty: bool) -> Result<String, PostalError> {
    let v = raw.trim();
    if v.is_empty() && !may_be_empty {
        return Err(refuse(field, "must not be empty"));
    }
    if v.chars().count() > MAX_LINE {
        return Err(refuse(
            field,
            format!("at most {MAX_LINE} characters (an envelope's window is 85 mm wide)"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(refuse(field, "must be one line without control characters"));
    }
    Ok(v.to_string())
}

impl PostalAddress {
    /// Checks `input`, naming the first field that is wrong.
    pub fn parse(input: PostalInput) -> Result<PostalAddress, PostalError> {
        let name = line("name", &input.name, false)?;
        if input.lines.is_empty() || input.lines.len() > MAX_LINES {
            return Err(refuse(
                "lines",
                format!("one to {MAX_LINES} lines (street and number, then c/o, flat or PO box)"),
            ));
        }
        let lines = input
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| line(&format!("lines[{i}]"), l, false))
            .collect::<Result<Vec<_>, _>>()?;
        let postcode = input.postcode.trim().to_string();
        let postcode_ok = postcode.chars().count() <= MAX_POSTCODE
            && postcode
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-');
        if !postcode_ok {
            return Err(refuse(
                "postcode",
                format!(
                    "at most {MAX_POSTCODE} letters, digits, spaces and hyphens (empty where the country has none)"
                ),
            ));
        }
        let town = line("town", &input.town, false)?;
        let country = input.country.trim().to_ascii_uppercase();
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(refuse(
                "country",
                "an ISO 3166-1 alpha-2 code such as DE or GB",
            ));
        }
        Ok(PostalAddress {
            name,
            lines,
            postcode,
            town,
            country,
        })
    }

    /// The lines printed in an envelope's window, in order; the country
    /// only when the letter goes abroad (`home`: the sender's country).
    pub fn window_lines(&self, home: Option<&str>) -> Vec<String> {
        let mut out = vec![self.name.clone()];
        out.extend(self.lines.iter().cloned());
        let town = if self.postcode.is_empty() {
            self.town.clone()
        } else {
            format!("{} {}", self.postcode, self.town)
        };
        out.push(town);
        if home.is_none_or(|h| !h.eq_ignore_ascii_case(&self.country)) {
            out.push(self.country.clone());
        }
        out
    }
}

impl TryFrom<PostalInput> for PostalAddress {
    type Error = PostalError;

    fn try_from(input: PostalInput) -> Result<Self, Self::Error> {
        PostalAddress::parse(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PostalInput {
        PostalInput {
            name: "Jörg Müller".into(),
            lines: vec!["Hauptstraße 5".into()],
            postcode: "10115".into(),
            town: "Berlin".into(),
            country: "de".into(),
        }
    }

    #[test]
    fn a_valid_address_is_trimmed_and_its_country_upper_case() {
        let mut i = input();
        i.name = "  Jörg Müller ".into();
        let a = PostalAddress::parse(i).unwrap();
        assert_eq!(a.name, "Jörg Müller");
        assert_eq!(a.country, "DE");
        assert_eq!(
            a.window_lines(Some("DE")),
            ["Jörg Müller", "Hauptstraße 5", "10115 Berlin"]
        );
        assert_eq!(
            a.window_lines(Some("FR")),
            ["Jörg Müller", "Hauptstraße 5", "10115 Berlin", "DE"]
        );
        assert_eq!(a.window_lines(None).len(), 4);
    }

    #[test]
    fn each_bad_field_is_named() {
        let long = "x".repeat(MAX_LINE + 1);
        // (what is changed, the field named)
        type Edit = Box<dyn Fn(&mut PostalInput)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|i| i.name = " ".into()), "name"),
            (Box::new(move |i| i.name = "x".repeat(51)), "name"),
            (Box::new(|i| i.name = "Jörg\nMüller".into()), "name"),
            (Box::new(|i| i.lines.clear()), "lines"),
            (Box::new(|i| i.lines = vec!["a".into(); 4]), "lines"),
            (
                Box::new(|i| i.lines = vec!["a".into(), "".into()]),
                "lines[1]",
            ),
            (
                Box::new(move |i| i.lines = vec!["a".into(), long.clone()]),
                "lines[1]",
            ),
            (Box::new(|i| i.postcode = "10115; DROP".into()), "postcode"),
            (Box::new(|i| i.postcode = "1".repeat(13)), "postcode"),
            (Box::new(|i| i.town = "".into()), "town"),
            (Box::new(|i| i.country = "Germany".into()), "country"),
            (Box::new(|i| i.country = "D1".into()), "country"),
        ];
        for (change, field) in cases {
            let mut i = input();
            change(&mut i);
            let err = PostalAddress::parse(i.clone()).unwrap_err();
            assert_eq!(err.field, field, "{i:?}: {err}");
        }
        // Without a postcode (Hong Kong, say) the town stands alone.
        let mut i = input();
        i.postcode = String::new();
        let a = PostalAddress::parse(i).unwrap();
        assert_eq!(a.window_lines(Some("DE"))[2], "Berlin");
    }

    #[test]
    fn what_is_stored_reads_back_and_a_bad_stored_one_is_refused() {
        let a = PostalAddress::parse(input()).unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<PostalAddress>(&json).unwrap(), a);
        let bad = r#"{"name":"","lines":["x"],"town":"Berlin","country":"DE"}"#;
        assert!(serde_json::from_str::<PostalAddress>(bad).is_err());
        let unknown = r#"{"name":"A","lines":["x"],"town":"B","country":"DE","zip":"1"}"#;
        assert!(serde_json::from_str::<PostalAddress>(unknown).is_err());
    }
}
