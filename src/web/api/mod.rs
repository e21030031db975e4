//! The HTTP API (DESIGN.md §2a and §3).

mod assurances;
mod callbacks;
mod calls;
pub(crate) mod changes;
mod deliveries;
mod directory;
mod events;
mod keys;
mod ops;
mod staff;

pub mod openapi;

use super::{AppError, AppState};
use axum::Router;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Everything: the API, and what customers and providers reach.
pub fn routes() -> Router<AppState> {
    let (router, spec) = router_and_spec();
    // Rendered once; each answer shares the bytes.
    let text = axum::body::Bytes::from(openapi::render(&spec));
    router.route(
        "/openapi.json",
        axum::routing::get(move || {
            let text = text.clone();
            async move { ([("content-type", "application/json")], text) }
        }),
    )
}

/// What customers and providers reach: the links in mails, callbacks and
/// inbound SMS (each proves itself with its token or signature), and
/// `/healthz` — all that `[server.public]` serves.
pub fn public_routes() -> Router<AppState> {
    let (router, _) = public_only().split_for_parts();
    router.fallback(ops::not_found)
}

/// The whole router and its description, built from the same handlers.
pub(crate) fn router_and_spec() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::{Modify as _, OpenApi as _};
    let (router, mut spec) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(api_routes())
        .merge(public_only())
        .split_for_parts();
    openapi::CommonAnswers.modify(&mut spec);
    openapi::OpenPreferences.modify(&mut spec);
    (router, spec)
}

fn public_only() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(callbacks::twilio))
        .routes(routes!(keys::confirm_page, keys::confirm))
        .routes(routes!(callbacks::twilio_inbound))
        .routes(routes!(callbacks::gateway_inbound))
        .routes(routes!(callbacks::whatsapp, callbacks::whatsapp_challenge))
        .routes(routes!(
            assurances::recovery_page,
            assurances::recovery_form
        ))
        .routes(routes!(changes::veto_page, changes::veto_link))
        .routes(routes!(calls::customer_page, calls::customer_form))
        .routes(routes!(ops::healthz))
}

/// The API: source systems and staff, by token.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events::post_event))
        .routes(routes!(events::post_batch))
        .routes(routes!(events::get_event, events::delete_event))
        .routes(routes!(directory::put_account, directory::get_account))
        .routes(routes!(directory::put_contact))
        .routes(routes!(directory::add_destination))
        .routes(routes!(directory::delete_destination))
        .routes(routes!(directory::verify_destination))
        .routes(routes!(directory::renew_code))
        .routes(routes!(directory::rotate_secret))
        .routes(routes!(keys::submit))
        .routes(routes!(keys::status, keys::remove))
        .routes(routes!(changes::list))
        .routes(routes!(changes::get))
        .routes(routes!(changes::approve))
        .routes(routes!(changes::veto))
        .routes(routes!(changes::send_code))
        .routes(routes!(changes::prove))
        .routes(routes!(changes::connection))
        .routes(routes!(assurances::list, assurances::record))
        .routes(routes!(assurances::complete))
        .routes(routes!(staff::enrol))
        .routes(routes!(staff::login))
        .routes(routes!(staff::logout))
        .routes(routes!(staff::me))
        .routes(routes!(calls::open))
        .routes(routes!(calls::status))
        .routes(routes!(calls::get))
        .routes(routes!(calls::staff_code))
        .routes(routes!(calls::customer_code))
        .routes(routes!(changes::incidents))
        .routes(routes!(changes::close_incident))
        .routes(routes!(changes::audit))
        .routes(routes!(deliveries::list))
        .routes(routes!(deliveries::retry))
        .routes(routes!(ops::metrics))
        .fallback(ops::not_found)
}

/// Reads a JSON body into `T`: malformed JSON is a 400, JSON of the wrong
/// shape a 422 naming the field.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, super::AppError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Data => {
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                super::AppError::invalid("invalid_field", &field, inner)
            }
            _ => super::AppError::BadRequest {
                code: "malformed_json",
                message: format!("the body is not valid JSON: {inner}"),
            },
        }
    })
}

