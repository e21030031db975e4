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

use super::{AppError, AppState};
use axum::Router;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use axum::routing::{delete, get, post, put};

/// Everything: the API, and what customers and providers reach.
pub fn routes() -> Router<AppState> {
    api_routes().merge(public_only())
}

/// What customers and providers reach: the links in mails, callbacks and
/// inbound SMS (each proves itself with its token or signature), and
/// `/healthz` — all that `[server.public]` serves.
pub fn public_routes() -> Router<AppState> {
    public_only().fallback(ops::not_found)
}

fn public_only() -> Router<AppState> {
    Router::new()
        .route("/v1/callbacks/twilio/{id}", post(callbacks::twilio))
        .route(
            "/v1/keys/confirm/{token}",
            get(keys::confirm_page).post(keys::confirm),
        )
        .route("/v1/inbound/sms/twilio", post(callbacks::twilio_inbound))
        .route("/v1/inbound/sms", post(callbacks::gateway_inbound))
        .route(
            "/v1/recovery/{token}",
            get(assurances::recovery_page).post(assurances::recovery_form),
        )
        .route(
            "/v1/veto/{token}",
            get(changes::veto_page).post(changes::veto_link),
        )
        .route(
            "/v1/call/{token}",
            get(calls::customer_page).post(calls::customer_form),
        )
        .route("/healthz", get(ops::healthz))
}

/// The API: source systems and staff, by token.
fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/events", post(events::post_event))
        .route("/v1/events/batch", post(events::post_batch))
        .route(
            "/v1/events/{id}",
            get(events::get_event).delete(events::delete_event),
        )
        .route(
            "/v1/accounts/{id}",
            put(directory::put_account).get(directory::get_account),
        )
        .route(
            "/v1/accounts/{id}/contacts/{cid}",
            put(directory::put_contact),
        )
        .route(
            "/v1/accounts/{id}/contacts/{cid}/destinations",
            post(directory::add_destination),
        )
        .route(
            "/v1/accounts/{id}/contacts/{cid}/destinations/{did}",
            delete(directory::delete_destination),
        )
        .route(
            "/v1/accounts/{id}/contacts/{cid}/destinations/{did}/verify",
            post(directory::verify_destination),
        )
        .route(
            "/v1/accounts/{id}/contacts/{cid}/destinations/{did}/code",
            post(directory::renew_code),
        )
        .route(
            "/v1/accounts/{id}/contacts/{cid}/destinations/{did}/secret",
            post(directory::rotate_secret),
        )
        .route("/v1/keys", post(keys::submit))
        .route("/v1/keys/{address}", get(keys::status).delete(keys::remove))
        .route("/v1/changes", get(changes::list))
        .route("/v1/changes/{id}", get(changes::get))
        .route("/v1/changes/{id}/approve", post(changes::approve))
        .route("/v1/changes/{id}/veto", post(changes::veto))
        .route("/v1/changes/{id}/code", post(changes::send_code))
        .route("/v1/changes/{id}/proof", post(changes::prove))
        .route("/v1/changes/{id}/connection", post(changes::connection))
        .route(
            "/v1/changes/{id}/assurances",
            get(assurances::list).post(assurances::record),
        )
        .route("/v1/changes/{id}/assurance", post(assurances::complete))
        .route("/v1/calls", post(calls::open))
        .route("/v1/calls/status", get(calls::status))
        .route("/v1/calls/{id}", get(calls::get))
        .route("/v1/calls/{id}/staff-code", post(calls::staff_code))
        .route("/v1/calls/{id}/customer-code", post(calls::customer_code))
        .route("/v1/incidents", get(changes::incidents))
        .route("/v1/incidents/{id}/close", post(changes::close_incident))
        .route("/v1/audit", get(changes::audit))
        .route("/v1/deliveries", get(deliveries::list))
        .route("/v1/deliveries/{id}/retry", post(deliveries::retry))
        .route("/metrics", get(ops::metrics))
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
            Err(AppError::TooMany {
                code: "rate_limited",
                message: format!(
                    "too many links that were not valid from this address; try again after {}",
                    crate::model::fmt_time(retry_at)
                ),
                retry_after: (retry_at - now).to_std().ok(),
            })
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
    AppError::TooMany {
        code: "too_many_wrong_codes",
        message: format!(
            "this token entered too many wrong codes; try again after {}",
            crate::model::fmt_time(retry_at)
        ),
        retry_after: (retry_at - now).to_std().ok(),
    }
}
