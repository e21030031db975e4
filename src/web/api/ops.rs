//! Operations endpoints: liveness and Prometheus metrics.

use crate::model::Scope;
use crate::web::{AppError, AppState, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

/// `GET /healthz`: 200 when the store answers. Unauthenticated (load
/// balancers call it) and says nothing beyond ok / not ok.
pub async fn healthz(State(st): State<AppState>) -> impl IntoResponse {
    match st.store.next_due().await {
        Ok(_) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        ),
        Err(e) => {
            tracing::error!(error = %e, "health check: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "store unavailable"})),
            )
        }
    }
}

/// `GET /metrics`: Prometheus text; needs the `admin` scope unless
/// `[server] public_metrics` is on.
pub async fn metrics(
    State(st): State<AppState>,
    caller: Option<Caller>,
) -> Result<impl IntoResponse, AppError> {
    if !st.config.server.public_metrics {
        caller
            .ok_or(AppError::Unauthenticated)?
            .require(Scope::Admin)?;
    }
    st.metrics
        .set_notifications(&st.store.count_by_state().await?);
    st.metrics
        .set_backlog(&st.store.backlog().await?, st.clock.now());
    Ok((
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        st.metrics.render(),
    ))
}

pub async fn not_found() -> AppError {
    AppError::NotFound {
        what: "this path".into(),
    }
}
