//! Assurance recovery over HTTP (DESIGN.md §7):
//!
//! * `POST /v1/changes/{id}/assurances` (scope `assure`, a staff member's
//!   token), body `{"a_word", "ticket", "met_on", "address"?}`: the
//!   assurer who met the customer records an assurance; 201, and the
//!   confirmation link goes to the primary address;
//! * `GET /v1/changes/{id}/assurances` (scope `changes:read`): where each
//!   stands (no secret, nor any hash of one);
//! * `POST /v1/changes/{id}/assurance` (scope `keys:write`: the portal or
//!   a source system on the customer's behalf), body `{"secret"}`: the
//!   recovery secret `A-word-T-word`;
//! * `GET|POST /v1/recovery/{token}`: the page behind the confirmation
//!   link — its button confirms the address and sends the T-word; once
//!   confirmed, its field takes the recovery secret.
//!
//! Every step goes through `crate::changes`; wrong secrets count against
//! the recovery (locked at the third) and against the token or the
//! client's address.

use super::changes::{Peer, refusal};
use super::{page, plausible_token};
use crate::changes::{Actor, AssuranceInput, Engine};
use crate::model::{Assurance, Change};
use crate::model::{AssuranceState, ChangeAnswer, ChangeRefusal, Scope};
use crate::web::error::ErrorBody;
use crate::web::{AppError, AppState, Caller};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An assurance recorded, and the change it is for.
#[derive(Serialize, ToSchema)]
pub struct Assured {
    pub assurance: Assurance,
    pub change: Change,
}

/// A change's assurances.
#[derive(Serialize, ToSchema)]
pub struct Assurances {
    pub assurances: Vec<Assurance>,
}

/// A recovery page's form: the button (no field) or the secret.
#[derive(ToSchema)]
#[allow(dead_code)]
struct RecoveryForm {
    /// The A-word, a dash and the recovery word (absent: the button that
    /// confirms and mails the recovery word).
    secret: Option<String>,
}

/// The limit bucket of recovery links that were not valid.
const WRONG_LINKS: &str = "wrong_recovery_links";
/// The longest recovery secret read (an A-word, a dash, a T-word).
const MAX_SECRET: usize = crate::trust::assurance::A_WORD_MAX + 1 + 64;

fn engine(st: &AppState) -> Engine<'_> {
    Engine {
        store: st.store.as_ref(),
        config: st.config.as_ref(),
        now: st.clock.now(),
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"a_word": "lighthouse", "ticket": "T-4711", "met_on": "2026-12-01"})))]
#[serde(deny_unknown_fields)]
struct AssureInput {
    /// The word agreed with the customer in person.
    a_word: String,
    /// The ticket the assurance is recorded under (1 to 64 characters).
    ticket: String,
    /// When they met: `YYYY-MM-DD` or an RFC 3339 time, not in the future.
    met_on: String,
    /// The customer's primary address, if not the change's.
    address: Option<String>,
}

/// When they met, from `YYYY-MM-DD` (that day's start, UTC) or RFC 3339;
/// never in the future.
fn met_on(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, AppError> {
    let at = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        })
        .ok_or_else(|| {
            AppError::invalid(
                "invalid_field",
                "met_on",
                "must be a date (YYYY-MM-DD) or an RFC 3339 time",
            )
        })?;
    if at > now {
        return Err(AppError::invalid(
            "invalid_field",
            "met_on",
            "is in the future: record an assurance after the meeting",
        ));
    }
    Ok(at)
}

/// Record an assurance (staff).
///
/// A staff member met the customer and agreed an A-word. 201 with the
/// assurance and the change; 409 when the change is not pending or
/// proven already, the meeting is too old, the address is not the primary
/// one, this assurer assured it already, or the recovery is locked; 422
/// for a bad A-word, ticket or date.
#[utoipa::path(post, path = "/v1/changes/{id}/assurances", tag = "assurance",
    params(("id" = String, Path, description = "The change's id")),
    request_body = AssureInput,
    security(("token" = ["assure"])),
    responses(
        (status = 201, body = Assured),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 403, description = "`staff_only`: not a staff member's token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "A refusal: `not_pending`, `proven_already`, `assurance_too_old`, `not_a_primary_address`, `assured_already`, `assurance_locked`, `assurance_not_allowed`, `too_many_assurances`", body = ErrorBody),
        (status = 422, description = "`invalid_field`: the A-word, ticket, date or address", body = ErrorBody),
    ))]
