//! The run configuration: `[model]`, `[deq]`, `[train]`, `[data]` (with `[data.augment]` and
//! `[data.synthetic]`) and `[eval]` tables. Unknown keys are errors naming the key; options the
//! trainer cannot honour are refused by [`RunConfig::validate`].

use std::path::PathBuf;

use deq_core::DeqConfig;
use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
use crate::data::synth::SynthConfig;
use crate::infer::PadMode;
use crate::model::ModelConfig;

/// The zoo's Chairs recipe for DEQ-Flow-B (`configs/deq-flow/chairs-B.toml`).
pub const CHAIRS_B: &str = include_str!("../../../configs/deq-flow/chairs-B.toml");
/// The CPU configuration trained on generated pairs (`configs/deq-flow/synthetic-tiny.toml`).
pub const SYNTHETIC_TINY: &str = include_str!("../../../configs/deq-flow/synthetic-tiny.toml");

/// Training data sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainData {
    /// Pairs generated from photographs ([`crate::data::synth`]).
    Synthetic,
    /// FlyingChairs, training split.
    Chairs,
    /// FlyingThings3D, clean and final passes.
    Things,
    /// MPI-Sintel training, clean and final passes.
    Sintel,
    /// KITTI-2015 training (sparse).
    Kitti,
    /// HD1K (sparse).
    Hd1k,
}

/// The `[train]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Pairs per step (per rank in data-parallel jobs).
    pub batch_size: usize,
    /// Peak learning rate of the one-cycle schedule (AdamW).
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Adam's epsilon.
    pub epsilon: f64,
    /// Gradient-norm clipping (0: off).
    pub clip: f64,
    /// Ground truth above this magnitude is left out of the loss.
    pub max_flow: f64,
    /// Share of the one-cycle schedule spent warming up (RAFT: 0.05; the schedule runs over
    /// `steps + 100` steps as RAFT's).
    pub pct_start: f64,
    /// Keep the context encoder's batch norms on their running statistics (every stage after
    /// Chairs).
    pub freeze_bn: bool,
    /// Seed of initialisation, data order and augmentation.
    pub seed: u64,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// `f32` or `f64`.
    pub dtype: String,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Log a metrics line every this many steps.
    pub log_every: usize,
    /// Start from this checkpoint's weights (a `latest.json` or run folder; e.g. Things from
    /// Chairs), optimiser and schedule fresh.
    pub init: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many minutes of training (0: no limit).
    pub time_limit_minutes: f64,
    /// What a batch with NaN or Inf (in the frames, the forward solve, the loss, the adjoint
    /// solve or the gradient) or a diverging adjoint solve does: `stop` the run with a message
    /// naming the step and stage, or `skip` the batch (the step passes without an optimiser
    /// update) and count it.
    pub on_nonfinite: deq_train::faults::OnNonFinite,
    /// With `on_nonfinite = "skip"`: the run stops once more batches than this were skipped.
    pub max_skipped: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { steps: 120_000, batch_size: 12, lr: 4e-4, weight_decay: 1e-4, epsilon: 1e-8, clip: 1.0, max_flow: 400.0, pct_start: 0.05, freeze_bn: false, seed: 1234, threads: 0, dtype: "f32".into(), eval_every: 5000, checkpoint_every: 5000, log_every: 100, init: None, time_limit_minutes: 0.0, on_nonfinite: deq_train::faults::OnNonFinite::Stop, max_skipped: 10 }
    }
}

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// What to train on.
    pub train: TrainData,
    /// The dataset's root (default: `$DEQ_DATA_DIR/<name>`, then `datasets/<name>`; names
    /// `FlyingChairs_release`, `FlyingThings3D`, `Sintel`, `KITTI`, `HD1k`).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Spatial augmentation.
    pub augment: AugmentConfig,
    /// The generator (synthetic data only).
    #[serde(default)]
    pub synthetic: SynthConfig,
    /// Folders of photographs for the generator (PNG/JPEG, searched recursively one level).
    #[serde(default)]
    pub images: Vec<PathBuf>,
    /// Generated pairs per epoch (synthetic data: the epoch length of the data order).
    #[serde(default = "default_pairs")]
    pub pairs_per_epoch: usize,
}

fn default_pairs() -> usize {
    10_000
}

