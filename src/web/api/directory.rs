//! The directory API (DESIGN.md §2a): accounts, contacts, destinations and
//! their verification.

use super::changes::Peer;
use super::changes::WithChange;
use crate::changes::{Actor, Engine};
use crate::model::Preferences;
use crate::model::audit::AuditDraft;
use crate::model::{
    Account, ChangeAnswer, ChangeKind, ChannelKind, Contact, Destination, DestinationPlan,
    DestinationUri, Scope, SecurityLevel, Subject, TimeZoneName, check_id,
};
use crate::model::{AccountView, Change};
use crate::store::{PutOutcome, RenewOutcome, VerifyOutcome};
use crate::web::error::ErrorBody;
use crate::web::{AppError, AppState, Caller};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An account written, with what waits of it as a protected change (the
/// lowering of its security, or a new postal address for its letters).
#[derive(Serialize, ToSchema)]
pub struct AccountWithChange {
    /// The account as stored: everything but what waits.
    pub account: Account,
    pub change: Change,
}

/// A contact: its name and time zone, and optionally the preference fields
/// a destination takes, for all its destinations.
#[derive(ToSchema)]
#[schema(examples(json!({"name": "Alice", "timezone": "Europe/London", "services": ["broadband"]})))]
#[allow(dead_code)]
struct ContactInput {
    /// Absent: the contact's id.
    name: Option<String>,
    #[serde(flatten)]
    prefs: Preferences,
}

/// A destination: where, whether it is verified already (a bulk load:
/// `directory:admin`), and its preference fields.
#[derive(ToSchema)]
#[schema(examples(json!({"uri": "mailto:alice@example.com", "min_priority": "normal"})))]
#[allow(dead_code)]
struct DestinationBody {
    uri: DestinationUri,
    /// `true` needs `directory:admin`; otherwise a 6-digit code is sent to
    /// it, entered back with `…/verify`.
    verified: Option<bool>,
    #[serde(flatten)]
    prefs: Preferences,
}

/// A destination added or verified.
#[derive(Serialize, ToSchema)]
pub struct DestinationState {
    pub id: String,
    pub verified: bool,
    /// A code went to it, to be entered back with `…/verify`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub code_sent: bool,
}

/// A webhook destination's new signing secret, answered once.
#[derive(Serialize, ToSchema)]
pub struct NewSecret {
    pub id: String,
    /// `whsec_` and base64: the receiver verifies signatures with it.
    pub secret: String,
    /// Until when the secret it replaces still signs too.
    #[schema(format = DateTime)]
    pub previous_valid_until: Option<String>,
}

fn check_path_id(field: &str, v: &str) -> Result<(), AppError> {
    check_id(v).map_err(|e| AppError::invalid("invalid_field", field, e))
}

fn status(o: PutOutcome) -> StatusCode {
    if o == PutOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"name": "Alice Ltd", "timezone": "Europe/London", "security_level": "high", "defaults": {"window": "Mo-Fr 08:00-20:00"}})))]
#[serde(deny_unknown_fields)]
struct AccountInput {
    /// Absent: the account's id.
    name: Option<String>,
    #[schema(value_type = Option<TimeZoneName>)]
    timezone: Option<String>,
    /// Lowering it on a `high` account waits as a protected change.
    #[schema(value_type = Option<SecurityLevel>)]
    security_level: Option<String>,
    paranoid: Option<bool>,
    /// Preferences for all the account's destinations.
    #[serde(default)]
    defaults: Preferences,
    /// The account's own network prefixes (CIDR); absent: kept as stored.
    /// Setting them takes `directory:admin`: a request from inside proves
    /// a change.
    prefixes: Option<Vec<String>>,
    /// Where `postal:account` destinations' letters go; absent: kept as
    /// stored; `null`: none (refused while a `postal:` destination
    /// exists). A new one for an account with a `postal:` destination
    /// redirects its letters: on a `high` account told anywhere, a
    /// protected change (202).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<crate::model::PostalAddress>)]
    postal_address: Option<Option<crate::model::PostalInput>>,
}

