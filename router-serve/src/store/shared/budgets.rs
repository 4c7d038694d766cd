//! Budgets and rate limits in Redis: the shared store's reservations, settlements, the
//! rebuild of the counters from PostgreSQL, and the local share used while Redis is away.

use std::collections::HashMap;

use crate::store::shared::Shared;
use crate::store::shared::counters::{AccountArg, Reserved, nanos, usd};
use crate::store::{RateVerdict, StoreError};
use crate::tenancy::budget::{
    AccountId, BudgetHit, BudgetState, Reservation, Status, accounts_of, applicable, share_of,
    status_of,
};
use crate::tenancy::config::BudgetConfig;
use crate::tenancy::identity::Identity;
use crate::tenancy::rate_limit::{self, RateInfo};
use crate::util::periods;

/// Days a month's rebuild marker outlives the month's start.
const MARKER_TTL_S: u64 = 40 * 86_400;

/// A settlement Redis did not take, retried in the background.
pub(super) struct PendingSettle {
    pub accounts: Vec<(String, u64)>,
    pub lease: String,
    pub cost: i64,
}

impl Shared {
    /// The key that says this month's counters were built from PostgreSQL.
    fn marker(&self, now: u64) -> String {
        let (_, month) = periods(now);
        self.redis.key(&format!("rebuilt:{month}"))
    }

    fn account_key(&self, account: &AccountId) -> String {
        self.redis.key(&account.store_key())
    }

    /// Rebuilds this month's counters from the ledger in PostgreSQL (once: a replica that
    /// finds the marker set leaves them alone).
    async fn rebuild(&self, now: u64) -> Result<(), String> {
        let (_, month) = periods(now);
        let rows = self.pg.month_spend(&month).await?;
        let mut totals: HashMap<String, (i64, u64)> = HashMap::new();
        for (identity, day, cost) in &rows {
            for account in accounts_of(identity, day) {
                let entry = totals
                    .entry(self.account_key(&account))
                    .or_insert((0, account.ttl_s()));
                entry.0 += nanos(*cost);
            }
        }
        let entries: Vec<(String, i64, u64)> =
            totals.into_iter().map(|(k, (n, t))| (k, n, t)).collect();
        let rebuilt = self
            .redis
            .rebuild(&self.marker(now), MARKER_TTL_S, &entries)
            .await?;
        if rebuilt {
            tracing::warn!(
                month,
                accounts = entries.len(),
                "budget counters rebuilt in Redis from the PostgreSQL ledger"
            );
        }
        Ok(())
    }

    /// A Redis failure: an error with `fail_closed`; with `local`, counted, and the caller
    /// serves the operation from this replica's share.
    pub(super) fn go_local(&self, op: &'static str, error: &str) -> Result<(), StoreError> {
        self.metrics
            .store_errors
            .with_label_values(&["redis", op])
            .inc();
        if !self.local_allowed() {
            tracing::error!(op, %error, "Redis unreachable; refusing (on_store_error = fail_closed)");
            return Err(StoreError::Unavailable(format!("Redis: {error}")));
        }
        tracing::warn!(op, %error, "Redis unreachable; enforcing this replica's share of the limits");
        self.metrics.store_local.with_label_values(&[op]).inc();
        Ok(())
    }

    pub(super) async fn shared_status(
        &self,
        configs: &[BudgetConfig],
        id: &Identity,
        now: u64,
    ) -> Result<Status, StoreError> {
        let targets = applicable(configs, id, now);
        if targets.is_empty() {
            return Ok(Status::Ok);
        }
        let keys: Vec<String> = targets.iter().map(|(a, _)| self.account_key(a)).collect();
        let marker = self.marker(now);
        let mut values = self.redis.status(&marker, &keys).await;
        if matches!(values, Ok(None)) {
            values = match self.rebuild(now).await {
                Ok(()) => self.redis.status(&marker, &keys).await,
                Err(e) => Err(e),
            };
        }
        match values {
            Ok(Some(values)) => {
                let spent: Vec<f64> = values.iter().map(|(s, r)| usd(s + r)).collect();
                Ok(status_of(&targets, &spent))
            }
            Ok(None) => Err(StoreError::Unavailable(
                "budget counters not rebuilt".into(),
            )),
            Err(e) => {
                self.go_local("budget_status", &e)?;
                let share = share_of(configs, self.config.replicas);
                Ok(self.local.budgets.status(&share, id, now))
            }
        }
    }

