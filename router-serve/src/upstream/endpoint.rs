//! One upstream endpoint (an `[[upstreams]]` table) at run time: its HTTP client, requests in
//! flight, latency average and scraped load, shared by every pool that serves a model through
//! it, and the health of each model it serves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{Gauge, IntCounter, IntGauge};
use serde::Serialize;

use super::health::{Availability, Tracked};
use crate::config::UpstreamConfig;
use crate::observe::metrics::EndpointMetrics;

/// An endpoint's load as its `/metrics` last reported it.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub waiting: f64,
    pub kv_cache: f64,
    pub at: Instant,
    /// What this replica had in flight then (requests sent since are added to `waiting`).
    pub outstanding_then: u64,
}

#[derive(Debug)]
struct State {
    outstanding: u64,
    /// Moving average of time to first byte, in ms, and when its last sample came.
    ewma_ms: Option<(f64, Instant)>,
    load: Option<Load>,
    scrape_error: Option<String>,
}

/// The endpoint's gauges and counters, resolved once.
struct Gauges {
    outstanding: IntGauge,
    queue: Gauge,
    kv_cache: Gauge,
    scrape_errors: IntCounter,
}

pub struct Endpoint {
    pub config: UpstreamConfig,
    pub client: reqwest::Client,
    state: Mutex<State>,
    gauges: Gauges,
    /// Per router model it serves, that model's health here.
    health: BTreeMap<String, Arc<Tracked>>,
}

/// What a picker needs to know about an endpoint, read at once.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub availability: Availability,
    pub outstanding: u64,
    pub ewma_ms: Option<f64>,
    /// The scraped load, if scraped within five intervals.
    pub load: Option<Load>,
}

impl Snapshot {
    /// Waiting requests: the scraped queue corrected by the change in what this replica has
    /// in flight since the scrape (sent since: more; finished since: fewer), or without a fresh
    /// scrape what this replica has in flight.
    pub fn queue(&self) -> f64 {
        match self.load {
            Some(l) => (l.waiting + self.outstanding as f64 - l.outstanding_then as f64).max(0.0),
            None => self.outstanding as f64,
        }
    }

    pub fn kv_cache(&self) -> f64 {
        self.load.map_or(0.0, |l| l.kv_cache)
    }
}

/// The weight of a new time-to-first-byte sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;
/// Without new samples the average decays with this time constant, so that an endpoint that
/// was slow once is tried again some time later.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// The average `age` after its last sample.
fn decayed((ms, at): (f64, Instant), now: Instant) -> f64 {
    let age = now.saturating_duration_since(at).as_secs_f64();
    ms * (-age / EWMA_DECAY.as_secs_f64()).exp()
}

