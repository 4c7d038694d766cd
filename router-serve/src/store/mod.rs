//! What outlives a request and a reload: budget accounts, rate-limit buckets, the spend ledger,
//! the keys created through the admin API and the feedback index. Handlers talk to the
//! [`Store`] trait only; `[store] backend` picks the implementation:
//!
//! - [`embedded::Embedded`]: this process's memory and a SQLite ledger (one replica);
//! - [`shared::Shared`]: Redis (counters, buckets, index) and PostgreSQL (ledger, keys, the
//!   truth the counters are rebuilt from), for any number of replicas.

pub mod answered;
pub mod embedded;
pub mod error;
pub mod ledger;
pub mod shared;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::ServeConfig;
use crate::config::store::Backend;
use crate::observe::metrics::Metrics;
use crate::store::answered::Answered;
pub use crate::store::error::StoreError;
use crate::store::ledger::{GroupBy, LedgerError, SpendGroup, SpendRow, StoredKey};
use crate::tenancy::budget::{BudgetHit, BudgetState, Reservation, Status};
use crate::tenancy::config::BudgetConfig;
use crate::tenancy::identity::Identity;
use crate::tenancy::rate_limit::RateInfo;

/// A rate-limit verdict: admitted or refused, with the `x-ratelimit-*` numbers either way.
pub type RateVerdict = Result<RateInfo, RateInfo>;

/// Budgets, rate limits, keys, the ledger and the feedback index, wherever they live.
#[async_trait]
pub trait Store: Send + Sync {
    /// `embedded` or `shared`.
    fn backend(&self) -> &'static str;

    /// Whether the store can admit requests now (`/ready`); the error says what is missing.
    async fn ready(&self) -> Result<(), String>;

    /// The first budget past its hard limit, else the first past its soft threshold.
    async fn budget_status(
        &self,
        configs: &[BudgetConfig],
        id: &Identity,
        now: u64,
    ) -> Result<Status, StoreError>;

    /// Reserves `worst_usd` for request `request_id` on every applicable budget, atomically,
    /// or refuses if any would pass its hard limit.
    async fn reserve(
        &self,
        configs: &[BudgetConfig],
        id: &Identity,
        worst_usd: f64,
        request_id: &str,
        now: u64,
    ) -> Result<Result<Reservation, BudgetHit>, StoreError>;

    /// Replaces a reservation by the real cost. Never fails: what cannot be written now is
    /// retried.
    async fn settle(&self, reservation: Reservation, cost_usd: f64);

    /// Every configured budget's state now.
    async fn budget_states(
        &self,
        configs: &[BudgetConfig],
        now: u64,
    ) -> Result<Vec<BudgetState>, StoreError>;

    /// One request of `tokens` tokens against the key's rate limits.
    async fn admit_rate(&self, id: &Identity, tokens: u64) -> Result<RateVerdict, StoreError>;

    /// Gives back tokens counted at admission and not used.
    async fn refund_tokens(&self, id: &Identity, tokens: u64);

    /// The identity of an admin-created key, by the key itself.
    fn lookup_key(&self, key: &str) -> Option<Identity>;

    /// The admin-created keys (without secrets).
    fn created_keys(&self) -> Vec<Identity>;

    async fn create_key(&self, key: StoredKey) -> Result<(), StoreError>;

    /// Deletes an admin-created key; `false` if there was none of that name.
    async fn delete_key(&self, name: &str) -> Result<bool, StoreError>;

    /// Whether settled requests are written to a ledger.
    fn has_ledger(&self) -> bool;

    /// Writes one settled request durably (or spools it to be written); never loses it
    /// silently.
    async fn record_spend(&self, row: SpendRow);

    /// Spend totals grouped by `by` over days `from..=to`.
    async fn spend(
        &self,
        by: GroupBy,
        from: Option<String>,
        to: Option<String>,
    ) -> Result<Vec<SpendGroup>, StoreError>;

    /// Remembers an answered request for feedback.
    async fn remember(&self, request_id: &str, answered: Answered);

    /// The answered request `request_id`, if remembered.
    async fn answered(&self, request_id: &str) -> Option<Answered>;
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("shared store: {0}")]
    Shared(String),
    #[error("opening the store: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Opens the store `config.store` names.
pub async fn open(
    config: &ServeConfig,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Store>, OpenError> {
    match config.store.backend {
        Backend::Embedded => {
            let auth = config.tenants.auth.clone();
            let recent = config.log.recent_requests;
            let store =
                tokio::task::spawn_blocking(move || embedded::Embedded::open(&auth, recent))
                    .await??;
            Ok(Arc::new(store))
        }
        Backend::Shared => {
            let store = shared::Shared::open(config, metrics).await?;
            Ok(store)
        }
    }
}
