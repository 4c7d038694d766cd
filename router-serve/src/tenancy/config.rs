//! The tenancy sections of the config file (`[auth]`, `[[keys]]`, `[tiers.NAME]`, `[[rules]]`,
//! `[[budgets]]`) and their validation into [`Tenants`].

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::tenancy::identity::{Identity, KeyTable, default_tier, key_digest};
use crate::tenancy::rules::{Rule, RuleConfig, RuleInput};

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Every `/v1/*` request needs a valid key (`Authorization: Bearer KEY`).
    #[serde(default)]
    pub required: bool,
    /// SQLite ledger of settled spend (and keys created through the admin API). Unset: budgets
    /// and spend live in memory only.
    #[serde(default)]
    pub ledger: Option<std::path::PathBuf>,
    /// Output tokens assumed for a request that sets no `max_tokens`, when reserving its
    /// worst-case cost.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// Let a reload switch `required` off or drop keys, tiers or budgets. Off: such a reload
    /// (a file saved half-way, say) is refused and the running configuration stays.
    #[serde(default)]
    pub allow_auth_downgrade: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: false,
            ledger: None,
            default_max_tokens: default_max_tokens(),
            allow_auth_downgrade: false,
        }
    }
}

fn default_max_tokens() -> u64 {
    4096
}

/// `[[keys]]`: one API key.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key's id (logs, ledger, budgets with `scope = "key"`).
    pub name: String,
    /// Hex SHA-256 of the key (e.g. `printf %s "$KEY" | sha256sum`).
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// Or: environment variable holding the key.
    #[serde(default)]
    pub key_env: Option<String>,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub user: String,
    #[serde(default = "default_tier")]
    pub tier: String,
    /// Requests per minute (default: the tier's; none: unlimited).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute (input estimate + max output tokens).
    #[serde(default)]
    pub tpm: Option<u64>,
    /// For a key without `user`: take the user (for user budgets, logs and the ledger) from
    /// the request's `user` field. Off: every request of the key counts as user `-`.
    #[serde(default)]
    pub user_from_request: bool,
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("name", &self.name)
            .field("team", &self.team)
            .field("user", &self.user)
            .field("tier", &self.tier)
            .finish_non_exhaustive()
    }
}

/// `[tiers.NAME]`: what a tier's keys may use.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// The models its requests may be routed or passed to (default: all).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Mode for `model: "router"` (default: `routing.default_mode`).
    #[serde(default)]
    pub mode: Option<String>,
    /// Output tokens a request may ask for; requests asking more, or nothing, are capped.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default)]
    pub tpm: Option<u64>,
    /// `sheddable`: its requests get 503 (with `retry-after`) when every endpoint they could
    /// go to is saturated, leaving the capacity to `critical` traffic (the default).
    #[serde(default)]
    pub criticality: Criticality,
}

/// Whether a request may be refused when the endpoints are saturated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    #[default]
    Critical,
    Sheddable,
}

/// Whose spend a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Key,
    User,
    Team,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Month,
}

/// `[[budgets]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub scope: Scope,
    /// The key, user or team it applies to; `*` gives each one its own budget.
    pub name: String,
    pub period: Period,
    /// Past this spend, requests are routed in `soft_mode` (and `soft_models`).
    #[serde(default)]
    pub soft_usd: Option<f64>,
    /// Past this spend, requests get 429 `insufficient_quota`.
    pub hard_usd: f64,
    /// Default: the mode with the widest band.
    #[serde(default)]
    pub soft_mode: Option<String>,
    #[serde(default)]
    pub soft_models: Option<Vec<String>>,
}

/// Everything tenant-related, validated.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    pub auth: AuthConfig,
    pub keys: KeyTable,
    pub tiers: BTreeMap<String, TierConfig>,
    pub rules: Vec<Rule>,
    pub budgets: Vec<BudgetConfig>,
}

