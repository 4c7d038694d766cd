//! `[[upstreams]]` (one endpoint each: where it is, its key, timeouts, retries, health and load
//! signals) and `[pools.MODEL]` (how a request picks among the upstreams serving one model).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::ApiKey;

/// How the key is sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY` (OpenAI, vLLM, Ollama, NVIDIA, most servers).
    Bearer,
    /// `api-key: KEY` (Azure OpenAI).
    ApiKey,
}

/// Model names an upstream serves: a list (same name upstream) or a table router name →
/// upstream name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModelMap {
    Same(Vec<String>),
    Renamed(BTreeMap<String, String>),
}

/// One `[[upstreams]]` table: an OpenAI-compatible endpoint. Several tables may serve the same
/// model; together they are that model's pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// OpenAI-compatible base URL, ending before `/chat/completions` (e.g.
    /// `https://api.openai.com/v1`, `http://localhost:11434/v1`).
    pub base_url: String,
    /// Environment variable holding the key; unset for servers that need none.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_auth")]
    pub auth: AuthStyle,
    /// Extra query parameters (Azure's `api-version`).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    pub models: ModelMap,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Until the response headers arrive.
    #[serde(default = "default_first_byte_timeout_ms")]
    pub first_byte_timeout_ms: u64,
    /// The whole exchange, body included.
    #[serde(default = "default_total_timeout_ms")]
    pub total_timeout_ms: u64,
    /// Longest silence between two stream chunks.
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    /// Retries on this upstream (when no other endpoint of the pool is left to try) before
    /// falling back to the next model.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// A `retry-after` longer than this is not waited for: the next endpoint or model is tried
    /// instead.
    #[serde(default = "default_retry_after_max_ms")]
    pub retry_after_max_ms: u64,
    /// Share of a `weighted` pool's requests (relative to the other endpoints' weights).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Requests in flight at which the endpoint counts as saturated (unset: never, except by
    /// its scraped load in a `load_aware` pool).
    #[serde(default)]
    pub max_outstanding: Option<u64>,
    /// Consecutive failures (connect errors, timeouts, 5xx, 401/403/404, broken bodies) that
    /// eject the endpoint.
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    /// First ejection's length; each further one doubles it, up to `cooldown_max_ms`. After
    /// it, one probe request decides whether the endpoint is back.
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    #[serde(default = "default_cooldown_max_ms")]
    pub cooldown_max_ms: u64,
    /// Active health checks: `GET {base_url}/models` every this many ms (0: passive only).
    #[serde(default)]
    pub probe_interval_ms: u64,
    /// Prometheus endpoint scraped by `load_aware` pools (default: `/metrics` at the base
    /// URL's host).
    #[serde(default)]
    pub metrics_url: Option<String>,
    #[serde(default = "default_scrape_interval_ms")]
    pub scrape_interval_ms: u64,
    /// Gauges of waiting requests, first present wins (vLLM, SGLang, TGI by default).
    #[serde(default = "default_queue_metrics")]
    pub queue_metrics: Vec<String>,
    /// Gauges of KV-cache use as a 0–1 fraction, first present wins.
    #[serde(default = "default_kv_cache_metrics")]
    pub kv_cache_metrics: Vec<String>,
    /// The key, read from `api_key_env` at load time.
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
}

impl UpstreamConfig {
    /// Router model name → upstream model name.
    pub fn model_map(&self) -> BTreeMap<String, String> {
        match &self.models {
            ModelMap::Same(names) => names.iter().map(|n| (n.clone(), n.clone())).collect(),
            ModelMap::Renamed(map) => map.clone(),
        }
    }

    /// The name this upstream knows router model `model` by, if it serves it.
    pub fn serves(&self, model: &str) -> Option<String> {
        match &self.models {
            ModelMap::Same(names) => names.iter().any(|n| n == model).then(|| model.to_owned()),
            ModelMap::Renamed(map) => map.get(model).cloned(),
        }
    }

    /// Whether requests can be sent: it needs no key, or its key is set.
    pub fn has_credentials(&self) -> bool {
        self.api_key_env.is_none() || self.api_key.is_some()
    }

    /// `metrics_url`, or `/metrics` at the base URL's scheme, host and port.
    pub fn metrics_url(&self) -> String {
        if let Some(url) = &self.metrics_url {
            return url.clone();
        }
        match reqwest::Url::parse(&self.base_url) {
            Ok(mut url) => {
                url.set_path("/metrics");
                url.set_query(None);
                url.to_string()
            }
            Err(_) => format!("{}/metrics", self.base_url.trim_end_matches('/')),
        }
    }
}

/// How a pool picks an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The fewest requests in flight from this replica (per unit of `weight`).
    LeastOutstanding,
    /// The lowest moving average of time to first byte × (requests in flight + 1).
    LatencyEwma,
    /// At random in proportion to `weight`.
    Weighted,
    /// In turn (the baseline the benchmark compares against).
    RoundRobin,
    /// The endpoints' own queue and KV-cache gauges, scraped from `/metrics`: saturated ones
    /// filtered out, the rest scored (plus prefix-cache affinity when on).
    LoadAware,
}

