//! Where a chat request's money is counted. [`reserve`] holds the request's worst case on every
//! budget before it is forwarded; the [`Bill`] it returns is an owned value that settles exactly
//! once: [`Bill::settle`] with the real cost (budgets, a ledger row committed before the
//! response completes, so a settled request survives a crash), or, if it is dropped unsettled
//! (a panic, a cancelled task), its `Drop` charges the worst case once the request may have
//! reached the upstream, and writes the ledger row and the decision-log line for it.
//!
//! What a request costs: the answering model's usage × its price (`[prices]`, else the
//! artifact's), plus any 2xx body that was no chat completion (the upstream did the work).
//! Without reported usage, the output is counted at [`CHARS_PER_TOKEN`] characters per token
//! and flagged. Never more than the worst case: usage past it is flagged, not charged.

use std::sync::Arc;

use crate::http::error::ApiError;
use crate::observe::log::{DecisionRecord, Usage};
use crate::routing::plan::Plan;
use crate::state::{AppState, Engine};
use crate::store::answered::Answered;
use crate::store::ledger::SpendRow;
use crate::tenancy::budget::Reservation;
use crate::tenancy::identity::Identity;
use crate::util::now_unix;

use super::Admitted;

/// Characters per output token, to count an answer whose upstream reported no usage.
pub(super) const CHARS_PER_TOKEN: f64 = 4.0;

/// A request's money from admission to settlement.
pub(super) struct Bill {
    state: Arc<AppState>,
    engine: Arc<Engine>,
    identity: Identity,
    rule: Option<String>,
    /// Expected cost of the counterfactual (the router's best model) for this request.
    counterfactual_usd: f64,
    input_tokens: usize,
    /// Tokens the key's rate limit counted at admission.
    rate_tokens: u64,
    worst_usd: f64,
    /// `None` once settled.
    reservation: Option<Reservation>,
    /// Set when the request is sent upstream: from then on the upstream may have done work.
    forwarded: bool,
    /// The decision record as admitted, logged if the bill is dropped unsettled.
    record: DecisionRecord,
}

/// Reserves the request's worst case on every budget that applies, or refuses it (429
/// `insufficient_quota`).
pub(super) async fn reserve(
    state: &Arc<AppState>,
    engine: &Arc<Engine>,
    admitted: &Admitted,
    plan: &Plan,
    record: &DecisionRecord,
) -> Result<Bill, ApiError> {
    let identity = &admitted.admission.identity;
    let worst = worst_case_usd(engine, plan, admitted.output_worst, admitted.choices);
    let budgets = &engine.config.tenants.budgets;
    let reservation = if budgets.is_empty() {
        Reservation::none()
    } else {
        state
            .store
            .reserve(budgets, identity, worst, &record.request_id, now_unix())
            .await?
            .map_err(|hit| {
                ApiError::InsufficientQuota(format!(
                    "{}; this request could cost up to ${worst:.6}",
                    hit.describe("hard limit")
                ))
            })?
    };
    let counterfactual_usd = engine
        .baseline_model()
        .map_or(0.0, |m| m.expected_cost(plan.input_tokens));
    Ok(Bill {
        state: state.clone(),
        engine: engine.clone(),
        identity: identity.clone(),
        rule: admitted.admission.policy.rule.clone(),
        counterfactual_usd,
        input_tokens: plan.input_tokens,
        rate_tokens: admitted.rate_tokens,
        worst_usd: worst,
        reservation: Some(reservation),
        forwarded: false,
        record: record.clone(),
    })
}

