//! The ledger spool: rows PostgreSQL could not take are appended to a local file, one JSON line
//! each, fsync'd before the request completes, and replayed (idempotently, by request id)
//! once PostgreSQL answers again. Replay first renames the file, so new rows keep being
//! appended while old ones are written; a replica that restarts replays what it left.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::ledger::SpendRow;

pub struct Spool {
    path: PathBuf,
    replaying: PathBuf,
    /// Serialises appends with the rename that starts a replay.
    lock: Mutex<()>,
}

impl Spool {
    pub fn new(path: &Path) -> Self {
        let mut replaying = path.as_os_str().to_owned();
        replaying.push(".replaying");
        Self {
            path: path.to_owned(),
            replaying: PathBuf::from(replaying),
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `row` and syncs it to disk. Blocking.
    pub fn append(&self, row: &SpendRow) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(row).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(&line)?;
        file.sync_data()
    }

    /// Rows waiting to be replayed: the batch being replayed (left by a failed or interrupted
    /// replay), else the spool itself, moved aside. Blocking.
    pub fn take(&self) -> std::io::Result<Vec<SpendRow>> {
        if !self.replaying.exists() {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            match std::fs::rename(&self.path, &self.replaying) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        let text = std::fs::read_to_string(&self.replaying)?;
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            match serde_json::from_str(line) {
                Ok(row) => rows.push(row),
                // A torn last line (a crash mid-append) was never acknowledged to a client.
                Err(e) => tracing::error!(
                    line = i + 1,
                    file = %self.replaying.display(),
                    error = %e,
                    "skipping an unreadable spooled ledger row"
                ),
            }
        }
        Ok(rows)
    }

    /// The batch from [`Spool::take`] is written: forget it. Blocking.
    pub fn done(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.replaying) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Rows waiting (both files). Blocking.
    pub fn pending(&self) -> usize {
        [&self.path, &self.replaying]
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> SpendRow {
        SpendRow {
            request_id: id.into(),
            time: 1_795_600_800,
            key: "k".into(),
            team: "t".into(),
            user: "u".into(),
            tier: "default".into(),
            requested_model: "router".into(),
            model: "m".into(),
            reason: "band".into(),
            rule: None,
            input_tokens: 1,
            output_tokens: 2,
            cost_usd: 0.5,
            expected_usd: 0.5,
            counterfactual_usd: 1.0,
            status: "ok".into(),
        }
    }

    #[test]
    fn spooled_rows_are_taken_once_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(&dir.path().join("spool.jsonl"));
        assert!(spool.take().unwrap().is_empty());
        spool.append(&row("a")).unwrap();
        spool.append(&row("b")).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(spool.path())
            .unwrap()
            .write_all(b"{\"request_id\":\"c\",")
            .unwrap();
        let taken = spool.take().unwrap();
        assert_eq!(taken.len(), 2);
        // Appends during a replay go to a new file; an unfinished replay is taken again.
        spool.append(&row("d")).unwrap();
        assert_eq!(spool.take().unwrap().len(), 2);
        spool.done().unwrap();
        let next: Vec<String> = spool
            .take()
            .unwrap()
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(next, ["d"]);
    }
}
