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
pub(super) fn reserve(
    state: &Arc<AppState>,
    engine: &Arc<Engine>,
    admitted: &Admitted,
    plan: &Plan,
    record: &DecisionRecord,
) -> Result<Bill, ApiError> {
    let identity = &admitted.admission.identity;
    let worst = worst_case_usd(engine, plan, admitted.output_worst);
    let reservation = state
        .money
        .budgets
        .reserve(&engine.config.tenants.budgets, identity, worst, now_unix())
        .map_err(|hit| {
            ApiError::InsufficientQuota(format!(
                "{}; this request could cost up to ${worst:.6}",
                hit.describe("hard limit")
            ))
        })?;
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
        worst_usd: worst,
        reservation: Some(reservation),
        forwarded: false,
        record: record.clone(),
    })
}

/// The dearest answer the request may get: input tokens × input price + `output_tokens` (all
/// `n` choices) × output price, at the dearest model it may be sent to.
fn worst_case_usd(engine: &Engine, plan: &Plan, output_tokens: u64) -> f64 {
    plan.targets
        .iter()
        .filter_map(|t| engine.price_of(&t.model))
        .map(|p| p.cost_usd(plan.input_tokens as f64, output_tokens as f64))
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
            }
        })
    }

    /// Settles at the real cost (at most the worst case), writes `record.cost_usd` and, when
    /// the upstream did work, the ledger row.
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
        self.state.money.budgets.settle(reservation, charged);
        if charged > 0.0 || record.usage.is_some() {
            record.cost_usd = Some(charged);
            if let Some(row) = self.row(record, charged) {
                self.commit(row).await;
            }
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
            cost += price.cost_usd(usage.input_tokens as f64, usage.output_tokens as f64);
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
        self.state.money.ledger.as_ref()?;
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

    async fn commit(&self, row: SpendRow) {
        let Some(ledger) = self.state.money.ledger.clone() else {
            return;
        };
        if let Err(e) = ledger.run(move |l| l.insert(&row)).await {
            tracing::error!(error = %e, "ledger write failed; this request's spend is only in memory");
        }
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
        self.state.money.budgets.settle(reservation, cost);
        if !self.forwarded {
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
        if let (Some(row), Ok(runtime)) = (
            self.row(&record, cost),
            tokio::runtime::Handle::try_current(),
        ) && let Some(ledger) = self.state.money.ledger.clone()
        {
            runtime.spawn(async move {
                if let Err(e) = ledger.run(move |l| l.insert(&row)).await {
                    tracing::error!(error = %e, "ledger write of an abandoned request failed");
                }
            });
        }
    }
}
