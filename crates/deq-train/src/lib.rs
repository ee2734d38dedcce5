//! # deq-train
//!
//! What every DEQ-zoo trainer shares: optimisers and learning-rate schedules, gradient
//! clipping, checkpoints (safetensors + JSON sidecar, written atomically), metrics as JSON
//! lines, progress reporting, dataset readers (IDX, CIFAR-10 binary, image folders),
//! augmentations, a shuffling/batching background loader, and the data-parallel context
//! (rank, world size, sharded sampling, the gradient all-reduce point).
//!
//! | module | what it holds |
//! |---|---|
//! | [`optim`] | [`Sgd`] (momentum, Nesterov, weight decay), [`Adam`] / AdamW |
//! | [`schedule`] | cosine with warm-up, step, one-cycle |
//! | [`solver_metrics`] | solver statistics per evaluation (NFE, residuals, spectral radius, probe traces) |
//! | [`plot`] | the `plot` subcommand: training curves and convergence diagnostics as PNG |
//! | [`ema`] | exponential moving average of the weights (diffusion models) |
//! | [`clip`] | gradient clipping by global norm and by value |
//! | [`checkpoint`] | safetensors + JSON sidecar, atomic, resumable |
//! | [`cli`] | the flags every binary shares (`--config`, `--set`, `--out`, ...), config loading, logging |
//! | [`loss`] | stable BCE with logits |
//! | [`objective`] | the `[deq]` options that act on the loss: fixed-point correction, Jacobian regulariser |
//! | [`memory`] | counting allocator and peak RSS for benchmarks |
//! | [`bench_instance`] | problem instances shared by a benchmark and its PyTorch twin |
//! | [`metrics`] | JSON-lines writer, top-k accuracy, micro-F1 |
//! | [`progress`] | progress bars (plain lines when not a terminal) |
//! | [`data`] | IDX, CIFAR-10, image folders, augmentations, the loader |
//! | [`dist`] | rank / world size, the all-reduce point, rank-0 side effects |
//! | [`runtime`] | thread-pool setup, divergence guard |
//! | [`faults`] | numerical faults (NaN/Inf, diverging solves): stop naming step and stage, or skip and count |
//! | [`run_lock`] | one writer per run folder (lock file with pid and host, stale locks replaced) |
//! | [`signals`] | clean stops on SIGINT/SIGTERM: checkpoint, then exit code 75 |
//! | [`hostile`] | damaged copies of good files: the no-panic check every reader's tests run |
//!
//! ## Example: a training loop with every piece
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use deq_train::data::{ImageDataset, Loader, LoaderConfig};
//! use deq_train::{check_finite, Checkpointer, MetricsWriter, Optimizer, Schedule, Sgd};
//! use std::sync::Arc;
//!
//! # fn main() -> anyhow::Result<()> {
//! // 64 random 1x4x4 "images" in 2 classes.
//! let images: Vec<u8> = (0..64 * 16).map(|i| ((i * 37) % 251) as u8).collect();
//! let labels: Vec<u32> = (0..64).map(|i| (i % 2) as u32).collect();
//! let ds = Arc::new(ImageDataset::new(images, labels, 1, 4, 4, 2)?);
//! let loader = Loader::new(ds, LoaderConfig { batch_size: 16, seed: 1, ..Default::default() })?;
//!
//! let w = Var::zeros((2, 16), DType::F32, &Device::Cpu)?;
//! let mut opt = Sgd::new(vec![("w".into(), w.clone())], 0.1, 0.9, false, 0.0)?;
//! let schedule = Schedule::Cosine { warmup_steps: 2, total_steps: 8, min_lr: 0.0 };
//! let dir = std::env::temp_dir().join(format!("deq-train-doc-{}", std::process::id()));
//! let ckpt = Checkpointer::new(dir.join("checkpoints"), 2)?;
//! let mut metrics = MetricsWriter::open(dir.join("metrics.jsonl"))?;
//! let mut step = 0;
//! for epoch in 0..2 {
//!     for batch in loader.epoch(epoch) {
//!         let batch = batch?;
//!         opt.set_lr(schedule.lr_at(0.1, step));
//!         let x = batch.images.flatten_from(1)?;
//!         let logits = x.matmul(&w.as_tensor().t()?)?;
//!         let loss = candle_nn::loss::cross_entropy(&logits, &batch.labels)?;
//!         check_finite("loss", loss.to_scalar::<f32>()? as f64, step)?;
//!         opt.step(&loss.backward()?)?;
//!         step += 1;
//!     }
//!     metrics.write(&serde_json::json!({"epoch": epoch, "step": step}))?;
//!     ckpt.save(step, &[("model.w".to_string(), w.as_tensor().clone())], serde_json::json!({"epoch": epoch + 1}))?;
//! }
//! assert_eq!(ckpt.load_latest(&Device::Cpu)?.unwrap().step, 8);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod bench_instance;
pub mod checkpoint;
pub mod cli;
pub mod clip;
pub mod data;
pub mod dist;
pub mod ema;
pub mod error;
pub mod faults;
#[cfg(feature = "cuda")]
pub mod gpu_memory;
pub mod hostile;
pub mod layers;
pub mod loss;
pub mod memory;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod progress;
pub mod run_lock;
pub mod runtime;
pub mod schedule;
pub mod signals;
pub mod solver_metrics;
pub mod plot;

pub use checkpoint::{load_vars, write_atomic, Checkpoint, Checkpointer};
pub use ema::Ema;
pub use clip::{clip_grad_norm, clip_grad_value, grad_norm};
pub use dist::{collective_for, Collective, DistContext, SingleProcess, TcpGroup, ThreadGroup};
pub use error::{Result, TrainError};
pub use loss::bce_with_logits;
pub use metrics::{accuracy, micro_f1, topk_correct, MetricsWriter};
pub use objective::{DeqObjective, JacTerm};
pub use optim::{Adam, Optimizer, Sgd};
pub use progress::Progress;
pub use runtime::{check_finite, run_on_pool, RunOptions};
pub use schedule::Schedule;
pub use solver_metrics::{probe_trace, SolverMetrics};
