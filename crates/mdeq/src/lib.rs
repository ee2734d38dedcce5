//! # mdeq
//!
//! Multiscale deep equilibrium models (Bai, Koltun, Kolter 2020) as in the DEQ Zoo: a stem
//! injects the image into the finest of several resolutions; `f` runs a weight-normalised
//! residual block per branch and fuses the branches; deq-core solves the whole
//! multi-resolution state as one fixed point and attaches the phantom (or implicit) gradient;
//! a batch-norm head classifies the fixed point.
//!
//! | module | what it holds |
//! |---|---|
//! | [`model`] | `Mdeq` and its parts: [`model::block`], [`model::fusion`], [`model::head`] (convolutions and norms from `deq_train::layers`) |
//! | [`config`] | the run configuration (`[model]`, `[deq]`, `[train]`, `[data]`) |
//! | [`train`] | training, evaluation and prediction loops |
//! | [`bench`] | the timed training step of `mdeq-bench` (CPU or CUDA, peak GPU memory) |
//!
//! The binary `mdeq` trains (`mdeq train`, default: MNIST), evaluates and predicts;
//! `mdeq-bench` times the CIFAR-small training step.
//!
//! ## Example: one training step of a small MDEQ
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use deq_core::{rng::DeqRng, DeqConfig};
//! use deq_train::{Optimizer, Sgd};
//! use mdeq::{Mdeq, ModelConfig};
//!
//! # fn main() -> anyhow::Result<()> {
//! let cfg = ModelConfig {
//!     in_channels: 1, num_classes: 10, channels: vec![8, 8], head_channels: vec![2, 4],
//!     final_chansize: 16, expansion: 2, groups: 4, downsample_times: 1,
//! };
//! // Anderson forward solve, phantom gradient through 2 damped steps.
//! let deq = DeqConfig { f_solver: "anderson".into(), f_max_iter: 8, grad: vec![2], tau: 0.8, ..Default::default() };
//! let mut rng = DeqRng::new(0);
//! let model = Mdeq::new(cfg, deq, &mut rng, DType::F32, &Device::Cpu)?;
//! let mut opt = Sgd::new(model.named_vars(), 0.1, 0.9, false, 1e-4)?;
//! let x = rng.randn((4, 1, 28, 28), DType::F32, &Device::Cpu)?;
//! let y = Tensor::new(&[3u32, 1, 4, 1], &Device::Cpu)?;
//! let out = model.forward(&x, true)?;           // out.stats: NFE, residuals per sample
//! let loss = candle_nn::loss::cross_entropy(&out.logits, &y)?;
//! opt.step(&deq_core::grad::backward(&loss)?)?;
//! assert_eq!(out.logits.dims(), &[4, 10]);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod bench;
pub mod config;
pub mod model;
pub mod train;

pub use config::{DataConfig, RunConfig, TrainConfig};
pub use model::{Mdeq, MdeqOutput, ModelConfig};
