//! The shared store: every replica sees the same budgets, rate limits, keys, ledger and
//! feedback index.
//!
//! - Redis holds what changes on every request: budget counters (reserve and settle are Lua
//!   scripts, atomic across replicas), rate-limit buckets and the feedback index. It is a
//!   cache of the truth: emptied, its budget counters are rebuilt from PostgreSQL before use.
//! - PostgreSQL holds the truth: one ledger row per settled request (idempotent on request
//!   id) and the admin-created keys, re-read every `key_refresh_ms`.
//! - A local spool keeps ledger rows PostgreSQL could not take, replayed when it is back.
//! - While Redis is unreachable, `on_store_error` refuses (503) or enforces this replica's
//!   share of every limit ([`Embedded`] in memory, limits ÷ `replicas`).

mod budgets;
mod counters;
mod postgres;
mod spool;
mod writer;

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use self::budgets::PendingSettle;
use self::counters::Counters;
use self::postgres::Pg;
use self::spool::Spool;
use self::writer::LedgerWriter;
use crate::config::ServeConfig;
use crate::config::store::{OnStoreError, StoreConfig};
use crate::observe::metrics::Metrics;
use crate::store::answered::Answered;
use crate::store::embedded::Embedded;
use crate::store::ledger::{GroupBy, SpendGroup, SpendRow, StoredKey};
use crate::store::{OpenError, RateVerdict, Store, StoreError};
use crate::tenancy::budget::{BudgetHit, BudgetState, Reservation, Status};
use crate::tenancy::config::BudgetConfig;
use crate::tenancy::identity::{Identity, LiveKeys};

/// How often the spool and queued settlements are retried.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// After a failed ledger write, rows go straight to the spool this long.
const PG_BACKOFF: Duration = Duration::from_secs(1);

