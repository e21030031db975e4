//! The dead-letter list: deliveries that failed for good, and a way to send
//! one again once the cause is fixed (a corrected address, a provider back).

use crate::model::{Scope, State};
use crate::web::error::ErrorBody;
use crate::web::{AppError, AppState, Caller};
use axum::Json;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

/// A delivery that failed for good, with where it came from.
#[derive(Serialize, ToSchema)]
pub struct Delivery {
    #[serde(flatten)]
    pub fate: super::events::Fate,
    pub event: Option<String>,
    pub account: String,
    #[schema(format = DateTime)]
    pub decided_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct Deliveries {
    pub deliveries: Vec<Delivery>,
}

/// A delivery back in the queue.
#[derive(Serialize, ToSchema)]
pub struct Requeued {
    pub id: String,
    /// Always `pending`.
    pub state: State,
}

/// The query of the dead-letter list.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListQuery {
    /// Only `failed` is listed.
    state: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Those decided before this time (paging: the last one's `decided_at`).
    #[param(format = DateTime)]
    before: Option<String>,
}

/// List failed deliveries.
///
/// Deliveries that failed for good, newest first; `before` pages on.
#[utoipa::path(get, path = "/v1/deliveries", tag = "deliveries",
    params(ListQuery),
    security(("token" = ["events:read"])),
    responses(
        (status = 200, body = Deliveries),
        (status = 422, description = "`invalid_field`: a parameter is wrong or unknown", body = ErrorBody),
    ))]
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
    let deliveries = notes
        .iter()
        .map(|n| Delivery {
            fate: super::events::fate(n),
            event: n.event.clone(),
            account: n.account.clone(),
            decided_at: crate::model::fmt_time(n.decided_at),
        })
        .collect();
    Ok(Json(Deliveries { deliveries }))
}

/// Retry a failed delivery.
///
/// It goes back in the queue, due now, attempts counted afresh.
#[utoipa::path(post, path = "/v1/deliveries/{id}/retry", tag = "deliveries",
    params(("id" = String, Path, description = "The notification's id")),
    security(("token" = ["events:write"])),
    responses(
        (status = 200, body = Requeued),
        (status = 404, description = "`not_found`: no failed delivery with this id", body = ErrorBody),
        (status = 409, description = "`secret_gone`: it carried a one-time code or link kci no longer holds", body = ErrorBody),
    ))]
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
        Ok(Json(Requeued {
            id,
            state: State::Pending,
        }))
    } else {
        Err(AppError::NotFound {
            what: format!("failed delivery `{id}`"),
        })
    }
}
