//! The crate's error type.

/// Errors of deq-lm.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// deq-core (layers, solvers) failed.
    #[error(transparent)]
    Deq(#[from] deq_core::error::DeqError),
}

/// `Result` with [`LmError`].
pub type Result<T> = std::result::Result<T, LmError>;
