//! Group commit for the ledger: requests hand their row to one writer task per replica, which
//! writes whatever has queued up in one statement and tells each request whether its row is
//! committed. Under load a commit serves many requests; alone, a row waits for no one.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::ledger::SpendRow;
use crate::store::shared::postgres::Pg;

/// Most rows in one statement.
const MAX_BATCH: usize = 256;

type Job = (SpendRow, oneshot::Sender<Result<(), String>>);

pub struct LedgerWriter {
    tx: mpsc::Sender<Job>,
}

impl LedgerWriter {
    /// Starts the writer task; it ends when the writer is dropped.
    pub fn spawn(pg: Arc<Pg>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (rows, acks): (Vec<SpendRow>, Vec<_>) = batch.drain(..).unzip();
                let result = pg.insert(&rows).await;
                for ack in acks {
                    let _ = ack.send(result.clone());
                }
            }
        });
        Self { tx }
    }

    /// Commits `row` with whatever else is queued; the error says why it is not written.
    pub async fn write(&self, row: SpendRow) -> Result<(), String> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((row, ack))
            .await
            .map_err(|_| "the ledger writer stopped".to_owned())?;
        done.await
            .map_err(|_| "the ledger writer dropped the row".to_owned())?
    }
}
