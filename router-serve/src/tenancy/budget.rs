//! Budgets: where money is counted against limits.
//!
//! A request first *reserves* its worst-case cost (input tokens × input price + max output
//! tokens × output price, at the dearest model it may be sent to) against every budget that
//! applies to it, under one lock, and is refused if that could take any of them past its hard
//! limit; when it ends, the reservation is replaced by the real cost. So concurrent requests
//! can overrun a limit by at most one request's worst case (in fact not at all, as long as the
//! upstream's usage stays within what was reserved).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use crate::tenancy::config::{BudgetConfig, Period, Scope};
use crate::tenancy::identity::Identity;
use crate::util::periods;

/// One budget account: a scope's entity in one period.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AccountId {
    pub scope: Scope,
    pub entity: String,
    pub period: Period,
    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub period_id: String,
}

impl AccountId {
    /// The account's name in a shared store: `budget:team:day:2026-12-03:search` (the entity
    /// last: it may hold any character).
    pub fn store_key(&self) -> String {
        format!(
            "budget:{}:{}:{}:{}",
            scope_name(self.scope),
            period_name(self.period),
            self.period_id,
            self.entity
        )
    }

    /// Seconds the account must outlive its period's start.
    pub fn ttl_s(&self) -> u64 {
        match self.period {
            Period::Day => 2 * 86_400,
            Period::Month => 35 * 86_400,
        }
    }
}

pub(crate) fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Key => "key",
        Scope::User => "user",
        Scope::Team => "team",
    }
}

pub(crate) fn period_name(period: Period) -> &'static str {
    match period {
        Period::Day => "day",
        Period::Month => "month",
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Account {
    settled: f64,
    reserved: f64,
}

/// Spend so far, by scope, entity and period.
#[derive(Default)]
pub struct Budgets {
    accounts: Mutex<HashMap<AccountId, Account>>,
}

/// Held while a request is in flight; settle it exactly once.
#[derive(Debug)]
pub struct Reservation {
    pub(crate) accounts: Vec<AccountId>,
    pub(crate) amount: f64,
    /// Where it is held: `false` in this process, `true` in a shared store (under `lease`).
    pub(crate) shared: bool,
    /// The request it is held for.
    pub(crate) lease: String,
}

impl Reservation {
    /// A reservation on no budget.
    pub fn none() -> Self {
        Self {
            accounts: Vec::new(),
            amount: 0.0,
            shared: false,
            lease: String::new(),
        }
    }
}

/// A budget past its threshold.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetHit {
    pub scope: Scope,
    pub entity: String,
    pub period: Period,
    pub spent_usd: f64,
    pub limit_usd: f64,
    #[serde(skip)]
    pub soft_mode: Option<String>,
    #[serde(skip)]
    pub soft_models: Option<Vec<String>>,
}

impl BudgetHit {
    /// "team `search` has spent $1.02 of its daily hard limit of $1.00".
    pub fn describe(&self, what: &str) -> String {
        let scope = scope_name(self.scope);
        let period = match self.period {
            Period::Day => "daily",
            Period::Month => "monthly",
        };
        format!(
            "{scope} `{}` has spent ${:.6} of its {period} {what} of ${:.6}",
            self.entity, self.spent_usd, self.limit_usd
        )
    }
}

/// One budget's state, for `/v1/budgets`.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetState {
    pub scope: Scope,
    pub entity: String,
    pub period: Period,
    pub period_id: String,
    pub settled_usd: f64,
    pub reserved_usd: f64,
    pub soft_usd: Option<f64>,
    pub hard_usd: f64,
}

pub(crate) fn entity(scope: Scope, id: &Identity) -> &str {
    match scope {
        Scope::Key => &id.key,
        Scope::User => &id.user,
        Scope::Team => &id.team,
    }
}

/// The accounts of the budgets that apply to `id` at `now`, with their configs.
pub(crate) fn applicable<'a>(
    configs: &'a [BudgetConfig],
    id: &Identity,
    now: u64,
) -> Vec<(AccountId, &'a BudgetConfig)> {
    let (day, month) = periods(now);
    configs
        .iter()
        .filter_map(|b| {
            let who = entity(b.scope, id);
            if who.is_empty() || (b.name != "*" && b.name != who) {
                return None;
            }
            let period_id = match b.period {
                Period::Day => day.clone(),
                Period::Month => month.clone(),
            };
            Some((
                AccountId {
                    scope: b.scope,
                    entity: who.to_owned(),
                    period: b.period,
                    period_id,
                },
                b,
            ))
        })
        .collect()
}

