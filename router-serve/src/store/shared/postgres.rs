//! The PostgreSQL half of the shared store: the spend ledger (one row per settled request,
//! keyed by request id) and the admin-created keys. It is the truth: Redis's budget counters
//! are rebuilt from it. The schema is `router-serve/migrations/*.sql`, applied at start under
//! an advisory lock (replicas starting together apply each migration once).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::RwLock;
use tokio_postgres::{Client, NoTls, Row};

use crate::store::ledger::{GroupBy, SpendGroup, SpendRow, StoredKey};
use crate::tenancy::identity::Identity;

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../../migrations/0001_ledger.sql"))];

/// Connections kept open; each multiplexes concurrent queries.
const POOL: usize = 4;

/// An arbitrary constant naming the migration lock.
const MIGRATION_LOCK: i64 = 0x726f_7574_6572;

pub type PgResult<T> = Result<T, String>;

/// A few PostgreSQL connections, reopened when they drop, with a deadline on every call.
pub struct Pg {
    config: tokio_postgres::Config,
    slots: Vec<RwLock<Option<Arc<Client>>>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Pg {
    pub fn new(url: &str, timeout: Duration) -> PgResult<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| format!("postgres_url: {e}"))?;
        config.connect_timeout(timeout);
        config.application_name("router-serve");
        Ok(Self {
            config,
            slots: (0..POOL).map(|_| RwLock::new(None)).collect(),
            next: AtomicUsize::new(0),
            timeout,
        })
    }

    /// An open connection, opening one if needed.
    async fn client(&self) -> PgResult<Arc<Client>> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % POOL];
        if let Some(c) = slot.read().await.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let mut guard = slot.write().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let (client, connection) = self.config.connect(NoTls).await.map_err(describe)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection closed");
            }
        });
        let client = Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }

    /// Runs `f` on a connection within the deadline.
    async fn run<T, F>(&self, f: F) -> PgResult<T>
    where
        F: AsyncFnOnce(Arc<Client>) -> Result<T, tokio_postgres::Error>,
    {
        let work = async {
            let client = self.client().await?;
            f(client).await.map_err(describe)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", self.timeout.as_millis())))
    }

    pub async fn ping(&self) -> PgResult<()> {
        self.run(async |c| c.simple_query("SELECT 1").await.map(|_| ()))
            .await
    }

    /// Applies the migrations not applied yet (no deadline: a migration may take long).
    pub async fn migrate(&self) -> PgResult<()> {
        let client = self.client().await?;
        let run = async {
            client
                .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (
                         version INTEGER PRIMARY KEY,
                         applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                )
                .await?;
            for (version, sql) in MIGRATIONS {
                let done = client
                    .query_opt(
                        "SELECT 1 FROM schema_migrations WHERE version = $1",
                        &[version],
                    )
                    .await?;
                if done.is_some() {
                    continue;
                }
                client
                    .batch_execute(&format!(
                        "BEGIN; {sql}; INSERT INTO schema_migrations (version) VALUES ({version}); COMMIT;"
                    ))
                    .await?;
                tracing::info!(version, "PostgreSQL migration applied");
            }
            client
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
                .await?;
            Ok::<_, tokio_postgres::Error>(())
        };
        run.await.map_err(describe)
    }

    /// Writes settled requests in one statement (one round trip, one commit); rows already
    /// there (replayed ones) are left alone.
    pub async fn insert(&self, rows: &[SpendRow]) -> PgResult<()> {
        let col = |f: fn(&SpendRow) -> String| rows.iter().map(f).collect::<Vec<String>>();
        let num = |f: fn(&SpendRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let usd = |f: fn(&SpendRow) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
        let stamp = |r: &SpendRow| router_core::artifact::rfc3339_utc(r.time);
        let ids = col(|r| r.request_id.clone());
        let times = num(|r| r.time as i64);
        let days: Vec<String> = rows.iter().map(|r| stamp(r)[..10].to_owned()).collect();
        let hours: Vec<String> = rows.iter().map(|r| stamp(r)[..13].to_owned()).collect();
        let (keys, teams, users, tiers) = (
            col(|r| r.key.clone()),
            col(|r| r.team.clone()),
            col(|r| r.user.clone()),
            col(|r| r.tier.clone()),
        );
        let (requested, models, reasons) = (
            col(|r| r.requested_model.clone()),
            col(|r| r.model.clone()),
            col(|r| r.reason.clone()),
        );
        let rules: Vec<Option<String>> = rows.iter().map(|r| r.rule.clone()).collect();
        let (inputs, outputs) = (
            num(|r| r.input_tokens as i64),
            num(|r| r.output_tokens as i64),
        );
        let (costs, expected, counterfactual) = (
            usd(|r| r.cost_usd),
            usd(|r| r.expected_usd),
            usd(|r| r.counterfactual_usd),
        );
        let statuses = col(|r| r.status.clone());
        self.run(async |c| {
            c.execute(
                "INSERT INTO spend (request_id, time, day, hour, key, team, \"user\", tier,
                    requested_model, model, reason, rule, input_tokens, output_tokens, cost_usd,
                    expected_usd, counterfactual_usd, status)
                 SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[],
                    $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[],
                    $11::TEXT[], $12::TEXT[], $13::BIGINT[], $14::BIGINT[],
                    $15::DOUBLE PRECISION[], $16::DOUBLE PRECISION[], $17::DOUBLE PRECISION[],
                    $18::TEXT[])
                 ON CONFLICT (request_id) DO NOTHING",
                &[
                    &ids,
                    &times,
                    &days,
                    &hours,
                    &keys,
                    &teams,
                    &users,
                    &tiers,
                    &requested,
                    &models,
                    &reasons,
                    &rules,
                    &inputs,
                    &outputs,
                    &costs,
                    &expected,
                    &counterfactual,
                    &statuses,
                ],
            )
            .await
            .map(|_| ())
        })
        .await
    }

    /// Spend per (key, team, user, day) in `month` (`YYYY-MM`), to rebuild budget counters.
    pub async fn month_spend(&self, month: &str) -> PgResult<Vec<(Identity, String, f64)>> {
        let pattern = format!("{month}-%");
        let rows = self
            .run(async |c| {
                c.query(
                    "SELECT key, team, \"user\", tier, day, SUM(cost_usd) FROM spend
                     WHERE day LIKE $1 GROUP BY key, team, \"user\", tier, day",
                    &[&pattern],
                )
                .await
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    Identity {
                        key: r.try_get(0).map_err(describe)?,
                        team: r.try_get(1).map_err(describe)?,
                        user: r.try_get(2).map_err(describe)?,
                        tier: r.try_get(3).map_err(describe)?,
                        rpm: None,
                        tpm: None,
                        user_from_request: false,
                    },
                    r.try_get(4).map_err(describe)?,
                    r.try_get(5).map_err(describe)?,
                ))
            })
            .collect()
    }

    /// Totals grouped by `by`, for days in `from..=to` (either open).
    pub async fn spend(
        &self,
        by: GroupBy,
        from: Option<&str>,
        to: Option<&str>,
    ) -> PgResult<Vec<SpendGroup>> {
        let sql = format!(
            "SELECT {col} AS g, COUNT(*), SUM(cost_usd), SUM(expected_usd),
                    SUM(counterfactual_usd), SUM(input_tokens)::BIGINT, SUM(output_tokens)::BIGINT
             FROM spend WHERE ($1::TEXT IS NULL OR day >= $1) AND ($2::TEXT IS NULL OR day <= $2)
             GROUP BY g ORDER BY g",
            col = by.column().replace("user", "\"user\"")
        );
        let rows = self
            .run(async |c| c.query(&sql, &[&from, &to]).await)
            .await?;
        rows.iter().map(|r| group(r).map_err(describe)).collect()
    }

    pub async fn add_key(&self, key: &StoredKey) -> PgResult<()> {
        let id = &key.identity;
        let rpm = id.rpm.map(|r| r as i32);
        let tpm = id.tpm.map(|t| t as i64);
        let created = crate::util::now_unix() as i64;
        self.run(async |c| {
            c.execute(
                "INSERT INTO api_keys (name, key_sha256, team, \"user\", tier, rpm, tpm, created)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &id.key,
                    &key.digest,
                    &id.team,
                    &id.user,
                    &id.tier,
                    &rpm,
                    &tpm,
                    &created,
                ],
            )
            .await
            .map(|_| ())
        })
        .await
    }

    pub async fn remove_key(&self, name: &str) -> PgResult<bool> {
        self.run(async |c| {
            c.execute("DELETE FROM api_keys WHERE name = $1", &[&name])
                .await
                .map(|n| n > 0)
        })
        .await
    }

    pub async fn keys(&self) -> PgResult<Vec<StoredKey>> {
        let rows = self
            .run(async |c| {
                c.query(
                    "SELECT name, key_sha256, team, \"user\", tier, rpm, tpm FROM api_keys",
                    &[],
                )
                .await
            })
            .await?;
        rows.iter()
            .map(|r| stored_key(r).map_err(describe))
            .collect()
    }
}

