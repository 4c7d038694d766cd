//! Admission: who is calling (API key → identity), what their tier, the first matching rule
//! and their budgets allow.

use axum::http::{HeaderMap, header};

use crate::api::chat::ChatRequest;
use crate::http::error::ApiError;
use crate::state::Engine;
use crate::store::Store;
use crate::tenancy::budget::Status;
use crate::tenancy::config::Criticality;
use crate::tenancy::identity::Identity;
use crate::tenancy::rate_limit::RateInfo;
use crate::tenancy::rules::RuleInput;

/// The bearer token of a request, if any (the scheme is case-insensitive, RFC 7235).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The caller. With `auth.required`, a missing or unknown key is 401; without it, unknown keys
/// (clients must send something) are anonymous. The user is the key's, or the request's only
/// where the key allows it (see [`Identity::for_request`]).
pub fn identify(
    store: &dyn Store,
    engine: &Engine,
    headers: &HeaderMap,
    user: Option<&str>,
) -> Result<Identity, ApiError> {
    let required = engine.config.tenants.auth.required;
    let Some(key) = bearer(headers) else {
        return if required {
            Err(ApiError::Unauthorized(
                "no API key: send `Authorization: Bearer KEY`".into(),
            ))
        } else {
            Ok(Identity::anonymous(user))
        };
    };
    let found = engine
        .config
        .tenants
        .keys
        .lookup(key)
        .cloned()
        .or_else(|| store.lookup_key(key));
    match found {
        Some(identity) => Ok(identity.for_request(user)),
        None if required => Err(ApiError::Unauthorized("the API key is not valid".into())),
        None => Ok(Identity::anonymous(user)),
    }
}

/// Identifies the caller of an endpoint that is not a chat request (`/v1/models`,
/// `/v1/feedback`) and counts it against the key's request rate.
pub async fn admit_call(
    store: &dyn Store,
    engine: &Engine,
    headers: &HeaderMap,
) -> Result<Identity, ApiError> {
    let identity = identify(store, engine, headers, None)?;
    rate_limit(store, &identity, 0).await?;
    Ok(identity)
}

/// One request of `tokens` tokens against the key's rate limits (429 with the
/// `x-ratelimit-*` numbers when over).
pub async fn rate_limit(
    store: &dyn Store,
    identity: &Identity,
    tokens: u64,
) -> Result<RateInfo, ApiError> {
    store
        .admit_rate(identity, tokens)
        .await?
        .map_err(|info| ApiError::RateLimited {
            message: format!(
                "rate limit of key `{}` reached ({} requests, {} tokens per minute)",
                identity.key,
                identity.rpm.map_or("unlimited".into(), |r| r.to_string()),
                identity.tpm.map_or("unlimited".into(), |t| t.to_string()),
            ),
            info,
        })
}

/// A request's caller and what it may do.
pub struct Admission {
    pub identity: Identity,
    pub tags: Vec<String>,
    pub policy: Policy,
}

/// Identifies the caller of `req` and works out its policy (tier, rules, budgets at `now`).
pub async fn admit(
    store: &dyn Store,
    engine: &Engine,
    headers: &HeaderMap,
    req: &ChatRequest,
    now: u64,
) -> Result<Admission, ApiError> {
    let identity = identify(store, engine, headers, req.user.as_deref())?;
    let tags = tags(headers);
    let budgets = &engine.config.tenants.budgets;
    let status = if budgets.is_empty() {
        Status::Ok
    } else {
        store.budget_status(budgets, &identity, now).await?
    };
    let policy = policy(engine, &identity, req, &tags, status)?;
    Ok(Admission {
        identity,
        tags,
        policy,
    })
}

/// `x-router-tags: a, b`.
pub fn tags(headers: &HeaderMap) -> Vec<String> {
    headers
        .get("x-router-tags")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// What the tier, the rules and the budgets say about one request.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Mode for `model: "router"` unless the request names one.
    pub mode: Option<String>,
    /// Mode imposed whatever the request says (a budget past its soft threshold).
    pub forced_mode: Option<String>,
    pub band: Option<f64>,
    /// Models the request may use.
    pub models: Option<Vec<String>>,
    pub max_tokens: Option<u64>,
    /// `budget_soft` when a soft threshold changed the routing.
    pub reason: Option<&'static str>,
    /// The rule that matched.
    pub rule: Option<String>,
    /// The tier is sheddable (see [`crate::tenancy::config::Criticality`]).
    pub sheddable: bool,
}

fn intersect(a: Option<Vec<String>>, b: Option<&Vec<String>>) -> Option<Vec<String>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.into_iter().filter(|m| b.contains(m)).collect()),
        (a, b) => a.or_else(|| b.cloned()),
    }
}

/// The policy for `req` from `identity`: tier, then the first matching rule, then a budget past
/// its soft threshold (`status`). A budget past its hard limit is refused.
pub fn policy(
    engine: &Engine,
    identity: &Identity,
    req: &ChatRequest,
    tags: &[String],
    status: Status,
) -> Result<Policy, ApiError> {
    let tenants = &engine.config.tenants;
    let tier = tenants.tier(&identity.tier);
    let rule = tenants.first_rule(&RuleInput {
        identity,
        model: &req.model,
        stream: req.stream,
        tags,
        metadata: req.metadata.as_ref(),
    });
    let mut policy = Policy {
        mode: rule
            .and_then(|r| r.config.mode.clone())
            .or_else(|| tier.and_then(|t| t.mode.clone())),
        band: rule.and_then(|r| r.config.band),
        models: intersect(
            tier.and_then(|t| t.models.clone()),
            rule.and_then(|r| r.config.models.as_ref()),
        ),
        max_tokens: match (
            tier.and_then(|t| t.max_tokens),
            rule.and_then(|r| r.config.max_tokens),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        rule: rule.map(|r| r.config.name.clone()),
        sheddable: tier.is_some_and(|t| t.criticality == Criticality::Sheddable),
        ..Policy::default()
    };
    match status {
        Status::Ok => {}
        Status::Hard(hit) => {
            return Err(ApiError::InsufficientQuota(hit.describe("hard limit")));
        }
        Status::Soft(hit) => {
            let widest = engine
                .config
                .routing
                .modes
                .iter()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(m, _)| m.clone());
            policy.forced_mode = hit.soft_mode.clone().or(widest);
            policy.models = intersect(policy.models, hit.soft_models.as_ref());
            policy.reason = Some("budget_soft");
        }
    }
    if policy.models.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::Forbidden(
            "the tier, rule and budget settings leave no model this request may use".into(),
        ));
    }
    Ok(policy)
}
