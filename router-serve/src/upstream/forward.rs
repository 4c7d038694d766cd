//! Forwarding to OpenAI-compatible upstreams: one adapter for OpenAI, Azure OpenAI, vLLM,
//! Ollama, NVIDIA and the rest. Each target model's pool picks an endpoint
//! ([`super::pool`]); an attempt that fails (connect error, timeout, 408, 429, 5xx before the
//! first byte) is tried again on another endpoint of the pool at once, and only when every
//! endpoint has been tried on one of them again (backoff with jitter, `retry-after` honoured up
//! to a cap), up to its `max_retries`; then the next target model. Other 4xx answers are the
//! request's fault and go back to the client as they are. Every outcome feeds the endpoint's
//! health, so an endpoint that keeps failing is ejected and skipped by later requests.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use bytes::Bytes;
use regex::Regex;
use serde_json::{Map, Value};

use super::endpoint::{Endpoint, Lease};
use super::pool::{Pick, Pool};
use crate::api::response::is_chat_completion;
use crate::config::{AuthStyle, UpstreamConfig};
use crate::http::error::ApiError;
use crate::observe::log::Attempt;
use crate::observe::metrics::Metrics;

/// A model to try and the pool of endpoints serving it.
#[derive(Clone)]
pub struct Target {
    /// The router's name for the model.
    pub model: String,
    pub pool: Arc<Pool>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("model", &self.model)
            .finish()
    }
}

/// The request as it goes upstream.
pub struct Outgoing<'a> {
    /// The client's body (`model` is replaced per endpoint).
    pub body: &'a Map<String, Value>,
    pub stream: bool,
    /// Refused (503) rather than queued when every endpoint of every target is saturated.
    pub sheddable: bool,
}

/// The outcome of forwarding one request.
pub enum Forwarded {
    /// A complete (non-stream) answer from `targets[target]`.
    Complete { target: usize, body: Bytes },
    /// A stream whose headers arrived; the body is still to be relayed.
    Stream(Streaming),
    /// The upstream refused the request itself (4xx other than 401/403/404/408/429).
    Rejected {
        target: usize,
        status: StatusCode,
        body: Bytes,
    },
    /// Every attempt failed.
    Failed(ApiError),
}

/// A stream whose headers arrived from `targets[target]`.
pub struct Streaming {
    pub target: usize,
    pub response: reqwest::Response,
    pub deadline: Instant,
    /// The endpoint's longest silence between chunks.
    pub idle: Duration,
    /// Counts the stream in flight at its endpoint until the relay ends; a stream that breaks
    /// counts against the endpoint's health.
    pub lease: Lease,
}

enum AttemptResult {
    Done(Forwarded),
    /// Worth retrying on this endpoint, after at least this delay (`retry-after`).
    Retry(Option<Duration>),
    /// This endpoint cannot serve the request (401, 403, 404): try another.
    Next,
}

/// What the attempts of one request have found so far.
#[derive(Default)]
struct Trial {
    /// Variables naming missing upstream keys.
    missing: Vec<String>,
    last_retry_after: Option<Duration>,
    /// Whether any endpoint was picked (else every pool was out).
    picked: bool,
}

/// Sends the request to each target in turn until one answers; every attempt is appended to
/// `attempts`. When every endpoint of every target is ejected, they are tried anyway (one
/// pass), except for sheddable requests, which get 503.
pub async fn forward(
    targets: &[Target],
    out: &Outgoing<'_>,
    attempts: &mut Vec<Attempt>,
    metrics: &Metrics,
) -> Forwarded {
    let mut trial = Trial::default();
    for panic in [false, true] {
        let mut shed = 0;
        for (index, target) in targets.iter().enumerate() {
            if out.sheddable && target.pool.saturated(Instant::now()) {
                shed += 1;
                continue;
            }
            let tried = try_target(index, target, out, panic, &mut trial, attempts, metrics);
            if let Some(done) = tried.await {
                return done;
            }
        }
        if out.sheddable && shed == targets.len() {
            metrics.endpoints.shed.inc();
            return Forwarded::Failed(ApiError::overloaded(
                targets.iter().map(|t| t.model.as_str()),
            ));
        }
        if trial.picked || out.sheddable {
            break;
        }
    }
    Forwarded::Failed(failure(attempts, &trial.missing, trial.last_retry_after))
}

