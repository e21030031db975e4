//! Provider callbacks: providers reporting on messages they accepted, and
//! texts customers send to the operator's SMS number (a code texted back
//! from their own line proves a change, issue 12). They hold none of
//! kci's bearer tokens, so each is authenticated the provider's way
//! instead — Twilio by `X-Twilio-Signature`, the generic gateway by an
//! HMAC-SHA256 of the body (`X-Kci-Signature`), WhatsApp (Meta) by
//! `X-Hub-Signature-256` and its subscription's verify token.

use crate::channels::sms::twilio;
use crate::model::ChannelKind;
use crate::web::error::ErrorBody;
use crate::web::{AppError, AppState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

/// Twilio's status callback, form-encoded (the fields kci reads).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, non_snake_case)]
struct TwilioStatus {
    MessageSid: String,
    /// queued, sent, delivered, undelivered, failed, …
    MessageStatus: String,
    ErrorCode: Option<String>,
}

/// Twilio's inbound-message webhook, form-encoded (the fields kci reads).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, non_snake_case)]
struct TwilioText {
    /// The sender's number, E.164.
    From: String,
    Body: String,
}

/// The parameters of a form Twilio posted to the URL `url` makes of the
/// public base (`[channels.sms.twilio] status_callback`), once its
/// `X-Twilio-Signature` is checked; 404 when Twilio is not configured to
/// call kci.
fn twilio_signed(
    st: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    url: impl FnOnce(&url::Url) -> Result<url::Url, AppError>,
) -> Result<Vec<(String, String)>, AppError> {
    let cfg = st.config.channels.sms.twilio.as_ref();
    let Some((cfg, base)) = cfg.and_then(|c| c.status_callback.as_ref().map(|b| (c, b))) else {
        return Err(AppError::NotFound {
            what: "Twilio's webhooks (no [channels.sms.twilio] status_callback)".into(),
        });
    };
    let url = url(base)?;
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !twilio::valid_signature(cfg.auth_token.expose(), url.as_str(), &params, signature) {
        return Err(AppError::BadSignature {
            header: "X-Twilio-Signature",
        });
    }
    Ok(params)
}

/// Twilio's status callback.
///
/// For an SMS kci sent with `StatusCallback` (form-encoded `MessageSid`,
/// `MessageStatus`, `ErrorCode`, …). A final status is recorded as the
/// notification's receipt; others are acknowledged and ignored.
#[utoipa::path(post, path = "/v1/callbacks/twilio/{id}", tag = "providers",
    params(
        ("id" = String, Path, description = "The notification's id"),
        ("X-Twilio-Signature" = String, Header, description = "Twilio's signature of the URL and the form"),
    ),
    request_body(content = TwilioStatus, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 204, description = "Recorded (or a status that is not final, ignored)"),
        (status = 403, description = "`bad_signature`: X-Twilio-Signature is missing or wrong", body = ErrorBody),
        (status = 404, description = "`not_found`: Twilio is not set up to call kci, or no such SMS", body = ErrorBody),
        (status = 422, description = "`invalid_field`: MessageStatus is missing", body = ErrorBody),
    ))]
pub async fn twilio(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    let params = twilio_signed(&st, &headers, &body, |base| {
        twilio::callback_url(base, &id).ok_or_else(|| AppError::NotFound {
            what: format!("notification `{id}`"),
        })
    })?;
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

/// A text to the operator's number, by Twilio.
///
/// Twilio's webhook (form-encoded `From`, `Body`, …), signed with
/// `X-Twilio-Signature` over `{status_callback}v1/inbound/sms/twilio`. A
/// code in it may prove a pending change. Answers empty TwiML (no reply
/// is texted).
#[utoipa::path(post, path = "/v1/inbound/sms/twilio", tag = "providers",
    params(("X-Twilio-Signature" = String, Header, description = "Twilio's signature of the URL and the form")),
    request_body(content = TwilioText, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Empty TwiML", content_type = "text/xml", body = String),
        (status = 403, description = "`bad_signature`: X-Twilio-Signature is missing or wrong", body = ErrorBody),
        (status = 404, description = "`not_found`: Twilio is not set up to call kci", body = ErrorBody),
    ))]
pub async fn twilio_inbound(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl axum::response::IntoResponse, AppError> {
    let params = twilio_signed(&st, &headers, &body, |base| {
        base.join("v1/inbound/sms/twilio")
            .map_err(|e| AppError::Internal(e.to_string()))
    })?;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    texted(&st, param("From"), param("Body")).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/xml")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>",
    ))
}

/// A text to the operator's number, as the SMS gateway passes it on.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[schema(examples(json!({"from": "+447700900123", "text": "123456"})))]
struct GatewayText {
    /// The sender's number, E.164.
    from: String,
    text: String,
}

