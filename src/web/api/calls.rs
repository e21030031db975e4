//! Call verification over HTTP (DESIGN.md §8, contract):
//!
//! * `POST /v1/calls` (scope `calls`, a staff member's token), body
//!   `{"account", "contact"}`: 201 `{"id", "staff_code", "expires_at"}`,
//!   and the customer is told with their own code;
//! * `POST /v1/calls/{id}/staff-code` (the same staff member): the code
//!   the customer read out;
//! * `POST /v1/calls/{id}/customer-code`, body `{"code", "token"}` (the
//!   token of the customer's link is their credential): the code staff
//!   read out; the same from the page behind the link,
//!   `GET|POST /v1/call/{token}`;
//! * `GET /v1/calls/{id}`, and `GET /v1/calls/status?account=…&contact=…`
//!   — "are you calling me now?" (scope `calls`; the portal later).

use super::changes::Peer;
use super::{page, plausible_token};
use crate::calls::{Calls, Opened};
use crate::changes::Actor;
use crate::model::Call;
use crate::model::{CallAnswer, CallRefusal, CallState, Scope};
use crate::web::error::ErrorBody;
use crate::web::{AppError, AppState, Caller};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A verification opened: the code staff read out, once.
#[derive(Serialize, ToSchema)]
pub struct CallOpened {
    pub id: String,
    /// The 6 digits staff read to the customer (shown once).
    pub staff_code: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// One verification open for a customer.
#[derive(Serialize, ToSchema)]
pub struct Calling {
    pub id: String,
    /// Who is calling.
    pub staff: String,
    #[schema(format = DateTime)]
    pub opened_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// Whether anyone of the operator is calling the customer now.
#[derive(Serialize, ToSchema)]
pub struct CallStatus {
    pub calling: bool,
    pub calls: Vec<Calling>,
}

/// The customer's form: the code staff read out.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CodeForm {
    /// 6 digits.
    code: String,
}

const CALL_REFUSED: &str =
    "`wrong_code` (the third fails the verification), `call_over`, `unreachable`, `invalid_link`";

/// The limit bucket of call links that were not valid.
const WRONG_LINKS: &str = "wrong_call_links";

fn calls(st: &AppState) -> Calls<'_> {
    Calls {
        store: st.store.as_ref(),
        config: st.config.as_ref(),
        now: st.clock.now(),
    }
}

fn refusal(why: CallRefusal, call: Option<&crate::model::Call>) -> AppError {
    let code = match why {
        CallRefusal::NotFound => {
            return AppError::NotFound {
                what: "call verification".into(),
            };
        }
        CallRefusal::UnknownContact => {
            return AppError::NotFound {
                what: "that account's contact".into(),
            };
        }
        CallRefusal::Unreachable => "unreachable",
        CallRefusal::Over => "call_over",
        CallRefusal::WrongCode => "wrong_code",
        CallRefusal::InvalidLink => "invalid_link",
    };
    let mut message = why.to_string();
    if let Some(c) = call {
        message.push_str(&format!(
            " (verification {}: {}, {} wrong codes of {})",
            c.id,
            c.state.as_str(),
            c.attempts,
            crate::trust::calls::ATTEMPTS
        ));
    }
    AppError::Conflict { code, message }
}

/// The six digits of a typed code, or 422.
fn six_digits(code: &str) -> Result<&str, AppError> {
    let code = code.trim();
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(code)
    } else {
        Err(AppError::invalid(
            "invalid_field",
            "code",
            "must be the 6 digits read out",
        ))
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"account": "A1", "contact": "alice"})))]
#[serde(deny_unknown_fields)]
struct OpenInput {
    /// The account of the customer on the line.
    account: String,
    /// The contact (person) on the line.
    contact: String,
}

/// Open a call verification (staff).
///
/// A staff member's token. 201 with the code staff read out; the customer
/// is told, on their verified destinations, with a link to type it and
/// their own code to read back.
#[utoipa::path(post, path = "/v1/calls", tag = "calls",
    params(super::openapi::Ticket),
    request_body = OpenInput,
    security(("token" = ["calls"])),
    responses(
        (status = 201, body = CallOpened),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 403, description = "`staff_only`: not a staff member's token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such contact", body = ErrorBody),
        (status = 409, description = "`unreachable`: the contact has no verified destination", body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many verifications for this customer or staff member", body = ErrorBody),
    ))]