/// A small page for a person following a mailed link: one paragraph,
/// and a button (`form`: where it posts) — so a mail scanner that fetches
/// links does nothing; only the POST acts.
pub(crate) fn page(
    status: StatusCode,
    title: &str,
    text: &str,
    form: Option<(&str, &str)>,
) -> impl IntoResponse {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let form = form
        .map(|(action, label)| {
            format!(
                "<form method=\"post\" action=\"{}\"><button type=\"submit\">{}</button></form>",
                esc(action),
                esc(label)
            )
        })
        .unwrap_or_default();
    (
        status,
        [
            (
                "content-security-policy",
                "default-src 'none'; form-action 'self'",
            ),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ],
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body><h1>{t}</h1><p>{x}</p>{form}</body></html>",
            t = esc(title),
            x = esc(text)
        )),
    )
}

/// What a client over `[changes] wrong_links_per_source` is told.
pub(crate) const WRONG_LINKS_MESSAGE: &str = "too many links that were not valid from this address";

/// Answers 429 while the client's address has tried too many links that
/// were not valid (bucket `bucket`, `[changes] wrong_links_per_source`).
pub(crate) async fn links_allowed(
    st: &AppState,
    peer: &changes::Peer,
    bucket: &'static str,
) -> Result<(), AppError> {
    let now = st.clock.now();
    let who = peer.source.as_deref().unwrap_or("unknown");
    let cap = st.config.changes.wrong_links_per_source;
    match st.store.throttle_peek(bucket, who, cap, now).await? {
        Ok(()) => Ok(()),
        Err(retry_at) => {
            st.metrics.limit_hit(bucket, "source");
            Err(AppError::limited_until(
                "rate_limited",
                WRONG_LINKS_MESSAGE,
                retry_at,
                now,
            ))
        }
    }
}

/// Counts a link that was not valid against the client's address.
pub(crate) async fn count_wrong_link(
    st: &AppState,
    peer: &changes::Peer,
    bucket: &'static str,
) -> Result<(), AppError> {
    let who = peer.source.as_deref().unwrap_or("unknown");
    let cap = st.config.changes.wrong_links_per_source;
    st.store.throttle(bucket, who, cap, st.clock.now()).await?;
    Ok(())
}

/// A page with one form of one text field (`name`, at most `max`
/// characters) and a button.
pub(crate) fn field_page(
    title: &str,
    text: &str,
    action: &str,
    (name, max, numeric): (&str, usize, bool),
    button: &str,
) -> axum::response::Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mode = if numeric {
        " inputmode=\"numeric\""
    } else {
        ""
    };
    (
        StatusCode::OK,
        [
            (
                "content-security-policy",
                "default-src 'none'; form-action 'self'",
            ),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ],
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body><h1>{t}</h1><p>{x}</p><form method=\"post\" action=\"{a}\">\
             <input name=\"{n}\"{mode} maxlength=\"{max}\" autocomplete=\"off\">\
             <button type=\"submit\">{b}</button></form></body></html>",
            t = esc(title),
            x = esc(text),
            a = esc(action),
            n = esc(name),
            b = esc(button),
        )),
    )
        .into_response()
}

/// Whether a path segment could be a link secret kci made (43 URL-safe
/// base64 characters): anything else is answered without a lookup.
pub(crate) fn plausible_token(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The limit on wrong codes one token enters, whatever they were for
/// (destinations, changes): `[directory] wrong_codes_per_token`.
const WRONG_CODES: &str = "wrong_codes:token";

/// 429 if `caller` entered too many wrong codes lately.
pub(crate) async fn wrong_codes_allowed(
    st: &AppState,
    caller: &super::Caller,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), super::AppError> {
    let cap = st.config.directory.wrong_codes_per_token;
    match st
        .store
        .throttle_peek(WRONG_CODES, &caller.0.id, cap, now)
        .await?
    {
        Ok(()) => Ok(()),
        Err(retry_at) => {
            st.metrics.limit_hit("wrong_codes", "token");
            Err(too_many_wrong(retry_at, now))
        }
    }
}

/// Counts a wrong code entered by `caller`; 429 if that was one too many.
pub(crate) async fn count_wrong_code(
    st: &AppState,
    caller: &super::Caller,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), super::AppError> {
    let cap = st.config.directory.wrong_codes_per_token;
    if let crate::model::throttle::Counted::Refused { retry_at } = st
        .store
        .throttle(WRONG_CODES, &caller.0.id, cap, now)
        .await?
    {
        st.metrics.limit_hit("wrong_codes", "token");
        return Err(too_many_wrong(retry_at, now));
    }
    Ok(())
}

/// 429 for a token that entered too many wrong codes.
fn too_many_wrong(
    retry_at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> AppError {
    AppError::limited_until(
        "too_many_wrong_codes",
        "this token entered too many wrong codes",
        retry_at,
        now,
    )
}
