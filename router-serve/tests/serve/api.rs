//! The API surface: routing, the OpenAI shapes, headers, request controls and every refusal.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{MODELS, PROMPT, TestServer, chat_body, get_json, merge, metrics};

fn assert_openai_error(body: &Value, code: &str) {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("param").is_some(), "{body}");
    assert_eq!(e["code"], code, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_explains_the_band_and_modes_span_best_to_cheapest() {
    let t = TestServer::start().await;
    let quality = t.route(json!({"model": "router-quality"})).await;
    assert_eq!(quality["mode"], "quality");
    assert_eq!(quality["band"], 0.0);
    let d = &quality["decision"];
    assert_eq!(quality["chosen"], d["best_predicted"]);
    assert_eq!(d["candidates"].as_array().unwrap().len(), MODELS.len());

    let cheapest = t.route(json!({"router": {"band": 1.0}})).await;
    let candidates = cheapest["decision"]["candidates"]
        .as_array()
        .unwrap()
        .clone();
    let min_cost = candidates
        .iter()
        .map(|c| c["expected_cost_usd"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    let chosen = candidates
        .iter()
        .find(|c| c["model"] == cheapest["chosen"])
        .unwrap();
    assert_eq!(chosen["expected_cost_usd"].as_f64().unwrap(), min_cost);

    // The balanced default: in band, no dearer than the best, fallbacks cover the rest.
    let balanced = t.route(json!({})).await;
    let d = &balanced["decision"];
    assert_eq!(balanced["mode"], "balanced");
    assert_eq!(d["in_band"][0], balanced["chosen"]);
    let order = 1 + d["fallback_order"].as_array().unwrap().len();
    assert_eq!(order, MODELS.len());

    // A subset restricts the candidates.
    let subset = t
        .route(json!({"router": {"models": ["gemma-2-9b-it", "codegemma-7b"]}}))
        .await;
    assert!(["gemma-2-9b-it", "codegemma-7b"].contains(&subset["chosen"].as_str().unwrap()));
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_is_routed_forwarded_unchanged_and_logged() {
    let t = TestServer::start().await;
    let mut body = chat_body("router", false);
    merge(
        &mut body,
        json!({"user": "alice", "temperature": 0.2, "router": {"mode": "cost"}}),
    );
    let r = t.post("/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let model = h["x-router-model"].to_str().unwrap().to_owned();
    assert_eq!(h["x-router-reason"], "band");
    assert_eq!(h["x-router-mode"], "cost");
    assert_eq!(h["x-router-band"], "0.15");
    assert!(
        h["x-router-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    let quality: f64 = h["x-router-predicted-quality"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&quality));
    let overhead: f64 = h["x-router-overhead-ms"].to_str().unwrap().parse().unwrap();
    assert!(overhead >= 0.0);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["model"], model.as_str());
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["usage"]["completion_tokens"], 8);

    let seen = t.fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].model, model);
    assert!(
        seen[0].body.get("router").is_none(),
        "the routing field is not forwarded"
    );
    assert_eq!(seen[0].body["temperature"], 0.2);
    assert_eq!(seen[0].body["messages"][1]["content"], PROMPT);

    let log = t.decisions(1).await;
    let rec = &log[0];
    assert_eq!(
        rec["request_id"],
        h["x-router-request-id"].to_str().unwrap()
    );
    assert_eq!(rec["model"], model.as_str());
    assert_eq!(rec["user"], "alice");
    assert_eq!(rec["status"], "ok");
    assert_eq!(
        rec["prompt"],
        format!("You are a careful math tutor.\n{PROMPT}")
    );
    assert_eq!(rec["usage"]["input_tokens"], 40);
    assert_eq!(rec["candidates"].as_array().unwrap().len(), MODELS.len());
    // Cost = 40 input + 8 output tokens at the model's prices (0.1 or 0.2 or 0.9 $/M).
    let cost = rec["cost_usd"].as_f64().unwrap();
    let per_token = cost / 48.0 * 1e6;
    assert!(
        [0.1, 0.2, 0.9].iter().any(|p| (per_token - p).abs() < 1e-9),
        "{cost}"
    );
    assert!(rec["best_expected_cost_usd"].as_f64().unwrap() > 0.0);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_model_passes_through() {
    let t = TestServer::start().await;
    let r = t
        .post("/v1/chat/completions", chat_body("codegemma-7b", false))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-router-reason"], "passthrough");
    assert_eq!(r.headers()["x-router-model"], "codegemma-7b");
    assert!(r.headers().get("x-router-band").is_none());
    assert_eq!(t.fake.seen()[0].model, "codegemma-7b");
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_lose_nothing() {
    let t = TestServer::with("max_body_bytes = 4096\nmax_input_tokens = 200", "").await;
    let raw = |body: &'static str| {
        t.client
            .post(t.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Response, u16, &str)> = vec![
        (raw("{\"model\": ").await.unwrap(), 400, "invalid_json"),
        (
            t.post("/v1/chat/completions", json!({"model": "router"})).await,
            400,
            "",
        ),
        (
            t.post("/v1/chat/completions", chat_body("gpt-17", false)).await,
            400,
            "model_not_found",
        ),
        (
            t.post("/v1/chat/completions", chat_body("router-turbo", false)).await,
            400,
            "model_not_found",
        ),
        (
            t.post(
                "/v1/chat/completions",
                json!({"model": "router", "messages": [{"role": "user", "content": "x".repeat(5000)}]}),
            )
            .await,
            413,
            "request_too_large",
        ),
        (
            t.post(
                "/v1/chat/completions",
                json!({"model": "router", "messages": [{"role": "user", "content": "word ".repeat(600)}]}),
            )
            .await,
            400,
            "context_length_exceeded",
        ),
        (
            {
                let mut b = chat_body("router", false);
                merge(&mut b, json!({"router": {"band": 2.0}}));
                t.post("/v1/chat/completions", b).await
            },
            400,
            "",
        ),
        (
            {
                let mut b = chat_body("router", false);
                merge(&mut b, json!({"router": {"models": ["gpt-17"]}}));
                t.post("/v1/chat/completions", b).await
            },
            400,
            "",
        ),
        (t.post("/v1/nothing", json!({})).await, 404, "not_found"),
    ];
    for (i, (r, status, code)) in cases.into_iter().enumerate() {
        assert_eq!(r.status().as_u16(), status, "case {i}");
        let body: Value = r.json().await.unwrap();
        if code.is_empty() {
            assert_eq!(
                body["error"]["type"], "invalid_request_error",
                "case {i}: {body}"
            );
        } else {
            assert_openai_error(&body, code);
        }
    }
    // Nothing reached the upstream, and the server still answers.
    assert!(t.fake.seen().is_empty());
    let ok = t
        .post("/v1/chat/completions", chat_body("router", false))
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_metrics() {
    let t = TestServer::start().await;
    let models: Value = get_json(&t.url("/v1/models")).await;
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        "router",
        "router-quality",
        "router-balanced",
        "router-cost",
        "gemma-2-9b-it",
    ] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    let health: Value = get_json(&t.url("/health")).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["routable_models"], MODELS.len());
    // The shipped router was trained on int8 embeddings: the server embeds the same way.
    assert_eq!(health["encoder"]["precision"], "int8");
    assert!(health["encoder"]["int8_kernel"].is_string(), "{health}");

    t.post("/v1/chat/completions", chat_body("router", false))
        .await;
    let metrics = metrics(&t.url("")).await;
    for name in [
        "router_requests_total{endpoint=\"chat\"",
        "router_decision_seconds_bucket",
        "router_overhead_seconds_bucket",
        "router_upstream_seconds_bucket",
        "router_tokens_total",
        "router_cost_microusd_total",
        "router_encoder_batch_size_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_prompt_is_decided_from_the_cache() {
    let t = TestServer::start().await;
    let first = t.route(json!({})).await;
    let second = t.route(json!({"router": {"band": 1.0}})).await;
    let third = t.route(json!({})).await;
    assert_eq!(
        first["decision"]["candidates"],
        third["decision"]["candidates"]
    );
    assert_eq!(first["chosen"], third["chosen"]);
    assert_eq!(first["input_tokens"], second["input_tokens"]);
    let metrics = metrics(&t.url("")).await;
    assert!(
        metrics.contains("router_decision_cache_total{result=\"hit\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("router_decision_cache_total{result=\"miss\"} 1"),
        "{metrics}"
    );
    t.server.shutdown().await;
}
