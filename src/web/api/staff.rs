//! Staff logins over HTTP (DESIGN.md §9), for the staff console:
//!
//! * `POST /v1/staff/enrol`, body `{"name", "code", "password"}` (the
//!   enrolment code from `kci staff enrol` is the credential): 200 with the
//!   TOTP secret for an authenticator app, shown once;
//! * `POST /v1/staff/login`, body `{"name", "password", "code"}`: 201 with
//!   a session token acting as that staff member until `expires_at`;
//! * `POST /v1/staff/logout` (the session's own token): revokes it;
//! * `GET /v1/staff/me` (a staff member's token): who it acts as.
//!
//! A refusal is 401 whatever was wrong (the audit log says what), and
//! failures are counted per name and per client address (429 beyond
//! `[staff] failed_logins…`).

use super::changes::LinkPeer;
use crate::model::Role;
use crate::staff::{Limit, Logins, Outcome};
use crate::trust::staff::{PASSWORD_MAX_BYTES, check_password};
use crate::web::error::ErrorBody;
use crate::web::{AppError, AppState, Caller};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The most an enrolment code or a TOTP code field may hold.
const MAX_CODE: usize = 64;

fn logins(st: &AppState) -> Logins<'_> {
    Logins {
        store: st.store.as_ref(),
        config: st.config.as_ref(),
        now: st.clock.now(),
    }
}

/// Checks the name, and that each `(field, value, most)` holds 1 to
/// `most` bytes.
fn check_fields(name: &str, fields: &[(&str, &str, usize)]) -> Result<(), AppError> {
    crate::model::check_staff_name(name)
        .map_err(|e| AppError::invalid("invalid_field", "name", e))?;
    for (field, v, most) in fields {
        if v.is_empty() || v.len() > *most {
            return Err(AppError::invalid(
                "invalid_field",
                field,
                format!("must be 1 to {most} bytes"),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"name": "jo.smith", "code": "kcie_3J5N…", "password": "a long passphrase"})))]
#[serde(deny_unknown_fields)]
struct EnrolInput {
    /// The staff name, as `kci staff add` made it.
    name: String,
    /// The enrolment code `kci staff enrol` printed.
    code: String,
    /// The password to log in with from now on (12 characters or more,
    /// not containing the name).
    password: String,
}

/// What an authenticator app needs (shown once).
#[derive(Serialize, ToSchema)]
pub struct EnrolOutput {
    /// The TOTP secret, base32.
    pub secret: String,
    /// The same as an `otpauth://totp/` URI (show it as a QR code).
    pub otpauth_uri: String,
    pub algorithm: &'static str,
    pub digits: u32,
    pub period: i64,
}

/// A 429 for an attempt refused by a failure count, counted for
/// monitoring.
fn too_many_failures(st: &AppState, limit: Limit, now: DateTime<Utc>) -> AppError {
    st.metrics.limit_hit("staff_logins", limit.label);
    AppError::limited_until(
        "rate_limited",
        format_args!("too many failed logins for this {}", limit.by),
        limit.retry_at,
        now,
    )
}

/// Enrol as a staff member.
///
/// With the enrolment code `kci staff enrol NAME` printed (single use,
/// `[staff] enrolment` long): sets the password and answers the TOTP
/// secret for an authenticator app. A new code from `kci staff enrol`
/// starts over (a lost phone): the old password, secret and sessions stop
/// working.
#[utoipa::path(post, path = "/v1/staff/enrol", tag = "staff",
    request_body = EnrolInput,
    responses(
        (status = 200, body = EnrolOutput),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 401, description = "`enrolment_refused`: the name or code is not valid (used, expired, or never issued)", body = ErrorBody),
        (status = 422, description = "`invalid_field`: a field is too long, or the password too weak", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many failures for this name or address", body = ErrorBody),
    ))]
pub async fn enrol(
    State(st): State<AppState>,
    LinkPeer(peer): LinkPeer,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let input: EnrolInput = super::json_body(&body)?;
    check_fields(&input.name, &[("code", &input.code, MAX_CODE)])?;
    check_password(&input.name, &input.password)
        .map_err(|e| AppError::invalid("invalid_field", "password", e))?;
    let now = st.clock.now();
    match logins(&st)
        .enrol(&input.name, &input.code, &input.password, peer.source.as_deref())
        .await?
    {
        Outcome::Done(e) => Ok(Json(EnrolOutput {
            secret: e.secret,
            otpauth_uri: e.uri,
            algorithm: "SHA1",
            digits: crate::trust::totp::DIGITS,
            period: crate::trust::totp::PERIOD,
        })),
        Outcome::Refused => Err(AppError::Refused {
            code: "enrolment_refused",
            message: "that name and enrolment code do not go together (used, expired, or never issued): ask for a new one with `kci staff enrol`".into(),
        }),
        Outcome::Limited(limit) => Err(too_many_failures(&st, limit, now)),
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"name": "jo.smith", "password": "a long passphrase", "code": "492039"})))]
#[serde(deny_unknown_fields)]
struct LoginInput {
    name: String,
    password: String,
    /// The 6 digits the authenticator app shows now (each is taken once).
    code: String,
}

