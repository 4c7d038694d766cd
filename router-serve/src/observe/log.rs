//! The decision log and the feedback log: one JSON line per request in `decisions.jsonl`
//! (rotated by size), one per label in `feedback.jsonl`. A writer thread owns the files; each
//! line is handed to the OS as soon as it is written, so a crash of the server loses at most
//! the requests still in flight.
//!
//! `feedback.jsonl` has the columns of an eval log (`prompt`, `model`, `score`, `cost_usd`,
//! `input_tokens`, `output_tokens`), so `router-train fit --data logs/feedback.jsonl` retrains
//! on production traffic directly (rows need `log.log_prompts = true` to carry the prompt).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::LogConfig;
use crate::routing::eligibility::Excluded;
use crate::util::now_rfc3339;

pub const DECISIONS_FILE: &str = "decisions.jsonl";
pub const FEEDBACK_FILE: &str = "feedback.jsonl";

/// One model as the decision saw it.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedCandidate {
    pub model: String,
    pub predicted_quality: f32,
    pub expected_cost_usd: f64,
}

/// One upstream attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub model: String,
    pub upstream: String,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// `ok`, `connect`, `timeout`, `status`, `body`, `unusable_body`, `missing_credentials`,
    /// `stream_*`.
    pub outcome: String,
    pub error: Option<String>,
    pub ms: f64,
    /// Size of a 2xx body that was not a chat completion: the upstream did work, so it is
    /// charged as that many bytes of output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unusable_body_bytes: Option<usize>,
}

/// Token usage reported by the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those the provider served from its prompt cache
    /// (`usage.prompt_tokens_details.cached_tokens`), charged at the cached-input price.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_input_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Per-stage latencies in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub decision_ms: f64,
    pub upstream_ms: f64,
    pub total_ms: f64,
    pub overhead_ms: f64,
}

/// One line of `decisions.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    pub request_id: String,
    pub time: String,
    pub endpoint: &'static str,
    pub requested_model: String,
    pub mode: Option<String>,
    pub band: Option<f64>,
    /// `band`, `explore`, `passthrough`, `fallback`, `router_error`.
    pub reason: String,
    pub user: Option<String>,
    /// The API key's name, its team and tier, the rule that matched, `x-router-tags`.
    pub key: Option<String>,
    pub team: Option<String>,
    pub tier: Option<String>,
    pub rule: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Option<serde_json::Value>,
    pub prompt: Option<String>,
    pub prompt_sha256: String,
    pub input_tokens_estimate: usize,
    pub candidates: Vec<LoggedCandidate>,
    pub best_predicted: Option<String>,
    pub in_band: Vec<String>,
    /// Models the request could not go to, and why (capabilities, context window).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<Excluded>,
    pub chosen: Option<String>,
    /// The probability that the decision chose `chosen` (below 1 only with `routing.explore`);
    /// absent without a decision.
    pub propensity: Option<f64>,
    /// The model that answered, if any did.
    pub model: Option<String>,
    pub attempts: Vec<Attempt>,
    pub stream: bool,
    pub usage: Option<Usage>,
    pub cost_usd: Option<f64>,
    /// Expected cost of the best predicted model for this request (the counterfactual).
    pub best_expected_cost_usd: Option<f64>,
    pub latency: Latency,
    /// `ok`, `upstream_error`, `client_error`, `stream_interrupted`, `client_disconnected`,
    /// `abandoned`, …
    pub status: String,
    pub http_status: u16,
    /// What was odd about the money: `missing_usage`, `over_reserved`, `unusable_body`,
    /// `abandoned` (see `router_usage_anomalies_total`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<String>,
}

impl DecisionRecord {
    /// A record with nothing decided yet.
    pub fn new(request_id: &str, endpoint: &'static str) -> Self {
        Self {
            request_id: request_id.to_owned(),
            time: now_rfc3339(),
            endpoint,
            requested_model: String::new(),
            mode: None,
            band: None,
            reason: String::new(),
            user: None,
            key: None,
            team: None,
            tier: None,
            rule: None,
            tags: Vec::new(),
            metadata: None,
            prompt: None,
            prompt_sha256: String::new(),
            input_tokens_estimate: 0,
            candidates: Vec::new(),
            best_predicted: None,
            in_band: Vec::new(),
            excluded: Vec::new(),
            chosen: None,
            propensity: None,
            model: None,
            attempts: Vec::new(),
            stream: false,
            usage: None,
            cost_usd: None,
            best_expected_cost_usd: None,
            latency: Latency::default(),
            status: String::new(),
            http_status: 0,
            anomalies: Vec::new(),
        }
    }
}

/// One line of `feedback.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct FeedbackRecord {
    pub request_id: String,
    pub time: String,
    pub prompt: Option<String>,
    pub prompt_sha256: String,
    pub model: String,
    pub score: f64,
    pub cost_usd: Option<f64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The decision's probability of choosing `model`, when the chosen model answered (not a
    /// fallback and not a passthrough).
    pub propensity: Option<f64>,
    pub comment: Option<String>,
}

