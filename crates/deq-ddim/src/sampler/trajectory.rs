//! DEQ sampling: the whole DDIM trajectory as one fixed point (DEQ-DDIM, Pokle et al. 2022).
//!
//! Dividing DDIM's update by `sqrt(a_n)` makes it additive:
//! `x_n / sqrt(a_n) = x_t / sqrt(a_t) + c eps(x_t, t) + s z` with
//! `c = sqrt(1 - a_n - sigma^2) / sqrt(a_n) - sqrt((1 - a_t) / a_t)` and `s = sigma / sqrt(a_n)`,
//! so the output of step `k` is
//! `x^(k) = sqrt(a_{n_k} / a_{t_0}) x_T + sqrt(a_{n_k}) sum_{j <= k} (c_j eps_j + s_j z_j)`
//! where `eps_j` is the model at step `j`'s input (`x_T` for `j = 0`, else `x^(j-1)`). The
//! state holds the outputs of all `T` steps; the map evaluates the model on all of them in one
//! batched call and takes the cumulative sum. Its fixed point is exactly the sequential
//! trajectory (the map is lower triangular: `T` plain iterations reach it), and Anderson gets
//! there in far fewer sequential rounds.
//!
//! The state has one row per image (its whole trajectory, `(B, T * C * H * W)`): the stopping
//! test and the lowest-residual iterate are chosen per trajectory, so a returned trajectory
//! comes from one round. The DEQ-DDIM code mixes every step with its own weights
//! (`per_step_rows`, `(B * T, C * H * W)`); `x_T` stays outside the state.
//!
//! Unlike the DEQ-DDIM code, Anderson keeps the converged prefix of every trajectory by default
//! ([`DeqSampleConfig::picard_prefix`]): the steps whose inputs have converged take the plain
//! update, which is exact for them, so the solve never needs more than plain iteration's
//! `T + 1` rounds (on the MNIST model trained here, Anderson alone stalled past them).

use std::time::Instant;

use candle_core::{DType, Tensor};
use deq_core::solver::{get_solver, Anderson, Solution, SolverOptions, StopMode};
use serde::{Deserialize, Serialize};

use super::{NoiseModel, SampleStats, StepNoise, Steps};
use crate::error::{DdimError, Result};

/// The `[deq]`-style options of DEQ sampling (the paper's: Anderson, m 5, at most 15 iterations,
/// relative tolerance 1e-3; 50 iterations for `eta > 0`; `lam` here is deq-core's, relative to
/// the Gram matrix's diagonal, where the paper's 1e-3 is absolute). Every row (image and step)
/// must meet the tolerance, stricter than the reference's one residual over the whole tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeqSampleConfig {
    /// A deq-core solver name (`anderson`, `broyden`, `fixed_point_iter`, ...).
    pub solver: String,
    /// Most function evaluations (sequential rounds).
    pub max_iter: usize,
    /// Stop when every row's residual is below this.
    pub tol: f64,
    /// `rel` (`||f(z) - z|| / ||f(z)||`) or `abs`.
    pub stop_mode: StopMode,
    /// Anderson's history size.
    pub m: usize,
    /// Anderson's regularisation.
    pub lam: f64,
    /// Largest number of images per model call (0: all `B * T` at once).
    pub max_batch: usize,
    /// One solver row per image and step (the DEQ-DDIM code's mixing) instead of one per
    /// image. Per-step rows pick each step's lowest-residual iterate separately, which can
    /// stitch a trajectory from different rounds; measured on the first MNIST model trained
    /// here it needed more rounds than the sequential sampler, so it is off by default.
    pub per_step_rows: bool,
    /// Keep the converged prefix of every trajectory (not in the DEQ-DDIM code): before each
    /// round, the steps whose inputs have converged (every earlier step within `tol`) take the
    /// plain update `f(z)` instead of Anderson's mixture, which is exact for them. The converged
    /// prefix then grows by at least one step per round, so Anderson never needs more than the
    /// `T + 1` rounds of plain iteration; without it, mixing can disturb steps that had
    /// converged and Anderson stalled past `T` rounds on the trained MNIST model. Anderson only
    /// (the fixed-point iterations keep the prefix by themselves; Broyden cannot).
    pub picard_prefix: bool,
    /// The initial trajectory of a solve without a warm start.
    pub init: DeqInit,
}

