//! Recording a finished request: metrics, the trace span's fields and the decision log line.

use crate::api::chat::ChatRequest;
use crate::observe::log::{DecisionRecord, LoggedCandidate};
use crate::routing::plan::Plan;
use crate::state::AppState;
use crate::util::sha256_hex;

/// The decision record's fields known once the plan is made.
pub fn base_record(
    state: &AppState,
    id: &str,
    endpoint: &'static str,
    req: &ChatRequest,
    plan: &Plan,
) -> DecisionRecord {
    let decision = plan.decision.as_ref();
    DecisionRecord {
        requested_model: req.model.clone(),
        mode: plan.mode.clone(),
        band: plan.band,
        reason: plan.reason.to_owned(),
        user: req.user.clone(),
        metadata: req.metadata.clone(),
        prompt: state.log.log_prompts().then(|| plan.embed_text.clone()),
        prompt_sha256: sha256_hex(&plan.embed_text),
        input_tokens_estimate: plan.input_tokens,
        candidates: decision
            .map(|d| {
                d.candidates
                    .iter()
                    .map(|c| LoggedCandidate {
                        model: c.model.clone(),
                        predicted_quality: c.predicted_quality,
                        expected_cost_usd: c.expected_cost_usd,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        best_predicted: decision.map(|d| d.best_predicted.clone()),
        in_band: decision.map(|d| d.in_band.clone()).unwrap_or_default(),
        excluded: plan.excluded.clone(),
        chosen: plan.targets.first().map(|t| t.model.clone()),
        propensity: decision.map(|d| d.propensity),
        stream: req.stream,
        best_expected_cost_usd: decision.map(|d| d.candidates[d.best_index].expected_cost_usd),
        ..DecisionRecord::new(id, endpoint)
    }
}

/// Metrics, the trace span and the decision log for a finished request.
pub fn finish(state: &AppState, record: &DecisionRecord, endpoint: &str) {
    let model = record.model.as_deref().unwrap_or("");
    let m = &state.metrics;
    m.requests
        .with_label_values(&[
            endpoint,
            model,
            record.status.as_str(),
            record.reason.as_str(),
        ])
        .inc();
    m.overhead_seconds
        .observe(record.latency.overhead_ms.max(0.0) / 1e3);
    if let Some(u) = record.usage {
        m.tokens
            .with_label_values(&[model, "input"])
            .inc_by(u.input_tokens);
        m.tokens
            .with_label_values(&[model, "output"])
            .inc_by(u.output_tokens);
    }
    if let Some(cost) = record.cost_usd {
        m.cost_microusd
            .with_label_values(&[model])
            .inc_by((cost * 1e6).round() as u64);
    }
    let span = tracing::Span::current();
    span.record("gen_ai.response.model", model);
    span.record("router.reason", record.reason.as_str());
    if let Some(u) = record.usage {
        span.record("gen_ai.usage.input_tokens", u.input_tokens);
        span.record("gen_ai.usage.output_tokens", u.output_tokens);
    }
    tracing::info!(status = %record.status, total_ms = record.latency.total_ms, "request done");
    state.log.record(record);
}
