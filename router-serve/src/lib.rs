//! `router-serve`: the OpenAI-compatible routing endpoint. Applications change only their base
//! URL and model name (`router`, `router-<mode>`); each request goes to the cheapest model the
//! router predicts is within the mode's quality band of the best, is forwarded to that model's
//! upstream (streaming too), falls back on failure and is recorded in the decision log.
//!
//! The request path reads off the folders: [`http`] (the table of paths, thin handlers, the
//! one error → HTTP table) → [`endpoints`] (`chat`: admit → plan → reserve → forward → respond
//! → settle → record) → [`tenancy`] (who, what they may do and spend) → [`routing`] (embed →
//! predict → apply the band) → [`upstream`] (forward, retry, fall back, relay streams) →
//! [`store`] (the ledger) and [`observe`] (decision log, metrics). [`api`] holds the OpenAI
//! shapes, [`util`] the few helpers every layer shares. `docs/serving.md` has the table.
//!
//! ```no_run
//! use router_serve::{Server, config::ServeConfig, state::CliOverrides};
//! # async fn run() -> Result<(), router_serve::ServeError> {
//! let config = ServeConfig::default_config()?;
//! let server = Server::start(config, None, CliOverrides::default()).await?;
//! println!("listening on {}", server.addr());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod config;
pub mod endpoints;
pub mod http;
pub mod observe;
pub mod routing;
pub mod state;
pub mod store;
pub mod tenancy;
pub mod upstream;
pub mod util;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, ServeConfig};
use crate::observe::log::{DecisionLog, LogError};
use crate::observe::metrics::Metrics;
use crate::state::{AppState, CliOverrides, Engine, LoadError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] crate::store::OpenError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("startup task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Loads the router, opens the logs, binds `config.server.listen` and serves until
    /// [`Server::shutdown`]. `config_path` is re-read on reload (`None`: the built-in default);
    /// `cli` settings win over the file, also after reloads.
    pub async fn start(
        config: ServeConfig,
        config_path: Option<PathBuf>,
        cli: CliOverrides,
    ) -> Result<Self, ServeError> {
        let metrics = Arc::new(Metrics::new()?);
        let log = DecisionLog::open(&config.log)?;
        let store = crate::store::open(&config, metrics.clone()).await?;
        let listen = config.server.listen;
        let grace = Duration::from_millis(config.server.shutdown_grace_ms);
        let watch = Duration::from_millis(config.server.watch_interval_ms);
        let engine_metrics = metrics.clone();
        let engine =
            tokio::task::spawn_blocking(move || Engine::load(config, None, engine_metrics))
                .await??;
        tracing::info!(
            router = %engine.router.manifest.name,
            models = engine.router.n_models(),
            routable = engine.routable.iter().filter(|r| **r).count(),
            encoder = %engine.router.manifest.encoder.id,
            precision = %engine.encoder.precision(),
            kernel = engine.encoder.int8_kernel().map_or("-", |k| k.as_str()),
            "router loaded"
        );
        for u in &engine.config.upstreams {
            if !u.has_credentials() {
                tracing::warn!(
                    upstream = %u.name,
                    variable = u.api_key_env.as_deref().unwrap_or(""),
                    "no API key: chat requests to this upstream will fail until it is set"
                );
            }
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
        let state = Arc::new(AppState::new(engine, metrics, log, store, config_path, cli));
        let (stop, stopped) = oneshot::channel::<()>();
        let app = http::routes::app(state.clone());
        let header_timeout =
            Duration::from_millis(state.engine().config.server.header_read_timeout_ms);
        let watcher = (!watch.is_zero()).then(|| tokio::spawn(watch_files(state.clone(), watch)));
        let hangup = tokio::spawn(reload_on_sighup(state.clone()));
        let serve_state = state.clone();
        let task = tokio::spawn(async move {
            let (drained_tx, drained_rx) = oneshot::channel::<()>();
            let server = http::server::serve(listener, app, header_timeout, async move {
                let _ = stopped.await;
                let _ = drained_tx.send(());
            });
            let serving = tokio::spawn(server);
            let _ = drained_rx.await;
            tracing::info!("shutting down: finishing requests in flight");
            // Stop accepting, then wait (bounded) for in-flight requests and streams.
            if tokio::time::timeout(grace, serving).await.is_err() {
                tracing::warn!("shutdown grace period over; dropping open connections");
            }
            serve_state.tasks.close();
            if tokio::time::timeout(grace, serve_state.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("shutdown grace period over; streams still open were cut");
            }
            if let Some(w) = watcher {
                w.abort();
            }
            hangup.abort();
            let log_state = serve_state.clone();
            let _ = tokio::task::spawn_blocking(move || log_state.log.close()).await;
        });
        tracing::info!(%addr, "listening");
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
            task,
        })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops accepting, finishes requests and streams in flight (up to
    /// `server.shutdown_grace_ms`) and flushes the logs.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops by itself (it does not, short of a panic) or `signal`
    /// resolves, then shuts down gracefully.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}

/// Reloads when the config file or the router artifact changes on disk. A change that fails
/// to load is not retried until the files change again.
async fn watch_files(state: Arc<AppState>, every: Duration) {
    let mut rejected: Option<Vec<(PathBuf, Option<std::time::SystemTime>)>> = None;
    loop {
        tokio::time::sleep(every).await;
        let engine = state.engine();
        if !engine.files_changed() {
            continue;
        }
        let now: Vec<_> = engine
            .watched
            .iter()
            .map(|(p, _)| {
                (
                    p.clone(),
                    std::fs::metadata(p).and_then(|m| m.modified()).ok(),
                )
            })
            .collect();
        if rejected.as_ref() == Some(&now) {
            continue;
        }
        // A file still being written (an editor's two writes, a copy) is read again later.
        if !settled(
            engine.config.source.as_deref(),
            every.min(Duration::from_millis(250)),
        )
        .await
        {
            continue;
        }
        rejected = state.reload("watch").await.is_err().then_some(now);
    }
}

/// Whether `path` reads the same twice, `pause` apart (no file: nothing to wait for).
async fn settled(path: Option<&std::path::Path>, pause: Duration) -> bool {
    let Some(path) = path else {
        return true;
    };
    let first = tokio::fs::read(path).await.ok();
    tokio::time::sleep(pause).await;
    let second = tokio::fs::read(path).await.ok();
    first.is_some() && first == second
}

#[cfg(unix)]
async fn reload_on_sighup(state: Arc<AppState>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /admin/reload");
        return;
    };
    while hangup.recv().await.is_some() {
        let _ = state.reload("sighup").await;
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_state: Arc<AppState>) {}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