fn group(r: &Row) -> Result<SpendGroup, tokio_postgres::Error> {
    let expected: f64 = r.try_get(3)?;
    let counterfactual: f64 = r.try_get(4)?;
    Ok(SpendGroup {
        group: r.try_get(0)?,
        requests: r.try_get::<_, i64>(1)? as u64,
        cost_usd: r.try_get(2)?,
        expected_usd: expected,
        counterfactual_usd: counterfactual,
        savings_usd: counterfactual - expected,
        input_tokens: r.try_get::<_, i64>(5)? as u64,
        output_tokens: r.try_get::<_, i64>(6)? as u64,
    })
}

fn stored_key(r: &Row) -> Result<StoredKey, tokio_postgres::Error> {
    Ok(StoredKey {
        digest: r.try_get(1)?,
        identity: Identity {
            key: r.try_get(0)?,
            team: r.try_get(2)?,
            user: r.try_get(3)?,
            tier: r.try_get(4)?,
            rpm: r.try_get::<_, Option<i32>>(5)?.map(|r| r as u32),
            tpm: r.try_get::<_, Option<i64>>(6)?.map(|t| t as u64),
            user_from_request: false,
        },
    })
}

/// The error with its cause (tokio-postgres's `Display` alone says only "db error").
fn describe(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}", db.message()),
        None => match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}
