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
    /// The training runtime (checkpoints, metrics, optimiser) failed.
    #[error(transparent)]
    Train(#[from] deq_train::TrainError),
    /// A data or tokenizer file is missing, unreadable or malformed.
    #[error("{path}: {message}")]
    Data {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl LmError {
    /// A [`LmError::Data`] for `path`.
    pub fn data(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        Self::Data { path: path.display().to_string(), message: message.to_string() }
    }
}

/// `Result` with [`LmError`].
pub type Result<T> = std::result::Result<T, LmError>;