/// Where a DEQ solve starts when it has no warm start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeqInit {
    /// Every step at `x_T` (the DEQ-DDIM code's start).
    Latent,
    /// The DDIM trajectory with every noise prediction frozen at the first one,
    /// `eps(x_T, t_0)`: one model call on the `B` latents, counted as a round. Every step is
    /// then at its own noise level, where the repeated `x_T` puts pure noise at every step.
    FirstPrediction,
}

impl Default for DeqSampleConfig {
    fn default() -> Self {
        Self { solver: "anderson".into(), max_iter: 15, tol: 1e-3, stop_mode: StopMode::Rel, m: 5, lam: 1e-3, max_batch: 0, per_step_rows: false, picard_prefix: true, init: DeqInit::Latent }
    }
}

impl DeqSampleConfig {
    /// Checks the values; the message names the key (`prefix.key`).
    pub fn validate(&self, prefix: &str) -> std::result::Result<(), String> {
        get_solver(&self.solver).map_err(|e| format!("{prefix}.solver: {e}"))?;
        if self.max_iter == 0 || self.m == 0 {
            return Err(format!("{prefix}.max_iter and {prefix}.m must be positive"));
        }
        if !(self.tol > 0.0 && self.lam >= 0.0) {
            return Err(format!("{prefix}.tol must be positive and {prefix}.lam >= 0"));
        }
        if self.picard_prefix && !["anderson", "fixed_point_iter", "simple_fixed_point_iter"].contains(&self.solver.as_str()) {
            return Err(format!("{prefix}.picard_prefix: the {} solver cannot keep the converged prefix (anderson and the fixed-point iterations can); set {prefix}.picard_prefix = false to use it", self.solver));
        }
        Ok(())
    }

    /// Solves `map`'s fixed point from `z0` with these options (Anderson with the converged
    /// prefix kept when `picard_prefix` is on); `on_round` sees every round's `f(z)`.
    pub fn solve(&self, map: &TrajectoryMap<'_>, z0: &Tensor, on_round: &mut RoundObserver<'_>) -> Result<Solution> {
        let opts = self.solver_options();
        let mut f = |z: &Tensor| {
            let fz = map.apply(z)?;
            on_round(&fz)?;
            Ok(fz)
        };
        let sol = if self.picard_prefix && self.solver == "anderson" {
            Anderson.solve_corrected(&mut f, z0, &opts, &mut |proposal, z, fz| map.keep_prefix(proposal, z, fz, self.tol, self.stop_mode))?
        } else {
            get_solver(&self.solver)?.solve(&mut f, z0, &opts)?
        };
        Ok(sol)
    }

    /// The initial state of a solve without a warm start, and the sequential model calls it
    /// took (see [`DeqInit`]).
    pub fn start(&self, map: &TrajectoryMap<'_>) -> candle_core::Result<(Tensor, usize)> {
        Ok(match self.init {
            DeqInit::Latent => (map.initial_state()?, 0),
            DeqInit::FirstPrediction => (map.first_prediction_state()?, 1),
        })
    }

    /// deq-core's solver options.
    pub fn solver_options(&self) -> SolverOptions {
        SolverOptions { max_iter: self.max_iter, tol: self.tol, stop_mode: self.stop_mode, m: self.m, lam: self.lam, ..SolverOptions::default() }
    }
}

/// The trajectory map of one batch: `x_T`, the steps and the (optional) pre-drawn noise.
pub struct TrajectoryMap<'a> {
    model: &'a dyn NoiseModel,
    x_t: Tensor,
    shape: (usize, usize, usize, usize),
    steps: usize,
    /// `(1, T, 1)` coefficients of `eps`, of the cumulative sum, and of `x_T`, in f64 (see
    /// [`TrajectoryMap::outputs`]).
    c: Tensor,
    p: Tensor,
    a: Tensor,
    /// `(B, T, CHW)`: `s_k z_k` in f64, or none.
    noise_term: Option<Tensor>,
    /// `x_T` as `(B, 1, CHW)` in f64.
    x_t64: Tensor,
    /// `(B * T,)` float timesteps of the model inputs.
    t: Tensor,
    per_step_rows: bool,
}