enum Line {
    Decision(String),
    Feedback(String),
}

/// The log writer. Cloning is not needed: the server holds it in its shared state.
pub struct DecisionLog {
    tx: Mutex<Option<Sender<Line>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    log_prompts: bool,
    enabled: bool,
}

/// Errors opening the log directory.
#[derive(Debug, thiserror::Error)]
#[error("decision log {path}: {source}")]
pub struct LogError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl DecisionLog {
    /// Opens the logs in `config.dir` (created if missing); a log without a directory only
    /// remembers recent requests for feedback.
    pub fn open(config: &LogConfig) -> Result<Self, LogError> {
        let Some(dir) = config.dir.clone() else {
            return Ok(Self {
                tx: Mutex::new(None),
                thread: Mutex::new(None),
                log_prompts: config.log_prompts,
                enabled: false,
            });
        };
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| LogError { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(err(&dir))?;
        let decisions = dir.join(DECISIONS_FILE);
        let feedback = dir.join(FEEDBACK_FILE);
        let mut writer = Writer {
            decisions: open_append(&decisions).map_err(err(&decisions))?,
            feedback: open_append(&feedback).map_err(err(&feedback))?,
            dir: dir.clone(),
            rotate_bytes: config.rotate_bytes,
            keep_files: config.keep_files,
        };
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("router-log".into())
            .spawn(move || writer.run(&rx))
            .map_err(err(&dir))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            log_prompts: config.log_prompts,
            enabled: true,
        })
    }

    pub fn log_prompts(&self) -> bool {
        self.log_prompts
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Appends `record`.
    pub fn record(&self, record: &DecisionRecord) {
        self.send(|| serde_json::to_string(record).map(Line::Decision));
    }

    pub fn feedback(&self, record: &FeedbackRecord) {
        self.send(|| serde_json::to_string(record).map(Line::Feedback));
    }

    fn send(&self, line: impl FnOnce() -> serde_json::Result<Line>) {
        let Ok(tx) = self.tx.lock() else { return };
        let Some(tx) = tx.as_ref() else { return };
        match line() {
            Ok(line) => {
                if tx.send(line).is_err() {
                    tracing::error!("the log writer has stopped; a record was lost");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot serialise a log record"),
        }
    }

    /// Writes what is queued and closes the files (graceful shutdown).
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the log writer panicked");
        }
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Writer {
    decisions: File,
    feedback: File,
    dir: PathBuf,
    rotate_bytes: u64,
    keep_files: usize,
}

impl Writer {
    fn run(&mut self, rx: &Receiver<Line>) {
        while let Ok(line) = rx.recv() {
            let result = match line {
                Line::Decision(text) => self.write_decision(&text),
                Line::Feedback(text) => write_line(&mut self.feedback, &text),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, dir = %self.dir.display(), "writing the log failed");
            }
        }
        let _ = self.decisions.sync_all();
        let _ = self.feedback.sync_all();
    }

    fn write_decision(&mut self, text: &str) -> std::io::Result<()> {
        write_line(&mut self.decisions, text)?;
        if self.decisions.metadata()?.len() >= self.rotate_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let stamp = format!("{}-{:09}", now.as_secs(), now.subsec_nanos());
        let current = self.dir.join(DECISIONS_FILE);
        std::fs::rename(&current, self.dir.join(format!("decisions-{stamp}.jsonl")))?;
        self.decisions = open_append(&current)?;
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("decisions-") && n.ends_with(".jsonl"))
            })
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(self.keep_files);
        for old in &rotated[..excess] {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

fn write_line(file: &mut File, text: &str) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(text.len() + 1);
    buf.extend_from_slice(text.as_bytes());
    buf.push(b'\n');
    // One write per line: the OS has it before the next request is logged.
    file.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::sha256_hex;

    fn record(id: &str) -> DecisionRecord {
        DecisionRecord {
            requested_model: "router".into(),
            prompt_sha256: sha256_hex("x"),
            model: Some("m".into()),
            status: "ok".into(),
            http_status: 200,
            ..DecisionRecord::new(id, "chat.completions")
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            dir: Some(dir.path().to_owned()),
            rotate_bytes: 1024,
            keep_files: 2,
            log_prompts: false,
            recent_requests: 3,
            feedback_scores: [0.0, 1.0],
        };
        let log = DecisionLog::open(&config).unwrap();
        for i in 0..40 {
            log.record(&record(&format!("req-{i}")));
        }
        log.close();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let rotated = names.iter().filter(|n| n.starts_with("decisions-")).count();
        assert_eq!(rotated, 2, "{names:?}");
        assert!(names.contains(&DECISIONS_FILE.to_owned()));
        // Every surviving line is whole JSON.
        for name in names.iter().filter(|n| n.starts_with("decisions")) {
            for line in std::fs::read_to_string(dir.path().join(name))
                .unwrap()
                .lines()
            {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
    }
}
