//! # deq-inr
//!
//! (Implicit)^2 (Huang, Bai and Kolter, NeurIPS 2021; DEQ Zoo's `deq-inr`): implicit neural
//! representations whose network is a deep equilibrium model. Coordinates `x` are injected as
//! `L + 1` filters `u_0 .. u_L` (`siren_like`, `fourier` or `gabor`), the state solves
//! `z* = f(z*; x)` with `L` weight-normalised layers inside `f`, and a linear map reads the signal
//! out. Training is amortised: after a first full solve, each step starts from the previous
//! step's state and takes only the phantom-gradient steps, or (`amortised_grad =
//! "carried_adjoint"`) one tracked step differentiated with an adjoint carried from step to step
//! (`deq_core::grad::AdjointCarry`: the implicit gradient at the cost of a phantom step). An
//! explicit SIREN of equal parameter count is the baseline, trained by the same loop.
//!
//! | module | what it holds |
//! |---|---|
//! | [`filter`] | filter kinds and the injection |
//! | [`model`] | the DEQ-INR and its configuration |
//! | [`kernels`] | the fused `sin(a + c + u)` of siren-like layers |
//! | [`siren`] | the SIREN baseline |
//! | [`net`] | one interface over both for the trainer |
//! | [`fit`] | the fitting loop, PSNR evaluation, checkpoints |
//! | [`task`] | coordinates, targets and PSNR for images, audio and video |
//! | [`image_io`] | PNG/JPEG reading, resizing, PNG writing |
//! | [`wav`] | WAV reading (PCM and float) and writing |
//! | [`compress`] | f16 model files, bits per sample |
//! | [`config`] | the run configuration |
//! | [`run`] | a complete fit with its output files |
//! | [`error`] | the error type |
//!
//! ## Example: fit a small image
//!
//! ```
//! use deq_inr::fit::{fit, FitConfig, FitOptions};
//! use deq_inr::image_io::Image;
//! use deq_inr::model::{zoo_deq, DeqInr, InrModelConfig};
//! use deq_inr::net::InrNet;
//! use deq_inr::task::image_representation;
//!
//! // A 16 x 16 grey gradient.
//! let data = (0..256).map(|i| (i % 16) as f32 / 15.0).collect();
//! let img = Image { height: 16, width: 16, channels: 1, data };
//! let (train, test) = image_representation(&img, 0);
//! let cfg = InrModelConfig { width: 32, input_scale: 16.0, ..Default::default() };
//! let mut rng = deq_core::rng::DeqRng::new(0);
//! let model = DeqInr::new(cfg, 2, 1, zoo_deq(20), &mut rng, candle_core::DType::F32, &candle_core::Device::Cpu)?;
//! let net = InrNet::Deq(model);
//! let fc = FitConfig { steps: 30, lr: 1e-3, eval_every: 30, ..Default::default() };
//! let r = fit(&net, &train, &test, &fc, &FitOptions::default())?;
//! assert!(r.last().test_psnr > 10.0);
//! assert_eq!(r.f_evals_per_step, 3.0); // amortised: only the 3 phantom-gradient steps
//! # Ok::<(), deq_inr::error::InrError>(())
//! ```
#![warn(missing_docs)]

pub mod compress;
pub mod config;
pub mod error;
pub mod filter;
pub mod fit;
pub mod image_io;
pub mod kernels;
pub mod model;
pub mod net;
pub mod run;
pub mod siren;
pub mod task;
pub mod wav;

pub use error::{InrError, Result};
pub use filter::FilterKind;
pub use model::{DeqInr, InrModelConfig};
