//! The dead-letter list: deliveries that failed for good, and a way to send
//! one again once the cause is fixed (a corrected address, a provider back).

use crate::model::{Scope, State};
use crate::web::{AppError, AppState, Caller};
use axum::Json;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::response::IntoResponse;
use serde_json::json;

/// `GET /v1/deliveries?state=failed[&limit=N][&before=RFC3339]` (scope
/// `events:read`): newest first; `before` pages on.
pub async fn list(
    AxState(st): AxState<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::EventsRead)?;
    let (mut state, mut limit, mut before) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "state" => state = Some(v.into_owned()),
            "limit" => {
                limit =
                    Some(v.parse::<usize>().map_err(|_| {
                        AppError::invalid("invalid_field", "limit", "must be a number")
                    })?)
            }
            "before" => before = Some(v.into_owned()),
            other => {
                return Err(AppError::invalid(
                    "invalid_field",
                    other,
                    "is not a parameter here",
                ));
            }
        }
    }
    let state = match state.as_deref().unwrap_or("failed") {
        "failed" => State::Failed,
        other => {
            return Err(AppError::invalid(
                "invalid_field",
                "state",
                format!("`{other}`: only failed deliveries are listed here"),
            ));
        }
    };
    let limit = limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(AppError::invalid(
            "invalid_field",
            "limit",
            "must be 1 to 1000",
        ));
    }
    let before = before
        .as_deref()
        .map(crate::model::parse_time)
        .transpose()
        .map_err(|e| AppError::invalid("invalid_field", "before", e))?;
    let notes = st.store.notifications_in(state, before, limit).await?;
    let deliveries: Vec<_> = notes
        .iter()
        .map(|n| {
            let mut f = super::events::fate(n);
            f["event"] = json!(n.event);
            f["account"] = json!(n.account);
            f["decided_at"] = json!(crate::model::fmt_time(n.decided_at));
            f
        })
        .collect();
    Ok(Json(json!({ "deliveries": deliveries })))
}

/// `POST /v1/deliveries/{id}/retry` (scope `events:write`): a failed one
/// goes back in the queue, due now, attempts counted afresh.
pub async fn retry(
    AxState(st): AxState<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    caller.require(Scope::EventsWrite)?;
    // A code or link went out once and is erased: sending its notice again
    // would send nothing usable; a new one must be asked for.
    if let Some(n) = st.store.notification(&id).await?
        && n.needs_secret()
    {
        return Err(AppError::Conflict {
            code: "secret_gone",
            message: format!(
                "delivery `{id}` carried a one-time code or link that kci no longer holds; ask for a new one instead"
            ),
        });
    }
    if st.store.redrive(&id, st.clock.now()).await? {
        st.wake.notify_one();
        Ok(Json(json!({"id": id, "state": "pending"})))
    } else {
        Err(AppError::NotFound {
            what: format!("failed delivery `{id}`"),
        })
    }
}
