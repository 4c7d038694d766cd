//! Simulation of one model's pool under load near capacity: three fake vLLM-like endpoints on
//! 127.0.0.1 (the last one twice as slow), the server in this process, and an open-loop load
//! generator sending streaming requests that share a few long system prompts. Each endpoint
//! runs `--slots` requests at once and queues the rest; its time to first token is its queue
//! wait plus a prefill that is shorter when the system prompt is in its prefix cache (the
//! `--cache` most recent prompts). Its `/metrics` reports its queue and KV-cache use as vLLM
//! names them. One run per strategy, each on fresh endpoints; prints p50/p99 time to first
//! token, throughput and prefix-cache hit rate of the gateway's requests. `--external` adds
//! traffic sent straight to the first endpoint, which only its `/metrics` reveals (another
//! gateway replica, another client of the same model servers).
//!
//! ```sh
//! cargo run -p router-serve --example loadtest_pools -- --seconds 10 --rate 85
//! cargo run -p router-serve --example loadtest_pools -- --seconds 10 --rate 60 --external 25
//! ```

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use clap::Parser;
use router_serve::Server;
use router_serve::config::ServeConfig;
use router_serve::state::CliOverrides;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Args {
    /// Seconds of offered load per strategy.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Offered requests per second (capacity with every prefill a miss: 100/s).
    #[arg(long, default_value_t = 85.0)]
    rate: f64,
    /// Requests each endpoint runs at once.
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// System prompts each endpoint's prefix cache holds.
    #[arg(long, default_value_t = 2)]
    cache: usize,
    /// Distinct shared system prompts in the traffic.
    #[arg(long, default_value_t = 4)]
    prefixes: usize,
    /// Requests per second sent straight to the first endpoint, around the gateway (another
    /// gateway replica or another client sharing the model servers).
    #[arg(long, default_value_t = 0.0)]
    external: f64,
    /// Strategies to compare (`load_aware+prefix` turns prefix affinity on).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "round_robin,least_outstanding,load_aware,load_aware+prefix"
    )]
    strategies: Vec<String>,
}

const MODEL: &str = "sim-llama";
/// Prefill without and with the prompt's prefix cached, and decode, on the fast endpoints
/// (the slow one takes twice as long).
const PREFILL_MISS: Duration = Duration::from_millis(40);
const PREFILL_HIT: Duration = Duration::from_millis(5);
const DECODE: Duration = Duration::from_millis(60);

/// One simulated model server.
struct Sim {
    slots: Arc<Semaphore>,
    capacity: usize,
    slowness: u32,
    waiting: AtomicUsize,
    running: AtomicUsize,
    cache: Mutex<VecDeque<u64>>,
    cache_size: usize,
    hits: AtomicUsize,
    requests: AtomicUsize,
}

impl Sim {
    /// Whether `prefix` was cached; it is cached (most recent) afterwards.
    fn lookup(&self, prefix: u64) -> bool {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let hit = if let Some(at) = cache.iter().position(|p| *p == prefix) {
            cache.remove(at);
            true
        } else {
            false
        };
        cache.push_back(prefix);
        while cache.len() > self.cache_size {
            cache.pop_front();
        }
        hit
    }
}

fn sse(value: &Value) -> String {
    format!("data: {value}\n\n")
}

