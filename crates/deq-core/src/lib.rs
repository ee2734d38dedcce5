//! # deq-core
//!
//! Deep equilibrium models (DEQs) on candle: a layer whose output is the fixed point
//! `z* = f(z*, x)`, found by a solver in the forward pass and differentiated implicitly (or with
//! phantom gradients) in the backward pass, so depth costs no activation memory.
//!
//! The vocabulary is TorchDEQ's: [`DeqConfig`] carries every `add_deq_args` option with the
//! same name and default, [`Deq`] is `get_deq`, and [`solver`] holds `fixed_point_iter`,
//! `simple_fixed_point_iter`, `anderson` and `broyden`. Where TorchDEQ has a defect the
//! behaviour is fixed and documented on the item concerned (see the `solver` module docs and
//! the README's list).
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | `DeqConfig` (TOML, validation) and `DeqArgs` (clap flags) |
//! | [`deq`] | the DEQ layer: sliced and indexing cores, train/eval budgets |
//! | [`solver`] | solvers, statistics, registry, small batched linear solves |
//! | [`grad`] | implicit differentiation (custom op), phantom gradients, amortised implicit gradients with a carried adjoint |
//! | [`gradcheck`] | finite-difference gradient checks (f64 central differences) for tests of custom ops and `f` |
//! | [`recompute`] | checkpointed training steps (no graph of `f` kept between passes) |
//! | [`loss`] | fixed-point correction, Jacobian regulariser, power method |
//! | [`nn`] | differentiable LayerNorm and softmax (candle's fused ones have no backward) |
//! | [`norm`] | weight/spectral-normalised Linear and Conv2d |
//! | [`dropout`] | variational dropout |
//! | [`ops`] | vectorised kernels (`tanh`) |
//! | [`state`] | multi-tensor states |
//!
//! ## Cargo features
//!
//! | feature | default | adds |
//! |---|---|---|
//! | `toml` | yes | [`DeqConfig::from_toml_str`], [`DeqConfig::to_toml_string`] |
//! | `cli` | yes | `DeqArgs` (TorchDEQ's flags for clap) and the `deq-bench` binary |
//! | `pruned-vjp` | no | pruned reverse passes ([`grad::vjp`]); needs a candle-core with `Tensor::op` public (this repository's `vendor/candle-core`, through `[patch.crates-io]`) |
//! | `cuda`, `cudnn` | no | candle's CUDA backend |
//!
//! With `default-features = false` deq-core depends on neither clap, anyhow nor toml; without
//! `pruned-vjp` it builds against crates.io's candle-core.
//!
//! ## Example: a DEQ layer trained with implicit differentiation
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor, Var};
//! use candle_nn::{loss::mse, Optimizer, SGD};
//! use deq_core::norm::{NormLinear, NormOptions};
//! use deq_core::rng::DeqRng;
//! use deq_core::{Deq, DeqConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let mut rng = DeqRng::new(0);
//! let cfg = DeqConfig::from_toml_str(
//!     "f_solver = 'anderson'\nf_max_iter = 30\nf_tol = 1e-6\nift = true\nb_solver = 'broyden'",
//! )?;
//! let deq = Deq::new(cfg.clone())?;
//! // f(z, x) = tanh(W z + U x), with W weight-normalised as configured.
//! let w = NormLinear::new(16, 16, false, NormOptions::from_config(&cfg), &mut rng, DType::F32, &dev)?;
//! let u = Var::from_tensor(&rng.randn((16, 4), DType::F32, &dev)?)?;
//! let x = rng.randn((8, 4), DType::F32, &dev)?;
//! let target = rng.randn((8, 16), DType::F32, &dev)?.tanh()?;
//!
//! let mut vars: Vec<Var> = w.named_vars().into_iter().map(|(_, v)| v).collect();
//! vars.push(u.clone());
//! let mut opt = SGD::new(vars, 0.5)?;
//! let z0 = Tensor::zeros((8, 16), DType::F32, &dev)?;
//! let mut losses = Vec::new();
//! for _ in 0..5 {
//!     w.reset()?; // recompute the normalised weight once per step
//!     let out = deq.forward1(
//!         |z, inp| deq_core::ops::tanh(&(w.forward(z)? + inp[0].matmul(&u.as_tensor().t()?)?)?),
//!         &[x.clone()],
//!         &z0,
//!     )?;
//!     let loss = mse(out.z(), &target)?;
//!     losses.push(loss.to_scalar::<f32>()?);
//!     opt.backward_step(&loss)?; // the adjoint system is solved here
//! }
//! assert!(losses[4] < losses[0]);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod deq;
pub mod dropout;
pub mod error;
pub mod grad;
pub mod gradcheck;
pub mod loss;
pub mod nn;
pub mod norm;
pub mod ops;
pub mod problems;
pub mod recompute;
pub mod rng;
pub mod solver;
pub mod state;

#[cfg(feature = "cli")]
pub use config::DeqArgs;
pub use config::{Core, DeqConfig, NormType};
pub use deq::{Deq, DeqOutput};
pub use recompute::{RecomputeReport, Recomputed};
pub use error::{DeqError, Result};
pub use solver::{get_solver, register_solver, Solution, Solver, SolverOptions, SolverStats, StopMode};

#[cfg(test)]
pub(crate) mod testing {
    pub use crate::problems::{hard_tanh_problem, linear_tanh_problem, Problem};
}
