//! The server's configuration: a TOML file (every table `deny_unknown_fields`, so a typo is an
//! error), parsed and then validated into [`ServeConfig`] before anything runs. With no file,
//! the built-in [`DEFAULT_CONFIG`] is used; it is also the commented reference of every key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use router_core::policy::Policy;
use serde::Deserialize;

mod defaults;
pub mod store;
pub mod upstream;

use self::defaults::*;
use self::store::StoreConfig;
pub use self::upstream::{AuthStyle, ModelMap, PoolConfig, Strategy, UpstreamConfig};
use crate::tenancy::config::{AuthConfig, BudgetConfig, KeyConfig, Tenants, TierConfig};
use crate::tenancy::rules::RuleConfig;

/// The configuration `router-serve` runs with when given no `--config`: the default router in
/// `models/`, its models served by NVIDIA's OpenAI-compatible API (the prices the router was
/// trained with are NVIDIA's), three modes and no decision log directory.
pub const DEFAULT_CONFIG: &str = include_str!("../../default-config.toml");

/// What can be wrong with a configuration. Each variant names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

/// An API key read from the environment. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: String) -> Self {
        Self(key)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub server: ServerConfig,
    pub routing: RoutingConfig,
    pub batching: BatchingConfig,
    pub log: LogConfig,
    pub upstreams: Vec<UpstreamConfig>,
    /// The file this came from; `None` for the built-in default.
    pub source: Option<PathBuf>,
    /// The admin key, read from `server.admin_key_env`.
    pub admin_key: Option<ApiKey>,
    /// The key `/metrics` requires, read from `server.metrics_key_env`.
    pub metrics_key: Option<ApiKey>,
    /// API keys, tiers, rules and budgets.
    pub tenants: Tenants,
    /// `[prices.MODEL]`: USD per million tokens, over the router artifact's.
    pub prices: BTreeMap<String, PriceConfig>,
    /// `[models.MODEL]`: what a served model can do.
    pub models: BTreeMap<String, Capabilities>,
    /// `[store]`: embedded or shared (Redis + PostgreSQL) state.
    pub store: StoreConfig,
    /// `[pools.MODEL]`: how a model's upstreams share its requests (default for each model:
    /// least outstanding).
    pub pools: BTreeMap<String, PoolConfig>,
}

/// `[models.MODEL]`: what a model can serve. A request is routed only among the models that
/// can serve it, and a request to a model by name that it cannot serve is a 400. A model with
/// no table, or a capability left out, is assumed able.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Input plus output tokens the model takes (unset: no limit known).
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Tool (function) calls: requests with `tools` or `functions`.
    #[serde(default = "default_true")]
    pub tools: bool,
    /// Image inputs: `image_url` (or `input_image`) content parts.
    #[serde(default = "default_true")]
    pub vision: bool,
    /// Structured output: `response_format: {"type": "json_schema"}`.
    #[serde(default = "default_true")]
    pub json_schema: bool,
}
/// `[prices.MODEL]`: what a model costs, for budgets, the ledger and the dashboard. Overrides
/// the router artifact's price; needed for every served model outside the artifact once
/// budgets or a ledger are on.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// USD per million input tokens.
    pub input_per_million: f64,
    /// USD per million output tokens.
    pub output_per_million: f64,
    /// USD per million input tokens the provider served from its prompt cache (reported as
    /// `usage.prompt_tokens_details.cached_tokens`); unset: the input price.
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
}

impl PriceConfig {
    /// USD for `input` and `output` tokens (all input at the full price: the worst case).
    pub fn cost_usd(&self, input: f64, output: f64) -> f64 {
        (input * self.input_per_million + output * self.output_per_million) / 1e6
    }

