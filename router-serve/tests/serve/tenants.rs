//! Tenants and money: keys, tiers, rules, budgets (soft and hard, under a race), rate limits,
//! the admin key API, the ledger and the dashboard in a real browser.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{MODELS, TestServer, chat_body, get_json, merge};

const FREE_MODELS: [&str; 3] = [
    "gemma-2-9b-it",
    "llama-3.1-8b-instruct",
    "mistral-7b-instruct-v0.3",
];

pub(crate) fn sha(key: &str) -> String {
    router_serve::tenancy::identity::key_digest(key)
}

/// Tables appended to the test config: keys, tiers, a rule, `budgets` as given, a ledger.
pub(crate) fn tenant_tables(ledger: &Path, required: bool, budgets: &str) -> String {
    tenants_with(Some(ledger), required, budgets)
}

/// The tables of [`tenant_tables`], with the SQLite ledger only if `ledger` is given (the
/// shared store keeps its ledger in PostgreSQL).
pub(crate) fn tenants_with(ledger: Option<&Path>, required: bool, budgets: &str) -> String {
    let ledger = ledger
        .map(|l| format!("ledger = \"{}\"", l.display()))
        .unwrap_or_default();
    format!(
        r#"
[auth]
required = {required}
{ledger}

[[keys]]
name = "free-key"
key_sha256 = "{free}"
team = "search"
user = "alice"
tier = "free"

[[keys]]
name = "pro-key"
key_sha256 = "{pro}"
team = "ads"
user = "bob"
tier = "premium"

[[keys]]
name = "limited"
key_sha256 = "{limited}"
team = "ops"
user = "carol"
rpm = 2

[[keys]]
name = "racer"
key_sha256 = "{racer}"
team = "race"
user = "dave"

[[keys]]
name = "no-user"
key_sha256 = "{nouser}"
team = "shared"

[[keys]]
name = "from-request"
key_sha256 = "{fromreq}"
team = "shared"
user_from_request = true

[tiers.free]
models = {free_models:?}
mode = "cost"
max_tokens = 64

[tiers.premium]
mode = "quality"

[[rules]]
name = "batch-cheap"
when = [{{ field = "tag", op = "in", value = ["batch"] }}, {{ field = "tier", op = "equals", value = "premium" }}]
mode = "cost"
band = 1.0
{budgets}
"#,
        free = sha("sk-free"),
        pro = sha("sk-pro"),
        limited = sha("sk-limited"),
        racer = sha("sk-racer"),
        nouser = sha("sk-nouser"),
        fromreq = sha("sk-fromreq"),
        free_models = FREE_MODELS,
    )
}

pub(crate) async fn server(budgets: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tables = tenant_tables(&dir.path().join("ledger.sqlite"), true, budgets);
    (TestServer::with("", &tables).await, dir)
}

