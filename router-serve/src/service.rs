//! The logic behind the handlers: planning a request (route or pass through), the decision
//! endpoint, feedback, models and health, and the helpers the chat flow ([`crate::chat`])
//! shares. Handlers only extract the body and call these functions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use router_core::artifact::Router;
use router_core::encoder::Encoder;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::access::{self, Policy};
use crate::budget::now_unix;
use crate::cache::{self, Cached};
use crate::error::ApiError;
use crate::log::{
    DecisionRecord, FeedbackRecord, Latency, LoggedCandidate, Usage, now_rfc3339, sha256_hex,
};
use crate::openai::{ChatRequest, parse_chat};
use crate::route::{RouteDecision, explain};
use crate::state::{AppState, Engine};
use crate::upstream::{Target, usage_of};

/// Characters per token for text the tokenizer did not see (the usual English estimate).
const CHARS_PER_TOKEN: usize = 4;

/// Prompts up to this size are tokenised on the request's task; longer ones on the blocking
/// pool.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

/// What the router will do with a request.
pub struct Plan {
    pub mode: Option<String>,
    pub band: Option<f64>,
    /// `band`, `explore`, `passthrough` or `router_error`.
    pub reason: &'static str,
    pub decision: Option<RouteDecision>,
    pub targets: Vec<Target>,
    pub input_tokens: usize,
    pub embed_text: String,
    pub decision_ms: f64,
    pub router_error: Option<String>,
}

/// A new request id (`req_` and 32 hex digits).
pub fn new_request_id() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
}

