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

impl deq_train::faults::FaultChain for LmError {
    fn chain(&self) -> &(dyn std::error::Error + 'static) {
        self
    }
    fn is_numerical(&self) -> bool {
        // The wrapping variants are transparent (their sources skip the error they hold).
        match self {
            LmError::Candle(c) => deq_train::faults::is_numerical_fault(c),
            LmError::Deq(d) => deq_train::faults::is_numerical_fault(d),
            LmError::Train(t) => deq_train::faults::FaultChain::is_numerical(t),
            LmError::Data { .. } => false,
        }
    }
}

/// `Result` with [`LmError`].
pub type Result<T> = std::result::Result<T, LmError>;
