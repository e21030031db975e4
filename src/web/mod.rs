//! HTTP: the API for source systems (`api/`), one [`AppError`] type for
//! every error answer, bearer-token authentication with scopes, and the
//! server that runs it all within limits (`serve`).

pub mod api;
mod auth;
pub mod error;
pub mod gauges;
pub mod perimeter;
pub mod serve;
pub mod tls;
pub mod wkd;

pub use auth::{Caller, TokenCache, hash_token, new_token};
pub use error::AppError;

use crate::channels::Channels;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::Clock;
use crate::store::{Planner, Store};
use axum::Router;
use std::sync::Arc;

/// What every handler can reach. Cloned for every request (the perimeter
/// and the handler each take one), so it is one `Arc`: cloning the parts
/// one by one cost a dozen atomic counts and a map's allocation a clone
/// (2.4% of kci's samples in a profile of single events, BENCHMARKS.md
/// stop 37).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub channels: Channels,
    pub planner: Arc<dyn Planner>,
    /// Single events posted at the same time, stored together.
    pub events: crate::ingest::coalesce::Coalescer,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// Wakes the delivery worker after ingest.
    pub wake: Arc<crate::schedule::Wake>,
    /// Request rates per client address and per token.
    pub limits: Arc<perimeter::RateLimits>,
    /// Token lookups, kept while the store's token epoch holds.
    pub tokens: Arc<TokenCache>,
    /// The last count of notifications by state (`/metrics`).
    pub counts: Arc<gauges::StoreCounts>,
}

impl AppState {
    /// Destination health and receipts, counted as the scheduler does.
    pub fn health(&self) -> crate::schedule::Health {
        crate::schedule::Health {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            threshold: self.config.delivery.unhealthy_after,
            wake: self.wake.clone(),
        }
    }
}

/// The main listener's router: everything.
pub fn router(state: AppState) -> Router {
    let allow = state.config.server.allow.clone();
    layered(api::routes(), state, allow)
}

/// `[server.public]`'s router: only what customers and providers reach.
pub fn public_router(state: AppState) -> Router {
    let allow = state
        .config
        .server
        .public
        .as_ref()
        .map(|p| p.allow.clone())
        .unwrap_or_default();
    layered(api::public_routes(), state, allow)
}

/// `routes` with the Web Key Directory, the perimeter (with `allow`) and
/// the body limit.
fn layered(mut routes: Router<AppState>, state: AppState, allow: Vec<ipnet::IpNet>) -> Router {
    let limit = state.config.server.max_body_bytes;
    // The operator's Web Key Directory, when mail is signed. The key was
    // already loaded once by the email channel, which refuses to start
    // without it; a failure here only leaves the directory out.
    if state.config.email.signing_key.is_some() {
        let from = state.config.email.from.parse::<lettre::message::Mailbox>();
        match (
            crate::channels::email::load_signing_key(&state.config.email),
            from,
        ) {
            (Ok(None), _) => {}
            (Ok(Some(key)), Ok(from)) => {
                let dir = wkd::Directory::new(&key, from.email.as_ref());
                routes = routes.merge(wkd::routes(dir));
            }
            (Err(e), _) => tracing::warn!(error = %e, "no Web Key Directory"),
            (_, Err(e)) => tracing::warn!(error = %e, "no Web Key Directory"),
        }
    }
    let networks: perimeter::Networks = allow.into();
    routes
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), networks),
            perimeter::perimeter,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}
