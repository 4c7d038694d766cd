//! Shared helpers: the fake upstream LLM and a server started against it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use router_serve::Server;
use router_serve::config::ServeConfig;
use router_serve::state::CliOverrides;
use serde_json::{Value, json};

/// The default router's models.
pub const MODELS: [&str; 9] = [
    "codegemma-7b",
    "gemma-2-9b-it",
    "llama-3.1-8b-instruct",
    "llama-3.1-nemotron-51b-instruct",
    "llama-3.3-nemotron-super-49b-v1",
    "llama3-chatqa-1.5-70b",
    "llama3-chatqa-1.5-8b",
    "mistral-7b-instruct-v0.3",
    "qwen2.5-7b-instruct",
];

pub const PROMPT: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?";

pub fn default_router() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llmrouter")
}

/// How the fake upstream answers a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    Ok,
    /// Headers only after this long.
    Slow(Duration),
    /// This status with an OpenAI error body.
    Status(u16),
    /// 429 with `retry-after` (seconds) for the first `times` requests, then ok.
    RateLimited {
        retry_after: u32,
        times: usize,
    },
    /// Two content chunks, then the connection closes without `[DONE]`.
    CutStream,
    /// One content chunk, then silence.
    Stall,
    /// One content chunk, then a `data:` line that is not JSON.
    BadSse,
    /// Chunks this far apart (graceful shutdown).
    SlowStream(Duration),
    /// A complete answer without `usage` (streams: no usage chunk).
    NoUsage,
    /// A 200 whose body is not a chat completion.
    Unusable,
    /// A complete answer reporting this many completion tokens.
    HugeUsage(u64),
    /// A complete answer reporting 40 input tokens, this many of them from the prompt cache.
    CachedUsage(u64),
    /// This status with a body echoing the request's Authorization header (and a bearer token
    /// of its own), as a careless upstream might.
    EchoHeaders(u16),
}

/// What the fake upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub model: String,
    pub body: Value,
    pub authorization: Option<String>,
}

#[derive(Default)]
pub struct FakeState {
    pub behaviour: Mutex<HashMap<String, Behaviour>>,
    pub seen: Mutex<Vec<Seen>>,
    pub calls: Mutex<HashMap<String, usize>>,
    /// (waiting requests, KV-cache use) its `/metrics` reports, as vLLM names them.
    pub load: Mutex<(f64, f64)>,
}

/// The fake OpenAI-compatible upstream.
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
}

