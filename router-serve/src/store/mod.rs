//! What outlives a request and a reload: budget accounts, rate-limit buckets, the spend ledger
//! and the keys created through the admin API. Today one process holds them (the ledger in
//! SQLite); this is the seam a shared store plugs into.

pub mod ledger;

use std::sync::{Arc, RwLock};

use crate::store::ledger::{Ledger, LedgerError};
use crate::tenancy::budget::Budgets;
use crate::tenancy::config::AuthConfig;
use crate::tenancy::identity::KeyTable;
use crate::tenancy::rate_limit::RateLimiter;
use crate::util::{now_unix, periods};

/// Budgets, rate limits, the ledger and API-created keys.
pub struct Money {
    pub budgets: Budgets,
    pub limiter: RateLimiter,
    pub ledger: Option<Arc<Ledger>>,
    pub created_keys: RwLock<KeyTable>,
}

impl Money {
    /// Opens the ledger named in `auth` (if any), restores this month's spend into the budget
    /// accounts and loads the keys created through the admin API.
    pub fn open(auth: &AuthConfig) -> Result<Self, LedgerError> {
        let budgets = Budgets::default();
        let mut created = KeyTable::default();
        let ledger = match &auth.ledger {
            Some(path) => {
                let ledger = Ledger::open(path)?;
                let (_, month) = periods(now_unix());
                for (identity, day, cost) in ledger.month_spend(&month)? {
                    budgets.restore(&identity, &day, cost);
                }
                for key in ledger.keys()? {
                    created.insert(key.digest, key.identity);
                }
                Some(Arc::new(ledger))
            }
            None => None,
        };
        Ok(Self {
            budgets,
            limiter: RateLimiter::default(),
            ledger,
            created_keys: RwLock::new(created),
        })
    }
}
