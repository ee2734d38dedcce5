//! # deq-flow
//!
//! DEQ-Flow (Bai, Geng, Savani and Kolter, CVPR 2022; the DEQ Zoo's `deq-flow`): optical flow
//! with RAFT's architecture in which the recurrent update is a fixed point. RAFT's feature and
//! context encoders and its all-pairs correlation pyramid are computed once per frame pair; the
//! update block (motion encoder, separable GRU, flow head) is the fixed-point function over the
//! joint state (GRU hidden state, 1/8-resolution coordinates), solved by deq-core and trained
//! with phantom gradients and fixed-point correction over several states of the solve.
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | the run configuration (TOML tables, validation) |
//! | [`train`] | the training loop, checkpoints, batches |
//! | [`eval`] | evaluation on Sintel, KITTI, Chairs and folders |
//! | [`model`] | `DeqFlow`, its configuration, encoders, correlation pyramid, update block |
//! | [`ops`] | the correlation lookup op, convex upsampling, pooling |
//! | [`loss`] | the fixed-point correction loss and the flow metrics (EPE, 1/3/5 px, F1-all) |
//! | [`data`] | the synthetic pair generator (datasets and augmentation to follow) |
//! | [`flow`] | the flow-field type |
//! | [`infer`] | padding to a multiple of 8, prediction on frames of any size |
//! | [`io`] | `.flo`, `.pfm`, KITTI PNG flow, frames, the colour wheel |
//! | [`error`] | the error type |
//!
//! ## Example: one training step's forward pass and loss on random frames
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use deq_core::{norm::NormOptions, rng::DeqRng, DeqConfig};
//! use deq_flow::model::{deq_layer, DeqFlow, ModelConfig};
//!
//! let dev = Device::Cpu;
//! let mut cfg = ModelConfig::tiny();
//! cfg.encoder_dims = [8, 8, 8];
//! cfg.corr_levels = 2;
//! let deq_cfg = DeqConfig { f_solver: "simple_fixed_point_iter".into(), f_max_iter: 4, n_states: 2, ..Default::default() };
//! let mut rng = DeqRng::new(0);
//! let model = DeqFlow::new(&cfg, &NormOptions::from_config(&deq_cfg), &mut rng, DType::F32, &dev)?;
//! let deq = deq_layer(&deq_cfg, true, 0)?;
//! let img1 = rng.rand((1, 3, 32, 48), 0.0, 255.0, DType::F32, &dev)?;
//! let img2 = rng.rand((1, 3, 32, 48), 0.0, 255.0, DType::F32, &dev)?;
//! let out = model.forward(&img1, &img2, None, &deq, true)?;
//! assert_eq!(out.flows.len(), 2); // one full-resolution flow per supervised state
//! assert_eq!(out.flows[1].dims(), &[1, 2, 32, 48]);
//! let gt = Tensor::zeros((1, 2, 32, 48), DType::F32, &dev)?;
//! let valid = Tensor::ones((1, 32, 48), DType::F32, &dev)?;
//! let loss = deq_flow::loss::sequence_loss(&out.flows, &gt, &valid, 0.8, 400.0)?;
//! let grads = deq_core::grad::backward(&loss)?;
//! assert!(model.named_vars().iter().any(|(_, v)| grads.get(v.as_tensor()).is_some()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod flow;
pub mod infer;
pub mod io;
pub mod loss;
pub mod model;
pub mod ops;
pub mod train;

pub use error::{FlowError, Result};
pub use flow::Flow;
pub use model::{DeqFlow, FlowOutput, ModelConfig};
