//! The encoder thread. Candle's forward pass blocks, so it runs on its own OS thread behind a
//! channel: prompts that arrive while it is busy are embedded together (up to `max_batch`),
//! grouped by length so that a short prompt does not pay for a long one's padding, and the head
//! predicts every model's quality for the whole batch at once.
//!
//! With several encoder threads (the default on CPU: one per core), a thread that starts a
//! batch while the others are idle runs its matrix products on every core (the lowest latency
//! for one prompt); one that starts while another is busy runs on its own core (the highest
//! throughput under load, without threads fighting over the cores).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use router_core::artifact::Router;
use router_core::encoder::{Encoder, TokenizedText};
use tokio::sync::oneshot;

use crate::observe::metrics::Metrics;

/// Predicted quality of every model (model order), or why the encoder failed.
pub type Prediction = Result<Vec<f32>, String>;

struct Job {
    tokens: TokenizedText,
    /// The prompt's lexical features ([`Router::lexical_features`]), appended to its embedding.
    lexical: Vec<f32>,
    reply: oneshot::Sender<Prediction>,
}

/// Handle to the encoder thread; the thread ends when the last handle is dropped.
pub struct Batcher {
    tx: SyncSender<Job>,
    threads: Vec<JoinHandle<()>>,
}

/// Prompts waiting for the encoder beyond this are refused (the request fails open).
const QUEUE_CAPACITY: usize = 4096;

impl Batcher {
    /// Starts `workers` encoder threads sharing one queue; with more than one, each batch
    /// runs on every core or on its thread's alone, as the other threads are idle or busy.
    pub fn spawn(
        encoder: Arc<Encoder>,
        router: Arc<Router>,
        max_batch: usize,
        max_wait: Duration,
        workers: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let rx = Arc::new(Mutex::new(rx));
        let busy = Arc::new(AtomicUsize::new(0));
        let shared = workers > 1;
        let threads = (0..workers.max(1))
            .map(|i| {
                let (rx, encoder, router, metrics, busy) = (
                    rx.clone(),
                    encoder.clone(),
                    router.clone(),
                    metrics.clone(),
                    busy.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("router-encoder-{i}"))
                    .spawn(move || {
                        let worker = Worker {
                            encoder: &encoder,
                            router: &router,
                            metrics: &metrics,
                            cores: Cores::new(shared, &busy),
                        };
                        worker.run(&rx, max_batch.max(1), max_wait)
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self { tx, threads })
    }

    /// Queues a prompt's `tokens` and `lexical` features; the receiver yields its prediction.
    pub fn submit(
        &self,
        tokens: TokenizedText,
        lexical: Vec<f32>,
    ) -> Result<oneshot::Receiver<Prediction>, String> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job {
            tokens,
            lexical,
            reply,
        }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(format!(
                "the encoder queue is full ({QUEUE_CAPACITY} prompts waiting)"
            )),
            Err(TrySendError::Disconnected(_)) => Err("the encoder thread has stopped".into()),
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Closing the channel ends the threads once the queue is drained. Detach rather than
        // join: a reload must not wait for the old encoder's last batch.
        self.threads.clear();
    }
}

/// The next batch: blocks for one job, then takes what is queued (waiting up to `max_wait`
/// for more). `None` once the channel is closed.
fn next_batch(rx: &Mutex<Receiver<Job>>, max_batch: usize, max_wait: Duration) -> Option<Vec<Job>> {
    // One worker collects at a time; the others wait for the lock instead of the channel.
    let rx = rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let first = rx.recv().ok()?;
    let mut jobs = vec![first];
    let deadline = Instant::now() + max_wait;
    while jobs.len() < max_batch {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) if max_wait.is_zero() => break,
            Err(_) => match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            },
        }
    }
    Some(jobs)
}

/// Which cores a batch runs on: every core while the other encoder threads are idle, this
/// thread's own (a one-thread pool) while another is busy.
struct Cores<'a> {
    /// Encoder threads embedding now (shared by all of them).
    busy: &'a AtomicUsize,
    /// `None` with a single encoder thread: every batch uses every core.
    own: Option<rayon::ThreadPool>,
}

