//! Error type of `deq-ddim`: deq-train's [`TrainError`](deq_train::TrainError), whose variants
//! (candle and deq-core errors, I/O and format errors naming the file, invalid settings naming
//! the key, a diverged run naming the step) are exactly the ones this crate reports.

pub use deq_train::TrainError as DdimError;

/// Result alias of `deq-ddim`.
pub type Result<T> = std::result::Result<T, DdimError>;
