//! The router's own response headers (`x-router-*`): what was decided and why.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::routing::plan::Plan;

/// `x-router-*` headers.
pub fn router_headers(
    headers: &mut HeaderMap,
    id: &str,
    plan: Option<&Plan>,
    answered: Option<&str>,
    reason: &str,
    overhead_ms: f64,
) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set("x-router-request-id", id.to_owned());
    set("x-router-reason", reason.to_owned());
    set("x-router-overhead-ms", format!("{overhead_ms:.3}"));
    if let Some(model) = answered {
        set("x-router-model", model.to_owned());
    }
    if let Some(plan) = plan {
        if let Some(band) = plan.band {
            set("x-router-band", band.to_string());
        }
        if let Some(mode) = &plan.mode {
            set("x-router-mode", mode.clone());
        }
        if let Some(d) = &plan.decision {
            set("x-router-policy", d.policy.to_string());
        }
        if !plan.excluded.is_empty() {
            let names: Vec<&str> = plan.excluded.iter().map(|e| e.model.as_str()).collect();
            set("x-router-excluded", names.join(","));
        }
        let quality = plan.decision.as_ref().and_then(|d| {
            let model = answered?;
            d.candidates.iter().find(|c| c.model == model)
        });
        if let Some(c) = quality {
            set(
                "x-router-predicted-quality",
                format!("{:.4}", c.predicted_quality),
            );
        }
    }
}