/// A field that is present (`null` too): absent stays `None`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The account's postal address after a `PUT`: as given (checked, naming
/// the field), or as stored when absent.
fn postal_address(
    input: Option<Option<crate::model::PostalInput>>,
    stored: Option<&crate::model::PostalAddress>,
) -> Result<Option<crate::model::PostalAddress>, AppError> {
    match input {
        None => Ok(stored.cloned()),
        Some(None) => Ok(None),
        Some(Some(raw)) => crate::model::PostalAddress::parse(raw)
            .map(Some)
            .map_err(|e| {
                AppError::invalid(
                    "invalid_field",
                    &format!("postal_address.{}", e.field),
                    e.message,
                )
            }),
    }
}

/// The account's own prefixes from `input`, or as stored.
async fn prefixes(
    st: &AppState,
    caller: &Caller,
    id: &str,
    input: Option<Vec<String>>,
) -> Result<Vec<ipnet::IpNet>, AppError> {
    let Some(list) = input else {
        return Ok(st
            .store
            .account_view(id)
            .await?
            .map(|v| v.account.prefixes)
            .unwrap_or_default());
    };
    caller.require(Scope::DirectoryAdmin)?;
    Ok(crate::directory::prefixes(&list)?)
}

/// Create or replace an account.
///
/// 201 created, 200 replaced; 202 when it lowers a `high` account's
/// security, or gives a `high` account with a `postal:` destination a new
/// `postal_address`: the rest is written, that waits as a protected
/// change. Setting `prefixes` needs `directory:admin`.
#[utoipa::path(put, path = "/v1/accounts/{id}", tag = "directory",
    params(("id" = String, Path, description = "The account's id"), super::openapi::Ticket),
    request_body = AccountInput,
    security(("token" = ["directory:write"])),
    responses(
        (status = 200, description = "Replaced", body = Account),
        (status = 201, description = "Created", body = Account),
        (status = 202, description = "Written, but the lowering of its security, or its new postal address, waits", body = AccountWithChange),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 409, description = "`change_pending`: another change of the account is pending, or two protected changes were asked at once", body = ErrorBody),
        (status = 422, description = "`invalid_field`: the message names it (`postal_address.lines[1]`, say)", body = ErrorBody),
    ))]