/// The `[eval]` table: what `train` evaluates during training and `eval` by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Datasets: `sintel`, `kitti`, `chairs`, or `folder:<path>` (the folder layout).
    pub datasets: Vec<String>,
    /// At most this many pairs per dataset (0: all).
    pub max_pairs: usize,
    /// Padding of frames to a multiple of 8 for `folder` and `sintel` (KITTI always pads at
    /// the bottom).
    pub pad: PadMode,
    /// The forward solver in evaluation, when it differs from training's (the zoo trains with
    /// `simple_fixed_point_iter` and evaluates with `fixed_point_iter`, which returns each
    /// sample's lowest-residual iterate).
    pub f_solver: Option<String>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { datasets: vec!["sintel".into()], max_pairs: 0, pad: PadMode::Sintel, f_solver: None }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Architecture.
    pub model: ModelConfig,
    /// The DEQ (TorchDEQ's options; `gamma` weighs the supervised states in the loss).
    #[serde(default)]
    pub deq: DeqConfig,
    /// Optimisation.
    #[serde(default)]
    pub train: TrainConfig,
    /// Training data.
    pub data: DataConfig,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalConfig,
}

impl RunConfig {
    /// Parses TOML (`origin` names the text in errors).
    pub fn from_toml(text: &str, origin: &str) -> std::result::Result<Self, String> {
        let cfg: Self = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        cfg.validate().map_err(|e| format!("{origin}: {e}"))?;
        Ok(cfg)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a configuration serialises")
    }

    /// Checks every section; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.model.validate()?;
        self.deq.validate().map_err(|e| e.to_string())?;
        self.data.augment.validate()?;
        if self.data.train == TrainData::Synthetic {
            self.data.synthetic.validate()?;
            if self.data.images.is_empty() {
                return Err("data.images: the synthetic generator needs at least one folder of photographs".into());
            }
            let s = &self.data.synthetic;
            if s.height < self.data.augment.crop[0] || s.width < self.data.augment.crop[1] {
                return Err(format!("data.synthetic: {}x{} pairs are smaller than the {:?} crop", s.height, s.width, self.data.augment.crop));
            }
            if self.data.pairs_per_epoch == 0 {
                return Err("data.pairs_per_epoch must be positive".into());
            }
        }
        let t = &self.train;
        if t.steps == 0 || t.batch_size == 0 {
            return Err("train.steps and train.batch_size must be positive".into());
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(format!("train.lr = {} must be positive", t.lr));
        }
        if !(0.0..1.0).contains(&t.pct_start) {
            return Err(format!("train.pct_start = {} must be in [0, 1)", t.pct_start));
        }
        if !(t.weight_decay >= 0.0 && t.epsilon > 0.0 && t.clip >= 0.0 && t.max_flow > 0.0 && t.time_limit_minutes >= 0.0) {
            return Err("train.weight_decay, clip and time_limit_minutes must be >= 0; epsilon and max_flow > 0".into());
        }
        if t.dtype != "f32" && t.dtype != "f64" {
            return Err(format!("train.dtype = {:?}: f32 or f64 (bf16 training is not supported on the CPU)", t.dtype));
        }
        if t.log_every == 0 {
            return Err("train.log_every must be positive".into());
        }
        for d in &self.eval.datasets {
            if !matches!(d.as_str(), "sintel" | "kitti" | "chairs") && !d.starts_with("folder:") {
                return Err(format!("eval.datasets: {d:?} is not sintel, kitti, chairs or folder:<path>"));
            }
        }
        if let Some(s) = &self.eval.f_solver {
            let mut d = self.deq.clone();
            d.f_solver = s.clone();
            d.validate().map_err(|e| format!("eval.f_solver: {e}"))?;
        }
        if self.deq.jac_loss_weight > 0.0 {
            return Err("deq.jac_loss_weight: the Jacobian regulariser is not used by DEQ-Flow's recipes and the flow trainer does not implement it".into());
        }
        Ok(())
    }
}

impl deq_train::cli::TrainerConfig for RunConfig {
    const SEED_SECTION: &'static str = "train";
    fn deq_mut(&mut self) -> &mut DeqConfig {
        &mut self.deq
    }
    fn validate(&self) -> std::result::Result<(), String> {
        RunConfig::validate(self)
    }
}
