//! Where an upstream endpoint is chosen. The router chooses a *model*; the model's pool (every
//! `[[upstreams]]` table serving it) then picks the *endpoint*: available ones only (ejected
//! endpoints wait out their cooldown), unsaturated ones first, then by the pool's strategy.
//!
//! `load_aware` follows the Gateway API Inference Extension's endpoint picker: filter out the
//! saturated (queue or KV cache over a threshold), score the rest on low queue, low KV-cache
//! use and prefix-cache affinity, take the best score (ties at random).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::affinity::{PrefixIndex, prefix_hashes};
use super::endpoint::{Endpoint, EndpointReport, Lease, Snapshot};
use super::health::{Availability, Tracked};
use crate::config::{PoolConfig, ServeConfig, Strategy};
use crate::observe::metrics::Metrics;

/// A model's endpoint, the name that endpoint knows the model by, and the model's health
/// there.
pub struct Member {
    pub endpoint: Arc<Endpoint>,
    pub upstream_model: String,
    pub health: Arc<Tracked>,
}

/// The endpoints serving one model.
pub struct Pool {
    pub model: String,
    pub config: PoolConfig,
    pub members: Vec<Member>,
    affinity: Option<Mutex<PrefixIndex>>,
    turn: AtomicUsize,
    rng: AtomicU64,
    metrics: Arc<Metrics>,
}

/// An endpoint picked for one attempt.
pub struct Pick {
    /// Index into the pool's members.
    pub member: usize,
    pub lease: Lease,
}

impl Pool {
    fn new(model: &str, config: PoolConfig, members: Vec<Member>, metrics: Arc<Metrics>) -> Self {
        let affinity = config
            .prefix_affinity
            .then(|| Mutex::new(PrefixIndex::new(members.len(), config.prefix_entries)));
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        Self {
            model: model.to_owned(),
            config,
            members,
            affinity,
            turn: AtomicUsize::new(0),
            rng: AtomicU64::new(seed),
            metrics,
        }
    }

    /// The prompt's prefix hashes when this pool keeps prefix affinity (else none).
    pub fn prefix_of(&self, prompt: impl FnOnce() -> String) -> Vec<u64> {
        if self.affinity.is_none() {
            return Vec::new();
        }
        let c = &self.config;
        prefix_hashes(&prompt(), c.prefix_block_chars, c.prefix_max_blocks)
    }

    /// Whether no endpoint can take a sheddable request now: each is ejected or saturated.
    pub fn saturated(&self, now: Instant) -> bool {
        self.members.iter().all(|m| {
            let s = m.endpoint.snapshot(&m.health, now);
            s.availability == Availability::Out || self.is_saturated(&m.endpoint, &s)
        })
    }

    fn is_saturated(&self, endpoint: &Endpoint, s: &Snapshot) -> bool {
        let full = endpoint
            .config
            .max_outstanding
            .is_some_and(|max| s.outstanding >= max);
        let loaded = self.config.strategy == Strategy::LoadAware
            && s.load.is_some()
            && (s.queue() >= self.config.queue_threshold
                || s.kv_cache() >= self.config.kv_cache_threshold);
        full || loaded
    }