/// `[pools.MODEL]`: how requests to one model are spread over the upstreams serving it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// `load_aware`: a scraped queue (plus what this replica sent since the scrape) at or over
    /// this saturates the endpoint.
    #[serde(default = "default_queue_threshold")]
    pub queue_threshold: f64,
    /// `load_aware`: KV-cache use (0–1) at or over this saturates the endpoint.
    #[serde(default = "default_kv_cache_threshold")]
    pub kv_cache_threshold: f64,
    /// `load_aware` score weights: low queue, low KV-cache use, prefix already cached.
    #[serde(default = "default_one")]
    pub queue_weight: f64,
    #[serde(default = "default_one")]
    pub kv_cache_weight: f64,
    #[serde(default = "default_prefix_weight")]
    pub prefix_weight: f64,
    /// `load_aware`: send requests sharing a prompt prefix to the endpoint that served it.
    #[serde(default)]
    pub prefix_affinity: bool,
    /// Characters per hashed prefix block.
    #[serde(default = "default_prefix_block_chars")]
    pub prefix_block_chars: usize,
    /// Blocks hashed per prompt at most (the rest of a long prompt is ignored).
    #[serde(default = "default_prefix_max_blocks")]
    pub prefix_max_blocks: usize,
    /// Block hashes remembered per endpoint (least recently used dropped first): about what
    /// its prefix cache holds, in blocks.
    #[serde(default = "default_prefix_entries")]
    pub prefix_entries: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("every pool key has a default"))
    }
}

type Invalid = (String, String);

/// The `[[upstreams]]`: unique names, http(s) URLs, positive timeouts, sane health and load
/// settings; an error is (key, message).
pub(super) fn check_upstreams(upstreams: &[UpstreamConfig]) -> Result<(), Invalid> {
    let mut names = BTreeSet::new();
    for (i, u) in upstreams.iter().enumerate() {
        let key = |field: &str| format!("upstreams[{i}].{field}");
        if u.name.is_empty() {
            return Err((key("name"), "must not be empty".into()));
        }
        if !names.insert(u.name.clone()) {
            return Err((key("name"), format!("`{}` is used twice", u.name)));
        }
        check_url(&u.base_url).map_err(|m| (key("base_url"), m))?;
        if let Some(url) = &u.metrics_url {
            check_url(url).map_err(|m| (key("metrics_url"), m))?;
        }
        for (field, value) in [
            ("connect_timeout_ms", u.connect_timeout_ms),
            ("first_byte_timeout_ms", u.first_byte_timeout_ms),
            ("total_timeout_ms", u.total_timeout_ms),
            ("stream_idle_timeout_ms", u.stream_idle_timeout_ms),
            ("cooldown_ms", u.cooldown_ms),
            ("scrape_interval_ms", u.scrape_interval_ms),
            ("eject_after", u64::from(u.eject_after)),
            ("max_outstanding", u.max_outstanding.unwrap_or(1)),
        ] {
            if value == 0 {
                return Err((key(field), "must be positive".into()));
            }
        }
        if u.cooldown_max_ms < u.cooldown_ms {
            return Err((
                key("cooldown_max_ms"),
                "must be at least cooldown_ms".into(),
            ));
        }
        if !(u.weight.is_finite() && u.weight > 0.0) {
            return Err((key("weight"), format!("must be positive, got {}", u.weight)));
        }
        if u.queue_metrics.is_empty() || u.kv_cache_metrics.is_empty() {
            return Err((
                key("queue_metrics"),
                "queue_metrics and kv_cache_metrics must name at least one gauge".into(),
            ));
        }
        let map = u.model_map();
        if map.is_empty() {
            return Err((key("models"), "lists no model".into()));
        }
        if let Some(model) = map.keys().find(|m| m.starts_with("router")) {
            return Err((
                key("models"),
                format!("`{model}`: names starting with `router` are the router's own"),
            ));
        }
    }
    Ok(())
}

/// `[pools]`: each names a served model, with sane thresholds and weights.
pub(super) fn check_pools(
    pools: &BTreeMap<String, PoolConfig>,
    upstreams: &[UpstreamConfig],
) -> Result<(), Invalid> {
    let served: BTreeSet<String> = upstreams
        .iter()
        .flat_map(|u| u.model_map().into_keys())
        .collect();
    for (model, p) in pools {
        let key = |field: &str| format!("pools.{model}.{field}");
        if !served.contains(model) {
            return Err((
                format!("pools.{model}"),
                format!("`{model}` is served by no upstream"),
            ));
        }
        for (field, v) in [
            ("queue_threshold", p.queue_threshold),
            ("queue_weight", p.queue_weight),
            ("kv_cache_weight", p.kv_cache_weight),
            ("prefix_weight", p.prefix_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err((
                    key(field),
                    format!("must be a non-negative number, got {v}"),
                ));
            }
        }
        if !(p.kv_cache_threshold > 0.0 && p.kv_cache_threshold <= 1.0) {
            return Err((key("kv_cache_threshold"), "must be within (0, 1]".into()));
        }
        if p.prefix_affinity && p.strategy != Strategy::LoadAware {
            return Err((
                key("prefix_affinity"),
                "is a load_aware scorer: set strategy = \"load_aware\"".into(),
            ));
        }
        for (field, v) in [
            ("prefix_block_chars", p.prefix_block_chars),
            ("prefix_max_blocks", p.prefix_max_blocks),
            ("prefix_entries", p.prefix_entries),
        ] {
            if v == 0 {
                return Err((key(field), "must be positive".into()));
            }
        }
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        Ok(u) => Err(format!("scheme `{}` is not http or https", u.scheme())),
        Err(e) => Err(format!("`{url}`: {e}")),
    }
}

