//! Turning what the upstream did into the client's response: a complete answer, a relayed
//! stream, the upstream's own refusal, or a failure. Each path settles the request's money and
//! records it exactly once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tracing::Instrument;

use crate::api::headers::router_headers;
use crate::api::response::{content_chars, rewrite_complete};
use crate::http::error::{ApiError, rate_headers};
use crate::observe::log::{DecisionRecord, Latency};
use crate::observe::record::finish;
use crate::routing::plan::Plan;
use crate::state::AppState;
use crate::tenancy::rate_limit::RateInfo;
use crate::upstream::forward::{Forwarded, Streaming};
use crate::upstream::stream::{StreamSpec, relay};
use crate::util::ms_since;

use super::settle::Bill;
use super::{ClientGone, InFlight};

/// A forwarded request, everything its response and its settlement need.
pub(super) struct Exchange {
    pub state: Arc<AppState>,
    pub id: String,
    pub started: Instant,
    pub forward_started: Instant,
    /// The reason of an answer from the first target.
    pub base_reason: &'static str,
    pub plan: Plan,
    pub rate: RateInfo,
    pub rule: Option<String>,
    pub client_wants_usage: bool,
    /// Whether the client stopped waiting (the answer is settled and recorded all the same).
    pub client: ClientGone,
    pub record: DecisionRecord,
    /// Taken when the request is settled.
    pub bill: Option<Bill>,
}

impl Exchange {
    /// The client's response for `forwarded`.
    pub async fn respond(self, forwarded: Forwarded, in_flight: InFlight) -> Response {
        let upstream_ms = ms_since(self.forward_started);
        match forwarded {
            Forwarded::Complete { target, body } => self.complete(target, body, upstream_ms).await,
            Forwarded::Stream(streaming) => self.stream(streaming, in_flight),
            Forwarded::Rejected {
                target,
                status,
                body,
            } => self.rejected(target, status, body, upstream_ms).await,
            Forwarded::Failed(error) => self.failed(error, upstream_ms).await,
        }
    }