    /// USD for an answer's reported usage: `input` tokens of which `cached` came from the
    /// provider's prompt cache (at the cached-input price), and `output` tokens.
    pub fn cost_of(&self, input: u64, cached: u64, output: u64) -> f64 {
        let cached = cached.min(input) as f64;
        let fresh = input as f64 - cached;
        let cached_price = self
            .cached_input_per_million
            .unwrap_or(self.input_per_million);
        self.cost_usd(fresh, output as f64) + cached * cached_price / 1e6
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Router artifact directory (relative paths are taken from the working directory).
    #[serde(default = "default_router")]
    pub router: PathBuf,
    /// Encoder device: `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Largest request body accepted; larger bodies get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest conversation accepted, in input tokens; larger get 400 `context_length_exceeded`.
    #[serde(default = "default_max_input_tokens")]
    pub max_input_tokens: usize,
    /// Deadline for the routing decision (tokenise, embed, predict); past it the request fails
    /// open to `fail_open_model`.
    #[serde(default = "default_decision_timeout_ms")]
    pub decision_timeout_ms: u64,
    /// The model served when the router fails. Default: the routable model with the highest
    /// mean training score.
    #[serde(default)]
    pub fail_open_model: Option<String>,
    /// Environment variable holding the key for `/admin/*`; unset means admin endpoints are
    /// only reachable from loopback addresses.
    #[serde(default)]
    pub admin_key_env: Option<String>,
    /// Environment variable holding a key `/metrics` requires (`Authorization: Bearer KEY`);
    /// unset: `/metrics` is open (it shows per-model spend: bind it to a private address).
    #[serde(default)]
    pub metrics_key_env: Option<String>,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection is kept waiting for the next ones.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send a request's body (408 past it).
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// How often the config file and the router artifact are checked for changes (0 = never).
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
    /// How long shutdown waits for in-flight requests and streams.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

/// Which part of the conversation the router embeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedText {
    /// The system prompt(s) and the last user turn, joined by a newline (default).
    SystemAndLastUser,
    /// The last user turn only.
    LastUser,
    /// Every message's text, in order.
    All,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// The mode used by `model: "router"`.
    #[serde(default = "default_mode")]
    pub default_mode: String,
    /// Named bands (0–1 quality points below the best predicted model). Each mode `m` is also
    /// reachable as `model: "router-m"`.
    #[serde(default = "default_modes")]
    pub modes: BTreeMap<String, f64>,
    /// How a model is chosen within the band: `value` (the best value for money, default) or
    /// `cheapest`.
    #[serde(default)]
    pub policy: Policy,
    #[serde(default = "default_embed_text")]
    pub embed_text: EmbedText,
    /// Whether requests may set their own band, mode or model subset (header or body field).
    #[serde(default = "default_true")]
    pub allow_request_overrides: bool,
    /// The widest band a request may ask for.
    #[serde(default = "default_max_request_band")]
    pub max_request_band: f64,
    /// Share (0–1) of routed requests sent to a model drawn uniformly from the band instead
    /// of the policy's choice, so that the logs keep labels for every model in the band; the
    /// decision log records each choice's probability (`propensity`). 0 (default): never.
    #[serde(default)]
    pub explore: f64,
    /// With `explore`: draw from every routable model within this band of the best prediction
    /// instead of the request's band (when wider). Unset (default): the request's band, its
    /// quality promise kept.
    #[serde(default)]
    pub explore_band: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most prompts embedded in one forward pass.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long the encoder thread waits for more prompts once one has arrived (0: take only
    /// what is already queued).
    #[serde(default)]
    pub max_wait_us: u64,
    /// Encoder threads sharing the queue; 0 (default) means one per core on CPU (at most 8)
    /// and one on CUDA. With more than one, a batch uses every core while the other threads
    /// are idle and its own thread's core while another is busy.
    #[serde(default)]
    pub workers: usize,
    /// Predictions kept for repeated prompts (exact text); 0 disables the cache.
    #[serde(default = "default_decision_cache")]
    pub decision_cache: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Directory of `decisions.jsonl` and `feedback.jsonl`; unset disables the logs.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Rotate `decisions.jsonl` once it reaches this size.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Rotated files kept (older ones are deleted).
    #[serde(default = "default_keep_files")]
    pub keep_files: usize,
    /// Write the routed prompt text into the logs (else only its SHA-256). Feedback rows carry
    /// the text only when this is on, and only those rows can be trained on.
    #[serde(default)]
    pub log_prompts: bool,
    /// Recent requests remembered for `/v1/feedback`.
    #[serde(default = "default_recent_requests")]
    pub recent_requests: usize,
    /// The range `[low, high]` a feedback score must lie in.
    #[serde(default = "default_feedback_scores")]
    pub feedback_scores: [f64; 2],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<ServerConfig>,
    routing: Option<RoutingConfig>,
    batching: Option<BatchingConfig>,
    log: Option<LogConfig>,
    #[serde(default)]
    upstreams: Vec<UpstreamConfig>,
    auth: Option<AuthConfig>,
    #[serde(default)]
    keys: Vec<KeyConfig>,
    #[serde(default)]
    tiers: BTreeMap<String, TierConfig>,
    #[serde(default)]
    rules: Vec<RuleConfig>,
    #[serde(default)]
    budgets: Vec<BudgetConfig>,
    #[serde(default)]
    prices: BTreeMap<String, PriceConfig>,
    #[serde(default)]
    models: BTreeMap<String, Capabilities>,
    store: Option<StoreConfig>,
    #[serde(default)]
    pools: BTreeMap<String, PoolConfig>,
}

impl ServeConfig {
    /// Reads and validates `path`; keys are read from the environment now.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// The built-in default configuration.
    pub fn default_config() -> Result<Self, ConfigError> {
        Self::parse(DEFAULT_CONFIG, "<built-in default>")
    }

    /// Parses and validates TOML `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source: Box::new(source),
        })?;
        let server = or_defaults(raw.server, origin)?;
        let routing = or_defaults(raw.routing, origin)?;
        let batching = or_defaults(raw.batching, origin)?;
        let log = or_defaults(raw.log, origin)?;
        let mut store = raw.store.unwrap_or_default();
        store
            .resolve()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: origin.to_owned(),
                key,
                message,
            })?;
        let tenants = Tenants::build(
            raw.auth.unwrap_or_default(),
            raw.keys,
            raw.tiers,
            raw.rules,
            raw.budgets,
            &routing.modes,
        )
        .map_err(|(key, message)| ConfigError::Invalid {
            path: origin.to_owned(),
            key,
            message,
        })?;
        let mut config = Self {
            server,
            routing,
            batching,
            log,
            upstreams: raw.upstreams,
            source: None,
            admin_key: None,
            metrics_key: None,
            tenants,
            prices: raw.prices,
            models: raw.models,
            store,
            pools: raw.pools,
        };
        config.validate(origin)?;
        config.read_keys();
        Ok(config)
    }

    fn read_keys(&mut self) {
        for upstream in &mut self.upstreams {
            upstream.api_key = upstream
                .api_key_env
                .as_deref()
                .and_then(|var| std::env::var(var).ok())
                .filter(|k| !k.is_empty())
                .map(ApiKey::new);
        }
        let read = |var: Option<&str>| {
            var.and_then(|var| std::env::var(var).ok())
                .filter(|k| !k.is_empty())
                .map(ApiKey::new)
        };
        self.admin_key = read(self.server.admin_key_env.as_deref());
        self.metrics_key = read(self.server.metrics_key_env.as_deref());
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.check_settings()
            .and_then(|()| upstream::check_upstreams(&self.upstreams))
            .and_then(|()| upstream::check_pools(&self.pools, &self.upstreams))
            .and_then(|()| self.check_prices())
            .and_then(|()| self.check_store())
            .map_err(|(key, message)| ConfigError::Invalid {
                path: origin.to_owned(),
                key,
                message,
            })
    }

    /// The `[server]`, `[routing]`, `[batching]` and `[log]` values; an error is (key, message).
    fn check_settings(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: String| (key.to_owned(), message);
        let s = &self.server;
        if s.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be positive".into()));
        }
        if s.header_read_timeout_ms == 0 || s.body_read_timeout_ms == 0 {
            return Err(invalid(
                "server.header_read_timeout_ms",
                "header_read_timeout_ms and body_read_timeout_ms must be positive".into(),
            ));
        }
        if s.max_input_tokens == 0 {
            return Err(invalid(
                "server.max_input_tokens",
                "must be positive".into(),
            ));
        }
        let r = &self.routing;
        if r.modes.is_empty() {
            return Err(invalid(
                "routing.modes",
                "at least one mode is needed".into(),
            ));
        }
        for (name, band) in &r.modes {
            if !(0.0..=1.0).contains(band) {
                return Err(invalid(
                    &format!("routing.modes.{name}"),
                    format!("band {band} is outside 0–1"),
                ));
            }
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    "routing.modes",
                    format!("mode name `{name}` must be letters, digits, `-` or `_`"),
                ));
            }
        }
        if !r.modes.contains_key(&r.default_mode) {
            return Err(invalid(
                "routing.default_mode",
                format!(
                    "`{}` is not one of the modes ({})",
                    r.default_mode,
                    r.modes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if !(0.0..=1.0).contains(&r.max_request_band) {
            return Err(invalid(
                "routing.max_request_band",
                "must be within 0–1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&r.explore) {
            return Err(invalid(
                "routing.explore",
                format!("must be a share within 0–1, got {}", r.explore),
            ));
        }
        if let Some(band) = r.explore_band
            && !(0.0..=1.0).contains(&band)
        {
            return Err(invalid(
                "routing.explore_band",
                format!("must be within 0–1, got {band}"),
            ));
        }
        if self.batching.max_batch == 0 {
            return Err(invalid("batching.max_batch", "must be positive".into()));
        }
        if self.batching.workers > 64 {
            return Err(invalid("batching.workers", "must be at most 64".into()));
        }
        if self.log.rotate_bytes < 1024 {
            return Err(invalid("log.rotate_bytes", "must be at least 1024".into()));
        }
        let [low, high] = self.log.feedback_scores;
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(invalid(
                "log.feedback_scores",
                format!("must be [low, high] with low < high, got [{low}, {high}]"),
            ));
        }
        Ok(())
    }

    /// Whether settled requests are written to a ledger (SQLite or PostgreSQL).
    pub fn has_ledger(&self) -> bool {
        self.tenants.auth.ledger.is_some() || self.store.backend == store::Backend::Shared
    }

    /// `auth.ledger` is the embedded backend's: with the shared one the ledger is PostgreSQL.
    fn check_store(&self) -> Result<(), (String, String)> {
        if self.store.backend == store::Backend::Shared && self.tenants.auth.ledger.is_some() {
            return Err((
                "auth.ledger".into(),
                "with store.backend = \"shared\" the ledger is PostgreSQL: remove auth.ledger"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `[prices]`: finite, non-negative, for served models.
    fn check_prices(&self) -> Result<(), (String, String)> {
        for (model, p) in &self.prices {
            for (field, v) in [
                ("input_per_million", p.input_per_million),
                ("output_per_million", p.output_per_million),
                (
                    "cached_input_per_million",
                    p.cached_input_per_million.unwrap_or(0.0),
                ),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err((
                        format!("prices.{model}.{field}"),
                        format!("must be a non-negative number, got {v}"),
                    ));
                }
            }
            if self.upstream_for(model).is_none() {
                return Err((
                    format!("prices.{model}"),
                    format!("`{model}` is served by no upstream"),
                ));
            }
        }
        for (model, c) in &self.models {
            if self.upstream_for(model).is_none() {
                return Err((
                    format!("models.{model}"),
                    format!("`{model}` is served by no upstream"),
                ));
            }
            if c.context_window == Some(0) {
                return Err((
                    format!("models.{model}.context_window"),
                    "must be positive".into(),
                ));
            }
        }
        Ok(())
    }

    /// Encoder threads to run: `batching.workers`, or for 0 one per core on CPU (at most 8)
    /// and one on a GPU.
    pub fn encoder_workers(&self) -> usize {
        match self.batching.workers {
            0 if self.server.device.trim().eq_ignore_ascii_case("cpu") => {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
            }
            0 => 1,
            n => n,
        }
    }

    /// The band of mode `name`.
    pub fn mode_band(&self, name: &str) -> Option<f64> {
        self.routing.modes.get(name).copied()
    }

    /// The first upstream serving router model `model`, and the name to send it.
    pub fn upstream_for(&self, model: &str) -> Option<(&UpstreamConfig, String)> {
        self.upstreams_for(model).into_iter().next()
    }

    /// Every upstream serving router model `model` (its pool), in file order, each with the
    /// name to send it.
    pub fn upstreams_for(&self, model: &str) -> Vec<(&UpstreamConfig, String)> {
        self.upstreams
            .iter()
            .filter_map(|u| u.serves(model).map(|name| (u, name)))
            .collect()
    }

    /// `[pools.MODEL]`, or the default pool settings.
    pub fn pool_config(&self, model: &str) -> PoolConfig {
        self.pools.get(model).cloned().unwrap_or_default()
    }
}

/// `section` as written, or every key at its default when the table is absent.
fn or_defaults<T: serde::de::DeserializeOwned>(
    section: Option<T>,
    origin: &str,
) -> Result<T, ConfigError> {
    if let Some(section) = section {
        return Ok(section);
    }
    toml::Value::Table(toml::Table::new())
        .try_into()
        .map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid() {
        let config = ServeConfig::default_config().unwrap();
        assert_eq!(config.routing.default_mode, "balanced");
        assert_eq!(config.server.listen, default_listen());
        assert!(config.upstream_for("gemma-2-9b-it").is_some());
    }

    #[test]
    fn an_empty_file_gets_every_default() {
        let config = ServeConfig::parse("", "t").unwrap();
        assert_eq!(config.routing.modes.len(), 3);
        assert_eq!(config.batching.max_batch, 32);
        assert!(config.log.dir.is_none());
    }

    #[test]
    fn the_policy_defaults_to_value_and_can_be_cheapest() {
        let default = ServeConfig::parse("", "t.toml").map(|c| c.routing.policy);
        assert_eq!(default.ok(), Some(Policy::Value));
        let cheapest = ServeConfig::parse("[routing]\npolicy = \"cheapest\"", "t.toml")
            .map(|c| c.routing.policy);
        assert_eq!(cheapest.ok(), Some(Policy::Cheapest));
    }

    #[test]
    fn a_typo_is_an_error_naming_the_key() {
        let err = ServeConfig::parse("[server]\nlisten_addr = \"127.0.0.1:1\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_addr"), "{err}");
        assert!(err.contains("t.toml"), "{err}");
    }

    #[test]
    fn bad_values_are_errors() {
        for (text, key) in [
            (
                "[routing]\nmodes = { fast = 1.5 }\ndefault_mode = \"fast\"",
                "routing.modes.fast",
            ),
            (
                "[routing]\ndefault_mode = \"cheap\"",
                "routing.default_mode",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"ftp://x\"\nmodels = [\"m\"]",
                "base_url",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\nmodels = []",
                "models",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\nmodels = [\"m\"]\n\
                 [[upstreams]]\nname = \"a\"\nbase_url = \"http://y\"\nmodels = [\"m\"]",
                "used twice",
            ),
            (
                "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\nmodels = [\"router-x\"]",
                "router",
            ),
            ("[server]\nmax_body_bytes = 0", "server.max_body_bytes"),
            ("[routing]\npolicy = \"cheap\"", "cheapest"),
            ("[routing]\nexplore = 1.5", "routing.explore"),
            ("[routing]\nexplore = -0.1", "routing.explore"),
            ("[routing]\nexplore = nan", "routing.explore"),
            ("[routing]\nexplore_band = 2.0", "routing.explore_band"),
        ] {
            let err = ServeConfig::parse(text, "t").unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn keys_are_read_from_the_environment_and_never_printed() {
        // Setting variables needs `unsafe` in edition 2024: use one nobody sets, check the
        // unset path here; the integration tests set keys on a child process.
        let var = "ROUTER_SERVE_TEST_KEY_NEVER_SET";
        let text = format!(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\napi_key_env = \"{var}\"\nmodels = {{ m = \"upstream-m\" }}"
        );
        let config = ServeConfig::parse(&text, "t").unwrap();
        let (upstream, name) = config.upstream_for("m").unwrap();
        assert_eq!(name, "upstream-m");
        assert!(!upstream.has_credentials());
        let key = ApiKey::new("sk-secret".into());
        assert!(!format!("{key:?}").contains("sk-secret"));
    }
}
