//! The decision path on the shipped default router with the real encoder.

use std::path::Path;

use router_core::policy::Policy;
use router_serve::route::Route;

fn default_router() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llmrouter")
}

#[test]
fn the_shipped_router_decides_within_its_band() -> anyhow::Result<()> {
    let route = Route::load(&default_router(), "cpu")?;
    let prompt = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?";
    for policy in Policy::ALL {
        let strict = route.decide(prompt, 0.0, policy)?;
        let loose = route.decide(prompt, 1.0, policy)?;
        assert_eq!(strict.candidates.len(), 9);
        assert_eq!(strict.policy, policy);
        // Band 0 takes the best predicted model; band 1 the cheapest.
        assert_eq!(strict.chosen, strict.best_predicted);
        let cheapest = loose
            .candidates
            .iter()
            .min_by(|a, b| a.expected_cost_usd.total_cmp(&b.expected_cost_usd))
            .map(|c| c.model.clone());
        assert_eq!(Some(loose.chosen.clone()), cheapest);
        // Whatever the band, the choice is in band and no dearer than the best.
        let mid = route.decide(prompt, 0.05, policy)?;
        let pick = |name: &str| mid.candidates.iter().find(|c| c.model == name).cloned();
        let (chosen, best) = (pick(&mid.chosen), pick(&mid.best_predicted));
        let (Some(chosen), Some(best)) = (chosen, best) else {
            anyhow::bail!("chosen or best missing from the candidates");
        };
        assert!(chosen.in_band);
        assert!(chosen.predicted_quality >= best.predicted_quality - 0.05 - 1e-6);
        assert!(chosen.expected_cost_usd <= best.expected_cost_usd);
        assert_eq!(mid.in_band.first(), Some(&mid.chosen));
    }
    Ok(())
}

#[test]
fn a_bad_band_or_router_is_an_error() {
    assert!(Route::load(Path::new("/nonexistent/router"), "cpu").is_err());
    if let Ok(route) = Route::load(&default_router(), "cpu") {
        assert!(route.decide("hi", 1.5, Policy::Value).is_err());
    }
}

#[test]
fn a_missing_encoder_offline_says_what_to_run() -> anyhow::Result<()> {
    let empty = tempfile::tempdir()?;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_router-serve"))
        .args(["route", "--prompt", "hi", "--router"])
        .arg(default_router())
        .env("HF_HOME", empty.path())
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .env("ROUTER_NO_PYPI_FETCH", "1")
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("router-train fetch-encoder") && stderr.contains("HF_HUB_OFFLINE"),
        "{stderr}"
    );
    Ok(())
}
