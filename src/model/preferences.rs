//! Preferences at four levels (DESIGN.md §2): where a destination sets
//! none, its contact's apply, then its account's `defaults`, then config's.

use super::{Priority, Span, TimeZoneName, Window};
use serde::Deserialize;

/// Preferences that cascade destination → contact → account → config.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// When non-urgent notices may go out, in `opening_hours` syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// IANA zone the window is read in.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "tz_opt")]
    pub timezone: Option<TimeZoneName>,
    /// Notices below this priority are suppressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_priority: Option<Priority>,
    /// Only these categories (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
    /// Only these services (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// Combine non-urgent notices into one message per period.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "span_opt")]
    pub digest: Option<Span>,
    /// At most this many non-urgent notices per period (`5/1h`); the
    /// excess is folded into one digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<crate::model::Cap>,
    /// Whether urgent notices ignore the window (default yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgent_bypasses_window: Option<bool>,
}

mod tz_opt {
    use crate::model::TimeZoneName;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<TimeZoneName>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(tz) => s.collect_str(tz),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TimeZoneName>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod span_opt {
    use crate::model::Span;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Span>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(span) => s.collect_str(span),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Span>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}
