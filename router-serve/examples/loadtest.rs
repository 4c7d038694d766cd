//! Load test of router-serve on this machine, everything on 127.0.0.1: an instant fake
//! upstream, the server (in this process, the default router, real encoder) and an open-loop
//! load generator. Prints one table per scenario. Bounded: each step runs for `--seconds`.
//!
//! ```sh
//! cargo run -p router-serve --example loadtest -- --seconds 5
//! ```
//!
//! Scenarios:
//! - `passthrough`: an explicit model at fixed request rates; gateway overhead is the
//!   `x-router-overhead-ms` header (total minus upstream time) and the client's latency.
//! - `cached`: `model: "router"`, one repeated prompt (decision cache) at fixed rates.
//! - `decisions`: `/v1/route` on distinct ~64-token prompts with N closed-loop clients: the
//!   encoder thread's batching curve (decisions/s, latency).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use clap::Parser;
use router_serve::Server;
use router_serve::config::ServeConfig;
use router_serve::state::CliOverrides;
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(Parser)]
struct Args {
    /// Seconds per step.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Request rates for the open-loop scenarios.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000")]
    rates: Vec<u32>,
    /// Concurrent clients for the decision scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// Scenarios to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "passthrough,cached,decisions"
    )]
    only: Vec<String>,
    /// Encoder threads (`batching.workers`; with more than one, each batch uses every core or
    /// its own, as the others are idle or busy).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// A LiteLLM proxy executable (`pip install 'litellm[proxy]'`): runs the passthrough
    /// scenario against it too, on the same fake upstream, for a side-by-side table.
    #[arg(long)]
    litellm: Option<std::path::PathBuf>,
}

/// The master key the LiteLLM proxy insists on.
const LITELLM_KEY: &str = "sk-loadtest-0123456789abcdef";

/// Starts LiteLLM's proxy on `port`, forwarding `model` to the fake upstream, and waits until
/// it answers.
async fn start_litellm(
    exe: &std::path::Path,
    upstream: std::net::SocketAddr,
    model: &str,
    port: u16,
) -> anyhow::Result<std::process::Child> {
    let dir = std::env::temp_dir().join(format!("router-loadtest-litellm-{port}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n      api_base: http://{upstream}/v1\n      api_key: unused\nlitellm_settings:\n  telemetry: false\n  set_verbose: false\n"
        ),
    )?;
    let child = std::process::Command::new(exe)
        .arg("--config")
        .arg(&config)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--num_workers",
            "1",
        ])
        .env("LITELLM_LOG", "ERROR")
        .env("LITELLM_MASTER_KEY", LITELLM_KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let client = reqwest::Client::new();
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..240 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = client
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .bearer_auth(LITELLM_KEY)
            .json(&body)
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            return Ok(child);
        }
    }
    anyhow::bail!("LiteLLM did not answer within 120 s")
}

