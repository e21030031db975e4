//! Protected changes, incidents and the audit log over HTTP (DESIGN.md §7):
//!
//! * `GET /v1/changes?account=…|address=…`, `GET /v1/changes/{id}`
//!   (scope `changes:read`);
//! * `POST /v1/changes/{id}/approve` (scope `changes:approve`, a staff
//!   member's token: approvals are a person's);
//! * `POST /v1/changes/{id}/veto` (scope `incidents`: staff stopping a
//!   change on the customer's behalf, audited under their name);
//! * `POST /v1/changes/{id}/code`, `POST /v1/changes/{id}/proof` (scope
//!   `keys:write`): a code sent to one of the customer's verified
//!   destinations, entered back as proof where the level allows;
//! * `GET|POST /v1/veto/{token}`: the page behind the link in a change's
//!   notices, and its button;
//! * `GET /v1/incidents`, `POST /v1/incidents/{id}/close` (scope
//!   `incidents`);
//! * `GET /v1/audit?account=…&after=…&limit=…` (scope `audit:read`).
//!
//! Every step goes through `crate::changes`; the answers are the change
//! (or incident) as stored.

use super::{page, plausible_token};
use crate::changes::{Actor, Engine};
use crate::model::audit::AuditEntry;
use crate::model::{Change, Incident};
use crate::model::{ChangeAnswer, ChangeRefusal, Scope};
use crate::store::ChangeFilter;
use crate::web::error::ErrorBody;
use crate::web::{AppError, AppState, Caller};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A change, as a step on it left it.
#[derive(Serialize, ToSchema)]
pub struct WithChange {
    pub change: Change,
}

/// Changes, newest first.
#[derive(Serialize, ToSchema)]
pub struct Changes {
    pub changes: Vec<Change>,
}

/// A change vetoed, and the incident that opened.
#[derive(Serialize, ToSchema)]
pub struct Vetoed {
    pub change: Change,
    pub incident: Incident,
}

/// Incidents, newest first.
#[derive(Serialize, ToSchema)]
pub struct Incidents {
    pub incidents: Vec<Incident>,
}

/// An incident, as a step on it left it.
#[derive(Serialize, ToSchema)]
pub struct WithIncident {
    pub incident: Incident,
}

/// A page of the audit log.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts (`after`); absent on the last page.
    pub next: Option<i64>,
}

/// Refusals of a step on a change (409); `error` names which.
const REFUSED: &str = "A refusal; `error` names it: `not_pending`, `already_applied`, `change_pending`, `own_change`, `approved_already`, `no_approval_needed`, `code_not_allowed`, `not_a_destination`, `no_code`, `wrong_code`, `code_locked`, `wrong_way`, `not_own_connection`, `no_mobile`, `proven_already`, …";

/// Where a request came from, as the audit log records it: the peer's
/// address (when the server knows it) and the ticket number staff work
/// under (`Kci-Ticket` header, 1 to 64 printable characters).
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub source: Option<String>,
    pub ticket: Option<String>,
}

/// The client's address as the perimeter decided it (behind a trusted
/// proxy, the address that proxy saw).
fn client_address(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<crate::web::perimeter::ClientAddr>()
        .map(|c| c.0.to_string())
        .or_else(|| {
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string())
        })
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let source = client_address(parts);
        let ticket = match parts.headers.get("kci-ticket") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .map(str::to_string)
                    .filter(|t| valid_ticket(t))
                    .ok_or_else(|| {
                        AppError::invalid(
                            "invalid_field",
                            "Kci-Ticket",
                            format!("must be 1 to {MAX_TICKET} printable characters"),
                        )
                    })?,
            ),
        };
        Ok(Peer { source, ticket })
    }
}

/// Where a person following a mailed link came from: only the address
/// (a ticket is staff's; a link's page never reads one).
pub struct LinkPeer(pub Peer);

impl<S: Send + Sync> FromRequestParts<S> for LinkPeer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(LinkPeer(Peer {
            source: client_address(parts),
            ticket: None,
        }))
    }
}

fn valid_ticket(t: &str) -> bool {
    !t.is_empty() && t.chars().count() <= MAX_TICKET && !t.chars().any(char::is_control)
}

fn engine(st: &AppState) -> Engine<'_> {
    Engine {
        store: st.store.as_ref(),
        config: st.config.as_ref(),
        now: st.clock.now(),
    }
}

