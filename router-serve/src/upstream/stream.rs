//! Relaying an upstream SSE stream to the client event by event: the usage chunk is captured
//! for cost accounting (and dropped when the client did not ask for it), `model` names the
//! router's model, and a stream that breaks after its first byte (cut, stalled, malformed) ends
//! with an SSE error event, never with a clean end and no `[DONE]`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::api::response::usage_of;
use crate::http::error::sse_error_event;
use crate::observe::log::Usage;

/// How to relay one stream.
pub struct StreamSpec {
    /// The router's model name, written into each chunk's `model`.
    pub model: String,
    pub client_wants_usage: bool,
    /// Longest silence between chunks.
    pub idle: Duration,
    /// End of the whole exchange.
    pub deadline: Instant,
}

/// How a relayed stream ended.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEnd {
    pub usage: Option<Usage>,
    /// `ok`, `stream_interrupted`, `stream_stalled`, `stream_bad_event`,
    /// `client_disconnected`.
    pub status: &'static str,
    pub error: Option<String>,
    /// Time to the last byte received from upstream.
    pub upstream_ms: f64,
    /// The `[DONE]` event, held back for the caller to send once the request is settled.
    pub done: Option<Bytes>,
    /// Characters of content relayed (to estimate output tokens without a usage chunk).
    pub content_chars: usize,
}

/// Splits an SSE byte stream into events (blocks ended by a blank line).
#[derive(Default)]
pub struct SseSplitter {
    buffer: Vec<u8>,
}

impl SseSplitter {
    /// Adds `chunk`; returns the complete events it finished, without their blank line.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        loop {
            let found = find_blank_line(&self.buffer);
            let Some((end, sep)) = found else { break };
            let event: Vec<u8> = self.buffer.drain(..end + sep).take(end).collect();
            events.push(String::from_utf8_lossy(&event).replace("\r\n", "\n"));
        }
        events
    }

    /// Whether bytes of an unfinished event are buffered.
    pub fn has_partial(&self) -> bool {
        self.buffer.iter().any(|b| !b.is_ascii_whitespace())
    }
}

fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// What to do with one event.
enum Relay {
    Send(Bytes),
    Skip,
    Done(Bytes),
    Bad(String),
}

