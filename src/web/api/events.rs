//! The event API (DESIGN.md §3): post one event or an NDJSON batch, read an
//! event with the fate of each notification, cancel what is still pending.

use crate::ingest::{self, EventInput, FieldError};
use crate::model::{Event, Reason, ReceiptStatus, Scope, State as NoteState, fmt_time};
use crate::store::{IngestOutcome, Notification};
use crate::web::error::ErrorBody;
use crate::web::{AppError, AppState, Caller};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

/// An event stored (202), or one seen before under the same id (its first
/// answer again; nothing new is written).
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({"id": "evt-1", "notifications": 2})))]
pub struct Accepted {
    pub id: String,
    /// How many notifications were planned for it.
    pub notifications: usize,
}

/// One answer line of a batch: `status` 202 with `id` and
/// `notifications`, or 400/422 with `error` and `message`.
#[derive(Serialize, ToSchema, Default)]
pub struct BatchLine {
    /// The input line it answers (1-based).
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notifications: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The fate of one notification: where it goes, its state and why.
#[derive(Serialize, ToSchema)]
pub struct Fate {
    pub id: String,
    /// The destination's URI.
    pub destination: String,
    pub contact: String,
    pub channel: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub state: NoteState,
    pub reason: Option<Reason>,
    pub detail: Option<String>,
    #[schema(format = DateTime)]
    pub due_at: String,
    #[schema(format = DateTime)]
    pub sent_at: Option<String>,
    pub attempts: u32,
    /// Times a provider asked kci to wait (429); these cost no attempt.
    pub paced: u32,
    pub receipt: Option<ReceiptStatus>,
    /// SMS segments the text took.
    pub segments: Option<u32>,
}

/// One decision in a notification's history.
#[derive(Serialize, ToSchema)]
pub struct Step {
    #[schema(format = DateTime)]
    pub at: String,
    pub state: NoteState,
    pub reason: Option<Reason>,
    pub detail: Option<String>,
    #[schema(format = DateTime)]
    pub due_at: String,
}

/// A notification's fate with the decisions that led to it.
#[derive(Serialize, ToSchema)]
pub struct FateWithHistory {
    #[serde(flatten)]
    pub fate: Fate,
    pub history: Vec<Step>,
}

/// An event as stored, with the fate of each of its notifications.
#[derive(Serialize, ToSchema)]
pub struct EventView {
    #[serde(flatten)]
    pub event: Event,
    pub notifications: Vec<FateWithHistory>,
}

/// What a cancellation did.
#[derive(Serialize, ToSchema)]
pub struct Cancelled {
    pub id: String,
    /// Notifications that were still pending and are now cancelled.
    pub cancelled: usize,
}

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
            IngestOutcome::Rejected(r) => st.metrics.event_rejected(r.code),
        }
    }
    // The scheduler is woken only for what comes due before it looks
    // again by itself: events held for later cost it nothing.
    let due = outcomes
        .iter()
        .filter_map(|o| match o {
            IngestOutcome::Accepted { due, .. } => *due,
            _ => None,
        })
        .min();
    if let Some(at) = due {
        st.wake.due(at);
    }
}

/// Post one event.
///
/// Stored durably before the answer. The same `id` again answers the first
/// result and writes nothing.
#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body = EventInput,
    security(("token" = ["events:write"])),
    responses(
        (status = 202, description = "Stored; notifications planned", body = Accepted),
        (status = 400, description = "`malformed_json`: the body is not JSON", body = ErrorBody),
        (status = 422, description = "`invalid_field`, `unknown_type`, `unknown_account`…: a field is wrong; the message names it", body = ErrorBody),
    ))]
pub async fn post_event(
    State(st): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::EventsWrite)?;
    // Refused before the store is asked (not JSON, a bad field, a type
    // the config does not define) counts as rejected as well.
    let refused = |status, e: FieldError| {
        st.metrics.event_rejected(e.code);
        field_error(status, e)
    };
    let input = ingest::parse(&body).map_err(|(s, e)| refused(s, e))?;
    let event = ingest::validate(input, &st.config, st.clock.now()).map_err(|e| refused(422, e))?;
    // Stored with whatever other single events were posted meanwhile.
    let outcome = st.events.ingest(event).await?;
    record(&st, std::slice::from_ref(&outcome));
    match outcome {
        IngestOutcome::Accepted {
            id, notifications, ..
        }
        | IngestOutcome::Duplicate { id, notifications } => {
            Ok((StatusCode::ACCEPTED, Json(Accepted { id, notifications })))
        }
        IngestOutcome::Rejected(r) => Err(AppError::Invalid {
            code: r.code,
            message: r.message,
        }),
    }
}