impl Fake {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(fake_chat))
            .route("/metrics", axum::routing::get(fake_metrics))
            .route(
                "/v1/models",
                axum::routing::get(|| async { "{\"data\":[]}" }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn set(&self, model: &str, behaviour: Behaviour) {
        self.state
            .behaviour
            .lock()
            .unwrap()
            .insert(model.to_owned(), behaviour);
    }

    /// Sets what its `/metrics` reports: waiting requests and KV-cache use (0–1).
    pub fn set_load(&self, waiting: f64, kv_cache: f64) {
        *self.state.load.lock().unwrap() = (waiting, kv_cache);
    }

    /// Chat requests received so far.
    pub fn calls(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

fn chunk(model: &str, delta: Value, finish: Option<&str>, usage: bool) -> String {
    let mut c = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
    });
    if usage {
        c["usage"] = Value::Null;
    }
    format!("data: {c}\n\n")
}

/// A vLLM-like `/metrics`: the waiting-requests and KV-cache gauges.
async fn fake_metrics(State(state): State<Arc<FakeState>>) -> String {
    let (waiting, kv) = *state.load.lock().unwrap();
    format!(
        "# TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"m\"}} {waiting}\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{model_name=\"m\"}} {kv}\n"
    )
}

async fn fake_chat(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    state.seen.lock().unwrap().push(Seen {
        model: model.clone(),
        body: body.clone(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    let calls = {
        let mut calls = state.calls.lock().unwrap();
        let n = calls.entry(model.clone()).or_default();
        *n += 1;
        *n
    };
    let behaviour = state
        .behaviour
        .lock()
        .unwrap()
        .get(&model)
        .copied()
        .unwrap_or(Behaviour::Ok);
    let error = |status: u16, message: &str| {
        (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})),
        )
            .into_response()
    };
    match behaviour {
        Behaviour::Status(s) => return error(s, "fake upstream failure"),
        Behaviour::Unusable => return "<html>502 Bad Gateway from a proxy</html>".into_response(),
        Behaviour::EchoHeaders(s) => {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            let message = format!(
                "bad request; you sent Authorization: {auth}; ours is Bearer sk-fake-upstream-secret"
            );
            return error(s, &message);
        }
        Behaviour::RateLimited { retry_after, times } if calls <= times => {
            let mut r = error(429, "slow down");
            r.headers_mut().insert("retry-after", retry_after.into());
            return r;
        }
        Behaviour::Slow(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    if !stream {
        let usage = match behaviour {
            Behaviour::NoUsage => Value::Null,
            Behaviour::HugeUsage(n) => {
                json!({"prompt_tokens": 40, "completion_tokens": n, "total_tokens": 40 + n})
            }
            Behaviour::CachedUsage(n) => json!({
                "prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48,
                "prompt_tokens_details": {"cached_tokens": n}
            }),
            _ => json!({"prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48}),
        };
        let mut answer = json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the fake upstream.", "refusal": null},
                "finish_reason": "stop",
                "logprobs": null
            }],
        });
        if !usage.is_null() {
            answer["usage"] = usage;
        }
        return Json(answer).into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(16);
    tokio::spawn(async move {
        let m = model.as_str();
        let _ = tx
            .send(chunk(
                m,
                json!({"role": "assistant", "content": ""}),
                None,
                include_usage,
            ))
            .await;
        let _ = tx
            .send(chunk(m, json!({"content": "Hello"}), None, include_usage))
            .await;
        match behaviour {
            Behaviour::Stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Behaviour::BadSse => {
                let _ = tx.send("data: {this is not json\n\n".to_owned()).await;
                return;
            }
            Behaviour::CutStream => {
                let _ = tx
                    .send(chunk(m, json!({"content": " wor"}), None, include_usage))
                    .await;
                return;
            }
            Behaviour::SlowStream(d) => {
                for _ in 0..5 {
                    tokio::time::sleep(d).await;
                    let _ = tx
                        .send(chunk(m, json!({"content": "."}), None, include_usage))
                        .await;
                }
            }
            _ => {}
        }
        let _ = tx
            .send(chunk(m, json!({"content": " world"}), None, include_usage))
            .await;
        let _ = tx
            .send(chunk(m, json!({}), Some("stop"), include_usage))
            .await;
        if include_usage && behaviour != Behaviour::NoUsage {
            let usage = json!({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
                "model": m, "choices": [],
                "usage": {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43}
            });
            let _ = tx.send(format!("data: {usage}\n\n")).await;
        }
        let _ = tx.send("data: [DONE]\n\n".to_owned()).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|s| (Ok::<_, std::convert::Infallible>(s), rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

/// A test config: the default router, every model on the fake upstream, logs in `log_dir`,
/// short timeouts, no retries unless `extra` says otherwise. `extra` is appended verbatim
/// (extra `[server]` keys go through `server_extra`).
pub fn config_text(
    fake: &Fake,
    log_dir: &Path,
    server_extra: &str,
    upstream_extra: &str,
) -> String {
    let models: Vec<String> = MODELS.iter().map(|m| format!("\"{m}\"")).collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
router = "{router}"
watch_interval_ms = 0
shutdown_grace_ms = 5000
{server_extra}

[log]
dir = "{log}"
log_prompts = true

[[upstreams]]
name = "fake"
base_url = "{base}"
models = [{models}]
first_byte_timeout_ms = 1000
stream_idle_timeout_ms = 500
backoff_base_ms = 10
{retries}
{upstream_extra}
"#,
        retries = if upstream_extra.contains("max_retries") {
            ""
        } else {
            "max_retries = 0"
        },
        router = default_router().display(),
        log = log_dir.display(),
        base = fake.base_url(),
        models = models.join(", "),
    )
}

/// A server on the fake upstream, with its log directory.
pub struct TestServer {
    pub server: Server,
    pub fake: Fake,
    pub logs: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with("", "").await
    }

    pub async fn with(server_extra: &str, upstream_extra: &str) -> Self {
        let fake = Fake::start().await;
        let logs = tempfile::tempdir().unwrap();
        let text = config_text(&fake, logs.path(), server_extra, upstream_extra);
        let config = ServeConfig::parse(&text, "test").unwrap();
        let server = Server::start(config, None, CliOverrides::default())
            .await
            .unwrap();
        Self {
            server,
            fake,
            logs,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr())
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The decision for `PROMPT` with `extra` merged into the body.
    pub async fn route(&self, extra: Value) -> Value {
        let mut body = chat_body("router", false);
        merge(&mut body, extra);
        let r = self.post("/v1/route", body).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Decision-log lines so far (after the server has written them).
    pub async fn decisions(&self, at_least: usize) -> Vec<Value> {
        read_jsonl(&self.logs.path().join("decisions.jsonl"), at_least).await
    }
}

pub fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are a careful math tutor."},
            {"role": "user", "content": PROMPT}
        ]
    })
}

pub fn merge(body: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (body, extra) {
        b.extend(e);
    }
}

/// Lines of a JSONL file once it has `at_least` of them (the writer thread is asynchronous;
/// gives up after 5 s and returns what is there).
pub async fn read_jsonl(path: &Path, at_least: usize) -> Vec<Value> {
    let mut lines = Vec::new();
    for _ in 0..250 {
        if let Ok(text) = std::fs::read_to_string(path) {
            // A line being written may be incomplete: keep whole ones only.
            lines = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if lines.len() >= at_least {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lines
}

/// The SSE `data:` payloads of a stream body.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The `router-serve` binary on a config file, with its stderr collected.
pub struct Binary {
    pub child: std::process::Child,
    pub base: String,
    pub stderr: std::thread::JoinHandle<String>,
}

impl Binary {
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_router-serve"));
        command
            .arg("--config")
            .arg(config)
            .args(["--log", "debug"])
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap_or_default();
                if let Some(addr) = line.strip_prefix("router-serve listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let base = rx.recv_timeout(Duration::from_secs(120)).unwrap();
        Self {
            child,
            base,
            stderr: reader,
        }
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} {pid}");
    }
}

/// The text of `GET {base}/metrics`.
pub async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `/v1/route` at `base` until the balanced mode's band is `band` (a reload took
/// effect); returns the last band seen, after at most 5 s.
pub async fn wait_for_band(base: &str, band: f64) -> Value {
    let client = reqwest::Client::new();
    let mut seen = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let d: Value = client
            .post(format!("{base}/v1/route"))
            .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen = d["band"].clone();
        if seen == band {
            break;
        }
    }
    seen
}

/// `GET url` as JSON.
pub async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}
