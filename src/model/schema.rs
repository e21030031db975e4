//! How the model's text-valued types appear in the API description
//! (`openapi.json`): each is a JSON string with its syntax in words and an
//! example, as its `FromStr` reads it.

use super::{Cap, DestinationUri, Priority, Span, TimeZoneName, window::Window};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

/// A string schema with `description` and `example`.
fn text(description: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .examples([example])
        .into()
}

macro_rules! text_schema {
    ($t:ty, $description:expr, $example:expr) => {
        impl utoipa::PartialSchema for $t {
            fn schema() -> RefOr<Schema> {
                text($description, $example)
            }
        }
        impl utoipa::ToSchema for $t {}
    };
}

text_schema!(TimeZoneName, "An IANA time zone name", "Europe/London");
text_schema!(
    DestinationUri,
    "Where a notice goes: mailto:, sms: (E.164), https:// (webhook), ntfy:, pushover:, telegram:, signal:, matrix:, apprise:, x: (a numeric X user id, or @handle resolved to it), whatsapp: (E.164) or postal:account (a letter to the account's postal address) (DESIGN.md §2a)",
    "mailto:alice@example.com"
);
text_schema!(
    Span,
    "A duration: a number and a unit (s, m, h, d), e.g. 90s, 15m, 2h, 1d",
    "1h"
);
text_schema!(
    Window,
    "When non-urgent notices may go out, in opening_hours syntax",
    "Mo-Fr 08:00-20:00"
);
text_schema!(
    Cap,
    "At most this many notices per period: COUNT/SPAN",
    "5/1h"
);

impl utoipa::PartialSchema for Priority {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["low", "normal", "high", "urgent"]))
            .description(Some("How much a notice matters"))
            .into()
    }
}
impl utoipa::ToSchema for Priority {}

/// A network prefix in CIDR notation, for `#[schema(schema_with = …)]`.
pub fn prefixes() -> Schema {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("A network prefix in CIDR notation"))
                .examples(["203.0.113.0/24"]),
        )
        .into()
}
