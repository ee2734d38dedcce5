//! The configuration of an MDEQ run: `[model]`, `[deq]` (deq-core's `DeqConfig`, TorchDEQ
//! names), `[train]` and `[data]` tables in one TOML file. Unknown keys are errors that name
//! the key.

use crate::model::ModelConfig;
use deq_core::DeqConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Optimisation settings (`[train]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    pub eval_batch_size: usize,
    /// `sgd`, `adam` or `adamw`.
    pub optimizer: String,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    pub nesterov: bool,
    /// Weight decay (coupled for SGD and Adam, decoupled for AdamW).
    pub weight_decay: f64,
    /// `cosine` (per iteration, with `warmup_epochs`), `step`, `onecycle` or `constant`.
    pub schedule: String,
    /// Linear warm-up length in epochs (cosine).
    pub warmup_epochs: f64,
    /// Final learning rate (cosine).
    pub min_lr: f64,
    /// Epochs between decays (step).
    pub step_epochs: usize,
    /// Decay factor (step).
    pub gamma: f64,
    /// Clip the global gradient norm to this value (0: off).
    pub grad_clip: f64,
    /// Seed of initialisation, shuffling, augmentation.
    pub seed: u64,
    /// Use only the first N training images (0: all).
    pub train_limit: usize,
    /// Use only the first N test images (0: all).
    pub test_limit: usize,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Also write a checkpoint every this many optimiser steps within an epoch (0: only at
    /// the end of every epoch). A resumed run continues from the batch after it, with the
    /// same parameters, optimiser state and metrics as a run that did not stop.
    pub checkpoint_every: usize,
    /// What a batch with NaN or Inf (in the data, the forward solve, the loss, the adjoint
    /// solve or the gradient) or a diverging adjoint solve does: `stop` the run with a message
    /// naming the step and stage, or `skip` the batch (no optimiser step) and count it.
    pub on_nonfinite: deq_train::faults::OnNonFinite,
    /// With `on_nonfinite = "skip"`: the run stops once more batches than this were skipped.
    pub max_skipped: usize,
    /// Compute threads (rayon); 0 leaves `RAYON_NUM_THREADS` or the machine default.
    pub threads: usize,
    /// Floating-point type of the parameters and activations: `f32`, or `f64` (slower; for
    /// checks that must be exact to rounding, such as data-parallel equivalence).
    pub dtype: String,
}

impl TrainConfig {
    /// The [`candle_core::DType`] of `dtype` (validated by [`RunConfig::validate`]).
    pub fn dtype(&self) -> candle_core::DType {
        if self.dtype == "f64" {
            candle_core::DType::F64
        } else {
            candle_core::DType::F32
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            eval_batch_size: 500,
            optimizer: "sgd".into(),
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            schedule: "cosine".into(),
            warmup_epochs: 0.0,
            min_lr: 1e-6,
            step_epochs: 30,
            gamma: 0.1,
            grad_clip: 0.0,
            seed: 0,
            train_limit: 0,
            test_limit: 0,
            keep_checkpoints: 2,
            checkpoint_every: 0,
            on_nonfinite: deq_train::faults::OnNonFinite::Stop,
            max_skipped: 10,
            threads: 0,
            dtype: "f32".into(),
        }
    }
}

/// Dataset settings (`[data]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `mnist`, `cifar10` or `imagenet` (an image folder with `train/` and `val/`).
    pub dataset: String,
    /// Folder of the dataset; empty: `$DEQ_DATA_DIR/<dataset>` or `datasets/<dataset>`.
    pub dir: String,
    /// Per-channel normalisation mean.
    pub mean: Vec<f32>,
    /// Per-channel normalisation standard deviation.
    pub std: Vec<f32>,
    /// Random-crop padding (0: off).
    pub crop_padding: usize,
    /// Random horizontal flips.
    pub flip: bool,
    /// Random-resized-crop (ImageNet) instead of padded crops.
    pub random_resized_crop: bool,
    /// Training image side for image folders (and random-resized-crop output).
    pub image_size: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { dataset: "mnist".into(), dir: String::new(), mean: vec![0.1307], std: vec![0.3081], crop_padding: 0, flip: false, random_resized_crop: false, image_size: 224 }
    }
}

/// The whole run configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Architecture.
    pub model: ModelConfig,
    /// DEQ solver and gradient settings (TorchDEQ names).
    #[serde(default)]
    pub deq: DeqConfig,
    /// Optimisation.
    #[serde(default)]
    pub train: TrainConfig,
    /// Data.
    #[serde(default)]
    pub data: DataConfig,
}

/// Errors of loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or `built-in`).
        origin: String,
        /// The parser's message (it names the key).
        message: String,
    },
    /// A value is out of range.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file (or `built-in`).
        origin: String,
        /// What is wrong.
        message: String,
    },
}

impl RunConfig {
    /// Parses and validates a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| ConfigError::Parse { origin: origin.into(), message: e.to_string() })?;
        cfg.validate().map_err(|message| ConfigError::Invalid { origin: origin.into(), message })?;
        Ok(cfg)
    }

    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<(), String> {
        self.model.validate()?;
        self.deq.validate().map_err(|e| format!("deq: {e}"))?;
        let t = &self.train;
        if t.batch_size == 0 || t.eval_batch_size == 0 {
            return Err("train.batch_size: must be positive".into());
        }
        if !["sgd", "adam", "adamw"].contains(&t.optimizer.as_str()) {
            return Err(format!("train.optimizer: `{}` is not sgd, adam or adamw", t.optimizer));
        }
        if !["cosine", "step", "onecycle", "constant"].contains(&t.schedule.as_str()) {
            return Err(format!("train.schedule: `{}` is not cosine, step, onecycle or constant", t.schedule));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err("train.lr: must be positive".into());
        }
        if !["f32", "f64"].contains(&t.dtype.as_str()) {
            return Err(format!("train.dtype: `{}` is not f32 or f64 (bf16 is not offered: the solvers' residuals and Broyden updates lose the tolerances of the zoo's configs in bf16, and no GPU run has checked a mixed-precision path yet)", t.dtype));
        }
        let d = &self.data;
        if !["mnist", "cifar10", "imagenet"].contains(&d.dataset.as_str()) {
            return Err(format!("data.dataset: `{}` is not mnist, cifar10 or imagenet", d.dataset));
        }
        if d.mean.len() != self.model.in_channels || d.std.len() != self.model.in_channels {
            return Err(format!("data.mean/std: need {} values (model.in_channels)", self.model.in_channels));
        }
        Ok(())
    }

    /// The configuration as TOML (written next to the run's outputs).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialise")
    }
}

/// The default run (`configs/mdeq/mnist-small.toml`), compiled in so that `mdeq train` works
/// from any directory.
pub const MNIST_SMALL: &str = include_str!("../../../configs/mdeq/mnist-small.toml");

impl deq_train::cli::TrainerConfig for RunConfig {
    const SEED_SECTION: &'static str = "train";
    fn deq_mut(&mut self) -> &mut DeqConfig {
        &mut self.deq
    }
    fn validate(&self) -> Result<(), String> {
        RunConfig::validate(self)
    }
}
