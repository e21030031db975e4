//! Operations endpoints: liveness and Prometheus metrics.

use crate::model::Scope;
use crate::web::{AppError, AppState, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

/// Whether the store answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `store unavailable`.
    status: &'static str,
}

/// Liveness.
///
/// 200 when the store answers. Unauthenticated (load balancers call it)
/// and says nothing beyond ok / not ok.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "The store does not answer", body = Health),
    ))]
pub async fn healthz(State(st): State<AppState>) -> impl IntoResponse {
    match st.store.next_due(None).await {
        Ok(_) => (StatusCode::OK, axum::Json(Health { status: "ok" })),
        Err(e) => {
            tracing::error!(error = %e, "health check: store unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(Health {
                    status: "store unavailable",
                }),
            )
        }
    }
}

/// Prometheus metrics.
///
/// The text exposition format; needs the `metrics:read` scope unless
/// `[server] public_metrics` is on.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security(("token" = ["metrics:read"]), ()),
    responses(
        (status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
    ))]
pub async fn metrics(
    State(st): State<AppState>,
    caller: Option<Caller>,
) -> Result<impl IntoResponse, AppError> {
    if !st.config.server.public_metrics {
        caller
            .ok_or(AppError::Unauthenticated)?
            .require(Scope::MetricsRead)?;
    }
    st.metrics
        .set_notifications(&st.counts.read(&st.store).await?);
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