pub async fn put_account(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<axum::response::Response, AppError> {
    caller.require(Scope::DirectoryWrite)?;
    check_path_id("id", &id)?;
    let input: AccountInput = super::json_body(&body)?;
    let fields = crate::directory::AccountFields {
        name: input.name,
        timezone: input.timezone,
        security_level: input.security_level,
        paranoid: input.paranoid,
        defaults: input.defaults,
    };
    let account = crate::directory::account(id.clone(), fields)?;
    let view = st.store.account_view(&id).await?;
    let stored_postal = view
        .as_ref()
        .and_then(|v| v.account.postal_address.as_ref());
    let postal = postal_address(input.postal_address, stored_postal)?;
    let account = Account {
        prefixes: prefixes(&st, &caller, &id, input.prefixes).await?,
        postal_address: postal.clone(),
        ..account
    };
    // A new address for an account with a `postal:` destination sends its
    // letters elsewhere: where notices go, protected as such (DESIGN.md §7).
    let redirect = match &view {
        Some(v) if postal.as_ref() != stored_postal => {
            let dests = v.contacts.iter().flat_map(|c| &c.destinations);
            let postal_dest = dests
                .clone()
                .find(|d| d.uri == DestinationUri::Postal)
                .cloned();
            let told = dests.clone().any(|d| d.verified);
            postal_dest.map(|d| (d, told, v.account.security_level))
        }
        _ => None,
    };
    let mut waits = None;
    if let Some((dest, told, level)) = redirect {
        let Some(new) = postal.clone() else {
            return Err(AppError::invalid(
                "invalid_field",
                "postal_address",
                format!(
                    "account `{id}` has a postal:account destination ({}): remove it first",
                    dest.id
                ),
            ));
        };
        if crate::trust::changes::protected(ChangeKind::DestinationChange, level, told) {
            let lowering = view
                .as_ref()
                .and_then(|v| crate::model::kept_security(Some(&v.account), &account));
            if lowering.is_some() {
                return Err(AppError::Conflict {
                    code: "change_pending",
                    message: "lowering the security and a new postal address are two protected changes: ask for one, then the other".into(),
                });
            }
            waits = Some((dest, new, level));
        }
    }
    let account = Account {
        postal_address: if waits.is_some() {
            stored_postal.cloned()
        } else {
            postal
        },
        ..account
    };
    let (outcome, kept) = st.store.put_account(&account).await?;
    let what = format!(
        "security_level {}, paranoid {}, timezone {}, {} prefixes, postal address {}{}",
        account.security_level.as_str(),
        account.paranoid,
        account
            .timezone
            .as_ref()
            .map_or("-".to_string(), |t| t.to_string()),
        account.prefixes.len(),
        // The town only: the audit log is no address book.
        account
            .postal_address
            .as_ref()
            .map_or("-".to_string(), |a| format!("in {}", a.town)),
        match (kept.is_some(), waits.is_some()) {
            (true, _) => " (the lowering waits as a change)",
            (_, true) => " (the new postal address waits as a change)",
            _ => "",
        }
    );
    let action = if outcome == PutOutcome::Created {
        "account.created"
    } else {
        "account.updated"
    };
    audit(&st, &caller, peer.clone(), action, &account.id, what).await;
    if let Some((dest, new, level)) = waits {
        let plan = DestinationPlan {
            id: dest.id.clone(),
            contact: dest.contact.clone(),
            uri: dest.uri.to_string(),
            prefs: dest.prefs.clone(),
            verified: dest.verified,
        };
        let subject = Subject {
            destination: Some(Box::new(plan)),
            postal_address: Some(new),
            ..Subject::default()
        };
        let engine = engine(&st);
        let actor = actor(&caller, peer);
        let change = engine.new_change(
            ChangeKind::DestinationChange,
            &account.id,
            level,
            subject,
            &actor,
        );
        let change = opened(engine.request(change, &actor).await?)?;
        st.wake.notify_one();
        return Ok((
            StatusCode::ACCEPTED,
            Json(AccountWithChange { account, change }),
        )
            .into_response());
    }
    let Some((level, paranoid)) = kept else {
        return Ok((status(outcome), Json(account)).into_response());
    };
    // Lowering the security of a `high` account is a protected change:
    // the rest is written, the lowering waits (DESIGN.md §7).
    let subject = Subject {
        security_level: (account.security_level < level).then_some(account.security_level),
        paranoid: (paranoid && !account.paranoid).then_some(false),
        from: Some((level, paranoid)),
        ..Subject::default()
    };
    let stored = Account {
        security_level: level,
        paranoid,
        ..account
    };
    let engine = engine(&st);
    let actor = actor(&caller, peer);
    let change = engine.new_change(
        ChangeKind::SecurityLower,
        &stored.id,
        level,
        subject,
        &actor,
    );
    let change = opened(engine.request(change, &actor).await?)?;
    st.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(AccountWithChange {
            account: stored,
            change,
        }),
    )
        .into_response())
}

fn engine(st: &AppState) -> Engine<'_> {
    Engine {
        store: st.store.as_ref(),
        config: st.config.as_ref(),
        now: st.clock.now(),
    }
}

fn actor(caller: &Caller, peer: Peer) -> Actor {
    Actor {
        id: caller.actor(),
        source: peer.source,
        ticket: peer.ticket,
    }
}

/// The change a protected request opened, or 409 when another change of
/// the account is pending.
fn opened(answer: ChangeAnswer) -> Result<crate::model::Change, AppError> {
    match answer {
        ChangeAnswer::Opened(c) => Ok(c),
        ChangeAnswer::Refused { why, change } => Err(AppError::Conflict {
            code: "change_pending",
            message: match change {
                Some(c) => format!("{why} (change {})", c.id),
                None => why.to_string(),
            },
        }),
        other => Err(AppError::Internal(format!(
            "a change request answered {other:?}"
        ))),
    }
}