    /// `band`/`explore`/`passthrough` for the first target, `fallback` for a later one.
    fn reason_for(&self, target: usize) -> &'static str {
        if self.plan.reason == "router_error" {
            "router_error"
        } else if target > 0 {
            "fallback"
        } else {
            self.base_reason
        }
    }

    fn count_fallback(&self, target: usize) {
        if target > 0
            && let Some(first) = self.plan.targets.first()
        {
            self.state
                .metrics
                .fallbacks
                .with_label_values(&[first.model.as_str()])
                .inc();
        }
    }

    fn latency(&self, upstream_ms: f64) -> Latency {
        let total = ms_since(self.started);
        Latency {
            decision_ms: self.plan.decision_ms,
            upstream_ms,
            total_ms: total,
            overhead_ms: (total - upstream_ms).max(0.0),
        }
    }

    /// The router's headers, the rate-limit headers and the matched rule.
    fn headers(&self, h: &mut HeaderMap, model: Option<&str>, reason: &str, overhead_ms: f64) {
        router_headers(h, &self.id, Some(&self.plan), model, reason, overhead_ms);
        rate_headers(h, &self.rate);
        if let Some(rule) = &self.rule
            && let Ok(v) = HeaderValue::from_str(rule)
        {
            h.insert("x-router-rule", v);
        }
    }

    /// Settles, then logs the record with its latencies.
    async fn settle_and_record(mut self, upstream_ms: f64) -> Self {
        if self.client.gone() {
            self.record.status = "client_disconnected".into();
        }
        if let Some(bill) = self.bill.take() {
            bill.settle(&mut self.record).await;
        }
        self.record.latency = self.latency(upstream_ms);
        finish(&self.state, &self.record, "chat");
        self
    }

    async fn complete(mut self, target: usize, body: Bytes, upstream_ms: f64) -> Response {
        let model = self.plan.targets[target].model.clone();
        let reason = self.reason_for(target);
        self.count_fallback(target);
        let chars = content_chars(&body);
        let (body, usage) = rewrite_complete(body, &model);
        self.record.model = Some(model.clone());
        self.record.reason = reason.to_owned();
        if let Some(bill) = &self.bill {
            self.record.usage = Some(bill.usage_or_count(usage, chars, &mut self.record));
        }
        self.record.status = "ok".into();
        self.record.http_status = 200;
        let this = self.settle_and_record(upstream_ms).await;
        let mut response = json_response(StatusCode::OK, body);
        let overhead = this.record.latency.overhead_ms;
        this.headers(response.headers_mut(), Some(&model), reason, overhead);
        response
    }

    async fn rejected(
        mut self,
        target: usize,
        status: StatusCode,
        body: Bytes,
        upstream_ms: f64,
    ) -> Response {
        let model = self.plan.targets[target].model.clone();
        self.record.model = Some(model.clone());
        self.record.status = "upstream_rejected".into();
        self.record.http_status = status.as_u16();
        let this = self.settle_and_record(upstream_ms).await;
        let mut response = json_response(status, body);
        let overhead = this.record.latency.overhead_ms;
        let reason = this.reason_for(target);
        this.headers(response.headers_mut(), Some(&model), reason, overhead);
        response
    }

    async fn failed(mut self, error: ApiError, upstream_ms: f64) -> Response {
        self.record.status = "upstream_error".into();
        self.record.reason = "upstream_failed".into();
        self.record.http_status = error.status().as_u16();
        let this = self.settle_and_record(upstream_ms).await;
        let mut response = error.into_response();
        let overhead = this.record.latency.overhead_ms;
        this.headers(response.headers_mut(), None, "upstream_failed", overhead);
        response
    }

    /// Relays the stream on a task of its own (graceful shutdown waits for it), which settles
    /// and records the request when the stream ends, before `[DONE]` is sent.
    fn stream(mut self, streaming: Streaming, in_flight: InFlight) -> Response {
        let Streaming {
            target,
            response: upstream,
            deadline,
            idle,
            mut lease,
        } = streaming;
        let model = self.plan.targets[target].model.clone();
        let reason = self.reason_for(target);
        self.count_fallback(target);
        self.record.model = Some(model.clone());
        self.record.reason = reason.to_owned();
        let spec = StreamSpec {
            model: model.clone(),
            client_wants_usage: self.client_wants_usage,
            idle,
            deadline,
        };
        let pre_forward_ms = (self.forward_started - self.started).as_secs_f64() * 1e3;
        let mut response = sse_response();
        self.headers(response.headers_mut(), Some(&model), reason, pre_forward_ms);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let tasks = self.state.tasks.clone();
        tasks.spawn(
            async move {
                let _in_flight = in_flight;
                let end = relay(upstream, &tx, spec, self.forward_started).await;
                if let ("stream_interrupted" | "stream_stalled" | "stream_bad_event", Some(e)) =
                    (end.status, &end.error)
                {
                    lease.failed(e);
                }
                drop(lease);
                // A client that left before the usage chunk is billed on what was relayed.
                self.record.status = end.status.to_owned();
                self.record.http_status = 200;
                if let Some(error) = &end.error {
                    tracing::warn!(%error, status = end.status, "stream ended early");
                }
                if let Some(bill) = self.bill.take() {
                    let usage = bill.usage_or_count(end.usage, end.content_chars, &mut self.record);
                    self.record.usage = Some(usage);
                    bill.settle(&mut self.record).await;
                }
                // `[DONE]` only once the request is settled.
                if let Some(done) = end.done {
                    let _ = tx.send(done).await;
                }
                self.record.latency = self.latency(end.upstream_ms);
                finish(&self.state, &self.record, "chat");
            }
            .instrument(tracing::Span::current()),
        );
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
        });
        *response.body_mut() = Body::from_stream(stream);
        response
    }
}

/// An upstream's JSON body, passed on with `status`.
fn json_response(status: StatusCode, body: Bytes) -> Response {
    let content_type = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    (status, content_type, body).into_response()
}

/// An empty `text/event-stream` response.
fn sse_response() -> Response {
    let mut response = Response::new(Body::empty());
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