impl<'a> TrajectoryMap<'a> {
    /// The map for images `x_t` `(B, C, H, W)` at the first step; `noise` is required when
    /// `eta > 0`.
    pub fn new(model: &'a dyn NoiseModel, steps: &Steps, x_t: &Tensor, eta: f64, noise: Option<&StepNoise>) -> Result<Self> {
        super::check_eta(eta)?;
        let shape = x_t.dims4()?;
        let (b, c, h, w) = shape;
        let n = steps.len();
        if n == 0 {
            return Err(DdimError::config("sample.steps", "no steps"));
        }
        let (dtype, dev) = (x_t.dtype(), x_t.device());
        let vec = |v: Vec<f64>| -> candle_core::Result<Tensor> { Tensor::from_vec(v, (1, n, 1), dev) };
        let sig: Vec<f64> = (0..n).map(|k| steps.sigma(k, eta)).collect();
        let coef: Vec<f64> = (0..n).map(|k| {
            let (at, an) = (steps.a_t[k], steps.a_next[k]);
            (1.0 - an - sig[k] * sig[k]).max(0.0).sqrt() / an.sqrt() - ((1.0 - at) / at).sqrt()
        }).collect();
        let p: Vec<f64> = steps.a_next.iter().map(|a| a.sqrt()).collect();
        let a0 = steps.a_t[0];
        let a: Vec<f64> = steps.a_next.iter().map(|an| (an / a0).sqrt()).collect();
        let noise_term = if sig.iter().any(|&s| s > 0.0) {
            let z = noise.ok_or_else(|| DdimError::config("sample.eta", format!("eta = {eta} needs pre-drawn noise")))?;
            if z.0.dims() != [n, b, c, h, w] {
                return Err(DdimError::config("sample.eta", format!("noise of shape {:?}, expected {:?}", z.0.dims(), [n, b, c, h, w])));
            }
            let s: Vec<f64> = (0..n).map(|k| sig[k] / steps.a_next[k].sqrt()).collect();
            Some(z.0.to_dtype(DType::F64)?.reshape((n, b, c * h * w))?.transpose(0, 1)?.broadcast_mul(&vec(s)?)?.contiguous()?)
        } else {
            None
        };
        let t: Vec<f32> = (0..b).flat_map(|_| steps.t.iter().map(|&t| t as f32)).collect();
        let t = Tensor::from_vec(t, b * n, dev)?.to_dtype(dtype)?;
        let x_t64 = x_t.to_dtype(DType::F64)?.reshape((b, 1, c * h * w))?;
        Ok(Self { model, x_t: x_t.clone(), shape, steps: n, c: vec(coef)?, p: vec(p)?, a: vec(a)?, noise_term, x_t64, t, per_step_rows: false })
    }

    /// Lays the state out with one row per image and step (Anderson mixes every step with its
    /// own weights, the stopping test and best-iterate choice are per step) instead of one row
    /// per image.
    pub fn with_per_step_rows(mut self, on: bool) -> Self {
        self.per_step_rows = on;
        self
    }