/// Tries `target`'s endpoints: each not yet tried first, then retries, until one answers or
/// every endpoint is spent (`None`).
async fn try_target(
    index: usize,
    target: &Target,
    out: &Outgoing<'_>,
    panic: bool,
    trial: &mut Trial,
    attempts: &mut Vec<Attempt>,
    metrics: &Metrics,
) -> Option<Forwarded> {
    let pool = &target.pool;
    let prefix = pool.prefix_of(|| prompt_text(out.body));
    let n = pool.members.len();
    let mut tries = vec![0u32; n];
    let mut spent = vec![false; n];
    let mut delay: Vec<Option<Duration>> = vec![None; n];
    loop {
        let untried: Vec<bool> = (0..n).map(|i| spent[i] || tries[i] > 0).collect();
        let Pick { member, lease } = pool
            .pick(&prefix, &untried, panic)
            .or_else(|| pool.pick(&prefix, &spent, panic))?;
        trial.picked = true;
        let endpoint = lease.endpoint().clone();
        let upstream = &endpoint.config;
        if !upstream.has_credentials() {
            missing_credentials(target, upstream, trial, attempts);
            spent[member] = true;
            continue;
        }
        if tries[member] > 0 {
            let wait = match delay[member] {
                Some(d) if d > Duration::from_millis(upstream.retry_after_max_ms) => {
                    spent[member] = true;
                    continue;
                }
                Some(d) => d,
                None => backoff(upstream, tries[member] - 1),
            };
            tokio::time::sleep(wait).await;
        }
        tries[member] += 1;
        let payload = payload_for(out.body, &pool.members[member].upstream_model, out.stream);
        let sent = Sent {
            endpoint: &endpoint,
            model: &target.model,
            index,
            payload: &payload,
            stream: out.stream,
        };
        match attempt(sent, lease, attempts, metrics).await {
            AttemptResult::Done(done) => return Some(done),
            AttemptResult::Next => spent[member] = true,
            AttemptResult::Retry(retry_after) => {
                delay[member] = retry_after;
                trial.last_retry_after = retry_after;
                spent[member] |= tries[member] > upstream.max_retries;
            }
        }
    }
}

/// An endpoint whose key is not set: recorded, and named in the error if nothing answers.
fn missing_credentials(
    target: &Target,
    upstream: &UpstreamConfig,
    trial: &mut Trial,
    attempts: &mut Vec<Attempt>,
) {
    let var = upstream.api_key_env.clone().unwrap_or_default();
    attempts.push(Attempt {
        model: target.model.clone(),
        upstream: upstream.name.clone(),
        status: None,
        outcome: "missing_credentials".into(),
        error: Some(format!("{var} is not set")),
        ms: 0.0,
        unusable_body_bytes: None,
    });
    let named = format!("{var} (upstream `{}`)", upstream.name);
    if !trial.missing.contains(&named) {
        trial.missing.push(named);
    }
}

/// The conversation as prefix affinity hashes it: the messages' JSON, in order.
fn prompt_text(body: &Map<String, Value>) -> String {
    body.get("messages")
        .map(|m| serde_json::to_string(m).unwrap_or_default())
        .unwrap_or_default()
}

/// The body sent upstream: the client's, with the upstream's model name, and for streams the
/// usage chunk requested so that the cost can be accounted.
fn payload_for(body: &Map<String, Value>, upstream_model: &str, stream: bool) -> Bytes {
    let mut payload = body.clone();
    payload.insert("model".into(), Value::String(upstream_model.to_owned()));
    if stream {
        let options = payload
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = options {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    Bytes::from(serde_json::to_vec(&Value::Object(payload)).unwrap_or_default())
}

/// One attempt's request: where it goes and what it carries.
struct Sent<'a> {
    endpoint: &'a Arc<Endpoint>,
    /// The router's model name.
    model: &'a str,
    /// The target's index.
    index: usize,
    payload: &'a Bytes,
    stream: bool,
}

/// Records one attempt: its outcome in the metrics, in the request's attempts and in the
/// endpoint's health (through its lease).
struct Recorder<'a> {
    model: &'a str,
    upstream: &'a UpstreamConfig,
    start: Instant,
    attempts: &'a mut Vec<Attempt>,
    metrics: &'a Metrics,
}