    /// Picks an endpoint among the members not `excluded`, or `None` when none is available.
    /// With `panic`, ejected endpoints count as available (every model's pool is out: trying
    /// one beats failing without a try).
    pub fn pick(&self, prefix: &[u64], excluded: &[bool], panic: bool) -> Option<Pick> {
        let now = Instant::now();
        let snapshots: Vec<Snapshot> = self
            .members
            .iter()
            .map(|m| m.endpoint.snapshot(&m.health, now))
            .collect();
        let open: Vec<usize> = (0..self.members.len())
            .filter(|&i| !excluded.get(i).copied().unwrap_or(false))
            .filter(|&i| panic || snapshots[i].availability != Availability::Out)
            .collect();
        let unsaturated: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| !self.is_saturated(&self.members[i].endpoint, &snapshots[i]))
            .collect();
        let candidates = if unsaturated.is_empty() {
            open
        } else {
            unsaturated
        };
        if candidates.is_empty() {
            return None;
        }
        let member = self.choose(&candidates, &snapshots, prefix);
        if let (Some(index), false) = (&self.affinity, prefix.is_empty()) {
            lock(index).record(prefix, member);
        }
        let Member {
            endpoint, health, ..
        } = &self.members[member];
        self.metrics
            .endpoints
            .picks
            .with_label_values(&[self.model.as_str(), endpoint.name()])
            .inc();
        let probe = snapshots[member].availability == Availability::Probe;
        Some(Pick {
            member,
            lease: endpoint.lease(health, probe),
        })
    }

    /// The strategy's choice among `candidates` (not empty).
    fn choose(&self, candidates: &[usize], snapshots: &[Snapshot], prefix: &[u64]) -> usize {
        let weight = |i: usize| self.members[i].endpoint.config.weight;
        match self.config.strategy {
            Strategy::RoundRobin => {
                candidates[self.turn.fetch_add(1, Ordering::Relaxed) % candidates.len()]
            }
            Strategy::Weighted => {
                let total: f64 = candidates.iter().map(|&i| weight(i)).sum();
                let mut draw = self.uniform() * total;
                for &i in candidates {
                    draw -= weight(i);
                    if draw < 0.0 {
                        return i;
                    }
                }
                candidates[candidates.len() - 1]
            }
            Strategy::LeastOutstanding => self.best(candidates, |i| {
                -(snapshots[i].outstanding as f64) / weight(i)
            }),
            Strategy::LatencyEwma => self.best(candidates, |i| {
                let s = &snapshots[i];
                -s.ewma_ms.unwrap_or(0.0) * (s.outstanding + 1) as f64
            }),
            Strategy::LoadAware => {
                let scores = self.load_scores(candidates, snapshots, prefix);
                self.best(candidates, |i| scores[i])
            }
        }
    }

    /// Per member (indexed like `snapshots`): queue weight × (min-max normalised low queue) +
    /// KV weight × (1 − KV-cache use) + prefix weight × (share of the prompt's blocks the
    /// endpoint recently served).
    fn load_scores(
        &self,
        candidates: &[usize],
        snapshots: &[Snapshot],
        prefix: &[u64],
    ) -> Vec<f64> {
        let c = &self.config;
        let queues: Vec<f64> = snapshots.iter().map(Snapshot::queue).collect();
        let (low, high) = candidates
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &i| {
                (lo.min(queues[i]), hi.max(queues[i]))
            });
        let matched = match (&self.affinity, prefix.is_empty()) {
            (Some(index), false) => lock(index).matched(prefix),
            _ => vec![0; self.members.len()],
        };
        (0..snapshots.len())
            .map(|i| {
                let queue = if high > low {
                    (high - queues[i]) / (high - low)
                } else {
                    1.0
                };
                let cached = matched[i] as f64 / prefix.len().max(1) as f64;
                c.queue_weight * queue
                    + c.kv_cache_weight * (1.0 - snapshots[i].kv_cache())
                    + c.prefix_weight * cached
            })
            .collect()
    }

    /// The candidate with the highest `score`, ties broken at random.
    fn best(&self, candidates: &[usize], score: impl Fn(usize) -> f64) -> usize {
        let top = candidates
            .iter()
            .map(|&i| score(i))
            .fold(f64::MIN, f64::max);
        let tied: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| score(i) >= top - 1e-9)
            .collect();
        tied[(self.uniform() * tied.len() as f64) as usize % tied.len()]
    }

    /// A uniform draw in [0, 1) (splitmix64; a shared counter is enough for spreading load).
    fn uniform(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn report(&self, now: Instant) -> PoolReport {
        PoolReport {
            model: self.model.clone(),
            strategy: self.config.strategy,
            prefix_affinity: self.config.prefix_affinity,
            prefixes_remembered: self.affinity.as_ref().map(|i| lock(i).blocks()),
            saturated: self.saturated(now),
            endpoints: self
                .members
                .iter()
                .map(|m| MemberReport {
                    upstream_model: m.upstream_model.clone(),
                    endpoint: m.endpoint.report(&m.health, now),
                })
                .collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pool as `/admin/upstreams` shows it.
#[derive(Serialize)]
pub struct PoolReport {
    pub model: String,
    pub strategy: Strategy,
    pub prefix_affinity: bool,
    pub prefixes_remembered: Option<usize>,
    /// Whether a sheddable request to this model would be refused now.
    pub saturated: bool,
    pub endpoints: Vec<MemberReport>,
}

#[derive(Serialize)]
pub struct MemberReport {
    pub upstream_model: String,
    #[serde(flatten)]
    pub endpoint: EndpointReport,
}

/// Every model's pool, and the endpoints they share.
pub struct Pools {
    by_model: HashMap<String, Arc<Pool>>,
    pub endpoints: Vec<Arc<Endpoint>>,
}

impl Pools {
    /// One endpoint per `[[upstreams]]` table (with its client), one pool per served model.
    pub fn build(
        config: &ServeConfig,
        clients: &HashMap<String, reqwest::Client>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let endpoints: Vec<Arc<Endpoint>> = config
            .upstreams
            .iter()
            .filter_map(|u| {
                let client = clients.get(&u.name)?.clone();
                Some(Arc::new(Endpoint::new(
                    u.clone(),
                    client,
                    &metrics.endpoints,
                )))
            })
            .collect();
        let mut by_model: HashMap<String, Arc<Pool>> = HashMap::new();
        let models: std::collections::BTreeSet<String> = config
            .upstreams
            .iter()
            .flat_map(|u| u.model_map().into_keys())
            .collect();
        for model in models {
            let mut members: Vec<Member> = endpoints
                .iter()
                .filter_map(|e| {
                    Some(Member {
                        endpoint: e.clone(),
                        upstream_model: e.config.serves(&model)?,
                        health: e.health_of(&model)?.clone(),
                    })
                })
                .collect();
            // Endpoints without their key are left out while another can be called (with none
            // callable they stay, so the error names the variable to set).
            if members.iter().any(|m| m.endpoint.config.has_credentials()) {
                members.retain(|m| m.endpoint.config.has_credentials());
            }
            let pool = Pool::new(&model, config.pool_config(&model), members, metrics.clone());
            by_model.insert(model, Arc::new(pool));
        }
        Self {
            by_model,
            endpoints,
        }
    }

    pub fn get(&self, model: &str) -> Option<&Arc<Pool>> {
        self.by_model.get(model)
    }

    /// The endpoints some `load_aware` pool scores by their scraped load.
    pub fn scraped(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints
            .iter()
            .filter(|e| {
                self.by_model.values().any(|p| {
                    p.config.strategy == Strategy::LoadAware
                        && p.members.iter().any(|m| Arc::ptr_eq(&m.endpoint, e))
                })
            })
            .cloned()
            .collect()
    }

    /// Every pool, by model name.
    pub fn report(&self) -> Vec<PoolReport> {
        let now = Instant::now();
        let mut pools: Vec<PoolReport> = self.by_model.values().map(|p| p.report(now)).collect();
        pools.sort_by(|a, b| a.model.cmp(&b.model));
        pools
    }
}
