//! The spend ledger: SQLite (bundled build) in WAL mode, one row per settled request, written
//! before the response is completed, so a settled request survives `kill -9`. Budgets are
//! restored from it at start, and the dashboard reads it. Keys created through the admin API
//! are kept here too, as SHA-256 digests.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::tenancy::identity::Identity;

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("ledger {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One settled request.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SpendRow {
    pub request_id: String,
    pub time: u64,
    pub key: String,
    pub team: String,
    pub user: String,
    pub tier: String,
    pub requested_model: String,
    pub model: String,
    pub reason: String,
    pub rule: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What the request cost (upstream usage × the model's prices).
    pub cost_usd: f64,
    /// The answered model's expected cost for this request, as predicted at decision time.
    pub expected_usd: f64,
    /// The expected cost of the counterfactual: the router's best model for this request.
    pub counterfactual_usd: f64,
    pub status: String,
}

/// A group's totals (`/v1/spend`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SpendGroup {
    pub group: String,
    pub requests: u64,
    pub cost_usd: f64,
    pub expected_usd: f64,
    pub counterfactual_usd: f64,
    pub savings_usd: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// What to group spend by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Team,
    User,
    Key,
    Tier,
    Model,
    Day,
    Hour,
}

impl GroupBy {
    pub(crate) fn column(self) -> &'static str {
        match self {
            Self::Team => "team",
            Self::User => "user",
            Self::Key => "key",
            Self::Tier => "tier",
            Self::Model => "model",
            Self::Day => "day",
            Self::Hour => "substr(hour, 1, 13)",
        }
    }
}

/// A key created through the admin API.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub digest: String,
    pub identity: Identity,
}

pub struct Ledger {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Ledger {
    /// Opens (creating) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let err = |source| LedgerError::Sqlite {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LedgerError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        // WAL + synchronous=NORMAL: a committed row survives a crash of this process (not
        // necessarily of the machine).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS spend (
                 id INTEGER PRIMARY KEY,
                 request_id TEXT NOT NULL,
                 time INTEGER NOT NULL,
                 day TEXT NOT NULL,
                 hour TEXT NOT NULL,
                 key TEXT NOT NULL,
                 team TEXT NOT NULL,
                 user TEXT NOT NULL,
                 tier TEXT NOT NULL,
                 requested_model TEXT NOT NULL,
                 model TEXT NOT NULL,
                 reason TEXT NOT NULL,
                 rule TEXT,
                 input_tokens INTEGER NOT NULL,
                 output_tokens INTEGER NOT NULL,
                 cost_usd REAL NOT NULL,
                 expected_usd REAL NOT NULL,
                 counterfactual_usd REAL NOT NULL,
                 status TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS spend_day ON spend (day);
             CREATE TABLE IF NOT EXISTS api_keys (
                 name TEXT PRIMARY KEY,
                 key_sha256 TEXT NOT NULL UNIQUE,
                 team TEXT NOT NULL,
                 user TEXT NOT NULL,
                 tier TEXT NOT NULL,
                 rpm INTEGER,
                 tpm INTEGER,
                 created INTEGER NOT NULL
             );",
        )
        .map_err(err)?;
        Ok(Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    /// Runs `f` on the blocking pool: SQLite calls block.
    pub async fn run<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Ledger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let ledger = self.clone();
        tokio::task::spawn_blocking(move || f(&ledger)).await?
    }