/// The dearest answer the request may get: input tokens × input price + `output_tokens` (all
/// `choices`) × output price, at the dearest model it may be sent to. No choice of a model is
/// longer than its context window (`[models.MODEL] context_window`), so that caps each
/// choice's output; the window is not reduced by the input, whose count is our estimate.
fn worst_case_usd(engine: &Engine, plan: &Plan, output_tokens: u64, choices: u64) -> f64 {
    let per_choice = output_tokens / choices.max(1);
    plan.targets
        .iter()
        .filter_map(|t| {
            let price = engine.price_of(&t.model)?;
            let window = engine
                .config
                .models
                .get(&t.model)
                .and_then(|c| c.context_window);
            let output = window.map_or(per_choice, |w| per_choice.min(w)) * choices.max(1);
            Some(price.cost_usd(plan.input_tokens as f64, output as f64))
        })
        .fold(0.0, f64::max)
}

impl Bill {
    /// From now on the upstream may do work: a bill dropped unsettled charges the worst case.
    pub fn forwarded(&mut self) {
        self.forwarded = true;
    }

    /// `usage` of the answer, or, when the upstream reported none, `output_chars` of answer
    /// counted at [`CHARS_PER_TOKEN`] (flagged in `record`).
    pub fn usage_or_count(
        &self,
        usage: Option<Usage>,
        output_chars: usize,
        record: &mut DecisionRecord,
    ) -> Usage {
        usage.unwrap_or_else(|| {
            self.flag(record, "missing_usage");
            Usage {
                input_tokens: self.input_tokens as u64,
                output_tokens: (output_chars as f64 / CHARS_PER_TOKEN).ceil() as u64,
                cached_input_tokens: 0,
            }
        })
    }

    /// Settles at the real cost (at most the worst case), writes `record.cost_usd` and, when
    /// the upstream did work, the ledger row; gives back unused rate-limit tokens; remembers an
    /// answered request for feedback (before the response completes, so feedback sent right
    /// after it finds it on any replica).
    pub async fn settle(mut self, record: &mut DecisionRecord) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let seen = self.cost_seen(record);
        let charged = if seen > self.worst_usd * (1.0 + 1e-9) + 1e-12 {
            self.flag(record, "over_reserved");
            tracing::warn!(
                seen_usd = seen,
                worst_usd = self.worst_usd,
                "usage past the reserved worst case: only the worst case is charged"
            );
            self.worst_usd
        } else {
            seen
        };
        let row = if charged > 0.0 || record.usage.is_some() {
            record.cost_usd = Some(charged);
            self.row(record, charged)
        } else {
            None
        };
        let answered = Answered::of(record).map(|a| (record.request_id.clone(), a));
        // Budgets, ledger, rate limit and feedback index are independent: with a shared store,
        // four round trips at once.
        let store = &self.state.store;
        tokio::join!(
            store.settle(reservation, charged),
            async {
                if let Some(row) = row {
                    store.record_spend(row).await;
                }
            },
            self.refund_tokens(record),
            async {
                if let Some((id, answered)) = answered {
                    store.remember(&id, answered).await;
                }
            },
        );
    }

    /// Gives back to the key's token rate what admission counted beyond the real usage.
    async fn refund_tokens(&self, record: &DecisionRecord) {
        if self.identity.tpm.is_none() {
            return;
        }
        let used = record
            .usage
            .map_or(0, |u| u.input_tokens.saturating_add(u.output_tokens));
        let unused = self.rate_tokens.saturating_sub(used);
        if unused > 0 && record.usage.is_some() {
            self.state.store.refund_tokens(&self.identity, unused).await;
        }
    }

    /// The answer's usage × its price, plus every unusable 2xx body × its model's price.
    fn cost_seen(&self, record: &mut DecisionRecord) -> f64 {
        let input = self.input_tokens as f64;
        let mut cost = 0.0;
        let mut unusable = false;
        for attempt in &record.attempts {
            let Some(bytes) = attempt.unusable_body_bytes else {
                continue;
            };
            unusable = true;
            self.count_anomaly(&attempt.model, "unusable_body");
            if let Some(price) = self.engine.price_of(&attempt.model) {
                cost += price.cost_usd(input, (bytes as f64 / CHARS_PER_TOKEN).ceil());
            }
        }
        if unusable {
            record.anomalies.push("unusable_body".into());
        }
        if let (Some(model), Some(usage)) = (&record.model, record.usage)
            && let Some(price) = self.engine.price_of(model)
        {
            cost += price.cost_of(
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.output_tokens,
            );
        }
        cost
    }

    fn flag(&self, record: &mut DecisionRecord, kind: &str) {
        let model = record.model.clone().unwrap_or_default();
        self.count_anomaly(&model, kind);
        record.anomalies.push(kind.to_owned());
    }

    fn count_anomaly(&self, model: &str, kind: &str) {
        self.state
            .metrics
            .usage_anomalies
            .with_label_values(&[model, kind])
            .inc();
    }

    /// The ledger row of a settled request (`None` without a ledger).
    fn row(&self, record: &DecisionRecord, cost: f64) -> Option<SpendRow> {
        if !self.state.store.has_ledger() {
            return None;
        }
        let model = record
            .model
            .clone()
            .or_else(|| record.attempts.last().map(|a| a.model.clone()))
            .unwrap_or_default();
        let expected_usd = self
            .engine
            .router
            .manifest
            .model(&model)
            .map_or(cost, |m| m.expected_cost(self.input_tokens));
        let usage = record.usage.unwrap_or_default();
        Some(SpendRow {
            request_id: record.request_id.clone(),
            time: now_unix(),
            key: self.identity.key.clone(),
            team: self.identity.team.clone(),
            user: self.identity.user.clone(),
            tier: self.identity.tier.clone(),
            requested_model: record.requested_model.clone(),
            model,
            reason: record.reason.clone(),
            rule: self.rule.clone(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost_usd: cost,
            expected_usd,
            counterfactual_usd: self.counterfactual_usd,
            status: record.status.clone(),
        })
    }
}

