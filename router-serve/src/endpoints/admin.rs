//! Spend, budgets and keys: what the dashboard and the admin API read and change.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::ledger::{GroupBy, SpendGroup, StoredKey};
use crate::tenancy::identity::{Identity, key_digest};
use crate::util::now_unix;

/// The dashboard page (self-contained: no external scripts, styles or fonts).
pub const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");

/// `/v1/spend` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendQuery {
    pub group_by: GroupBy,
    /// First day (`YYYY-MM-DD`, UTC), inclusive.
    pub from: Option<String>,
    /// Last day, inclusive.
    pub to: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SpendAnswer {
    pub group_by: GroupBy,
    pub from: Option<String>,
    pub to: Option<String>,
    pub baseline_model: Option<String>,
    pub rows: Vec<SpendGroup>,
    pub totals: SpendGroup,
}

fn check_day(day: Option<&str>, param: &'static str) -> Result<(), ApiError> {
    let ok = day.is_none_or(|d| {
        d.len() == 10
            && d.char_indices().all(|(i, c)| {
                if i == 4 || i == 7 {
                    c == '-'
                } else {
                    c.is_ascii_digit()
                }
            })
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("`{param}` must be a day, YYYY-MM-DD"),
            Some(param),
        ))
    }
}

/// Spend grouped by team, user, key, tier, model, day or hour, with totals.
pub async fn spend(state: &AppState, query: SpendQuery) -> Result<SpendAnswer, ApiError> {
    check_day(query.from.as_deref(), "from")?;
    check_day(query.to.as_deref(), "to")?;
    let rows = state
        .store
        .spend(query.group_by, query.from.clone(), query.to.clone())
        .await?;
    let mut totals = SpendGroup {
        group: "total".into(),
        requests: 0,
        cost_usd: 0.0,
        expected_usd: 0.0,
        counterfactual_usd: 0.0,
        savings_usd: 0.0,
        input_tokens: 0,
        output_tokens: 0,
    };
    for r in &rows {
        totals.requests += r.requests;
        totals.cost_usd += r.cost_usd;
        totals.expected_usd += r.expected_usd;
        totals.counterfactual_usd += r.counterfactual_usd;
        totals.savings_usd += r.savings_usd;
        totals.input_tokens += r.input_tokens;
        totals.output_tokens += r.output_tokens;
    }
    Ok(SpendAnswer {
        group_by: query.group_by,
        from: query.from,
        to: query.to,
        baseline_model: state.engine().baseline_model().map(|m| m.name.clone()),
        rows,
        totals,
    })
}

/// Every configured budget's state now.
pub async fn budgets(state: &AppState) -> Result<Value, ApiError> {
    let engine = state.engine();
    let states = state
        .store
        .budget_states(&engine.config.tenants.budgets, now_unix())
        .await?;
    Ok(json!({"budgets": states}))
}

/// `POST /admin/keys` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub user: String,
    #[serde(default = "crate::tenancy::identity::default_tier")]
    pub tier: String,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default)]
    pub tpm: Option<u64>,
}

/// Creates a key; the answer is the only time the key itself is shown.
pub async fn create_key(state: &AppState, new: NewKey) -> Result<Value, ApiError> {
    let engine = state.engine();
    if new.name.is_empty() {
        return Err(ApiError::invalid("`name` must not be empty", Some("name")));
    }
    if new.tier != "default" && engine.config.tenants.tier(&new.tier).is_none() {
        return Err(ApiError::invalid(
            format!("tier `{}` is not configured", new.tier),
            Some("tier"),
        ));
    }
    let taken = engine
        .config
        .tenants
        .keys
        .names()
        .iter()
        .any(|k| k.key == new.name)
        || state.store.created_keys().iter().any(|k| k.key == new.name);
    if taken {
        return Err(ApiError::invalid(
            format!("a key named `{}` exists", new.name),
            Some("name"),
        ));
    }
    let key = format!(
        "sk-router-{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let stored = StoredKey {
        digest: key_digest(&key),
        identity: Identity {
            key: new.name.clone(),
            team: new.team,
            user: new.user,
            tier: new.tier,
            rpm: new.rpm,
            tpm: new.tpm,
            user_from_request: false,
        },
    };
    state.store.create_key(stored.clone()).await?;
    tracing::info!(key = %new.name, "API key created");
    Ok(json!({
        "name": new.name,
        "key": key,
        "team": stored.identity.team,
        "user": stored.identity.user,
        "tier": stored.identity.tier,
    }))
}

/// Every key (config and admin-created), without secrets.
pub fn list_keys(state: &AppState) -> Value {
    let engine = state.engine();
    let describe = |id: &Identity, source: &str| {
        json!({"name": id.key, "team": id.team, "user": id.user, "tier": id.tier,
               "rpm": id.rpm, "tpm": id.tpm, "source": source})
    };
    let mut keys: Vec<Value> = engine
        .config
        .tenants
        .keys
        .names()
        .into_iter()
        .map(|id| describe(id, "config"))
        .collect();
    keys.extend(
        state
            .store
            .created_keys()
            .iter()
            .map(|id| describe(id, "admin")),
    );
    json!({"keys": keys})
}

/// Deletes an admin-created key.
pub async fn delete_key(state: &AppState, name: String) -> Result<Value, ApiError> {
    let removed = state.store.delete_key(&name).await?;
    if !removed {
        return Err(ApiError::NotFound(format!(
            "no admin-created key named `{name}`"
        )));
    }
    Ok(json!({"name": name, "deleted": true}))
}

/// Every model's pool of upstream endpoints: strategy, and per endpoint its health (ejected,
/// cooldown left, last error), what is in flight, latency average and scraped load.
pub fn upstreams(state: &AppState) -> Value {
    json!({"pools": state.engine().pools.report()})
}
