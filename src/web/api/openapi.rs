//! The API's description (OpenAPI 3.1), generated from the code: each
//! handler's `#[utoipa::path]` names its route, scope, body and answers,
//! and the types it reads and writes give the schemas. The router is built
//! from the same annotations ([`super::router`]), so a route cannot exist
//! without its description. Served at `GET /openapi.json`, checked in as
//! `openapi.json` (a test fails when the two differ).

use crate::web::error::ErrorBody;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, Modify, ToSchema};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "kci",
        description = "Keeping Customers Informed: the notification hub's HTTP API. \
            Source systems post events; staff tools manage the directory, \
            protected changes, calls and incidents. Every error answer is \
            `{\"error\": code, \"message\": sentence}` (DESIGN.md §3). \
            Each operation's security names the token scope it needs \
            (`kci token create --scope …`).",
        license(name = "AGPL-3.0-or-later", identifier = "AGPL-3.0-or-later"),
    ),
    modifiers(&Security),
    components(schemas(ErrorBody)),
    tags(
        (name = "events", description = "Events from source systems, and the fate of their notifications"),
        (name = "directory", description = "Accounts, contacts and destinations"),
        (name = "keys", description = "Customers' OpenPGP keys"),
        (name = "changes", description = "Protected changes: proof, cooling-off, approval, veto"),
        (name = "assurance", description = "Assurance-based recovery (A-word and T-word)"),
        (name = "staff", description = "Staff enrolment and login: a password and a TOTP code give a session token"),
        (name = "calls", description = "Staff and customer verifying each other on a call"),
        (name = "incidents", description = "What vetoes and refusals opened, and the audit log"),
        (name = "deliveries", description = "Notifications by state, and retrying them"),
        (name = "links", description = "Pages behind the links in mails, for people"),
        (name = "providers", description = "Delivery callbacks and inbound messages from providers"),
        (name = "operations", description = "Liveness, metrics and this description"),
    )
)]
pub struct ApiDoc;

/// The one security scheme: a bearer token (`kci token create`).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `kci token create`; the operation's list names the scope it needs",
                    ))
                    .build(),
            ),
        );
    }
}

/// The answers any operation can give, whatever it does: the perimeter's
/// (403 `network_refused`, 429 `rate_limited`), the server's limits (408,
/// 413), kci's own trouble (503) and, with a token, 401 and 403. Applied
/// once the router has added its paths.
pub(crate) struct CommonAnswers;

fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name(
                    ErrorBody::name(),
                )))
                .build(),
        )
        .into()
}

fn add(op: &mut Operation, status: &str, description: &str) {
    let answers = &mut op.responses.responses;
    match answers.get_mut(status) {
        // A status the operation already names for its own reasons: the
        // common one is one more of its meanings.
        Some(RefOr::T(r)) if !r.description.contains(description) => {
            r.description = format!("{}; or {description}", r.description);
        }
        Some(_) => {}
        None => {
            answers.insert(status.to_string(), error(description));
        }
    }
}

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let with_token = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let with_ticket = op
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| p.name == "Kci-Ticket");
                if with_ticket {
                    add(
                        op,
                        "422",
                        "`invalid_field`: the Kci-Ticket header is not 1 to 64 printable characters",
                    );
                }
                if with_token {
                    add(
                        op,
                        "401",
                        "`unauthenticated`: no token, or one kci does not know",
                    );
                    add(op, "403", "`forbidden`: the token lacks the scope");
                }
                add(
                    op,
                    "403",
                    "`network_refused`: this address may not use this listener",
                );
                add(
                    op,
                    "408",
                    "`request_timeout`: the request took longer than `[server] request_timeout`",
                );
                add(
                    op,
                    "413",
                    "`body_too_large`: the body is larger than `[server] max_body_bytes`",
                );
                add(
                    op,
                    "429",
                    "`rate_limited`: too many requests from this address or token (see `Retry-After`)",
                );
                add(
                    op,
                    "503",
                    "`unavailable`: kci could not complete the request; nothing was changed",
                );
            }
        }
    }
}

/// Preferences are flattened into contacts and destinations (their fields
/// sit beside the contact's or destination's own). JSON Schema cannot
/// combine closed objects with `allOf`, so the component is left open;
/// kci still refuses a field it does not know (422 naming it).
pub(crate) struct OpenPreferences;

impl Modify for OpenPreferences {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::schema::Schema;
        let schemas = openapi.components.as_mut().map(|c| &mut c.schemas);
        if let Some(RefOr::T(Schema::Object(o))) =
            schemas.and_then(|s| s.get_mut(crate::model::Preferences::name().as_ref()))
        {
            o.additional_properties = None;
        }
    }
}

/// The ticket number staff work under, recorded in the audit log.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct Ticket {
    /// The ticket number staff work under: 1 to 64 printable characters
    /// (422 otherwise).
    #[param(rename = "Kci-Ticket")]
    kci_ticket: Option<String>,
}

/// The description as served and checked in.
pub fn json() -> String {
    render(&super::router_and_spec().1)
}

/// `spec` as `openapi.json` holds it: pretty JSON and a final newline.
pub(crate) fn render(spec: &OpenApi) -> String {
    let mut text = spec
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    /// The checked-in `openapi.json` is what the code describes. After a
    /// change to the API: `cargo run -- openapi > openapi.json`.
    #[test]
    fn the_checked_in_description_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        let current = super::json();
        assert!(
            checked_in == current,
            "openapi.json is out of date: run `cargo run -- openapi > openapi.json`"
        );
    }
}
