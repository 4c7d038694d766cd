//! Conditional rules, evaluated in order (the first match wins): `field op value` conditions
//! on the caller, the requested model, streaming, tags and metadata.

use serde::Deserialize;

use crate::tenancy::identity::Identity;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity::example()
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
}