    fn err(&self, source: rusqlite::Error) -> LedgerError {
        LedgerError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: SQLite rolls back.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one settled request (committed when this returns).
    pub fn insert(&self, row: &SpendRow) -> Result<(), LedgerError> {
        let stamp = router_core::artifact::rfc3339_utc(row.time);
        self.conn()
            .execute(
                "INSERT INTO spend (request_id, time, day, hour, key, team, user, tier,
                    requested_model, model, reason, rule, input_tokens, output_tokens, cost_usd,
                    expected_usd, counterfactual_usd, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                params![
                    row.request_id,
                    row.time as i64,
                    &stamp[..10],
                    &stamp[..13],
                    row.key,
                    row.team,
                    row.user,
                    row.tier,
                    row.requested_model,
                    row.model,
                    row.reason,
                    row.rule,
                    row.input_tokens as i64,
                    row.output_tokens as i64,
                    row.cost_usd,
                    row.expected_usd,
                    row.counterfactual_usd,
                    row.status,
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Spend per (key, team, user, day) in `month` (`YYYY-MM`), to restore budgets.
    pub fn month_spend(&self, month: &str) -> Result<Vec<(Identity, String, f64)>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT key, team, user, tier, day, SUM(cost_usd) FROM spend
                 WHERE substr(day, 1, 7) = ?1 GROUP BY key, team, user, tier, day",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![month], |r| {
                Ok((
                    Identity {
                        key: r.get(0)?,
                        team: r.get(1)?,
                        user: r.get(2)?,
                        tier: r.get(3)?,
                        rpm: None,
                        tpm: None,
                        user_from_request: false,
                    },
                    r.get::<_, String>(4)?,
                    r.get::<_, f64>(5)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Totals grouped by `by`, for days in `from..=to` (`YYYY-MM-DD`, either open).
    pub fn spend(
        &self,
        by: GroupBy,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<SpendGroup>, LedgerError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {col} AS g, COUNT(*), SUM(cost_usd), SUM(expected_usd), SUM(counterfactual_usd),
                    SUM(input_tokens), SUM(output_tokens)
             FROM spend WHERE (?1 IS NULL OR day >= ?1) AND (?2 IS NULL OR day <= ?2)
             GROUP BY g ORDER BY g",
            col = by.column()
        );
        let mut stmt = conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![from, to], |r| {
                let expected: f64 = r.get(3)?;
                let counterfactual: f64 = r.get(4)?;
                Ok(SpendGroup {
                    group: r.get(0)?,
                    requests: r.get::<_, i64>(1)? as u64,
                    cost_usd: r.get(2)?,
                    expected_usd: expected,
                    counterfactual_usd: counterfactual,
                    savings_usd: counterfactual - expected,
                    input_tokens: r.get::<_, i64>(5)? as u64,
                    output_tokens: r.get::<_, i64>(6)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Stores a key created through the admin API.
    pub fn add_key(&self, key: &StoredKey) -> Result<(), LedgerError> {
        let id = &key.identity;
        self.conn()
            .execute(
                "INSERT INTO api_keys (name, key_sha256, team, user, tier, rpm, tpm, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id.key,
                    key.digest,
                    id.team,
                    id.user,
                    id.tier,
                    id.rpm,
                    id.tpm.map(|t| t as i64),
                    crate::util::now_unix() as i64
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn remove_key(&self, name: &str) -> Result<bool, LedgerError> {
        self.conn()
            .execute("DELETE FROM api_keys WHERE name = ?1", params![name])
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    pub fn keys(&self) -> Result<Vec<StoredKey>, LedgerError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT name, key_sha256, team, user, tier, rpm, tpm FROM api_keys ORDER BY name",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredKey {
                    digest: r.get(1)?,
                    identity: Identity {
                        key: r.get(0)?,
                        team: r.get(2)?,
                        user: r.get(3)?,
                        tier: r.get(4)?,
                        rpm: r.get(5)?,
                        tpm: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
                        user_from_request: false,
                    },
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(team: &str, model: &str, cost: f64) -> SpendRow {
        SpendRow {
            request_id: "r".into(),
            time: 1_795_600_800,
            key: "k".into(),
            team: team.into(),
            user: "u".into(),
            tier: "default".into(),
            requested_model: "router".into(),
            model: model.into(),
            reason: "band".into(),
            rule: None,
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: cost,
            expected_usd: cost,
            counterfactual_usd: 3.0 * cost,
            status: "ok".into(),
        }
    }

    #[test]
    fn rows_are_grouped_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        {
            let ledger = Ledger::open(&path).unwrap();
            ledger.insert(&row("search", "a", 1.0)).unwrap();
            ledger.insert(&row("search", "b", 2.0)).unwrap();
            ledger.insert(&row("ads", "a", 4.0)).unwrap();
        }
        let ledger = Ledger::open(&path).unwrap();
        let teams = ledger.spend(GroupBy::Team, None, None).unwrap();
        assert_eq!(teams.len(), 2);
        assert_eq!(teams[1].group, "search");
        assert_eq!(teams[1].requests, 2);
        assert!((teams[1].cost_usd - 3.0).abs() < 1e-12);
        assert!((teams[1].savings_usd - 6.0).abs() < 1e-12);
        let days = ledger
            .spend(GroupBy::Day, Some("2026-11-26"), None)
            .unwrap();
        assert!(days.is_empty());
        let restored = ledger.month_spend("2026-11").unwrap();
        let total: f64 = restored.iter().map(|r| r.2).sum();
        assert!((total - 7.0).abs() < 1e-12);
    }
}