/// The longest error message one answer line carries.
const MAX_LINE_MESSAGE: usize = 200;

/// Post events as NDJSON.
///
/// One event per line; one answer line per non-empty input line, in
/// order. Valid lines are stored in one transaction; a bad line is
/// answered with its error and stores nothing, without affecting the
/// others. More than [`ingest::MAX_BATCH_LINES`] events: 413, and nothing
/// is stored.
#[utoipa::path(post, path = "/v1/events/batch", tag = "events",
    request_body(content = EventInput, content_type = "application/x-ndjson",
        description = "One event (as `POST /v1/events` takes) per line"),
    security(("token" = ["events:write"])),
    responses(
        (status = 200, description = "One answer per line, as NDJSON", body = BatchLine, content_type = "application/x-ndjson"),
        (status = 400, description = "`empty_batch`: no events in the body", body = ErrorBody),
        (status = 413, description = "`batch_too_large`: more events than one batch may carry", body = ErrorBody),
    ))]
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
    let mut answers: Vec<BatchLine> = Vec::with_capacity(lines.len());
    let mut events: Vec<Event> = Vec::new();
    let mut slots: Vec<usize> = Vec::new();
    for (line, parsed) in lines {
        match parsed {
            Ok(ev) => {
                slots.push(answers.len());
                answers.push(BatchLine {
                    line,
                    ..BatchLine::default()
                });
                events.push(ev);
            }
            Err((status, e)) => {
                st.metrics.event_rejected(e.code);
                answers.push(BatchLine {
                    line,
                    status: Some(status),
                    error: Some(e.code.to_string()),
                    message: Some(crate::model::excerpt(&e.message, MAX_LINE_MESSAGE)),
                    ..BatchLine::default()
                });
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
            IngestOutcome::Accepted {
                id, notifications, ..
            }
            | IngestOutcome::Duplicate { id, notifications } => {
                a.status = Some(202);
                a.id = Some(id);
                a.notifications = Some(notifications);
            }
            IngestOutcome::Rejected(r) => {
                a.status = Some(422);
                a.error = Some(r.code.to_string());
                a.message = Some(crate::model::excerpt(&r.message, MAX_LINE_MESSAGE));
            }
        }
    }
    let mut out = String::new();
    for a in answers {
        let line = serde_json::to_string(&a).map_err(|e| AppError::Internal(e.to_string()))?;
        out.push_str(&line);
        out.push('\n');
    }
    Ok((
        StatusCode::OK,
        [("content-type", "application/x-ndjson")],
        out,
    ))
}

/// The fate of one notification as the API shows it.
pub fn fate(n: &Notification) -> Fate {
    Fate {
        id: n.id.clone(),
        destination: n.uri.clone(),
        contact: n.contact.clone(),
        channel: n.channel.as_str().to_string(),
        type_name: n.type_name.clone(),
        state: n.state,
        reason: n.reason,
        detail: n.detail.clone(),
        due_at: fmt_time(n.due_at),
        sent_at: n.sent_at.map(fmt_time),
        attempts: n.attempts,
        paced: n.paced,
        receipt: n.receipt,
        segments: n.segments,
    }
}

/// Read an event.
///
/// The event as stored, and per notification its fate and the decisions
/// that led to it.
#[utoipa::path(get, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "The event's id")),
    security(("token" = ["events:read"])),
    responses(
        (status = 200, body = EventView),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
    ))]
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
    let notifications = notes
        .iter()
        .map(|n| FateWithHistory {
            fate: fate(n),
            history: history
                .iter()
                .filter(|d| d.notification == n.id)
                .map(|d| Step {
                    at: fmt_time(d.at),
                    state: d.state,
                    reason: d.reason,
                    detail: d.detail.clone(),
                    due_at: fmt_time(d.due_at),
                })
                .collect(),
        })
        .collect();
    Ok(Json(EventView {
        event,
        notifications,
    }))
}

/// Cancel an event.
///
/// What of it is still pending is cancelled; what went out stays.
#[utoipa::path(delete, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path, description = "The event's id")),
    security(("token" = ["events:write"])),
    responses(
        (status = 200, body = Cancelled),
        (status = 404, description = "`not_found`: no such event", body = ErrorBody),
    ))]
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
    Ok(Json(Cancelled { id, cancelled: n }))
}