async fn chat(State(sim): State<Arc<Sim>>, body: axum::body::Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut hasher = DefaultHasher::new();
    body["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .hash(&mut hasher);
    let prefix = hasher.finish();
    sim.waiting.fetch_add(1, Ordering::SeqCst);
    let permit = sim.slots.clone().acquire_owned().await;
    sim.waiting.fetch_sub(1, Ordering::SeqCst);
    sim.running.fetch_add(1, Ordering::SeqCst);
    sim.requests.fetch_add(1, Ordering::Relaxed);
    let hit = sim.lookup(prefix);
    if hit {
        sim.hits.fetch_add(1, Ordering::Relaxed);
    }
    let prefill = if hit { PREFILL_HIT } else { PREFILL_MISS };
    tokio::time::sleep(prefill * sim.slowness).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(4);
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "sim", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let task_sim = sim.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tx
            .send(Ok(sse(&chunk(json!({"content": "Hi"}), Value::Null))))
            .await;
        tokio::time::sleep(DECODE * task_sim.slowness).await;
        let mut last = chunk(json!({}), json!("stop"));
        last["usage"] = json!({"prompt_tokens": 400, "completion_tokens": 20, "total_tokens": 420});
        let _ = tx.send(Ok(sse(&last))).await;
        let _ = tx.send(Ok("data: [DONE]\n\n".to_owned())).await;
        task_sim.running.fetch_sub(1, Ordering::SeqCst);
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

async fn metrics(State(sim): State<Arc<Sim>>) -> String {
    let waiting = sim.waiting.load(Ordering::SeqCst);
    let kv = sim.running.load(Ordering::SeqCst) as f64 / sim.capacity as f64;
    format!(
        "vllm:num_requests_waiting{{model_name=\"{MODEL}\"}} {waiting}\n\
         vllm:kv_cache_usage_perc{{model_name=\"{MODEL}\"}} {kv}\n"
    )
}

async fn start_sim(args: &Args, slowness: u32) -> anyhow::Result<(String, Arc<Sim>)> {
    let sim = Arc::new(Sim {
        slots: Arc::new(Semaphore::new(args.slots)),
        capacity: args.slots,
        slowness,
        waiting: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
        cache: Mutex::new(VecDeque::new()),
        cache_size: args.cache,
        hits: AtomicUsize::new(0),
        requests: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(sim.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, sim))
}

/// The server's config: the simulated endpoints in one pool. The prefix index is sized like
/// the simulated caches: `cache` system prompts of about 26 blocks of 64 characters each.
fn config(urls: &[String], strategy: &str, cache: usize) -> String {
    let (strategy, affinity) = match strategy.split_once('+') {
        Some((s, _)) => (s, true),
        None => (strategy, false),
    };
    let router = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/llmrouter");
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrouter = \"{}\"\nwatch_interval_ms = 0\n\
         \n[[upstreams]]\nname = \"artifact\"\nbase_url = \"{}\"\nmodels = [\"gemma-2-9b-it\"]\n",
        router.display(),
        urls[0]
    );
    for (i, url) in urls.iter().enumerate() {
        text.push_str(&format!(
            "\n[[upstreams]]\nname = \"sim{i}\"\nbase_url = \"{url}\"\nmodels = [\"{MODEL}\"]\n\
             first_byte_timeout_ms = 60000\nmax_retries = 0\nscrape_interval_ms = 100\n"
        ));
    }
    text + &format!(
        "\n[pools.\"{MODEL}\"]\nstrategy = \"{strategy}\"\nprefix_affinity = {affinity}\n\
         prefix_entries = {}\n",
        cache * 26
    )
}

/// The shared system prompt `k`: about 1,600 characters.
fn system_prompt(k: usize) -> String {
    format!("You are assistant number {k} of Example Corp; follow handbook section {k}. ")
        .repeat(22)
}

/// What one run measured.
struct Run {
    ttft_ms: Vec<f64>,
    errors: usize,
    elapsed: Duration,
    sims: Vec<Arc<Sim>>,
}

async fn one_request(client: reqwest::Client, url: String, body: Value) -> Option<f64> {
    let start = Instant::now();
    let mut response = client.post(&url).json(&body).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let first = response.chunk().await.ok()??;
    let ttft = start.elapsed().as_secs_f64() * 1e3;
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = response.chunk().await.ok()? {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.contains("[DONE]").then_some(ttft)
}

/// `rate` requests per second for `seconds` straight to one endpoint, with a system prompt
/// of their own.
async fn external_load(client: reqwest::Client, url: String, rate: f64, seconds: u64) {
    let every = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..(rate * seconds as f64) as usize {
        tokio::time::sleep_until((start + every * i as u32).into()).await;
        let body = json!({"model": MODEL, "stream": true, "messages": [
            {"role": "system", "content": "Another tenant's assistant."},
            {"role": "user", "content": format!("Other question {i}")}
        ]});
        tasks.push(tokio::spawn(one_request(client.clone(), url.clone(), body)));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn run(args: &Args, strategy: &str) -> anyhow::Result<Run> {
    let mut urls = Vec::new();
    let mut sims = Vec::new();
    for slowness in [1, 1, 2] {
        let (url, sim) = start_sim(args, slowness).await?;
        urls.push(url);
        sims.push(sim);
    }
    let config = ServeConfig::parse(&config(&urls, strategy, args.cache), "loadtest_pools")?;
    let server = Server::start(config, None, CliOverrides::default()).await?;
    let url = format!("http://{}/v1/chat/completions", server.addr());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    // Let the first scrapes land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let prompts: Vec<String> = (0..args.prefixes).map(system_prompt).collect();
    let external = (args.external > 0.0).then(|| {
        let url = format!("{}/chat/completions", urls[0]);
        tokio::spawn(external_load(
            client.clone(),
            url,
            args.external,
            args.seconds,
        ))
    });
    let total = (args.rate * args.seconds as f64) as usize;
    let every = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..total {
        tokio::time::sleep_until((start + every * i as u32).into()).await;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let system = &prompts[state as usize % prompts.len()];
        let body = json!({"model": MODEL, "stream": true, "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": format!("Question {i}: how do I file an expense?")}
        ]});
        tasks.push(tokio::spawn(one_request(client.clone(), url.clone(), body)));
    }
    let mut ttft_ms = Vec::new();
    let mut errors = 0;
    for task in tasks {
        match task.await? {
            Some(t) => ttft_ms.push(t),
            None => errors += 1,
        }
    }
    let elapsed = start.elapsed();
    if let Some(external) = external {
        external.await?;
    }
    server.shutdown().await;
    Ok(Run {
        ttft_ms,
        errors,
        elapsed,
        sims,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "offered {} req/s for {} s; 3 endpoints × {} slots, the last twice as slow; \
         {} shared system prompts, prefix cache of {} per endpoint; {} req/s of other traffic \
         straight to the first endpoint\n",
        args.rate, args.seconds, args.slots, args.prefixes, args.cache, args.external
    );
    println!(
        "| strategy | answered | errors | throughput req/s | TTFT p50 ms | TTFT p99 ms | requests per endpoint (slow last) | prefix-cache hits |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut p99 = Vec::new();
    for strategy in &args.strategies {
        let mut r = run(&args, strategy).await?;
        r.ttft_ms.sort_by(f64::total_cmp);
        let per: Vec<usize> = r
            .sims
            .iter()
            .map(|s| s.requests.load(Ordering::Relaxed))
            .collect();
        let hits: usize = r.sims.iter().map(|s| s.hits.load(Ordering::Relaxed)).sum();
        let served: usize = per.iter().sum();
        let p = percentile(&r.ttft_ms, 99.0);
        p99.push((strategy.clone(), p));
        println!(
            "| {strategy} | {} | {} | {:.1} | {:.0} | {:.0} | {} | {:.0} % |",
            r.ttft_ms.len(),
            r.errors,
            r.ttft_ms.len() as f64 / r.elapsed.as_secs_f64(),
            percentile(&r.ttft_ms, 50.0),
            p,
            per.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
            100.0 * hits as f64 / served.max(1) as f64,
        );
    }
    if let Some((_, base)) = p99.iter().find(|(s, _)| s == "round_robin") {
        for (s, p) in &p99 {
            if s != "round_robin" {
                println!("\np99 TTFT, round_robin ÷ {s}: {:.1}×", base / p);
            }
        }
    }
    Ok(())
}
