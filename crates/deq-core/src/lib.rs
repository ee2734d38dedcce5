//! # deq-core
//!
//! Deep equilibrium models on candle.
#![warn(missing_docs)]

pub mod config;
pub mod deq;
pub mod dropout;
pub mod error;
pub mod grad;
pub mod loss;
pub mod norm;
pub mod ops;
pub mod problems;
pub mod rng;
pub mod solver;
pub mod state;

pub use config::{Core, DeqArgs, DeqConfig, NormType};
pub use deq::{Deq, DeqOutput};
pub use error::{DeqError, Result};
pub use solver::{get_solver, register_solver, Solution, Solver, SolverOptions, SolverStats, StopMode};

#[cfg(test)]
pub(crate) mod testing {
    pub use crate::problems::{hard_tanh_problem, linear_tanh_problem, Problem};
}