/// Opens the protected change of `kind` for destination `dest` of account
/// `account` (at `level`): 202 with the change, or 409 when another one
/// of the account is pending.
async fn protect(
    st: &AppState,
    (caller, peer): (&Caller, Peer),
    kind: ChangeKind,
    account: &str,
    level: SecurityLevel,
    dest: &Destination,
) -> Result<axum::response::Response, AppError> {
    let plan = DestinationPlan {
        id: dest.id.clone(),
        contact: dest.contact.clone(),
        uri: dest.uri.to_string(),
        prefs: dest.prefs.clone(),
        verified: dest.verified,
    };
    let subject = Subject {
        destination: Some(Box::new(plan)),
        ..Subject::default()
    };
    let engine = engine(st);
    let actor = actor(caller, peer);
    let change = engine.new_change(kind, account, level, subject, &actor);
    let change = opened(engine.request(change, &actor).await?)?;
    st.wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(WithChange { change })).into_response())
}

/// A fresh verification code for `dest` of account `account`, hashed
/// with the hub's code key, and the notice that carries it.
fn fresh_code(
    st: &AppState,
    account: &str,
    dest: &crate::model::Destination,
    now: chrono::DateTime<chrono::Utc>,
) -> (crate::model::PendingCode, crate::model::Notification) {
    let sender = st.config.email.sender_name();
    crate::trust::codes::new_code(&st.config.code_key, account, dest, sender, now)
}

/// Records a directory step that took effect at once.
async fn audit(
    st: &AppState,
    caller: &Caller,
    peer: Peer,
    action: &str,
    account: &str,
    detail: String,
) {
    let mut d = AuditDraft::new(&caller.actor(), action, "ok");
    d.account = Some(account.to_string());
    d.source = peer.source;
    d.ticket = peer.ticket;
    d.detail = Some(detail);
    if let Err(e) = st.store.audit(d, st.clock.now()).await {
        tracing::error!(error = %e, action, "could not write an audit entry");
    }
}

/// Read an account.
///
/// With its contacts and their destinations.
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "directory",
    params(("id" = String, Path, description = "The account's id")),
    security(("token" = ["directory:read"])),
    responses(
        (status = 200, body = AccountView),
        (status = 404, description = "`not_found`", body = ErrorBody),
    ))]
pub async fn get_account(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::DirectoryRead)?;
    let view = st
        .store
        .account_view(&id)
        .await?
        .ok_or(AppError::NotFound {
            what: format!("account `{id}`"),
        })?;
    Ok(Json(view))
}

/// Create or replace a contact.
///
/// `name`, `timezone`, and optionally the preference fields a destination
/// takes, applying to all of this contact's destinations (a login that
/// only wants to hear about some services, say).
#[utoipa::path(put, path = "/v1/accounts/{id}/contacts/{cid}", tag = "directory",
    params(
        ("id" = String, Path, description = "The account's id"),
        ("cid" = String, Path, description = "The contact's id"),
        super::openapi::Ticket,
    ),
    request_body = ContactInput,
    security(("token" = ["directory:write"])),
    responses(
        (status = 200, description = "Replaced", body = Contact),
        (status = 201, description = "Created", body = Contact),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such account", body = ErrorBody),
        (status = 422, description = "`invalid_field`: the message names it", body = ErrorBody),
    ))]
pub async fn put_contact(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path((id, cid)): Path<(String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::DirectoryWrite)?;
    check_path_id("contact", &cid)?;
    let contact = crate::directory::contact(cid, super::json_body(&body)?)?;
    match st.store.put_contact(&id, &contact).await? {
        PutOutcome::NoParent => Err(AppError::NotFound {
            what: format!("account `{id}`"),
        }),
        o => {
            // Who changed where a contact is told, and how: its
            // preferences as written (no secret is among them).
            let what = format!(
                "contact {}: {}",
                contact.id,
                serde_json::to_string(&contact.prefs).unwrap_or_default()
            );
            let action = if o == PutOutcome::Created {
                "contact.created"
            } else {
                "contact.updated"
            };
            audit(&st, &caller, peer, action, &id, what).await;
            Ok((status(o), Json(contact)))
        }
    }
}

