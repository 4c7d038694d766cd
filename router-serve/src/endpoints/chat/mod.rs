//! `POST /v1/chat/completions`, top to bottom: admit (key, tier, rules, budgets, rate limit) →
//! plan (route or pass through) → reserve the worst-case cost → forward → respond → settle the
//! real cost (budgets, ledger) → record. Responding, settling and recording live in
//! [`respond`] and [`settle`]; nothing here calls back into the handler.
//!
//! The pipeline runs on a task of its own: a client that gives up does not cancel a request the
//! upstream is already answering, so that request is still settled at its real cost, written to
//! the ledger and logged (`client_disconnected`).

mod respond;
mod settle;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use tracing::Instrument;
use tracing::field::Empty;

use crate::api::chat::{ChatRequest, parse_chat};
use crate::api::headers::router_headers;
use crate::http::error::ApiError;
use crate::observe::log::DecisionRecord;
use crate::observe::record::base_record;
use crate::routing::plan::{Plan, plan};
use crate::state::{AppState, Engine};
use crate::tenancy::admission::{self, Admission, Policy};
use crate::tenancy::rate_limit::RateInfo;
use crate::upstream::forward::{Outgoing, forward};
use crate::util::{ms_since, new_request_id, now_unix};

use self::respond::Exchange;
use self::settle::reserve;

/// Decrements the in-flight gauge when dropped.
pub(crate) struct InFlight(prometheus::IntGauge);

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

/// Whether the client stopped waiting for its answer.
#[derive(Clone, Default)]
pub(crate) struct ClientGone(Arc<AtomicBool>);

