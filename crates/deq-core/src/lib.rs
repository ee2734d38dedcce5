//! # deq-core
//!
//! Deep equilibrium models on candle.
#![warn(missing_docs)]

pub mod error;
pub mod problems;
pub mod rng;
pub mod solver;
pub mod state;

pub use error::{DeqError, Result};

#[cfg(test)]
pub(crate) mod testing {
    pub use crate::problems::{hard_tanh_problem, linear_tanh_problem, Problem};
}