impl Tenants {
    /// Validates the tenant sections against the configured `modes`; keys named by
    /// `key_env` are read now.
    pub fn build(
        auth: AuthConfig,
        keys: Vec<KeyConfig>,
        tiers: BTreeMap<String, TierConfig>,
        rules: Vec<RuleConfig>,
        budgets: Vec<BudgetConfig>,
        modes: &BTreeMap<String, f64>,
    ) -> Result<Self, (String, String)> {
        let mode_ok = |key: String, mode: &Option<String>| match mode {
            Some(m) if !modes.contains_key(m) => {
                Err((key, format!("mode `{m}` is not configured")))
            }
            _ => Ok(()),
        };
        for (name, tier) in &tiers {
            mode_ok(format!("tiers.{name}.mode"), &tier.mode)?;
        }
        let table = key_table(&keys, &tiers)?;
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                mode_ok(format!("rules[{i}].mode"), &r.mode)?;
                if let Some(b) = r.band
                    && !(0.0..=1.0).contains(&b)
                {
                    return Err((
                        format!("rules[{i}].band"),
                        format!("band {b} is outside 0–1"),
                    ));
                }
                Rule::compile(r).map_err(|e| (format!("rules[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, b) in budgets.iter().enumerate() {
            mode_ok(format!("budgets[{i}].soft_mode"), &b.soft_mode)?;
            if !(b.hard_usd.is_finite() && b.hard_usd >= 0.0) {
                return Err((
                    format!("budgets[{i}].hard_usd"),
                    "must be a non-negative number".into(),
                ));
            }
            if let Some(s) = b.soft_usd
                && !(s.is_finite() && (0.0..=b.hard_usd).contains(&s))
            {
                return Err((
                    format!("budgets[{i}].soft_usd"),
                    "must be between 0 and hard_usd".into(),
                ));
            }
        }
        Ok(Self {
            auth,
            keys: table,
            tiers,
            rules,
            budgets,
        })
    }

    /// What `next` would lose of this configuration's protection: authentication switched
    /// off, keys, tiers or budgets dropped. Empty when `next` keeps all of it, or allows the
    /// downgrade (`auth.allow_auth_downgrade`).
    pub fn downgrades_in(&self, next: &Tenants) -> Vec<String> {
        if next.auth.allow_auth_downgrade {
            return Vec::new();
        }
        let mut lost = Vec::new();
        if self.auth.required && !next.auth.required {
            lost.push("auth.required would be switched off".to_owned());
        }
        let names = |t: &Tenants| -> Vec<String> {
            t.keys.names().iter().map(|id| id.key.clone()).collect()
        };
        let next_keys = names(next);
        lost.extend(
            names(self)
                .into_iter()
                .filter(|k| !next_keys.contains(k))
                .map(|k| format!("key `{k}` would be dropped")),
        );
        lost.extend(
            self.tiers
                .keys()
                .filter(|t| !next.tiers.contains_key(*t))
                .map(|t| format!("tier `{t}` would be dropped")),
        );
        let budget = |b: &BudgetConfig| (b.scope, b.name.clone(), b.period);
        let next_budgets: Vec<_> = next.budgets.iter().map(budget).collect();
        lost.extend(
            self.budgets
                .iter()
                .filter(|b| !next_budgets.contains(&budget(b)))
                .map(|b| {
                    format!(
                        "the {:?} budget of {:?} `{}` would be dropped",
                        b.period, b.scope, b.name
                    )
                }),
        );
        lost
    }

    /// The first rule that matches `input`.
    pub fn first_rule(&self, input: &RuleInput<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(input))
    }

    pub fn tier(&self, name: &str) -> Option<&TierConfig> {
        self.tiers.get(name)
    }
}
/// The configured keys by digest; keys whose variable is unset are disabled with a warning.
fn key_table(
    keys: &[KeyConfig],
    tiers: &BTreeMap<String, TierConfig>,
) -> Result<KeyTable, (String, String)> {
    let mut table = KeyTable::default();
    let mut names = std::collections::BTreeSet::new();
    for (i, k) in keys.iter().enumerate() {
        let at = |field: &str| format!("keys[{i}].{field}");
        if k.name.is_empty() || !names.insert(k.name.clone()) {
            return Err((at("name"), format!("`{}` is empty or used twice", k.name)));
        }
        if k.tier != "default" && !tiers.contains_key(&k.tier) {
            return Err((at("tier"), format!("tier `{}` is not configured", k.tier)));
        }
        let digest = match (&k.key_sha256, &k.key_env) {
            (Some(d), None) => {
                let d = d.to_ascii_lowercase();
                if d.len() != 64 || !d.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err((at("key_sha256"), "must be 64 hex digits".into()));
                }
                Some(d)
            }
            (None, Some(var)) => std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|k| key_digest(&k)),
            _ => {
                return Err((
                    at("key_sha256"),
                    "set exactly one of key_sha256 and key_env".into(),
                ));
            }
        };
        let tier = tiers.get(&k.tier);
        let identity = Identity {
            key: k.name.clone(),
            team: k.team.clone(),
            user: k.user.clone(),
            tier: k.tier.clone(),
            rpm: k.rpm.or(tier.and_then(|t| t.rpm)),
            tpm: k.tpm.or(tier.and_then(|t| t.tpm)),
            user_from_request: k.user_from_request,
        };
        match digest {
            Some(d) => table.insert(d, identity),
            None => {
                tracing::warn!(key = %k.name, variable = k.key_env.as_deref().unwrap_or(""), "key variable not set; this key is disabled")
            }
        }
    }
    Ok(table)
}