/// Add a destination.
///
/// `verified: true` needs `directory:admin`. An unverified destination is
/// sent a 6-digit code to enter back. On a `high` account somebody is
/// already told on, a new destination is a protected change (202).
#[utoipa::path(post, path = "/v1/accounts/{id}/contacts/{cid}/destinations", tag = "directory",
    params(
        ("id" = String, Path, description = "The account's id"),
        ("cid" = String, Path, description = "The contact's id"),
        super::openapi::Ticket,
    ),
    request_body = DestinationBody,
    security(("token" = ["directory:write"])),
    responses(
        (status = 201, description = "Added", body = DestinationState),
        (status = 202, description = "Waits as a protected change", body = WithChange),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such contact", body = ErrorBody),
        (status = 409, description = "`change_pending`: another change of the account is pending", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `invalid_uri`: the message names it (an `x:@handle` X does not know, say)", body = ErrorBody),
    ))]
pub async fn add_destination(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path((id, cid)): Path<(String, String)>,
    body: Bytes,
) -> Result<axum::response::Response, AppError> {
    caller.require(Scope::DirectoryWrite)?;
    let input = crate::directory::destination_input(super::json_body(&body)?)?;
    if input.verified {
        caller.require(Scope::DirectoryAdmin)?;
    }
    let uri = crate::directory::destination_uri(
        &input.uri,
        |kind| st.channels.get(kind).is_some(),
        st.config.channels.webhook.allow_http,
    )?;
    if uri == DestinationUri::Postal {
        if !input.verified {
            return Err(AppError::invalid(
                "invalid_field",
                "verified",
                "a postal:account destination is not verified by a code (a letter takes longer than a code lives): add it with `verified: true` (directory:admin), from the system that knows the address",
            ));
        }
        let no_address = st
            .store
            .account_view(&id)
            .await?
            .is_some_and(|v| v.account.postal_address.is_none());
        if no_address {
            return Err(AppError::invalid(
                "invalid_uri",
                "uri",
                format!(
                    "account `{id}` has no postal address: set `postal_address` with PUT /v1/accounts/{id} first"
                ),
            ));
        }
    }
    let kind = uri.channel();
    // A name the customer can change (an X @handle) is stored as the
    // provider's lasting id, asked once, now.
    let uri = match st.channels.get(kind) {
        Some(channel) => channel.resolve_destination(&uri).await.map_err(|e| {
            let words = if e.is_transient() {
                format!("{} (cannot be asked now: try again)", e.detail())
            } else {
                e.detail().to_string()
            };
            AppError::invalid("invalid_uri", "uri", &words)
        })?,
        None => uri,
    };
    if let Some(channel) = st.channels.get(kind)
        && let Err(e) = channel.check_destination(&uri).await
    {
        if e.is_permanent() {
            return Err(AppError::invalid("invalid_uri", "uri", e.detail()));
        }
        // The provider could not say now; delivery will tell.
        tracing::info!(channel = %kind, error = %e, "could not check a new destination with its provider");
    }
    let dest = Destination {
        id: crate::store::new_id(),
        contact: cid.clone(),
        uri,
        prefs: input.prefs,
        verified: input.verified,
        unhealthy_since: None,
    };
    // On a `high` account somebody is already told on, a new destination
    // is a protected change: nothing goes to it while it waits.
    if let Some(view) = st.store.account_view(&id).await?
        && view.contacts.iter().any(|c| c.contact.id == cid)
    {
        let level = view.account.security_level;
        // Verified, healthy or not: a destination made unhealthy (by
        // getting its provider to refuse it) must not open the door.
        let told = view
            .contacts
            .iter()
            .flat_map(|c| &c.destinations)
            .any(|d| d.verified);
        if crate::trust::changes::protected(ChangeKind::DestinationAdd, level, told) {
            let asked = (&caller, peer);
            return protect(&st, asked, ChangeKind::DestinationAdd, &id, level, &dest).await;
        }
    }
    let now = st.clock.now();
    let (code, notice) = if dest.verified {
        (None, None)
    } else {
        let (code, notice) = fresh_code(&st, &id, &dest, now);
        (
            Some(crate::trust::codes::first(&code.hash, code.expires_at, now)),
            Some(notice),
        )
    };
    match st.store.add_destination(&id, &dest, code, notice).await? {
        PutOutcome::NoParent => Err(AppError::NotFound {
            what: format!("contact `{cid}` of account `{id}`"),
        }),
        _ => {
            if !dest.verified {
                st.wake.notify_one();
            }
            let what = format!(
                "destination {} {} added to contact {cid}",
                dest.id, dest.uri
            );
            audit(&st, &caller, peer, "destination.added", &id, what).await;
            Ok((
                StatusCode::CREATED,
                Json(DestinationState {
                    id: dest.id,
                    verified: dest.verified,
                    code_sent: !dest.verified,
                }),
            )
                .into_response())
        }
    }
}

