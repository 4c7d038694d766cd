//! What the shared store costs: two replicas on the embedded store (each its own SQLite ledger
//! and in-memory budgets) beside two replicas on the shared store (Redis + PostgreSQL started by
//! `deploy/services.sh` under `target/tmp`), all in this process on 127.0.0.1 with an instant
//! fake upstream, in one run. Every request carries a key with a team budget and a rate limit,
//! so each one reads the budgets, reserves, takes a rate-limit slot, settles, writes its ledger
//! row and its feedback-index entry. Requests alternate between the two replicas at a fixed
//! open-loop rate. Bounded: each step runs for `--seconds`.
//!
//! ```sh
//! cargo run -p router-serve --example loadtest_shared -- --seconds 5 --rate 500
//! ```

use std::path::{Path, PathBuf};
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
    /// Requests per second, across both replicas.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Rounds: embedded then shared, this many times (alternating shows the noise).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

const KEY: &str = "sk-loadtest-shared";

async fn fake_upstream() -> std::io::Result<std::net::SocketAddr> {
    async fn answer(Json(body): Json<Value>) -> Json<Value> {
        Json(json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Paris."}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
        }))
    }
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Redis and PostgreSQL through `deploy/services.sh`; their URLs.
fn start_services(dir: &Path) -> anyhow::Result<(String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/services.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg("start")
        .arg(dir)
        .arg(free_port()?.to_string())
        .arg(free_port()?.to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "services.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("services.sh printed no {name}"))
    };
    Ok((var("REDIS_URL")?, var("POSTGRES_URL")?))
}

/// One replica's config: the default router, the fake upstream, a key with a budget and a
/// rate limit, `store` (a `[store]` table or nothing) and `auth` (extra `[auth]` keys).
fn config(
    upstream: std::net::SocketAddr,
    models: &[String],
    dir: &Path,
    store: &str,
    auth: &str,
) -> String {
    let router_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/llmrouter");
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrouter = \"{router_dir}\"\nwatch_interval_ms = 0\n\
         [log]\ndir = \"{log}\"\n\
         [[upstreams]]\nname = \"fake\"\nbase_url = \"http://{upstream}/v1\"\nmodels = {models:?}\n\
         {store}\n[auth]\nrequired = true\n{auth}\n\
         [[keys]]\nname = \"load\"\nkey_sha256 = \"{sha}\"\nteam = \"load\"\nrpm = 1000000\ntpm = 1000000000\n\
         [[budgets]]\nscope = \"team\"\nname = \"load\"\nperiod = \"day\"\nhard_usd = 1000000.0\n",
        log = dir.join("logs").display(),
        sha = router_serve::tenancy::identity::key_digest(KEY),
    )
}

struct Sample {
    client_ms: f64,
    overhead_ms: Option<f64>,
    ok: bool,
}

/// `rate` requests per second for `seconds`, alternating between `urls`.
async fn open_loop(
    client: &reqwest::Client,
    urls: &[String],
    rate: u32,
    seconds: u64,
    body: &Value,
) -> (Vec<Sample>, f64) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let total = u64::from(rate) * seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total as usize {
        ticker.tick().await;
        let (client, url, body, samples) = (
            client.clone(),
            urls[i % urls.len()].clone(),
            body.clone(),
            samples.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = client.post(&url).bearer_auth(KEY).json(&body).send().await;
            let (overhead_ms, ok) = match r {
                Ok(r) => {
                    let overhead = r
                        .headers()
                        .get("x-router-overhead-ms")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    (overhead, r.status().is_success() && r.bytes().await.is_ok())
                }
                Err(_) => (None, false),
            };
            let client_ms = t.elapsed().as_secs_f64() * 1e3;
            samples.lock().await.push(Sample {
                client_ms,
                overhead_ms,
                ok,
            });
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let samples = std::mem::take(&mut *samples.lock().await);
    (samples, elapsed)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn row(label: &str, samples: &[Sample], elapsed: f64) {
    let mut client: Vec<f64> = samples.iter().map(|s| s.client_ms).collect();
    let mut overhead: Vec<f64> = samples.iter().filter_map(|s| s.overhead_ms).collect();
    client.sort_by(f64::total_cmp);
    overhead.sort_by(f64::total_cmp);
    let errors = samples.iter().filter(|s| !s.ok).count();
    println!(
        "| {label} | {:.0} | {errors} | {:.3} | {:.3} | {:.3} | {:.3} |",
        samples.len() as f64 / elapsed,
        percentile(&overhead, 0.5),
        percentile(&overhead, 0.99),
        percentile(&client, 0.5),
        percentile(&client, 0.99),
    );
}

async fn replicas(texts: [String; 2]) -> anyhow::Result<Vec<Server>> {
    let mut servers = Vec::new();
    for text in texts {
        let config = ServeConfig::parse(&text, "loadtest")?;
        servers.push(Server::start(config, None, CliOverrides::default()).await?);
    }
    Ok(servers)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream = fake_upstream().await?;
    let tmp = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/tmp"))
        .join(format!("loadtest-shared-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let (redis, postgres) = start_services(&tmp.join("services"))?;
    let dir = |name: &str| tmp.join(name);
    // Every model the default router knows goes to the fake upstream.
    let router_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/llmrouter");
    let models: Vec<String> = router_core::artifact::Router::load(Path::new(router_dir))?
        .model_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let embedded =
        |name: &str| format!("ledger = \"{}\"", dir(name).join("ledger.sqlite").display());
    let shared = |name: &str| {
        format!(
            "[store]\nbackend = \"shared\"\nredis_url = \"{redis}\"\npostgres_url = \"{postgres}\"\nspool = \"{}\"",
            dir(name).join("spool.jsonl").display()
        )
    };
    let sets = [
        (
            "embedded",
            replicas([
                config(upstream, &models, &dir("e1"), "", &embedded("e1")),
                config(upstream, &models, &dir("e2"), "", &embedded("e2")),
            ])
            .await?,
        ),
        (
            "shared",
            replicas([
                config(upstream, &models, &dir("s1"), &shared("s1"), ""),
                config(upstream, &models, &dir("s2"), &shared("s2"), ""),
            ])
            .await?,
        ),
    ];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "shared-store load test: {cpus} CPUs, two replicas per store, {} req/s across them, {} s per step, {} rounds\n",
        args.rate, args.seconds, args.rounds
    );
    println!(
        "| store, scenario | achieved req/s | errors | overhead p50 ms | overhead p99 ms | client p50 ms | client p99 ms |\n|---|---|---|---|---|---|---|"
    );
    let chat = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    for _ in 0..args.rounds {
        for (scenario, body) in [
            ("passthrough", chat("gemma-2-9b-it")),
            ("cached", chat("router")),
        ] {
            for (store, servers) in &sets {
                let urls: Vec<String> = servers
                    .iter()
                    .map(|s| format!("http://{}/v1/chat/completions", s.addr()))
                    .collect();
                // Warm the pools and the decision cache.
                let _ = open_loop(&client, &urls, 50, 1, &body).await;
                let (samples, elapsed) =
                    open_loop(&client, &urls, args.rate, args.seconds, &body).await;
                row(&format!("{store}, {scenario}"), &samples, elapsed);
            }
        }
    }
    for (_, servers) in sets {
        for s in servers {
            s.shutdown().await;
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/services.sh");
    let _ = std::process::Command::new("bash")
        .arg(script)
        .arg("stop")
        .arg(tmp.join("services"))
        .status();
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}