    /// The state of a trajectory with every step at `x_T` (the reference's initial guess):
    /// `(B * T, C * H * W)`.
    pub fn initial_state(&self) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = self.shape;
        self.x_t.reshape((b, 1, c * h * w))?.repeat((1, self.steps, 1))?.reshape(self.rows())
    }

    /// The state of a given trajectory `(B, T, C, H, W)` (a warm start).
    pub fn state_of(&self, trajectory: &Tensor) -> candle_core::Result<Tensor> {
        trajectory.reshape(self.rows())
    }

    /// The solver's `(rows, width)` layout of the state: one row per image (its whole
    /// trajectory) when `per_step_rows` is off, else one row per image and step.
    fn rows(&self) -> (usize, usize) {
        let (b, c, h, w) = self.shape;
        if self.per_step_rows {
            (b * self.steps, c * h * w)
        } else {
            (b, self.steps * c * h * w)
        }
    }

    /// The model's noise predictions at the inputs of every step, `(B, T, CHW)`, for state `z`
    /// and first input `x_t`.
    fn eps(&self, z: &Tensor, x_t: &Tensor, grad: bool) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = self.shape;
        let n = self.steps;
        let z3 = z.reshape((b, n, c * h * w))?;
        let first = x_t.reshape((b, 1, c * h * w))?;
        let inputs = if n > 1 { Tensor::cat(&[&first, &z3.narrow(1, 0, n - 1)?], 1)? } else { first };
        let inputs = inputs.reshape((b * n, c, h, w))?;
        let e = if grad { self.model.predict(&inputs, &self.t)? } else { self.model.predict_detached(&inputs, &self.t)? };
        e.reshape((b, n, c * h * w))
    }

    /// The per-step increments `c_k eps_k + s_k z_k`, `(B, T, CHW)`, in f64 (differentiable in
    /// `eps`; see [`TrajectoryMap::outputs`] for why f64).
    fn increments(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        let inc = eps.to_dtype(DType::F64)?.broadcast_mul(&self.c)?;
        match &self.noise_term {
            Some(nt) => inc + nt,
            None => Ok(inc),
        }
    }

    /// `f(z)`: `(B * T, CHW) -> (B * T, CHW)`, detached (no autograd graph: a solver keeps
    /// several iterates, and each would otherwise hold a model call's activations).
    pub fn apply(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        self.outputs(&self.eps(z, &self.x_t, false)?)
    }

    /// The state of the DDIM trajectory with every noise prediction frozen at the first one,
    /// `eps(x_T, t_0)` (one model call on the `B` latents): [`DeqInit::FirstPrediction`].
    pub fn first_prediction_state(&self) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = self.shape;
        let t0 = self.t.reshape((b, self.steps))?.narrow(1, 0, 1)?.flatten_all()?;
        let eps0 = self.model.predict_detached(&self.x_t, &t0)?.reshape((b, 1, c * h * w))?;
        self.outputs(&eps0.repeat((1, self.steps, 1))?)
    }

    /// The state whose step `k` follows from the noise predictions `eps` `(B, T, CHW)` of steps
    /// `0..=k`: `f` given the model's outputs.
    ///
    /// Computed in f64 whatever the model's dtype, then rounded once: the sum and the `x_T`
    /// term are each up to `1 / sqrt(a_{t_0})` (~140 from `t = 980`) times larger than the
    /// states they cancel to, and in f32 arithmetic the output carried relative errors up to
    /// 2.6e-4 at `T = 50` (unit-variance noise predictions), where the sequential update,
    /// which has no such cancellation, rounds to 6e-8.
    pub(crate) fn outputs(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.steps;
        let dtype = eps.dtype();
        let inc = self.increments(eps)?;
        let mut sums = Vec::with_capacity(n);
        let mut acc = inc.narrow(1, 0, 1)?;
        sums.push(acc.clone());
        for k in 1..n {
            acc = (acc + inc.narrow(1, k, 1)?)?;
            sums.push(acc.clone());
        }
        let cum = Tensor::cat(&sums, 1)?;
        let out = (cum.broadcast_mul(&self.p)? + self.x_t64.broadcast_mul(&self.a)?)?;
        Ok(out.to_dtype(dtype)?.reshape(self.rows())?.detach())
    }

    /// Anderson's `proposal` with the converged prefix of every trajectory replaced by the
    /// plain update: with `(z, fz)` the newest evaluated pair, step `k` of image `b` takes
    /// `fz` when steps `0..k` of that image are within `tol` (in `mode`: `||fz_k - z_k||`,
    /// relative to `||fz_k||` for `rel`), since `f`'s step `k` depends only on earlier steps and
    /// is then exact. Step 0, which depends on `x_T` alone, always takes `fz`.
    pub fn keep_prefix(&self, proposal: &Tensor, z: &Tensor, fz: &Tensor, tol: f64, mode: StopMode) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = self.shape;
        let n = self.steps;
        let f3 = fz.reshape((b, n, c * h * w))?;
        let res = (&f3 - z.reshape((b, n, c * h * w))?)?.sqr()?.sum(2)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let norms = f3.sqr()?.sum(2)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let mut mask = vec![0u8; b * n];
        for bi in 0..b {
            for k in 0..n {
                mask[bi * n + k] = 1;
                let r = res[bi * n + k].sqrt();
                let r = match mode {
                    StopMode::Abs => r,
                    StopMode::Rel => r / (norms[bi * n + k].sqrt() + 1e-9),
                };
                if !(r <= tol) {
                    break;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, n, 1), fz.device())?.broadcast_as(f3.shape())?;
        mask.where_cond(&f3, &proposal.reshape((b, n, c * h * w))?)?.reshape(self.rows())
    }

    /// The last step's output of `f` (the clean images, `(B, C, H, W)`) for state `z` and
    /// first input `x_t`, differentiable in `x_t` (through the `x_T` term and the first
    /// step's model call) and in `z`: the phantom step of inversion.
    pub fn last_output(&self, z: &Tensor, x_t: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = self.shape;
        let n = self.steps;
        let total = self.increments(&self.eps(z, x_t, true)?)?.sum(1)?;
        let p = self.p.narrow(1, n - 1, 1)?.reshape(1)?;
        let a = self.a.narrow(1, n - 1, 1)?.reshape(1)?;
        let x_t64 = x_t.to_dtype(DType::F64)?.reshape((b, c * h * w))?;
        (total.broadcast_mul(&p)? + x_t64.broadcast_mul(&a)?)?.to_dtype(x_t.dtype())?.reshape((b, c, h, w))
    }

    /// The images of the last step in state `z`: `(B, C, H, W)`.
    pub fn images(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = self.shape;
        z.reshape((b, self.steps, c * h * w))?.narrow(1, self.steps - 1, 1)?.reshape((b, c, h, w))
    }

    /// The trajectory `(B, T, C, H, W)` of state `z`.
    pub fn trajectory(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = self.shape;
        z.reshape((b, self.steps, c, h, w))
    }

    /// Number of steps `T`.
    pub fn steps(&self) -> usize {
        self.steps
    }
}