/// The longest ticket number or note kept.
const MAX_TICKET: usize = 64;
const MAX_NOTE: usize = 2000;

/// What a staff step may carry: a ticket number, a note. The body may be
/// empty.
#[derive(Deserialize, Default, ToSchema)]
#[schema(examples(json!({"ticket": "T-4711", "note": "Customer confirmed on the phone"})))]
#[serde(deny_unknown_fields)]
struct StepInput {
    ticket: Option<String>,
    note: Option<String>,
}

fn step_input(body: &[u8]) -> Result<StepInput, AppError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(StepInput::default());
    }
    let input: StepInput = super::json_body(body)?;
    if let Some(t) = &input.ticket
        && !valid_ticket(t)
    {
        return Err(AppError::invalid(
            "invalid_field",
            "ticket",
            format!("must be 1 to {MAX_TICKET} characters, no control characters"),
        ));
    }
    if let Some(n) = &input.note
        && n.chars().count() > MAX_NOTE
    {
        return Err(AppError::invalid(
            "invalid_field",
            "note",
            format!("must be at most {MAX_NOTE} characters"),
        ));
    }
    Ok(input)
}

/// Who acts: the caller, from where, under which ticket (the body's,
/// else the header's).
fn actor(caller: &Caller, peer: Peer, ticket: Option<String>) -> Actor {
    Actor {
        id: caller.actor(),
        source: peer.source,
        ticket: ticket.or(peer.ticket),
    }
}

/// The answer to a refused step.
pub(super) fn refusal(why: ChangeRefusal, what: &str) -> AppError {
    let code = match why {
        ChangeRefusal::NotFound => {
            return AppError::NotFound {
                what: what.to_string(),
            };
        }
        ChangeRefusal::Blocked => "change_pending",
        ChangeRefusal::NotPending => "not_pending",
        ChangeRefusal::AlreadyApplied => "already_applied",
        ChangeRefusal::NoApprovalNeeded => "no_approval_needed",
        ChangeRefusal::OwnChange => "own_change",
        ChangeRefusal::ApprovedAlready => "approved_already",
        ChangeRefusal::InvalidLink => "invalid_link",
        ChangeRefusal::IncidentClosed => "incident_closed",
        ChangeRefusal::CodeNotAllowed => "code_not_allowed",
        ChangeRefusal::NotADestination => "not_a_destination",
        ChangeRefusal::CodeTooSoon => {
            return AppError::TooMany {
                code: "code_too_soon",
                message: why.to_string(),
                retry_after: None,
            };
        }
        ChangeRefusal::NoCode => "no_code",
        ChangeRefusal::WrongCode => "wrong_code",
        ChangeRefusal::CodeLocked => "code_locked",
        ChangeRefusal::AssuranceTooOld => "assurance_too_old",
        ChangeRefusal::NoAssurance => "no_assurance",
        ChangeRefusal::WrongSecret => "wrong_secret",
        ChangeRefusal::AssuranceLocked => "assurance_locked",
        ChangeRefusal::AssuredAlready => "assured_already",
        ChangeRefusal::NotAPrimaryAddress => "not_a_primary_address",
        ChangeRefusal::AssuranceNotAllowed => "assurance_not_allowed",
        ChangeRefusal::TooManyAssurances => "too_many_assurances",
        ChangeRefusal::ProvenAlready => "proven_already",
        ChangeRefusal::NoMobile => "no_mobile",
        ChangeRefusal::WrongWay => "wrong_way",
        ChangeRefusal::NotOwnConnection => "not_own_connection",
    };
    AppError::Conflict {
        code,
        message: why.to_string(),
    }
}

/// Exactly one of the two.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// An account's changes (with the key changes of its addresses).
    account: Option<String>,
    /// An address's key changes.
    address: Option<String>,
}

