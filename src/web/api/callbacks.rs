//! Provider callbacks: providers reporting on messages they accepted.
//! They hold none of kci's bearer tokens, so each is authenticated the
//! provider's way instead — Twilio by `X-Twilio-Signature`.

use crate::channels::sms::twilio;
use crate::model::ChannelKind;
use crate::web::{AppError, AppState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

/// `POST /v1/callbacks/twilio/{notification}`: Twilio's status callback
/// (form-encoded `MessageSid`, `MessageStatus`, `ErrorCode`, …) for an SMS
/// kci sent with `StatusCallback`. A final status is recorded as the
/// notification's receipt; others are acknowledged and ignored.
pub async fn twilio(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    let cfg = st.config.channels.sms.twilio.as_ref();
    let Some((cfg, base)) = cfg.and_then(|c| c.status_callback.as_ref().map(|b| (c, b))) else {
        return Err(AppError::NotFound {
            what: "Twilio status callbacks (not configured)".into(),
        });
    };
    let url = twilio::callback_url(base, &id).ok_or_else(|| AppError::NotFound {
        what: format!("notification `{id}`"),
    })?;
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !twilio::valid_signature(cfg.auth_token.expose(), url.as_str(), &params, signature) {
        return Err(AppError::BadSignature {
            header: "X-Twilio-Signature",
        });
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let n = st
        .store
        .notification(&id)
        .await?
        .filter(|n| {
            n.channel == ChannelKind::Sms && n.provider_ref.as_deref() == param("MessageSid")
        })
        .ok_or_else(|| AppError::NotFound {
            what: format!("an SMS `{id}` with that MessageSid"),
        })?;
    let status = param("MessageStatus")
        .ok_or_else(|| AppError::invalid("invalid_field", "MessageStatus", "is missing"))?;
    let code = param("ErrorCode").and_then(|c| c.parse().ok());
    if let Some(report) = twilio::report(status, code, None) {
        st.health()
            .record_receipt(&n, &report, st.clock.now())
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
