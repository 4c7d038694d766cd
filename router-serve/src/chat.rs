//! `POST /v1/chat/completions`: admit (key, tier, rules, budgets, rate limit) → plan → reserve
//! the worst-case cost → forward → respond → settle the real cost (budgets, ledger) → record.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use tracing::Instrument;
use tracing::field::Empty;

use crate::access::{self, Admission};
use crate::budget::{Reservation, now_unix};
use crate::error::{ApiError, rate_headers};
use crate::ledger::SpendRow;
use crate::log::{DecisionRecord, Latency, Usage};
use crate::openai::{ChatRequest, parse_chat};
use crate::service::{
    Plan, base_record, cost_of, finish, ms_since, new_request_id, plan, rewrite_complete,
    router_headers,
};
use crate::state::{AppState, Engine};
use crate::stream::{StreamSpec, relay};
use crate::tenants::Identity;
use crate::upstream::{Forwarded, forward};

/// Characters per output token, to estimate the output of a stream the client left before its
/// usage arrived.
const CHARS_PER_TOKEN: f64 = 4.0;

/// Decrements the in-flight gauge when dropped.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(state: Arc<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let id = new_request_id();
    let span = tracing::info_span!(
        "chat",
        request_id = %id,
        gen_ai.operation.name = "chat",
        gen_ai.request.model = Empty,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        router.reason = Empty,
    );
    let in_flight = InFlight::new(&state.metrics.in_flight);
    let result = chat_inner(&state, &headers, &body, &id, started, in_flight)
        .instrument(span.clone())
        .await;
    match result {
        Ok(response) => response,
        Err(error) => {
            let status = error.status();
            tracing::info!(parent: &span, %error, "request refused");
            state
                .metrics
                .requests
                .with_label_values(&["chat", "", status.as_str(), "refused"])
                .inc();
            let mut record = DecisionRecord::new(&id, "chat.completions");
            record.status = match status {
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::TOO_MANY_REQUESTS => "limited",
                _ => "invalid_request",
            }
            .into();
            record.http_status = status.as_u16();
            record.latency.total_ms = ms_since(started);
            state.log.record(&record);
            let mut response = error.into_response();
            router_headers(
                response.headers_mut(),
                &id,
                None,
                None,
                "refused",
                ms_since(started),
            );
            response
        }
    }
}

/// Caps the request's output tokens at `cap` (writing the field the request used, else
/// `max_tokens`); returns the effective limit.
fn cap_max_tokens(req: &mut ChatRequest, cap: Option<u64>) -> Option<u64> {
    let Some(cap) = cap else {
        return req.max_tokens;
    };
    let effective = req.max_tokens.map_or(cap, |m| m.min(cap));
    let field = if req.body.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    req.body.insert(field.into(), Value::from(effective));
    req.max_tokens = Some(effective);
    Some(effective)
}

/// The dearest model the request may end up on: input tokens × input price + `output_tokens`
/// × output price, over every target with a price.
fn worst_case_usd(engine: &Engine, plan: &Plan, output_tokens: u64) -> f64 {
    plan.targets
        .iter()
        .filter_map(|t| engine.router.manifest.model(&t.model))
        .map(|m| m.cost_usd(plan.input_tokens as f64, output_tokens as f64))
        .fold(0.0, f64::max)
}

/// An upstream's JSON body, passed on with `status`.
fn json_response(status: StatusCode, body: Bytes) -> Response {
    let content_type = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    (status, content_type, body).into_response()
}

/// What settling a request needs to know.
struct Bill {
    identity: Identity,
    reservation: Reservation,
    rule: Option<String>,
    /// Expected cost of the counterfactual (the router's best model) for this request.
    counterfactual_usd: f64,
    input_tokens: usize,
}

/// Replaces the reservation by the real cost and, for an answered request, commits its ledger
/// row (before the response completes, so a settled request survives a crash).
async fn settle(state: &Arc<AppState>, engine: &Engine, bill: Bill, record: &DecisionRecord) {
    let cost = record.cost_usd.unwrap_or(0.0);
    state.money.budgets.settle(bill.reservation, cost);
    let (Some(ledger), Some(model)) = (state.money.ledger.clone(), record.model.clone()) else {
        return;
    };
    if record.usage.is_none() && cost == 0.0 {
        return;
    }
    let expected_usd = engine
        .router
        .manifest
        .model(&model)
        .map_or(cost, |m| m.expected_cost(bill.input_tokens));
    let usage = record.usage.unwrap_or_default();
    let row = SpendRow {
        request_id: record.request_id.clone(),
        time: now_unix(),
        key: bill.identity.key,
        team: bill.identity.team,
        user: bill.identity.user,
        tier: bill.identity.tier,
        requested_model: record.requested_model.clone(),
        model,
        reason: record.reason.clone(),
        rule: bill.rule,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_usd: cost,
        expected_usd,
        counterfactual_usd: bill.counterfactual_usd,
        status: record.status.clone(),
    };
    if let Err(e) = ledger.run(move |l| l.insert(&row)).await {
        tracing::error!(error = %e, "ledger write failed; this request's spend is only in memory");
    }
}