/// Redis + PostgreSQL, shared by every replica.
pub struct Shared {
    config: StoreConfig,
    redis: Counters,
    pg: Arc<Pg>,
    /// Commits ledger rows in groups.
    writer: LedgerWriter,
    spool: Arc<Spool>,
    /// Admin-created keys as last read from PostgreSQL (plus those created here since).
    keys: LiveKeys,
    /// This replica's share of the limits, and the feedback index, while Redis is away.
    local: Embedded,
    /// Settlements Redis did not take yet.
    pending: Mutex<Vec<PendingSettle>>,
    /// Until when ledger rows skip PostgreSQL (it just failed).
    pg_down_until: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// Connects, applies the migrations, loads the keys and starts the background work (key
    /// refresh, spool replay, queued settlements). Redis may be down; PostgreSQL must answer.
    pub async fn open(config: &ServeConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, OpenError> {
        let sc = config.store.clone();
        let timeout = Duration::from_millis(sc.timeout_ms);
        let url = |u: &Option<crate::config::store::Url>| {
            u.as_ref()
                .map(|u| u.expose().to_owned())
                .unwrap_or_default()
        };
        let redis = Counters::new(&url(&sc.redis), &sc.key_prefix, timeout)
            .map_err(|e| OpenError::Shared(format!("Redis: {e}")))?;
        let pg = Arc::new(Pg::new(&url(&sc.postgres), timeout).map_err(OpenError::Shared)?);
        pg.migrate()
            .await
            .map_err(|e| OpenError::Shared(format!("PostgreSQL migrations: {e}")))?;
        let store = Arc::new(Self {
            spool: Arc::new(Spool::new(&sc.spool)),
            local: Embedded::in_memory(config.log.recent_requests),
            config: sc,
            redis,
            writer: LedgerWriter::spawn(pg.clone()),
            pg,
            keys: LiveKeys::default(),
            pending: Mutex::new(Vec::new()),
            pg_down_until: Mutex::new(None),
            metrics,
        });
        store
            .refresh_keys()
            .await
            .map_err(|e| OpenError::Shared(format!("PostgreSQL keys: {e}")))?;
        if let Err(e) = store.redis.ping().await {
            tracing::warn!(error = %e, "Redis does not answer yet");
        }
        tokio::spawn(background(Arc::downgrade(&store)));
        tracing::info!(
            spool = %store.spool.path().display(),
            on_store_error = ?store.config.on_store_error,
            "shared store open (Redis + PostgreSQL)"
        );
        Ok(store)
    }

    fn local_allowed(&self) -> bool {
        self.config.on_store_error == OnStoreError::Local
    }

    /// Re-reads the admin-created keys from PostgreSQL.
    async fn refresh_keys(&self) -> Result<(), String> {
        let stored = self.pg.keys().await?;
        self.keys
            .replace(stored.into_iter().map(|k| (k.digest, k.identity)).collect());
        Ok(())
    }

    fn pg_backing_off(&self) -> bool {
        self.pg_down_until
            .lock()
            .ok()
            .and_then(|t| *t)
            .is_some_and(|t| Instant::now() < t)
    }

    fn pg_failed(&self, op: &str, error: &str) {
        self.metrics
            .store_errors
            .with_label_values(&["postgres", op])
            .inc();
        tracing::warn!(op, %error, "PostgreSQL call failed");
        if let Ok(mut until) = self.pg_down_until.lock() {
            *until = Some(Instant::now() + PG_BACKOFF);
        }
    }

    /// Appends `row` to the spool (fsync'd): the only copy until PostgreSQL takes it.
    async fn spool_row(&self, row: SpendRow) {
        let spool = self.spool.clone();
        let id = row.request_id.clone();
        let written = tokio::task::spawn_blocking(move || spool.append(&row)).await;
        match written {
            Ok(Ok(())) => self.metrics.ledger_spooled.inc(),
            Ok(Err(e)) => {
                tracing::error!(request_id = %id, error = %e, "ledger row lost: PostgreSQL and the spool both failed")
            }
            Err(e) => tracing::error!(request_id = %id, error = %e, "ledger spool task failed"),
        }
    }

    /// Writes spooled rows to PostgreSQL; stops at the first failure (retried later).
    async fn replay_spool(&self) {
        let spool = self.spool.clone();
        let Ok(Ok(rows)) = tokio::task::spawn_blocking(move || spool.take()).await else {
            return;
        };
        if rows.is_empty() {
            return;
        }
        for chunk in rows.chunks(256) {
            if let Err(e) = self.pg.insert(chunk).await {
                self.pg_failed("replay", &e);
                return;
            }
        }
        let spool = self.spool.clone();
        let done = tokio::task::spawn_blocking(move || {
            let done = spool.done();
            (done, spool.pending())
        })
        .await;
        if let Ok((Ok(()), pending)) = done {
            self.metrics.ledger_replayed.inc_by(rows.len() as u64);
            self.metrics.ledger_spooled.set(pending as i64);
            tracing::info!(
                rows = rows.len(),
                "spooled ledger rows written to PostgreSQL"
            );
        }
    }

    /// Retries the settlements Redis did not take.
    async fn retry_settles(&self) {
        let queued = self
            .pending
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default();
        for pending in queued {
            // A failure queues it again.
            self.try_settle(pending).await;
        }
    }
}

/// The store's background work, until the store is dropped.
async fn background(store: Weak<Shared>) {
    let mut last_keys = Instant::now();
    loop {
        let pause = match store.upgrade() {
            Some(s) => {
                let refresh = Duration::from_millis(s.config.key_refresh_ms);
                RETRY_EVERY.min(refresh)
            }
            None => return,
        };
        tokio::time::sleep(pause).await;
        let Some(store) = store.upgrade() else { return };
        if last_keys.elapsed() >= Duration::from_millis(store.config.key_refresh_ms) {
            last_keys = Instant::now();
            if let Err(e) = store.refresh_keys().await {
                store.pg_failed("keys", &e);
            }
        }
        store.retry_settles().await;
        store.replay_spool().await;
    }
}

#[async_trait]
impl Store for Shared {
    fn backend(&self) -> &'static str {
        "shared"
    }

