//! Prometheus metrics, all named `router_*`; durations are histograms in seconds.

use prometheus::{
    Encoder as _, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the server exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Requests by endpoint, answering model, status and reason.
    pub requests: IntCounterVec,
    pub decision_seconds: Histogram,
    /// Total time minus upstream time.
    pub overhead_seconds: Histogram,
    pub upstream_seconds: HistogramVec,
    /// Tokens by model and kind (`input`, `output`).
    pub tokens: IntCounterVec,
    /// Cost in micro-dollars by model (counters are integers; divide by 1e6).
    pub cost_microusd: IntCounterVec,
    /// Failed upstream attempts by model and error.
    pub upstream_failures: IntCounterVec,
    /// Requests answered by a model other than the first choice.
    pub fallbacks: IntCounterVec,
    /// Reloads by trigger and result.
    pub reloads: IntCounterVec,
    pub batch_size: Histogram,
    pub in_flight: IntGauge,
    /// Decision-cache lookups by result (`hit`, `miss`).
    pub decision_cache: IntCounterVec,
    /// Money anomalies by model and kind: `missing_usage` (charged from our own count),
    /// `over_reserved` (usage past the worst case; the excess is not charged),
    /// `unusable_body` (a 2xx that was not a chat completion, charged as seen), `abandoned`
    /// (a request whose task ended unsettled; charged its worst case).
    pub usage_anomalies: IntCounterVec,
    /// Requests refused with 401 on the admin endpoints or `/metrics`, by path group.
    pub unauthorized: IntCounterVec,
    /// Shared-store calls that failed, by part (`redis`, `postgres`) and operation.
    pub store_errors: IntCounterVec,
    /// Operations a replica served from its local share because Redis was unreachable
    /// (`on_store_error = "local"`), by operation.
    pub store_local: IntCounterVec,
    /// Ledger rows waiting in this replica's spool for PostgreSQL.
    pub ledger_spooled: IntGauge,
    /// Spooled ledger rows written to PostgreSQL once it was back.
    pub ledger_replayed: IntCounter,
    /// Upstream endpoints: health, load, picks, shed requests.
    pub endpoints: EndpointMetrics,
}

/// Per upstream endpoint (an `[[upstreams]]` table): its health, what is in flight, its
/// scraped load, and how often each pool picked it.
pub struct EndpointMetrics {
    /// By model and upstream: 1 while the endpoint takes the model's requests, 0 while it is
    /// ejected for them.
    pub healthy: IntGaugeVec,
    pub ejections: IntCounterVec,
    pub outstanding: IntGaugeVec,
    /// Scraped waiting requests and KV-cache use (0–1), `load_aware` pools only.
    pub queue: GaugeVec,
    pub kv_cache: GaugeVec,
    pub scrape_errors: IntCounterVec,
    /// Picks by model and upstream.
    pub picks: IntCounterVec,
    /// Sheddable requests refused with 503 because every endpoint was saturated.
    pub shed: IntCounter,
}