impl<'a> Cores<'a> {
    fn new(shared: bool, busy: &'a AtomicUsize) -> Self {
        let own = shared
            .then(|| {
                // A pool of its own thread would make this thread a pool worker for good
                // (`current_num_threads` would say 1 everywhere): a separate thread it is.
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(|_| "router-encoder-core".into())
                    .build()
            })
            .and_then(|pool| {
                pool.inspect_err(
                    |e| tracing::warn!(error = %e, "no one-core pool: batches use every core"),
                )
                .ok()
            });
        Self { busy, own }
    }

    /// Runs `work` on every core if no other encoder thread is busy, else on this one.
    fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let others = self.busy.fetch_add(1, Ordering::SeqCst);
        let result = match &self.own {
            Some(pool) if others > 0 => pool.install(work),
            _ => work(),
        };
        self.busy.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// One encoder thread.
struct Worker<'a> {
    encoder: &'a Encoder,
    router: &'a Router,
    metrics: &'a Metrics,
    cores: Cores<'a>,
}

impl Worker<'_> {
    fn run(&self, rx: &Mutex<Receiver<Job>>, max_batch: usize, max_wait: Duration) {
        while let Some(mut jobs) = next_batch(rx, max_batch, max_wait) {
            // Requests whose caller has gone (deadline passed) are not embedded.
            jobs.retain(|j| !j.reply.is_closed());
            if jobs.is_empty() {
                continue;
            }
            self.metrics.batch_size.observe(jobs.len() as f64);
            jobs.sort_by_key(|j| j.tokens.ids.len());
            let ranges = length_buckets(&jobs);
            let mut jobs = jobs.into_iter();
            for range in ranges {
                let bucket: Vec<Job> = jobs.by_ref().take(range.len()).collect();
                self.predict(bucket);
            }
        }
    }

    /// Embeds one bucket of jobs, predicts, and answers each.
    fn predict(&self, bucket: Vec<Job>) {
        let mut batch = Vec::with_capacity(bucket.len());
        let mut lexical = Vec::with_capacity(bucket.len());
        let mut replies = Vec::with_capacity(bucket.len());
        for job in bucket {
            batch.push(job.tokens);
            lexical.push(job.lexical);
            replies.push(job.reply);
        }
        let (encoder, router) = (self.encoder, self.router);
        let result = self.cores.run(|| {
            encoder
                .embed_tokenized(&batch)
                .and_then(|mut inputs| {
                    for (input, lexical) in inputs.iter_mut().zip(&lexical) {
                        input.extend_from_slice(lexical);
                    }
                    router.predict_inputs(&inputs)
                })
                .map_err(|e| e.to_string())
        });
        // A caller may have given up (decision deadline): its send fails, nothing to do.
        match result {
            Ok(rows) => {
                for (reply, row) in replies.into_iter().zip(rows) {
                    let _ = reply.send(Ok(row));
                }
            }
            Err(message) => {
                tracing::error!(error = %message, "embedding failed");
                for reply in replies {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Ranges of `jobs` (sorted by length) to embed together: a bucket ends where the next prompt
/// is more than twice as long as the bucket's first (plus 16 tokens of slack), so padding
/// never more than about doubles the work of a prompt.
fn length_buckets(jobs: &[Job]) -> Vec<std::ops::Range<usize>> {
    let lens: Vec<usize> = jobs.iter().map(|j| j.tokens.ids.len()).collect();
    bucket_ranges(&lens)
}

fn bucket_ranges(sorted_lens: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for i in 1..sorted_lens.len() {
        if sorted_lens[i] > 2 * sorted_lens[start] + 16 {
            ranges.push(start..i);
            start = i;
        }
    }
    if !sorted_lens.is_empty() {
        ranges.push(start..sorted_lens.len());
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_where_padding_would_more_than_double() {
        assert_eq!(bucket_ranges(&[]), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(bucket_ranges(&[5, 10, 20]), vec![0..3]);
        // 100 > 2 × 5 + 16: a new bucket; 200 ≤ 2 × 100 + 16 stays with it.
        assert_eq!(
            bucket_ranges(&[5, 10, 100, 200, 500]),
            vec![0..2, 2..4, 4..5]
        );
    }
}