pub async fn open(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::Calls)?;
    caller.staff()?;
    let input: OpenInput = super::json_body(&body)?;
    for (field, v) in [("account", &input.account), ("contact", &input.contact)] {
        crate::model::check_id(v).map_err(|e| AppError::invalid("invalid_field", field, e))?;
    }
    let actor = Actor {
        id: caller.actor(),
        source: peer.source,
        ticket: peer.ticket,
    };
    let now = st.clock.now();
    match calls(&st)
        .open(&input.account, &input.contact, &actor)
        .await?
    {
        Opened::Open { call, staff_code } => {
            st.wake.notify_one();
            Ok((
                StatusCode::CREATED,
                Json(CallOpened {
                    id: call.id,
                    staff_code,
                    expires_at: crate::model::fmt_time(call.expires_at),
                }),
            ))
        }
        Opened::Refused(why) => Err(refusal(why, None)),
        Opened::Limited { by, retry_at } => Err(AppError::limited_until(
            "rate_limited",
            format_args!("too many call verifications for this {by}"),
            retry_at,
            now,
        )),
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"code": "123456"})))]
#[serde(deny_unknown_fields)]
struct StaffCodeInput {
    /// The 6 digits the customer read out.
    code: String,
}

/// Type the customer's code (staff).
///
/// The staff member who opened it types the code the customer read out.
/// 200 with the verification (`verified` once the customer typed staff's
/// code too); 409 for a wrong code (the third fails it) or one that is
/// over.
#[utoipa::path(post, path = "/v1/calls/{id}/staff-code", tag = "calls",
    params(("id" = String, Path, description = "The verification's id")),
    request_body = StaffCodeInput,
    security(("token" = ["calls"])),
    responses(
        (status = 200, body = Call),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 403, description = "`staff_only`: not a staff member's token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = CALL_REFUSED, body = ErrorBody),
        (status = 422, description = "`invalid_field`: not 6 digits", body = ErrorBody),
    ))]
pub async fn staff_code(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::Calls)?;
    let staff = caller.staff()?;
    let input: StaffCodeInput = super::json_body(&body)?;
    let code = six_digits(&input.code)?;
    match st.store.call(&id).await? {
        None => return Err(refusal(CallRefusal::NotFound, None)),
        Some(c) if c.staff != staff => {
            return Err(AppError::Conflict {
                code: "not_your_call",
                message:
                    "only the staff member who opened a verification types the customer's code"
                        .into(),
            });
        }
        Some(_) => {}
    }
    let actor = Actor {
        id: caller.actor(),
        source: peer.source,
        ticket: peer.ticket,
    };
    answer(&st, calls(&st).staff_typed(&id, code, &actor).await?)
}

fn answer(st: &AppState, a: CallAnswer) -> Result<Json<Call>, AppError> {
    st.wake.notify_one();
    match a {
        CallAnswer::Done(call) => Ok(Json(call)),
        CallAnswer::Refused { why, call } => Err(refusal(why, call.as_ref())),
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"code": "654321", "token": "…the secret of the customer's link…"})))]
#[serde(deny_unknown_fields)]
struct CustomerCodeInput {
    /// The 6 digits staff read out.
    code: String,
    /// The secret of the customer's link: their credential.
    token: String,
}

/// Type staff's code (customer).
///
/// The customer types the code staff read out; the token from their link
/// is their credential (no bearer token).
#[utoipa::path(post, path = "/v1/calls/{id}/customer-code", tag = "calls",
    params(("id" = String, Path, description = "The verification's id")),
    request_body = CustomerCodeInput,
    responses(
        (status = 200, body = Call),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = CALL_REFUSED, body = ErrorBody),
        (status = 422, description = "`invalid_field`: not 6 digits", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many links that were not valid from this address", body = ErrorBody),
    ))]
pub async fn customer_code(
    State(st): State<AppState>,
    peer: Peer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let input: CustomerCodeInput = super::json_body(&body)?;
    let code = six_digits(&input.code)?;
    super::links_allowed(&st, &peer, WRONG_LINKS).await?;
    if !plausible_token(&input.token) {
        super::count_wrong_link(&st, &peer, WRONG_LINKS).await?;
        return Err(refusal(CallRefusal::InvalidLink, None));
    }
    let a = calls(&st)
        .customer_typed(&input.token, Some(&id), code, peer.source.clone())
        .await?;
    if let CallAnswer::Refused {
        why: CallRefusal::InvalidLink,
        ..
    } = a
    {
        super::count_wrong_link(&st, &peer, WRONG_LINKS).await?;
    }
    answer(&st, a)
}

