//! Who is calling and what they may do: API keys mapped to {team, user, tier}, per-tier
//! policy, and conditional rules evaluated in order (the first match wins).
//!
//! Keys are kept only as SHA-256 digests and compared in constant time; [`Identity`] never
//! holds the key itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;

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
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: false,
            ledger: None,
            default_max_tokens: default_max_tokens(),
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

pub(crate) fn default_tier() -> String {
    "default".to_owned()
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
}

/// A rule condition's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    Regex,
}

/// One condition: `field op value`. Fields: `tier`, `team`, `user`, `key`, `model` (as
/// requested), `stream` (`true`/`false`), `tag` (each `x-router-tags` entry; true if any
/// matches), `metadata.NAME` (the body's `metadata` object).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub field: String,
    pub op: Op,
    pub value: ConditionValue,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ConditionValue {
    One(String),
    Many(Vec<String>),
}

/// `[[rules]]`: when every condition holds, these settings apply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default)]
    pub when: Vec<Condition>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub band: Option<f64>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
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

/// The caller, as far as routing and accounting care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The key's name; empty for anonymous requests.
    pub key: String,
    pub team: String,
    pub user: String,
    pub tier: String,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

impl Identity {
    /// An unauthenticated caller (auth not required), named by the body's `user` field.
    pub fn anonymous(user: Option<&str>) -> Self {
        Self {
            key: String::new(),
            team: String::new(),
            user: user.unwrap_or_default().to_owned(),
            tier: default_tier(),
            rpm: None,
            tpm: None,
        }
    }
}

/// Hex SHA-256 of a key.
pub fn key_digest(key: &str) -> String {
    crate::log::sha256_hex(key)
}

/// Known keys by digest.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    by_digest: HashMap<String, Identity>,
}

impl KeyTable {
    pub fn insert(&mut self, digest: String, identity: Identity) {
        self.by_digest.insert(digest, identity);
    }

    pub fn remove_named(&mut self, name: &str) -> bool {
        let before = self.by_digest.len();
        self.by_digest.retain(|_, id| id.key != name);
        before != self.by_digest.len()
    }

    pub fn names(&self) -> Vec<&Identity> {
        let mut ids: Vec<&Identity> = self.by_digest.values().collect();
        ids.sort_by(|a, b| a.key.cmp(&b.key));
        ids
    }

    /// The identity of `key`. Every stored digest is compared, in constant time, so the
    /// time taken says nothing about which key or how much of one matched.
    pub fn lookup(&self, key: &str) -> Option<&Identity> {
        let digest = key_digest(key);
        let mut found = None;
        for (d, id) in &self.by_digest {
            if constant_time_eq(d.as_bytes(), digest.as_bytes()) {
                found = Some(id);
            }
        }
        found
    }
}

/// Compares without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// A rule with its regexes compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    pub config: RuleConfig,
    regexes: Vec<Option<regex::Regex>>,
}

/// What a request looks like to the rules.
pub struct RuleInput<'a> {
    pub identity: &'a Identity,
    pub model: &'a str,
    pub stream: bool,
    pub tags: &'a [String],
    pub metadata: Option<&'a serde_json::Value>,
}

