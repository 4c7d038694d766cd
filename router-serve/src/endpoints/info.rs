//! `GET /v1/models`, `GET /health` (liveness) and `GET /ready` (readiness).

use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::http::error::ApiError;
use crate::routing::plan::model_ids;
use crate::state::AppState;
use crate::tenancy::admission;

/// `GET /v1/models`: the router's aliases and every configured model, OpenAI-shaped.
pub async fn models(state: &AppState, headers: &HeaderMap) -> Result<Value, ApiError> {
    let engine = state.engine();
    admission::admit_call(state.store.as_ref(), &engine, headers).await?;
    let data: Vec<Value> = model_ids(&engine)
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Ok(json!({"object": "list", "data": data}))
}

/// `GET /ready`: 200 once the encoder is loaded (it is, once the server listens) and the
/// store can admit requests; 503 otherwise, so a load balancer sends nothing here.
pub async fn ready(state: &AppState) -> Result<Value, ApiError> {
    let engine = state.engine();
    state
        .store
        .ready()
        .await
        .map_err(|e| ApiError::StoreUnavailable(format!("not ready: {e}")))?;
    Ok(json!({
        "status": "ready",
        "store": state.store.backend(),
        "router": engine.router.manifest.name,
    }))
}

/// `GET /health`.
pub fn health(state: &AppState) -> Value {
    let engine = state.engine();
    json!({
        "status": "ok",
        "router": engine.router.manifest.name,
        "router_created_at": engine.router.manifest.created_at,
        "routable_models": engine.routable.iter().filter(|r| **r).count(),
        "encoder": {
            "id": engine.router.manifest.encoder.id,
            "precision": engine.encoder.precision().to_string(),
            "int8_kernel": engine.encoder.int8_kernel().map(|k| k.as_str()),
            "device": format!("{:?}", engine.encoder.device()),
        },
        "upstreams_with_credentials": engine.config.upstreams.iter().filter(|u| u.has_credentials() && u.api_key_env.is_some()).count(),
    })
}
