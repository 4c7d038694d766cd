//! Passive health of one model at one endpoint (outlier ejection): `eject_after` consecutive
//! failures take it out for a cooldown that doubles with each ejection in a row (up to `cooldown_max_ms`);
//! after the cooldown one request (or active probe) is let through, and its outcome re-admits
//! the endpoint or ejects it again. An endpoint that stays healthy for `cooldown_max_ms` starts
//! over at the first cooldown.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};

use crate::config::UpstreamConfig;
use crate::observe::metrics::EndpointMetrics;

/// The health of one model at one endpoint, with its gauges. Health is per model: a hosted
/// API that serves many models can fail one of them and not the others (a connection error
/// fails each model's next request alike, so a dead host is ejected for every model soon).
pub struct Tracked {
    state: Mutex<Health>,
    config: UpstreamConfig,
    model: String,
    healthy: IntGauge,
    ejections: IntCounter,
}

impl Tracked {
    pub fn new(config: &UpstreamConfig, model: &str, metrics: &EndpointMetrics) -> Self {
        let labels = [model, config.name.as_str()];
        let healthy = metrics.healthy.with_label_values(&labels);
        healthy.set(1);
        Self {
            state: Mutex::new(Health::new(Instant::now())),
            config: config.clone(),
            model: model.to_owned(),
            healthy,
            ejections: metrics.ejections.with_label_values(&labels),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, Health> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn succeeded(&self) {
        if self.state().success(Instant::now()) == Change::Readmitted {
            self.healthy.set(1);
            tracing::info!(upstream = %self.config.name, model = %self.model, "upstream re-admitted");
        }
    }

    pub fn failed(&self, error: &str) {
        let mut state = self.state();
        if let Change::Ejected(cooldown) = state.failure(Instant::now(), &self.config, error) {
            self.healthy.set(0);
            self.ejections.inc();
            tracing::warn!(
                upstream = %self.config.name,
                model = %self.model,
                cooldown_ms = cooldown.as_millis() as u64,
                consecutive = state.consecutive_failures(),
                %error,
                "upstream ejected"
            );
        }
    }
}

/// Whether an endpoint may be sent a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Ready,
    /// Ejected, cooldown over: one request may go as the probe.
    Probe,
    /// Ejected (or its probe is in flight).
    Out,
}

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Ejected(Duration),
    Readmitted,
}

/// One endpoint's health.
#[derive(Debug, Clone)]
pub struct Health {
    consecutive: u32,
    ejected_until: Option<Instant>,
    probing: bool,
    /// Ejections in a row (the cooldown doubles with each).
    ejections: u32,
    healthy_since: Instant,
    pub last_error: Option<String>,
}

impl Health {
    pub fn new(now: Instant) -> Self {
        Self {
            consecutive: 0,
            ejected_until: None,
            probing: false,
            ejections: 0,
            healthy_since: now,
            last_error: None,
        }
    }

    pub fn availability(&self, now: Instant) -> Availability {
        match self.ejected_until {
            None => Availability::Ready,
            Some(until) if now >= until && !self.probing => Availability::Probe,
            Some(_) => Availability::Out,
        }
    }

    /// Marks the probe as sent: nothing else goes until its outcome is in.
    pub fn start_probe(&mut self) {
        self.probing = true;
    }

    /// The probe ended without saying anything about the endpoint (429, cancelled).
    pub fn end_probe(&mut self) {
        self.probing = false;
    }

    pub fn success(&mut self, now: Instant) -> Change {
        self.consecutive = 0;
        if self.ejected_until.take().is_some() {
            self.probing = false;
            self.healthy_since = now;
            return Change::Readmitted;
        }
        Change::None
    }

    pub fn failure(&mut self, now: Instant, config: &UpstreamConfig, error: &str) -> Change {
        self.consecutive = self.consecutive.saturating_add(1);
        self.last_error = Some(error.chars().take(300).collect());
        match self.ejected_until {
            // The probe failed (or an active check after the cooldown): out again, for longer.
            Some(until) if self.probing || now >= until => {
                self.probing = false;
                self.eject(now, config)
            }
            // A request sent before the ejection, failing late.
            Some(_) => Change::None,
            None if self.consecutive >= config.eject_after => {
                let calm = Duration::from_millis(config.cooldown_max_ms);
                if now.saturating_duration_since(self.healthy_since) > calm {
                    self.ejections = 0;
                }
                self.eject(now, config)
            }
            None => Change::None,
        }
    }