/// The destination `did` of contact `cid` of account `id`.
async fn find_destination(
    st: &AppState,
    id: &str,
    cid: &str,
    did: &str,
) -> Result<Destination, AppError> {
    st.store
        .account_view(id)
        .await?
        .into_iter()
        .flat_map(|v| v.contacts)
        .filter(|c| c.contact.id == cid)
        .flat_map(|c| c.destinations)
        .find(|d| d.id == did)
        .ok_or_else(|| AppError::NotFound {
            what: format!("destination `{did}`"),
        })
}

/// Send a destination a new code.
///
/// For a destination not verified yet (the last one expired or locked) or
/// marked unhealthy; entering it (`…/verify`) makes it usable again.
#[utoipa::path(post, path = "/v1/accounts/{id}/contacts/{cid}/destinations/{did}/code", tag = "directory",
    params(
        ("id" = String, Path, description = "The account's id"),
        ("cid" = String, Path, description = "The contact's id"),
        ("did" = String, Path, description = "The destination's id"),
    ),
    security(("token" = ["directory:write"])),
    responses(
        (status = 202, body = DestinationState),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`already_verified`: verified and healthy", body = ErrorBody),
        (status = 422, description = "`invalid_field`: a `postal:` destination takes no code", body = ErrorBody),
        (status = 429, description = "`too_many_codes`: codes go at growing intervals and a few a day", body = ErrorBody),
    ))]
pub async fn renew_code(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, cid, did)): Path<(String, String, String)>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::DirectoryWrite)?;
    let dest = find_destination(&st, &id, &cid, &did).await?;
    if dest.uri == DestinationUri::Postal {
        return Err(AppError::invalid(
            "invalid_field",
            "destination",
            "a postal:account destination takes no code (a letter takes longer than a code lives): remove it and add it again with `verified: true` (directory:admin)",
        ));
    }
    let now = st.clock.now();
    let (code, notice) = fresh_code(&st, &id, &dest, now);
    match st
        .store
        .renew_code(
            &id,
            &cid,
            &did,
            code,
            notice,
            now,
            crate::trust::codes::issue,
        )
        .await?
    {
        RenewOutcome::NotFound => Err(AppError::NotFound {
            what: format!("destination `{did}`"),
        }),
        RenewOutcome::AlreadyVerified => Err(AppError::Conflict {
            code: "already_verified",
            message: format!(
                "destination `{did}` is verified and healthy; there is nothing to prove"
            ),
        }),
        RenewOutcome::TooSoon { retry_at } => {
            st.metrics.limit_hit("verification_codes", "destination");
            Err(AppError::TooMany {
                code: "too_many_codes",
                message: format!(
                    "codes for destination `{did}` are sent at growing intervals and a few a day; the next one after {}",
                    crate::model::fmt_time(retry_at)
                ),
                retry_after: (retry_at - now).to_std().ok(),
            })
        }
        RenewOutcome::Sent => {
            st.wake.notify_one();
            Ok((
                StatusCode::ACCEPTED,
                Json(DestinationState {
                    id: did,
                    verified: false,
                    code_sent: true,
                }),
            ))
        }
    }
}

