//! The embedded store: budgets, rate limits and the feedback index in this process's memory,
//! the ledger and admin-created keys in SQLite (`auth.ledger`). Nothing to install; right for
//! one replica. Spend in the ledger is restored into the budgets at start.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;

use crate::store::answered::{Answered, Recent};
use crate::store::ledger::{GroupBy, Ledger, LedgerError, SpendGroup, SpendRow, StoredKey};
use crate::store::{RateVerdict, Store, StoreError};
use crate::tenancy::budget::{BudgetHit, BudgetState, Budgets, Reservation, Status};
use crate::tenancy::config::{AuthConfig, BudgetConfig};
use crate::tenancy::identity::{Identity, KeyTable, LiveKeys};
use crate::tenancy::rate_limit::RateLimiter;
use crate::util::{now_unix, periods};

/// Everything in this process; the ledger in SQLite.
pub struct Embedded {
    pub budgets: Budgets,
    pub limiter: RateLimiter,
    ledger: Option<Arc<Ledger>>,
    keys: LiveKeys,
    recent: Mutex<Recent>,
}

impl Embedded {
    /// Opens the ledger named in `auth` (if any), restores this month's spend into the budget
    /// accounts and loads the keys created through the admin API; remembers the last
    /// `recent_requests` answers for feedback. Blocking.
    pub fn open(auth: &AuthConfig, recent_requests: usize) -> Result<Self, LedgerError> {
        let budgets = Budgets::default();
        let mut keys = KeyTable::default();
        let ledger = match &auth.ledger {
            Some(path) => {
                let ledger = Ledger::open(path)?;
                let (_, month) = periods(now_unix());
                for (identity, day, cost) in ledger.month_spend(&month)? {
                    budgets.restore(&identity, &day, cost);
                }
                keys = ledger
                    .keys()?
                    .into_iter()
                    .map(|k| (k.digest, k.identity))
                    .collect();
                Some(Arc::new(ledger))
            }
            None => None,
        };
        Ok(Self::with(budgets, ledger, keys, recent_requests))
    }

    /// In memory only: no ledger, no keys (the shared store's local fallback).
    pub fn in_memory(recent_requests: usize) -> Self {
        Self::with(
            Budgets::default(),
            None,
            KeyTable::default(),
            recent_requests,
        )
    }

    fn with(
        budgets: Budgets,
        ledger: Option<Arc<Ledger>>,
        keys: KeyTable,
        recent_requests: usize,
    ) -> Self {
        Self {
            budgets,
            limiter: RateLimiter::default(),
            ledger,
            keys: LiveKeys::new(keys),
            recent: Mutex::new(Recent::new(recent_requests)),
        }
    }

    fn ledger(&self, what: &'static str) -> Result<Arc<Ledger>, StoreError> {
        self.ledger.clone().ok_or(StoreError::NoLedger(what))
    }
}

#[async_trait]
impl Store for Embedded {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    async fn budget_status(
        &self,
        configs: &[BudgetConfig],
        id: &Identity,
        now: u64,
    ) -> Result<Status, StoreError> {
        Ok(self.budgets.status(configs, id, now))
    }

    async fn reserve(
        &self,
        configs: &[BudgetConfig],
        id: &Identity,
        worst_usd: f64,
        _request_id: &str,
        now: u64,
    ) -> Result<Result<Reservation, BudgetHit>, StoreError> {
        Ok(self.budgets.reserve(configs, id, worst_usd, now))
    }

    async fn settle(&self, reservation: Reservation, cost_usd: f64) {
        self.budgets.settle(reservation, cost_usd);
    }

    async fn budget_states(
        &self,
        configs: &[BudgetConfig],
        now: u64,
    ) -> Result<Vec<BudgetState>, StoreError> {
        Ok(self.budgets.states(configs, now))
    }

    async fn admit_rate(&self, id: &Identity, tokens: u64) -> Result<RateVerdict, StoreError> {
        Ok(self.limiter.admit(id, tokens, Instant::now()))
    }

    async fn refund_tokens(&self, id: &Identity, tokens: u64) {
        self.limiter.refund(id, tokens);
    }

    fn lookup_key(&self, key: &str) -> Option<Identity> {
        self.keys.lookup(key)
    }

    fn created_keys(&self) -> Vec<Identity> {
        self.keys.identities()
    }

    async fn create_key(&self, key: StoredKey) -> Result<(), StoreError> {
        let ledger = self.ledger(
            "keys created at run time are stored in the ledger, and auth.ledger is not set",
        )?;
        let to_store = key.clone();
        ledger.run(move |l| l.add_key(&to_store)).await?;
        self.keys.insert(key.digest, key.identity);
        Ok(())
    }

    async fn delete_key(&self, name: &str) -> Result<bool, StoreError> {
        let ledger = self.ledger("auth.ledger is not set")?;
        let lookup = name.to_owned();
        let removed = ledger.run(move |l| l.remove_key(&lookup)).await?;
        self.keys.remove_named(name);
        Ok(removed)
    }

    fn has_ledger(&self) -> bool {
        self.ledger.is_some()
    }

    async fn record_spend(&self, row: SpendRow) {
        let Some(ledger) = self.ledger.clone() else {
            return;
        };
        if let Err(e) = ledger.run(move |l| l.insert(&row)).await {
            tracing::error!(error = %e, "ledger write failed; this request's spend is only in memory");
        }
    }

    async fn spend(
        &self,
        by: GroupBy,
        from: Option<String>,
        to: Option<String>,
    ) -> Result<Vec<SpendGroup>, StoreError> {
        let ledger = self.ledger("spend is read from the ledger, and auth.ledger is not set")?;
        Ok(ledger
            .run(move |l| l.spend(by, from.as_deref(), to.as_deref()))
            .await?)
    }

    async fn remember(&self, request_id: &str, answered: Answered) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.insert(request_id.to_owned(), answered);
        }
    }

    async fn answered(&self, request_id: &str) -> Option<Answered> {
        self.recent.lock().ok()?.get(request_id)
    }
}