    fn eject(&mut self, now: Instant, config: &UpstreamConfig) -> Change {
        self.ejections = self.ejections.saturating_add(1);
        let cooldown = cooldown(config, self.ejections);
        self.ejected_until = Some(now + cooldown);
        Change::Ejected(cooldown)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }

    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Time left until the probe may go (zero once it may).
    pub fn readmit_in(&self, now: Instant) -> Option<Duration> {
        self.ejected_until
            .map(|until| until.saturating_duration_since(now))
    }
}

/// `cooldown_ms` × 2^(ejections − 1), at most `cooldown_max_ms`.
fn cooldown(config: &UpstreamConfig, ejections: u32) -> Duration {
    let ms = config
        .cooldown_ms
        .saturating_mul(1u64 << ejections.saturating_sub(1).min(30))
        .min(config.cooldown_max_ms);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> UpstreamConfig {
        toml::from_str(
            "name = \"u\"\nbase_url = \"http://x\"\nmodels = [\"m\"]\n\
             eject_after = 2\ncooldown_ms = 100\ncooldown_max_ms = 350",
        )
        .unwrap()
    }

    #[test]
    fn consecutive_failures_eject_and_the_cooldown_grows_up_to_its_cap() {
        let c = config();
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        assert_eq!(h.failure(t0, &c, "500"), Change::None);
        assert_eq!(h.success(t0), Change::None, "a success resets the count");
        assert_eq!(h.failure(t0, &c, "500"), Change::None);
        let ejected = h.failure(t0, &c, "500");
        assert_eq!(ejected, Change::Ejected(Duration::from_millis(100)));
        assert_eq!(h.availability(t0), Availability::Out);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(h.availability(t1), Availability::Probe);
        h.start_probe();
        assert_eq!(h.availability(t1), Availability::Out, "one probe at a time");
        let again = h.failure(t1, &c, "connect");
        assert_eq!(again, Change::Ejected(Duration::from_millis(200)));
        let t2 = t1 + Duration::from_millis(200);
        h.start_probe();
        assert_eq!(
            h.failure(t2, &c, "timeout"),
            Change::Ejected(Duration::from_millis(350)),
            "capped"
        );
        let t3 = t2 + Duration::from_millis(350);
        assert_eq!(h.availability(t3), Availability::Probe);
        h.start_probe();
        assert_eq!(h.success(t3), Change::Readmitted);
        assert_eq!(h.availability(t3), Availability::Ready);
    }

    /// Health just ejected by two failures at `t0`.
    fn ejected() -> (UpstreamConfig, Instant, Health) {
        let c = config();
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        h.failure(t0, &c, "500");
        h.failure(t0, &c, "500");
        (c, t0, h)
    }

    #[test]
    fn a_probe_without_a_verdict_lets_the_next_request_probe() {
        let (_, t0, mut h) = ejected();
        let t1 = t0 + Duration::from_millis(100);
        h.start_probe();
        h.end_probe();
        assert_eq!(h.availability(t1), Availability::Probe);
    }

    #[test]
    fn a_long_healthy_spell_starts_the_cooldown_over() {
        let (c, t0, mut h) = ejected();
        let t1 = t0 + Duration::from_millis(100);
        h.start_probe();
        h.success(t1);
        // Failing again soon after: the second cooldown.
        let t2 = t1 + Duration::from_millis(10);
        h.failure(t2, &c, "500");
        assert_eq!(
            h.failure(t2, &c, "500"),
            Change::Ejected(Duration::from_millis(200))
        );
        h.start_probe();
        let t3 = t2 + Duration::from_millis(200);
        h.success(t3);
        // Failing after a healthy spell longer than cooldown_max_ms: the first again.
        let t4 = t3 + Duration::from_millis(400);
        h.failure(t4, &c, "500");
        assert_eq!(
            h.failure(t4, &c, "500"),
            Change::Ejected(Duration::from_millis(100))
        );
    }
}