/// Read a call verification.
///
/// Where a verification stands.
#[utoipa::path(get, path = "/v1/calls/{id}", tag = "calls",
    params(("id" = String, Path, description = "The verification's id")),
    security(("token" = ["calls"])),
    responses(
        (status = 200, body = Call),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn get(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::Calls)?;
    match st.store.call(&id).await? {
        Some(c) => Ok(Json(c)),
        None => Err(refusal(CallRefusal::NotFound, None)),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    account: String,
    contact: String,
}

/// Is anyone calling this customer?
///
/// Whether anyone of the operator is calling this customer now, and who.
#[utoipa::path(get, path = "/v1/calls/status", tag = "calls",
    params(StatusQuery),
    security(("token" = ["calls"])),
    responses(
        (status = 200, body = CallStatus),
        (status = 400, description = "`bad_request`: `account` or `contact` missing, or a parameter kci does not take", body = ErrorBody),
    ))]
pub async fn status(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<StatusQuery>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::Calls)?;
    let open = st
        .store
        .open_calls(&q.account, &q.contact, st.clock.now())
        .await?;
    let calls: Vec<Calling> = open
        .iter()
        .map(|c| Calling {
            id: c.id.clone(),
            staff: c.staff.clone(),
            opened_at: crate::model::fmt_time(c.opened_at),
            expires_at: crate::model::fmt_time(c.expires_at),
        })
        .collect();
    Ok(Json(CallStatus {
        calling: !calls.is_empty(),
        calls,
    }))
}

/// The page behind a call notice's link.
///
/// Where the customer types the code staff read to them.
#[utoipa::path(get, path = "/v1/call/{token}", tag = "links",
    params(("token" = String, Path, description = "The link's secret")),
    responses(
        (status = 200, description = "A page with the field", content_type = "text/html", body = String),
        (status = 404, description = "Not a link kci sent", content_type = "text/html", body = String),
    ))]
pub async fn customer_page(Path(token): Path<String>) -> impl IntoResponse {
    if !plausible_token(&token) {
        return not_valid();
    }
    super::field_page(
        "Check who is calling",
        "Type the code the caller reads to you. Only our staff can know it.",
        &format!("/v1/call/{token}"),
        ("code", 6, true),
        "Check",
    )
}

fn not_valid() -> axum::response::Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not valid",
        "This link was used already, has expired, or is not one kci sent.",
        None,
    )
    .into_response()
}

/// Submit a call page's form.
///
/// The code typed, and what it means for the customer, in words.
#[utoipa::path(post, path = "/v1/call/{token}", tag = "links",
    params(("token" = String, Path, description = "The link's secret")),
    request_body(content = CodeForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Verified, or the code is right", content_type = "text/html", body = String),
        (status = 404, description = "Used, expired or not a link kci sent", content_type = "text/html", body = String),
        (status = 409, description = "Wrong code, or the call could not be verified", content_type = "text/html", body = String),
        (status = 422, description = "Not 6 digits", content_type = "text/html", body = String),
        (status = 429, description = "`rate_limited`: too many links that were not valid from this address", body = ErrorBody),
    ))]
pub async fn customer_form(
    State(st): State<AppState>,
    super::changes::LinkPeer(peer): super::changes::LinkPeer,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<axum::response::Response, AppError> {
    super::links_allowed(&st, &peer, WRONG_LINKS).await?;
    if !plausible_token(&token) {
        super::count_wrong_link(&st, &peer, WRONG_LINKS).await?;
        return Ok(not_valid());
    }
    let code = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let Ok(code) = six_digits(&code) else {
        return Ok(page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Six digits",
            "Type the 6 digits the caller reads to you.",
            None,
        )
        .into_response());
    };
    let a = calls(&st)
        .customer_typed(&token, None, code, peer.source.clone())
        .await?;
    st.wake.notify_one();
    Ok(match a {
        CallAnswer::Done(c) if c.state == CallState::Verified => page(
            StatusCode::OK,
            "Verified",
            &format!("The call is genuine: you are speaking with {}.", c.staff),
            None,
        )
        .into_response(),
        CallAnswer::Done(_) => page(
            StatusCode::OK,
            "Code right",
            "The code is right. Now read your own code to the caller; the call is verified when they have typed it.",
            None,
        )
        .into_response(),
        CallAnswer::Refused {
            why: CallRefusal::WrongCode,
            call: Some(c),
        } if c.state == CallState::Open => page(
            StatusCode::CONFLICT,
            "Wrong code",
            "That is not the code. Ask the caller to read it again — or hang up if you are not sure who is calling.",
            None,
        )
        .into_response(),
        CallAnswer::Refused {
            why: CallRefusal::InvalidLink,
            ..
        } => {
            super::count_wrong_link(&st, &peer, WRONG_LINKS).await?;
            not_valid()
        }
        CallAnswer::Refused { .. } => page(
            StatusCode::CONFLICT,
            "Hang up",
            "This call could not be verified. Hang up now; if you need us, call us on the number you know.",
            None,
        )
        .into_response(),
    })
}