/// List changes.
///
/// Of an account or of an address, newest first; an account's include the
/// key changes of its addresses.
#[utoipa::path(get, path = "/v1/changes", tag = "changes",
    params(ListQuery),
    security(("token" = ["changes:read"])),
    responses(
        (status = 200, body = Changes),
        (status = 400, description = "`bad_request`: a parameter kci does not take", body = ErrorBody),
        (status = 422, description = "`invalid_field`: not exactly one of `account` and `address`, or one is not valid", body = ErrorBody),
    ))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::ChangesRead)?;
    let filter = match (q.account, q.address) {
        (Some(a), None) => {
            crate::model::check_id(&a)
                .map_err(|e| AppError::invalid("invalid_field", "account", e))?;
            ChangeFilter::Account(a)
        }
        (None, Some(a)) => ChangeFilter::Address(crate::keys::normalise(&a).ok_or_else(|| {
            AppError::invalid(
                "invalid_field",
                "address",
                format!("`{a}` is not an email address"),
            )
        })?),
        _ => {
            return Err(AppError::invalid(
                "invalid_field",
                "account",
                "give exactly one of `account` and `address`",
            ));
        }
    };
    let changes = st.store.changes(filter).await?;
    Ok(Json(Changes { changes }))
}

/// Read a change.
#[utoipa::path(get, path = "/v1/changes/{id}", tag = "changes",
    params(("id" = String, Path, description = "The change's id")),
    security(("token" = ["changes:read"])),
    responses(
        (status = 200, body = Change),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn get(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::ChangesRead)?;
    match st.store.change(&id).await? {
        Some(c) => Ok(Json(c)),
        None => Err(AppError::NotFound {
            what: format!("change `{}`", crate::model::excerpt(&id, 64)),
        }),
    }
}

/// Approve a change (staff).
///
/// A staff member's token. 200 with the change (applied, when that was
/// the last thing it waited for); 409 when it is the approver's own
/// change, they approved it already, it needs no approval or is no longer
/// pending (each refusal audited).
#[utoipa::path(post, path = "/v1/changes/{id}/approve", tag = "changes",
    params(("id" = String, Path, description = "The change's id")),
    request_body(content = Option<StepInput>, description = "Optional: the ticket number"),
    security(("token" = ["changes:approve"])),
    responses(
        (status = 200, body = WithChange),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 403, description = "`staff_only`: not a staff member's token", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = REFUSED, body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
    ))]
pub async fn approve(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::ChangesApprove)?;
    if st.store.change(&id).await?.is_none() {
        return Err(AppError::NotFound {
            what: format!("change `{}`", crate::model::excerpt(&id, 64)),
        });
    }
    caller.staff()?;
    let input = step_input(&body)?;
    let actor = actor(&caller, peer, input.ticket);
    match engine(&st).approve(&id, &actor).await? {
        // The last approval a change waited for applies it at once.
        ChangeAnswer::Approved(change) | ChangeAnswer::Settled(change) => {
            st.wake.notify_one();
            Ok(Json(WithChange { change }))
        }
        ChangeAnswer::Refused { why, .. } => Err(refusal(why, &format!("change `{id}`"))),
        other => Err(AppError::Internal(format!("approve answered {other:?}"))),
    }
}

/// Veto a change (staff).
///
/// Staff stop a change on the customer's behalf. 200 with the change and
/// the incident it opened; 409 when it applied already or ended.
#[utoipa::path(post, path = "/v1/changes/{id}/veto", tag = "changes",
    params(("id" = String, Path, description = "The change's id")),
    request_body(content = Option<StepInput>, description = "Optional: the ticket number and a note"),
    security(("token" = ["incidents"])),
    responses(
        (status = 200, body = Vetoed),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = REFUSED, body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
    ))]
pub async fn veto(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::Incidents)?;
    let input = step_input(&body)?;
    let actor = actor(&caller, peer, input.ticket);
    match engine(&st).veto(&id, &actor).await? {
        ChangeAnswer::Vetoed { change, incident } => {
            st.wake.notify_one();
            Ok(Json(Vetoed { change, incident }))
        }
        ChangeAnswer::Refused { why, .. } => Err(refusal(why, &format!("change `{id}`"))),
        other => Err(AppError::Internal(format!("veto answered {other:?}"))),
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"destination": "01a2371a-698e-705d-b6f4-c03774e1edde", "proof": "split", "second": "01a2371a-76e1-770a-ba97-565c46bacf0e"})))]
#[serde(deny_unknown_fields)]
struct CodeInput {
    /// A verified destination's id (a mailbox for `split` and `reply`).
    destination: String,
    /// `code` (the default), `split` or `reply`.
    #[serde(default)]
    proof: crate::model::ProofKind,
    /// A split code's second half goes here.
    second: Option<String>,
}

