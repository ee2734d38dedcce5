//! Model inversion: find the latent `x_T` whose DDIM sample is a given image (DEQ-DDIM §5).
//!
//! Both methods minimise `L = mean_b sum_pixels (x_0(x_T) - target)^2` with Adam, starting from
//! the deterministic DDIM encoding of the target (the "smart initialisation") or from noise:
//! - [`InvertMethod::Deq`]: each iteration solves the trajectory fixed point with `x_T` held
//!   fixed (warm-started from the previous iteration's trajectory) and takes one damped
//!   phantom step `x_0 <- (1 - tau) x_0* + tau f(z*, x_T)_last`, through which the gradient
//!   reaches `x_T` (via the `x_T` term of the map and the first step's model call; the
//!   DEQ-DDIM code lets it through the `x_T` term only, and restarts every solve from the
//!   initial trajectory).
//! - [`InvertMethod::Chain`]: backpropagation through the sequential DDIM chain (all `T` model
//!   calls kept for the backward pass), the baseline.

use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use deq_core::solver::StopMode;
use deq_train::{Adam, Optimizer};
use serde::{Deserialize, Serialize};

use crate::error::{DdimError, Result};
use crate::sampler::sequential::{ddim, ddim_differentiable, ddim_encode};
use crate::sampler::trajectory::{DeqSampleConfig, TrajectoryMap};
use crate::sampler::{Chunked, NoiseModel, Steps};
use crate::schedule::{timesteps, NoiseSchedule, SkipType};

/// How the gradient reaches `x_T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InvertMethod {
    /// Fixed point of the trajectory and a one-step phantom gradient.
    Deq,
    /// Backpropagation through the sequential DDIM chain.
    Chain,
}

/// The `[invert]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvertConfig {
    /// The method.
    pub method: InvertMethod,
    /// DDIM steps `T` of the generator being inverted.
    pub steps: usize,
    /// Their spacing.
    pub skip: SkipType,
    /// Adam's learning rate.
    pub lr: f64,
    /// Most Adam iterations.
    pub iters: usize,
    /// Stop when the loss (summed squared error per image, mean over images) is below this.
    pub early_stop: f64,
    /// Damping of the phantom step (the zoo's 0.1).
    pub tau: f64,
    /// Start from the DDIM encoding of the target (else from standard normal noise).
    pub smart_init: bool,
    /// Stop after this many seconds (0: no limit), for comparisons at equal wall-clock.
    pub time_limit_seconds: f64,
    /// The fixed-point solve of each iteration (the zoo's inversion: Anderson m 5, lam 1e-3,
    /// 15 iterations, absolute tolerance 1e-3).
    pub deq: DeqSampleConfig,
}

impl Default for InvertConfig {
    fn default() -> Self {
        Self {
            method: InvertMethod::Deq,
            steps: 20,
            skip: SkipType::Uniform,
            lr: 1e-2,
            iters: 200,
            early_stop: 0.5,
            tau: 0.1,
            smart_init: true,
            time_limit_seconds: 0.0,
            deq: DeqSampleConfig { stop_mode: StopMode::Abs, ..DeqSampleConfig::default() },
        }
    }
}

impl InvertConfig {
    /// Checks the values; the message names the key.
    pub fn validate(&self, timesteps: usize) -> std::result::Result<(), String> {
        if self.steps == 0 || self.steps > timesteps {
            return Err(format!("invert.steps = {} must be in 1..={timesteps}", self.steps));
        }
        if !(self.lr > 0.0 && self.iters > 0 && self.early_stop >= 0.0 && self.time_limit_seconds >= 0.0) {
            return Err("invert.lr and invert.iters must be positive, early_stop and time_limit_seconds >= 0".into());
        }
        if !(self.tau > 0.0 && self.tau <= 1.0) {
            return Err(format!("invert.tau = {} must be in (0, 1]", self.tau));
        }
        self.deq.validate("invert.deq")
    }
}

/// One iteration's record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvertRecord {
    /// Iteration (0: the initial latent).
    pub iter: usize,
    /// Seconds since the start (initialisation included).
    pub seconds: f64,
    /// The loss at this iteration's latent.
    pub loss: f64,
    /// Mean squared error per pixel (images in `[-1, 1]`).
    pub mse: f64,
    /// Sequential model rounds of this iteration (DEQ: solver evaluations + 1; chain: `T`).
    pub rounds: usize,
}

/// The result of an inversion.
#[derive(Debug, Clone)]
pub struct Inversion {
    /// The best latent found per the loss, `(B, C, H, W)`.
    pub latent: Tensor,
    /// Its images (sequential DDIM of the latent).
    pub images: Tensor,
    /// Per-iteration records.
    pub trace: Vec<InvertRecord>,
    /// Per image, the squared error per pixel of those images.
    pub mse_per_image: Vec<f64>,
}