/// A text to the operator's number, by the SMS gateway.
///
/// JSON `{"from": "+E164", "text": "…"}`, signed with `X-Kci-Signature:
/// sha256=<hex HMAC-SHA256 of the body, keyed with [channels.sms.http]
/// inbound_secret>`. A code in it may prove a pending change.
#[utoipa::path(post, path = "/v1/inbound/sms", tag = "providers",
    params(("X-Kci-Signature" = String, Header, description = "`sha256=` and the hex HMAC-SHA256 of the body")),
    request_body = GatewayText,
    responses(
        (status = 204, description = "Taken"),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 403, description = "`bad_signature`: X-Kci-Signature is missing or wrong", body = ErrorBody),
        (status = 404, description = "`not_found`: no inbound_secret is configured", body = ErrorBody),
        (status = 422, description = "`invalid_field`", body = ErrorBody),
    ))]
pub async fn gateway_inbound(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    let Some(secret) = st
        .config
        .channels
        .sms
        .http
        .as_ref()
        .and_then(|g| g.inbound_secret.as_ref())
    else {
        return Err(AppError::NotFound {
            what: "the SMS gateway's inbound webhook (no inbound_secret configured)".into(),
        });
    };
    let signature = headers
        .get("x-kci-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !crate::channels::sms::gateway::valid_inbound_signature(secret.expose(), &body, signature) {
        return Err(AppError::BadSignature {
            header: "X-Kci-Signature",
        });
    }
    let text: GatewayText = super::json_body(&body)?;
    texted(&st, &text.from, &text.text).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The most pending changes one text is tried against.
const MAX_CHANGES_PER_TEXT: usize = 5;
/// Accounts whose pending changes one text is tried against: a number is
/// rarely a destination of more than a household's accounts.
const MAX_ACCOUNTS_PER_TEXT: usize = 10;

/// A text from `from`: if it holds a code (6 digits), it is tried against
/// the pending changes, waiting for a code texted back, of the accounts
/// that number is a destination of. Anything else is ignored.
async fn texted(st: &AppState, from: &str, text: &str) -> Result<(), AppError> {
    let Some(code) = text
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
    else {
        return Ok(());
    };
    let number: String = from.trim().chars().filter(|c| !c.is_whitespace()).collect();
    if number.is_empty() || number.len() > 32 {
        return Ok(());
    }
    let mut accounts: Vec<String> = st
        .store
        .contacts_with_uri(&format!("sms:{number}"))
        .await?
        .into_iter()
        .map(|(account, _)| account)
        .collect();
    accounts.sort();
    accounts.dedup();
    accounts.truncate(MAX_ACCOUNTS_PER_TEXT);
    let engine = crate::changes::Engine {
        store: st.store.as_ref(),
        config: st.config.as_ref(),
        now: st.clock.now(),
    };
    let actor = crate::changes::Actor {
        id: format!("sms:{number}"),
        source: None,
        ticket: None,
    };
    let mut tried = 0;
    for account in accounts {
        let changes = st
            .store
            .changes(crate::store::ChangeFilter::PendingOfAccount(account))
            .await?;
        let waiting = changes.into_iter().filter(|c| {
            c.state == crate::model::ChangeState::Pending
                && c.proof_code
                    .as_ref()
                    .is_some_and(|p| p.kind == crate::model::ProofKind::Reply)
        });
        for c in waiting {
            if tried == MAX_CHANGES_PER_TEXT {
                return Ok(());
            }
            tried += 1;
            if let crate::model::ChangeAnswer::Waiting(_) | crate::model::ChangeAnswer::Settled(_) =
                engine.prove(&c.id, code, Some(&number), &actor).await?
            {
                st.wake.notify_one();
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The most statuses one WhatsApp webhook is read for (Meta batches
/// several; the body itself is bounded by `[server] max_body_bytes`).
const MAX_WHATSAPP_STATUSES: usize = 1000;

/// WhatsApp's webhook (the fields kci reads): statuses of sent messages.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[schema(examples(json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}, "statuses": [{"id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA", "status": "delivered", "timestamp": "1750030073", "recipient_id": "16505551234"}]}}]}]})))]
struct WhatsAppHook {
    #[serde(default)]
    entry: Vec<WhatsAppEntry>,
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct WhatsAppEntry {
    #[serde(default)]
    changes: Vec<WhatsAppChange>,
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct WhatsAppChange {
    #[serde(default)]
    value: WhatsAppValue,
}

#[derive(serde::Deserialize, Default, utoipa::ToSchema)]
struct WhatsAppValue {
    #[serde(default)]
    metadata: Option<WhatsAppMetadata>,
    /// sent, delivered, read or failed (with `errors`), by wamid.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    statuses: Vec<crate::channels::whatsapp::Status>,
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
struct WhatsAppMetadata {
    /// The business number the statuses are about.
    phone_number_id: String,
}

/// WhatsApp's status webhook.
///
/// Meta's webhook for the WhatsApp Business Account's `messages` field,
/// signed with `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body,
/// keyed with the app secret>`. A delivered or read message, or a failed
/// one (with WhatsApp's error), is recorded as the receipt of the
/// notification it was sent for (by its wamid); `sent` and statuses of
/// other numbers are ignored.
#[utoipa::path(post, path = "/v1/callbacks/whatsapp", tag = "providers",
    params(("X-Hub-Signature-256" = String, Header, description = "`sha256=` and the hex HMAC-SHA256 of the body, keyed with the app secret")),
    request_body = WhatsAppHook,
    responses(
        (status = 200, description = "Taken (each status recorded, or ignored)"),
        (status = 400, description = "`malformed_json`", body = ErrorBody),
        (status = 403, description = "`bad_signature`: X-Hub-Signature-256 is missing or wrong", body = ErrorBody),
        (status = 404, description = "`not_found`: WhatsApp is not configured with an app_secret", body = ErrorBody),
    ))]
pub async fn whatsapp(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    use crate::channels::whatsapp;
    let cfg = st.config.channels.whatsapp.as_ref();
    let Some((cfg, secret)) = cfg.and_then(|c| c.app_secret.as_ref().map(|s| (c, s))) else {
        return Err(AppError::NotFound {
            what: "WhatsApp's webhook (no [channels.whatsapp] app_secret)".into(),
        });
    };
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !whatsapp::valid_signature(secret.expose(), &body, signature) {
        return Err(AppError::BadSignature {
            header: "X-Hub-Signature-256",
        });
    }
    let hook: WhatsAppHook = super::json_body(&body)?;
    let statuses = hook
        .entry
        .iter()
        .flat_map(|e| &e.changes)
        .filter(|c| {
            c.value
                .metadata
                .as_ref()
                .is_none_or(|m| m.phone_number_id == cfg.phone_number_id)
        })
        .flat_map(|c| &c.value.statuses)
        .take(MAX_WHATSAPP_STATUSES);
    for s in statuses {
        let Some(report) = whatsapp::report(s) else {
            continue;
        };
        if s.id.is_empty() || s.id.len() > 256 {
            continue;
        }
        match st
            .store
            .notification_by_ref(ChannelKind::WhatsApp, &s.id)
            .await?
        {
            Some(n) => {
                st.health()
                    .record_receipt(&n, &report, st.clock.now())
                    .await?;
            }
            // Not one of kci's (another system on the same number), or gone.
            None => {
                tracing::debug!(wamid = %s.id, "a WhatsApp status for no notification of kci's")
            }
        }
    }
    Ok(StatusCode::OK)
}

/// WhatsApp's webhook subscription challenge.
///
/// Meta checks the webhook URL with `hub.mode=subscribe`,
/// `hub.verify_token` (the token given when subscribing) and
/// `hub.challenge`, which is answered back as it came.
#[utoipa::path(get, path = "/v1/callbacks/whatsapp", tag = "providers",
    params(
        ("hub.mode" = String, Query, description = "`subscribe`"),
        ("hub.verify_token" = String, Query, description = "[channels.whatsapp] verify_token"),
        ("hub.challenge" = String, Query, description = "Answered back"),
    ),
    responses(
        (status = 200, description = "The challenge", content_type = "text/plain", body = String),
        (status = 403, description = "`bad_signature`: the verify token is wrong, or the mode is not subscribe", body = ErrorBody),
        (status = 404, description = "`not_found`: WhatsApp is not configured with a verify_token", body = ErrorBody),
        (status = 422, description = "`invalid_field`: the challenge is not a short token", body = ErrorBody),
    ))]
pub async fn whatsapp_challenge(
    State(st): State<AppState>,
    query: axum::extract::RawQuery,
) -> Result<impl axum::response::IntoResponse, AppError> {
    let Some(token) = st
        .config
        .channels
        .whatsapp
        .as_ref()
        .and_then(|c| c.verify_token.as_ref())
    else {
        return Err(AppError::NotFound {
            what: "WhatsApp's webhook (no [channels.whatsapp] verify_token)".into(),
        });
    };
    let raw = query.0.unwrap_or_default();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .take(16)
        .collect();
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    if param("hub.mode") != "subscribe"
        || !crate::channels::whatsapp::valid_verify_token(token.expose(), param("hub.verify_token"))
    {
        return Err(AppError::BadSignature {
            header: "hub.verify_token",
        });
    }
    let challenge = param("hub.challenge").to_string();
    let ok = !challenge.is_empty()
        && challenge.len() <= 256
        && challenge.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(AppError::invalid(
            "invalid_field",
            "hub.challenge",
            "must be 1 to 256 printable characters",
        ));
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        challenge,
    ))
}
