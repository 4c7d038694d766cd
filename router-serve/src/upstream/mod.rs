//! The upstream side. [`pool`] is where an endpoint is chosen: each model's pool of
//! `[[upstreams]]` endpoints picks one per attempt (least outstanding, latency, weights, or
//! the endpoints' own queue and KV-cache load with prefix affinity). [`forward`] sends the
//! request (retries on other endpoints, fallback to the next model); [`stream`] relays an SSE
//! answer event by event. [`endpoint`] holds an endpoint's run-time state, [`health`] its
//! ejection rules, [`affinity`] the prefix index, [`scrape`] the background scrapes and probes.

pub mod affinity;
pub mod endpoint;
pub mod forward;
pub mod health;
pub mod pool;
pub mod scrape;
pub mod stream;