impl Endpoint {
    pub fn new(config: UpstreamConfig, client: reqwest::Client, metrics: &EndpointMetrics) -> Self {
        let name = [config.name.as_str()];
        let gauges = Gauges {
            outstanding: metrics.outstanding.with_label_values(&name),
            queue: metrics.queue.with_label_values(&name),
            kv_cache: metrics.kv_cache.with_label_values(&name),
            scrape_errors: metrics.scrape_errors.with_label_values(&name),
        };
        gauges.outstanding.set(0);
        let health = config
            .model_map()
            .into_keys()
            .map(|model| {
                let tracked = Tracked::new(&config, &model, metrics);
                (model, Arc::new(tracked))
            })
            .collect();
        Self {
            config,
            client,
            health,
            state: Mutex::new(State {
                outstanding: 0,
                ewma_ms: None,
                load: None,
                scrape_error: None,
            }),
            gauges,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The health of router model `model` here.
    pub fn health_of(&self, model: &str) -> Option<&Arc<Tracked>> {
        self.health.get(model)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoint's load and `health`'s availability.
    pub fn snapshot(&self, health: &Tracked, now: Instant) -> Snapshot {
        let availability = health.state().availability(now);
        let s = self.state();
        let fresh = Duration::from_millis(self.config.scrape_interval_ms.saturating_mul(5));
        Snapshot {
            availability,
            outstanding: s.outstanding,
            ewma_ms: s.ewma_ms.map(|e| decayed(e, now)),
            load: s
                .load
                .filter(|l| now.saturating_duration_since(l.at) <= fresh),
        }
    }

    /// Counts a request for the model of `health` in flight until the lease is dropped; a
    /// probe holds that model's one probe slot here.
    pub fn lease(self: &Arc<Self>, health: &Arc<Tracked>, probe: bool) -> Lease {
        if probe {
            health.state().start_probe();
        }
        let mut s = self.state();
        s.outstanding += 1;
        self.gauges.outstanding.set(s.outstanding as i64);
        Lease {
            endpoint: self.clone(),
            health: health.clone(),
            probe,
            judged: false,
        }
    }

    /// The endpoint answered in `ttfb` (time to first byte): the moving average.
    fn answered_in(&self, ttfb: Duration) {
        let mut s = self.state();
        let now = Instant::now();
        let ms = ttfb.as_secs_f64() * 1e3;
        let average = match s.ewma_ms {
            Some(e) => {
                let avg = decayed(e, now);
                avg + EWMA_ALPHA * (ms - avg)
            }
            None => ms,
        };
        s.ewma_ms = Some((average, now));
    }

    /// An active check's outcome: it says the same of every model served here.
    pub fn checked(&self, error: Option<&str>) {
        for health in self.health.values() {
            match error {
                None => health.succeeded(),
                Some(e) => health.failed(e),
            }
        }
    }

    /// Stores a scrape's result.
    pub fn scraped(&self, result: Result<(f64, f64), String>) {
        let mut s = self.state();
        match result {
            Ok((waiting, kv_cache)) => {
                s.load = Some(Load {
                    waiting,
                    kv_cache,
                    at: Instant::now(),
                    outstanding_then: s.outstanding,
                });
                s.scrape_error = None;
                self.gauges.queue.set(waiting);
                self.gauges.kv_cache.set(kv_cache);
            }
            Err(e) => {
                s.scrape_error = Some(e);
                self.gauges.scrape_errors.inc();
            }
        }
    }

    /// The state of this endpoint for the model of `health`, for `/admin/upstreams`.
    pub fn report(&self, health: &Tracked, now: Instant) -> EndpointReport {
        let h = health.state();
        let state = match h.availability(now) {
            Availability::Ready => "healthy",
            Availability::Probe => "probe_due",
            Availability::Out if h.readmit_in(now).is_some_and(|d| d.is_zero()) => "probing",
            Availability::Out => "ejected",
        };
        let s = self.state();
        EndpointReport {
            upstream: self.config.name.clone(),
            state,
            consecutive_failures: h.consecutive_failures(),
            ejections: h.ejections(),
            readmit_in_ms: h.readmit_in(now).map(|d| d.as_millis() as u64),
            last_error: h.last_error.clone(),
            outstanding: s.outstanding,
            latency_ewma_ms: s.ewma_ms.map(|e| decayed(e, now)),
            queue: s.load.map(|l| l.waiting),
            kv_cache: s.load.map(|l| l.kv_cache),
            scraped_ms_ago: s
                .load
                .map(|l| now.saturating_duration_since(l.at).as_millis() as u64),
            scrape_error: s.scrape_error.clone(),
            weight: self.config.weight,
        }
    }
}

/// An endpoint's state as `/admin/upstreams` shows it.
#[derive(Debug, Serialize)]
pub struct EndpointReport {
    pub upstream: String,
    /// `healthy`, `ejected`, `probe_due` (cooldown over, next request probes) or `probing`.
    pub state: &'static str,
    pub consecutive_failures: u32,
    pub ejections: u32,
    pub readmit_in_ms: Option<u64>,
    pub last_error: Option<String>,
    pub outstanding: u64,
    pub latency_ewma_ms: Option<f64>,
    pub queue: Option<f64>,
    pub kv_cache: Option<f64>,
    pub scraped_ms_ago: Option<u64>,
    pub scrape_error: Option<String>,
    pub weight: f64,
}

/// A request in flight at an endpoint; dropping it ends the count. Its outcome feeds the
/// model's health there once: [`Lease::succeeded`] or [`Lease::failed`]; a lease dropped
/// without either (429, cancelled) says nothing, and a probe's slot is freed for the next
/// request.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    health: Arc<Tracked>,
    probe: bool,
    judged: bool,
}

impl Lease {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The endpoint answered; `ttfb` (its time to first byte) feeds the latency average.
    pub fn succeeded(&mut self, ttfb: Option<Duration>) {
        self.judged = true;
        if let Some(t) = ttfb {
            self.endpoint.answered_in(t);
        }
        self.health.succeeded();
    }

    /// The endpoint failed the model (connect error, timeout, 5xx, broken body, bad key).
    pub fn failed(&mut self, error: &str) {
        self.judged = true;
        self.health.failed(error);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.probe && !self.judged {
            self.health.state().end_probe();
        }
        let mut s = self.endpoint.state();
        s.outstanding = s.outstanding.saturating_sub(1);
        self.endpoint.gauges.outstanding.set(s.outstanding as i64);
    }
}
