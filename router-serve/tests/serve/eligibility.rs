//! Capability-aware eligibility: requests with tools, image parts, a `json_schema` response
//! format, or too long for a model's context window go only to models that can serve them;
//! none capable is a 400; the decision says which models were excluded and why.

use serde_json::{Value, json};

use crate::common::{MODELS, TestServer, chat_body, merge};

/// The one model with tools, the one with vision, the one with structured output, and the one
/// with a 60-token window.
const TOOLS: &str = "llama3-chatqa-1.5-70b";
const VISION: &str = "gemma-2-9b-it";
const SCHEMA: &str = "qwen2.5-7b-instruct";
const SMALL: &str = "llama-3.1-8b-instruct";

fn capabilities() -> String {
    MODELS
        .iter()
        .map(|m| {
            let window = if *m == SMALL {
                "context_window = 60\n"
            } else {
                ""
            };
            format!(
                "\n[models.\"{m}\"]\n{window}tools = {}\nvision = {}\njson_schema = {}\n",
                *m == TOOLS,
                *m == VISION,
                *m == SCHEMA
            )
        })
        .collect()
}

fn body(extra: Value) -> Value {
    let mut body = chat_body("router", false);
    merge(&mut body, extra);
    body
}

fn tools() -> Value {
    json!({"tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]})
}

fn image() -> Value {
    json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    ]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_only_to_models_that_can_serve_them() {
    let t = TestServer::with("", &capabilities()).await;
    let schema = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}});
    for (extra, only, reason) in [
        (tools(), TOOLS, "no tool calls"),
        (image(), VISION, "no image inputs"),
        (schema, SCHEMA, "no json_schema response format"),
    ] {
        let decision = t.route(extra.clone()).await;
        assert_eq!(decision["chosen"], only, "{extra}");
        let excluded = decision["excluded"].as_array().unwrap();
        assert_eq!(excluded.len(), MODELS.len() - 1, "{decision:#}");
        assert!(
            excluded.iter().all(|e| e["reason"] == reason),
            "{decision:#}"
        );
        let r = t.post("/v1/chat/completions", body(extra)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-router-model"], only);
        assert!(r.headers().contains_key("x-router-excluded"));
    }
    // Too long for the small window: that one model is out, with the numbers.
    let long = "Explain this step by step. ".repeat(20);
    let decision = t
        .route(json!({"messages": [{"role": "user", "content": long}]}))
        .await;
    let excluded = decision["excluded"].as_array().unwrap();
    assert_eq!(excluded.len(), 1, "{decision:#}");
    assert_eq!(excluded[0]["model"], SMALL);
    assert!(
        excluded[0]["reason"]
            .as_str()
            .unwrap()
            .contains("context window of 60")
    );
    let log = t.decisions(3).await;
    assert!(
        log.iter()
            .all(|l| l["excluded"].as_array().is_some_and(|e| !e.is_empty()))
    );
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_model_can_serve_is_a_400_naming_why() {
    let t = TestServer::with("", &capabilities()).await;
    // Tools and an image: the tools model sees no images, the vision model calls no tools.
    let mut both = body(image());
    merge(&mut both, tools());
    let r = t.post("/v1/chat/completions", both).await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no model can serve this request"),
        "{message}"
    );
    assert!(
        message.contains(&format!("{VISION} (no tool calls)")),
        "{message}"
    );
    // By name: a model that cannot serve the request is a 400 too, never a pass to the upstream.
    let mut by_name = chat_body(VISION, false);
    merge(&mut by_name, tools());
    let r = t.post("/v1/chat/completions", by_name).await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["param"], "model");
    assert!(t.fake.seen().is_empty());
    t.server.shutdown().await;
}
