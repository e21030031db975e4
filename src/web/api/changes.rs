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
use crate::model::{ChangeAnswer, ChangeRefusal, Scope};
use crate::store::ChangeFilter;
use crate::web::{AppError, AppState, Caller};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

/// Where a request came from, as the audit log records it: the peer's
/// address (when the server knows it) and the ticket number staff work
/// under (`Kci-Ticket` header, 1 to 64 printable characters).
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub source: Option<String>,
    pub ticket: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // The client's address as the perimeter decided it (behind a
        // trusted proxy, the address that proxy saw).
        let source = parts
            .extensions
            .get::<crate::web::perimeter::ClientAddr>()
            .map(|c| c.0.to_string())
            .or_else(|| {
                parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0.ip().to_string())
            });
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

/// What a staff step may carry: a ticket number, a note.
#[derive(Deserialize, Default)]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    account: Option<String>,
    address: Option<String>,
}

/// `GET /v1/changes?account=…` or `?address=…` (scope `changes:read`):
/// newest first; an account's include the key changes of its addresses.
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
    Ok(Json(json!({"changes": changes})))
}

/// `GET /v1/changes/{id}` (scope `changes:read`).
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

/// `POST /v1/changes/{id}/approve` (scope `changes:approve`, a staff
/// member's token), body optionally `{"ticket"}`: 200 with the change
/// (applied, when that was the last thing it waited for);
/// 409 when it is the approver's own change, they approved it already, it
/// needs no approval or is no longer pending (each refusal audited).
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
            Ok(Json(json!({"change": change})))
        }
        ChangeAnswer::Refused { why, .. } => Err(refusal(why, &format!("change `{id}`"))),
        other => Err(AppError::Internal(format!("approve answered {other:?}"))),
    }
}

/// `POST /v1/changes/{id}/veto` (scope `incidents`), body optionally
/// `{"ticket", "note"}`: staff stop a change on the customer's behalf.
/// 200 with the change and the incident it opened; 409 when it applied
/// already or ended.
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
            Ok(Json(json!({"change": change, "incident": incident})))
        }
        ChangeAnswer::Refused { why, .. } => Err(refusal(why, &format!("change `{id}`"))),
        other => Err(AppError::Internal(format!("veto answered {other:?}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeInput {
    destination: String,
    /// `code` (the default), `split` or `reply`.
    #[serde(default)]
    proof: crate::model::ProofKind,
    /// A split code's second half goes here.
    second: Option<String>,
}

/// `POST /v1/changes/{id}/code` (scope `keys:write`), body
/// `{"destination", "proof"?, "second"?}`: sends what proves the change,
/// entered back at `…/proof`:
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
            Ok((StatusCode::ACCEPTED, Json(json!({"change": change}))))
        }
        ChangeAnswer::Refused { why, .. } => Err(refusal(why, &format!("change `{id}`"))),
        other => Err(AppError::Internal(format!("send_code answered {other:?}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofInput {
    code: String,
}

/// `POST /v1/changes/{id}/proof` (scope `keys:write`), body `{"code"}`:
/// the code sent (or a split code's sum), entered back. 200 with the
/// change — applied when that was the last proof it needed; 409 for a
/// wrong, expired or locked code (5 tries a code, 10 a day, and the
/// token's wrong codes are limited as for destinations), or a code meant
/// to be texted back.
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
) -> Result<Json<serde_json::Value>, AppError> {
    match answer {
        ChangeAnswer::Waiting(change) | ChangeAnswer::Settled(change) => {
            st.wake.notify_one();
            Ok(Json(json!({"change": change})))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionInput {
    address: String,
}

/// `POST /v1/changes/{id}/connection` (scope `keys:write`), body
/// `{"address"}`: the source system says the customer's request came from
/// this IP address. Inside one of the account's own `prefixes`, it is a
/// factor (one channel: it proves alone below `high`); 409
/// `not_own_connection` otherwise.
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

/// `GET /v1/veto/{token}`: the page behind a change notice's link, with
/// the button that stops the change. Changes nothing.
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

/// `POST /v1/veto/{token}`: the veto itself (single use). A link that is
/// unknown, used or expired gets the same answer whichever it is.
pub async fn veto_link(
    State(st): State<AppState>,
    peer: Peer,
    Path(token): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    // Wrong links are counted per client address: guessing is hopeless
    // (256 bits), and now also slow.
    let now = st.clock.now();
    let who = peer.source.clone().unwrap_or_else(|| "unknown".into());
    let cap = st.config.changes.wrong_links_per_source;
    if let Err(retry_at) = st.store.throttle_peek(WRONG_LINKS, &who, cap, now).await? {
        st.metrics.limit_hit("veto_links", "source");
        return Err(AppError::TooMany {
            code: "rate_limited",
            message: format!(
                "too many links that were not valid from this address; try again after {}",
                crate::model::fmt_time(retry_at)
            ),
            retry_after: (retry_at - now).to_std().ok(),
        });
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    /// `open` (the default) or `all`.
    state: Option<String>,
    account: Option<String>,
    limit: Option<usize>,
}

/// The limit bucket of links that were not valid.
const WRONG_LINKS: &str = "wrong_veto_links";

/// The most incidents or audit entries one answer carries.
const MAX_PAGE: usize = 1000;

/// `GET /v1/incidents?state=open|all&account=…&limit=…` (scope
/// `incidents`): newest first.
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
    Ok(Json(json!({"incidents": list})))
}

/// `POST /v1/incidents/{id}/close` (scope `incidents`), body `{"note",
/// "ticket"}` (a note is required): 200 with the incident; the customer
/// is told on their verified destinations.
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
            Ok(Json(json!({"incident": incident})))
        }
        ChangeAnswer::Refused { why, .. } => Err(refusal(why, &format!("incident `{id}`"))),
        other => Err(AppError::Internal(format!("close answered {other:?}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    account: Option<String>,
    /// Entries after this number (paging).
    after: Option<i64>,
    limit: Option<usize>,
}

/// `GET /v1/audit?account=…&after=…&limit=…` (scope `audit:read`): the
/// log's entries in order, with their hashes; `next` pages on.
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
    Ok(Json(json!({"entries": entries, "next": next})))
}
