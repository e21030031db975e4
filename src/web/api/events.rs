//! The event API (DESIGN.md §3): post one event or an NDJSON batch, read an
//! event with the fate of each notification, cancel what is still pending.

use crate::ingest::{self, FieldError};
use crate::model::{Event, Scope, fmt_time};
use crate::store::{IngestOutcome, Notification};
use crate::web::{AppError, AppState, Caller};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

fn field_error(status: u16, e: FieldError) -> AppError {
    if status == 400 {
        AppError::BadRequest {
            code: e.code,
            message: e.message,
        }
    } else {
        AppError::Invalid {
            code: e.code,
            message: e.message,
        }
    }
}

fn record(st: &AppState, outcomes: &[IngestOutcome]) {
    for o in outcomes {
        match o {
            IngestOutcome::Accepted { .. } => {
                st.metrics.events_accepted.inc();
            }
            IngestOutcome::Duplicate { .. } => {}
            IngestOutcome::Rejected(r) => {
                st.metrics
                    .events_rejected
                    .get_or_create(&vec![("code", r.code.to_string())])
                    .inc();
            }
        }
    }
    if outcomes
        .iter()
        .any(|o| matches!(o, IngestOutcome::Accepted { .. }))
    {
        st.wake.notify_one();
    }
}

/// `POST /v1/events` (scope `events:write`).
pub async fn post_event(
    State(st): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::EventsWrite)?;
    let input = ingest::parse(&body).map_err(|(s, e)| field_error(s, e))?;
    let event =
        ingest::validate(input, &st.config, st.clock.now()).map_err(|e| field_error(422, e))?;
    let outcomes = st.store.ingest(vec![event], st.planner.clone()).await?;
    record(&st, &outcomes);
    match outcomes.into_iter().next() {
        Some(
            IngestOutcome::Accepted { id, notifications }
            | IngestOutcome::Duplicate { id, notifications },
        ) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "notifications": notifications})),
        )),
        Some(IngestOutcome::Rejected(r)) => Err(AppError::Invalid {
            code: r.code,
            message: r.message,
        }),
        None => Err(AppError::Internal("store answered no outcome".into())),
    }
}

/// The longest error message one answer line carries.
const MAX_LINE_MESSAGE: usize = 200;

/// `POST /v1/events/batch` (scope `events:write`): NDJSON in, one NDJSON
/// answer line per non-empty input line, in order. Valid lines are stored
/// in one transaction; a bad line is answered with its error and stores
/// nothing, without affecting the others. More than
/// [`ingest::MAX_BATCH_LINES`] events: 413, and nothing is stored.
pub async fn post_batch(
    State(st): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::EventsWrite)?;
    let lines =
        ingest::parse_batch(&body, &st.config, st.clock.now()).map_err(|e| AppError::TooLarge {
            code: "batch_too_large",
            message: e.to_string(),
        })?;
    let mut answers: Vec<Value> = Vec::with_capacity(lines.len());
    let mut events: Vec<Event> = Vec::new();
    let mut slots: Vec<usize> = Vec::new();
    for (line, parsed) in lines {
        match parsed {
            Ok(ev) => {
                slots.push(answers.len());
                answers.push(json!({"line": line}));
                events.push(ev);
            }
            Err((status, e)) => {
                let message = crate::model::excerpt(&e.message, MAX_LINE_MESSAGE);
                answers.push(
                    json!({"line": line, "status": status, "error": e.code, "message": message}),
                );
            }
        }
    }
    if answers.is_empty() {
        return Err(AppError::BadRequest {
            code: "empty_batch",
            message: "the batch has no events".into(),
        });
    }
    let outcomes = if events.is_empty() {
        Vec::new()
    } else {
        st.store.ingest(events, st.planner.clone()).await?
    };
    record(&st, &outcomes);
    for (slot, outcome) in slots.into_iter().zip(outcomes) {
        let a = &mut answers[slot];
        match outcome {
            IngestOutcome::Accepted { id, notifications }
            | IngestOutcome::Duplicate { id, notifications } => {
                a["status"] = 202.into();
                a["id"] = id.into();
                a["notifications"] = notifications.into();
            }
            IngestOutcome::Rejected(r) => {
                a["status"] = 422.into();
                a["error"] = r.code.into();
                a["message"] = crate::model::excerpt(&r.message, MAX_LINE_MESSAGE).into();
            }
        }
    }
    let mut out = String::new();
    for a in answers {
        out.push_str(&a.to_string());
        out.push('\n');
    }
    Ok((
        StatusCode::OK,
        [("content-type", "application/x-ndjson")],
        out,
    ))
}

/// The fate of one notification as the API shows it.
pub fn fate(n: &Notification) -> Value {
    json!({
        "id": n.id,
        "destination": n.uri,
        "contact": n.contact,
        "channel": n.channel.as_str(),
        "type": n.type_name,
        "state": n.state,
        "reason": n.reason,
        "detail": n.detail,
        "due_at": fmt_time(n.due_at),
        "sent_at": n.sent_at.map(fmt_time),
        "attempts": n.attempts,
        "paced": n.paced,
        "receipt": n.receipt,
        "segments": n.segments,
    })
}

/// `GET /v1/events/{id}` (scope `events:read`).
pub async fn get_event(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::EventsRead)?;
    let (event, notes) = st.store.event(&id).await?.ok_or(AppError::NotFound {
        what: format!("event `{id}`"),
    })?;
    let history = st.store.history(&id).await?;
    let mut body = serde_json::to_value(&event).map_err(|e| AppError::Internal(e.to_string()))?;
    body["notifications"] = notes
        .iter()
        .map(|n| {
            let mut f = fate(n);
            let steps: Vec<Value> = history
                .iter()
                .filter(|d| d.notification == n.id)
                .map(|d| json!({"at": fmt_time(d.at), "state": d.state, "reason": d.reason, "detail": d.detail, "due_at": fmt_time(d.due_at)}))
                .collect();
            f["history"] = steps.into();
            f
        })
        .collect::<Vec<_>>()
        .into();
    Ok(Json(body))
}

/// `DELETE /v1/events/{id}` (scope `events:write`): cancels what is pending.
pub async fn delete_event(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::EventsWrite)?;
    let n = st
        .store
        .cancel_event(&id, st.clock.now())
        .await?
        .ok_or(AppError::NotFound {
            what: format!("event `{id}`"),
        })?;
    Ok(Json(json!({"id": id, "cancelled": n})))
}