async fn chat_inner(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: &Bytes,
    id: &str,
    started: Instant,
    in_flight: InFlight,
) -> Result<Response, ApiError> {
    let engine = state.engine();
    let mut req = parse_chat(body, headers)?;
    let span = tracing::Span::current();
    span.record("gen_ai.request.model", req.model.as_str());

    // Admission: who, what their tier, rules and budgets allow, and their rate limit.
    let now = now_unix();
    let budgets = &engine.config.tenants.budgets;
    let Admission {
        identity,
        tags,
        policy,
    } = access::admit(&state.money, &engine, headers, &req, now)?;
    let max_tokens = cap_max_tokens(&mut req, policy.max_tokens);
    let output_worst = max_tokens.unwrap_or(engine.config.tenants.auth.default_max_tokens);
    let input_estimate = req.total_chars().div_ceil(4) as u64;
    let rate = state
        .money
        .limiter
        .admit(&identity, input_estimate + output_worst, Instant::now())
        .map_err(|info| ApiError::RateLimited {
            message: format!(
                "rate limit of key `{}` reached ({} requests, {} tokens per minute)",
                identity.key,
                identity.rpm.map_or("unlimited".into(), |r| r.to_string()),
                identity.tpm.map_or("unlimited".into(), |t| t.to_string()),
            ),
            info,
        })?;

    let plan = plan(&engine, &req, &policy).await?;
    state
        .metrics
        .decision_seconds
        .observe(plan.decision_ms / 1e3);
    let worst = worst_case_usd(&engine, &plan, output_worst);
    let reservation = state
        .money
        .budgets
        .reserve(budgets, &identity, worst, now)
        .map_err(|hit| {
            ApiError::InsufficientQuota(format!(
                "{}; this request could cost up to ${worst:.6}",
                hit.describe("hard limit")
            ))
        })?;
    let counterfactual_usd = engine
        .baseline_model()
        .map_or(0.0, |m| m.expected_cost(plan.input_tokens));
    let bill = Bill {
        identity: identity.clone(),
        reservation,
        rule: policy.rule.clone(),
        counterfactual_usd,
        input_tokens: plan.input_tokens,
    };
    let mut record = base_record(state, id, "chat.completions", &req, &plan);
    record.user = Some(identity.user.clone()).filter(|u| !u.is_empty());
    record.key = Some(identity.key.clone()).filter(|k| !k.is_empty());
    record.team = Some(identity.team.clone()).filter(|t| !t.is_empty());
    record.tier = Some(identity.tier.clone());
    record.rule = policy.rule.clone();
    record.tags = tags;
    record.latency.decision_ms = plan.decision_ms;
    let base_reason = policy
        .reason
        .filter(|_| plan.reason == "band")
        .unwrap_or(plan.reason);
    record.reason = base_reason.to_owned();

    let forward_started = Instant::now();
    let mut attempts = Vec::new();
    let forwarded = forward(
        &engine,
        &plan.targets,
        &req.body,
        req.stream,
        &mut attempts,
        &state.metrics,
    )
    .await;
    let upstream_ms = ms_since(forward_started);
    let pre_forward_ms = (forward_started - started).as_secs_f64() * 1e3;
    record.attempts = attempts;
    let reason_for = |target: usize| -> &'static str {
        if plan.reason == "router_error" {
            "router_error"
        } else if target > 0 {
            "fallback"
        } else {
            base_reason
        }
    };
    let count_fallback = |target: usize| {
        if target > 0
            && let Some(first) = plan.targets.first()
        {
            state
                .metrics
                .fallbacks
                .with_label_values(&[first.model.as_str()])
                .inc();
        }
    };
    let latency = |upstream_ms: f64| {
        let total = ms_since(started);
        Latency {
            decision_ms: plan.decision_ms,
            upstream_ms,
            total_ms: total,
            overhead_ms: (total - upstream_ms).max(0.0),
        }
    };
    let extra_headers = |h: &mut HeaderMap| {
        rate_headers(h, &rate);
        if let Some(rule) = &policy.rule
            && let Ok(v) = HeaderValue::from_str(rule)
        {
            h.insert("x-router-rule", v);
        }
    };
    match forwarded {
        Forwarded::Complete { target, body } => {
            let model = plan.targets[target].model.clone();
            let reason = reason_for(target);
            count_fallback(target);
            let (body, usage) = rewrite_complete(body, &model);
            record.model = Some(model.clone());
            record.reason = reason.to_owned();
            record.usage = usage;
            record.cost_usd = cost_of(&engine, &model, usage);
            record.status = "ok".into();
            record.http_status = 200;
            settle(state, &engine, bill, &record).await;
            record.latency = latency(upstream_ms);
            finish(state, &record, "chat");
            let mut response = json_response(StatusCode::OK, body);
            let h = response.headers_mut();
            router_headers(
                h,
                id,
                Some(&plan),
                Some(&model),
                reason,
                record.latency.overhead_ms,
            );
            extra_headers(h);
            Ok(response)
        }
        Forwarded::Stream {
            target,
            response,
            deadline,
        } => {
            let t = &plan.targets[target];
            let model = t.model.clone();
            let reason = reason_for(target);
            count_fallback(target);
            record.model = Some(model.clone());
            record.reason = reason.to_owned();
            let spec = StreamSpec {
                model: model.clone(),
                client_wants_usage: req.client_wants_usage,
                idle: Duration::from_millis(t.upstream.stream_idle_timeout_ms),
                deadline,
            };
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
            let task_state = state.clone();
            let task_engine = engine.clone();
            let input_tokens = plan.input_tokens as u64;
            let decision_ms = plan.decision_ms;
            state.tasks.spawn(
                async move {
                    let _in_flight = in_flight;
                    let end = relay(response, &tx, spec, forward_started).await;
                    // A client that left before the usage chunk is billed on what was relayed.
                    let usage = end.usage.or_else(|| {
                        (end.content_chars > 0).then(|| Usage {
                            input_tokens,
                            output_tokens: (end.content_chars as f64 / CHARS_PER_TOKEN).ceil()
                                as u64,
                        })
                    });
                    record.usage = usage;
                    record.cost_usd = cost_of(&task_engine, &model, usage);
                    record.status = end.status.to_owned();
                    record.http_status = 200;
                    settle(&task_state, &task_engine, bill, &record).await;
                    // `[DONE]` only once the request is settled.
                    if let Some(done) = end.done {
                        let _ = tx.send(done).await;
                    }
                    let total = ms_since(started);
                    record.latency = Latency {
                        decision_ms,
                        upstream_ms: end.upstream_ms,
                        total_ms: total,
                        overhead_ms: (total - end.upstream_ms).max(0.0),
                    };
                    if let Some(error) = &end.error {
                        tracing::warn!(%error, status = end.status, "stream ended early");
                    }
                    finish(&task_state, &record, "chat");
                }
                .instrument(tracing::Span::current()),
            );
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
            });
            let mut response = Response::new(Body::from_stream(stream));
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            router_headers(
                h,
                id,
                Some(&plan),
                Some(&plan.targets[target].model),
                reason,
                pre_forward_ms,
            );
            extra_headers(h);
            Ok(response)
        }
        Forwarded::Rejected {
            target,
            status,
            body,
        } => {
            let model = plan.targets[target].model.clone();
            record.model = Some(model.clone());
            record.status = "upstream_rejected".into();
            record.http_status = status.as_u16();
            settle(state, &engine, bill, &record).await;
            record.latency = latency(upstream_ms);
            finish(state, &record, "chat");
            let mut response = json_response(status, body);
            let h = response.headers_mut();
            router_headers(
                h,
                id,
                Some(&plan),
                Some(&model),
                reason_for(target),
                record.latency.overhead_ms,
            );
            extra_headers(h);
            Ok(response)
        }
        Forwarded::Failed(error) => {
            record.status = "upstream_error".into();
            record.http_status = error.status().as_u16();
            settle(state, &engine, bill, &record).await;
            record.latency = latency(upstream_ms);
            finish(state, &record, "chat");
            let mut response = error.into_response();
            let h = response.headers_mut();
            router_headers(
                h,
                id,
                Some(&plan),
                None,
                plan.reason,
                record.latency.overhead_ms,
            );
            extra_headers(h);
            Ok(response)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_tokens_are_capped_in_the_field_the_request_used() {
        let mut req = parse_chat(
            br#"{"model":"router","max_completion_tokens":900,"messages":[{"role":"user","content":"x"}]}"#,
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(cap_max_tokens(&mut req, Some(100)), Some(100));
        assert_eq!(req.body["max_completion_tokens"], 100);
        assert!(!req.body.contains_key("max_tokens"));
        let mut req = parse_chat(
            br#"{"model":"router","messages":[{"role":"user","content":"x"}]}"#,
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(cap_max_tokens(&mut req, None), None);
        assert_eq!(cap_max_tokens(&mut req, Some(50)), Some(50));
        assert_eq!(req.body["max_tokens"], 50);
    }
}