impl Budgets {
    /// Adds spend restored from the ledger: `cost` settled by `id` on `day` (`YYYY-MM-DD`).
    pub fn restore(&self, id: &Identity, day: &str, cost: f64) {
        let Ok(mut accounts) = self.accounts.lock() else {
            return;
        };
        for account in accounts_of(id, day) {
            accounts.entry(account).or_default().settled += cost;
        }
    }

    /// The first budget past its hard limit, else the first past its soft threshold.
    pub fn status(&self, configs: &[BudgetConfig], id: &Identity, now: u64) -> Status {
        let Ok(accounts) = self.accounts.lock() else {
            return Status::Ok;
        };
        let targets = applicable(configs, id, now);
        let spent: Vec<f64> = targets
            .iter()
            .map(|(account, _)| {
                let a = accounts.get(account).copied().unwrap_or_default();
                a.settled + a.reserved
            })
            .collect();
        status_of(&targets, &spent)
    }

    /// Reserves `worst_usd` on every applicable budget, or refuses if any would pass its hard
    /// limit.
    pub fn reserve(
        &self,
        configs: &[BudgetConfig],
        id: &Identity,
        worst_usd: f64,
        now: u64,
    ) -> Result<Reservation, BudgetHit> {
        let targets = applicable(configs, id, now);
        let Ok(mut accounts) = self.accounts.lock() else {
            return Ok(Reservation::none());
        };
        for (account, b) in &targets {
            let a = accounts.get(account).copied().unwrap_or_default();
            if a.settled + a.reserved + worst_usd > b.hard_usd {
                return Err(BudgetHit {
                    scope: b.scope,
                    entity: account.entity.clone(),
                    period: b.period,
                    spent_usd: a.settled + a.reserved,
                    limit_usd: b.hard_usd,
                    soft_mode: None,
                    soft_models: None,
                });
            }
        }
        let mut ids: Vec<AccountId> = targets.into_iter().map(|(a, _)| a).collect();
        ids.dedup();
        for account in &ids {
            accounts.entry(account.clone()).or_default().reserved += worst_usd;
        }
        Ok(Reservation {
            accounts: ids,
            amount: worst_usd,
            shared: false,
            lease: String::new(),
        })
    }

    /// Replaces the reservation by the real cost.
    pub fn settle(&self, reservation: Reservation, cost_usd: f64) {
        let Ok(mut accounts) = self.accounts.lock() else {
            return;
        };
        for account in reservation.accounts {
            let a = accounts.entry(account).or_default();
            a.reserved -= reservation.amount;
            // Sums of floats leave residues: below a pico-dollar, nothing is reserved.
            if a.reserved < 1e-12 {
                a.reserved = 0.0;
            }
            a.settled += cost_usd;
        }
    }

    /// Every configured budget's current state (`*` budgets: one row per entity seen).
    pub fn states(&self, configs: &[BudgetConfig], now: u64) -> Vec<BudgetState> {
        let (day, month) = periods(now);
        let Ok(accounts) = self.accounts.lock() else {
            return Vec::new();
        };
        let mut rows = Vec::new();
        for b in configs {
            let period_id = match b.period {
                Period::Day => &day,
                Period::Month => &month,
            };
            let mut matched: Vec<(&AccountId, &Account)> = accounts
                .iter()
                .filter(|(a, _)| {
                    a.scope == b.scope
                        && a.period == b.period
                        && &a.period_id == period_id
                        && (b.name == "*" || a.entity == b.name)
                })
                .collect();
            matched.sort_by(|a, b| a.0.entity.cmp(&b.0.entity));
            if matched.is_empty() && b.name != "*" {
                rows.push(BudgetState {
                    scope: b.scope,
                    entity: b.name.clone(),
                    period: b.period,
                    period_id: period_id.clone(),
                    settled_usd: 0.0,
                    reserved_usd: 0.0,
                    soft_usd: b.soft_usd,
                    hard_usd: b.hard_usd,
                });
            }
            rows.extend(matched.into_iter().map(|(a, acc)| BudgetState {
                scope: b.scope,
                entity: a.entity.clone(),
                period: b.period,
                period_id: a.period_id.clone(),
                settled_usd: acc.settled,
                reserved_usd: acc.reserved,
                soft_usd: b.soft_usd,
                hard_usd: b.hard_usd,
            }));
        }
        rows
    }
}

