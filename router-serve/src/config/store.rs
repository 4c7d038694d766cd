//! `[store]`: where budgets, rate limits, admin-created keys, the spend ledger and the feedback
//! index live: in this process (`embedded`, the default) or in Redis and PostgreSQL shared by
//! every replica (`shared`).

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// Which store backs the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// This process's memory and the SQLite ledger of `auth.ledger`: nothing to install, one
    /// replica.
    #[default]
    Embedded,
    /// Redis (budget counters, rate-limit buckets, the feedback index) and PostgreSQL (the
    /// ledger and the keys, the truth Redis is rebuilt from): any number of replicas.
    Shared,
}

/// What a shared store does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Refuse the requests that need it (503, OpenAI error shape).
    #[default]
    FailClosed,
    /// Enforce budgets and rate limits in this replica, each limit divided by `replicas`.
    Local,
}

/// A connection string read from the config or the environment; never printed (it may hold a
/// password).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Url(String);

impl Url {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Url(<redacted>)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub backend: Backend,
    /// `redis://host:port/db` (prefer `redis_url_env`: the URL may hold a password).
    #[serde(default)]
    redis_url: Option<Url>,
    /// Environment variable holding the Redis URL.
    #[serde(default)]
    pub redis_url_env: Option<String>,
    /// `postgres://user:password@host:port/db` (prefer `postgres_url_env`).
    #[serde(default)]
    postgres_url: Option<Url>,
    /// Environment variable holding the PostgreSQL URL.
    #[serde(default)]
    pub postgres_url_env: Option<String>,
    /// Prefix of every Redis key, so several gateways can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// While Redis cannot be reached: `fail_closed` (503) or `local`.
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Replicas sharing the limits: with `on_store_error = "local"`, each enforces its share.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Longest wait for one Redis or PostgreSQL call before it counts as an error.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How often keys are re-read from PostgreSQL (a key created or revoked on another replica
    /// takes effect here within this).
    #[serde(default = "default_key_refresh_ms")]
    pub key_refresh_ms: u64,
    /// How long an answered request can receive feedback through any replica.
    #[serde(default = "default_feedback_ttl_s")]
    pub feedback_ttl_s: u64,
    /// How long a reservation of a replica that died stays held before it is released.
    #[serde(default = "default_reservation_ttl_s")]
    pub reservation_ttl_s: u64,
    /// Ledger rows that could not reach PostgreSQL are appended here (fsync'd) and replayed
    /// when it is back. One file per replica.
    #[serde(default = "default_spool")]
    pub spool: PathBuf,
    /// The URLs, read at load time.
    #[serde(skip)]
    pub redis: Option<Url>,
    #[serde(skip)]
    pub postgres: Option<Url>,
}

fn default_key_prefix() -> String {
    "router:".to_owned()
}
fn default_replicas() -> u32 {
    2
}
fn default_timeout_ms() -> u64 {
    1_000
}
fn default_key_refresh_ms() -> u64 {
    500
}
fn default_feedback_ttl_s() -> u64 {
    7 * 86_400
}
fn default_reservation_ttl_s() -> u64 {
    3_600
}
fn default_spool() -> PathBuf {
    PathBuf::from("router-ledger-spool.jsonl")
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: Backend::default(),
            redis_url: None,
            redis_url_env: None,
            postgres_url: None,
            postgres_url_env: None,
            key_prefix: default_key_prefix(),
            on_store_error: OnStoreError::default(),
            replicas: default_replicas(),
            timeout_ms: default_timeout_ms(),
            key_refresh_ms: default_key_refresh_ms(),
            feedback_ttl_s: default_feedback_ttl_s(),
            reservation_ttl_s: default_reservation_ttl_s(),
            spool: default_spool(),
            redis: None,
            postgres: None,
        }
    }
}

impl StoreConfig {
    /// Reads the URLs (the `*_env` variables win) and checks the table; an error is
    /// (key, message).
    pub(super) fn resolve(&mut self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: &str| Err((format!("store.{key}"), message.to_owned()));
        let read = |inline: &Option<Url>, env: &Option<String>| {
            env.as_deref()
                .and_then(|var| std::env::var(var).ok())
                .map(Url)
                .or_else(|| inline.clone())
                .filter(|u| !u.0.is_empty())
        };
        self.redis = read(&self.redis_url, &self.redis_url_env);
        self.postgres = read(&self.postgres_url, &self.postgres_url_env);
        if self.replicas == 0 {
            return invalid("replicas", "must be at least 1");
        }
        if self.timeout_ms == 0 || self.key_refresh_ms == 0 {
            return invalid(
                "timeout_ms",
                "timeout_ms and key_refresh_ms must be positive",
            );
        }
        if self.key_prefix.is_empty() {
            return invalid("key_prefix", "must not be empty");
        }
        if self.backend != Backend::Shared {
            return Ok(());
        }
        let missing = |what: &str, env: &Option<String>| match env {
            Some(var) => format!(
                "the shared backend needs {what}: environment variable `{var}` is unset or empty"
            ),
            None => format!("the shared backend needs {what}_url or {what}_url_env"),
        };
        if self.redis.is_none() {
            return Err((
                "store.redis_url".into(),
                missing("redis", &self.redis_url_env),
            ));
        }
        if self.postgres.is_none() {
            return Err((
                "store.postgres_url".into(),
                missing("postgres", &self.postgres_url_env),
            ));
        }
        if let Some(url) = &self.redis
            && !url.0.starts_with("redis://")
        {
            return invalid(
                "redis_url",
                "must start with redis:// (TLS is not built in)",
            );
        }
        if let Some(url) = &self.postgres
            && !(url.0.starts_with("postgres://") || url.0.starts_with("postgresql://"))
        {
            return invalid(
                "postgres_url",
                "must start with postgres:// or postgresql://",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ServeConfig;

    fn error(text: &str) -> String {
        ServeConfig::parse(text, "test").unwrap_err().to_string()
    }

    #[test]
    fn a_shared_store_without_its_urls_or_with_an_embedded_ledger_is_refused_naming_the_key() {
        let e = error("[store]\nbackend = \"shared\"\npostgres_url = \"postgres://x@h/db\"");
        assert!(e.contains("store.redis_url"), "{e}");
        let e = error(
            "[store]\nbackend = \"shared\"\nredis_url = \"redis://h\"\npostgres_url_env = \"ROUTER_TEST_UNSET_PG_URL\"",
        );
        assert!(e.contains("ROUTER_TEST_UNSET_PG_URL"), "{e}");
        let e = error(
            "[store]\nbackend = \"shared\"\nredis_url = \"http://h\"\npostgres_url = \"postgres://x@h/db\"",
        );
        assert!(e.contains("redis://"), "{e}");
        let e = error(
            "[auth]\nledger = \"l.sqlite\"\n[store]\nbackend = \"shared\"\nredis_url = \"redis://h\"\npostgres_url = \"postgres://x@h/db\"",
        );
        assert!(e.contains("auth.ledger"), "{e}");
        assert!(error("[store]\nreplicas = 0").contains("store.replicas"));
        assert!(error("[store]\nbackend = \"sharded\"").contains("backend"));
    }

    #[test]
    fn store_urls_are_never_printed() {
        let text = "[store]\nbackend = \"shared\"\nredis_url = \"redis://:hunter2@h\"\npostgres_url = \"postgres://u:hunter2@h/db\"";
        let config = ServeConfig::parse(text, "test").unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