/// Send what proves a change.
///
/// Entered back at `…/proof`:
///
/// * `"proof": "code"` (the default): 6 digits to that verified
///   destination; only below `high`, never to what the change is about;
/// * `"split"`: one number to the verified mailbox `destination`, another
///   to the verified non-mail destination `second`; the customer enters
///   their sum (two channels: proves at `high` too);
/// * `"reply"`: a code to the verified mailbox `destination`, to be texted
///   back from the account's verified mobile number (the SMS provider's
///   inbound webhook) — two channels as well.
///
/// 202 with the change; 409 when the way is not allowed; 429 when codes
/// come too fast.
#[utoipa::path(post, path = "/v1/changes/{id}/code", tag = "changes",
    params(("id" = String, Path, description = "The change's id")),
    request_body = CodeInput,
    security(("token" = ["keys:write"])),
    responses(
        (status = 202, body = WithChange),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = REFUSED, body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
        (status = 429, description = "`code_too_soon`: codes come too fast", body = ErrorBody),
    ))]
pub async fn send_code(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::KeysWrite)?;
    let input: CodeInput = super::json_body(&body)?;
    let actor = actor(&caller, peer, None);
    match engine(&st)
        .send_code(
            &id,
            input.proof,
            &input.destination,
            input.second.as_deref(),
            &actor,
        )
        .await?
    {
        ChangeAnswer::Waiting(change) => {
            st.wake.notify_one();
            Ok((StatusCode::ACCEPTED, Json(WithChange { change })))
        }
        ChangeAnswer::Refused { why, .. } => Err(refusal(why, &format!("change `{id}`"))),
        other => Err(AppError::Internal(format!("send_code answered {other:?}"))),
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"code": "123456"})))]
#[serde(deny_unknown_fields)]
struct ProofInput {
    /// The 6 digits sent, or the sum of a split code's two numbers.
    #[schema(pattern = "^[0-9]{1,7}$")]
    code: String,
}

/// Enter a change's proof code.
///
/// The code sent (or a split code's sum), entered back. 200 with the
/// change — applied when that was the last proof it needed; 409 for a
/// wrong, expired or locked code (5 tries a code, 10 a day, and the
/// token's wrong codes are limited as for destinations), or a code meant
/// to be texted back.
#[utoipa::path(post, path = "/v1/changes/{id}/proof", tag = "changes",
    params(("id" = String, Path, description = "The change's id")),
    request_body = ProofInput,
    security(("token" = ["keys:write"])),
    responses(
        (status = 200, body = WithChange),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = REFUSED, body = ErrorBody),
        (status = 422, description = "`invalid_field`: not a code", body = ErrorBody),
        (status = 429, description = "`too_many_wrong_codes`: this token entered too many wrong codes", body = ErrorBody),
    ))]
pub async fn prove(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::KeysWrite)?;
    let input: ProofInput = super::json_body(&body)?;
    let code = input.code.trim();
    if !(1..=7).contains(&code.len()) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AppError::invalid(
            "invalid_field",
            "code",
            "must be the 6 digits that were sent (or the sum of a split code's two numbers)",
        ));
    }
    let now = st.clock.now();
    super::wrong_codes_allowed(&st, &caller, now).await?;
    let actor = actor(&caller, peer, None);
    let answer = engine(&st).prove(&id, code, None, &actor).await?;
    proof_answer(&st, &caller, &id, answer, now).await
}

/// The answer to a proof: the change (applied when it was the last thing
/// it needed), or the refusal — a wrong code counted against the token.
pub(super) async fn proof_answer(
    st: &AppState,
    caller: &Caller,
    id: &str,
    answer: ChangeAnswer,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Json<WithChange>, AppError> {
    match answer {
        ChangeAnswer::Waiting(change) | ChangeAnswer::Settled(change) => {
            st.wake.notify_one();
            Ok(Json(WithChange { change }))
        }
        ChangeAnswer::Refused { why, .. } => {
            // Wrong codes and secrets, and addresses outside the account's
            // prefixes, count against the token alike: none may be guessed.
            if matches!(
                why,
                ChangeRefusal::WrongCode
                    | ChangeRefusal::NotOwnConnection
                    | ChangeRefusal::WrongSecret
                    | ChangeRefusal::AssuranceLocked
            ) {
                // A lock tells the customer: wake the sender.
                st.wake.notify_one();
                super::count_wrong_code(st, caller, now).await?;
            }
            Err(refusal(why, &format!("change `{id}`")))
        }
        other => Err(AppError::Internal(format!("proof answered {other:?}"))),
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"address": "203.0.113.7"})))]
#[serde(deny_unknown_fields)]
struct ConnectionInput {
    /// The IPv4 or IPv6 address the customer's request came from.
    address: String,
}

