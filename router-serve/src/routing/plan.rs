//! What the router will do with a request: pass it straight through to the model it names, or
//! route it (embed → predict → apply the band, in [`crate::routing::decision`]) and list the
//! models to try in order. Nothing is forwarded here.

use std::time::{Duration, Instant};

use router_core::artifact::Router;
use router_core::encoder::Encoder;

use crate::api::chat::ChatRequest;
use crate::http::error::ApiError;
use crate::routing::cache::{self, Cached};
use crate::routing::decision::{RouteDecision, explain};
use crate::routing::eligibility::{Excluded, describe, unable};
use crate::state::Engine;
use crate::tenancy::admission::Policy;
use crate::upstream::forward::Target;

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
    /// Models the request cannot go to (capabilities, context window), with the reason.
    pub excluded: Vec<Excluded>,
}

/// Decides, without forwarding, how `req` will be served.
pub async fn plan(engine: &Engine, req: &ChatRequest, policy: &Policy) -> Result<Plan, ApiError> {
    if !req.overrides.is_empty() && !engine.config.routing.allow_request_overrides {
        return Err(ApiError::invalid(
            "per-request routing controls are disabled on this server (routing.allow_request_overrides)",
            Some("router"),
        ));
    }
    let text = req.embed_text(engine.config.routing.embed_text);
    let Some(mode) = requested_mode(engine, req, policy) else {
        return passthrough(engine, req, policy, text);
    };
    let band = band_of(engine, req, policy, &mode)?;
    let mut allowed = allowed_models(engine, req, policy)?;
    let mut excluded = Vec::new();
    exclude_unable(engine, req, None, &mut allowed, &mut excluded)?;
    let start = Instant::now();
    let (quality, input_tokens) = predict_quality(engine, req, &text).await?;
    let tokens = input_tokens as u64 + req.max_tokens.unwrap_or(0);
    exclude_unable(engine, req, Some(tokens), &mut allowed, &mut excluded)?;
    let routing = &engine.config.routing;
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
    let mut plan = Plan {
        mode: Some(mode),
        band: Some(band),
        reason: "router_error",
        decision: None,
        targets: Vec::new(),
        input_tokens,
        embed_text: text,
        decision_ms,
        router_error: None,
        excluded,
    };
    match predicted {
        Ok(mut decision) => {
            decision.decision_ms = decision_ms;
            engine.explorer.apply(&mut decision);
            plan.targets = std::iter::once(&decision.chosen)
                .chain(&decision.fallback_order)
                .filter_map(|m| target(engine, m))
                .collect();
            plan.reason = decision.reason;
            plan.decision = Some(decision);
        }
        Err(error) => {
            tracing::warn!(%error, fail_open_model = %engine.fail_open_model, "routing failed; failing open");
            plan.targets = fail_open_targets(engine, &allowed);
            plan.router_error = Some(error);
        }
    }
    Ok(plan)
}

/// The routing mode of a request to a router alias (`None`: an explicit model). A budget's soft
/// mode beats the request, which beats the rule or tier, which beat the alias's own mode.
fn requested_mode(engine: &Engine, req: &ChatRequest, policy: &Policy) -> Option<String> {
    let alias_mode = if req.model == "router" {
        Some(
            policy
                .mode
                .clone()
                .unwrap_or_else(|| engine.config.routing.default_mode.clone()),
        )
    } else {
        req.model.strip_prefix("router-").map(str::to_owned)
    };
    alias_mode.map(|alias| {
        policy
            .forced_mode
            .clone()
            .or_else(|| req.overrides.mode.clone())
            .unwrap_or(alias)
    })
}

/// An explicit model passes straight through to its upstream.
fn passthrough(
    engine: &Engine,
    req: &ChatRequest,
    policy: &Policy,
    text: String,
) -> Result<Plan, ApiError> {
    let target = target(engine, &req.model).ok_or_else(|| unknown_model(engine, &req.model))?;
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
    let tokens = input_tokens as u64 + req.max_tokens.unwrap_or(0);
    if let Some(why) = unable(
        engine.config.models.get(&req.model),
        req.needs,
        Some(tokens),
    ) {
        return Err(ApiError::invalid(
            format!("`{}` cannot serve this request: {why}", req.model),
            Some("model"),
        ));
    }
    Ok(Plan {
        mode: None,
        band: None,
        reason: "passthrough",
        decision: None,
        targets: vec![target],
        input_tokens,
        embed_text: text,
        decision_ms: 0.0,
        router_error: None,
        excluded: Vec::new(),
    })
}