/// Decides, without forwarding, how `req` will be served.
pub async fn plan(engine: &Engine, req: &ChatRequest, policy: &Policy) -> Result<Plan, ApiError> {
    let config = &engine.config;
    let routing = &config.routing;
    if !req.overrides.is_empty() && !routing.allow_request_overrides {
        return Err(ApiError::invalid(
            "per-request routing controls are disabled on this server (routing.allow_request_overrides)",
            Some("router"),
        ));
    }
    // A budget's soft mode beats the request, which beats the rule or tier, which beat the
    // alias's own mode.
    let alias_mode = if req.model == "router" {
        Some(
            policy
                .mode
                .clone()
                .unwrap_or_else(|| routing.default_mode.clone()),
        )
    } else {
        req.model.strip_prefix("router-").map(str::to_owned)
    };
    let mode = alias_mode.map(|alias| {
        policy
            .forced_mode
            .clone()
            .or_else(|| req.overrides.mode.clone())
            .unwrap_or(alias)
    });
    let text = req.embed_text(routing.embed_text);
    let other_chars = req.total_chars().saturating_sub(text.chars().count());
    let Some(mode) = mode else {
        // An explicit model passes straight through.
        let (upstream, upstream_model) = config
            .upstream_for(&req.model)
            .ok_or_else(|| unknown_model(engine, &req.model))?;
        if let Some(models) = &policy.models
            && !models.contains(&req.model)
        {
            return Err(ApiError::Forbidden(format!(
                "`{}` is not among the models this key may use ({})",
                req.model,
                models.join(", ")
            )));
        }
        let input_tokens = req.total_chars().div_ceil(CHARS_PER_TOKEN);
        check_length(engine, input_tokens)?;
        return Ok(Plan {
            mode: None,
            band: None,
            reason: "passthrough",
            decision: None,
            targets: vec![Target {
                model: req.model.clone(),
                upstream: upstream.clone(),
                upstream_model,
            }],
            input_tokens,
            embed_text: text,
            decision_ms: 0.0,
            router_error: None,
        });
    };
    let Some(mode_band) = config.mode_band(&mode) else {
        return Err(if req.overrides.mode.as_deref() == Some(mode.as_str()) {
            ApiError::invalid(
                format!(
                    "mode `{mode}` is not configured (modes: {})",
                    mode_names(engine)
                ),
                Some("router"),
            )
        } else {
            unknown_model(engine, &req.model)
        });
    };
    let band = match req.overrides.band {
        _ if policy.forced_mode.is_some() => mode_band,
        Some(b) if !(0.0..=routing.max_request_band).contains(&b) => {
            return Err(ApiError::invalid(
                format!(
                    "band {b} is outside 0–{} (routing.max_request_band)",
                    routing.max_request_band
                ),
                Some("router"),
            ));
        }
        Some(b) => b,
        None => policy.band.unwrap_or(mode_band),
    };
    let mut allowed = allowed_mask(engine, req.overrides.models.as_deref())?;
    if let Some(models) = &policy.models {
        for (mask, name) in allowed.iter_mut().zip(engine.router.model_names()) {
            *mask = *mask && models.iter().any(|m| m == name);
        }
        if !allowed.iter().any(|&a| a) {
            return Err(ApiError::Forbidden(format!(
                "none of the models this key may use ({}) can be routed to",
                models.join(", ")
            )));
        }
    }

    let start = Instant::now();
    let deadline = Duration::from_millis(config.server.decision_timeout_ms);
    let cache_key = cache::key(&text);
    let cached = engine.cache.get(&cache_key);
    engine
        .metrics
        .decision_cache
        .with_label_values(&[if cached.is_some() { "hit" } else { "miss" }])
        .inc();
    let extra_tokens = other_chars.div_ceil(CHARS_PER_TOKEN);
    // The length is checked before anything is embedded (and on a cache hit too: the rest of
    // the conversation may differ).
    let (quality, embedded_tokens) = match cached {
        Some(hit) => {
            check_length(engine, hit.tokens + extra_tokens)?;
            (Ok(hit.quality.clone()), hit.tokens)
        }
        None => {
            let read = |encoder: &Encoder, router: &Router, text: &str| {
                encoder
                    .tokenize(text)
                    .map(|tokens| (tokens, router.lexical_features(text)))
            };
            let tokenized = if text.len() <= INLINE_TOKENIZE_BYTES {
                read(&engine.encoder, &engine.router, &text)
            } else {
                // Long texts take milliseconds: keep them off the async workers.
                let (encoder, router, owned) =
                    (engine.encoder.clone(), engine.router.clone(), text.clone());
                tokio::task::spawn_blocking(move || read(&encoder, &router, &owned))
                    .await
                    .map_err(|e| ApiError::Router(format!("tokenising task failed: {e}")))?
            };
            let (tokens, lexical) = tokenized.map_err(|e| {
                ApiError::invalid(format!("cannot tokenise the prompt: {e}"), Some("messages"))
            })?;
            let n = tokens.untruncated_len;
            check_length(engine, n + extra_tokens)?;
            let quality =
                match tokio::time::timeout(deadline, engine.predict(tokens, lexical)).await {
                    Ok(Ok(quality)) => {
                        engine.cache.insert(
                            cache_key,
                            Cached {
                                quality: quality.clone(),
                                tokens: n,
                            },
                        );
                        Ok(quality)
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(format!(
                        "no decision within server.decision_timeout_ms = {} ms",
                        deadline.as_millis()
                    )),
                };
            (quality, n)
        }
    };
    let input_tokens = embedded_tokens + extra_tokens;
    let predicted = quality.and_then(|q| {
        explain(
            &engine.router,
            &q,
            input_tokens,
            band,
            routing.policy,
            &allowed,
        )
        .map_err(|e| e.to_string())
    });
    let decision_ms = start.elapsed().as_secs_f64() * 1e3;
    match predicted {
        Ok(mut decision) => {
            decision.decision_ms = decision_ms;
            engine.explorer.apply(&mut decision);
            let targets = std::iter::once(&decision.chosen)
                .chain(&decision.fallback_order)
                .filter_map(|m| target(engine, m))
                .collect();
            Ok(Plan {
                mode: Some(mode),
                band: Some(band),
                reason: decision.reason,
                decision: Some(decision),
                targets,
                input_tokens,
                embed_text: text,
                decision_ms,
                router_error: None,
            })
        }
        Err(error) => {
            tracing::warn!(%error, fail_open_model = %engine.fail_open_model, "routing failed; failing open");
            Ok(Plan {
                mode: Some(mode),
                band: Some(band),
                reason: "router_error",
                decision: None,
                targets: fail_open_targets(engine, &allowed),
                input_tokens,
                embed_text: text,
                decision_ms,
                router_error: Some(error),
            })
        }
    }
}

fn check_length(engine: &Engine, tokens: usize) -> Result<(), ApiError> {
    let limit = engine.config.server.max_input_tokens;
    if tokens > limit {
        return Err(ApiError::ContextLength { tokens, limit });
    }
    Ok(())
}

fn mode_names(engine: &Engine) -> String {
    engine
        .config
        .routing
        .modes
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_model(engine: &Engine, model: &str) -> ApiError {
    ApiError::UnknownModel {
        model: model.to_owned(),
        available: model_ids(engine)
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Every model id a client may send, with its owner (`router` or the upstream's name).
pub fn model_ids(engine: &Engine) -> Vec<(String, String)> {
    let mut ids = vec![("router".to_owned(), "router".to_owned())];
    ids.extend(
        engine
            .config
            .routing
            .modes
            .keys()
            .map(|m| (format!("router-{m}"), "router".to_owned())),
    );
    for u in &engine.config.upstreams {
        ids.extend(u.model_map().into_keys().map(|m| (m, u.name.clone())));
    }
    ids
}

/// The routable models, narrowed to the request's subset when it names one.
fn allowed_mask(engine: &Engine, subset: Option<&[String]>) -> Result<Vec<bool>, ApiError> {
    let Some(subset) = subset else {
        return Ok(engine.routable.clone());
    };
    let names = engine.router.model_names();
    if let Some(unknown) = subset.iter().find(|m| !names.contains(&m.as_str())) {
        return Err(ApiError::invalid(
            format!(
                "`{unknown}` in the requested model subset is not a model of this router ({})",
                names.join(", ")
            ),
            Some("router"),
        ));
    }
    let mask: Vec<bool> = names
        .iter()
        .zip(&engine.routable)
        .map(|(n, &r)| r && subset.iter().any(|m| m == n))
        .collect();
    if !mask.iter().any(|&m| m) {
        return Err(ApiError::invalid(
            "none of the requested models can be routed to (no upstream, or dominated)",
            Some("router"),
        ));
    }
    Ok(mask)
}

fn target(engine: &Engine, model: &str) -> Option<Target> {
    engine
        .config
        .upstream_for(model)
        .map(|(u, upstream_model)| Target {
            model: model.to_owned(),
            upstream: u.clone(),
            upstream_model,
        })
}

/// The fail-open model first, then the other allowed models by mean training score.
fn fail_open_targets(engine: &Engine, allowed: &[bool]) -> Vec<Target> {
    let models = &engine.router.manifest.models;
    let mut rest: Vec<usize> = (0..models.len())
        .filter(|&i| allowed[i] && models[i].name != engine.fail_open_model)
        .collect();
    rest.sort_by(|&a, &b| {
        models[b]
            .train_mean_score
            .total_cmp(&models[a].train_mean_score)
    });
    std::iter::once(engine.fail_open_model.as_str())
        .chain(rest.iter().map(|&i| models[i].name.as_str()))
        .filter_map(|m| target(engine, m))
        .collect()
}

/// Cost in USD of `usage` on artifact model `model` (None for models the router has no price for).
pub(crate) fn cost_of(engine: &Engine, model: &str, usage: Option<Usage>) -> Option<f64> {
    let usage = usage?;
    let info = engine.router.manifest.model(model)?;
    Some(info.cost_usd(usage.input_tokens as f64, usage.output_tokens as f64))
}

/// The decision record's fields known once the plan is made.
pub(crate) fn base_record(
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
        chosen: plan.targets.first().map(|t| t.model.clone()),
        propensity: decision.map(|d| d.propensity),
        stream: req.stream,
        best_expected_cost_usd: decision.map(|d| d.candidates[d.best_index].expected_cost_usd),
        ..DecisionRecord::new(id, endpoint)
    }
}

/// `x-router-*` headers.
pub(crate) fn router_headers(
    headers: &mut HeaderMap,
    id: &str,
    plan: Option<&Plan>,
    answered: Option<&str>,
    reason: &str,
    overhead_ms: f64,
) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set("x-router-request-id", id.to_owned());
    set("x-router-reason", reason.to_owned());
    set("x-router-overhead-ms", format!("{overhead_ms:.3}"));
    if let Some(model) = answered {
        set("x-router-model", model.to_owned());
    }
    if let Some(plan) = plan {
        if let Some(band) = plan.band {
            set("x-router-band", band.to_string());
        }
        if let Some(mode) = &plan.mode {
            set("x-router-mode", mode.clone());
        }
        if let Some(d) = &plan.decision {
            set("x-router-policy", d.policy.to_string());
        }
        let quality = plan.decision.as_ref().and_then(|d| {
            let model = answered?;
            d.candidates.iter().find(|c| c.model == model)
        });
        if let Some(c) = quality {
            set(
                "x-router-predicted-quality",
                format!("{:.4}", c.predicted_quality),
            );
        }
    }
}

pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Metrics, the trace span and the decision log for a finished request.
pub(crate) fn finish(state: &AppState, record: &DecisionRecord, endpoint: &str) {
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

/// The upstream's JSON with `model` set to the router's name, and its usage.
pub(crate) fn rewrite_complete(body: Bytes, model: &str) -> (Bytes, Option<Usage>) {
    match serde_json::from_slice::<Value>(&body) {
        Ok(mut value) => {
            let usage = usage_of(&value);
            if let Value::Object(o) = &mut value {
                o.insert("model".into(), Value::String(model.to_owned()));
            }
            match serde_json::to_vec(&value) {
                Ok(bytes) => (Bytes::from(bytes), usage),
                Err(_) => (body, usage),
            }
        }
        Err(_) => (body, None),
    }
}

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
    let admission = access::admit(&state.money, &engine, &headers, &req, now_unix())?;
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
}

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
pub fn feedback(state: &AppState, body: &Bytes) -> Result<Value, ApiError> {
    let req: FeedbackRequest = serde_json::from_slice(body).map_err(ApiError::InvalidJson)?;
    if !req.score.is_finite() {
        return Err(ApiError::invalid(
            "`score` must be a finite number",
            Some("score"),
        ));
    }
    if !state.log.enabled() {
        return Err(ApiError::NotConfigured(
            "feedback is recorded in the log directory, and log.dir is not set".into(),
        ));
    }
    let answered = state
        .log
        .answered(&req.request_id)
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

/// `GET /v1/models`: the router's aliases and every configured model, OpenAI-shaped.
pub fn models(state: &AppState, headers: &HeaderMap) -> Result<Value, ApiError> {
    let engine = state.engine();
    access::identify(&state.money, &engine, headers, None)?;
    let data: Vec<Value> = model_ids(&engine)
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Ok(json!({"object": "list", "data": data}))
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