async fn fake_upstream() -> std::io::Result<std::net::SocketAddr> {
    async fn answer(Json(body): Json<Value>) -> Json<Value> {
        Json(json!({
            "id": "chatcmpl-load", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
        }))
    }
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

struct Sample {
    client_ms: f64,
    overhead_ms: Option<f64>,
    ok: bool,
}

/// Sends `make(i)` at `rate` per second for `seconds`, without waiting for answers.
async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    rate: u32,
    seconds: u64,
    body: Value,
) -> (Vec<Sample>, f64) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let total = u64::from(rate) * seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for _ in 0..total {
        ticker.tick().await;
        let (client, url, body, samples) = (
            client.clone(),
            url.to_owned(),
            body.clone(),
            samples.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = client.post(&url).json(&body).send().await;
            let sample = match r {
                Ok(r) => {
                    let overhead = r
                        .headers()
                        .get("x-router-overhead-ms")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    let ok = r.status().is_success() && r.bytes().await.is_ok();
                    Sample {
                        client_ms: t.elapsed().as_secs_f64() * 1e3,
                        overhead_ms: overhead,
                        ok,
                    }
                }
                Err(_) => Sample {
                    client_ms: t.elapsed().as_secs_f64() * 1e3,
                    overhead_ms: None,
                    ok: false,
                },
            };
            samples.lock().await.push(sample);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let samples = std::mem::take(&mut *samples.lock().await);
    (samples, elapsed)
}

fn row(label: String, samples: &[Sample], elapsed: f64) {
    let mut client: Vec<f64> = samples.iter().map(|s| s.client_ms).collect();
    let mut overhead: Vec<f64> = samples.iter().filter_map(|s| s.overhead_ms).collect();
    client.sort_by(f64::total_cmp);
    overhead.sort_by(f64::total_cmp);
    let errors = samples.iter().filter(|s| !s.ok).count();
    println!(
        "| {label} | {} | {:.0} | {errors} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
        samples.len(),
        samples.len() as f64 / elapsed,
        percentile(&overhead, 0.5),
        percentile(&overhead, 0.99),
        percentile(&client, 0.5),
        percentile(&client, 0.99),
        percentile(&client, 1.0),
    );
}

/// Distinct prompts of about 64 tokens.
fn prompt(i: usize) -> String {
    let words = [
        "explain",
        "the",
        "difference",
        "between",
        "a",
        "mutex",
        "and",
        "semaphore",
        "in",
        "operating",
        "systems",
        "with",
        "an",
        "example",
        "written",
        "for",
        "students",
        "who",
        "know",
        "python",
    ];
    let mut text = format!("Question {i}: ");
    for k in 0..50 {
        text.push_str(words[(i * 7 + k * 3) % words.len()]);
        text.push(' ');
    }
    text
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream = fake_upstream().await?;
    let router_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/llmrouter");
    // Every model the default router knows goes to the fake upstream.
    let models: Vec<String> =
        router_core::artifact::Router::load(std::path::Path::new(router_dir))?
            .model_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrouter = \"{router}\"\nwatch_interval_ms = 0\ndecision_timeout_ms = 30000\n\
         [batching]\nworkers = {workers}\n\
         [[upstreams]]\nname = \"fake\"\nbase_url = \"http://{upstream}/v1\"\nmodels = {models:?}\n",
        router = router_dir,
        workers = args.workers,
    );
    let config = ServeConfig::parse(&config, "loadtest")?;
    let server = Server::start(config, None, CliOverrides::default()).await?;
    let base = format!("http://{}", server.addr());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.trim_start_matches("VmRSS:").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "resident size with the default router loaded (server, fake upstream and load generator in one process): {rss}"
    );
    println!(
        "router-serve load test: {cpus} CPUs, {} encoder worker(s), RAYON_NUM_THREADS={}, server, load generator and fake upstream in one process, {} s per step\n",
        args.workers,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
        args.seconds
    );

    let chat = |model: &str, text: &str| json!({"model": model, "messages": [{"role": "user", "content": text}]});
    let header = "| scenario | requests | achieved req/s | errors | overhead p50 ms | overhead p99 ms | client p50 ms | client p99 ms | client max ms |\n|---|---|---|---|---|---|---|---|---|";
    for (name, body) in [
        (
            "passthrough",
            chat("gemma-2-9b-it", "What is the capital of France?"),
        ),
        ("cached", chat("router", "What is the capital of France?")),
    ] {
        if !args.only.iter().any(|o| o == name) {
            continue;
        }
        println!("{header}");
        // Warm the connection pool and the decision cache.
        let _ = open_loop(
            &client,
            &format!("{base}/v1/chat/completions"),
            50,
            1,
            body.clone(),
        )
        .await;
        for &rate in &args.rates {
            let (samples, elapsed) = open_loop(
                &client,
                &format!("{base}/v1/chat/completions"),
                rate,
                args.seconds,
                body.clone(),
            )
            .await;
            row(format!("{name} @ {rate}/s"), &samples, elapsed);
        }
        println!();
    }

    if let Some(exe) = &args.litellm {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut litellm = start_litellm(exe, upstream, "gemma-2-9b-it", port).await?;
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let mut auth = reqwest::header::HeaderMap::new();
        auth.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {LITELLM_KEY}").parse()?,
        );
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .default_headers(auth)
            .build()?;
        let body = chat("gemma-2-9b-it", "What is the capital of France?");
        println!(
            "LiteLLM proxy (1 worker), same fake upstream, same load generator (no overhead header: client latency only)\n"
        );
        println!("{header}");
        let _ = open_loop(&client, &url, 50, 1, body.clone()).await;
        for &rate in &args.rates {
            let (samples, elapsed) =
                open_loop(&client, &url, rate, args.seconds, body.clone()).await;
            row(format!("litellm passthrough @ {rate}/s"), &samples, elapsed);
        }
        println!();
        let _ = litellm.kill();
        let _ = litellm.wait();
    }

    if args.only.iter().any(|o| o == "decisions") {
        println!(
            "| clients | decisions | decisions/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|"
        );
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for &n in &args.clients {
            let stop = Instant::now() + Duration::from_secs(args.seconds);
            let start = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (client, url, counter) =
                        (client.clone(), format!("{base}/v1/route"), counter.clone());
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        while Instant::now() < stop {
                            let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let body =
                                json!({"messages": [{"role": "user", "content": prompt(i)}]});
                            let t = Instant::now();
                            let answer: Option<Value> =
                                match client.post(&url).json(&body).send().await {
                                    Ok(r) if r.status().is_success() => r.json().await.ok(),
                                    _ => None,
                                };
                            // Only real decisions count (not a fail-open past the deadline).
                            if answer.is_some_and(|a| a["reason"] == "band") {
                                lat.push(t.elapsed().as_secs_f64() * 1e3);
                            }
                        }
                        lat
                    })
                })
                .collect();
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await?);
            }
            let elapsed = start.elapsed().as_secs_f64();
            lat.sort_by(f64::total_cmp);
            println!(
                "| {n} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                lat.len(),
                lat.len() as f64 / elapsed,
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                percentile(&lat, 1.0)
            );
        }
        let tokens = server.state().engine().encoder.count_tokens(&prompt(0))?;
        println!("\n(prompts of {tokens} tokens, each distinct: no cache hits)");
    }
    server.shutdown().await;
    Ok(())
}