/// Say where the customer's request came from.
///
/// The source system says the customer's request came from this IP
/// address. Inside one of the account's own `prefixes`, it is a factor
/// (one channel: it proves alone below `high`); 409 `not_own_connection`
/// otherwise.
#[utoipa::path(post, path = "/v1/changes/{id}/connection", tag = "changes",
    params(("id" = String, Path, description = "The change's id")),
    request_body = ConnectionInput,
    security(("token" = ["keys:write"])),
    responses(
        (status = 200, body = WithChange),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = REFUSED, body = ErrorBody),
        (status = 422, description = "`invalid_field`: not an IP address", body = ErrorBody),
        (status = 429, description = "`too_many_wrong_codes`: this token made too many wrong attempts", body = ErrorBody),
    ))]
pub async fn connection(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::KeysWrite)?;
    let input: ConnectionInput = super::json_body(&body)?;
    let address: std::net::IpAddr = input.address.trim().parse().map_err(|_| {
        AppError::invalid(
            "invalid_field",
            "address",
            "must be an IPv4 or IPv6 address",
        )
    })?;
    let now = st.clock.now();
    let actor = actor(&caller, peer, None);
    let answer = engine(&st).connection(&id, address, &actor).await?;
    proof_answer(&st, &caller, &id, answer, now).await
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

/// The page behind a change notice's veto link.
///
/// With the button that stops the change. Changes nothing.
#[utoipa::path(get, path = "/v1/veto/{token}", tag = "links",
    params(("token" = String, Path, description = "The link's secret")),
    responses(
        (status = 200, description = "A page with the button", content_type = "text/html", body = String),
        (status = 404, description = "Not a link kci sent", content_type = "text/html", body = String),
    ))]
pub async fn veto_page(Path(token): Path<String>) -> impl IntoResponse {
    if !plausible_token(&token) {
        return not_valid();
    }
    page(
        StatusCode::OK,
        "Stop this request",
        "If you did not ask for the change the message you received described, press the button: it will not happen, and we will look into it.",
        Some((&format!("/v1/veto/{token}"), "Stop it")),
    )
    .into_response()
}

/// Follow a veto link.
///
/// The veto itself (single use). A link that is unknown, used or expired
/// gets the same answer whichever it is.
#[utoipa::path(post, path = "/v1/veto/{token}", tag = "links",
    params(("token" = String, Path, description = "The link's secret")),
    responses(
        (status = 200, description = "Stopped", content_type = "text/html", body = String),
        (status = 404, description = "Used, expired or not a link kci sent", content_type = "text/html", body = String),
        (status = 409, description = "Too late: applied or ended already", content_type = "text/html", body = String),
        (status = 429, description = "`rate_limited`: too many links that were not valid from this address", body = ErrorBody),
    ))]
