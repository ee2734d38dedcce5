//! Error type of `deq-core`.

/// Errors produced by the DEQ library.
#[derive(Debug, thiserror::Error)]
pub enum DeqError {
    /// An error from candle (shape, dtype, device or kernel errors).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration key is unknown or has an invalid value.
    #[error("invalid DEQ configuration: `{key}`: {message}")]
    Config {
        /// The offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// TOML parsing failed (includes unknown keys, which are rejected).
    #[error("invalid DEQ configuration TOML: {0}")]
    Toml(String),
    /// No solver is registered under this name.
    #[error("unknown solver `{0}` (known: {1})")]
    UnknownSolver(String, String),
    /// Shapes that must agree do not.
    #[error("shape mismatch in {context}: {message}")]
    Shape {
        /// Where the mismatch was found.
        context: &'static str,
        /// Details.
        message: String,
    },
    /// The fixed-point function produced NaN or Inf for every candidate of some sample.
    #[error("non-finite values (NaN/Inf) in {context}: samples {samples:?}")]
    NonFinite {
        /// Where the values were found.
        context: &'static str,
        /// Indices of the affected samples.
        samples: Vec<usize>,
    },
    /// A solve moved away from its fixed point: for the listed samples the residual grew
    /// (last above [`crate::solver::DIVERGENCE_FACTOR`] times the first) and never met the
    /// tolerance, so its best iterate is not a solution (an adjoint system whose Jacobian has
    /// spectral radius above one gives a wrong gradient this way).
    #[error("diverging {context}: samples {samples:?}; {summary}")]
    Diverging {
        /// Which solve.
        context: &'static str,
        /// Indices of the diverging samples.
        samples: Vec<usize>,
        /// The solve's statistics in one line (NFE, first, lowest and last residuals).
        summary: String,
    },
    /// A linear system is singular.
    #[error("singular linear system in {0}")]
    Singular(&'static str),
}

/// Result alias used throughout `deq-core`.
pub type Result<T> = std::result::Result<T, DeqError>;

pub(crate) fn shape_err(context: &'static str, message: impl Into<String>) -> DeqError {
    DeqError::Shape { context, message: message.into() }
}
