//! Money and trust under hostile clients, broken upstreams and bad config: one test per defect a
//! black-box probe found (named after what broke), and the 200-request race with clients that
//! ask for `n > 1`, hang up, or get answers without usage.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use router_serve::Server;
use router_serve::config::ServeConfig;
use router_serve::state::CliOverrides;
use serde_json::{Value, json};

use crate::common::{Behaviour, Fake, TestServer, chat_body, config_text, get_json, merge};
use crate::tenants::{chat, server, tenant_tables};

/// The passthrough model of the money tests: $0.9 per million tokens both ways.
const MODEL: &str = "llama3-chatqa-1.5-70b";
const PRICE: f64 = 0.9e-6;

fn ledger_rows(dir: &Path, key: &str) -> (i64, f64) {
    let conn = rusqlite::Connection::open(dir.join("ledger.sqlite")).unwrap();
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) FROM spend WHERE key = ?1",
        [key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

fn budget(scope: &str, name: &str, hard: f64) -> String {
    format!(
        "\n[[budgets]]\nscope = \"{scope}\"\nname = \"{name}\"\nperiod = \"day\"\nhard_usd = {hard}\n"
    )
}

fn body_with(extra: Value) -> Value {
    let mut body = chat_body(MODEL, false);
    merge(&mut body, extra);
    body
}

/// The budget state of `entity`.
async fn budget_state(t: &TestServer, entity: &str) -> Value {
    let all = get_json(&t.url("/v1/budgets")).await;
    all["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["entity"] == entity)
        .cloned()
        .unwrap_or(Value::Null)
}

/// A model cannot write past its context window: a request without `max_tokens` reserves at
/// most the window's worth of output (not `auth.default_max_tokens`) on a model with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worst_case_is_capped_by_the_models_context_window() {
    // ~58 input + 4,096 default output tokens at $0.9/M ≈ $0.0037 > $0.002; with a window of
    // 1,000 tokens, ≈ $0.00095 fits.
    let tables = |window: &str| {
        let dir = tempfile::tempdir().unwrap();
        let mut text = tenant_tables(
            &dir.path().join("l.sqlite"),
            true,
            &budget("key", "racer", 0.002),
        );
        text.push_str(window);
        (text, dir)
    };
    let (capped, _d1) = tables(&format!("\n[models.\"{MODEL}\"]\ncontext_window = 1000\n"));
    let t = TestServer::with("", &capped).await;
    let r = chat(&t, Some("sk-racer"), chat_body(MODEL, false), None).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    t.server.shutdown().await;
    let (uncapped, _d2) = tables("");
    let t = TestServer::with("", &uncapped).await;
    let r = chat(&t, Some("sk-racer"), chat_body(MODEL, false), None).await;
    assert_eq!(r.status(), 429);
    t.server.shutdown().await;
}

/// A provider's prompt-cache hits are charged at the cached-input price, not the full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_input_tokens_are_charged_at_the_cached_input_price() {
    let dir = tempfile::tempdir().unwrap();
    let prices = format!(
        "\n[prices.\"{MODEL}\"]\ninput_per_million = 1.0\noutput_per_million = 2.0\ncached_input_per_million = 0.1\n"
    );
    let tables = tenant_tables(&dir.path().join("ledger.sqlite"), true, &prices);
    let t = TestServer::with("", &tables).await;
    t.fake.set(MODEL, Behaviour::CachedUsage(30));
    let r = chat(
        &t,
        Some("sk-racer"),
        body_with(json!({"max_tokens": 8})),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let log = t.decisions(1).await;
    assert_eq!(log[0]["usage"]["cached_input_tokens"], 30);
    t.server.shutdown().await;
    // 10 fresh input tokens at $1/M, 30 cached at $0.1/M, 8 output tokens at $2/M.
    let expected = (10.0 * 1.0 + 30.0 * 0.1 + 8.0 * 2.0) / 1e6;
    let (rows, cost) = ledger_rows(dir.path(), "racer");
    assert_eq!(rows, 1);
    assert!((cost - expected).abs() < 1e-12, "{cost} != {expected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_is_still_charged_and_frees_its_reservation() {
    let (t, dir) = server(&budget("key", "racer", 0.02)).await;
    t.fake
        .set(MODEL, Behaviour::Slow(Duration::from_millis(600)));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = impatient
            .post(t.url("/v1/chat/completions"))
            .bearer_auth("sk-racer")
            .json(&body_with(json!({"max_tokens": 4000})))
            .send()
            .await;
        assert!(r.is_err(), "the client gave up first");
    }
    let log = t.decisions(5).await;
    let gone = log
        .iter()
        .filter(|r| r["status"] == "client_disconnected")
        .count();
    assert_eq!(gone, 5, "{log:#?}");
    let state = budget_state(&t, "racer").await;
    assert_eq!(state["reserved_usd"], 0.0, "{state}");
    let per_request = 48.0 * PRICE;
    let settled = state["settled_usd"].as_f64().unwrap();
    assert!((settled - 5.0 * per_request).abs() < 1e-9, "{state}");
    let (rows, total) = ledger_rows(dir.path(), "racer");
    assert_eq!(rows, 5);
    assert!((total - settled).abs() < 1e-9);
    assert_eq!(t.fake.seen().len(), 5);
    // The budget is free for the next request.
    let r = chat(
        &t,
        Some("sk-racer"),
        body_with(json!({"max_tokens": 4000})),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_count_in_the_worst_case() {
    let (t, _dir) = server(&budget("key", "racer", 0.02)).await;
    // 128 answers of 1,000 tokens could cost $0.115: more than the whole budget.
    let r = chat(
        &t,
        Some("sk-racer"),
        body_with(json!({"n": 128, "max_tokens": 1000})),
        None,
    )
    .await;
    assert_eq!(r.status(), 429);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "insufficient_quota");
    assert!(t.fake.seen().is_empty());
    let r = chat(
        &t,
        Some("sk-racer"),
        body_with(json!({"n": 2, "max_tokens": 1000})),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(t.fake.seen()[0].body["n"], 2);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_usage_is_charged_from_our_own_count() {
    let (t, dir) = server("").await;
    t.fake.set(MODEL, Behaviour::NoUsage);
    let r = chat(&t, Some("sk-racer"), body_with(json!({})), None).await;
    assert_eq!(r.status(), 200);
    let (rows, cost) = ledger_rows(dir.path(), "racer");
    assert_eq!(rows, 1);
    assert!(cost > 0.0, "charged {cost}");
    let log = t.decisions(1).await;
    assert_eq!(
        log[0]["anomalies"],
        json!(["missing_usage"]),
        "{:#}",
        log[0]
    );
    // "Hello from the fake upstream." is 29 characters: 8 tokens at 4 per token.
    assert_eq!(log[0]["usage"]["output_tokens"], 8);
    let metrics = crate::common::metrics(&format!("http://{}", t.server.addr())).await;
    assert!(
        metrics.contains(&format!(
            "router_usage_anomalies_total{{kind=\"missing_usage\",model=\"{MODEL}\"}} 1"
        )),
        "{metrics}"
    );
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_past_the_worst_case_is_charged_at_the_worst_case_and_flagged() {
    let (t, dir) = server("").await;
    t.fake.set(MODEL, Behaviour::HugeUsage(100_000));
    let r = chat(
        &t,
        Some("sk-racer"),
        body_with(json!({"max_tokens": 8})),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let (_, cost) = ledger_rows(dir.path(), "racer");
    // Far below what 100,000 tokens would cost ($0.09): at most the input estimate + 8 tokens.
    assert!(cost < 200.0 * PRICE, "charged {cost}");
    let log = t.decisions(1).await;
    assert_eq!(log[0]["anomalies"], json!(["over_reserved"]));
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_model_without_a_price_is_refused_at_load_and_charged_when_priced() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra =
        "\n[[upstreams]]\nname = \"other\"\nbase_url = \"{base}\"\nmodels = [\"gpt-unpriced\"]\n"
            .replace("{base}", &fake.base_url());
    let tables = tenant_tables(&dir.path().join("ledger.sqlite"), true, "");
    let text = config_text(&fake, dir.path(), "", &tables) + &extra;
    let config = ServeConfig::parse(&text, "test").unwrap();
    let Err(error) = Server::start(config, None, CliOverrides::default()).await else {
        panic!("a served model without a price was accepted with a ledger on");
    };
    assert!(error.to_string().contains("gpt-unpriced"), "{error}");

    let priced = format!(
        "{text}\n[prices.\"gpt-unpriced\"]\ninput_per_million = 10.0\noutput_per_million = 20.0\n"
    );
    let config = ServeConfig::parse(&priced, "test").unwrap();
    let server = Server::start(config, None, CliOverrides::default())
        .await
        .unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", server.addr()))
        .bearer_auth("sk-racer")
        .json(&chat_body("gpt-unpriced", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.shutdown().await;
    let (rows, cost) = ledger_rows(dir.path(), "racer");
    assert_eq!(rows, 1);
    assert!(
        (cost - (40.0 * 10.0 + 8.0 * 20.0) / 1e6).abs() < 1e-12,
        "{cost}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_would_switch_auth_off_is_refused() {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tables = tenant_tables(&dir.path().join("ledger.sqlite"), true, "");
    let text = config_text(&fake, dir.path(), "", &tables);
    let path = dir.path().join("router.toml");
    std::fs::write(&path, &text).unwrap();
    let config = ServeConfig::from_file(&path).unwrap();
    let server = Server::start(config, Some(path.clone()), CliOverrides::default())
        .await
        .unwrap();
    let base = format!("http://{}", server.addr());
    let client = reqwest::Client::new();
    let anonymous_chat = || {
        client
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat_body(MODEL, false))
            .send()
    };
    // The file saved half-way: everything before [auth].
    let cut = &text[..text.find("[auth]").unwrap()];
    std::fs::write(&path, cut).unwrap();
    let r = client
        .post(format!("{base}/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let err: Value = r.json().await.unwrap();
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("auth.required"), "{message}");
    assert!(message.contains("allow_auth_downgrade"), "{message}");
    assert_eq!(anonymous_chat().await.unwrap().status(), 401);

    // Meant: the new file says so.
    std::fs::write(
        &path,
        format!("{cut}\n[auth]\nrequired = false\nallow_auth_downgrade = true\n"),
    )
    .unwrap();
    let r = client
        .post(format!("{base}/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(anonymous_chat().await.unwrap().status(), 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_needs_the_key_or_team_that_made_the_request() {
    let (t, _dir) = server("").await;
    let r = chat(&t, Some("sk-pro"), chat_body("router", false), None).await;
    let id = r.headers()["x-router-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let feedback = |key: Option<&'static str>, score: f64| {
        let mut r = t
            .client
            .post(t.url("/v1/feedback"))
            .json(&json!({"request_id": id, "score": score}));
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        r.send()
    };
    assert_eq!(feedback(None, 1.0).await.unwrap().status(), 401);
    assert_eq!(feedback(Some("sk-wrong"), 1.0).await.unwrap().status(), 401);
    // Another team's key: the request is unknown to it.
    assert_eq!(feedback(Some("sk-free"), 1.0).await.unwrap().status(), 404);
    let r = feedback(Some("sk-pro"), 1e308).await.unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["param"], "score");
    assert_eq!(feedback(Some("sk-pro"), 0.8).await.unwrap().status(), 200);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_past_any_limit_is_a_400_not_a_panic() {
    let t = TestServer::start().await;
    for extra in [
        json!({"max_tokens": u64::MAX}),
        json!({"max_tokens": -1}),
        json!({"max_completion_tokens": 1.5}),
        json!({"n": 0}),
    ] {
        let mut body = chat_body("router", false);
        merge(&mut body, extra.clone());
        let r = t.post("/v1/chat/completions", body).await;
        assert_eq!(r.status(), 400, "{extra}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error", "{extra}");
    }
    assert_eq!(
        t.post("/v1/chat/completions", chat_body("router", false))
            .await
            .status(),
        200
    );
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_200_is_an_upstream_failure_not_a_clean_answer() {
    let (t, dir) = server("").await;
    // Routed: the chosen model answers garbage, the next one in the fallback order answers.
    let decision: Value = t
        .client
        .post(t.url("/v1/route"))
        .bearer_auth("sk-racer")
        .json(&chat_body("router", false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chosen = decision["chosen"].as_str().unwrap().to_owned();
    t.fake.set(&chosen, Behaviour::Unusable);
    let r = chat(&t, Some("sk-racer"), chat_body("router", false), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-router-reason"], "fallback");
    assert_ne!(r.headers()["x-router-model"], chosen.as_str());
    let answer: Value = r.json().await.unwrap();
    assert!(answer["choices"].is_array());
    // Passthrough to a model that only answers garbage: 502, and the work is still charged.
    t.fake.set(MODEL, Behaviour::Unusable);
    let r = chat(&t, Some("sk-racer"), chat_body(MODEL, false), None).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-router-reason"], "upstream_failed");
    let log = t.decisions(2).await;
    let failed = log
        .iter()
        .find(|l| l["status"] == "upstream_error")
        .unwrap();
    assert_eq!(failed["reason"], "upstream_failed");
    assert_eq!(failed["anomalies"], json!(["unusable_body"]));
    assert_eq!(failed["attempts"][0]["outcome"], "unusable_body");
    let (rows, cost) = ledger_rows(dir.path(), "racer");
    assert_eq!(rows, 2);
    assert!(cost > 0.0);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_a_user_cannot_escape_user_budgets() {
    // Room for one request per user: 48 tokens settled, ~53 reserved for the next.
    let (t, _dir) = server(&budget("user", "*", 60.0 * PRICE)).await;
    let as_user = |key: &'static str, user: Option<&'static str>| {
        let mut body = body_with(json!({"max_tokens": 8}));
        if let Some(user) = user {
            merge(&mut body, json!({ "user": user }));
        }
        chat(&t, Some(key), body, None)
    };
    assert_eq!(as_user("sk-nouser", Some("u1")).await.status(), 200);
    assert_eq!(as_user("sk-nouser", Some("u2")).await.status(), 429);
    assert_eq!(as_user("sk-nouser", None).await.status(), 429);
    // A key that lets the request name its user: separate budgets per user.
    assert_eq!(as_user("sk-fromreq", Some("u1")).await.status(), 200);
    assert_eq!(as_user("sk-fromreq", Some("u2")).await.status(), 200);
    assert_eq!(as_user("sk-fromreq", Some("u1")).await.status(), 429);
    let log = t.decisions(3).await;
    assert!(
        log.iter()
            .any(|l| l["user"] == "-" && l["key"] == "no-user")
    );
    t.server.shutdown().await;
}

/// Reads from `stream` until the server closes it (true) or `limit` passes (false).
fn closed_within(stream: &mut TcpStream, limit: Duration) -> (bool, String) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&seen).into_owned()),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (false, String::from_utf8_lossy(&seen).into_owned()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_bodies_and_idle_connections_are_cut_off() {
    let t = TestServer::with(
        "header_read_timeout_ms = 300\nbody_read_timeout_ms = 300",
        "",
    )
    .await;
    let addr = t.server.addr();
    let checks = tokio::task::spawn_blocking(move || {
        // Headers that never end (slowloris).
        let mut headers = TcpStream::connect(addr).unwrap();
        headers
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let (closed, _) = closed_within(&mut headers, Duration::from_secs(5));
        assert!(closed, "a connection stalled mid-headers stays open");
        // A body that never arrives.
        let mut body = TcpStream::connect(addr).unwrap();
        body.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
        )
        .unwrap();
        let (_, answer) = closed_within(&mut body, Duration::from_secs(5));
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
        // An idle keep-alive connection.
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (closed, answer) = closed_within(&mut idle, Duration::from_secs(5));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(closed, "an idle keep-alive connection stays open");
    });
    checks.await.unwrap();
    // The server still serves.
    assert_eq!(
        t.client
            .get(t.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_endpoint_counts_against_the_key_rate_limit() {
    let (t, _dir) = server("").await;
    let route = || {
        t.client
            .post(t.url("/v1/route"))
            .bearer_auth("sk-limited")
            .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    assert_eq!(route().await.unwrap().status(), 200);
    assert_eq!(route().await.unwrap().status(), 200);
    let r = route().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_refuse_proxied_loopback_clients() {
    let (t, _dir) = server("").await;
    let direct = t.client.get(t.url("/v1/budgets")).send().await.unwrap();
    assert_eq!(direct.status(), 200);
    for header in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let r = t
            .client
            .get(t.url("/admin/keys"))
            .header(header, "203.0.113.7")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{header}");
    }
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_protocol_slips_answer_like_openai() {
    let (t, _dir) = server("").await;
    // 405 has an OpenAI error body.
    let r = t
        .client
        .get(t.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "method_not_allowed");
    // The scheme is case-insensitive (RFC 7235).
    let r = t
        .client
        .post(t.url("/v1/chat/completions"))
        .header("authorization", "BEARER sk-racer")
        .json(&body_with(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An upstream error echoing headers reaches neither the client nor the log with a token.
    t.fake.set(MODEL, Behaviour::EchoHeaders(400));
    let r = chat(&t, Some("sk-racer"), body_with(json!({})), None).await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(!text.contains("sk-fake-upstream-secret"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    let log = std::fs::read_to_string(t.logs.path().join("decisions.jsonl")).unwrap();
    assert!(!log.contains("sk-fake-upstream-secret"));
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_key() {
    // The variable the config names is set for this process by nobody: set one on a child.
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &fake,
        dir.path(),
        "metrics_key_env = \"ROUTER_TEST_METRICS_KEY\"",
        "",
    );
    let path = dir.path().join("router.toml");
    std::fs::write(&path, text).unwrap();
    let mut bin =
        crate::common::Binary::start(&path, &[("ROUTER_TEST_METRICS_KEY", "metrics-secret")]);
    let client = reqwest::Client::new();
    let url = format!("{}/metrics", bin.base);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let r = client
        .get(&url)
        .bearer_auth("metrics-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    bin.signal("TERM");
    let _ = bin.child.wait();
}

/// 200 concurrent requests race a key budget worth 20 of them; `extra` goes into each body,
/// `client_timeout` makes clients hang up. Spend overruns the limit by at most one worst case,
/// and every upstream call is answered, logged and has exactly one ledger row.
async fn race(behaviour: Behaviour, extra: Value, client_timeout: Option<Duration>) {
    let per_request = 48.0 * PRICE;
    let hard = 20.0 * per_request;
    let (t, dir) = server(&budget("key", "racer", hard)).await;
    t.fake.set(MODEL, behaviour);
    let body = body_with(extra.clone());
    let mut client = reqwest::Client::builder();
    if let Some(timeout) = client_timeout {
        client = client.timeout(timeout);
    }
    let client = client.build().unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (client, url, body) = (client.clone(), t.url("/v1/chat/completions"), body.clone());
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth("sk-racer")
                    .json(&body)
                    .send()
                    .await;
                r.map(|r| r.status().as_u16()).unwrap_or(0)
            })
        })
        .collect();
    for task in tasks {
        let status = task.await.unwrap();
        assert!(
            matches!(status, 0 | 200 | 429),
            "unexpected status {status}"
        );
    }
    // Requests whose clients left finish on their own: wait until every upstream call is
    // logged as answered (at most 5 s).
    let mut calls = 0;
    let mut answered = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        calls = t.fake.seen().len();
        let log = t.decisions(0).await;
        answered = log.iter().filter(|l| l["http_status"] == 200).count();
        if answered == calls {
            break;
        }
    }
    t.server.shutdown().await;
    let (rows, spent) = ledger_rows(dir.path(), "racer");
    let n = extra["n"].as_u64().unwrap_or(1) as f64;
    let max_tokens = extra["max_tokens"].as_u64().unwrap_or(8) as f64;
    let worst = (body.to_string().len() as f64 / 4.0 + n * max_tokens) * PRICE;
    assert!(
        spent <= hard + worst + 1e-12,
        "{extra}: spent {spent}, limit {hard} + one worst case {worst}"
    );
    assert_eq!(
        rows as usize, calls,
        "{extra}: every upstream call has one row"
    );
    assert_eq!(
        answered, calls,
        "{extra}: every upstream call was answered and logged"
    );
    assert!(calls >= 5, "{extra}: only {calls} requests got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_the_last_dollar_with_n_choices_overruns_by_at_most_one_worst_case() {
    race(Behaviour::Ok, json!({"max_tokens": 8, "n": 3}), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_the_last_dollar_with_clients_hanging_up_loses_no_row() {
    race(
        Behaviour::Slow(Duration::from_millis(100)),
        json!({"max_tokens": 8}),
        Some(Duration::from_millis(30)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_the_last_dollar_without_usage_charges_every_answer() {
    race(Behaviour::NoUsage, json!({"max_tokens": 8}), None).await;
}
