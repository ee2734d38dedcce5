//! The run configuration: `[model]` (the UNet), `[diffusion]` (the forward process), `[train]`,
//! `[data]`, `[sample]` (with `[sample.deq]`) and `[invert]`. Unknown keys are errors naming
//! the key; options the binary cannot honour are refused by [`RunConfig::validate`].

use std::path::PathBuf;

use deq_core::DeqConfig;
use serde::{Deserialize, Serialize};

use crate::invert::InvertConfig;
use crate::sampler::trajectory::DeqSampleConfig;
use crate::sampler::SamplerKind;
use crate::schedule::{DiffusionConfig, SkipType};
use crate::unet::UNetConfig;

/// The MNIST configuration for the CPU (`configs/deq-ddim/mnist.toml`).
pub const MNIST: &str = include_str!("../../../configs/deq-ddim/mnist.toml");
/// The DDIM code's CIFAR-10 configuration (`configs/deq-ddim/cifar10.toml`).
pub const CIFAR10: &str = include_str!("../../../configs/deq-ddim/cifar10.toml");

/// The `[train]` table (the DDIM code's `training` and `optim` sections).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Images per step (per rank in data-parallel jobs).
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Linear warm-up of the learning rate over this many steps (the DDIM code: none).
    pub warmup_steps: usize,
    /// Adam's epsilon.
    pub epsilon: f64,
    /// Adam's (coupled) weight decay.
    pub weight_decay: f64,
    /// Gradient-norm clipping (0: off).
    pub grad_clip: f64,
    /// EMA rate of the weights used for sampling (0: no EMA, sample with the raw weights).
    pub ema_rate: f64,
    /// Random horizontal flips of the training images.
    pub random_flip: bool,
    /// Seed of initialisation, data order, timesteps and noise.
    pub seed: u64,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// `f32` or `f64`.
    pub dtype: String,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Write a grid of samples (the `[sample]` settings, EMA weights) every this many steps
    /// (0: only at the end).
    pub sample_every: usize,
    /// Images in those grids.
    pub sample_count: usize,
    /// Log a metrics line every this many steps.
    pub log_every: usize,
    /// Stop (with a checkpoint) after this many minutes of training (0: no limit).
    pub time_limit_minutes: f64,
    /// NaN or Inf in a batch, the loss or the gradient: `stop` (default) or `skip` the batch.
    pub on_nonfinite: deq_train::faults::OnNonFinite,
    /// With `on_nonfinite = "skip"`: the run stops once more batches than this were skipped.
    pub max_skipped: usize,
}

impl Default for TrainConfig {
    /// The DDIM code's CIFAR-10 optimisation: Adam 2e-4, eps 1e-8, clip 1, EMA 0.9999, batch 128.
    fn default() -> Self {
        Self { steps: 800_000, batch_size: 128, lr: 2e-4, warmup_steps: 0, epsilon: 1e-8, weight_decay: 0.0, grad_clip: 1.0, ema_rate: 0.9999, random_flip: true, seed: 1234, threads: 0, dtype: "f32".into(), checkpoint_every: 5000, sample_every: 5000, sample_count: 64, log_every: 100, time_limit_minutes: 0.0, on_nonfinite: deq_train::faults::OnNonFinite::Stop, max_skipped: 10 }
    }
}

/// Training datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// MNIST IDX files (`train-images-idx3-ubyte[.gz]`, ...).
    Mnist,
    /// CIFAR-10 binary batches (`data_batch_1.bin`, ...).
    Cifar10,
    /// A folder of PNG/JPEG images (resized to the model's resolution).
    Folder,
}

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// What to train on.
    pub dataset: Dataset,
    /// Where it is (default: `$DEQ_DATA_DIR/<name>`, then `datasets/<name>`; required for
    /// `folder`).
    #[serde(default)]
    pub root: Option<PathBuf>,
}

/// The `[sample]` table: what `sample` (and the grids during training) do by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// `ddim`, `deq` or `ddpm`.
    pub sampler: SamplerKind,
    /// Sampling steps `T`.
    pub steps: usize,
    /// How the steps are spread over the schedule.
    pub skip: SkipType,
    /// DDIM's eta (0: deterministic; DDPM ignores it).
    pub eta: f64,
    /// Images per batch.
    pub batch_size: usize,
    /// Sample with the EMA weights (when the run kept them).
    pub use_ema: bool,
    /// DEQ sampling's solver.
    pub deq: DeqSampleConfig,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self { sampler: SamplerKind::Ddim, steps: 50, skip: SkipType::Uniform, eta: 0.0, batch_size: 64, use_ema: true, deq: DeqSampleConfig::default() }
    }
}

