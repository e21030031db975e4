//! The key registry over HTTP (DESIGN.md §6): a source system (or the
//! portal) submits a customer's key (`POST /v1/keys`, scope `keys:write`),
//! sees where an address stands (`GET /v1/keys/{address}`), and asks for
//! its removal (`DELETE /v1/keys/{address}`, a protected change). The
//! links kci mails, encrypted to a key, land on `/v1/keys/confirm/{token}`:
//! a page with one button, so a mail scanner that fetches links confirms
//! nothing; only the POST does.

use super::changes::WithChange;
use super::{page, plausible_token};
use crate::keys::{Origin, Registry, Removal, Submitted, normalise};
use crate::model::{Change, KeyStatus};
use crate::model::{Confirmed, Scope};
use crate::web::error::ErrorBody;
use crate::web::{AppError, AppState, Caller};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a submitted key stands.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubmitStatus {
    /// A confirmation link went to the key, encrypted to it.
    Pending,
    /// A newer copy of the active key, merged into it.
    Refreshed,
    /// The address has another active key: the replacement waits as a
    /// protected change.
    ChangeRequested,
}

/// A key taken.
#[derive(Serialize, ToSchema)]
pub struct KeySubmitted {
    pub address: String,
    pub fingerprint: String,
    pub status: SubmitStatus,
    /// The protected change, with `change_requested`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    /// What is weak about the key, though it was taken.
    pub warnings: Vec<String>,
}

fn registry(st: &AppState) -> Registry<'_> {
    Registry {
        store: st.store.as_ref(),
        config: st.config.as_ref(),
        now: st.clock.now(),
        metrics: Some(st.metrics.as_ref()),
    }
}

/// A request by `caller`, limited per token.
fn origin(caller: &Caller) -> Origin {
    Origin {
        channel: "api",
        source: Some(format!("token:{}", caller.0.id)),
        requested_by: caller.actor(),
    }
}

/// 429 for a request over a limit.
fn limited(
    by: &str,
    retry_at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> AppError {
    AppError::limited_until(
        "rate_limited",
        format_args!("too many key requests for this {by}"),
        retry_at,
        now,
    )
}

/// 409 for a request the registry did not record.
fn not_recorded(why: crate::model::Refused) -> AppError {
    AppError::Conflict {
        code: match why {
            crate::model::Refused::Replayed => "proof_replayed",
            crate::model::Refused::TooManyChanges => "too_many_changes",
        },
        message: why.to_string(),
    }
}

fn address(raw: &str) -> Result<String, AppError> {
    normalise(raw).ok_or_else(|| {
        AppError::invalid(
            "invalid_field",
            "address",
            format!("`{raw}` is not an email address"),
        )
    })
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"address": "alice@example.com", "key": "-----BEGIN PGP PUBLIC KEY BLOCK-----\n…\n-----END PGP PUBLIC KEY BLOCK-----"})))]
#[serde(deny_unknown_fields)]
struct SubmitInput {
    /// The email address the key is for.
    address: String,
    /// The public key, ASCII-armored.
    key: String,
}

/// Submit a customer's key.
///
/// 202 with the key's fingerprint and `pending` (a confirmation link went
/// to the key, encrypted to it) or `change_requested` (the address has
/// another active key); 200 `refreshed` for a newer copy of the active
/// key; 422 with the reason when the key is refused.
#[utoipa::path(post, path = "/v1/keys", tag = "keys",
    request_body = SubmitInput,
    security(("token" = ["keys:write"])),
    responses(
        (status = 200, description = "`refreshed`", body = KeySubmitted),
        (status = 202, description = "`pending` or `change_requested`", body = KeySubmitted),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 409, description = "`no_signing_key`: this hub signs no mail; `proof_replayed`, `too_many_changes`", body = ErrorBody),
        (status = 422, description = "`invalid_field`; `key_refused`: the key is not usable (the message says why)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many key requests for this address or token", body = ErrorBody),
    ))]