pub async fn record(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    caller.require(Scope::Assure)?;
    caller.staff()?;
    let input: AssureInput = super::json_body(&body)?;
    crate::trust::assurance::check_a_word(&input.a_word)
        .map_err(|e| AppError::invalid("invalid_field", "a_word", e))?;
    let ticket = input.ticket.trim();
    if ticket.is_empty() || ticket.chars().count() > 64 || ticket.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "invalid_field",
            "ticket",
            "must be 1 to 64 characters, no control characters",
        ));
    }
    let now = st.clock.now();
    let met_on = met_on(&input.met_on, now)?;
    if let Some(a) = &input.address
        && crate::keys::normalise(a).is_none()
    {
        return Err(AppError::invalid(
            "invalid_field",
            "address",
            "is not an email address",
        ));
    }
    let actor = Actor {
        id: caller.actor(),
        source: peer.source,
        ticket: Some(ticket.to_string()),
    };
    let input = AssuranceInput {
        address: input.address,
        a_word: input.a_word,
        ticket: ticket.to_string(),
        met_on,
    };
    match engine(&st).assure(&id, input, &actor).await? {
        ChangeAnswer::Assured { change, assurance } => {
            st.wake.notify_one();
            Ok((
                StatusCode::CREATED,
                Json(Assured {
                    assurance: *assurance,
                    change,
                }),
            )
                .into_response())
        }
        ChangeAnswer::Refused { why, .. } => Err(refusal(why, &format!("change `{id}`"))),
        other => Err(AppError::Internal(format!("assure answered {other:?}"))),
    }
}

/// List a change's assurances.
#[utoipa::path(get, path = "/v1/changes/{id}/assurances", tag = "assurance",
    params(("id" = String, Path, description = "The change's id")),
    security(("token" = ["changes:read"])),
    responses(
        (status = 200, body = Assurances),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::ChangesRead)?;
    if st.store.change(&id).await?.is_none() {
        return Err(AppError::NotFound {
            what: format!("change `{}`", crate::model::excerpt(&id, 64)),
        });
    }
    let list = st.store.assurances(&id).await?;
    Ok(Json(Assurances { assurances: list }))
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"secret": "lighthouse-marble"})))]
#[serde(deny_unknown_fields)]
struct SecretInput {
    /// The A-word, a dash, and the recovery word (T-word) kci mailed.
    secret: String,
}

/// Complete an assurance-based recovery.
///
/// With the A-word and the T-word. 200 with the change (applied when that
/// was all it needed); 409 `wrong_secret` (which half was wrong is never
/// said), `assurance_locked` at the third, `no_assurance` when none is
/// confirmed and live.
#[utoipa::path(post, path = "/v1/changes/{id}/assurance", tag = "assurance",
    params(("id" = String, Path, description = "The change's id")),
    request_body = SecretInput,
    security(("token" = ["keys:write"])),
    responses(
        (status = 200, body = super::changes::WithChange),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`wrong_secret`, `assurance_locked`, `no_assurance`, `not_pending`", body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
        (status = 429, description = "`too_many_wrong_codes`: this token made too many wrong attempts", body = ErrorBody),
    ))]
pub async fn complete(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::KeysWrite)?;
    let input: SecretInput = super::json_body(&body)?;
    if input.secret.is_empty() || input.secret.len() > MAX_SECRET {
        return Err(AppError::invalid(
            "invalid_field",
            "secret",
            format!("must be 1 to {MAX_SECRET} characters: the A-word, a dash, the recovery word"),
        ));
    }
    let now = st.clock.now();
    super::wrong_codes_allowed(&st, &caller, now).await?;
    let actor = Actor {
        id: caller.actor(),
        source: peer.source,
        ticket: peer.ticket,
    };
    let answer = engine(&st)
        .complete_assurance(&id, &input.secret, &actor)
        .await?;
    super::changes::proof_answer(&st, &caller, &id, answer, now).await
}

fn not_valid() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not valid",
        "This link was used already, has expired, or is not one kci sent.",
        None,
    )
    .into_response()
}

/// The page behind a recovery link.
///
/// What the confirmation link opens. Changes
/// nothing (mail scanners follow links): a button to confirm, or — once
/// confirmed — the field for the recovery secret. Links that are not
/// valid count against the client's address, as on the form.
#[utoipa::path(get, path = "/v1/recovery/{token}", tag = "links",
    params(("token" = String, Path, description = "The link's secret")),
    responses(
        (status = 200, description = "A page with the button, or the field for the secret", content_type = "text/html", body = String),
        (status = 404, description = "Used, expired or not a link kci sent", content_type = "text/html", body = String),
        (status = 429, description = "`rate_limited`: too many links that were not valid from this address", body = ErrorBody),
    ))]
pub async fn recovery_page(
    State(st): State<AppState>,
    super::changes::LinkPeer(peer): super::changes::LinkPeer,
    Path(token): Path<String>,
) -> Result<Response, AppError> {
    super::links_allowed(&st, &peer, WRONG_LINKS).await?;
    if !plausible_token(&token) {
        super::count_wrong_link(&st, &peer, WRONG_LINKS).await?;
        return Ok(not_valid());
    }
    let now = st.clock.now();
    let action = format!("/v1/recovery/{token}");
    Ok(match engine(&st).assurance_by_link(&token).await? {
        Some(a) if a.state == AssuranceState::Recorded && a.live(now) => page(
            StatusCode::OK,
            "Confirm your account recovery",
            &format!(
                "{} recorded meeting you in person to recover your account. If that was you, confirm that this address reaches you: we will send your recovery word here.",
                a.assurer
            ),
            Some((&action, "Confirm")),
        )
        .into_response(),
        Some(a) if a.state == AssuranceState::Confirmed && a.live(now) => super::field_page(
            "Complete your account recovery",
            "Enter the word you agreed when you met, a dash, and the recovery word we mailed you (yourword-recoveryword). Three wrong tries lock the recovery.",
            &action,
            ("secret", MAX_SECRET, false),
            "Complete",
        ),
        _ => {
            super::count_wrong_link(&st, &peer, WRONG_LINKS).await?;
            not_valid()
        }
    })
}