pub(crate) async fn chat(
    t: &TestServer,
    key: Option<&str>,
    body: Value,
    tags: Option<&str>,
) -> reqwest::Response {
    let mut r = t.client.post(t.url("/v1/chat/completions")).json(&body);
    if let Some(key) = key {
        r = r.bearer_auth(key);
    }
    if let Some(tags) = tags {
        r = r.header("x-router-tags", tags);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_bad_key_is_401_and_health_needs_none() {
    let (t, _dir) = server("").await;
    for key in [None, Some("sk-wrong")] {
        let r = chat(&t, key, chat_body("router", false), None).await;
        assert_eq!(r.status(), 401, "{key:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    let models = t.client.get(t.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 401);
    let health = t.client.get(t.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(t.fake.seen().is_empty());
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_restrict_models_and_tokens_and_rules_match_in_order() {
    let (t, _dir) = server("").await;
    // Free tier: cost mode, three models, output capped at 64 tokens.
    let mut body = chat_body("router", false);
    merge(&mut body, json!({"max_tokens": 1000}));
    let r = chat(&t, Some("sk-free"), body, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-router-mode"], "cost");
    let model = r.headers()["x-router-model"].to_str().unwrap().to_owned();
    assert!(FREE_MODELS.contains(&model.as_str()), "{model}");
    assert_eq!(t.fake.seen()[0].body["max_tokens"], 64);
    // A model outside the tier, asked for by name.
    let r = chat(
        &t,
        Some("sk-free"),
        chat_body("llama3-chatqa-1.5-70b", false),
        None,
    )
    .await;
    assert_eq!(r.status(), 403);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "model_not_allowed");

    // Premium: quality mode, the best predicted model.
    let r = chat(&t, Some("sk-pro"), chat_body("router", false), None).await;
    assert_eq!(r.headers()["x-router-mode"], "quality");
    assert!(r.headers().get("x-router-rule").is_none());
    let best = r.headers()["x-router-model"].to_str().unwrap().to_owned();

    // The rule for batch traffic from premium keys: band 1, the cheapest model.
    let r = chat(
        &t,
        Some("sk-pro"),
        chat_body("router", false),
        Some("nightly, batch"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-router-rule"], "batch-cheap");
    assert_eq!(r.headers()["x-router-band"], "1");
    let cheap = r.headers()["x-router-model"].to_str().unwrap().to_owned();
    assert_ne!(best, cheap);
    // The same tag from the free tier does not match (every condition must hold).
    let r = chat(
        &t,
        Some("sk-free"),
        chat_body("router", false),
        Some("batch"),
    )
    .await;
    assert!(r.headers().get("x-router-rule").is_none());

    let log = t.decisions(5).await;
    let ruled = log.iter().find(|r| r["rule"] == "batch-cheap").unwrap();
    assert_eq!(ruled["key"], "pro-key");
    assert_eq!(ruled["team"], "ads");
    assert_eq!(ruled["tags"], json!(["nightly", "batch"]));
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_soft_threshold_a_cheaper_model_answers_and_past_the_hard_limit_429() {
    let budgets = r#"
[[budgets]]
scope = "team"
name = "ads"
period = "day"
soft_usd = 0.000001
hard_usd = 1.0
soft_mode = "cost"

[[budgets]]
scope = "user"
name = "alice"
period = "month"
hard_usd = 0.0000001
"#;
    let (t, _dir) = server(budgets).await;
    let first = chat(&t, Some("sk-pro"), chat_body("router", false), None).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-router-reason"], "band");
    assert_eq!(first.headers()["x-router-mode"], "quality");
    let second = chat(&t, Some("sk-pro"), chat_body("router", false), None).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-router-reason"], "budget_soft");
    assert_eq!(second.headers()["x-router-mode"], "cost");
    assert_ne!(
        first.headers()["x-router-model"],
        second.headers()["x-router-model"]
    );

    // Alice's hard limit is below one request's worst case.
    let r = chat(&t, Some("sk-free"), chat_body("router", false), None).await;
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert!(body["error"]["message"].as_str().unwrap().contains("alice"));

    let budgets: Value = get_json(&t.url("/v1/budgets")).await;
    let ads = budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["entity"] == "ads")
        .unwrap();
    assert!(ads["settled_usd"].as_f64().unwrap() > 0.000001);
    assert_eq!(ads["reserved_usd"], 0.0);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_racing_the_last_dollar_overrun_by_at_most_one_worst_case() {
    // A passthrough model at $0.9/M both ways; 8 output tokens at most; the fake upstream
    // reports 40 + 8 tokens, so each request costs 48 × 0.9e-6 $.
    let per_request = 48.0 * 0.9e-6;
    let hard = 20.0 * per_request;
    let budgets = format!(
        "\n[[budgets]]\nscope = \"key\"\nname = \"racer\"\nperiod = \"day\"\nhard_usd = {hard}\n"
    );
    let (t, dir) = server(&budgets).await;
    let mut body = chat_body("llama3-chatqa-1.5-70b", false);
    merge(&mut body, json!({"max_tokens": 8}));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (client, url, body) = (
                t.client.clone(),
                t.url("/v1/chat/completions"),
                body.clone(),
            );
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth("sk-racer")
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            200 => ok += 1,
            429 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok + refused, 200);
    // Worst case reserved per request: ≈ 48 estimated input + 8 output tokens at $0.9/M.
    let worst = (body.to_string().len() as f64 / 4.0 + 8.0) * 0.9e-6;
    let spent = ok as f64 * per_request;
    assert!(
        spent <= hard + worst + 1e-12,
        "{ok} requests spent {spent}, limit {hard}"
    );
    assert!(ok >= 15, "only {ok} requests got through a budget for 20");
    assert!(refused > 0);
    t.server.shutdown().await;
    // The ledger agrees with what was answered.
    let conn = rusqlite::Connection::open(dir.path().join("ledger.sqlite")).unwrap();
    let (rows, total): (i64, f64) = conn
        .query_row(
            "SELECT COUNT(*), SUM(cost_usd) FROM spend WHERE key = 'racer'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(rows, ok);
    assert!((total - spent).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_request_rate_gets_429_with_rate_limit_headers() {
    let (t, _dir) = server("").await;
    for _ in 0..2 {
        let r = chat(
            &t,
            Some("sk-limited"),
            chat_body("gemma-2-9b-it", false),
            None,
        )
        .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "2");
    }
    let r = chat(
        &t,
        Some("sk-limited"),
        chat_body("gemma-2-9b-it", false),
        None,
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    assert!(r.headers().contains_key("x-ratelimit-reset-requests"));
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // Another key is not affected.
    let r = chat(&t, Some("sk-pro"), chat_body("gemma-2-9b-it", false), None).await;
    assert_eq!(r.status(), 200);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_created_by_the_admin_api_work_until_deleted() {
    let (t, dir) = server("").await;
    let created: Value = t
        .post(
            "/admin/keys",
            json!({"name": "ci-bot", "team": "infra", "user": "bot", "tier": "free"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-router-"));
    let r = chat(&t, Some(&key), chat_body("router", false), None).await;
    assert_eq!(r.status(), 200);
    let listed = t
        .client
        .get(t.url("/admin/keys"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains("ci-bot") && !listed.contains(&key),
        "{listed}"
    );
    let deleted = t
        .client
        .delete(t.url("/admin/keys/ci-bot"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let r = chat(&t, Some(&key), chat_body("router", false), None).await;
    assert_eq!(r.status(), 401);
    t.server.shutdown().await;
    // Only the digest is stored.
    let db = std::fs::read(dir.path().join("ledger.sqlite")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(&key));
}

/// Installs Debian's chromium when it is missing (the test command's job, per the issue).
fn chromium() -> String {
    let found = |name: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if found(name) {
            return name.to_owned();
        }
    }
    let install = "apt-get install -y --no-install-recommends chromium || (apt-get update && apt-get install -y --no-install-recommends chromium)";
    let sudo = if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
    {
        ""
    } else {
        "sudo "
    };
    let status = Command::new("sh")
        .args(["-c", &format!("{sudo}sh -c '{install}'")])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .unwrap();
    assert!(
        status.success() && found("chromium"),
        "could not install chromium"
    );
    "chromium".to_owned()
}

fn headless(browser: &str, args: &[&str], url: &str) -> std::process::Output {
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=15000",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap()
}

/// `data-value` of the element with `id`, from a dumped DOM.
fn value_of(dom: &str, id: &str) -> f64 {
    let re = regex::Regex::new(&format!(r#"id="{id}"[^>]*data-value="([^"]+)""#)).unwrap();
    let alt = regex::Regex::new(&format!(r#"data-value="([^"]+)"[^>]*id="{id}""#)).unwrap();
    let caps = re
        .captures(dom)
        .or_else(|| alt.captures(dom))
        .unwrap_or_else(|| panic!("{id} not in the page"));
    caps[1].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_ledger_in_a_real_browser() {
    let (t, dir) = server("").await;
    // Seeded traffic: three teams, routed and passed through.
    for (key, model, n) in [
        ("sk-free", "router", 3),
        ("sk-pro", "router", 2),
        ("sk-pro", "codegemma-7b", 1),
        ("sk-limited", "router", 2),
    ] {
        for _ in 0..n {
            let r = chat(&t, Some(key), chat_body(model, false), None).await;
            assert_eq!(r.status(), 200);
        }
    }
    let spend: Value = get_json(&t.url("/v1/spend?group_by=team")).await;
    assert_eq!(spend["totals"]["requests"], 8);
    let bad = t
        .client
        .get(t.url("/v1/spend?group_by=colour"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let browser = tokio::task::spawn_blocking(chromium).await.unwrap();
    let url = t.url("/dashboard");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let (dom, shot_ok) = {
        let (b, u, s) = (browser.clone(), url.clone(), shot.clone());
        tokio::task::spawn_blocking(move || {
            let dom = headless(&b, &["--dump-dom"], &u);
            let shot = headless(
                &b,
                &[
                    &format!("--screenshot={}", s.display()),
                    "--window-size=1280,1400",
                ],
                &u,
            );
            (
                String::from_utf8_lossy(&dom.stdout).to_string(),
                shot.status.success(),
            )
        })
        .await
        .unwrap()
    };
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load its data:\n{dom}"
    );

    // The numbers shown are the ledger's.
    let conn = rusqlite::Connection::open(dir.path().join("ledger.sqlite")).unwrap();
    let (rows, cost, savings): (i64, f64, f64) = conn
        .query_row(
            "SELECT COUNT(*), SUM(cost_usd), SUM(counterfactual_usd - expected_usd) FROM spend",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(rows, 8);
    assert_eq!(value_of(&dom, "total-requests") as i64, rows);
    assert!((value_of(&dom, "total-cost") - cost).abs() < 1e-12);
    assert!((value_of(&dom, "total-savings") - savings).abs() < 1e-12);
    assert!(
        dom.contains(&format!("${cost:.6}")),
        "the total is shown as ${cost:.6}"
    );
    let mut stmt = conn
        .prepare("SELECT team, COUNT(*), SUM(cost_usd) FROM spend GROUP BY team")
        .unwrap();
    let teams: Vec<(String, i64, f64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(teams.len(), 3);
    for (team, n, team_cost) in teams {
        let row = regex::Regex::new(&format!(
            r#"(?s)<tr data-group="{team}">.*?class="requests" data-value="(\d+)".*?class="cost" data-value="([^"]+)""#
        ))
        .unwrap();
        let caps = row
            .captures(&dom)
            .unwrap_or_else(|| panic!("team {team} missing"));
        assert_eq!(caps[1].parse::<i64>().unwrap(), n, "{team}");
        assert!(
            (caps[2].parse::<f64>().unwrap() - team_cost).abs() < 1e-12,
            "{team}"
        );
    }
    // The routing mix lists every model that answered.
    let mut models = conn.prepare("SELECT DISTINCT model FROM spend").unwrap();
    for model in models.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        let model = model.unwrap();
        assert!(MODELS.contains(&model.as_str()));
        assert!(
            dom.contains(&format!("<tr data-group=\"{model}\">")),
            "{model} not in the routing mix"
        );
    }
    assert!(
        shot_ok && std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "screenshot at {}",
        shot.display()
    );
    t.server.shutdown().await;
}

/// A real `kill -9` under load: every request that got its answer has its ledger row, and a
/// restarted server restores the budgets from the ledger. Client keys never reach the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_spend_survives_kill_9_and_budgets_are_restored() {
    use crate::common::{Binary, Fake, config_text};
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite");
    let budgets =
        "\n[[budgets]]\nscope = \"team\"\nname = \"ads\"\nperiod = \"month\"\nhard_usd = 100.0\n";
    let text = config_text(
        &fake,
        dir.path(),
        "",
        &tenant_tables(&ledger, true, budgets),
    );
    let path = dir.path().join("router.toml");
    std::fs::write(&path, text).unwrap();

    let mut bin = Binary::start(&path, &[]);
    let url = format!("{}/v1/chat/completions", bin.base);
    let ok = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (url, ok) = (url.clone(), ok.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for _ in 0..500 {
                    match client
                        .post(&url)
                        .bearer_auth("sk-pro")
                        .json(&chat_body("router", false))
                        .send()
                        .await
                    {
                        Ok(r) => {
                            assert_eq!(r.status(), 200);
                            if r.bytes().await.is_err() {
                                break;
                            }
                            ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bin.signal("KILL");
    let _ = bin.child.wait();
    for task in load {
        task.await.unwrap();
    }
    let answered = ok.load(std::sync::atomic::Ordering::SeqCst);
    assert!(answered > 10, "only {answered} requests before the kill");
    let logs = bin.stderr.join().unwrap();
    assert!(!logs.contains("sk-pro"), "a client key reached the logs");

    let rows: i64 = rusqlite::Connection::open(&ledger)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM spend", [], |r| r.get(0))
        .unwrap();
    assert!(rows >= answered, "{answered} answered, {rows} settled rows");
    let spent: f64 = rusqlite::Connection::open(&ledger)
        .unwrap()
        .query_row(
            "SELECT SUM(cost_usd) FROM spend WHERE team = 'ads'",
            [],
            |r| r.get(0),
        )
        .unwrap();

    // Restart: the team's budget starts from what the ledger holds.
    let mut bin = Binary::start(&path, &[]);
    let budgets: Value = reqwest::get(format!("{}/v1/budgets", bin.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ads = budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["entity"] == "ads")
        .unwrap()
        .clone();
    assert!(
        (ads["settled_usd"].as_f64().unwrap() - spent).abs() < 1e-9,
        "{ads} vs {spent}"
    );
    bin.signal("TERM");
    let status = bin.child.wait().unwrap();
    let logs = bin.stderr.join().unwrap();
    let tail: String = logs.lines().rev().take(20).collect::<Vec<_>>().join("\n");
    assert!(
        status.success(),
        "{status}; last log lines, newest first:\n{tail}"
    );
}
