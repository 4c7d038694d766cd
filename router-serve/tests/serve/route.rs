//! The decision path on the shipped default router with the real encoder.

use std::path::Path;

use router_core::policy::Policy;
use router_serve::routing::decision::Route;

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

/// A router that reads lexical features beside the embedding is served through the encoder
/// thread exactly as `Route::decide` predicts it directly: the features travel with the tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_with_lexical_features_is_served_as_it_predicts() -> anyhow::Result<()> {
    use crate::common::{Fake, PROMPT, chat_body, config_text};
    use router_core::lexical::LexicalSpec;
    use router_serve::Server;
    use router_serve::config::ServeConfig;
    use router_serve::state::CliOverrides;
    use router_train::{FitConfig, HeadChoice, run_fit};

    let tmp = tempfile::tempdir()?;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/llmrouter");
    let out = tmp.path().join("lexical");
    let mut fit = FitConfig::new(
        vec![data.join("labels.parquet").display().to_string()],
        data.join("models.csv"),
        out.clone(),
    );
    fit.load.max_prompts = Some(300);
    fit.cache_dir = Some(tmp.path().join("cache"));
    fit.head = HeadChoice::Linear;
    fit.net.max_epochs = 20;
    fit.lexical = Some(LexicalSpec {
        dim: 128,
        ..LexicalSpec::default()
    });
    run_fit(&fit)?;

    // What the server embeds for `chat_body`: its system prompt and the user turn.
    let embedded = format!("You are a careful math tutor.\n{PROMPT}");
    let direct = Route::load(&out, "cpu")?.decide(&embedded, 0.05, Policy::Value)?;
    let fake = Fake::start().await;
    let text = config_text(&fake, tmp.path(), "", "").replace(
        &default_router().display().to_string(),
        &out.display().to_string(),
    );
    let server = Server::start(
        ServeConfig::parse(&text, "test")?,
        None,
        CliOverrides::default(),
    )
    .await?;
    let mut body = chat_body("router", false);
    body["router"] = serde_json::json!({"band": 0.05});
    let served: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/v1/route", server.addr()))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    let candidates = served["decision"]["candidates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(candidates.len(), direct.candidates.len(), "{served}");
    for (s, d) in candidates.iter().zip(&direct.candidates) {
        assert_eq!(s["model"], d.model.as_str());
        let q = s["predicted_quality"].as_f64().unwrap_or(-1.0);
        assert!(
            (q - f64::from(d.predicted_quality)).abs() < 1e-5,
            "{s} vs {d:?}"
        );
    }
    assert_eq!(served["chosen"], direct.chosen.as_str());
    Ok(())
}
