//! Upstream pools: one model served by three fake vLLM-like endpoints (each a fake upstream
//! with a `/metrics` whose queue and KV-cache gauges the test sets). The load-aware picker
//! avoids saturated endpoints, prefix affinity keeps a shared-prefix stream on one endpoint
//! until it saturates, failing endpoints are ejected and re-admitted without a client seeing a
//! failure, and sheddable requests are refused when everything is saturated.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Behaviour, Fake, TestServer, get_json, metrics, sse_data};
use crate::tenants::sha;

/// A self-hosted model outside the router artifact, asked for by name.
const MODEL: &str = "local-llama";
/// How often the endpoints' `/metrics` are scraped in these tests.
const SCRAPE_MS: u64 = 50;

async fn endpoints(n: usize) -> Vec<Fake> {
    let mut fakes = Vec::new();
    for _ in 0..n {
        fakes.push(Fake::start().await);
    }
    fakes
}

/// `[[upstreams]]` tables `ep0`… for `urls` serving [`MODEL`] (each with `endpoint` keys),
/// and `[pools.MODEL]` with `pool` keys.
fn pool_tables(urls: &[String], pool: &str, endpoint: &str) -> String {
    let mut text = String::new();
    for (i, url) in urls.iter().enumerate() {
        text.push_str(&format!(
            "\n[[upstreams]]\nname = \"ep{i}\"\nbase_url = \"{url}\"\nmodels = [\"{MODEL}\"]\n\
             first_byte_timeout_ms = 1000\nmax_retries = 0\nbackoff_base_ms = 10\n\
             scrape_interval_ms = {SCRAPE_MS}\n{endpoint}\n"
        ));
    }
    text + &format!("\n[pools.\"{MODEL}\"]\n{pool}\n")
}

fn urls(fakes: &[Fake]) -> Vec<String> {
    fakes.iter().map(Fake::base_url).collect()
}

fn request(system: &str, i: usize) -> Value {
    json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": format!("Question {i}: how do I reset my password?")}
        ]
    })
}

/// Sends `n` requests one after another; every one must be answered.
async fn send(t: &TestServer, system: &str, n: usize) {
    for i in 0..n {
        let r = t.post("/v1/chat/completions", request(system, i)).await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "request {i}: {body}");
    }
}

fn calls(fakes: &[Fake]) -> Vec<usize> {
    fakes.iter().map(Fake::calls).collect()
}