    async fn ready(&self) -> Result<(), String> {
        let redis = self.redis.ping().await;
        let pg = self.pg.ping().await;
        if let Err(e) = &pg {
            tracing::warn!(error = %e, "PostgreSQL unreachable; ledger rows are spooled");
        }
        match redis {
            Err(e) if !self.local_allowed() => Err(format!("Redis unreachable: {e}")),
            _ => Ok(()),
        }
    }

    async fn budget_status(
        &self,
        configs: &[BudgetConfig],
        id: &Identity,
        now: u64,
    ) -> Result<Status, StoreError> {
        self.shared_status(configs, id, now).await
    }

    async fn reserve(
        &self,
        configs: &[BudgetConfig],
        id: &Identity,
        worst_usd: f64,
        request_id: &str,
        now: u64,
    ) -> Result<Result<Reservation, BudgetHit>, StoreError> {
        self.shared_reserve(configs, id, worst_usd, request_id, now)
            .await
    }

    async fn settle(&self, reservation: Reservation, cost_usd: f64) {
        self.shared_settle(reservation, cost_usd).await;
    }

    async fn budget_states(
        &self,
        configs: &[BudgetConfig],
        now: u64,
    ) -> Result<Vec<BudgetState>, StoreError> {
        self.shared_states(configs, now).await
    }

    async fn admit_rate(&self, id: &Identity, tokens: u64) -> Result<RateVerdict, StoreError> {
        self.shared_rate(id, tokens).await
    }

    async fn refund_tokens(&self, id: &Identity, tokens: u64) {
        self.shared_refund(id, tokens).await;
    }

    fn lookup_key(&self, key: &str) -> Option<Identity> {
        self.keys.lookup(key)
    }

    fn created_keys(&self) -> Vec<Identity> {
        self.keys.identities()
    }

    async fn create_key(&self, key: StoredKey) -> Result<(), StoreError> {
        self.pg.add_key(&key).await.map_err(|e| {
            if e.contains("duplicate key") {
                StoreError::Conflict(format!("a key named `{}` exists", key.identity.key))
            } else {
                self.pg_failed("create_key", &e);
                StoreError::Unavailable(format!("PostgreSQL: {e}"))
            }
        })?;
        self.keys.insert(key.digest, key.identity);
        Ok(())
    }

    async fn delete_key(&self, name: &str) -> Result<bool, StoreError> {
        let removed = self.pg.remove_key(name).await.map_err(|e| {
            self.pg_failed("delete_key", &e);
            StoreError::Unavailable(format!("PostgreSQL: {e}"))
        })?;
        self.keys.remove_named(name);
        Ok(removed)
    }

    fn has_ledger(&self) -> bool {
        true
    }

    async fn record_spend(&self, row: SpendRow) {
        if !self.pg_backing_off() {
            match self.writer.write(row.clone()).await {
                Ok(()) => return,
                Err(e) => self.pg_failed("ledger", &e),
            }
        }
        self.spool_row(row).await;
    }

    async fn spend(
        &self,
        by: GroupBy,
        from: Option<String>,
        to: Option<String>,
    ) -> Result<Vec<SpendGroup>, StoreError> {
        self.pg
            .spend(by, from.as_deref(), to.as_deref())
            .await
            .map_err(|e| {
                self.pg_failed("spend", &e);
                StoreError::Unavailable(format!("PostgreSQL: {e}"))
            })
    }

    async fn remember(&self, request_id: &str, answered: Answered) {
        let key = self.redis.key(&format!("answered:{request_id}"));
        let written = match serde_json::to_string(&answered) {
            Ok(json) => {
                self.redis
                    .set(&key, &json, self.config.feedback_ttl_s)
                    .await
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            self.metrics
                .store_errors
                .with_label_values(&["redis", "remember"])
                .inc();
            tracing::debug!(error = %e, "feedback index kept in this replica only");
            self.local.remember(request_id, answered).await;
        }
    }

    async fn answered(&self, request_id: &str) -> Option<Answered> {
        let key = self.redis.key(&format!("answered:{request_id}"));
        match self.redis.get(&key).await {
            Ok(Some(json)) => serde_json::from_str(&json).ok(),
            _ => self.local.answered(request_id).await,
        }
    }
}
