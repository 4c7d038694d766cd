//! Where a chat request's money is counted: its worst case reserved against every budget
//! before it is forwarded, then the real cost settled (budgets, and a ledger row for an answered
//! request, committed before the response completes so a settled request survives a crash).

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

/// What settling a request needs to know.
pub(super) struct Bill {
    identity: Identity,
    reservation: Reservation,
    rule: Option<String>,
    /// Expected cost of the counterfactual (the router's best model) for this request.
    counterfactual_usd: f64,
    input_tokens: usize,
}

/// Reserves the request's worst case on every budget that applies, or refuses it (429
/// `insufficient_quota`).
pub(super) fn reserve(
    state: &AppState,
    engine: &Engine,
    admitted: &Admitted,
    plan: &Plan,
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
        identity: identity.clone(),
        reservation,
        rule: admitted.admission.policy.rule.clone(),
        counterfactual_usd,
        input_tokens: plan.input_tokens,
    })
}

/// The dearest model the request may end up on: input tokens × input price + `output_tokens`
/// × output price, over every target with a price.
fn worst_case_usd(engine: &Engine, plan: &Plan, output_tokens: u64) -> f64 {
    plan.targets
        .iter()
        .filter_map(|t| engine.router.manifest.model(&t.model))
        .map(|m| m.cost_usd(plan.input_tokens as f64, output_tokens as f64))
        .fold(0.0, f64::max)
}

/// Cost in USD of `usage` on artifact model `model` (None for models the router has no price
/// for).
pub(super) fn cost_of(engine: &Engine, model: &str, usage: Option<Usage>) -> Option<f64> {
    let usage = usage?;
    let info = engine.router.manifest.model(model)?;
    Some(info.cost_usd(usage.input_tokens as f64, usage.output_tokens as f64))
}

/// Replaces the reservation by the real cost and, for an answered request, commits its ledger
/// row (before the response completes, so a settled request survives a crash).
pub(super) async fn settle(
    state: &Arc<AppState>,
    engine: &Engine,
    bill: Bill,
    record: &DecisionRecord,
) {
    let cost = record.cost_usd.unwrap_or(0.0);
    state.money.budgets.settle(bill.reservation, cost);
    let (Some(ledger), Some(model)) = (state.money.ledger.clone(), record.model.clone()) else {
        return;
    };
    if record.usage.is_none() && cost == 0.0 {
        return;
    }
    let expected_usd = engine
        .router
        .manifest
        .model(&model)
        .map_or(cost, |m| m.expected_cost(bill.input_tokens));
    let usage = record.usage.unwrap_or_default();
    let row = SpendRow {
        request_id: record.request_id.clone(),
        time: now_unix(),
        key: bill.identity.key,
        team: bill.identity.team,
        user: bill.identity.user,
        tier: bill.identity.tier,
        requested_model: record.requested_model.clone(),
        model,
        reason: record.reason.clone(),
        rule: bill.rule,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_usd: cost,
        expected_usd,
        counterfactual_usd: bill.counterfactual_usd,
        status: record.status.clone(),
    };
    if let Err(e) = ledger.run(move |l| l.insert(&row)).await {
        tracing::error!(error = %e, "ledger write failed; this request's spend is only in memory");
    }
}