fn delta(after: &[usize], before: &[usize]) -> Vec<usize> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// [`MODEL`]'s pool as `/admin/upstreams` reports it.
async fn pool_report(t: &TestServer) -> Value {
    let report = get_json(&t.url("/admin/upstreams")).await;
    report["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["model"] == MODEL)
        .unwrap()
        .clone()
}

/// Lets the scraper see the loads just set: two scrape intervals.
async fn two_scrapes() {
    tokio::time::sleep(Duration::from_millis(2 * SCRAPE_MS + 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_aware_picker_sends_requests_away_from_saturated_endpoints() {
    let eps = endpoints(3).await;
    let t = TestServer::with(
        "",
        &pool_tables(&urls(&eps), "strategy = \"load_aware\"", ""),
    )
    .await;
    two_scrapes().await;
    // A queue over the threshold (5).
    eps[1].set_load(12.0, 0.3);
    two_scrapes().await;
    let before = calls(&eps);
    send(&t, "Be brief.", 60).await;
    let spread = delta(&calls(&eps), &before);
    assert!(spread[1] <= 6, "the saturated endpoint got {spread:?}");
    assert!(spread[0] > 0 && spread[2] > 0, "{spread:?}");
    // KV cache over its threshold (0.8) saturates too.
    eps[1].set_load(0.0, 0.1);
    eps[2].set_load(0.0, 0.95);
    two_scrapes().await;
    let before = calls(&eps);
    send(&t, "Be brief.", 60).await;
    let spread = delta(&calls(&eps), &before);
    assert!(spread[2] <= 6, "the full-cache endpoint got {spread:?}");
    // The pool's model is listed once.
    let models = get_json(&t.url("/v1/models")).await;
    let listed = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == MODEL)
        .count();
    assert_eq!(listed, 1, "{models}");
    // The scraped load is shown to operators.
    let pool = pool_report(&t).await;
    assert_eq!(pool["strategy"], "load_aware");
    assert_eq!(pool["endpoints"][2]["kv_cache"], 0.95);
    assert!(
        metrics(&t.url(""))
            .await
            .contains("router_upstream_kv_cache{upstream=\"ep2\"} 0.95")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_keeps_a_shared_prefix_on_one_endpoint_until_it_saturates() {
    let eps = endpoints(3).await;
    let pool = "strategy = \"load_aware\"\nprefix_affinity = true";
    let t = TestServer::with("", &pool_tables(&urls(&eps), pool, "")).await;
    two_scrapes().await;
    let system =
        "You are the support assistant of Example Corp; answer from the handbook. ".repeat(30);
    let before = calls(&eps);
    send(&t, &system, 40).await;
    let spread = delta(&calls(&eps), &before);
    let hot = (0..3).max_by_key(|&i| spread[i]).unwrap();
    assert!(spread[hot] >= 36, "affinity held only {spread:?}");
    // The endpoint holding the prefix saturates: the stream spills, and sticks to its new home.
    eps[hot].set_load(20.0, 0.5);
    two_scrapes().await;
    let before = calls(&eps);
    send(&t, &system, 40).await;
    let spilled = delta(&calls(&eps), &before);
    assert!(spilled[hot] <= 4, "did not spill: {spilled:?}");
    let new_home = spilled.iter().copied().max().unwrap();
    assert!(new_home >= 35, "the spilled stream scattered: {spilled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_readmitted_and_no_client_sees_a_failure() {
    let eps = endpoints(3).await;
    let health = "eject_after = 2\ncooldown_ms = 300";
    let t = TestServer::with("", &pool_tables(&urls(&eps), "", health)).await;
    eps[1].set(MODEL, Behaviour::Status(500));
    send(&t, "Be brief.", 30).await;
    // Two failures eject it; at most a probe or two after a cooldown.
    assert!(
        eps[1].calls() <= 4,
        "the failing endpoint got {}",
        eps[1].calls()
    );
    let pool = pool_report(&t).await;
    let ep1 = &pool["endpoints"][1];
    assert!(ep1["ejections"].as_u64().unwrap() >= 1, "{ep1}");
    assert!(ep1["last_error"].as_str().unwrap().contains("500"), "{ep1}");
    let m = metrics(&t.url("")).await;
    assert!(
        m.contains("router_upstream_ejections_total{model=\"local-llama\",upstream=\"ep1\"}"),
        "{m}"
    );

    // Fixed: after its cooldown (which grew with each failed probe) one request probes it,
    // and it takes its share again.
    eps[1].set(MODEL, Behaviour::Ok);
    let mut readmitted = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        send(&t, "Be brief.", 1).await;
        if pool_report(&t).await["endpoints"][1]["state"] == "healthy" {
            readmitted = true;
            break;
        }
    }
    assert!(readmitted, "never re-admitted");
    let before = eps[1].calls();
    send(&t, "Be brief.", 30).await;
    assert!(eps[1].calls() - before >= 5, "re-admitted but not used");
    let m = metrics(&t.url("")).await;
    assert!(
        m.contains("router_upstream_healthy{model=\"local-llama\",upstream=\"ep1\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_costs_clients_nothing_under_concurrent_load() {
    let eps = endpoints(2).await;
    // A port nobody listens on: connections are refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let mut all = urls(&eps);
    all.insert(1, dead);
    let t = TestServer::with("", &pool_tables(&all, "", "eject_after = 3")).await;
    let mut clients = Vec::new();
    for c in 0..8 {
        let client = t.client.clone();
        let url = t.url("/v1/chat/completions");
        clients.push(tokio::spawn(async move {
            let mut failures = 0;
            for i in 0..15 {
                let stream = i % 3 == 0;
                let mut body = request("Be brief.", c * 100 + i);
                body["stream"] = json!(stream);
                let r = client.post(&url).json(&body).send().await.unwrap();
                let ok = r.status() == 200;
                let text = r.text().await.unwrap();
                let complete = !stream || sse_data(&text).last().is_some_and(|d| d == "[DONE]");
                failures += usize::from(!(ok && complete));
            }
            failures
        }));
    }
    let mut failures = 0;
    for c in clients {
        failures += c.await.unwrap();
    }
    assert_eq!(
        failures, 0,
        "clients saw failures while one endpoint was dead"
    );
    assert_eq!(eps[0].calls() + eps[1].calls(), 120);
    let pool = pool_report(&t).await;
    assert_eq!(pool["endpoints"][1]["upstream"], "ep1");
    assert_ne!(pool["endpoints"][1]["state"], "healthy", "{pool}");
    // Every lease was returned, streams included.
    for e in pool["endpoints"].as_array().unwrap() {
        assert_eq!(e["outstanding"], 0, "{pool}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheddable_requests_get_503_when_every_endpoint_is_saturated_and_critical_ones_pass() {
    let eps = endpoints(2).await;
    let tier = format!(
        "\n[[keys]]\nname = \"batch-key\"\nkey_sha256 = \"{}\"\nteam = \"batch\"\ntier = \"batch\"\n\
         \n[tiers.batch]\ncriticality = \"sheddable\"\n",
        sha("sk-batch")
    );
    let tables = pool_tables(&urls(&eps), "strategy = \"load_aware\"", "") + &tier;
    let t = TestServer::with("", &tables).await;
    let post = |criticality: Option<&'static str>, key: Option<&'static str>| {
        let mut r = t
            .client
            .post(t.url("/v1/chat/completions"))
            .json(&request("Be brief.", 1));
        if let Some(c) = criticality {
            r = r.header("x-router-criticality", c);
        }
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    two_scrapes().await;
    assert_eq!(post(Some("sheddable"), None).await.unwrap().status(), 200);
    for e in &eps {
        e.set_load(30.0, 0.9);
    }
    two_scrapes().await;
    let shed = post(Some("sheddable"), None).await.unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: Value = shed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    // Critical traffic (the default) is still served by the least loaded endpoint.
    assert_eq!(post(None, None).await.unwrap().status(), 200);
    assert_eq!(post(Some("critical"), None).await.unwrap().status(), 200);
    // A sheddable tier cannot raise itself to critical with the header.
    let tier_shed = post(Some("critical"), Some("sk-batch")).await.unwrap();
    assert_eq!(tier_shed.status(), 503);
    let bad = post(Some("urgent"), None).await.unwrap();
    assert_eq!(bad.status(), 400);
    let m = metrics(&t.url("")).await;
    assert!(m.contains("router_shed_total 2"), "{m}");
    // Nothing was reserved or logged as answered for the shed requests.
    let decisions = t.decisions(6).await;
    let shed_rows = decisions.iter().filter(|d| d["status"] == "shed").count();
    assert_eq!(shed_rows, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_pools_split_by_weight_and_latency_ewma_prefers_the_fast_endpoint() {
    let eps = endpoints(2).await;
    let u = urls(&eps);
    let tables = format!(
        "\n[[upstreams]]\nname = \"big\"\nbase_url = \"{}\"\nmodels = [\"{MODEL}\"]\nweight = 9\n\
         \n[[upstreams]]\nname = \"small\"\nbase_url = \"{}\"\nmodels = [\"{MODEL}\"]\nweight = 1\n\
         \n[pools.\"{MODEL}\"]\nstrategy = \"weighted\"\n",
        u[0], u[1]
    );
    let t = TestServer::with("", &tables).await;
    send(&t, "Be brief.", 100).await;
    let (big, small) = (eps[0].calls(), eps[1].calls());
    assert!(
        (75..=99).contains(&big) && small >= 1,
        "big {big}, small {small}"
    );

    let eps = endpoints(2).await;
    eps[1].set(MODEL, Behaviour::Slow(Duration::from_millis(60)));
    let t = TestServer::with(
        "",
        &pool_tables(&urls(&eps), "strategy = \"latency_ewma\"", ""),
    )
    .await;
    send(&t, "Be brief.", 40).await;
    let (fast, slow) = (eps[0].calls(), eps[1].calls());
    assert!(fast >= 34, "fast {fast}, slow {slow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_eject_a_dead_endpoint_before_a_request_reaches_it() {
    let live = Fake::start().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let checks = "probe_interval_ms = 50\neject_after = 2";
    let t = TestServer::with("", &pool_tables(&[dead, live.base_url()], "", checks)).await;
    let mut states = Value::Null;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        states = pool_report(&t).await["endpoints"].clone();
        if states[0]["state"] != "healthy" {
            break;
        }
    }
    assert_eq!(states[0]["state"], "ejected", "{states}");
    assert!(
        states[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("active check"),
        "{states}"
    );
    assert_eq!(
        states[1]["state"], "healthy",
        "the live endpoint answers /v1/models: {states}"
    );
    send(&t, "Be brief.", 10).await;
    let decisions = t.decisions(10).await;
    let to_dead = decisions
        .iter()
        .flat_map(|d| d["attempts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["upstream"] == "ep0")
        .count();
    assert_eq!(to_dead, 0, "requests went to the ejected endpoint");
}
