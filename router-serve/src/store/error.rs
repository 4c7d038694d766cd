//! Why the store could not answer (a leaf: the HTTP layer maps it without depending on the
//! store's implementations).

use crate::store::ledger::LedgerError;

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The shared store cannot be reached (and `on_store_error` is `fail_closed`).
    #[error("the shared store is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{0}")]
    NoLedger(&'static str),
    /// The change conflicts with what is stored (a key name taken).
    #[error("{0}")]
    Conflict(String),
}