/// Every account a request of `id` settled on `day` (`YYYY-MM-DD`) counts on: its key, user
/// and team, each for the day and the month.
pub(crate) fn accounts_of(id: &Identity, day: &str) -> Vec<AccountId> {
    let mut out = Vec::new();
    for scope in [Scope::Key, Scope::User, Scope::Team] {
        let who = entity(scope, id);
        if who.is_empty() {
            continue;
        }
        for (period, period_id) in [
            (Period::Day, day),
            (Period::Month, day.get(..7).unwrap_or(day)),
        ] {
            out.push(AccountId {
                scope,
                entity: who.to_owned(),
                period,
                period_id: period_id.to_owned(),
            });
        }
    }
    out
}

/// The first of `targets` past its hard limit, else the first past its soft threshold, given
/// what each has spent (settled + reserved).
pub(crate) fn status_of(targets: &[(AccountId, &BudgetConfig)], spent: &[f64]) -> Status {
    let mut soft = None;
    for ((account, b), &spent) in targets.iter().zip(spent) {
        let hit = |limit| BudgetHit {
            scope: b.scope,
            entity: account.entity.clone(),
            period: b.period,
            spent_usd: spent,
            limit_usd: limit,
            soft_mode: b.soft_mode.clone(),
            soft_models: b.soft_models.clone(),
        };
        if spent >= b.hard_usd {
            return Status::Hard(hit(b.hard_usd));
        }
        if soft.is_none()
            && let Some(s) = b.soft_usd
            && spent >= s
        {
            soft = Some(hit(s));
        }
    }
    soft.map_or(Status::Ok, Status::Soft)
}

/// `configs` with every limit divided by `parts` (a replica's share while the shared store is
/// unreachable).
pub fn share_of(configs: &[BudgetConfig], parts: u32) -> Vec<BudgetConfig> {
    let parts = f64::from(parts.max(1));
    configs
        .iter()
        .map(|b| BudgetConfig {
            soft_usd: b.soft_usd.map(|s| s / parts),
            hard_usd: b.hard_usd / parts,
            ..b.clone()
        })
        .collect()
}

/// Where a caller stands against its budgets.
#[derive(Debug, Clone)]
pub enum Status {
    Ok,
    Soft(BudgetHit),
    Hard(BudgetHit),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &str, team: &str) -> Identity {
        Identity {
            key: key.into(),
            team: team.into(),
            rpm: Some(2),
            ..Identity::example()
        }
    }

    fn budget(soft: Option<f64>, hard: f64) -> BudgetConfig {
        BudgetConfig {
            scope: Scope::Team,
            name: "*".into(),
            period: Period::Day,
            soft_usd: soft,
            hard_usd: hard,
            soft_mode: Some("cost".into()),
            soft_models: None,
        }
    }
    #[test]
    fn reservations_stop_at_the_hard_limit_and_settle_to_the_real_cost() {
        let b = Budgets::default();
        let configs = [budget(Some(0.5), 1.0)];
        let t = id("k", "search");
        let now = 1_795_600_800;
        let r1 = b.reserve(&configs, &t, 0.6, now).unwrap();
        assert!(
            b.reserve(&configs, &t, 0.6, now).is_err(),
            "0.6 + 0.6 > 1.0"
        );
        assert!(matches!(b.status(&configs, &t, now), Status::Soft(_)));
        b.settle(r1, 0.1);
        assert!(matches!(b.status(&configs, &t, now), Status::Ok));
        let r2 = b.reserve(&configs, &t, 0.6, now).unwrap();
        b.settle(r2, 0.9);
        assert!(matches!(b.status(&configs, &t, now), Status::Hard(_)));
        // Another team is untouched; the next day starts afresh.
        assert!(matches!(
            b.status(&configs, &id("k2", "ads"), now),
            Status::Ok
        ));
        assert!(matches!(b.status(&configs, &t, now + 86_400), Status::Ok));
    }

    #[test]
    fn restored_spend_counts() {
        let b = Budgets::default();
        let configs = [budget(None, 1.0)];
        let t = id("k", "search");
        let now = 1_795_600_800;
        b.restore(&t, "2026-11-25", 1.0);
        assert!(matches!(b.status(&configs, &t, now), Status::Hard(_)));
    }
}