impl SampleConfig {
    /// Checks the values; the message names the key.
    pub fn validate(&self, timesteps: usize) -> std::result::Result<(), String> {
        if self.steps == 0 || self.steps > timesteps {
            return Err(format!("sample.steps = {} must be in 1..={timesteps}", self.steps));
        }
        if !(0.0..=1.0).contains(&self.eta) {
            return Err(format!("sample.eta = {} must be in [0, 1]", self.eta));
        }
        if self.sampler == SamplerKind::Ddpm && self.eta != 0.0 {
            return Err("sample.eta: DDPM sampling has no eta (set it to 0 or use the ddim sampler)".into());
        }
        if self.batch_size == 0 {
            return Err("sample.batch_size must be positive".into());
        }
        self.deq.validate("sample.deq")
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The UNet.
    pub model: UNetConfig,
    /// The forward process.
    #[serde(default)]
    pub diffusion: DiffusionConfig,
    /// Optimisation.
    #[serde(default)]
    pub train: TrainConfig,
    /// Training data.
    pub data: DataConfig,
    /// Sampling.
    #[serde(default)]
    pub sample: SampleConfig,
    /// Inversion.
    #[serde(default)]
    pub invert: InvertConfig,
    /// TorchDEQ's flags (`--f_solver`, `--f_max_iter`, `--f_tol`, `--f_stop_mode`, `--tau`,
    /// ...) act on DEQ sampling and inversion: the shared CLI writes them here and
    /// [`RunConfig::apply_deq_flags`] moves them into `[sample.deq]` and `[invert]`. Options
    /// that have no meaning here (training-time gradients, regularisers) are refused.
    #[serde(default)]
    pub deq: DeqConfig,
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
        self.diffusion.validate()?;
        let t = &self.train;
        if t.steps == 0 || t.batch_size == 0 || t.log_every == 0 || t.sample_count == 0 {
            return Err("train.steps, train.batch_size, train.log_every and train.sample_count must be positive".into());
        }
        if !(t.lr > 0.0 && t.lr.is_finite() && t.epsilon > 0.0 && t.weight_decay >= 0.0 && t.grad_clip >= 0.0 && t.time_limit_minutes >= 0.0) {
            return Err("train.lr and epsilon must be positive; weight_decay, grad_clip, time_limit_minutes >= 0".into());
        }
        if !(0.0..1.0).contains(&t.ema_rate) {
            return Err(format!("train.ema_rate = {} must be in [0, 1)", t.ema_rate));
        }
        if t.dtype != "f32" && t.dtype != "f64" {
            return Err(format!("train.dtype = {:?}: f32 or f64", t.dtype));
        }
        if self.data.dataset == Dataset::Folder && self.data.root.is_none() {
            return Err("data.root: the folder dataset needs a root".into());
        }
        let channels = match self.data.dataset {
            Dataset::Mnist => Some(1),
            Dataset::Cifar10 => Some(3),
            Dataset::Folder => None,
        };
        if let Some(c) = channels {
            if self.model.in_channels != c || self.model.out_ch != c {
                return Err(format!("model.in_channels / out_ch = {} / {}: {:?} images have {c} channels", self.model.in_channels, self.model.out_ch, self.data.dataset));
            }
        }
        if self.model.in_channels != self.model.out_ch {
            return Err("model.out_ch must equal model.in_channels (the model predicts the noise)".into());
        }
        self.sample.validate(self.diffusion.num_diffusion_timesteps)?;
        self.invert.validate(self.diffusion.num_diffusion_timesteps)?;
        self.check_deq_flags()
    }

    /// The `[deq]` options DEQ-DDIM can honour are the forward solver's; the rest must keep
    /// their defaults.
    fn check_deq_flags(&self) -> std::result::Result<(), String> {
        let d = DeqConfig::default();
        let mut q = self.deq.clone();
        q.f_solver.clone_from(&d.f_solver);
        (q.f_max_iter, q.f_tol, q.f_stop_mode, q.tau) = (d.f_max_iter, d.f_tol, d.f_stop_mode, d.tau);
        if q != d {
            return Err("deq: only the forward solver's flags (f_solver, f_max_iter, f_tol, f_stop_mode) and tau act on DEQ-DDIM; sampling has no backward pass and inversion's phantom gradient is set in [invert]".into());
        }
        Ok(())
    }