impl EndpointMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let int_gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["upstream"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let float_gauge = |name: &str, help: &str| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), &["upstream"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        Ok(Self {
            healthy: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "router_upstream_healthy",
                        "1 while the upstream endpoint takes the model's requests, 0 while it is ejected for them.",
                    ),
                    &["model", "upstream"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            ejections: counter(
                "router_upstream_ejections_total",
                "Times the upstream endpoint was ejected for the model after consecutive failures.",
                &["model", "upstream"],
            )?,
            outstanding: int_gauge(
                "router_upstream_outstanding",
                "Requests this replica has in flight at the upstream endpoint.",
            )?,
            queue: float_gauge(
                "router_upstream_queue",
                "Waiting requests the upstream endpoint reported at its last scrape.",
            )?,
            kv_cache: float_gauge(
                "router_upstream_kv_cache",
                "KV-cache use (0-1) the upstream endpoint reported at its last scrape.",
            )?,
            scrape_errors: counter(
                "router_upstream_scrape_errors_total",
                "Failed scrapes of the upstream endpoint's /metrics.",
                &["upstream"],
            )?,
            picks: counter(
                "router_upstream_picks_total",
                "Requests sent to each upstream endpoint of a model's pool.",
                &["model", "upstream"],
            )?,
            shed: {
                let c = IntCounter::new(
                    "router_shed_total",
                    "Sheddable requests refused (503) because every eligible endpoint was saturated.",
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
        })
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// `router_upstream_seconds{model}`, registered.
fn upstream_seconds(registry: &Registry) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(
            "router_upstream_seconds",
            "Time in upstream attempts, by model (streams: until the last chunk).",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["model"],
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

/// A registered gauge.
fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// The shared store's metrics: errors, operations served locally, the ledger spool.
fn store_metrics(
    registry: &Registry,
) -> prometheus::Result<(IntCounterVec, IntCounterVec, IntGauge, IntCounter)> {
    let errors = IntCounterVec::new(
        Opts::new(
            "router_store_errors_total",
            "Shared-store calls that failed, by part (redis, postgres) and operation.",
        ),
        &["part", "op"],
    )?;
    let local = IntCounterVec::new(
        Opts::new(
            "router_store_local_total",
            "Operations served from this replica's share of the limits while Redis was unreachable.",
        ),
        &["op"],
    )?;
    let spooled = gauge(
        registry,
        "router_ledger_spooled_rows",
        "Ledger rows waiting in this replica's spool for PostgreSQL.",
    )?;
    let replayed = IntCounter::new(
        "router_ledger_replayed_total",
        "Spooled ledger rows written to PostgreSQL once it was back.",
    )?;
    registry.register(Box::new(errors.clone()))?;
    registry.register(Box::new(local.clone()))?;
    registry.register(Box::new(replayed.clone()))?;
    Ok((errors, local, spooled, replayed))
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| -> prometheus::Result<Histogram> {
                let h =
                    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let (store_errors, store_local, ledger_spooled, ledger_replayed) =
            store_metrics(&registry)?;
        let metrics = Self {
            requests: counter(
                "router_requests_total",
                "Requests by endpoint, answering model, status and reason.",
                &["endpoint", "model", "status", "reason"],
            )?,
            decision_seconds: histogram(
                "router_decision_seconds",
                "Time to tokenise, embed, predict and choose.",
                LATENCY_BUCKETS,
            )?,
            overhead_seconds: histogram(
                "router_overhead_seconds",
                "Gateway time: total time minus time waiting on upstreams.",
                LATENCY_BUCKETS,
            )?,
            upstream_seconds: upstream_seconds(&registry)?,
            tokens: counter(
                "router_tokens_total",
                "Tokens reported by upstreams, by model and kind (input, output).",
                &["model", "kind"],
            )?,
            cost_microusd: counter(
                "router_cost_microusd_total",
                "Cost of answered requests in millionths of a US dollar, by model.",
                &["model"],
            )?,
            upstream_failures: counter(
                "router_upstream_failures_total",
                "Failed upstream attempts by model and error kind.",
                &["model", "error"],
            )?,
            usage_anomalies: counter(
                "router_usage_anomalies_total",
                "Money anomalies by model and kind (missing_usage, over_reserved, unusable_body, abandoned).",
                &["model", "kind"],
            )?,
            unauthorized: counter(
                "router_unauthorized_total",
                "Requests refused for want of a valid key, by endpoint group (v1, admin, metrics).",
                &["group"],
            )?,
            fallbacks: counter(
                "router_fallbacks_total",
                "Requests answered by another model than the first choice, by first choice.",
                &["model"],
            )?,
            reloads: counter(
                "router_reloads_total",
                "Config and artifact reloads by trigger and result.",
                &["trigger", "result"],
            )?,
            batch_size: histogram(
                "router_encoder_batch_size",
                "Prompts embedded per encoder forward pass.",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            )?,
            decision_cache: counter(
                "router_decision_cache_total",
                "Decision-cache lookups by result (hit, miss).",
                &["result"],
            )?,
            in_flight: gauge(
                &registry,
                "router_in_flight_requests",
                "Requests being served.",
            )?,
            store_errors,
            store_local,
            ledger_spooled,
            ledger_replayed,
            endpoints: EndpointMetrics::new(&registry)?,
            registry,
        };
        Ok(metrics)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