pub async fn submit(
    State(st): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::KeysWrite)?;
    let input: SubmitInput = super::json_body(&body)?;
    if st.config.email.signing_key.is_none() {
        return Err(AppError::Conflict {
            code: "no_signing_key",
            message:
                "this hub signs no mail ([email] signing_key is not set), so it registers no keys"
                    .into(),
        });
    }
    let address = address(&input.address)?;
    if input.key.len() > crate::pgp::MAX_KEY_BYTES * 2 {
        return Err(AppError::invalid(
            "key_refused",
            "key",
            format!("larger than {} bytes", crate::pgp::MAX_KEY_BYTES * 2),
        ));
    }
    let outcome = registry(&st)
        .submit(&address, input.key.as_bytes(), &origin(&caller), None)
        .await?;
    st.wake.notify_one();
    match outcome {
        Submitted::Pending(key) => Ok((
            StatusCode::ACCEPTED,
            Json(KeySubmitted {
                address,
                fingerprint: key.fingerprint,
                status: SubmitStatus::Pending,
                change: None,
                warnings: key.warnings,
            }),
        )),
        Submitted::Refreshed(key) => Ok((
            StatusCode::OK,
            Json(KeySubmitted {
                address,
                fingerprint: key.fingerprint,
                status: SubmitStatus::Refreshed,
                change: None,
                warnings: key.warnings,
            }),
        )),
        Submitted::ChangeRequested { key, change } => Ok((
            StatusCode::ACCEPTED,
            Json(KeySubmitted {
                address,
                fingerprint: key.fingerprint,
                status: SubmitStatus::ChangeRequested,
                change: Some(change),
                warnings: key.warnings,
            }),
        )),
        Submitted::Refused(why) => Err(AppError::invalid("key_refused", "key", why.mail_reason())),
        Submitted::NotRecorded(why) => Err(not_recorded(why)),
        Submitted::Limited { by, retry_at } => Err(limited(by, retry_at, st.clock.now())),
    }
}

/// Where an address's keys stand.
///
/// The active key, keys waiting for confirmation, and changes, with
/// fingerprints and times.
#[utoipa::path(get, path = "/v1/keys/{address}", tag = "keys",
    params(("address" = String, Path, description = "An email address")),
    security(("token" = ["directory:read"])),
    responses(
        (status = 200, body = KeyStatus),
        (status = 422, description = "`invalid_field`: not an email address", body = ErrorBody),
    ))]
pub async fn status(
    State(st): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::DirectoryRead)?;
    let address = address(&raw)?;
    let status = st.store.key_status(&address).await?;
    Ok(Json(status))
}

/// Ask to stop encrypting to an address.
///
/// A protected change: 202 with the pending change (its holder is mailed
/// a link, encrypted to the current key, to approve it); 404 if the
/// address has no active key.
#[utoipa::path(delete, path = "/v1/keys/{address}", tag = "keys",
    params(("address" = String, Path, description = "An email address")),
    security(("token" = ["keys:write"])),
    responses(
        (status = 202, body = WithChange),
        (status = 404, description = "`not_found`: the address has no active key", body = ErrorBody),
        (status = 409, description = "`proof_replayed`, `too_many_changes`", body = ErrorBody),
        (status = 422, description = "`invalid_field`: not an email address", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many key requests for this address or token", body = ErrorBody),
    ))]
pub async fn remove(
    State(st): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::KeysWrite)?;
    let address = address(&raw)?;
    match registry(&st)
        .remove(&address, None, &origin(&caller))
        .await?
    {
        Removal::Requested(change) | Removal::Applied(change) => {
            st.wake.notify_one();
            Ok((StatusCode::ACCEPTED, Json(WithChange { change })))
        }
        Removal::NoKey => Err(AppError::NotFound {
            what: format!("an active key for {address}"),
        }),
        Removal::NotRecorded(why) => Err(not_recorded(why)),
        Removal::Limited { by, retry_at } => Err(limited(by, retry_at, st.clock.now())),
    }
}

