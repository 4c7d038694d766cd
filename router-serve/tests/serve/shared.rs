//! The shared store: several replicas on one Redis and one PostgreSQL, started per test by
//! `deploy/services.sh` (Debian's `redis-server` and `postgresql`, installed by apt when
//! missing) on free ports with their data under `target/tmp`. Each test runs real servers;
//! a test is skipped, loudly, only where the services cannot be installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use router_serve::Server;
use router_serve::config::ServeConfig;
use router_serve::state::CliOverrides;
use serde_json::{Value, json};

use crate::common::{Binary, Fake, chat_body, config_text, merge};
use crate::tenants::tenants_with;

/// Redis and PostgreSQL for one test, stopped when dropped.
pub struct Services {
    dir: PathBuf,
    pub redis_url: String,
    pub postgres_url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/services.sh")
}

impl Services {
    /// Starts both; `None` (after a loud message) only where they cannot be installed.
    pub fn start(name: &str) -> Option<Self> {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("services-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = std::process::Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .arg(free_port().to_string())
            .arg(free_port().to_string())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(3) {
            eprintln!(
                "\n!!!!! SKIPPED {name}: Redis and PostgreSQL cannot be installed here !!!!!\n{stderr}"
            );
            return None;
        }
        assert!(out.status.success(), "services.sh start failed:\n{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap()
                .to_owned()
        };
        Some(Self {
            redis_url: var("REDIS_URL"),
            postgres_url: var("POSTGRES_URL"),
            dir,
        })
    }

    /// `services.sh COMMAND DIR` (`stop-redis`, `start-postgres`, …).
    pub fn run(&self, command: &str) {
        let out = std::process::Command::new("bash")
            .arg(script())
            .arg(command)
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "services.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `psql -Atc SQL`'s output, trimmed.
    pub fn sql(&self, sql: &str) -> String {
        let bin = std::fs::read_to_string(self.dir.join("pg.bin")).unwrap();
        let out = std::process::Command::new(format!("{}/psql", bin.trim()))
            .args([&self.postgres_url, "-Atc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The `[store]` table of a replica whose spool lives in `dir`.
    pub fn store_table(&self, dir: &Path, extra: &str) -> String {
        format!(
            "\n[store]\nbackend = \"shared\"\nredis_url = \"{}\"\npostgres_url = \"{}\"\nspool = \"{}\"\n{extra}\n",
            self.redis_url,
            self.postgres_url,
            dir.join("spool.jsonl").display()
        )
    }
}

impl Drop for Services {
    /// Stops both and deletes their data (about 40 MB a test).
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One replica, in this process.
pub struct Replica {
    pub server: Server,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Replica {
    pub async fn start(fake: &Fake, services: &Services, budgets: &str, store_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = replica_config(fake, services, dir.path(), budgets, store_extra);
        let config = ServeConfig::parse(&text, "test").unwrap();
        let server = Server::start(config, None, CliOverrides::default())
            .await
            .unwrap();
        Self {
            server,
            dir,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr())
    }

    pub async fn chat(&self, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn replica_config(
    fake: &Fake,
    services: &Services,
    dir: &Path,
    budgets: &str,
    store_extra: &str,
) -> String {
    let tables = format!(
        "{}{}",
        tenants_with(None, true, budgets),
        services.store_table(dir, store_extra)
    );
    config_text(fake, dir, "", &tables)
}

/// The passthrough model of the money tests: $0.9 per million tokens both ways; with
/// `max_tokens = 8` the fake upstream reports 40 + 8 tokens.
const MODEL: &str = "llama3-chatqa-1.5-70b";
const PER_REQUEST: f64 = 48.0 * 0.9e-6;

fn small_body() -> Value {
    let mut body = chat_body(MODEL, false);
    merge(&mut body, json!({"max_tokens": 8}));
    body
}

/// The status of each of `n` concurrent requests of `key`, sent alternately to `replicas`.
async fn burst(replicas: &[&Replica], key: &str, n: usize) -> Vec<u16> {
    let body = small_body();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let r = replicas[i % replicas.len()];
            let (client, url, body, key) = (
                r.client.clone(),
                r.url("/v1/chat/completions"),
                body.clone(),
                key.to_owned(),
            );
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

fn racer_budget(hard: f64) -> String {
    format!(
        "\n[[budgets]]\nscope = \"key\"\nname = \"racer\"\nperiod = \"day\"\nhard_usd = {hard}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_a_shared_budget_overrun_it_by_at_most_one_worst_case() {
    let Some(services) = Services::start("race") else {
        return;
    };
    let fake = Fake::start().await;
    let hard = 20.0 * PER_REQUEST;
    let a = Replica::start(&fake, &services, &racer_budget(hard), "").await;
    let b = Replica::start(&fake, &services, &racer_budget(hard), "").await;
    let statuses = burst(&[&a, &b], "sk-racer", 200).await;
    let (ok, refused) = (count(&statuses, 200), count(&statuses, 429));
    assert_eq!(ok + refused, 200, "{statuses:?}");
    let worst = (small_body().to_string().len() as f64 / 4.0 + 8.0) * 0.9e-6;
    let spent = ok as f64 * PER_REQUEST;
    assert!(
        spent <= hard + worst + 1e-12,
        "{ok} requests spent {spent} across two replicas, limit {hard}"
    );
    assert!(ok >= 15, "only {ok} requests got through a budget for 20");
    // The ledger in PostgreSQL agrees, and both replicas report the same spend.
    let rows: usize = services
        .sql("SELECT COUNT(*) FROM spend WHERE key = 'racer'")
        .parse()
        .unwrap();
    assert_eq!(rows, ok);
    for r in [&a, &b] {
        let spend = r.get("/v1/spend?group_by=key").await;
        assert_eq!(spend["totals"]["requests"], ok as u64);
        let budgets = r.get("/v1/budgets").await;
        let racer = &budgets["budgets"][0];
        assert!((racer["settled_usd"].as_f64().unwrap() - spent).abs() < 1e-9);
        assert_eq!(racer["reserved_usd"], 0.0);
    }
    a.server.shutdown().await;
    b.server.shutdown().await;
}

/// `POST /admin/keys` on `replica`: the new key.
async fn create_key(replica: &Replica, body: Value) -> String {
    let r = replica
        .client
        .post(replica.url("/admin/keys"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let created: Value = r.json().await.unwrap();
    created["key"].as_str().unwrap().to_owned()
}

/// How long until `replica` answers `key`'s chat with `status` (gives up after 5 s).
async fn until_status(replica: &Replica, key: &str, status: u16) -> Duration {
    let start = Instant::now();
    let body = small_body();
    while start.elapsed() < Duration::from_secs(5) {
        if replica.chat(key, &body).await.status() == status {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {status} within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_created_on_one_replica_work_on_the_other_within_a_second_and_so_does_revocation() {
    let Some(services) = Services::start("keys") else {
        return;
    };
    let fake = Fake::start().await;
    let a = Replica::start(&fake, &services, "", "").await;
    let b = Replica::start(&fake, &services, "", "").await;
    let key = create_key(&a, json!({"name": "late", "team": "search"})).await;
    let waited = until_status(&b, &key, 200).await;
    assert!(
        waited < Duration::from_secs(1),
        "B knew the key after {waited:?}"
    );
    // Only the digest is stored.
    let stored = services.sql("SELECT key_sha256 FROM api_keys WHERE name = 'late'");
    assert_eq!(stored, router_serve::tenancy::identity::key_digest(&key));
    assert!(!services.sql("SELECT * FROM api_keys").contains(&key));

    let r = b
        .client
        .delete(b.url("/admin/keys/late"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let waited = until_status(&a, &key, 401).await;
    assert!(
        waited < Duration::from_secs(1),
        "A refused the key after {waited:?}"
    );
    // A name taken on one replica is taken on the other.
    create_key(&a, json!({"name": "dup"})).await;
    until_status(&b, "sk-nonexistent", 401).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = b
        .client
        .post(b.url("/admin/keys"))
        .json(&json!({"name": "dup"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    a.server.shutdown().await;
    b.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_for_an_answer_of_one_replica_is_accepted_by_the_other() {
    let Some(services) = Services::start("feedback") else {
        return;
    };
    let fake = Fake::start().await;
    let a = Replica::start(&fake, &services, "", "").await;
    let b = Replica::start(&fake, &services, "", "").await;
    let r = a.chat("sk-pro", &chat_body("router", false)).await;
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-router-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let feedback = |key: &'static str| {
        b.client
            .post(b.url("/v1/feedback"))
            .bearer_auth(key)
            .json(&json!({"request_id": id, "score": 1.0}))
            .send()
    };
    // Another team's key may not label it; the same key may, through the other replica.
    assert_eq!(feedback("sk-free").await.unwrap().status(), 404);
    let r = feedback("sk-pro").await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["recorded"], true);
    let lines = crate::common::read_jsonl(&b.dir.path().join("feedback.jsonl"), 1).await;
    assert_eq!(lines[0]["request_id"], id);
    a.server.shutdown().await;
    b.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_60_per_minute_admits_60_across_two_replicas_not_120() {
    let Some(services) = Services::start("rate") else {
        return;
    };
    let fake = Fake::start().await;
    let a = Replica::start(&fake, &services, "", "").await;
    let b = Replica::start(&fake, &services, "", "").await;
    let key = create_key(&a, json!({"name": "sixty", "team": "ops", "rpm": 60})).await;
    until_status(&b, &key, 200).await;
    let started = Instant::now();
    let statuses = burst(&[&a, &b], &key, 150).await;
    let seconds = started.elapsed().as_secs_f64();
    let ok = count(&statuses, 200);
    // 58 left of the bucket of 60 (one request each way above), plus one per second since.
    let most = 58 + seconds.ceil() as usize + 1;
    assert!(
        (55..=most).contains(&ok),
        "{ok} of 150 admitted in {seconds:.1} s (at most {most})"
    );
    assert_eq!(count(&statuses, 429), 150 - ok);
    a.server.shutdown().await;
    b.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_token_rate_is_corrected_with_the_real_usage_at_settlement() {
    let Some(services) = Services::start("tokens") else {
        return;
    };
    let fake = Fake::start().await;
    let a = Replica::start(&fake, &services, "", "").await;
    let b = Replica::start(&fake, &services, "", "").await;
    // Each request counts ~50 input + 1,000 output tokens at admission and uses 48: without
    // the correction two would fit in 3,000 tokens per minute.
    let key = create_key(&a, json!({"name": "tokens", "team": "ops", "tpm": 3000})).await;
    until_status(&b, &key, 200).await;
    let mut body = chat_body(MODEL, false);
    merge(&mut body, json!({"max_tokens": 1000}));
    for i in 0..6 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let r = replica.chat(&key, &body).await;
        assert_eq!(r.status(), 200, "request {i} of a key using 48 tokens each");
    }
    a.server.shutdown().await;
    b.server.shutdown().await;
}

/// The value of an unlabelled metric in a `/metrics` text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Load on `replicas` from `workers` clients until `stop` is set; counts the 200s.
fn load(
    urls: Vec<String>,
    workers: usize,
    ok: Arc<AtomicI64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let (urls, ok, stop) = (urls.clone(), ok.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let body = small_body();
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let sent = client
                        .post(&urls[i % urls.len()])
                        .bearer_auth("sk-pro")
                        .json(&body)
                        .send()
                        .await;
                    // A 200 counts only once its body has fully arrived.
                    if let Ok(r) = sent
                        && r.status() == 200
                        && r.bytes().await.is_ok()
                    {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_under_load_spools_rows_and_replays_them_once() {
    let Some(services) = Services::start("spool") else {
        return;
    };
    let fake = Fake::start().await;
    let a = Replica::start(&fake, &services, "", "").await;
    let b = Replica::start(&fake, &services, "", "").await;
    let urls = vec![a.url("/v1/chat/completions"), b.url("/v1/chat/completions")];
    let ok = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = load(urls, 4, ok.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    services.run("stop-postgres");
    let during = ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        ok.load(Ordering::SeqCst) > during + 10,
        "requests kept being answered while PostgreSQL was down"
    );
    let text = crate::common::metrics(&format!("http://{}", a.server.addr())).await;
    let spooled = metric(&text, "router_ledger_spooled_rows").unwrap();
    assert!(spooled > 0.0, "rows were spooled");
    services.run("start-postgres");
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let answered = ok.load(Ordering::SeqCst);
    // Replay finishes within a few retry periods.
    let mut rows = 0;
    for _ in 0..100 {
        rows = services.sql("SELECT COUNT(*) FROM spend").parse().unwrap();
        if rows >= answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows, answered, "zero lost, zero duplicated");
    // The gauge is set after each replay: it reaches zero within a few retry periods.
    let mut replayed = 0.0;
    for r in [&a, &b] {
        let url = format!("http://{}", r.server.addr());
        let mut text = crate::common::metrics(&url).await;
        for _ in 0..50 {
            if metric(&text, "router_ledger_spooled_rows") == Some(0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            text = crate::common::metrics(&url).await;
        }
        assert_eq!(metric(&text, "router_ledger_spooled_rows"), Some(0.0));
        replayed += metric(&text, "router_ledger_replayed_total").unwrap_or(0.0);
    }
    assert!(replayed > 0.0, "rows were replayed");
    a.server.shutdown().await;
    b.server.shutdown().await;
}

/// Kills these processes when dropped: a failing test leaves no server behind (it would hold
/// the test's output open).
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_no_answered_row_and_every_replica_sees_all_spend() {
    let Some(services) = Services::start("kill") else {
        return;
    };
    let fake = Fake::start().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let bins: Vec<Binary> = dirs
        .iter()
        .map(|d| {
            let path = d.path().join("router.toml");
            std::fs::write(&path, replica_config(&fake, &services, d.path(), "", "")).unwrap();
            Binary::start(&path, &[])
        })
        .collect();
    let _reaper = Reaper(bins.iter().map(|b| b.child.id()).collect());
    let urls: Vec<String> = bins
        .iter()
        .map(|b| format!("{}/v1/chat/completions", b.base))
        .collect();
    let ok = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = load(urls, 4, ok.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut bins = bins;
    bins[0].signal("KILL");
    bins[0].child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let answered = ok.load(Ordering::SeqCst);
    assert!(answered > 20, "only {answered} answered");
    let rows: i64 = services.sql("SELECT COUNT(*) FROM spend").parse().unwrap();
    assert!(rows >= answered, "{answered} answered, {rows} rows");
    // The surviving replica's dashboard data covers both replicas' spend.
    let spend: Value = reqwest::get(format!("{}/v1/spend?group_by=team", bins[1].base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spend["totals"]["requests"], rows);
    bins[1].signal("TERM");
    bins[1].child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_rebuilds_the_budgets_from_postgres_before_using_them() {
    let Some(services) = Services::start("rebuild") else {
        return;
    };
    let fake = Fake::start().await;
    let hard = 5.0 * PER_REQUEST;
    let a = Replica::start(&fake, &services, &racer_budget(hard), "").await;
    let statuses = burst(&[&a], "sk-racer", 12).await;
    assert!(count(&statuses, 429) > 0, "{statuses:?}");
    let before = a.get("/v1/budgets").await["budgets"][0]["settled_usd"]
        .as_f64()
        .unwrap();
    services.run("stop-redis");
    services.run("start-redis");
    // The first use after the restart rebuilds the counters: still refused, same spend.
    let r = a.chat("sk-racer", &small_body()).await;
    assert_eq!(r.status(), 429, "the budget was forgotten with Redis");
    let after = a.get("/v1/budgets").await["budgets"][0]["settled_usd"]
        .as_f64()
        .unwrap();
    assert!(
        (after - before).abs() < 1e-9,
        "{before} before, {after} after"
    );
    a.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_fails_closed_with_503_or_enforces_a_local_share() {
    let Some(services) = Services::start("redis-down") else {
        return;
    };
    let fake = Fake::start().await;
    let hard = 10.0 * PER_REQUEST;
    let closed = Replica::start(&fake, &services, &racer_budget(hard), "timeout_ms = 300").await;
    let local = Replica::start(
        &fake,
        &services,
        &racer_budget(hard),
        "timeout_ms = 300\non_store_error = \"local\"\nreplicas = 2",
    )
    .await;
    assert_eq!(
        closed
            .client
            .get(closed.url("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    services.run("stop-redis");

    let r = closed.chat("sk-racer", &small_body()).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable");
    let ready = closed
        .client
        .get(closed.url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    // Local: this replica enforces half the budget (5 requests' worth).
    let statuses = burst(&[&local], "sk-racer", 12).await;
    let ok = count(&statuses, 200);
    assert!((4..=5).contains(&ok), "{statuses:?}");
    assert_eq!(count(&statuses, 429), 12 - ok);
    let ready = local.client.get(local.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let text = crate::common::metrics(&format!("http://{}", local.server.addr())).await;
    assert!(
        text.contains("router_store_local_total{op=\"reserve\"}"),
        "{text}"
    );
    closed.server.shutdown().await;
    local.server.shutdown().await;
}

/// `promtool check metrics` (Debian's `prometheus` package, installed when missing) accepts a
/// shared replica's `/metrics` after traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics() {
    let Some(services) = Services::start("promtool") else {
        return;
    };
    let Some(promtool) = promtool() else {
        return;
    };
    let fake = Fake::start().await;
    let a = Replica::start(&fake, &services, &racer_budget(1.0), "").await;
    burst(&[&a], "sk-racer", 3).await;
    let text = crate::common::metrics(&format!("http://{}", a.server.addr())).await;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    a.server.shutdown().await;
}

/// `promtool`, installed with apt when missing; `None` (loudly) where it cannot be.
fn promtool() -> Option<String> {
    let found = || {
        std::process::Command::new("sh")
            .args(["-c", "command -v promtool"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Some(path) = found() {
        return Some(path);
    }
    let root = std::process::Command::new("id").arg("-u").output().unwrap();
    let sudo = if String::from_utf8_lossy(&root.stdout).trim() == "0" {
        ""
    } else {
        "sudo -n "
    };
    let install = "apt-get install -y --no-install-recommends prometheus || (apt-get update && apt-get install -y --no-install-recommends prometheus)";
    let _ = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("DEBIAN_FRONTEND=noninteractive {sudo}sh -c '{install}'"),
        ])
        .status();
    let path = found();
    if path.is_none() {
        eprintln!(
            "\n!!!!! SKIPPED promtool check: the prometheus package cannot be installed here !!!!!\n"
        );
    }
    path
}