    /// Moves TorchDEQ's forward-solver options into `[sample.deq]` and `[invert.deq]`, and
    /// `tau` into `[invert]`: those given as flags (`given`, even at their default values), else
    /// those that `[deq]` sets away from deq-core's defaults (`--set deq.f_tol=...`). `[deq]` is
    /// reset afterwards, so the saved configuration holds each value once and applying again
    /// (when `sample` reads a run) changes nothing.
    pub fn apply_deq_flags(&mut self, given: &deq_core::DeqArgs) {
        let d = DeqConfig::default();
        let q = std::mem::take(&mut self.deq);
        let pick = |flag: Option<String>, v: &String, dv: &String| flag.or_else(|| (v != dv).then(|| v.clone()));
        let solver = pick(given.f_solver.clone(), &q.f_solver, &d.f_solver);
        let max_iter = given.f_max_iter.or((q.f_max_iter != d.f_max_iter).then_some(q.f_max_iter));
        let tol = given.f_tol.or((q.f_tol != d.f_tol).then_some(q.f_tol));
        let stop = given.f_stop_mode.or((q.f_stop_mode != d.f_stop_mode).then_some(q.f_stop_mode));
        let tau = given.tau.or((q.tau != d.tau).then_some(q.tau));
        for s in [&mut self.sample.deq, &mut self.invert.deq] {
            if let Some(v) = &solver {
                s.solver.clone_from(v);
            }
            if let Some(v) = max_iter {
                s.max_iter = v;
            }
            if let Some(v) = tol {
                s.tol = v;
            }
            if let Some(v) = stop {
                s.stop_mode = v;
            }
        }
        if let Some(t) = tau {
            self.invert.tau = t;
        }
        // Options that have no meaning here stay, so that validation refuses them.
        self.deq = DeqConfig { f_solver: d.f_solver, f_max_iter: d.f_max_iter, f_tol: d.f_tol, f_stop_mode: d.f_stop_mode, tau: d.tau, ..q };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_configuration_parses_and_bad_keys_are_named() {
        let c = RunConfig::from_toml(MNIST, "mnist.toml").unwrap();
        assert_eq!(c.model.resolution, 28);
        let cifar = RunConfig::from_toml(CIFAR10, "cifar10.toml").unwrap();
        assert_eq!(cifar.model, crate::unet::UNetConfig::default());
        assert!(RunConfig::from_toml(&MNIST.replace("[train]", "[train]\nlearning_rate = 1"), "x").unwrap_err().contains("learning_rate"));
        let mut bad = c.clone();
        bad.model.in_channels = 3;
        bad.model.out_ch = 3;
        assert!(bad.validate().unwrap_err().contains("in_channels"));
        let mut bad = c.clone();
        bad.deq.jac_loss_weight = 1.0;
        assert!(bad.validate().unwrap_err().contains("deq"));
        let mut bad = c.clone();
        bad.sample.sampler = SamplerKind::Ddpm;
        bad.sample.eta = 0.5;
        assert!(bad.validate().unwrap_err().contains("sample.eta"));
    }

    #[test]
    fn torchdeq_flags_reach_the_solvers() {
        let mut c = RunConfig::from_toml(MNIST, "mnist.toml").unwrap();
        c.deq.f_max_iter = 30;
        c.deq.f_solver = "broyden".into();
        c.deq.tau = 0.3;
        // A flag at deq-core's default value still counts.
        let given = deq_core::DeqArgs { f_stop_mode: Some(deq_core::solver::StopMode::Abs), ..Default::default() };
        c.apply_deq_flags(&given);
        assert_eq!((c.sample.deq.max_iter, c.sample.deq.solver.as_str(), c.sample.deq.stop_mode), (30, "broyden", deq_core::solver::StopMode::Abs));
        assert_eq!(c.invert.deq.max_iter, 30);
        assert_eq!(c.invert.tau, 0.3);
        assert_eq!(c.deq, DeqConfig::default());
        // Applying again (a run's saved configuration) changes nothing.
        c.sample.deq.max_iter = 60;
        c.apply_deq_flags(&deq_core::DeqArgs::default());
        assert_eq!(c.sample.deq.max_iter, 60);
    }
}