/// Submit a recovery page's form.
///
/// The page's button (confirm: the T-word goes out) or its field
/// (`secret`: complete).
#[utoipa::path(post, path = "/v1/recovery/{token}", tag = "links",
    params(("token" = String, Path, description = "The link's secret")),
    request_body(content = RecoveryForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Confirmed, recovered, or waiting for more", content_type = "text/html", body = String),
        (status = 404, description = "Used, expired or not a link kci sent", content_type = "text/html", body = String),
        (status = 409, description = "Too late, ended, wrong secret or locked", content_type = "text/html", body = String),
        (status = 422, description = "The secret is empty or too long", content_type = "text/html", body = String),
        (status = 429, description = "`rate_limited`: too many links that were not valid from this address", body = ErrorBody),
    ))]
pub async fn recovery_form(
    State(st): State<AppState>,
    super::changes::LinkPeer(peer): super::changes::LinkPeer,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    super::links_allowed(&st, &peer, WRONG_LINKS).await?;
    if !plausible_token(&token) {
        super::count_wrong_link(&st, &peer, WRONG_LINKS).await?;
        return Ok(not_valid());
    }
    let secret = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "secret")
        .map(|(_, v)| v.into_owned());
    let engine = engine(&st);
    let Some(secret) = secret else {
        let answer = engine
            .confirm_assurance(&token, peer.source.clone())
            .await?;
        return Ok(match answer {
            ChangeAnswer::Assured { .. } => {
                st.wake.notify_one();
                page(
                    StatusCode::OK,
                    "Confirmed",
                    "Thank you. We have mailed your recovery word to this address. Open this link again to complete the recovery with it.",
                    None,
                )
                .into_response()
            }
            ChangeAnswer::Refused {
                why: ChangeRefusal::AssuranceTooOld,
                ..
            } => page(
                StatusCode::CONFLICT,
                "Too late",
                "The meeting this recovery rests on was too long ago. Please meet one of our assurers again.",
                None,
            )
            .into_response(),
            ChangeAnswer::Refused {
                why: ChangeRefusal::InvalidLink,
                ..
            } => {
                super::count_wrong_link(&st, &peer, WRONG_LINKS).await?;
                not_valid()
            }
            _ => page(
                StatusCode::CONFLICT,
                "Already ended",
                "The request this recovery was for has ended: nothing changes.",
                None,
            )
            .into_response(),
        });
    };
    if secret.is_empty() || secret.len() > MAX_SECRET {
        return Ok(page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Recovery secret",
            "Enter the word you agreed when you met, a dash, and the recovery word we mailed you.",
            None,
        )
        .into_response());
    }
    let Some(a) = engine
        .assurance_by_link(&token)
        .await?
        .filter(|a| a.state == AssuranceState::Confirmed)
    else {
        super::count_wrong_link(&st, &peer, WRONG_LINKS).await?;
        return Ok(not_valid());
    };
    let actor = Actor {
        id: "link".into(),
        source: peer.source.clone(),
        ticket: None,
    };
    let answer = engine
        .complete_assurance(&a.change, &secret, &actor)
        .await?;
    st.wake.notify_one();
    Ok(match answer {
        ChangeAnswer::Settled(_) => page(
            StatusCode::OK,
            "Recovered",
            "Your recovery is complete and the change is made. Everyone on your account has been told.",
            None,
        )
        .into_response(),
        ChangeAnswer::Waiting(_) => page(
            StatusCode::OK,
            "Recovery confirmed",
            "Your recovery secret is right. The change still waits for what else it needs (our staff's approvals, or another assurance); you will be told when it is made.",
            None,
        )
        .into_response(),
        ChangeAnswer::Refused {
            why: ChangeRefusal::WrongSecret,
            ..
        } => page(
            StatusCode::CONFLICT,
            "Not right",
            "That is not the recovery secret. Check both words and the dash between them; three wrong tries lock the recovery.",
            None,
        )
        .into_response(),
        ChangeAnswer::Refused {
            why: ChangeRefusal::AssuranceLocked,
            ..
        } => page(
            StatusCode::CONFLICT,
            "Locked",
            "The recovery is locked after too many wrong tries. Nothing changed; our staff will look into it.",
            None,
        )
        .into_response(),
        _ => not_valid(),
    })
}