fn errors(x0: &Tensor, target: &Tensor) -> Result<(f64, f64, Vec<f64>)> {
    let (b, c, h, w) = x0.dims4()?;
    let per: Vec<f64> = (x0 - target)?.sqr()?.reshape((b, c * h * w))?.sum(1)?.to_dtype(DType::F64)?.to_vec1()?;
    let loss = per.iter().sum::<f64>() / b as f64;
    Ok((loss, loss / (c * h * w) as f64, per.iter().map(|s| s / (c * h * w) as f64).collect()))
}

/// Inverts `target` (`(B, C, H, W)` in `[-1, 1]`) through the model.
pub fn invert(model: &dyn NoiseModel, schedule: &NoiseSchedule, cfg: &InvertConfig, target: &Tensor, noise_init: Option<&Tensor>, mut on_iter: impl FnMut(&InvertRecord)) -> Result<Inversion> {
    cfg.validate(schedule.len()).map_err(|e| DdimError::config("invert", e))?;
    let start = Instant::now();
    let seq = timesteps(schedule.len(), cfg.steps, cfg.skip)?;
    let steps = Steps::new(schedule, &seq);
    let init = if cfg.smart_init {
        ddim_encode(model, schedule, &seq, target)?
    } else {
        noise_init.cloned().ok_or_else(|| DdimError::config("invert.smart_init", "without the smart initialisation a noise latent must be given"))?
    };
    let x_t = Var::from_tensor(&init)?;
    let mut opt = Adam::new(vec![("x_T".into(), x_t.clone())], cfg.lr, (0.9, 0.999), 1e-8, 0.0, false)?;
    let chunked = Chunked { model, max_batch: cfg.deq.max_batch };
    let mut trajectory: Option<Tensor> = None;
    let mut trace = Vec::new();
    let mut best: Option<(f64, Tensor, Tensor, Vec<f64>)> = None;
    for iter in 0..=cfg.iters {
        // A copy: Adam updates the variable's storage in place.
        let latent = x_t.as_tensor().detach().copy()?;
        let (x0, loss_t, rounds) = match cfg.method {
            InvertMethod::Deq => {
                let map = TrajectoryMap::new(&chunked, &steps, &latent, 0.0, None)?.with_per_step_rows(cfg.deq.per_step_rows);
                let (z0, start_rounds) = match &trajectory {
                    Some(z) => (z.clone(), 0),
                    None => cfg.deq.start(&map)?,
                };
                let sol = cfg.deq.solve(&map, &z0, &mut |_| Ok(()))?;
                let z = sol.z.detach();
                let x0 = map.images(&z)?;
                let pg = (x0.affine(1.0 - cfg.tau, 0.0)? + map.last_output(&z, x_t.as_tensor())?.affine(cfg.tau, 0.0)?)?;
                let loss = (pg - target)?.sqr()?.sum_all()?.affine(1.0 / target.dim(0)? as f64, 0.0)?;
                trajectory = Some(z);
                (x0, loss, start_rounds + sol.stats.nfe + 1)
            }
            InvertMethod::Chain => {
                let (x0, _) = ddim_differentiable(&chunked, &steps, x_t.as_tensor(), 0.0, None)?;
                let loss = (&x0 - target)?.sqr()?.sum_all()?.affine(1.0 / target.dim(0)? as f64, 0.0)?;
                (x0.detach(), loss, steps.len())
            }
        };
        let (loss, mse, per) = errors(&x0, target)?;
        deq_train::check_finite("inversion loss", loss, iter)?;
        let rec = InvertRecord { iter, seconds: start.elapsed().as_secs_f64(), loss, mse, rounds };
        on_iter(&rec);
        trace.push(rec);
        if best.as_ref().is_none_or(|b| loss < b.0) {
            best = Some((loss, latent, x0, per));
        }
        let out_of_time = cfg.time_limit_seconds > 0.0 && start.elapsed().as_secs_f64() >= cfg.time_limit_seconds;
        if loss < cfg.early_stop || iter == cfg.iters || out_of_time {
            break;
        }
        let grads = loss_t.backward()?;
        opt.step(&grads)?;
    }
    let (_, latent, _, _) = best.expect("at least one iteration");
    // The reported images are the sequential DDIM samples of the best latent (the DEQ's
    // iterate may stop short of the fixed point).
    let (images, _) = ddim(model, &steps, &latent, 0.0, None)?;
    let (_, _, mse_per_image) = errors(&images, target)?;
    Ok(Inversion { latent, images, trace, mse_per_image })
}