/// The page behind a key's confirmation link.
///
/// With the button that confirms. Changes nothing, so a mail scanner that
/// fetches links confirms nothing.
#[utoipa::path(get, path = "/v1/keys/confirm/{token}", tag = "links",
    params(("token" = String, Path, description = "The link's secret")),
    responses(
        (status = 200, description = "A page with the button", content_type = "text/html", body = String),
        (status = 404, description = "Not a link kci sent", content_type = "text/html", body = String),
    ))]
pub async fn confirm_page(Path(token): Path<String>) -> impl IntoResponse {
    if !plausible_token(&token) {
        return page(
            StatusCode::NOT_FOUND,
            "Link not valid",
            "This link is not one kci sent.",
            None,
        )
        .into_response();
    }
    page(
        StatusCode::OK,
        "Confirm",
        "Press the button to confirm what the message you received described.",
        Some((&format!("/v1/keys/confirm/{token}"), "Confirm")),
    )
    .into_response()
}

/// Follow a key's confirmation link.
///
/// Single use, valid 24 hours.
#[utoipa::path(post, path = "/v1/keys/confirm/{token}", tag = "links",
    params(("token" = String, Path, description = "The link's secret")),
    responses(
        (status = 200, description = "A page saying what it did", content_type = "text/html", body = String),
        (status = 404, description = "Used already, expired, or not a link kci sent", content_type = "text/html", body = String),
    ))]
pub async fn confirm(
    State(st): State<AppState>,
    super::changes::LinkPeer(peer): super::changes::LinkPeer,
    Path(token): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    if !plausible_token(&token) {
        return Ok(page(
            StatusCode::NOT_FOUND,
            "Link not valid",
            "This link is not one kci sent.",
            None,
        )
        .into_response());
    }
    let outcome = registry(&st).confirm(&token).await?;
    st.wake.notify_one();
    // What a followed link did goes in the audit log (an unknown one does
    // not: guesses would fill it).
    let entry = match &outcome {
        Confirmed::Activated(k) => Some(("key.activated", Some(k.address.clone()), None)),
        Confirmed::Applied(c) => Some(("change.applied", c.address.clone(), Some(c.id.clone()))),
        Confirmed::Proven(c) => Some(("change.proven", c.address.clone(), Some(c.id.clone()))),
        Confirmed::Invalid => None,
    };
    if let Some((action, address, change)) = entry {
        let mut d = crate::model::audit::AuditDraft::new("link:key", action, "ok");
        d.address = address;
        d.change = change;
        d.source = peer.source;
        if let Err(e) = st.store.audit(d, st.clock.now()).await {
            tracing::error!(error = %e, action, "could not write an audit entry");
        }
    }
    let (status, title, text) = match outcome {
        Confirmed::Activated(k) => (
            StatusCode::OK,
            "Key confirmed",
            format!(
                "Mail to {} is now encrypted to the key {}.",
                k.address, k.fingerprint
            ),
        ),
        Confirmed::Applied(c) => (
            StatusCode::OK,
            "Change applied",
            match c.fingerprint() {
                Some(f) => format!(
                    "Mail to {} is now encrypted to the key {f}.",
                    c.address.as_deref().unwrap_or_default()
                ),
                None => format!(
                    "Mail to {} is no longer encrypted.",
                    c.address.as_deref().unwrap_or_default()
                ),
            },
        ),
        Confirmed::Proven(c) => (
            StatusCode::OK,
            "Confirmation recorded",
            format!(
                "Thank you. The change for {} also needs the other key holder's confirmation; without it, it waits until {} at the earliest.",
                c.address.as_deref().unwrap_or_default(),
                crate::model::fmt_time(c.not_before)
            ),
        ),
        Confirmed::Invalid => (
            StatusCode::NOT_FOUND,
            "Link not valid",
            "This link was used already, has expired, or is not one kci sent.".to_string(),
        ),
    };
    Ok(page(status, title, &text, None).into_response())
}