impl Recorder<'_> {
    fn record(&mut self, status: Option<u16>, outcome: &str, error: Option<String>) {
        let ms = self.start.elapsed().as_secs_f64() * 1e3;
        if outcome != "ok" {
            self.metrics
                .upstream_failures
                .with_label_values(&[self.model, outcome])
                .inc();
        }
        self.metrics
            .upstream_seconds
            .with_label_values(&[self.model])
            .observe(ms / 1e3);
        self.attempts.push(Attempt {
            model: self.model.to_owned(),
            upstream: self.upstream.name.clone(),
            status,
            outcome: outcome.to_owned(),
            error,
            ms,
            unusable_body_bytes: None,
        });
    }

    /// Records a failure of the endpoint, in the attempts and in its health.
    fn failure(&mut self, lease: &mut Lease, status: Option<u16>, outcome: &str, error: String) {
        let what = status.map_or_else(|| outcome.to_owned(), |s| format!("{outcome} {s}"));
        lease.failed(&format!("{what}: {error}"));
        self.record(status, outcome, Some(error));
    }
}

/// The request to `upstream`, with its key.
fn request(
    client: &reqwest::Client,
    upstream: &UpstreamConfig,
    payload: &Bytes,
) -> reqwest::RequestBuilder {
    let url = format!(
        "{}/chat/completions",
        upstream.base_url.trim_end_matches('/')
    );
    let request = client
        .post(url)
        .query(&upstream.query)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(payload.clone());
    match (&upstream.api_key, upstream.auth) {
        (Some(key), AuthStyle::Bearer) => request.bearer_auth(key.expose()),
        (Some(key), AuthStyle::ApiKey) => request.header("api-key", key.expose()),
        (None, _) => request,
    }
}

/// One try of an endpoint: send, wait for the headers, then take the answer or classify the
/// failure.
async fn attempt(
    sent: Sent<'_>,
    mut lease: Lease,
    attempts: &mut Vec<Attempt>,
    metrics: &Metrics,
) -> AttemptResult {
    let upstream = &sent.endpoint.config;
    let start = Instant::now();
    let deadline = start + Duration::from_millis(upstream.total_timeout_ms);
    let first_byte = Duration::from_millis(upstream.first_byte_timeout_ms);
    let mut recorder = Recorder {
        model: sent.model,
        upstream,
        start,
        attempts,
        metrics,
    };
    let client = &sent.endpoint.client;
    let sending = request(client, upstream, sent.payload).send();
    let response = match tokio::time::timeout(first_byte, sending).await {
        Err(_) => {
            let error = format!("no response within {} ms", first_byte.as_millis());
            recorder.failure(&mut lease, None, "timeout", error);
            return AttemptResult::Retry(None);
        }
        Ok(Err(e)) => {
            let outcome = if e.is_connect() {
                "connect"
            } else if e.is_timeout() {
                "timeout"
            } else {
                "request"
            };
            recorder.failure(&mut lease, None, outcome, error_chain(&e));
            return AttemptResult::Retry(None);
        }
        Ok(Ok(response)) => response,
    };
    let ttfb = start.elapsed();
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if !status.is_success() {
        return refused(response, status, sent.index, deadline, &mut recorder, lease).await;
    }
    if sent.stream {
        lease.succeeded(Some(ttfb));
        recorder.record(Some(status.as_u16()), "ok", None);
        return AttemptResult::Done(Forwarded::Stream(Streaming {
            target: sent.index,
            response,
            deadline,
            idle: Duration::from_millis(upstream.stream_idle_timeout_ms),
            lease,
        }));
    }
    let body = tokio::time::timeout_at(deadline.into(), response.bytes()).await;
    complete(body, status, sent.index, ttfb, &mut recorder, lease)
}

