//! # mdeq
//!
//! Multiscale deep equilibrium models (Bai, Koltun, Kolter 2020) as in the DEQ Zoo: the
//! multi-resolution state is one fixed point solved jointly by deq-core.
#![warn(missing_docs)]

pub mod config;
pub mod model;
pub mod train;

pub use config::{DataConfig, RunConfig, TrainConfig};
pub use model::{Mdeq, MdeqOutput, ModelConfig};
