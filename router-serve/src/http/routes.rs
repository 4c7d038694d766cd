//! The table of paths.

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post};

use super::handlers;
use crate::state::AppState;

/// Every endpoint of the server. The admin group (reload, keys, upstreams, spend, budgets) sits behind
/// one authorisation layer.
pub fn app(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/admin/reload", post(handlers::reload))
        .route(
            "/admin/keys",
            get(handlers::list_keys).post(handlers::create_key),
        )
        .route("/admin/keys/{name}", delete(handlers::delete_key))
        .route("/admin/upstreams", get(handlers::upstreams))
        .route("/v1/spend", get(handlers::spend))
        .route("/v1/budgets", get(handlers::budgets))
        .route_layer(from_fn_with_state(state.clone(), handlers::require_admin));
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/route", post(handlers::route))
        .route("/v1/models", get(handlers::models))
        .route("/v1/feedback", post(handlers::feedback))
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route(
            "/metrics",
            get(handlers::metrics).route_layer(from_fn_with_state(
                state.clone(),
                handlers::require_metrics_key,
            )),
        )
        .route("/dashboard", get(handlers::dashboard))
        .merge(admin)
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
}