/// A 2xx answer's body: a chat completion, or a failure.
fn complete(
    body: Result<reqwest::Result<Bytes>, tokio::time::error::Elapsed>,
    status: StatusCode,
    index: usize,
    ttfb: Duration,
    recorder: &mut Recorder<'_>,
    mut lease: Lease,
) -> AttemptResult {
    let code = Some(status.as_u16());
    match body {
        Ok(Ok(body)) if is_chat_completion(&body) => {
            lease.succeeded(Some(ttfb));
            recorder.record(code, "ok", None);
            AttemptResult::Done(Forwarded::Complete {
                target: index,
                body,
            })
        }
        Ok(Ok(body)) => {
            // A 2xx that is no chat completion: a failure, but the upstream did (and billed)
            // work, so its size is kept for the bill.
            let error = format!(
                "the {} body is not a chat completion: {}",
                status.as_u16(),
                scrub(&upstream_message(&body), recorder.upstream)
            );
            recorder.failure(&mut lease, code, "unusable_body", error);
            if let Some(last) = recorder.attempts.last_mut() {
                last.unusable_body_bytes = Some(body.len());
            }
            AttemptResult::Retry(None)
        }
        Ok(Err(e)) => {
            recorder.failure(&mut lease, code, "body", error_chain(&e));
            AttemptResult::Retry(None)
        }
        Err(_) => {
            let error = "body not complete within total_timeout_ms".to_owned();
            recorder.failure(&mut lease, code, "timeout", error);
            AttemptResult::Retry(None)
        }
    }
}

/// An upstream's error status: 408, 429 and 5xx are retried (after `retry-after`), 401, 403
/// and 404 send the request to another endpoint, other 4xx are the request's fault. All but
/// 429 and the request's own faults count against the endpoint's health.
async fn refused(
    response: reqwest::Response,
    status: StatusCode,
    index: usize,
    deadline: Instant,
    recorder: &mut Recorder<'_>,
    mut lease: Lease,
) -> AttemptResult {
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = tokio::time::timeout_at(deadline.into(), response.bytes())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let message = scrub(&upstream_message(&body), recorder.upstream);
    let code = Some(status.as_u16());
    match status.as_u16() {
        429 => {
            recorder.record(code, "status", Some(message));
            AttemptResult::Retry(retry_after)
        }
        408 | 500..=599 => {
            recorder.failure(&mut lease, code, "status", message);
            AttemptResult::Retry(retry_after)
        }
        401 | 403 | 404 => {
            recorder.failure(&mut lease, code, "status", message);
            AttemptResult::Next
        }
        _ => {
            lease.succeeded(None);
            recorder.record(code, "rejected", Some(message));
            let text = String::from_utf8_lossy(&body);
            let clean = scrub(&text, recorder.upstream);
            let body = if clean == text {
                body
            } else {
                Bytes::from(clean)
            };
            AttemptResult::Done(Forwarded::Rejected {
                target: index,
                status,
                body,
            })
        }
    }
}

/// The error after every attempt failed: missing keys name what to set; otherwise the status
/// follows the last failure (429 stays 429, timeouts are 504, the rest 502).
fn failure(attempts: &[Attempt], missing: &[String], retry_after: Option<Duration>) -> ApiError {
    if !attempts.is_empty() && attempts.iter().all(|a| a.outcome == "missing_credentials") {
        return ApiError::NotConfigured(format!(
            "no upstream for the chosen models has credentials: set {} (or run with --config \
             naming your providers in [[upstreams]] tables; see router-serve/default-config.toml)",
            missing.join(", ")
        ));
    }
    let last = attempts
        .iter()
        .rev()
        .find(|a| a.outcome != "missing_credentials");
    let status = match last {
        Some(a) if a.status == Some(429) => StatusCode::TOO_MANY_REQUESTS,
        Some(a) if a.outcome == "timeout" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let summary: Vec<String> = attempts
        .iter()
        .map(|a| {
            let what = a
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| a.outcome.clone());
            format!("{} via {}: {what}", a.model, a.upstream)
        })
        .collect();
    ApiError::UpstreamFailed {
        status,
        message: format!(
            "every upstream attempt failed ({})",
            if summary.is_empty() {
                "no target".to_owned()
            } else {
                summary.join("; ")
            }
        ),
        retry_after: retry_after
            .filter(|_| status == StatusCode::TOO_MANY_REQUESTS)
            .and_then(|d| HeaderValue::from_str(&d.as_secs().max(1).to_string()).ok()),
    }
}

