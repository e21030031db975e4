//! The HTTP API (DESIGN.md §2a and §3).

mod callbacks;
mod deliveries;
mod directory;
mod events;
mod keys;
mod ops;

use super::AppState;
use axum::Router;
use axum::routing::{delete, get, post, put};

pub fn routes() -> Router<AppState> {
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
        .route("/v1/callbacks/twilio/{id}", post(callbacks::twilio))
        .route("/v1/keys", post(keys::submit))
        .route(
            "/v1/keys/confirm/{token}",
            get(keys::confirm_page).post(keys::confirm),
        )
        .route("/v1/keys/{address}", get(keys::status).delete(keys::remove))
        .route("/v1/deliveries", get(deliveries::list))
        .route("/v1/deliveries/{id}/retry", post(deliveries::retry))
        .route("/healthz", get(ops::healthz))
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
