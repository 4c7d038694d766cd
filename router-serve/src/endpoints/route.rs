//! `POST /v1/route`: the routing decision for a chat request, without forwarding it.

use std::sync::Arc;
use std::time::Instant;

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::api::chat::parse_chat;
use crate::api::headers::router_headers;
use crate::http::error::{ApiError, rate_headers};
use crate::observe::log::Latency;
use crate::observe::record::{base_record, finish};
use crate::routing::decision::RouteDecision;
use crate::routing::eligibility::Excluded;
use crate::routing::plan::plan;
use crate::state::AppState;
use crate::tenancy::admission;
use crate::util::{ms_since, new_request_id, now_unix};

/// `POST /v1/route`: the decision only. The body is a chat request; `model` defaults to
/// `router`.
pub async fn route(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let id = new_request_id();
    let engine = state.engine();
    let mut value: Value = serde_json::from_slice(&body).map_err(ApiError::InvalidJson)?;
    if let Value::Object(o) = &mut value {
        o.entry("model")
            .or_insert_with(|| Value::String("router".into()));
    }
    let bytes = serde_json::to_vec(&value).map_err(ApiError::InvalidJson)?;
    let req = parse_chat(&bytes, &headers)?;
    let store = state.store.as_ref();
    let admission = admission::admit(store, &engine, &headers, &req, now_unix()).await?;
    // A decision costs encoder time: it counts against the key's request rate like a chat.
    let rate = admission::rate_limit(store, &admission.identity, 0).await?;
    let plan = plan(&engine, &req, &admission.policy).await?;
    state
        .metrics
        .decision_seconds
        .observe(plan.decision_ms / 1e3);
    let mut record = base_record(&state, &id, "route", &req, &plan);
    record.status = "ok".into();
    record.http_status = 200;
    let total = ms_since(started);
    record.latency = Latency {
        decision_ms: plan.decision_ms,
        upstream_ms: 0.0,
        total_ms: total,
        overhead_ms: total,
    };
    finish(&state, &record, "route");
    let chosen = plan.targets.first().map(|t| t.model.clone());
    let answer = RouteAnswer {
        request_id: id.clone(),
        router: engine.router.manifest.name.clone(),
        mode: plan.mode.clone(),
        band: plan.band,
        reason: plan.reason,
        chosen: chosen.clone(),
        router_error: plan.router_error.clone(),
        input_tokens: plan.input_tokens,
        decision: plan.decision.clone(),
        decision_ms: plan.decision_ms,
        excluded: plan.excluded.clone(),
    };
    let mut response = axum::Json(answer).into_response();
    router_headers(
        response.headers_mut(),
        &id,
        Some(&plan),
        chosen.as_deref(),
        plan.reason,
        total,
    );
    rate_headers(response.headers_mut(), &rate);
    Ok(response)
}

#[derive(Serialize)]
struct RouteAnswer {
    request_id: String,
    router: String,
    mode: Option<String>,
    band: Option<f64>,
    reason: &'static str,
    chosen: Option<String>,
    router_error: Option<String>,
    input_tokens: usize,
    /// Per-model predictions, the band's members and the fallback order (absent for a
    /// passthrough or a router error).
    decision: Option<RouteDecision>,
    decision_ms: f64,
    /// Models the request could not go to, and why.
    excluded: Vec<Excluded>,
}