impl ClientGone {
    pub fn gone(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Held by the handler while it waits: dropped (answer delivered, or the client gone and the
/// handler cancelled), it marks the client gone.
struct Waiting(ClientGone);

impl Drop for Waiting {
    fn drop(&mut self) {
        (self.0).0.store(true, Ordering::Relaxed);
    }
}

/// `POST /v1/chat/completions`: the pipeline on its own task, the handler waiting for its
/// response.
pub async fn chat_completions(state: Arc<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let client = ClientGone::default();
    let waiting = Waiting(client.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task_state = state.clone();
    state.tasks.spawn(async move {
        let response = run(task_state, headers, body, client).await;
        let _ = tx.send(response);
    });
    let response = rx.await.unwrap_or_else(|_| {
        ApiError::Router("the request's task failed; see the server log".into()).into_response()
    });
    drop(waiting);
    response
}

/// One request, from its span to its response.
async fn run(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Bytes,
    client: ClientGone,
) -> Response {
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
    let result = serve(&state, &headers, &body, &id, started, client, in_flight)
        .instrument(span.clone())
        .await;
    result.unwrap_or_else(|error| {
        let _entered = span.enter();
        refused(&state, error, &id, started)
    })
}

/// The pipeline.
async fn serve(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: &Bytes,
    id: &str,
    started: Instant,
    client: ClientGone,
    in_flight: InFlight,
) -> Result<Response, ApiError> {
    let engine = state.engine();
    let mut req = parse_chat(body, headers)?;
    tracing::Span::current().record("gen_ai.request.model", req.model.as_str());
    let admitted = admit(state, &engine, headers, &mut req).await?;
    let plan = plan(&engine, &req, &admitted.admission.policy).await?;
    state
        .metrics
        .decision_seconds
        .observe(plan.decision_ms / 1e3);
    let sheddable = req.sheddable || admitted.admission.policy.sheddable;
    shed_if_saturated(state, &plan, sheddable)?;
    let record = decision_record(state, id, &req, &plan, &admitted);
    let mut bill = reserve(state, &engine, &admitted, &plan, &record).await?;
    bill.forwarded();

    let forward_started = Instant::now();
    let mut attempts = Vec::new();
    let out = Outgoing {
        body: &req.body,
        stream: req.stream,
        sheddable,
    };
    let forwarded = forward(&plan.targets, &out, &mut attempts, &state.metrics).await;
    let exchange = Exchange {
        state: state.clone(),
        id: id.to_owned(),
        started,
        forward_started,
        base_reason: routed_reason(&plan, &admitted.admission.policy),
        plan,
        rate: admitted.rate,
        rule: admitted.admission.policy.rule,
        client_wants_usage: req.client_wants_usage,
        client,
        record: DecisionRecord { attempts, ..record },
        bill: Some(bill),
    };
    Ok(exchange.respond(forwarded, in_flight).await)
}

/// A sheddable request is refused (503, before any money is reserved) when every endpoint of
/// every model it may go to is saturated or ejected.
fn shed_if_saturated(state: &AppState, plan: &Plan, sheddable: bool) -> Result<(), ApiError> {
    let now = Instant::now();
    if sheddable && plan.targets.iter().all(|t| t.pool.saturated(now)) {
        state.metrics.endpoints.shed.inc();
        return Err(ApiError::overloaded(
            plan.targets.iter().map(|t| t.model.as_str()),
        ));
    }
    Ok(())
}

/// A request that passed admission: who, what they may do, their rate-limit state, the
/// output tokens its worst case is reserved for (`n` × the output limit) and the tokens its
/// rate limit counted (corrected with the real usage at settlement).
pub(super) struct Admitted {
    pub admission: Admission,
    pub rate: RateInfo,
    pub output_worst: u64,
    /// `n`: the choices `output_worst` covers.
    pub choices: u64,
    pub rate_tokens: u64,
}

/// Identifies the caller, applies its policy (capping `max_tokens`) and its rate limit.
async fn admit(
    state: &AppState,
    engine: &Engine,
    headers: &HeaderMap,
    req: &mut ChatRequest,
) -> Result<Admitted, ApiError> {
    let store = state.store.as_ref();
    let admission = admission::admit(store, engine, headers, req, now_unix()).await?;
    let max_tokens = cap_max_tokens(req, admission.policy.max_tokens);
    // Every one of the `n` choices may run to the output limit.
    let output_worst = max_tokens
        .unwrap_or(engine.config.tenants.auth.default_max_tokens)
        .saturating_mul(req.choices);
    let input_estimate = req.total_chars().div_ceil(4) as u64;
    let tokens = input_estimate.saturating_add(output_worst);
    let rate = admission::rate_limit(store, &admission.identity, tokens).await?;
    Ok(Admitted {
        admission,
        rate,
        output_worst,
        choices: req.choices,
        rate_tokens: tokens,
    })
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

/// The decision record as far as the plan and the caller fill it.
fn decision_record(
    state: &AppState,
    id: &str,
    req: &ChatRequest,
    plan: &Plan,
    admitted: &Admitted,
) -> DecisionRecord {
    let Admission {
        identity,
        tags,
        policy,
    } = &admitted.admission;
    let mut record = base_record(state, id, "chat.completions", req, plan);
    record.user = Some(identity.user.clone()).filter(|u| !u.is_empty());
    record.key = Some(identity.key.clone()).filter(|k| !k.is_empty());
    record.team = Some(identity.team.clone()).filter(|t| !t.is_empty());
    record.tier = Some(identity.tier.clone());
    record.rule = policy.rule.clone();
    record.tags = tags.clone();
    record.latency.decision_ms = plan.decision_ms;
    record.reason = routed_reason(plan, policy).to_owned();
    record
}

/// The plan's reason, unless a budget's soft threshold changed a routed decision.
fn routed_reason(plan: &Plan, policy: &Policy) -> &'static str {
    policy
        .reason
        .filter(|_| plan.reason == "band")
        .unwrap_or(plan.reason)
}

/// The answer to a request refused before anything was forwarded, logged as such.
fn refused(state: &AppState, error: ApiError, id: &str, started: Instant) -> Response {
    let status = error.status();
    tracing::info!(%error, "request refused");
    state
        .metrics
        .requests
        .with_label_values(&["chat", "", status.as_str(), "refused"])
        .inc();
    let mut record = DecisionRecord::new(id, "chat.completions");
    record.status = match (&error, status) {
        (ApiError::Overloaded(_), _) => "shed",
        (ApiError::StoreUnavailable(_), _) => "store_unavailable",
        (_, StatusCode::UNAUTHORIZED) => "unauthorized",
        (_, StatusCode::TOO_MANY_REQUESTS) => "limited",
        _ => "invalid_request",
    }
    .into();
    record.http_status = status.as_u16();
    record.latency.total_ms = ms_since(started);
    state.log.record(&record);
    let mut response = error.into_response();
    router_headers(
        response.headers_mut(),
        id,
        None,
        None,
        "refused",
        ms_since(started),
    );
    response
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
