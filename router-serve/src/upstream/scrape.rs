//! Background work on endpoints: scraping the Prometheus `/metrics` of the endpoints that
//! `load_aware` pools score (waiting requests, KV-cache use), and optional active health
//! checks (`GET {base_url}/models`). Both stop when the engine that started them is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

use super::endpoint::Endpoint;
use super::pool::Pools;
use crate::config::AuthStyle;

/// Starts the scrapers and probers of `pools` on the current runtime; they stop when the
/// returned guard is dropped. Without a runtime (a blocking test), nothing starts.
pub fn start(pools: &Pools) -> Option<DropGuard> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let token = CancellationToken::new();
    for endpoint in pools.scraped() {
        let every = Duration::from_millis(endpoint.config.scrape_interval_ms);
        let token = token.clone();
        runtime.spawn(every_until(token, every, endpoint, scrape_once));
    }
    for endpoint in &pools.endpoints {
        if endpoint.config.probe_interval_ms > 0 {
            let every = Duration::from_millis(endpoint.config.probe_interval_ms);
            let token = token.clone();
            runtime.spawn(every_until(token, every, endpoint.clone(), probe_once));
        }
    }
    Some(token.drop_guard())
}

/// Runs `work` on `endpoint` every `every` until `token` is cancelled.
async fn every_until<F, Fut>(
    token: CancellationToken,
    every: Duration,
    endpoint: Arc<Endpoint>,
    work: F,
) where
    F: Fn(Arc<Endpoint>, Duration) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = ticks.tick() => work(endpoint.clone(), every).await,
        }
    }
}

/// One scrape of `endpoint`'s `/metrics`, within `every` (at least 100 ms).
async fn scrape_once(endpoint: Arc<Endpoint>, every: Duration) {
    let url = endpoint.config.metrics_url();
    let request = authorised(&endpoint, endpoint.client.get(&url));
    let timeout = every.max(Duration::from_millis(100));
    let result = match tokio::time::timeout(timeout, async {
        let response = request.send().await?.error_for_status()?;
        response.text().await
    })
    .await
    {
        Err(_) => Err(format!(
            "{url}: no answer within {} ms",
            timeout.as_millis()
        )),
        Ok(Err(e)) => Err(format!("{url}: {e}")),
        Ok(Ok(text)) => parse_load(
            &text,
            &endpoint.config.queue_metrics,
            &endpoint.config.kv_cache_metrics,
        )
        .ok_or_else(|| {
            format!(
                "{url}: none of the gauges {:?} is exported",
                endpoint.config.queue_metrics
            )
        }),
    };
    if let Err(e) = &result {
        tracing::debug!(upstream = %endpoint.name(), error = %e, "scrape failed");
    }
    endpoint.scraped(result);
}

/// One active health check: `GET {base_url}/models`, any 2xx within the first-byte timeout
/// is a success.
async fn probe_once(endpoint: Arc<Endpoint>, _every: Duration) {
    let url = format!("{}/models", endpoint.config.base_url.trim_end_matches('/'));
    let request = authorised(&endpoint, endpoint.client.get(&url)).query(&endpoint.config.query);
    let timeout = Duration::from_millis(endpoint.config.first_byte_timeout_ms);
    let error = match tokio::time::timeout(timeout, request.send()).await {
        Ok(Ok(r)) if r.status().is_success() => None,
        Ok(Ok(r)) if r.status().as_u16() == 429 => return,
        Ok(Ok(r)) => Some(format!("active check: {url} answered {}", r.status())),
        Ok(Err(e)) => Some(format!("active check: {url}: {e}")),
        Err(_) => Some(format!("active check: {url}: timed out")),
    };
    endpoint.checked(error.as_deref());
}

fn authorised(endpoint: &Endpoint, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match (&endpoint.config.api_key, endpoint.config.auth) {
        (Some(key), AuthStyle::Bearer) => request.bearer_auth(key.expose()),
        (Some(key), AuthStyle::ApiKey) => request.header("api-key", key.expose()),
        (None, _) => request,
    }
}

/// (waiting requests, KV-cache use 0–1) from a Prometheus text exposition: the first of
/// `queue_names` that is present, summed over its series (one per model or engine), and the
/// first of `kv_names`, the highest series (a percentage over 1 is read as 0–100). `None`
/// when no queue gauge is present; a missing KV gauge reads as 0 (TGI exports none).
pub fn parse_load(text: &str, queue_names: &[String], kv_names: &[String]) -> Option<(f64, f64)> {
    let series = |name: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let value = if let Some(labelled) = rest.strip_prefix('{') {
                    labelled.rsplit_once('}')?.1
                } else if rest.starts_with(' ') {
                    rest
                } else {
                    return None;
                };
                value.split_whitespace().next()?.parse::<f64>().ok()
            })
            .filter(|v| v.is_finite() && *v >= 0.0)
            .collect()
    };
    let queue = queue_names
        .iter()
        .map(|n| series(n))
        .find(|s| !s.is_empty())?
        .iter()
        .sum();
    let kv = kv_names
        .iter()
        .map(|n| series(n))
        .find(|s| !s.is_empty())
        .map_or(0.0, |s| s.into_iter().fold(0.0, f64::max));
    let kv = if kv > 1.0 { kv / 100.0 } else { kv };
    Some((queue, kv.min(1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn vllm_sglang_and_tgi_gauges_are_read() {
        let vllm = "# HELP vllm:num_requests_waiting Number of requests waiting.\n\
            # TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 3.0\n\
            vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 2.0\n\
            vllm:num_requests_waiting_total 99\n\
            vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25\n\
            vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.75\n";
        let queue = names(&["vllm:num_requests_waiting", "sglang:num_queue_reqs"]);
        let kv = names(&["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]);
        assert_eq!(parse_load(vllm, &queue, &kv), Some((5.0, 0.75)));
        let older = "vllm:num_requests_waiting 1\nvllm:gpu_cache_usage_perc 0.5\n";
        assert_eq!(parse_load(older, &queue, &kv), Some((1.0, 0.5)));
        let sglang = "sglang:num_queue_reqs{model_name=\"m\"} 4\n";
        assert_eq!(parse_load(sglang, &queue, &kv), Some((4.0, 0.0)));
        let tgi = "tgi_queue_size 7\n";
        assert_eq!(
            parse_load(tgi, &names(&["tgi_queue_size"]), &kv),
            Some((7.0, 0.0))
        );
        assert_eq!(parse_load("other 1\n", &queue, &kv), None);
        let percent = "vllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 85\n";
        assert_eq!(parse_load(percent, &queue, &kv), Some((0.0, 0.85)));
    }
}
