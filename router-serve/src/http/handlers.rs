//! Handlers: extract, call the service, map errors. No routing logic lives here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::endpoints;
use crate::endpoints::admin;
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::tenancy::admission;

/// Reads the whole body, refusing more than `server.max_body_bytes` (413).
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.engine().config.server.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let ms = state.engine().config.server.body_read_timeout_ms;
    let read = tokio::time::timeout(Duration::from_millis(ms), axum::body::to_bytes(body, limit));
    read.await
        .map_err(|_| ApiError::BodyTimeout { ms })?
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::BodyTooLarge { limit }
            } else {
                ApiError::BodyRead(e.to_string())
            }
        })
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match read_body(&state, &headers, body).await {
        Ok(bytes) => endpoints::chat::chat_completions(state, headers, bytes).await,
        Err(e) => e.into_response(),
    }
}

pub async fn route(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&state, &headers, body).await?;
    endpoints::route::route(state, headers, bytes).await
}

pub async fn feedback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&state, &headers, body).await?;
    Ok(Json(endpoints::feedback::feedback(&state, &headers, &bytes).await?).into_response())
}

pub async fn models(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    Ok(Json(endpoints::info::models(&state, &headers).await?).into_response())
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    Ok(Json(endpoints::info::ready(&state).await?).into_response())
}

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    Json(endpoints::info::health(&state)).into_response()
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn reload(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let report = state.reload("admin").await.map_err(ApiError::Reload)?;
    Ok(Json(report).into_response())
}

pub async fn spend(
    State(state): State<Arc<AppState>>,
    query: Result<Query<admin::SpendQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text(), Some("group_by")))?;
    Ok(Json(admin::spend(&state, query).await?).into_response())
}

pub async fn budgets(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    Ok(Json(admin::budgets(&state).await?).into_response())
}

pub async fn upstreams(State(state): State<Arc<AppState>>) -> Response {
    Json(admin::upstreams(&state)).into_response()
}

pub async fn list_keys(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    Ok(Json(admin::list_keys(&state)).into_response())
}

pub async fn create_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&state, &headers, body).await?;
    let new = serde_json::from_slice(&bytes).map_err(ApiError::InvalidJson)?;
    Ok(Json(admin::create_key(&state, new).await?).into_response())
}

pub async fn delete_key(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(admin::delete_key(&state, name).await?).into_response())
}

/// The page itself is public (it holds no data); the spend it loads needs the admin key.
pub async fn dashboard() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        admin::DASHBOARD_HTML,
    )
        .into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no endpoint at {}", uri.path()))
}

/// Middleware on the admin routes (see `routes.rs`): with an admin key configured, the
/// request must bear it; without one, only loopback peers may call them, and not through a
/// proxy (a request carrying forwarding headers came from somewhere else).
pub async fn require_admin(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let engine = state.engine();
    let allowed = match &engine.config.admin_key {
        Some(key) => bears(request.headers(), key.expose()),
        None => peer.ip().is_loopback() && !proxied(request.headers()),
    };
    if !allowed {
        state
            .metrics
            .unauthorized
            .with_label_values(&["admin"])
            .inc();
        return Err(ApiError::Unauthorized(
            if engine.config.admin_key.is_some() {
                "a valid admin key is required"
            } else {
                "admin endpoints answer direct loopback clients only unless server.admin_key_env is set"
            }
            .into(),
        ));
    }
    Ok(next.run(request).await)
}

/// Middleware on `/metrics`: with `server.metrics_key_env` set, the request must bear that key.
pub async fn require_metrics_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let engine = state.engine();
    if let Some(key) = &engine.config.metrics_key
        && !bears(request.headers(), key.expose())
    {
        state
            .metrics
            .unauthorized
            .with_label_values(&["metrics"])
            .inc();
        return Err(ApiError::Unauthorized(
            "a valid metrics key is required (server.metrics_key_env)".into(),
        ));
    }
    Ok(next.run(request).await)
}

/// Whether the request's bearer token is `key` (compared in constant time).
fn bears(headers: &HeaderMap, key: &str) -> bool {
    let given = admission::bearer(headers).unwrap_or("");
    crate::tenancy::identity::constant_time_eq(given.as_bytes(), key.as_bytes())
}

/// Whether a proxy forwarded the request (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`, …).
fn proxied(headers: &HeaderMap) -> bool {
    [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-real-ip",
        "via",
    ]
    .iter()
    .any(|h| headers.contains_key(*h))
}

/// 405 with an OpenAI error body.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
