//! What a request runs against. An [`Engine`] is one loaded configuration and router artifact
//! (encoder thread, upstream clients, routable set); [`AppState`] holds the current engine
//! behind an atomic pointer, so a reload builds and validates a whole new engine and swaps it
//! in while requests in flight finish on the old one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use router_core::artifact::Router;
use router_core::device::parse_device;
use router_core::encoder::Encoder;
use tokio_util::sync::DropGuard;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, ServeConfig};
use crate::observe::log::DecisionLog;
use crate::observe::metrics::Metrics;
use crate::routing::batcher::{Batcher, Prediction};
use crate::routing::cache::DecisionCache;
use crate::routing::explore::Explorer;
use crate::store::Store;
use crate::upstream::pool::Pools;

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("router artifact {path}: {source}")]
    Router {
        path: PathBuf,
        #[source]
        source: Box<router_core::Error>,
    },
    #[error("encoder: {0}")]
    Encoder(#[source] Box<router_core::Error>),
    #[error("{0}")]
    Invalid(String),
    #[error("starting the encoder thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("building the HTTP client for upstream `{name}`: {source}")]
    Client {
        name: String,
        #[source]
        source: reqwest::Error,
    },
}

/// One loaded configuration and router.
pub struct Engine {
    pub config: ServeConfig,
    pub router: Arc<Router>,
    pub encoder: Arc<Encoder>,
    batcher: Batcher,
    /// Predictions by exact embedded text.
    pub cache: DecisionCache,
    pub metrics: Arc<Metrics>,
    /// Each served model's pool of upstream endpoints.
    pub pools: Pools,
    /// Stops the endpoints' scrapes and active checks when the engine is dropped.
    _background: Option<DropGuard>,
    /// Per artifact model: the policy may choose it.
    pub routable: Vec<bool>,
    /// Served when the router fails.
    pub fail_open_model: String,
    /// Draws `routing.explore`'s share of decisions from the band.
    pub explorer: Explorer,
    /// Modification times of the files this engine was built from.
    pub watched: Vec<(PathBuf, Option<SystemTime>)>,
}