/// A login's token (shown once).
#[derive(Serialize, ToSchema)]
pub struct SessionOutput {
    /// `Authorization: Bearer <token>` until `expires_at`.
    pub token: String,
    /// The token's id (`kci token list`, `kci token revoke ID`).
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Scope names (`events:write`, `directory:read`, ...).
    pub scopes: Vec<String>,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// Log in as a staff member.
///
/// The password and a fresh code from the authenticator: 201 with a token
/// acting as the staff member, with what their role allows, for
/// `[staff] session`.
#[utoipa::path(post, path = "/v1/staff/login", tag = "staff",
    request_body = LoginInput,
    responses(
        (status = 201, body = SessionOutput),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 401, description = "`login_refused`: the name, password or code is wrong, or the code was used", body = ErrorBody),
        (status = 422, description = "`invalid_field`: a field is empty or too long", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many failures for this name or address", body = ErrorBody),
    ))]
pub async fn login(
    State(st): State<AppState>,
    LinkPeer(peer): LinkPeer,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let input: LoginInput = super::json_body(&body)?;
    check_fields(
        &input.name,
        &[
            ("code", &input.code, MAX_CODE),
            ("password", &input.password, PASSWORD_MAX_BYTES),
        ],
    )?;
    let now = st.clock.now();
    match logins(&st)
        .login(&input.name, &input.password, &input.code, peer.source.as_deref())
        .await?
    {
        Outcome::Done(s) => Ok((
            StatusCode::CREATED,
            Json(SessionOutput {
                token: s.token,
                id: s.id,
                name: input.name,
                role: s.role,
                scopes: s.scopes.iter().map(|s| s.as_str().to_string()).collect(),
                expires_at: crate::model::fmt_time(s.expires_at),
            }),
        )),
        Outcome::Refused => Err(AppError::Refused {
            code: "login_refused",
            message: "the name, password or authenticator code is wrong (each code is taken once: wait for the next)".into(),
        }),
        Outcome::Limited(limit) => Err(too_many_failures(&st, limit, now)),
    }
}

/// Log out.
///
/// Revokes the login's own token at once (on every node).
#[utoipa::path(post, path = "/v1/staff/logout", tag = "staff",
    security(("token" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 409, description = "`not_a_session`: a token made by `kci token create`; revoke it with `kci token revoke`", body = ErrorBody),
    ))]
pub async fn logout(State(st): State<AppState>, caller: Caller) -> Result<StatusCode, AppError> {
    if !caller.0.session {
        return Err(AppError::Conflict {
            code: "not_a_session",
            message: "this token was not made by a login: revoke it with `kci token revoke ID`"
                .into(),
        });
    }
    st.store.revoke_token(&caller.0.id, st.clock.now()).await?;
    st.tokens.invalidate();
    let mut d = crate::model::audit::AuditDraft::new(&caller.actor(), "staff.logout", "ok");
    d.detail = Some(format!("session:{}", caller.0.id));
    st.store.audit(d, st.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who a staff token acts as.
#[derive(Serialize, ToSchema)]
pub struct Me {
    pub name: String,
    pub role: Role,
    /// What this token may do (its scopes within the role).
    /// Scope names (`events:write`, `directory:read`, ...).
    pub scopes: Vec<String>,
    /// Made by a login (a second factor was shown).
    pub session: bool,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// Who this token acts as.
///
/// A staff member's token (a login's or one of `kci token create
/// --staff`).
#[utoipa::path(get, path = "/v1/staff/me", tag = "staff",
    security(("token" = [])),
    responses(
        (status = 200, body = Me),
        (status = 401, description = "`unauthenticated`", body = ErrorBody),
        (status = 403, description = "`staff_only`: not a staff member's token", body = ErrorBody),
    ))]
pub async fn me(State(st): State<AppState>, caller: Caller) -> Result<Json<Me>, AppError> {
    let name = caller.staff()?.to_string();
    let staff = st
        .store
        .staff(&name)
        .await?
        .ok_or(AppError::Unauthenticated)?;
    Ok(Json(Me {
        name,
        role: staff.role,
        scopes: caller
            .0
            .scopes
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        session: caller.0.session,
        expires_at: caller.0.expires_at.map(crate::model::fmt_time),
    }))
}
