//! `POST /v1/feedback`: a quality label for an answered request, appended to `feedback.jsonl`
//! (the retrain loop's input).

use axum::http::HeaderMap;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::error::ApiError;
use crate::observe::log::FeedbackRecord;
use crate::state::AppState;
use crate::tenancy::admission;
use crate::util::now_rfc3339;

/// `POST /v1/feedback` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackRequest {
    request_id: String,
    score: f64,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /v1/feedback`: a quality label for an answered request, appended to `feedback.jsonl`.
/// Only the key that made the request, or a key of the same team, may label it (to anyone
/// else the request is unknown); the score must lie in `log.feedback_scores`.
pub async fn feedback(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Value, ApiError> {
    let engine = state.engine();
    let caller = admission::admit_call(state.store.as_ref(), &engine, headers).await?;
    let req: FeedbackRequest = serde_json::from_slice(body).map_err(ApiError::InvalidJson)?;
    let [low, high] = engine.config.log.feedback_scores;
    if !(req.score.is_finite() && (low..=high).contains(&req.score)) {
        return Err(ApiError::invalid(
            format!(
                "`score` must be a number from {low} to {high} (log.feedback_scores), got {}",
                req.score
            ),
            Some("score"),
        ));
    }
    if !state.log.enabled() {
        return Err(ApiError::NotConfigured(
            "feedback is recorded in the log directory, and log.dir is not set".into(),
        ));
    }
    let answered = state
        .store
        .answered(&req.request_id)
        .await
        .filter(|a| a.may_be_labelled_by(&caller.key, &caller.team))
        .ok_or_else(|| ApiError::UnknownRequest(req.request_id.clone()))?;
    let trainable = answered.prompt.is_some();
    state.log.feedback(&FeedbackRecord {
        request_id: req.request_id.clone(),
        time: now_rfc3339(),
        prompt: answered.prompt,
        prompt_sha256: answered.prompt_sha256,
        model: answered.model.clone(),
        score: req.score,
        cost_usd: answered.cost_usd,
        input_tokens: answered.usage.map(|u| u.input_tokens),
        output_tokens: answered.usage.map(|u| u.output_tokens),
        propensity: answered.propensity,
        comment: req.comment,
    });
    Ok(json!({
        "request_id": req.request_id,
        "model": answered.model,
        "recorded": true,
        "trainable": trainable,
    }))
}
