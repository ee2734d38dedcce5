//! Errors of the graph readers: every one names the file and, where it applies, the line.

use std::path::{Path, PathBuf};

/// A malformed or missing graph file.
#[derive(Debug, thiserror::Error)]
pub enum GraphFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line does not follow the format.
    #[error("{path}:{line}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0: the file as a whole).
        line: usize,
        /// What is wrong.
        message: String,
    },
}

pub(crate) fn read(path: &Path) -> Result<String, GraphFileError> {
    std::fs::read_to_string(path).map_err(|source| GraphFileError::Io { path: path.to_path_buf(), source })
}

pub(crate) fn bad(path: &Path, line: usize, message: impl Into<String>) -> GraphFileError {
    GraphFileError::Format { path: path.to_path_buf(), line, message: message.into() }
}

