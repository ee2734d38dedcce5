//! Error type of `deq-train`.

use std::path::PathBuf;

/// Errors produced by the training runtime. File errors always name the file.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error from deq-core (solver, gradient or shape).
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
    /// A file exists but its content is not what its format requires.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration `{key}`: {message}")]
    Config {
        /// The offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// Training produced a non-finite loss or gradient.
    #[error("training diverged at step {step}: {message}")]
    Diverged {
        /// The optimiser step at which it was detected.
        step: usize,
        /// What was non-finite.
        message: String,
    },
    /// The run stopped on SIGINT or SIGTERM after writing the checkpoint of `step`
    /// (see [`crate::signals`]); `--resume` continues it.
    #[error("stopped by {signal} after step {step}; checkpoint written to {checkpoint}; continue with --resume")]
    Interrupted {
        /// `SIGINT` or `SIGTERM`.
        signal: &'static str,
        /// The last optimiser step taken.
        step: usize,
        /// The checkpoint written before stopping.
        checkpoint: PathBuf,
    },
}

/// Result alias of `deq-train`.
pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
    /// An invalid setting `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        TrainError::Config { key: key.into(), message: message.into() }
    }
    /// A format error in `path`.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TrainError::Format { path: path.into(), message: message.into() }
    }
}