pub async fn veto_link(
    State(st): State<AppState>,
    LinkPeer(peer): LinkPeer,
    Path(token): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    // Wrong links are counted per client address: guessing is hopeless
    // (256 bits), and now also slow.
    let now = st.clock.now();
    let who = peer.source.clone().unwrap_or_else(|| "unknown".into());
    let cap = st.config.changes.wrong_links_per_source;
    if let Err(retry_at) = st.store.throttle_peek(WRONG_LINKS, &who, cap, now).await? {
        st.metrics.limit_hit("veto_links", "source");
        return Err(AppError::limited_until(
            "rate_limited",
            super::WRONG_LINKS_MESSAGE,
            retry_at,
            now,
        ));
    }
    if !plausible_token(&token) {
        st.store.throttle(WRONG_LINKS, &who, cap, now).await?;
        return Ok(not_valid());
    }
    let answer = engine(&st).veto_link(&token, peer.source).await?;
    if let ChangeAnswer::Refused {
        why: ChangeRefusal::InvalidLink,
        ..
    } = answer
    {
        st.store.throttle(WRONG_LINKS, &who, cap, now).await?;
    }
    Ok(match answer {
        ChangeAnswer::Vetoed { .. } => {
            st.wake.notify_one();
            page(
                StatusCode::OK,
                "Stopped",
                "The request was stopped: nothing changes. Everyone on your account has been told, and we will look into it.",
                None,
            )
            .into_response()
        }
        ChangeAnswer::Refused {
            why: ChangeRefusal::AlreadyApplied,
            ..
        } => page(
            StatusCode::CONFLICT,
            "Too late",
            "This change was already carried out, so it cannot be stopped here any more. If you did not ask for it, contact us now.",
            None,
        )
        .into_response(),
        ChangeAnswer::Refused {
            why: ChangeRefusal::NotPending,
            ..
        } => page(
            StatusCode::CONFLICT,
            "Already ended",
            "This request has already ended (stopped, or lapsed): nothing changes.",
            None,
        )
        .into_response(),
        _ => not_valid(),
    })
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IncidentQuery {
    /// `open` (the default) or `all`.
    #[param(pattern = "^(open|all)$")]
    state: Option<String>,
    /// Only this account's.
    account: Option<String>,
    /// At most this many (1 to 1000; default 100).
    limit: Option<usize>,
}

/// The limit bucket of links that were not valid.
const WRONG_LINKS: &str = "wrong_veto_links";

/// The most incidents or audit entries one answer carries.
const MAX_PAGE: usize = 1000;

/// List incidents.
///
/// Newest first.
#[utoipa::path(get, path = "/v1/incidents", tag = "incidents",
    params(IncidentQuery),
    security(("token" = ["incidents"])),
    responses(
        (status = 200, body = Incidents),
        (status = 400, description = "`bad_request`: a parameter kci does not take, or not a number", body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
    ))]
pub async fn incidents(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<IncidentQuery>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::Incidents)?;
    let open_only = match q.state.as_deref() {
        None | Some("open") => true,
        Some("all") => false,
        Some(other) => {
            return Err(AppError::invalid(
                "invalid_field",
                "state",
                format!(
                    "`{}` is not one of open, all",
                    crate::model::excerpt(other, 32)
                ),
            ));
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let list = st
        .store
        .incidents(open_only, q.account.as_deref(), limit)
        .await?;
    Ok(Json(Incidents { incidents: list }))
}

/// Close an incident.
///
/// A note is required. 200 with the incident; the customer is told on
/// their verified destinations.
#[utoipa::path(post, path = "/v1/incidents/{id}/close", tag = "incidents",
    params(("id" = String, Path, description = "The incident's id"), super::openapi::Ticket),
    request_body = StepInput,
    security(("token" = ["incidents"])),
    responses(
        (status = 200, body = WithIncident),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`incident_closed`", body = ErrorBody),
        (status = 422, description = "`invalid_field`: the note is missing", body = ErrorBody),
    ))]
pub async fn close_incident(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::Incidents)?;
    let input = step_input(&body)?;
    let Some(note) = input.note.filter(|n| !n.trim().is_empty()) else {
        return Err(AppError::invalid(
            "invalid_field",
            "note",
            "is required: say what was found",
        ));
    };
    let actor = actor(&caller, peer, input.ticket);
    match engine(&st).close_incident(&id, &note, &actor).await? {
        ChangeAnswer::IncidentClosed(incident) => {
            st.wake.notify_one();
            Ok(Json(WithIncident { incident }))
        }
        ChangeAnswer::Refused { why, .. } => Err(refusal(why, &format!("incident `{id}`"))),
        other => Err(AppError::Internal(format!("close answered {other:?}"))),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this account's entries.
    account: Option<String>,
    /// Entries after this number (paging).
    after: Option<i64>,
    /// At most this many (1 to 1000; default 100).
    limit: Option<usize>,
}

/// Read the audit log.
///
/// The log's entries in order, with their hashes; `next` pages on.
#[utoipa::path(get, path = "/v1/audit", tag = "incidents",
    params(AuditQuery),
    security(("token" = ["audit:read"])),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, description = "`bad_request`: a parameter kci does not take, or not a number", body = ErrorBody),
    ))]
pub async fn audit(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::AuditRead)?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let entries = st
        .store
        .audit_entries(q.account.as_deref(), q.after.unwrap_or(0).max(0), limit)
        .await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditPage { entries, next }))
}