fn default_auth() -> AuthStyle {
    AuthStyle::Bearer
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_first_byte_timeout_ms() -> u64 {
    60_000
}
fn default_total_timeout_ms() -> u64 {
    600_000
}
fn default_stream_idle_timeout_ms() -> u64 {
    60_000
}
fn default_max_retries() -> u32 {
    1
}
fn default_backoff_base_ms() -> u64 {
    200
}
fn default_backoff_max_ms() -> u64 {
    5_000
}
fn default_retry_after_max_ms() -> u64 {
    10_000
}
fn default_weight() -> f64 {
    1.0
}
fn default_eject_after() -> u32 {
    3
}
fn default_cooldown_ms() -> u64 {
    5_000
}
fn default_cooldown_max_ms() -> u64 {
    300_000
}
fn default_scrape_interval_ms() -> u64 {
    200
}
fn default_queue_metrics() -> Vec<String> {
    [
        "vllm:num_requests_waiting",
        "sglang:num_queue_reqs",
        "tgi_queue_size",
    ]
    .map(str::to_owned)
    .to_vec()
}
fn default_kv_cache_metrics() -> Vec<String> {
    [
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "sglang:token_usage",
    ]
    .map(str::to_owned)
    .to_vec()
}
fn default_strategy() -> Strategy {
    Strategy::LeastOutstanding
}
fn default_queue_threshold() -> f64 {
    5.0
}
fn default_kv_cache_threshold() -> f64 {
    0.8
}
fn default_one() -> f64 {
    1.0
}
fn default_prefix_weight() -> f64 {
    3.0
}
fn default_prefix_block_chars() -> usize {
    64
}
fn default_prefix_max_blocks() -> usize {
    256
}
fn default_prefix_entries() -> usize {
    16_384
}

#[cfg(test)]
mod tests {
    use crate::config::{ServeConfig, Strategy};

    const TWO: &str = "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x:8000/v1\"\nmodels = [\"m\"]\n\
                       [[upstreams]]\nname = \"b\"\nbase_url = \"http://y:8000/v1\"\nmodels = { m = \"org/m\" }\n";

    #[test]
    fn a_model_served_by_several_upstreams_is_a_pool() {
        let config = ServeConfig::parse(TWO, "t").unwrap();
        let pool = config.upstreams_for("m");
        assert_eq!(pool.len(), 2);
        assert_eq!(pool[1].1, "org/m");
        assert_eq!(config.pool_config("m").strategy, Strategy::LeastOutstanding);
        assert_eq!(pool[0].0.metrics_url(), "http://x:8000/metrics");
        let text = format!("{TWO}[pools.m]\nstrategy = \"load_aware\"\nprefix_affinity = true\n");
        let config = ServeConfig::parse(&text, "t").unwrap();
        assert_eq!(config.pool_config("m").strategy, Strategy::LoadAware);
    }

    #[test]
    fn bad_pool_and_endpoint_settings_are_errors_naming_the_key() {
        for (extra, key) in [
            ("[pools.other]\nstrategy = \"weighted\"", "pools.other"),
            ("[pools.m]\nstrategy = \"fastest\"", "fastest"),
            (
                "[pools.m]\nprefix_affinity = true",
                "pools.m.prefix_affinity",
            ),
            (
                "[pools.m]\nstrategy = \"load_aware\"\nkv_cache_threshold = 1.5",
                "pools.m.kv_cache_threshold",
            ),
            ("[pools.m]\nqueue_weight = -1", "pools.m.queue_weight"),
            (
                "[pools.m]\nprefix_block_chars = 0",
                "pools.m.prefix_block_chars",
            ),
        ] {
            let err = ServeConfig::parse(&format!("{TWO}{extra}"), "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        let endpoint = |extra: &str| {
            format!(
                "[[upstreams]]\nname = \"a\"\nbase_url = \"http://x\"\nmodels = [\"m\"]\n{extra}"
            )
        };
        for (extra, key) in [
            ("weight = 0", "upstreams[0].weight"),
            ("eject_after = 0", "upstreams[0].eject_after"),
            (
                "cooldown_ms = 10\ncooldown_max_ms = 5",
                "upstreams[0].cooldown_max_ms",
            ),
            (
                "metrics_url = \"ftp://x/metrics\"",
                "upstreams[0].metrics_url",
            ),
            ("queue_metrics = []", "upstreams[0].queue_metrics"),
            ("max_outstanding = 0", "upstreams[0].max_outstanding"),
        ] {
            let err = ServeConfig::parse(&endpoint(extra), "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
    }
}
