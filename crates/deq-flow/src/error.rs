//! Error type of `deq-flow`. File errors name the file.

use std::path::PathBuf;

/// Errors of the library.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
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
    /// Training produced a non-finite value.
    #[error("training diverged at step {step}: {message}")]
    Diverged {
        /// The step.
        step: usize,
        /// What was non-finite.
        message: String,
    },
    /// An invalid setting.
    #[error("invalid setting `{key}`: {message}")]
    Config {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl FlowError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FlowError::Io { path: path.into(), source }
    }
    /// A format error in `path`.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        FlowError::Format { path: path.into(), message: message.into() }
    }
    /// An invalid setting `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        FlowError::Config { key: key.into(), message: message.into() }
    }
}

impl From<deq_train::TrainError> for FlowError {
    fn from(e: deq_train::TrainError) -> Self {
        match e {
            deq_train::TrainError::Candle(c) => FlowError::Candle(c),
            deq_train::TrainError::Deq(d) => FlowError::Deq(d),
            deq_train::TrainError::Io { path, source } => FlowError::Io { path, source },
            deq_train::TrainError::Format { path, message } => FlowError::Format { path, message },
            deq_train::TrainError::Config { key, message } => FlowError::Config { key, message },
            deq_train::TrainError::Diverged { step, message } => FlowError::Diverged { step, message },
        }
    }
}

/// Result alias of `deq-flow`.
pub type Result<T> = std::result::Result<T, FlowError>;