impl Engine {
    /// Builds an engine; blocking (loads weights). The encoder of `previous` is reused when
    /// the new artifact names the same one on the same device.
    pub fn load(
        config: ServeConfig,
        previous: Option<&Engine>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, LoadError> {
        let device =
            parse_device(&config.server.device).map_err(|e| LoadError::Encoder(Box::new(e)))?;
        let dir = config.server.router.clone();
        let router = Router::load_on(&dir, &device).map_err(|source| LoadError::Router {
            path: dir.clone(),
            source: Box::new(source),
        })?;
        let encoder = match previous {
            Some(p)
                if p.router.manifest.encoder == router.manifest.encoder
                    && p.config.server.device == config.server.device =>
            {
                p.encoder.clone()
            }
            _ => Arc::new(
                router
                    .load_encoder(&device)
                    .map_err(|e| LoadError::Encoder(Box::new(e)))?,
            ),
        };
        let router = Arc::new(router);

        let routable = routable_models(&config, &router)?;
        check_prices(&config, &router)?;
        let fail_open_model = fail_open_model(&config, &router, &routable)?;
        let clients = upstream_clients(&config)?;
        let pools = Pools::build(&config, &clients, &metrics);
        let background = crate::upstream::scrape::start(&pools);
        let batcher = Batcher::spawn(
            encoder.clone(),
            router.clone(),
            config.batching.max_batch,
            Duration::from_micros(config.batching.max_wait_us),
            config.encoder_workers(),
            metrics.clone(),
        )
        .map_err(LoadError::Thread)?;
        let watched = watched_files(&config);
        let cache = DecisionCache::new(config.batching.decision_cache);
        let explorer = Explorer::new(
            config.routing.explore,
            config.routing.explore_band,
            uuid::Uuid::new_v4().as_u64_pair().0,
        );
        Ok(Self {
            config,
            router,
            encoder,
            batcher,
            cache,
            metrics,
            pools,
            _background: background,
            routable,
            fail_open_model,
            explorer,
            watched,
        })
    }

    /// Predicts every model's quality for a prompt's `tokens` and `lexical` features on the
    /// encoder thread.
    pub async fn predict(
        &self,
        tokens: router_core::encoder::TokenizedText,
        lexical: Vec<f32>,
    ) -> Result<Vec<f32>, String> {
        let rx = self.batcher.submit(tokens, lexical)?;
        let prediction: Prediction = rx
            .await
            .map_err(|_| "the encoder thread dropped the request".to_owned())?;
        prediction
    }

    /// The counterfactual of the savings figures: the routable model with the best mean
    /// training score (what a company sends everything to without a router).
    pub fn baseline_model(&self) -> Option<&router_core::models::ModelInfo> {
        self.router
            .manifest
            .models
            .iter()
            .zip(&self.routable)
            .filter(|(_, r)| **r)
            .map(|(m, _)| m)
            .max_by(|a, b| a.train_mean_score.total_cmp(&b.train_mean_score))
    }

    /// What `model` costs: `[prices]` first, else the router artifact's price.
    pub fn price_of(&self, model: &str) -> Option<crate::config::PriceConfig> {
        self.config.prices.get(model).copied().or_else(|| {
            self.router
                .manifest
                .model(model)
                .map(|m| crate::config::PriceConfig {
                    input_per_million: m.input_price_per_1m,
                    output_per_million: m.output_price_per_1m,
                    cached_input_per_million: None,
                })
        })
    }

    /// Whether any watched file changed since this engine was built.
    pub fn files_changed(&self) -> bool {
        self.watched
            .iter()
            .any(|(path, time)| modified(path) != *time)
    }
}

/// Per artifact model: routable (not dominated) and served by an upstream that can be called
/// (with credentials, unless no upstream has any).
fn routable_models(config: &ServeConfig, router: &Router) -> Result<Vec<bool>, LoadError> {
    let any_credentials = config.upstreams.iter().any(|u| u.has_credentials());
    let artifact_routable = router.routable();
    let routable: Vec<bool> = router
        .manifest
        .models
        .iter()
        .zip(&artifact_routable)
        .map(|(m, &ok)| {
            ok && config
                .upstreams_for(&m.name)
                .iter()
                .any(|(u, _)| u.has_credentials() || !any_credentials)
        })
        .collect();
    if !routable.iter().any(|&r| r) {
        return Err(LoadError::Invalid(format!(
            "no model of router {} has an upstream: add the models ({}) to an [[upstreams]] table",
            config.server.router.display(),
            router.model_names().join(", ")
        )));
    }
    Ok(routable)
}

/// With budgets or a ledger, every served model needs a price (`[prices]` or the artifact's):
/// a model without one would be answered for free.
fn check_prices(config: &ServeConfig, router: &Router) -> Result<(), LoadError> {
    if config.tenants.budgets.is_empty() && !config.has_ledger() {
        return Ok(());
    }
    let unpriced: std::collections::BTreeSet<String> = config
        .upstreams
        .iter()
        .flat_map(|u| u.model_map().into_keys())
        .filter(|m| !config.prices.contains_key(m) && router.manifest.model(m).is_none())
        .collect();
    if unpriced.is_empty() {
        return Ok(());
    }
    Err(LoadError::Invalid(format!(
        "budgets or a ledger are configured, and these served models have no price: {} \
         (add [prices.\"MODEL\"] input_per_million = …, output_per_million = …)",
        Vec::from_iter(unpriced).join(", ")
    )))
}

/// `server.fail_open_model`, checked, else the routable model with the best training score.
fn fail_open_model(
    config: &ServeConfig,
    router: &Router,
    routable: &[bool],
) -> Result<String, LoadError> {
    let name = match &config.server.fail_open_model {
        Some(name) => {
            if config.upstream_for(name).is_none() {
                return Err(LoadError::Invalid(format!(
                    "server.fail_open_model `{name}` is served by no upstream"
                )));
            }
            name.clone()
        }
        None => router
            .manifest
            .models
            .iter()
            .zip(routable)
            .filter(|(_, r)| **r)
            .max_by(|(a, _), (b, _)| a.train_mean_score.total_cmp(&b.train_mean_score))
            .map(|(m, _)| m.name.clone())
            .unwrap_or_default(),
    };

    Ok(name)
}

/// One HTTP client per upstream.
fn upstream_clients(config: &ServeConfig) -> Result<HashMap<String, reqwest::Client>, LoadError> {
    let mut clients = HashMap::new();
    for u in &config.upstreams {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(u.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|source| LoadError::Client {
                name: u.name.clone(),
                source,
            })?;
        clients.insert(u.name.clone(), client);
    }
    Ok(clients)
}

fn watched_files(config: &ServeConfig) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut files = vec![
        config
            .server
            .router
            .join(router_core::artifact::MANIFEST_FILE),
        config.server.router.join(router_core::artifact::HEAD_FILE),
    ];
    files.extend(config.source.clone());
    files
        .into_iter()
        .map(|p| {
            let t = modified(&p);
            (p, t)
        })
        .collect()
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Settings given on the command line; they win over the config file, also after a reload.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    pub listen: Option<std::net::SocketAddr>,
    pub router: Option<PathBuf>,
    pub device: Option<String>,
}

