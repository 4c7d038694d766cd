//! Operations: feedback into a training set, reload (admin, file change, SIGHUP), graceful
//! shutdown, keys on a real process.

use std::path::Path;
use std::time::Duration;

use router_serve::Server;
use router_serve::config::ServeConfig;
use router_serve::state::CliOverrides;
use serde_json::{Value, json};

use crate::common::{
    Behaviour, Binary, Fake, PROMPT, TestServer, chat_body, config_text, default_router, get_json,
    metrics, read_jsonl, sse_data, wait_for_band,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_becomes_a_training_set_router_train_reads() {
    let t = TestServer::start().await;
    let r = t
        .post("/v1/chat/completions", chat_body("router", false))
        .await;
    let id = r.headers()["x-router-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let model = r.headers()["x-router-model"].to_str().unwrap().to_owned();
    let ok = t
        .post("/v1/feedback", json!({"request_id": id, "score": 1.0}))
        .await;
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["trainable"], true);
    // Unknown ids and bad bodies are refused.
    let unknown = t
        .post(
            "/v1/feedback",
            json!({"request_id": "req_nope", "score": 1.0}),
        )
        .await;
    assert_eq!(unknown.status(), 404);
    let bad = t
        .post("/v1/feedback", json!({"request_id": id, "score": "good"}))
        .await;
    assert_eq!(bad.status(), 400);

    // A second model answers the same prompt (passed through) and is scored 0.
    let other = passthrough_scored_zero(&t, &model).await;

    let path = t.logs.path().join("feedback.jsonl");
    let rows = read_jsonl(&path, 2).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["model"], model.as_str());
    assert_eq!(rows[0]["score"], 1.0);
    assert!(rows[0]["prompt"].as_str().unwrap().ends_with(PROMPT));
    assert_eq!(rows[0]["prompt"], rows[1]["prompt"]);
    // The same columns as an eval log: router-train loads it as training data.
    let table =
        router_train::data::load(&[path], &router_train::data::LoadOptions::default()).unwrap();
    assert_eq!(table.prompts.len(), 1);
    let mut expected = vec![model, other.to_owned()];
    expected.sort();
    assert_eq!(table.models, expected);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exploration_spreads_answers_over_the_band_and_logs_their_propensity() {
    // Always exploring, in the widest band: every model is a candidate, each drawn uniformly.
    let t = TestServer::with("", "[routing]\nexplore = 1.0").await;
    let mut body = chat_body("router", false);
    body["router"] = json!({"band": 1.0});
    let mut models = std::collections::BTreeSet::new();
    let mut ids = Vec::new();
    for _ in 0..24 {
        let r = t.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-router-reason"], "explore");
        models.insert(r.headers()["x-router-model"].to_str().unwrap().to_owned());
        ids.push(
            r.headers()["x-router-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    // 24 uniform draws from 9 models: all on one is (1/9)^23.
    assert!(models.len() >= 2, "{models:?}");
    let lines = t.decisions(24).await;
    assert_eq!(lines.len(), 24);
    for line in &lines {
        let n = line["in_band"].as_array().unwrap().len();
        assert!(n >= 2, "{line}");
        assert_eq!(line["reason"], "explore");
        assert_eq!(line["propensity"].as_f64().unwrap(), 1.0 / n as f64);
        assert_eq!(line["chosen"], line["model"]);
    }
    // The label sent back carries the propensity; a passthrough's has none.
    let ok = t
        .post("/v1/feedback", json!({"request_id": ids[0], "score": 1.0}))
        .await;
    assert_eq!(ok.status(), 200);
    // Another model, by name (router-train needs two models to read the rows).
    let first = lines.iter().find(|l| l["request_id"] == ids[0]).unwrap();
    passthrough_scored_zero(&t, first["model"].as_str().unwrap()).await;
    let rows = read_jsonl(&t.logs.path().join("feedback.jsonl"), 2).await;
    assert_eq!(rows[0]["propensity"], first["propensity"]);
    assert!(rows[1]["propensity"].is_null(), "{}", rows[1]);
    // router-train reads the propensity for --propensity-weights.
    let table = router_train::data::load(
        &[t.logs.path().join("feedback.jsonl")],
        &router_train::data::LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(table.n_propensity_rows, 1);
    assert!(table.propensity_weighted_mask(10.0).is_some());
    // Exploring is counted under its own reason.
    let text = metrics(&format!("http://{}", t.server.addr())).await;
    assert!(text.contains("reason=\"explore\""), "{text}");
    t.server.shutdown().await;
}

/// A model other than `model` answers the test prompt by name (a passthrough), and that answer
/// is scored 0 through `/v1/feedback`; returns the model.
async fn passthrough_scored_zero(t: &TestServer, model: &str) -> &'static str {
    let other = if model == "codegemma-7b" {
        "gemma-2-9b-it"
    } else {
        "codegemma-7b"
    };
    let r = t
        .post("/v1/chat/completions", chat_body(other, false))
        .await;
    let id = r.headers()["x-router-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let ok = t
        .post("/v1/feedback", json!({"request_id": id, "score": 0.0}))
        .await;
    assert_eq!(ok.status(), 200);
    other
}

fn copy_router(to: &Path, name: &str) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(
        default_router().join("head.safetensors"),
        to.join("head.safetensors"),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(default_router().join("router.json")).unwrap();
    let mut v: Value = serde_json::from_str(&manifest).unwrap();
    v["name"] = json!(name);
    std::fs::write(
        to.join("router.json"),
        serde_json::to_string_pretty(&v).unwrap(),
    )
    .unwrap();
}

/// A server started from a config file, so that reloads re-read it.
async fn server_from_file(text: &str, dir: &Path) -> (Server, std::path::PathBuf) {
    let path = dir.join("router.toml");
    std::fs::write(&path, text).unwrap();
    let config = ServeConfig::from_file(&path).unwrap();
    let server = Server::start(config, Some(path.clone()), CliOverrides::default())
        .await
        .unwrap();
    (server, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_artifact_and_config_under_load_and_refuses_a_broken_config() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    copy_router(&a, "router-a");
    copy_router(&b, "router-b");
    let base = config_text(&fake, dir.path(), "", "");
    let with = |router: &Path, band: f64| {
        base.replace(
            &format!("router = \"{}\"", default_router().display()),
            &format!("router = \"{}\"", router.display()),
        ) + &format!("\n[routing]\nmodes = {{ balanced = {band} }}\n")
    };
    let (server, path) = server_from_file(&with(&a, 0.05), dir.path()).await;
    let url = |p: &str| format!("http://{}{p}", server.addr());
    let client = reqwest::Client::new();

    // Load: 4 clients × 15 requests while the config and artifact are swapped three times.
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, url) = (client.clone(), url("/v1/chat/completions"));
        load.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..15 {
                let r = client
                    .post(&url)
                    .json(&chat_body("router", false))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        }));
    }
    for (i, (router, band)) in [(&b, 0.1), (&a, 0.2), (&b, 0.3)].into_iter().enumerate() {
        std::fs::write(&path, with(router, band)).unwrap();
        let r = client.post(url("/admin/reload")).send().await.unwrap();
        assert_eq!(r.status(), 200, "reload {i}");
        let report: Value = r.json().await.unwrap();
        assert_eq!(report["encoder_reused"], true, "same encoder: not reloaded");
    }
    for task in load {
        let statuses = task.await.unwrap();
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
    let health: Value = get_json(&url("/health")).await;
    assert_eq!(health["router"], "router-b");
    let d: Value = client
        .post(url("/v1/route"))
        .json(&json!({"messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["band"], 0.3);

    // A broken config is refused; the old one keeps serving.
    std::fs::write(&path, "[routing]\nmodes = { balanced = 7 }\n").unwrap();
    let r = client.post(url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("routing.modes.balanced"),
        "{body}"
    );
    let ok = client
        .post(url("/v1/chat/completions"))
        .json(&chat_body("router", false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-router-band"], "0.3");
    let metrics = metrics(&url("")).await;
    assert!(
        metrics.contains("router_reloads_total{result=\"error\",trigger=\"admin\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("router_reloads_total{result=\"ok\",trigger=\"admin\"} 3"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_file_is_picked_up() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&fake, dir.path(), "", "")
        .replace("watch_interval_ms = 0", "watch_interval_ms = 100");
    let (server, path) = server_from_file(&text, dir.path()).await;
    std::fs::write(
        &path,
        format!("{text}\n[routing]\nmodes = {{ balanced = 0.25 }}\n"),
    )
    .unwrap();
    let band = wait_for_band(&format!("http://{}", server.addr()), 0.25).await;
    assert_eq!(band, 0.25);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_streams_in_flight_and_flushes_the_log() {
    let t = TestServer::start().await;
    for m in crate::common::MODELS {
        t.fake
            .set(m, Behaviour::SlowStream(Duration::from_millis(100)));
    }
    let r = t
        .post("/v1/chat/completions", chat_body("router", true))
        .await;
    assert_eq!(r.status(), 200);
    let reading = tokio::spawn(async move { r.text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let logs = t.logs.path().to_owned();
    t.server.shutdown().await;
    let text = reading.await.unwrap();
    assert_eq!(
        sse_data(&text).last().map(String::as_str),
        Some("[DONE]"),
        "{text}"
    );
    let log = std::fs::read_to_string(logs.join("decisions.jsonl")).unwrap();
    let last: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "ok");
    assert_eq!(last["stream"], true);
}

/// The binary: the key reaches the upstream but never the logs, SIGHUP reloads, SIGTERM exits
/// cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_forwards_the_key_reloads_on_sighup_and_exits_on_sigterm() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &fake,
        dir.path(),
        "admin_key_env = \"ROUTER_TEST_ADMIN_KEY\"",
        "api_key_env = \"ROUTER_TEST_UPSTREAM_KEY\"",
    );
    let path = dir.path().join("router.toml");
    std::fs::write(&path, &text).unwrap();
    let secret = "sk-test-7f3a9c1e-never-logged";
    let admin = "admin-test-51c2-never-logged";
    let mut bin = Binary::start(
        &path,
        &[
            ("ROUTER_TEST_UPSTREAM_KEY", secret),
            ("ROUTER_TEST_ADMIN_KEY", admin),
        ],
    );
    let base = bin.base.clone();
    let client = reqwest::Client::new();
    // With an admin key configured, admin endpoints need it, even from loopback.
    for key in [None, Some("wrong")] {
        let mut r = client.post(format!("{base}/admin/reload"));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        assert_eq!(r.send().await.unwrap().status(), 401, "{key:?}");
    }
    let r = client
        .post(format!("{base}/admin/reload"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body("router", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        fake.seen()[0].authorization.as_deref(),
        Some(format!("Bearer {secret}").as_str())
    );

    std::fs::write(
        &path,
        format!("{text}\n[routing]\nmodes = {{ balanced = 0.4 }}\n"),
    )
    .unwrap();
    bin.signal("HUP");
    let band = wait_for_band(&base, 0.4).await;
    assert_eq!(band, 0.4, "SIGHUP reloaded the config");

    bin.signal("TERM");
    let status = bin.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let logs = bin.stderr.join().unwrap();
    assert!(logs.contains("reloaded"), "{logs}");
    assert!(!logs.contains(secret), "the key leaked into the logs");
    assert!(!logs.contains(admin), "the admin key leaked into the logs");
    let decisions = std::fs::read_to_string(dir.path().join("decisions.jsonl")).unwrap();
    assert!(!decisions.contains(secret));
}
