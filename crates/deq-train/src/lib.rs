//! # deq-train
//!
//! What every DEQ-zoo trainer shares: optimisers and learning-rate schedules, gradient
//! clipping, checkpoints (safetensors + JSON sidecar, written atomically), metrics as JSON
//! lines, progress reporting, dataset readers (IDX, CIFAR-10 binary, image folders),
//! augmentations, a shuffling/batching background loader, and the data-parallel context
//! (rank, world size, sharded sampling, the gradient all-reduce point).
#![warn(missing_docs)]

pub mod checkpoint;
pub mod clip;
pub mod data;
pub mod dist;
pub mod error;
pub mod metrics;
pub mod optim;
pub mod progress;
pub mod runtime;
pub mod schedule;

pub use checkpoint::{load_vars, Checkpoint, Checkpointer};
pub use clip::{clip_grad_norm, clip_grad_value, grad_norm};
pub use dist::{collective_for, Collective, DistContext, SingleProcess};
pub use error::{Result, TrainError};
pub use metrics::{accuracy, topk_correct, MetricsWriter};
pub use optim::{Adam, Optimizer, Sgd};
pub use progress::Progress;
pub use runtime::{check_finite, run_on_pool};
pub use schedule::Schedule;