impl CliOverrides {
    pub fn apply(&self, config: &mut ServeConfig) {
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(router) = &self.router {
            config.server.router = router.clone();
        }
        if let Some(device) = &self.device {
            config.server.device = device.clone();
        }
    }
}

/// Reads the configuration: `path`, else the built-in default; then the CLI overrides.
pub fn read_config(path: Option<&Path>, cli: &CliOverrides) -> Result<ServeConfig, ConfigError> {
    let mut config = match path {
        Some(p) => ServeConfig::from_file(p)?,
        None => ServeConfig::default_config()?,
    };
    cli.apply(&mut config);
    Ok(config)
}

/// Shared by every request.
pub struct AppState {
    engine: ArcSwap<Engine>,
    pub metrics: Arc<Metrics>,
    pub log: DecisionLog,
    /// Budgets, rate limits, keys, the ledger and the feedback index (embedded or shared).
    pub store: Arc<dyn Store>,
    /// Streams still being relayed (graceful shutdown waits for them).
    pub tasks: TaskTracker,
    config_path: Option<PathBuf>,
    /// The configuration a reload starts from when there is no file to re-read.
    initial: ServeConfig,
    cli: CliOverrides,
    reload_lock: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn new(
        engine: Engine,
        metrics: Arc<Metrics>,
        log: DecisionLog,
        store: Arc<dyn Store>,
        config_path: Option<PathBuf>,
        cli: CliOverrides,
    ) -> Self {
        Self {
            initial: engine.config.clone(),
            engine: ArcSwap::from_pointee(engine),
            metrics,
            log,
            store,
            tasks: TaskTracker::new(),
            config_path,
            cli,
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The engine requests run against now.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.load_full()
    }

    /// Re-reads the config file (without one, reuses the configuration the server started
    /// with) and the router artifact, validates them into a new engine and swaps it in; on any
    /// error the old engine keeps serving. `trigger` labels the metric.
    pub async fn reload(&self, trigger: &'static str) -> Result<ReloadReport, String> {
        let _guard = self.reload_lock.lock().await;
        let current = self.engine();
        let path = self.config_path.clone();
        let cli = self.cli.clone();
        let initial = self.initial.clone();
        let metrics = self.metrics.clone();
        let result = tokio::task::spawn_blocking(move || {
            let config = match path {
                Some(path) => read_config(Some(&path), &cli)?,
                None => initial,
            };
            Engine::load(config, Some(&current), metrics)
        })
        .await
        .map_err(|e| format!("reload task failed: {e}"))
        .and_then(|r| r.map_err(|e| e.to_string()))
        .and_then(|engine| {
            let lost = self.engine().config.tenants.downgrades_in(&engine.config.tenants);
            if lost.is_empty() {
                Ok(engine)
            } else {
                Err(format!(
                    "the new configuration lowers access control: {}; set auth.allow_auth_downgrade = true in it if that is meant",
                    lost.join("; ")
                ))
            }
        });
        match result {
            Ok(engine) => {
                let old = self.engine();
                if engine.config.server.listen != old.config.server.listen {
                    tracing::warn!(
                        "server.listen changed; the new address takes effect only after a restart"
                    );
                }
                if engine.config.tenants.auth.ledger != old.config.tenants.auth.ledger
                    || engine.config.log.dir != old.config.log.dir
                {
                    tracing::warn!(
                        "auth.ledger or log.dir changed; the new files are used only after a restart"
                    );
                }
                let report = ReloadReport {
                    router: engine.router.manifest.name.clone(),
                    router_created_at: engine.router.manifest.created_at.clone(),
                    encoder_reused: Arc::ptr_eq(&engine.encoder, &old.encoder),
                };
                self.engine.store(Arc::new(engine));
                self.metrics
                    .reloads
                    .with_label_values(&[trigger, "ok"])
                    .inc();
                tracing::info!(trigger, router = %report.router, "reloaded");
                Ok(report)
            }
            Err(message) => {
                self.metrics
                    .reloads
                    .with_label_values(&[trigger, "error"])
                    .inc();
                tracing::error!(trigger, error = %message, "reload rejected; the old config keeps serving");
                Err(message)
            }
        }
    }
}

/// What a successful reload loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub router: String,
    pub router_created_at: String,
    pub encoder_reused: bool,
}