#[derive(Deserialize, Default, ToSchema)]
#[schema(examples(json!({"overlap": "24h"})))]
#[serde(deny_unknown_fields)]
struct RotateInput {
    /// How long the old secret stays valid beside the new one (default
    /// `[channels.webhook] rotation_overlap`; `0s` ends it at once).
    #[serde(default)]
    #[schema(value_type = Option<crate::model::Span>)]
    overlap: Option<String>,
}

/// Give a webhook destination a new signing secret.
///
/// A signing secret of its own for a webhook destination (until then it is
/// signed with `[channels.webhook] secret`), or a new one in place of the
/// last; answered once, stored for signing only. The secret it replaces
/// (the channel's, the first time) stays valid for `overlap` (default
/// `[channels.webhook] rotation_overlap`; `"0s"` ends it at once, but for
/// deliveries already under way: claimed at most 250 ms before),
/// deliveries meanwhile carrying a signature by each.
#[utoipa::path(post, path = "/v1/accounts/{id}/contacts/{cid}/destinations/{did}/secret", tag = "directory",
    params(
        ("id" = String, Path, description = "The account's id"),
        ("cid" = String, Path, description = "The contact's id"),
        ("did" = String, Path, description = "The destination's id"),
    ),
    request_body(content = Option<RotateInput>, description = "Optional: the overlap"),
    security(("token" = ["directory:write"])),
    responses(
        (status = 200, body = NewSecret),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 422, description = "`invalid_field`: the overlap, or not a webhook destination", body = ErrorBody),
    ))]
pub async fn rotate_secret(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, cid, did)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::DirectoryWrite)?;
    let input: RotateInput = if body.is_empty() {
        RotateInput::default()
    } else {
        super::json_body(&body)?
    };
    let overlap = match input.overlap {
        Some(s) => s
            .parse::<crate::model::Span>()
            .map_err(|e| AppError::invalid("invalid_field", "overlap", e))?,
        None => st.config.channels.webhook.rotation_overlap,
    };
    let dest = find_destination(&st, &id, &cid, &did).await?;
    if dest.uri.channel() != ChannelKind::Webhook {
        return Err(AppError::invalid(
            "invalid_field",
            "destination",
            "only webhook destinations have signing secrets",
        ));
    }
    let now = st.clock.now();
    let until = (!overlap.0.is_zero())
        .then(|| chrono::Duration::from_std(overlap.0).ok().map(|d| now + d))
        .flatten();
    let secret = crate::channels::webhook::new_secret();
    // Kept sealed to this destination: the database alone signs nothing.
    let sealed = crate::trust::seal::AtRest::new(&st.config.code_key)
        .seal_webhook(&dest.id, &secret)
        .map_err(|e| AppError::Internal(format!("sealing the signing secret: {e}")))?;
    if !st
        .store
        .set_destination_secret(&id, &cid, &did, &sealed, until)
        .await?
    {
        return Err(AppError::NotFound {
            what: format!("destination `{did}`"),
        });
    }
    Ok(Json(NewSecret {
        id: did,
        secret,
        previous_valid_until: until.map(crate::model::fmt_time),
    }))
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"code": "123456"})))]
#[serde(deny_unknown_fields)]
struct VerifyInput {
    /// The 6 digits sent to the destination.
    #[schema(pattern = "^[0-9]{6}$")]
    code: String,
}

/// Verify a destination.
///
/// With the code sent to it.
#[utoipa::path(post, path = "/v1/accounts/{id}/contacts/{cid}/destinations/{did}/verify", tag = "directory",
    params(
        ("id" = String, Path, description = "The account's id"),
        ("cid" = String, Path, description = "The contact's id"),
        ("did" = String, Path, description = "The destination's id"),
        super::openapi::Ticket,
    ),
    request_body = VerifyInput,
    security(("token" = ["directory:write"])),
    responses(
        (status = 200, body = DestinationState),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 422, description = "`invalid_field`; `wrong_code` (attempts left said); `code_locked`", body = ErrorBody),
        (status = 429, description = "`too_many_wrong_codes`: this token entered too many wrong codes", body = ErrorBody),
    ))]
