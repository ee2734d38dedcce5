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