/// The result of a DEQ solve: the images, the whole trajectory (for warm starts) and the costs.
#[derive(Debug, Clone)]
pub struct DeqSample {
    /// `(B, C, H, W)`.
    pub images: Tensor,
    /// `(B, T, C, H, W)`.
    pub trajectory: Tensor,
    /// Rounds, model evaluations, residuals, seconds.
    pub stats: SampleStats,
}

/// A callback that sees a tensor of every solver round.
pub type RoundObserver<'a> = dyn FnMut(&Tensor) -> candle_core::Result<()> + 'a;

/// DEQ sampling from `x_t` (`(B, C, H, W)`) with the options `cfg`; `init` a warm-start
/// trajectory `(B, T, C, H, W)` (default: every step at `x_T`).
pub fn deq(model: &dyn NoiseModel, steps: &Steps, x_t: &Tensor, eta: f64, noise: Option<&StepNoise>, cfg: &DeqSampleConfig, init: Option<&Tensor>) -> Result<DeqSample> {
    deq_observed(model, steps, x_t, eta, noise, cfg, init, &mut |_| Ok(()))
}

/// [`deq`], with `on_round` called with the images `(B, C, H, W)` of every round's `f(z)`
/// (to follow the distance to the sequential sampler round by round).
#[allow(clippy::too_many_arguments)]
pub fn deq_observed(model: &dyn NoiseModel, steps: &Steps, x_t: &Tensor, eta: f64, noise: Option<&StepNoise>, cfg: &DeqSampleConfig, init: Option<&Tensor>, on_round: &mut RoundObserver<'_>) -> Result<DeqSample> {
    cfg.validate("sample.deq").map_err(|e| DdimError::config("sample.deq", e))?;
    let start = Instant::now();
    let chunked = super::Chunked { model, max_batch: cfg.max_batch };
    let map = TrajectoryMap::new(&chunked, steps, x_t, eta, noise)?.with_per_step_rows(cfg.per_step_rows);
    let (z0, init_rounds) = match init {
        Some(t) => (map.state_of(t)?, 0),
        None => cfg.start(&map)?,
    };
    let sol = cfg.solve(&map, &z0, &mut |fz| on_round(&map.images(fz)?))?;
    let rows_max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let stats = SampleStats {
        rounds: sol.stats.nfe + init_rounds,
        model_evals: (sol.stats.nfe * steps.len() + init_rounds) * x_t.dim(0)?,
        residual_trace: sol.stats.rel_trace.iter().map(|r| rows_max(r)).collect(),
        residual: rows_max(&sol.stats.rel_lowest),
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(DeqSample { images: map.images(&sol.z)?, trajectory: map.trajectory(&sol.z)?, stats })
}