impl Rule {
    pub fn compile(config: RuleConfig) -> Result<Self, String> {
        let regexes = config
            .when
            .iter()
            .map(|c| match (c.op, &c.value) {
                (Op::Regex, ConditionValue::One(pattern)) => regex::Regex::new(pattern)
                    .map(Some)
                    .map_err(|e| format!("rule `{}`: bad regex `{pattern}`: {e}", config.name)),
                (Op::Regex, ConditionValue::Many(_)) => Err(format!(
                    "rule `{}`: `regex` takes one pattern, not a list",
                    config.name
                )),
                (Op::In | Op::NotIn, ConditionValue::One(_)) => Err(format!(
                    "rule `{}`: `{:?}` takes a list of values",
                    config.name, c.op
                )),
                (Op::Equals | Op::NotEquals, ConditionValue::Many(_)) => Err(format!(
                    "rule `{}`: `{:?}` takes one value",
                    config.name, c.op
                )),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        for c in &config.when {
            let known = matches!(
                c.field.as_str(),
                "tier" | "team" | "user" | "key" | "model" | "stream" | "tag"
            ) || c.field.starts_with("metadata.");
            if !known {
                return Err(format!(
                    "rule `{}`: unknown field `{}` (tier, team, user, key, model, stream, tag, metadata.NAME)",
                    config.name, c.field
                ));
            }
        }
        Ok(Self { config, regexes })
    }

    /// Whether every condition holds for `input`.
    pub fn matches(&self, input: &RuleInput<'_>) -> bool {
        self.config
            .when
            .iter()
            .zip(&self.regexes)
            .all(|(c, re)| condition_holds(c, re.as_ref(), input))
    }
}

fn condition_holds(c: &Condition, re: Option<&regex::Regex>, input: &RuleInput<'_>) -> bool {
    let values: Vec<String> = match c.field.as_str() {
        "tier" => vec![input.identity.tier.clone()],
        "team" => vec![input.identity.team.clone()],
        "user" => vec![input.identity.user.clone()],
        "key" => vec![input.identity.key.clone()],
        "model" => vec![input.model.to_owned()],
        "stream" => vec![input.stream.to_string()],
        "tag" => input.tags.to_vec(),
        field => {
            let name = field.trim_start_matches("metadata.");
            input
                .metadata
                .and_then(|m| m.get(name))
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .into_iter()
                .collect()
        }
    };
    let test = |v: &str| match (c.op, &c.value) {
        (Op::Equals, ConditionValue::One(x)) => v == x,
        (Op::NotEquals, ConditionValue::One(x)) => v != x,
        (Op::In, ConditionValue::Many(xs)) => xs.iter().any(|x| x == v),
        (Op::NotIn, ConditionValue::Many(xs)) => !xs.iter().any(|x| x == v),
        (Op::Regex, _) => re.is_some_and(|re| re.is_match(v)),
        _ => false,
    };
    match c.op {
        // Negative operators hold when no value contradicts them (also with no value).
        Op::NotEquals | Op::NotIn => values.iter().all(|v| test(v)),
        _ => values.iter().any(|v| test(v)),
    }
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
            };
            match digest {
                Some(d) => table.insert(d, identity),
                None => {
                    tracing::warn!(key = %k.name, variable = k.key_env.as_deref().unwrap_or(""), "key variable not set; this key is disabled")
                }
            }
        }
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

    /// The first rule that matches `input`.
    pub fn first_rule(&self, input: &RuleInput<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(input))
    }

    pub fn tier(&self, name: &str) -> Option<&TierConfig> {
        self.tiers.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            key: "k".into(),
            team: "search".into(),
            user: "alice".into(),
            tier: "free".into(),
            rpm: None,
            tpm: None,
        }
    }

    fn rule(toml_text: &str) -> Rule {
        Rule::compile(toml::from_str(toml_text).unwrap()).unwrap()
    }

    #[test]
    fn conditions_use_every_operator() {
        let id = identity();
        let tags = vec!["batch".to_owned(), "eu".to_owned()];
        let metadata = serde_json::json!({"app": "checkout-v2", "priority": 3});
        let input = RuleInput {
            identity: &id,
            model: "router",
            stream: true,
            tags: &tags,
            metadata: Some(&metadata),
        };
        let holds = |when: &str| rule(&format!("name = \"r\"\nwhen = [{when}]")).matches(&input);
        assert!(holds(
            r#"{ field = "tier", op = "equals", value = "free" }"#
        ));
        assert!(!holds(
            r#"{ field = "tier", op = "not_equals", value = "free" }"#
        ));
        assert!(holds(r#"{ field = "tag", op = "in", value = ["batch"] }"#));
        assert!(!holds(
            r#"{ field = "tag", op = "not_in", value = ["eu"] }"#
        ));
        assert!(holds(
            r#"{ field = "metadata.app", op = "regex", value = "^checkout-" }"#
        ));
        assert!(holds(
            r#"{ field = "metadata.priority", op = "equals", value = "3" }"#
        ));
        assert!(holds(
            r#"{ field = "stream", op = "equals", value = "true" }"#
        ));
        assert!(!holds(
            r#"{ field = "metadata.missing", op = "equals", value = "x" }"#
        ));
        // Every condition must hold.
        assert!(!holds(
            r#"{ field = "team", op = "equals", value = "search" }, { field = "user", op = "equals", value = "bob" }"#
        ));
    }

    #[test]
    fn bad_rules_are_errors() {
        for text in [
            "name = \"r\"\nwhen = [{ field = \"tier\", op = \"regex\", value = \"(\" }]",
            "name = \"r\"\nwhen = [{ field = \"tier\", op = \"in\", value = \"free\" }]",
            "name = \"r\"\nwhen = [{ field = \"colour\", op = \"equals\", value = \"x\" }]",
        ] {
            assert!(
                Rule::compile(toml::from_str(text).unwrap()).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn keys_are_found_by_digest_and_never_debug_printed() {
        let mut table = KeyTable::default();
        table.insert(key_digest("sk-secret"), identity());
        assert_eq!(
            table.lookup("sk-secret").map(|i| i.user.as_str()),
            Some("alice")
        );
        assert!(table.lookup("sk-secre").is_none());
        assert!(!format!("{table:?}").contains("sk-secret"));
    }
}
