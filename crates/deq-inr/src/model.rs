//! The (Implicit)^2 model: `z* = f(z*; x)` with
//! `f(z) = h_L`, `h_0 = z + phi(c_0, u_0)`, `h_i = phi(A_i h_{i-1} + c_i, u_i)` for the
//! weight-normalised `D x D` maps `A_i`, and the linear readout `y = B z* + d`.
//!
//! Solving is amortised as in the zoo: the first training step solves from zeros (up to
//! `f_max_iter` fixed-point steps) and later steps start from the cached state of the previous
//! step and only take the phantom-gradient steps (`grad`, damping `tau`), so one training step
//! costs `grad` evaluations of `f` (plus `amortised_iters` graph-free solver steps, 0 in the
//! zoo). Evaluation always solves from zeros.
//!
//! With `amortised_grad = "carried_adjoint"` the tracked steps of an amortised step are
//! differentiated with a warm-started adjoint ([`deq_core::grad::AdjointCarry`]): the same cost,
//! but the gradient converges to the implicit one instead of staying a `grad`-step phantom
//! gradient.

use crate::error::Result;
use crate::filter::{FilterKind, Injection};
use candle_core::{DType, Device, Module, Tensor, Var};
use deq_core::grad::AdjointCarry;
use deq_core::norm::{NormLinear, NormOptions};
use deq_core::rng::DeqRng;
use deq_core::{Deq, DeqConfig, NormType, SolverStats};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Architecture of a DEQ-INR (`[model]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InrModelConfig {
    /// `siren_like`, `fourier` or `gabor`.
    pub filter: FilterKind,
    /// Layers `L` inside `f` (the zoo's "1L", "4L").
    pub layers: usize,
    /// Width `D` (the zoo's "256D").
    pub width: usize,
    /// Frequency scale of the injection (256 for 512-pixel images, 25000 for audio).
    pub input_scale: f64,
    /// Shape of the Gamma prior of the gabor scales.
    pub gabor_alpha: f64,
    /// Solver steps (without graph) of an amortised training step before its phantom-gradient
    /// steps (0: the zoo, which only takes the `grad` steps from the cached state).
    pub amortised_iters: usize,
    /// Multiplies the initial `A_i` (PyTorch's default `Linear` init, as the zoo; with weight
    /// norm the gain goes into the scales `g`). Above 1, `f` starts less contractive and mixes
    /// more: `sin` of larger pre-activations, as in SIREN's hidden layers.
    pub z_map_gain: f64,
    /// Gradient of the amortised steps: `phantom` (the zoo) or `carried_adjoint` (implicit
    /// gradient with an adjoint warm-started from the previous step, at the same cost).
    pub amortised_grad: AmortisedGrad,
}

/// Gradient of an amortised training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmortisedGrad {
    /// Backpropagation through the `grad` damped steps from the cached state (the zoo).
    #[default]
    Phantom,
    /// The same steps, with the previous step's adjoint added at the last state and the
    /// gradient at the cached state carried to the next step ([`AdjointCarry`]).
    CarriedAdjoint,
}

impl Default for InrModelConfig {
    fn default() -> Self {
        Self { filter: FilterKind::SirenLike, layers: 1, width: 256, input_scale: 256.0, gabor_alpha: 3.0, amortised_iters: 0, z_map_gain: 1.0, amortised_grad: AmortisedGrad::Phantom }
    }
}

/// How a forward pass solves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolveMode {
    /// Training from `z0`: up to `f_max_iter` solver steps, then the gradient steps.
    Full,
    /// Training from a cached state: no solver steps, only the gradient steps.
    Amortised,
    /// Evaluation: `eval_f_max_iter` solver steps from `z0`, no graph.
    Eval,
}

/// A forward pass of [`DeqInr::forward_states`].
#[derive(Debug)]
pub struct InrForward {
    /// Outputs `(N, channels)` of every state, earliest first (the last is the fixed point's).
    pub preds: Vec<Tensor>,
    /// The last state (with its gradient path in training).
    pub state: Tensor,
    /// The inputs of [`DeqInr::f`] for these coordinates.
    pub inputs: Vec<Tensor>,
    /// Solver statistics (empty for the carried-adjoint step, which runs no solver).
    pub stats: SolverStats,
}

/// The model.
#[derive(Debug)]
pub struct DeqInr {
    cfg: InrModelConfig,
    injection: Injection,
    z_maps: Vec<NormLinear>,
    out_w: Var,
    out_b: Var,
    deq_full: Deq,
    deq_amortised: Deq,
    deq_eval: Deq,
    f_evals: AtomicUsize,
}

impl DeqInr {
    /// A model for `k`-dimensional coordinates and `channels` outputs. `deq` gives the solver
    /// and gradient (`grad` phantom steps); its `norm_*` keys set the norm of the `A_i`.
    pub fn new(cfg: InrModelConfig, k: usize, channels: usize, deq: DeqConfig, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let (d, l) = (cfg.width, cfg.layers.max(1));
        let injection = Injection::new(cfg.filter, k, d, l + 1, cfg.input_scale, cfg.gabor_alpha, rng, dtype, dev)?;
        let opts = NormOptions::from_config(&deq);
        let z_maps = (0..l).map(|_| NormLinear::new(d, d, true, opts, rng, dtype, dev)).collect::<deq_core::Result<Vec<_>>>()?;
        if cfg.z_map_gain != 1.0 {
            for m in &z_maps {
                let w = m.weight();
                let v = w.scale().unwrap_or(w.raw());
                v.set(&v.as_tensor().affine(cfg.z_map_gain, 0.0)?)?;
                m.reset()?;
            }
        }
        let s = 1.0 / (d as f64).sqrt();
        let out_w = Var::from_tensor(&rng.rand((channels, d), -s, s, dtype, dev)?)?;
        let out_b = Var::from_tensor(&rng.rand(channels, -s, s, dtype, dev)?)?;
        let deq_full = Deq::new(deq.clone())?;
        let deq_amortised = Deq::new(DeqConfig { f_max_iter: cfg.amortised_iters, ..deq.clone() })?;
        let mut deq_eval = Deq::new(deq)?;
        deq_eval.set_training(false);
        Ok(Self { cfg, injection, z_maps, out_w, out_b, deq_full, deq_amortised, deq_eval, f_evals: AtomicUsize::new(0) })
    }

    /// The architecture.
    pub fn config(&self) -> &InrModelConfig {
        &self.cfg
    }

    /// The DEQ settings (`[deq]`) of the full training solve.
    pub fn deq_config(&self) -> &DeqConfig {
        self.deq_full.config()
    }

    /// Evaluations of `f` so far (solver and gradient steps).
    pub fn f_evals(&self) -> usize {
        self.f_evals.load(Ordering::Relaxed)
    }

    /// The fixed-point map for the filter inputs `u` of [`Injection::forward`], with `u[0]`
    /// already filtered (`phi(c_0, u_0)`).
    pub fn f(&self, z: &Tensor, u: &[Tensor]) -> Result<Tensor> {
        self.f_evals.fetch_add(1, Ordering::Relaxed);
        let mut h = (z + &u[0])?;
        for (i, m) in self.z_maps.iter().enumerate() {
            h = match self.cfg.filter {
                // One fused pass: sin(h A^T + c + u).
                FilterKind::SirenLike => {
                    let bias = m.named_vars().into_iter().find(|(n, _)| *n == "bias").map(|(_, v)| v).expect("z_map has a bias");
                    crate::kernels::sin_bias_add(&h.matmul(&m.weight().weight().t()?)?, bias.as_tensor(), &u[i + 1])?
                }
                FilterKind::Fourier | FilterKind::Gabor => (m.forward(&h)? * &u[i + 1])?,
            };
        }
        Ok(h)
    }

    /// The filter inputs for coordinates `x` with `phi(c_0, u_0)` applied to the first.
    pub fn inputs(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut u = self.injection.forward(x)?;
        if self.cfg.filter == FilterKind::SirenLike {
            u[0] = deq_core::ops::sin(&u[0])?;
        }
        Ok(u)
    }

    /// Recomputes the weight-normalised `A_i` from their parameters (done by `forward`).
    pub fn reset_norms(&self) -> Result<()> {
        for m in &self.z_maps {
            m.reset()?;
        }
        Ok(())
    }

    /// Outputs `(N, channels)` for coordinates `x` (`(N, k)`) from the state `z0` (zeros when
    /// `None`), the last state (detached: the next step's cache) and the solver statistics.
    pub fn forward(&self, x: &Tensor, z0: Option<&Tensor>, mode: SolveMode) -> Result<(Tensor, Tensor, SolverStats)> {
        let out = self.forward_states(x, z0, mode)?;
        let pred = out.preds.last().cloned().ok_or_else(|| candle_core::Error::Msg("the DEQ returned no state".into()))?;
        Ok((pred, out.state.detach(), out.stats))
    }

    /// [`DeqInr::forward`] with what a training loss needs: the outputs of every state the
    /// DEQ returned (earliest first; in training one per supervised state), the last state with
    /// its gradient path, and the inputs of `f`.
    pub fn forward_states(&self, x: &Tensor, z0: Option<&Tensor>, mode: SolveMode) -> Result<InrForward> {
        self.reset_norms()?;
        let u = self.inputs(x)?;
        let z0 = match z0 {
            Some(z) => z.clone(),
            None => Tensor::zeros((x.dim(0)?, self.cfg.width), x.dtype(), x.device())?,
        };
        let deq = match mode {
            SolveMode::Full => &self.deq_full,
            SolveMode::Amortised => &self.deq_amortised,
            SolveMode::Eval => &self.deq_eval,
        };
        let out = deq.forward1(|z, inp| self.f(z, inp).map_err(|e| candle_core::Error::Msg(e.to_string())), &u, &z0)?;
        let preds = out.states.iter().map(|s| self.readout(&s[0])).collect::<Result<Vec<_>>>()?;
        Ok(InrForward { preds, state: out.z().clone(), inputs: u, stats: out.stats })
    }

    /// An amortised training step with a carried adjoint from the cached state `z0`:
    /// `amortised_iters` graph-free solver steps, then `grad` tracked damped steps through
    /// `carry`. Returns the outputs, the last state (detached: the next cache) and the term to
    /// add to the loss before `backward` (then call [`AdjointCarry::update`]).
    pub fn forward_carried(&self, x: &Tensor, z0: &Tensor, carry: &mut AdjointCarry) -> Result<(InrForward, Option<Tensor>)> {
        self.reset_norms()?;
        let u = self.inputs(x)?;
        let mut z = z0.detach();
        if self.cfg.amortised_iters > 0 {
            let ud: Vec<Tensor> = u.iter().map(|t| t.detach()).collect();
            for _ in 0..self.cfg.amortised_iters {
                z = self.f(&z, &ud)?.detach();
            }
        }
        let dcfg = self.deq_amortised.config();
        let k = dcfg.grad.first().copied().unwrap_or(1).max(1);
        let mut step = |z: &Tensor| self.f(z, &u).map_err(|e| candle_core::Error::Msg(e.to_string()));
        let zk = carry.unroll(&mut step, &z, k, dcfg.tau)?;
        let seed = carry.seed(&zk)?;
        Ok((InrForward { preds: vec![self.readout(&zk)?], state: zk, inputs: u, stats: SolverStats::default() }, seed))
    }

    /// The linear readout `y = B z + d`.
    fn readout(&self, z: &Tensor) -> Result<Tensor> {
        Ok(z.matmul(&self.out_w.as_tensor().t()?)?.broadcast_add(self.out_b.as_tensor())?)
    }

    /// Trainable variables with names.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v = self.injection.named_vars("injection");
        for (i, m) in self.z_maps.iter().enumerate() {
            v.extend(m.named_vars().into_iter().map(|(n, var)| (format!("z_map.{i}.{n}"), var)));
        }
        v.push(("output.weight".into(), self.out_w.clone()));
        v.push(("output.bias".into(), self.out_b.clone()));
        v
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.as_tensor().elem_count()).sum()
    }
}

/// The zoo's DEQ settings for INRs: fixed-point iteration (`f_max_iter`, tolerance 1e-3 on the
/// absolute residual), phantom gradient of 3 undamped steps, weight norm on the `A_i`.
pub fn zoo_deq(f_max_iter: usize) -> DeqConfig {
    DeqConfig {
        f_solver: "fixed_point_iter".into(),
        f_max_iter,
        f_tol: 1e-3,
        ift: false,
        grad: vec![3],
        tau: 1.0,
        norm_type: NormType::WeightNorm,
        ..Default::default()
    }
}