/// Exponential backoff with jitter: a uniform draw in [½, 1] × min(base × 2^retry, max).
fn backoff(upstream: &UpstreamConfig, retry: u32) -> Duration {
    let ceiling = upstream
        .backoff_base_ms
        .saturating_mul(1u64 << retry.min(20))
        .min(upstream.backoff_max_ms);
    let unit = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1e6;
    Duration::from_secs_f64(ceiling as f64 / 1e3 * (0.5 + 0.5 * unit))
}

/// `retry-after` in seconds (the HTTP-date form is not worth a date parser: treated as absent).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// The upstream's error message when it sent an OpenAI error body, else its text (shortened).
fn upstream_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && let Some(m) = v.pointer("/error/message").and_then(Value::as_str)
    {
        return m.to_owned();
    }
    let text = String::from_utf8_lossy(body);
    text.chars().take(300).collect()
}

/// `text` without our credentials: the upstream's key wherever it appears (an upstream that
/// echoes request headers would hand it to the client and the logs), and any bearer token.
fn scrub(text: &str, upstream: &UpstreamConfig) -> String {
    static BEARER: LazyLock<Option<Regex>> =
        LazyLock::new(|| Regex::new(r#"(?i)(bearer\s+)[^\s"',;]+"#).ok());
    let mut out = text.to_owned();
    if let Some(key) = upstream.api_key.as_ref().map(|k| k.expose())
        && key.len() >= 4
    {
        out = out.replace(key, "[redacted]");
    }
    if let Some(bearer) = BEARER.as_ref() {
        out = bearer.replace_all(&out, "${1}[redacted]").into_owned();
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_credentials_are_scrubbed_from_upstream_text() {
        let mut upstream: UpstreamConfig = toml::from_str(
            "name = \"u\"\nbase_url = \"http://x\"\nmodels = [\"m\"]\napi_key_env = \"K\"",
        )
        .unwrap();
        upstream.api_key = Some(crate::config::ApiKey::new("sk-upstream-secret".into()));
        let echoed = r#"{"error":{"message":"bad request; headers: Authorization: Bearer sk-upstream-secret, api-key: sk-upstream-secret, x: BEARER abc.def"}}"#;
        let clean = scrub(echoed, &upstream);
        assert!(!clean.contains("sk-upstream-secret"), "{clean}");
        assert!(!clean.contains("abc.def"), "{clean}");
        assert!(clean.contains("Bearer [redacted]"), "{clean}");
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn streams_ask_upstream_for_usage_and_the_model_is_renamed() {
        let body: Map<String, Value> =
            serde_json::from_str(r#"{"model":"router","stream":true,"messages":[]}"#).unwrap();
        let sent: Value = serde_json::from_slice(&payload_for(&body, "up/m", true)).unwrap();
        assert_eq!(sent["model"], "up/m");
        assert_eq!(sent["stream_options"]["include_usage"], true);
        let sent: Value = serde_json::from_slice(&payload_for(&body, "up/m", false)).unwrap();
        assert!(sent.get("stream_options").is_none());
    }

    #[test]
    fn all_missing_keys_is_a_configuration_error_naming_the_variable() {
        let attempts = vec![Attempt {
            model: "m".into(),
            upstream: "u".into(),
            status: None,
            outcome: "missing_credentials".into(),
            error: None,
            ms: 0.0,
            unusable_body_bytes: None,
        }];
        let e = failure(&attempts, &["KEY_VAR (upstream `u`)".into()], None);
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.to_string().contains("KEY_VAR"));
    }
}