    pub(super) async fn shared_reserve(
        &self,
        configs: &[BudgetConfig],
        id: &Identity,
        worst_usd: f64,
        request_id: &str,
        now: u64,
    ) -> Result<Result<Reservation, BudgetHit>, StoreError> {
        let targets = applicable(configs, id, now);
        if targets.is_empty() {
            return Ok(Ok(Reservation::none()));
        }
        // One entry per account, at the lowest hard limit configured for it.
        let mut accounts: Vec<(AccountId, f64)> = Vec::new();
        for (account, b) in &targets {
            match accounts.iter_mut().find(|(a, _)| a == account) {
                Some(entry) => entry.1 = entry.1.min(b.hard_usd),
                None => accounts.push((account.clone(), b.hard_usd)),
            }
        }
        let args: Vec<AccountArg> = accounts
            .iter()
            .map(|(a, hard)| AccountArg {
                key: self.account_key(a),
                hard: nanos(*hard),
                ttl_s: a.ttl_s(),
            })
            .collect();
        let marker = self.marker(now);
        let amount = nanos(worst_usd);
        let lease_ttl = self.config.reservation_ttl_s;
        let mut answer = self
            .redis
            .reserve(&marker, &args, request_id, amount, lease_ttl)
            .await;
        if answer == Ok(Reserved::Rebuild) {
            answer = match self.rebuild(now).await {
                Ok(()) => {
                    self.redis
                        .reserve(&marker, &args, request_id, amount, lease_ttl)
                        .await
                }
                Err(e) => Err(e),
            };
        }
        let refused = |index: usize, spent: i64| {
            let (account, hard) = &accounts[index.min(accounts.len().saturating_sub(1))];
            BudgetHit {
                scope: account.scope,
                entity: account.entity.clone(),
                period: account.period,
                spent_usd: usd(spent),
                limit_usd: *hard,
                soft_mode: None,
                soft_models: None,
            }
        };
        match answer {
            Ok(Reserved::Held) => Ok(Ok(Reservation {
                accounts: accounts.into_iter().map(|(a, _)| a).collect(),
                amount: worst_usd,
                shared: true,
                lease: request_id.to_owned(),
            })),
            Ok(Reserved::Refused { index, spent }) => Ok(Err(refused(index, spent))),
            Ok(Reserved::Rebuild) => Err(StoreError::Unavailable(
                "budget counters not rebuilt".into(),
            )),
            Err(e) => {
                self.go_local("reserve", &e)?;
                let share = share_of(configs, self.config.replicas);
                Ok(self.local.budgets.reserve(&share, id, worst_usd, now))
            }
        }
    }

    pub(super) async fn shared_settle(&self, reservation: Reservation, cost_usd: f64) {
        if !reservation.shared {
            self.local.budgets.settle(reservation, cost_usd);
            return;
        }
        if reservation.accounts.is_empty() {
            return;
        }
        let pending = PendingSettle {
            accounts: reservation
                .accounts
                .iter()
                .map(|a| (self.account_key(a), a.ttl_s()))
                .collect(),
            lease: reservation.lease,
            cost: nanos(cost_usd),
        };
        self.try_settle(pending).await;
    }