fn relay_event(
    event: &str,
    spec: &StreamSpec,
    usage: &mut Option<Usage>,
    content_chars: &mut usize,
) -> Relay {
    let data: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        // Comments (keep-alives) and other fields pass as they are.
        return Relay::Send(Bytes::from(format!("{event}\n\n")));
    }
    let data = data.join("\n");
    if data.trim() == "[DONE]" {
        return Relay::Done(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    let mut value: Value = match serde_json::from_str(&data) {
        Ok(v) => v,
        Err(e) => return Relay::Bad(format!("upstream sent a malformed stream event ({e})")),
    };
    if let Some(u) = usage_of(&value) {
        *usage = Some(u);
    }
    if let Some(choices) = value.get("choices").and_then(Value::as_array) {
        *content_chars += choices
            .iter()
            .filter_map(|c| c.pointer("/delta/content").and_then(Value::as_str))
            .map(|t| t.chars().count())
            .sum::<usize>();
    }
    if let Value::Object(o) = &mut value {
        if !spec.client_wants_usage {
            let usage_only = o
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
                && o.get("usage").is_some_and(|u| !u.is_null());
            if usage_only {
                return Relay::Skip;
            }
            o.remove("usage");
        }
        if o.contains_key("model") {
            o.insert("model".into(), Value::String(spec.model.clone()));
        }
    }
    Relay::Send(Bytes::from(format!("data: {value}\n\n")))
}

/// Relays `response` into `tx` until `[DONE]` (returned, not sent), a failure or the client
/// leaving.
pub async fn relay(
    mut response: reqwest::Response,
    tx: &mpsc::Sender<Bytes>,
    spec: StreamSpec,
    started: Instant,
) -> StreamEnd {
    let mut splitter = SseSplitter::default();
    let mut usage = None;
    let mut chars = 0;
    let mut last_byte = started;
    let end = |status, error: Option<String>, usage, last: Instant, chars, done| StreamEnd {
        usage,
        status,
        error,
        upstream_ms: (last - started).as_secs_f64() * 1e3,
        done,
        content_chars: chars,
    };
    loop {
        let now = Instant::now();
        let wait = spec.idle.min(spec.deadline.saturating_duration_since(now));
        let chunk = tokio::time::timeout(wait, response.chunk()).await;
        let (status, code, message) = match chunk {
            Ok(Ok(Some(bytes))) => {
                last_byte = Instant::now();
                for event in splitter.push(&bytes) {
                    match relay_event(&event, &spec, &mut usage, &mut chars) {
                        Relay::Skip => {}
                        Relay::Send(out) => {
                            if tx.send(out).await.is_err() {
                                let status = "client_disconnected";
                                return end(status, None, usage, last_byte, chars, None);
                            }
                        }
                        Relay::Done(out) => {
                            return end("ok", None, usage, last_byte, chars, Some(out));
                        }
                        Relay::Bad(message) => {
                            let event = sse_error_event(&message, "upstream_bad_stream");
                            let _ = tx.send(event).await;
                            let status = "stream_bad_event";
                            return end(status, Some(message), usage, last_byte, chars, None);
                        }
                    }
                }
                continue;
            }
            Ok(Ok(None)) => {
                let tail = if splitter.has_partial() {
                    " (mid-event)"
                } else {
                    ""
                };
                (
                    "stream_interrupted",
                    "upstream_stream_interrupted",
                    format!("the upstream stream ended before [DONE]{tail}"),
                )
            }
            Ok(Err(e)) => (
                "stream_interrupted",
                "upstream_stream_interrupted",
                format!("the upstream stream broke: {e}"),
            ),
            Err(_) => (
                "stream_stalled",
                "upstream_timeout",
                if Instant::now() >= spec.deadline {
                    "the upstream stream exceeded total_timeout_ms".to_owned()
                } else {
                    format!(
                        "the upstream stream was silent for {} ms",
                        spec.idle.as_millis()
                    )
                },
            ),
        };
        let _ = tx.send(sse_error_event(&message, code)).await;
        return end(status, Some(message), usage, last_byte, chars, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(wants_usage: bool) -> StreamSpec {
        StreamSpec {
            model: "router-model".into(),
            client_wants_usage: wants_usage,
            idle: Duration::from_secs(1),
            deadline: Instant::now() + Duration::from_secs(1),
        }
    }

    #[test]
    fn splits_events_across_chunk_boundaries_and_line_endings() {
        let mut s = SseSplitter::default();
        assert!(s.push(b"data: {\"a\"").is_empty());
        assert!(s.has_partial());
        assert_eq!(
            s.push(b":1}\n\ndata: x\r\n\r\n: ping\n\n"),
            vec!["data: {\"a\":1}", "data: x", ": ping"]
        );
        assert!(!s.has_partial());
    }

    #[test]
    fn the_usage_chunk_is_captured_and_dropped_unless_asked_for() {
        let event = r#"data: {"id":"c","model":"up/m","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
        let mut usage = None;
        assert!(matches!(
            relay_event(event, &spec(false), &mut usage, &mut 0),
            Relay::Skip
        ));
        assert_eq!(
            usage,
            Some(Usage {
                cached_input_tokens: 0,
                input_tokens: 7,
                output_tokens: 3
            })
        );
        let mut usage = None;
        let Relay::Send(out) = relay_event(event, &spec(true), &mut usage, &mut 0) else {
            panic!("the client asked for usage");
        };
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains("\"model\":\"router-model\""), "{text}");
        assert!(text.contains("\"prompt_tokens\":7"), "{text}");
    }

    #[test]
    fn a_content_chunk_loses_its_null_usage_and_gets_the_router_model_name() {
        let event = r#"data: {"model":"up/m","choices":[{"delta":{"content":"hi"}}],"usage":null}"#;
        let Relay::Send(out) = relay_event(event, &spec(false), &mut None, &mut 0) else {
            panic!("content must be sent");
        };
        let v: Value = serde_json::from_str(
            std::str::from_utf8(&out)
                .unwrap()
                .trim()
                .trim_start_matches("data: "),
        )
        .unwrap();
        assert_eq!(v["model"], "router-model");
        assert!(v.get("usage").is_none());
        assert_eq!(v["choices"][0]["delta"]["content"], "hi");
    }

    #[test]
    fn a_malformed_event_is_reported() {
        assert!(matches!(
            relay_event("data: {not json", &spec(false), &mut None, &mut 0),
            Relay::Bad(_)
        ));
        assert!(matches!(
            relay_event("data: [DONE]", &spec(false), &mut None, &mut 0),
            Relay::Done(_)
        ));
    }
}
