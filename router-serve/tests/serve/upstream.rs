//! Upstream failures, retries, fallback and streaming, against the fake upstream.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Behaviour, TestServer, chat_body, merge, metrics, sse_data};

/// The balanced decision for the test prompt: the chosen model and the next in line.
async fn chosen_and_next(t: &TestServer) -> (String, String) {
    let d = t.route(json!({})).await;
    let chosen = d["chosen"].as_str().unwrap().to_owned();
    let next = d["decision"]["fallback_order"][0]
        .as_str()
        .unwrap()
        .to_owned();
    (chosen, next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_falls_back_to_the_next_candidate() {
    let t = TestServer::start().await;
    let (chosen, next) = chosen_and_next(&t).await;
    t.fake.set(&chosen, Behaviour::Status(503));
    let r = t
        .post("/v1/chat/completions", chat_body("router", false))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-router-reason"], "fallback");
    assert_eq!(r.headers()["x-router-model"], next.as_str());
    let log = t.decisions(2).await;
    let rec = log
        .iter()
        .find(|r| r["endpoint"] == "chat.completions")
        .unwrap();
    let attempts = rec["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["model"], chosen.as_str());
    assert_eq!(attempts[0]["status"], 503);
    assert_eq!(attempts[1]["outcome"], "ok");
    assert_eq!(rec["chosen"], chosen.as_str());
    assert_eq!(rec["model"], next.as_str());
    let metrics = metrics(&t.url("")).await;
    assert!(
        metrics.contains(&format!("router_fallbacks_total{{model=\"{chosen}\"}} 1")),
        "{metrics}"
    );
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_retry_after_then_a_long_one_falls_back() {
    let t = TestServer::with("", "max_retries = 1\nretry_after_max_ms = 2000").await;
    let (chosen, next) = chosen_and_next(&t).await;
    t.fake.set(
        &chosen,
        Behaviour::RateLimited {
            retry_after: 1,
            times: 1,
        },
    );
    let start = Instant::now();
    let r = t
        .post("/v1/chat/completions", chat_body("router", false))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-router-model"],
        chosen.as_str(),
        "retried on the same model"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "retry-after was honoured"
    );

    // retry-after beyond retry_after_max_ms: not waited for, the next model answers.
    t.fake.set(
        &chosen,
        Behaviour::RateLimited {
            retry_after: 60,
            times: 100,
        },
    );
    let r = t
        .post("/v1/chat/completions", chat_body("router", false))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-router-model"], next.as_str());
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_byte_times_out_and_falls_back() {
    let t = TestServer::start().await;
    let (chosen, next) = chosen_and_next(&t).await;
    t.fake.set(&chosen, Behaviour::Slow(Duration::from_secs(5)));
    let r = t
        .post("/v1/chat/completions", chat_body("router", false))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-router-model"], next.as_str());
    let log = t.decisions(2).await;
    let rec = log
        .iter()
        .find(|r| r["endpoint"] == "chat.completions")
        .unwrap();
    assert_eq!(rec["attempts"][0]["outcome"], "timeout");
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_model_fails_the_error_says_so() {
    let t = TestServer::start().await;
    for m in crate::common::MODELS {
        t.fake.set(m, Behaviour::Status(500));
    }
    let r = t
        .post("/v1/chat/completions", chat_body("router", false))
        .await;
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
    assert_eq!(
        t.fake.seen().len(),
        crate::common::MODELS.len(),
        "every model was tried once"
    );

    for m in crate::common::MODELS {
        t.fake.set(
            m,
            Behaviour::RateLimited {
                retry_after: 30,
                times: 100,
            },
        );
    }
    let r = t
        .post("/v1/chat/completions", chat_body("router", false))
        .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_400_goes_back_to_the_client_without_fallback() {
    let t = TestServer::start().await;
    let (chosen, _) = chosen_and_next(&t).await;
    t.fake.set(&chosen, Behaviour::Status(400));
    let r = t
        .post("/v1/chat/completions", chat_body("router", false))
        .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["message"], "fake upstream failure");
    assert_eq!(t.fake.seen().len(), 1);
    t.server.shutdown().await;
}

async fn stream_text(t: &TestServer, extra: Value) -> (reqwest::header::HeaderMap, String) {
    let mut body = chat_body("router", true);
    merge(&mut body, extra);
    let r = t.post("/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let headers = r.headers().clone();
    (headers, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_relayed_with_usage_captured_and_hidden_unless_asked() {
    let t = TestServer::start().await;
    let (h, text) = stream_text(&t, json!({})).await;
    let model = h["x-router-model"].to_str().unwrap().to_owned();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello world");
    assert!(chunks.iter().all(|c| c["model"] == model.as_str()));
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage unless asked: {text}"
    );
    // Upstream was asked for usage, and the log has it.
    assert_eq!(
        t.fake.seen()[0].body["stream_options"]["include_usage"],
        true
    );
    let log = t.decisions(2).await;
    let rec = log
        .iter()
        .find(|r| r["endpoint"] == "chat.completions")
        .unwrap();
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["stream"], true);
    assert_eq!(rec["usage"]["output_tokens"], 3);
    assert!(rec["cost_usd"].as_f64().unwrap() > 0.0);

    // A client that asks for usage gets the usage chunk.
    let (_, text) = stream_text(&t, json!({"stream_options": {"include_usage": true}})).await;
    let data = sse_data(&text);
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 40);
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    t.server.shutdown().await;
}

async fn broken_stream(behaviour: Behaviour, status: &str, code: &str) {
    let t = TestServer::start().await;
    let (chosen, _) = chosen_and_next(&t).await;
    t.fake.set(&chosen, behaviour);
    let (_, text) = stream_text(&t, json!({})).await;
    let data = sse_data(&text);
    assert!(
        !data.iter().any(|d| d == "[DONE]"),
        "{behaviour:?} must not end cleanly: {text}"
    );
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], code, "{text}");
    assert!(
        text.contains("Hello"),
        "chunks before the break were relayed: {text}"
    );
    let log = t.decisions(2).await;
    let rec = log
        .iter()
        .find(|r| r["endpoint"] == "chat.completions")
        .unwrap();
    assert_eq!(rec["status"], status);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_ends_with_an_error_event() {
    broken_stream(
        Behaviour::CutStream,
        "stream_interrupted",
        "upstream_stream_interrupted",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_ends_with_an_error_event() {
    broken_stream(Behaviour::Stall, "stream_stalled", "upstream_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_stream_event_ends_with_an_error_event() {
    broken_stream(Behaviour::BadSse, "stream_bad_event", "upstream_bad_stream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_a_clear_error_naming_the_variable() {
    let t = TestServer::with("", "api_key_env = \"ROUTER_SERVE_TEST_NEVER_SET\"").await;
    let r = t
        .post("/v1/chat/completions", chat_body("router", false))
        .await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_configured");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("ROUTER_SERVE_TEST_NEVER_SET"), "{message}");
    assert_eq!(
        message.matches("ROUTER_SERVE_TEST_NEVER_SET").count(),
        1,
        "{message}"
    );
    assert!(t.fake.seen().is_empty());
    // The decision itself still works without keys.
    assert!(t.route(json!({})).await["chosen"].is_string());
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_failure_fails_open_to_the_configured_model() {
    // A zero deadline: the decision can never arrive in time.
    let t = TestServer::with(
        "decision_timeout_ms = 0\nfail_open_model = \"gemma-2-9b-it\"",
        "",
    )
    .await;
    let r = t
        .post("/v1/chat/completions", chat_body("router", false))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-router-reason"], "router_error");
    assert_eq!(r.headers()["x-router-model"], "gemma-2-9b-it");
    let d = t.route(json!({})).await;
    assert_eq!(d["reason"], "router_error");
    assert!(
        d["router_error"]
            .as_str()
            .unwrap()
            .contains("decision_timeout_ms")
    );
    t.server.shutdown().await;
}
