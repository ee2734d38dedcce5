//! Error type of `deq-inr`. File errors name the file.

use std::path::PathBuf;

/// Errors of the library.
#[derive(Debug, thiserror::Error)]
pub enum InrError {
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error from deq-core.
    #[error(transparent)]
    Deq(#[from] deq_core::DeqError),
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file whose content is not what its format requires, or that is unsupported.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Training produced a non-finite loss.
    #[error("training diverged at step {step}: {message}")]
    Diverged {
        /// The step.
        step: usize,
        /// What was non-finite.
        message: String,
    },
    /// The run stopped on SIGINT or SIGTERM after writing a checkpoint (deq-train's
    /// [`deq_train::signals`]).
    #[error(transparent)]
    Interrupted(deq_train::TrainError),
    /// An invalid setting.
    #[error("invalid setting `{key}`: {message}")]
    Config {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl InrError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        InrError::Io { path: path.into(), source }
    }
    /// A format error in `path`.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        InrError::Format { path: path.into(), message: message.into() }
    }
}

impl From<deq_train::TrainError> for InrError {
    fn from(e: deq_train::TrainError) -> Self {
        match e {
            deq_train::TrainError::Candle(c) => InrError::Candle(c),
            deq_train::TrainError::Deq(d) => InrError::Deq(d),
            deq_train::TrainError::Io { path, source } => InrError::Io { path, source },
            deq_train::TrainError::Format { path, message } => InrError::Format { path, message },
            deq_train::TrainError::Config { key, message } => InrError::Config { key, message },
            deq_train::TrainError::Diverged { step, message } => InrError::Diverged { step, message },
            e @ deq_train::TrainError::Interrupted { .. } => InrError::Interrupted(e),
        }
    }
}

impl deq_train::faults::FaultChain for InrError {
    fn chain(&self) -> &(dyn std::error::Error + 'static) {
        self
    }
    fn is_numerical(&self) -> bool {
        // `Candle` and `Deq` are transparent (their sources skip the error they hold).
        match self {
            InrError::Diverged { .. } => true,
            InrError::Candle(c) => deq_train::faults::is_numerical_fault(c),
            InrError::Deq(d) => deq_train::faults::is_numerical_fault(d),
            _ => false,
        }
    }
}

/// Result alias of `deq-inr`.
pub type Result<T> = std::result::Result<T, InrError>;