    /// Settles in Redis, or queues the settlement for the background retry (settling is
    /// idempotent per lease, so a retry after a lost answer counts once).
    pub(super) async fn try_settle(&self, pending: PendingSettle) -> bool {
        match self
            .redis
            .settle(&pending.accounts, &pending.lease, pending.cost)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                self.metrics
                    .store_errors
                    .with_label_values(&["redis", "settle"])
                    .inc();
                tracing::warn!(error = %e, lease = %pending.lease, "settlement queued until Redis answers");
                if let Ok(mut queue) = self.pending.lock() {
                    queue.push(pending);
                }
                false
            }
        }
    }

    pub(super) async fn shared_states(
        &self,
        configs: &[BudgetConfig],
        now: u64,
    ) -> Result<Vec<BudgetState>, StoreError> {
        let (day, month) = periods(now);
        let mut rows = Vec::new();
        for b in configs {
            let period_id = match b.period {
                crate::tenancy::config::Period::Day => &day,
                crate::tenancy::config::Period::Month => &month,
            };
            let template = AccountId {
                scope: b.scope,
                entity: String::new(),
                period: b.period,
                period_id: period_id.clone(),
            };
            let entities = self.entities(b, &template).await?;
            for entity in entities {
                let account = AccountId {
                    entity,
                    ..template.clone()
                };
                let values = self
                    .redis
                    .account(&self.account_key(&account))
                    .await
                    .map_err(StoreError::Unavailable)?;
                rows.push(BudgetState {
                    scope: b.scope,
                    entity: account.entity,
                    period: b.period,
                    period_id: period_id.clone(),
                    settled_usd: usd(values.0),
                    reserved_usd: usd(values.1),
                    soft_usd: b.soft_usd,
                    hard_usd: b.hard_usd,
                });
            }
        }
        Ok(rows)
    }

    /// The entities of budget `b`: its name, or for `*` every one with an account now.
    async fn entities(
        &self,
        b: &BudgetConfig,
        template: &AccountId,
    ) -> Result<Vec<String>, StoreError> {
        if b.name != "*" {
            return Ok(vec![b.name.clone()]);
        }
        let prefix = self.account_key(template);
        let pattern = format!("{}*", glob_escape(&prefix));
        let keys = self
            .redis
            .scan(&pattern)
            .await
            .map_err(StoreError::Unavailable)?;
        let mut entities: Vec<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|e| !e.ends_with(":leases") && !e.ends_with(":lease_amt"))
            .map(str::to_owned)
            .collect();
        entities.sort();
        entities.dedup();
        Ok(entities)
    }

    pub(super) async fn shared_rate(
        &self,
        id: &Identity,
        tokens: u64,
    ) -> Result<RateVerdict, StoreError> {
        if (id.rpm.is_none() && id.tpm.is_none()) || id.key.is_empty() {
            return Ok(Ok(RateInfo::default()));
        }
        let bucket = self.redis.key(&format!("rate:{}", id.key));
        match self.redis.rate(&bucket, id.rpm, id.tpm, tokens).await {
            Ok(b) => {
                let info = RateInfo {
                    limit_requests: id.rpm,
                    remaining_requests: id.rpm.map(|_| b.requests.floor().max(0.0) as u32),
                    limit_tokens: id.tpm,
                    remaining_tokens: id.tpm.map(|_| b.tokens.floor().max(0.0) as u64),
                    retry_after: (!b.admitted)
                        .then(|| std::time::Duration::from_secs_f64(b.wait_s.max(0.001))),
                };
                Ok(if b.admitted { Ok(info) } else { Err(info) })
            }
            Err(e) => {
                self.go_local("rate_limit", &e)?;
                let share = rate_limit::share_of(id, self.config.replicas);
                Ok(self
                    .local
                    .limiter
                    .admit(&share, tokens, std::time::Instant::now()))
            }
        }
    }

    pub(super) async fn shared_refund(&self, id: &Identity, tokens: u64) {
        let Some(tpm) = id.tpm.filter(|_| !id.key.is_empty() && tokens > 0) else {
            return;
        };
        let bucket = self.redis.key(&format!("rate:{}", id.key));
        if let Err(e) = self.redis.refund(&bucket, tpm, tokens).await {
            tracing::debug!(error = %e, "token refund not written");
        }
    }
}

/// `text` with Redis glob characters escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