impl Drop for Bill {
    /// A bill never settled: release the reservation, charging the worst case if the upstream
    /// may have done work, and record it (ledger row, decision-log line, metric).
    fn drop(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let cost = if self.forwarded { self.worst_usd } else { 0.0 };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("a bill dropped outside the runtime: its reservation stays held");
            return;
        };
        let store = self.state.store.clone();
        if !self.forwarded {
            runtime.spawn(async move { store.settle(reservation, cost).await });
            return;
        }
        let mut record = std::mem::replace(&mut self.record, DecisionRecord::new("", ""));
        record.status = "abandoned".into();
        record.cost_usd = Some(cost);
        record.model = record.chosen.clone();
        self.flag(&mut record, "abandoned");
        tracing::error!(
            request_id = %record.request_id,
            charged_usd = cost,
            "a request ended without being settled; charged its worst case"
        );
        self.state.log.record(&record);
        let row = self.row(&record, cost);
        runtime.spawn(async move {
            store.settle(reservation, cost).await;
            if let Some(row) = row {
                store.record_spend(row).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::ServeConfig;
    use crate::observe::log::DecisionLog;
    use crate::observe::metrics::Metrics;
    use crate::state::CliOverrides;
    use crate::tenancy::admission::{Admission, Policy};
    use crate::tenancy::rate_limit::RateInfo;
    use crate::upstream::forward::Target;

    const MODEL: &str = "llama3-chatqa-1.5-70b";

    /// A state on the default router with a ledger, a decision log and a key budget of $1 for
    /// key `k` (Identity::example).
    async fn state(dir: &Path) -> Arc<AppState> {
        let text = format!(
            r#"
[server]
router = "{router}"
[log]
dir = "{dir}"
[auth]
ledger = "{dir}/ledger.sqlite"
[[upstreams]]
name = "u"
base_url = "http://127.0.0.1:9/v1"
models = ["{MODEL}", "gemma-2-9b-it"]
[[budgets]]
scope = "key"
name = "k"
period = "day"
hard_usd = 1.0
"#,
            router = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/llmrouter"),
            dir = dir.display(),
        );
        let config = ServeConfig::parse(&text, "test").unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let log = DecisionLog::open(&config.log).unwrap();
        let store = crate::store::open(&config, metrics.clone()).await.unwrap();
        let (c, m) = (config.clone(), metrics.clone());
        let engine = tokio::task::spawn_blocking(move || Engine::load(c, None, m))
            .await
            .unwrap()
            .unwrap();
        let state = AppState::new(engine, metrics, log, store, None, CliOverrides::default());
        Arc::new(state)
    }

    /// A bill for a 100-token passthrough request with 1,000 output tokens reserved.
    async fn bill(state: &Arc<AppState>) -> Bill {
        let engine = state.engine();
        let plan = Plan {
            mode: None,
            band: None,
            reason: "passthrough",
            decision: None,
            targets: vec![Target {
                model: MODEL.into(),
                pool: engine.pools.get(MODEL).unwrap().clone(),
            }],
            input_tokens: 100,
            embed_text: "x".into(),
            decision_ms: 0.0,
            router_error: None,
            excluded: Vec::new(),
        };
        let admitted = Admitted {
            admission: Admission {
                identity: Identity::example(),
                tags: Vec::new(),
                policy: Policy::default(),
            },
            rate: RateInfo::default(),
            output_worst: 1000,
            choices: 1,
            rate_tokens: 0,
        };
        let mut record = DecisionRecord::new("req_test", "chat.completions");
        record.chosen = Some(MODEL.into());
        reserve(state, &engine, &admitted, &plan, &record)
            .await
            .unwrap()
    }

    async fn key_budget(state: &AppState) -> (f64, f64) {
        let engine = state.engine();
        let states = state
            .store
            .budget_states(&engine.config.tenants.budgets, now_unix())
            .await
            .unwrap();
        (states[0].settled_usd, states[0].reserved_usd)
    }

    /// The key budget once nothing is reserved on it (a dropped bill settles on a task of its
    /// own): waits at most 5 s.
    async fn released(state: &AppState) -> (f64, f64) {
        for _ in 0..100 {
            let budget = key_budget(state).await;
            if budget.1 == 0.0 {
                return budget;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        key_budget(state).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bill_dropped_before_forwarding_releases_its_reservation_free() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path()).await;
        let bill = bill(&state).await;
        assert!(key_budget(&state).await.1 > 0.0, "reserved");
        drop(bill);
        assert_eq!(released(&state).await, (0.0, 0.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bill_dropped_unsettled_after_forwarding_charges_the_worst_case_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path()).await;
        let mut bill = bill(&state).await;
        bill.forwarded();
        // 100 input + 1,000 output tokens at $0.9 per million.
        let worst = 1100.0 * 0.9e-6;
        drop(bill);
        let (settled, reserved) = released(&state).await;
        assert!((settled - worst).abs() < 1e-12, "{settled}");
        assert_eq!(reserved, 0.0);
        // The ledger row is written on the blocking pool: wait for it (at most 5 s).
        let ledger = rusqlite::Connection::open(dir.path().join("ledger.sqlite")).unwrap();
        let mut row: Option<(String, f64)> = None;
        for _ in 0..100 {
            row = ledger
                .query_row("SELECT status, cost_usd FROM spend", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .ok();
            if row.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, cost) = row.expect("a ledger row for the abandoned request");
        assert_eq!(status, "abandoned");
        assert!((cost - worst).abs() < 1e-12);
        state.log.close();
        let log = std::fs::read_to_string(dir.path().join("decisions.jsonl")).unwrap();
        let line: serde_json::Value = serde_json::from_str(log.trim()).unwrap();
        assert_eq!(line["status"], "abandoned");
        assert_eq!(line["anomalies"], serde_json::json!(["abandoned"]));
        assert_eq!(line["model"], MODEL);
    }
}