/// Takes out of `allowed` the models that cannot serve `req` (with `tokens` input and output
/// tokens, once known), noting each in `excluded`; a 400 naming every reason when none is
/// left.
fn exclude_unable(
    engine: &Engine,
    req: &ChatRequest,
    tokens: Option<u64>,
    allowed: &mut [bool],
    excluded: &mut Vec<Excluded>,
) -> Result<(), ApiError> {
    for (mask, model) in allowed.iter_mut().zip(engine.router.model_names()) {
        if !*mask {
            continue;
        }
        if let Some(reason) = unable(engine.config.models.get(model), req.needs, tokens) {
            *mask = false;
            excluded.push(Excluded {
                model: model.to_owned(),
                reason,
            });
        }
    }
    if allowed.iter().any(|&a| a) {
        return Ok(());
    }
    Err(ApiError::invalid(
        format!("no model can serve this request: {}", describe(excluded)),
        Some("messages"),
    ))
}

/// The band of `mode`, unless the request sets its own (within `routing.max_request_band`) and
/// no budget forces the mode.
fn band_of(
    engine: &Engine,
    req: &ChatRequest,
    policy: &Policy,
    mode: &str,
) -> Result<f64, ApiError> {
    let routing = &engine.config.routing;
    let Some(mode_band) = engine.config.mode_band(mode) else {
        return Err(if req.overrides.mode.as_deref() == Some(mode) {
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
    match req.overrides.band {
        _ if policy.forced_mode.is_some() => Ok(mode_band),
        Some(b) if !(0.0..=routing.max_request_band).contains(&b) => Err(ApiError::invalid(
            format!(
                "band {b} is outside 0–{} (routing.max_request_band)",
                routing.max_request_band
            ),
            Some("router"),
        )),
        Some(b) => Ok(b),
        None => Ok(policy.band.unwrap_or(mode_band)),
    }
}

/// The models the decision may choose: routable, in the request's subset, allowed by the key.
fn allowed_models(
    engine: &Engine,
    req: &ChatRequest,
    policy: &Policy,
) -> Result<Vec<bool>, ApiError> {
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
    Ok(allowed)
}

/// Every model's predicted quality for `text` (from the decision cache, else embedded on the
/// encoder thread within `server.decision_timeout_ms`; a failure is the `Err` inside, to fail
/// open on) and the conversation's input tokens. The length is checked before anything is
/// embedded, and on a cache hit too: the rest of the conversation may differ.
async fn predict_quality(
    engine: &Engine,
    req: &ChatRequest,
    text: &str,
) -> Result<(Result<Vec<f32>, String>, usize), ApiError> {
    let other_chars = req.total_chars().saturating_sub(text.chars().count());
    let extra_tokens = other_chars.div_ceil(CHARS_PER_TOKEN);
    let cache_key = cache::key(text);
    let cached = engine.cache.get(&cache_key);
    engine
        .metrics
        .decision_cache
        .with_label_values(&[if cached.is_some() { "hit" } else { "miss" }])
        .inc();
    if let Some(hit) = cached {
        check_length(engine, hit.tokens + extra_tokens)?;
        return Ok((Ok(hit.quality.clone()), hit.tokens + extra_tokens));
    }
    let (tokens, lexical) = tokenize(engine, text).await?;
    let n = tokens.untruncated_len;
    check_length(engine, n + extra_tokens)?;
    let deadline = Duration::from_millis(engine.config.server.decision_timeout_ms);
    let quality = match tokio::time::timeout(deadline, engine.predict(tokens, lexical)).await {
        Ok(Ok(quality)) => {
            let value = Cached {
                quality: quality.clone(),
                tokens: n,
            };
            engine.cache.insert(cache_key, value);
            Ok(quality)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "no decision within server.decision_timeout_ms = {} ms",
            deadline.as_millis()
        )),
    };
    Ok((quality, n + extra_tokens))
}

/// The prompt's tokens and lexical features; long texts (milliseconds of work) on the blocking
/// pool, off the async workers.
async fn tokenize(
    engine: &Engine,
    text: &str,
) -> Result<(router_core::encoder::TokenizedText, Vec<f32>), ApiError> {
    let read = |encoder: &Encoder, router: &Router, text: &str| {
        encoder
            .tokenize(text)
            .map(|tokens| (tokens, router.lexical_features(text)))
    };
    let tokenized = if text.len() <= INLINE_TOKENIZE_BYTES {
        read(&engine.encoder, &engine.router, text)
    } else {
        let (encoder, router, owned) = (
            engine.encoder.clone(),
            engine.router.clone(),
            text.to_owned(),
        );
        tokio::task::spawn_blocking(move || read(&encoder, &router, &owned))
            .await
            .map_err(|e| ApiError::Router(format!("tokenising task failed: {e}")))?
    };
    tokenized.map_err(|e| {
        ApiError::invalid(format!("cannot tokenise the prompt: {e}"), Some("messages"))
    })
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
    // A model served by several upstreams (a pool) is listed once, owned by the first.
    for u in &engine.config.upstreams {
        for model in u.model_map().into_keys() {
            if !ids.iter().any(|(id, _)| *id == model) {
                ids.push((model, u.name.clone()));
            }
        }
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
    engine.pools.get(model).map(|pool| Target {
        model: model.to_owned(),
        pool: pool.clone(),
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