pub async fn verify_destination(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path((id, cid, did)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::DirectoryWrite)?;
    let input: VerifyInput = super::json_body(&body)?;
    let code = input.code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AppError::invalid(
            "invalid_field",
            "code",
            "must be the 6 digits that were sent",
        ));
    }
    // Guessing across many destinations is bounded per token too.
    let now = st.clock.now();
    super::wrong_codes_allowed(&st, &caller, now).await?;
    match st
        .store
        .verify_destination(
            &id,
            &cid,
            &did,
            &crate::trust::codes::code_hash(&st.config.code_key, &did, code),
            now,
            crate::trust::codes::check,
        )
        .await?
    {
        VerifyOutcome::Verified => {
            let what = format!("destination {did} of contact {cid} verified");
            audit(&st, &caller, peer, "destination.verified", &id, what).await;
            Ok(Json(DestinationState {
                id: did,
                verified: true,
                code_sent: false,
            }))
        }
        VerifyOutcome::AlreadyVerified => Ok(Json(DestinationState {
            id: did,
            verified: true,
            code_sent: false,
        })),
        VerifyOutcome::WrongCode { attempts_left } => {
            super::count_wrong_code(&st, &caller, now).await?;
            Err(AppError::invalid(
                "wrong_code",
                "code",
                format!("does not match; {attempts_left} attempts left"),
            ))
        }
        VerifyOutcome::Locked => Err(AppError::invalid(
            "code_locked",
            "code",
            "expired or too many wrong attempts; ask for a new one with POST …/destinations/{did}/code",
        )),
        VerifyOutcome::NotFound => Err(AppError::NotFound {
            what: format!("destination `{did}`"),
        }),
    }
}

/// Remove a destination.
///
/// 204; on a `high` account, removing a verified destination is a
/// protected change (202).
#[utoipa::path(delete, path = "/v1/accounts/{id}/contacts/{cid}/destinations/{did}", tag = "directory",
    params(
        ("id" = String, Path, description = "The account's id"),
        ("cid" = String, Path, description = "The contact's id"),
        ("did" = String, Path, description = "The destination's id"),
        super::openapi::Ticket,
    ),
    security(("token" = ["directory:write"])),
    responses(
        (status = 204, description = "Removed"),
        (status = 202, description = "Waits as a protected change", body = WithChange),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`change_pending`: another change of the account is pending", body = ErrorBody),
    ))]
pub async fn delete_destination(
    State(st): State<AppState>,
    caller: Caller,
    peer: Peer,
    Path((id, cid, did)): Path<(String, String, String)>,
) -> Result<axum::response::Response, AppError> {
    caller.require(Scope::DirectoryWrite)?;
    // Removing a verified destination from a `high` account is a
    // protected change (an unverified one receives nothing anyway).
    if let Some(view) = st.store.account_view(&id).await?
        && let Some(dest) = view
            .contacts
            .iter()
            .filter(|c| c.contact.id == cid)
            .flat_map(|c| &c.destinations)
            .find(|d| d.id == did)
        && dest.verified
        && crate::trust::changes::protected(
            ChangeKind::DestinationRemove,
            view.account.security_level,
            true,
        )
    {
        let level = view.account.security_level;
        let asked = (&caller, peer);
        return protect(&st, asked, ChangeKind::DestinationRemove, &id, level, dest).await;
    }
    if st
        .store
        .delete_destination(&id, &cid, &did, st.clock.now())
        .await?
    {
        let what = format!("destination {did} removed from contact {cid}");
        audit(&st, &caller, peer, "destination.removed", &id, what).await;
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(AppError::NotFound {
            what: format!("destination `{did}`"),
        })
    }
}
