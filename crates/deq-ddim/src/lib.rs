//! # deq-ddim
//!
//! DEQ-DDIM (Pokle, Geng & Kolter, NeurIPS 2022): the whole DDIM sampling chain
//! `x_T -> ... -> x_0` as one fixed point over the stacked trajectory, solved with deq-core's
//! solvers; model inversion (find the `x_T` that generates an image) with a phantom gradient
//! through that fixed point; and everything around it: the DDPM UNet with the public
//! checkpoints' parameter names, beta schedules, sequential DDIM and DDPM samplers, DDPM
//! training.
//!
//! | module | what it holds |
//! |---|---|
//! | [`schedule`] | beta schedules, `alpha_bar`, timestep sub-sequences |
//! | [`unet`] | the noise model |
//! | [`sampler`] | sequential DDIM and DDPM, DEQ sampling of the whole trajectory |
//! | [`sample`] | one entry point for all samplers, with seeded noise |
//! | [`invert`] | inversion: DEQ with a phantom gradient, or backpropagation through the chain |
//! | [`train`] | DDPM training (epsilon loss, Adam, EMA, checkpoints, grids) |
//! | [`config`] | the run configuration (TOML) |
//! | [`grid`] | sample grids and images in and out |
//!
//! See `REFERENCE.md` in this crate for the reference code's semantics this crate follows.
//!
//! ## Example: DEQ sampling reaches the sequential DDIM images in fewer rounds
//!
//! ```
//! use candle_core::{DType, Device};
//! use deq_core::rng::DeqRng;
//! use deq_ddim::sampler::{sequential, trajectory, Steps};
//! use deq_ddim::schedule::{timesteps, DiffusionConfig, SkipType};
//! use deq_ddim::unet::{UNet, UNetConfig};
//!
//! # fn main() -> anyhow::Result<()> {
//! let cfg = UNetConfig { in_channels: 1, out_ch: 1, ch: 32, ch_mult: vec![1, 2], num_res_blocks: 1, attn_resolutions: vec![4], dropout: 0.0, resolution: 8, resamp_with_conv: true, norm_groups: 32 };
//! let model = UNet::new(&cfg, &mut DeqRng::new(0), DType::F32, &Device::Cpu)?;
//! let schedule = DiffusionConfig::default().schedule()?;
//! let steps = Steps::new(&schedule, &timesteps(1000, 10, SkipType::Uniform)?);
//! let x_t = DeqRng::new(1).randn((2, 1, 8, 8), DType::F32, &Device::Cpu)?;
//! let (x0, seq) = sequential::ddim(&model, &steps, &x_t, 0.0, None)?;
//! let opts = trajectory::DeqSampleConfig { tol: 1e-5, ..Default::default() };
//! let deq = trajectory::deq(&model, &steps, &x_t, 0.0, None, &opts, None)?;
//! let diff = (&deq.images - &x0)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(diff < 1e-3, "{diff}");
//! println!("{} sequential rounds against {}", deq.stats.rounds, seq.rounds);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod grid;
pub mod invert;
pub mod sample;
pub mod sampler;
pub mod schedule;
pub mod train;
pub mod unet;

pub use error::{DdimError, Result};
