//! The DEQ part of every trainer's loss, from the `[deq]` table: TorchDEQ's fixed-point
//! correction over the supervised states (`n_states`, `indexing`, `gamma`, and the phantom
//! states of `sup_gap` / `sup_loc`) and the Jacobian regulariser (`jac_loss_weight`,
//! `jac_loss_freq`, `jac_incremental`).
//!
//! A trainer computes its task loss on every state the DEQ returned in training, hands the
//! per-state losses to [`DeqObjective::correction`], and adds [`DeqObjective::jacobian`]'s term
//! (evaluated at the fixed point with the model's own `f`). Whether the regulariser is applied
//! on a step is drawn from the run seed and the step number alone, so a resumed run makes the
//! same draws as an uninterrupted one without any saved state.
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use deq_core::{Deq, DeqConfig};
//! use deq_train::DeqObjective;
//!
//! # fn main() -> anyhow::Result<()> {
//! let cfg = DeqConfig { n_states: 2, jac_loss_weight: 0.5, jac_loss_freq: 1.0, ..Default::default() };
//! let objective = DeqObjective::new(&cfg, 7)?;
//! let w = Var::new(&[[0.3f64, -0.2], [0.1, 0.4]], &Device::Cpu)?;
//! let f = |z: &[Tensor], x: &[Tensor]| -> candle_core::Result<Vec<Tensor>> {
//!     Ok(vec![(z[0].matmul(&w.as_tensor().t()?)? + &x[0])?.tanh()?])
//! };
//! let x = Tensor::new(&[[1.0f64, -1.0]], &Device::Cpu)?;
//! let out = Deq::new(cfg)?.forward(f, std::slice::from_ref(&x), &[x.zeros_like()?])?;
//! // The task loss of every state, then gamma-weighted (0.8 for the first, 1 for the last).
//! let losses: Vec<Tensor> = out.states.iter().map(|s| s[0].sqr()?.sum_all()).collect::<candle_core::Result<_>>()?;
//! let mut loss = objective.correction(&losses)?;
//! let step = 0;
//! if let Some(jac) = objective.jacobian(step, &|z: &[Tensor]| f(z, std::slice::from_ref(&x)), out.last())? {
//!     loss = (loss + jac.term)?;
//! }
//! let grads = deq_core::grad::backward(&loss)?;
//! assert!(grads.get(w.as_tensor()).is_some());
//! # Ok(())
//! # }
//! ```

use crate::error::{Result, TrainError};
use candle_core::Tensor;
use deq_core::loss::{fp_correction, jac_reg_states, CorrectionWeight};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;

/// The Jacobian regulariser of one step.
#[derive(Debug, Clone)]
pub struct JacTerm {
    /// `weight * jac_reg(f, z*)`, with its gradient: add it to the loss.
    pub term: Tensor,
    /// The estimate of `||J_f(z*)||_F^2 / numel(z*)` (for metrics).
    pub value: f64,
    /// The weight of this step (`jac_loss_weight`, raised by `jac_incremental`).
    pub weight: f64,
}

/// The options of a [`DeqConfig`] that change the training loss, and how.
#[derive(Debug, Clone)]
pub struct DeqObjective {
    cfg: DeqConfig,
    seed: u64,
}

impl DeqObjective {
    /// The objective of `cfg` for a run seeded with `seed`. Refuses a regulariser that could
    /// never act: a weight with `jac_loss_freq = 0`, or a frequency with no weight.
    pub fn new(cfg: &DeqConfig, seed: u64) -> Result<Self> {
        if cfg.jac_loss_weight < 0.0 || !cfg.jac_loss_weight.is_finite() {
            return Err(TrainError::Config { key: "deq.jac_loss_weight".into(), message: format!("must be a finite non-negative weight, got {}", cfg.jac_loss_weight) });
        }
        let weighted = cfg.jac_loss_weight > 0.0 || cfg.jac_incremental > 0;
        if weighted && cfg.jac_loss_freq <= 0.0 {
            let key = if cfg.jac_loss_weight > 0.0 { "deq.jac_loss_weight" } else { "deq.jac_incremental" };
            return Err(TrainError::Config { key: key.into(), message: "has no effect with jac_loss_freq = 0 (the probability of applying the Jacobian regulariser on a step): set jac_loss_freq, e.g. 1.0".into() });
        }
        if !weighted && cfg.jac_loss_freq > 0.0 {
            return Err(TrainError::Config { key: "deq.jac_loss_freq".into(), message: "has no effect with jac_loss_weight = 0 and jac_incremental = 0".into() });
        }
        if !(cfg.gamma > 0.0 && cfg.gamma.is_finite()) {
            return Err(TrainError::Config { key: "deq.gamma".into(), message: format!("must be a finite positive decay, got {}", cfg.gamma) });
        }
        Ok(Self { cfg: cfg.clone(), seed })
    }

    /// Whether the Jacobian regulariser is on (it may still skip a step, see
    /// [`DeqObjective::jacobian_weight`]).
    pub fn regularises(&self) -> bool {
        self.cfg.jac_loss_freq > 0.0
    }

    /// The names of the options in use that act on the training loss (`deq.n_states`, ...):
    /// for trainers that must refuse them in some mode.
    pub fn active_options(&self) -> Vec<&'static str> {
        let mut out = self.correction_options();
        if self.regularises() {
            out.push("deq.jac_loss_weight");
        }
        out
    }

    /// The options in use that add supervised states (fixed-point correction).
    pub fn correction_options(&self) -> Vec<&'static str> {
        let c = &self.cfg;
        let mut out = Vec::new();
        if c.n_states > 1 {
            out.push("deq.n_states");
        }
        if !c.indexing.is_empty() {
            out.push("deq.indexing");
        }
        if c.sup_gap > 0 {
            out.push("deq.sup_gap");
        }
        if !c.sup_loc.is_empty() {
            out.push("deq.sup_loc");
        }
        out
    }

    /// An error naming the first option in use when the trainer cannot honour any of them in
    /// its current mode (`why` says which mode).
    pub fn refuse(&self, why: &str) -> Result<()> {
        refuse_first(&self.active_options(), why)
    }

    /// Like [`DeqObjective::refuse`], for the fixed-point-correction options only.
    pub fn refuse_correction(&self, why: &str) -> Result<()> {
        refuse_first(&self.correction_options(), why)
    }

    /// Fixed-point correction: `sum_k gamma^(n-k-1) losses[k]` over the per-state task losses
    /// of every state the DEQ returned in training, earliest first (the last, the fixed point,
    /// has weight 1). One state gives its loss unchanged.
    pub fn correction(&self, losses: &[Tensor]) -> Result<Tensor> {
        match losses {
            [] => Err(TrainError::Config { key: "deq.n_states".into(), message: "no supervised state".into() }),
            _ => Ok(fp_correction(losses, CorrectionWeight::Exp { gamma: self.cfg.gamma })?),
        }
    }

    /// The regulariser's weight at `step` when it is applied on that step (TorchDEQ: with
    /// probability `jac_loss_freq`, weight `jac_loss_weight + 0.1 * floor(step / jac_incremental)`),
    /// `None` otherwise. The draw depends only on the seed and `step`.
    pub fn jacobian_weight(&self, step: usize) -> Option<f64> {
        if !self.regularises() {
            return None;
        }
        let weight = self.cfg.jac_weight_at(step);
        let draw = self.step_rng(step, 0).uniform();
        (weight > 0.0 && draw < self.cfg.jac_loss_freq).then_some(weight)
    }

    /// The regulariser at the fixed point `z` of the map `f` (the model's `f` with its inputs
    /// bound; `z` is detached here), or `None` on steps it skips. One Hutchinson vector, as
    /// TorchDEQ; its gradient reaches every parameter `f` depends on.
    pub fn jacobian(&self, step: usize, f: &dyn Fn(&[Tensor]) -> candle_core::Result<Vec<Tensor>>, z: &[Tensor]) -> Result<Option<JacTerm>> {
        let Some(weight) = self.jacobian_weight(step) else { return Ok(None) };
        let z: Vec<Tensor> = z.iter().map(|t| t.detach()).collect();
        let reg = jac_reg_states(f, &z, 1, &mut self.step_rng(step, 1))?;
        let value = reg.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        Ok(Some(JacTerm { term: reg.affine(weight, 0.0)?, value, weight }))
    }

    /// The random stream of `step` (`stream` 0: the draw, 1: the Hutchinson vectors).
    fn step_rng(&self, step: usize, stream: u64) -> DeqRng {
        DeqRng::new(self.seed ^ 0xA5A5_0B1E_C71E_u64.wrapping_mul(step as u64 + 1).rotate_left(17) ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// An error naming the first of `options`, if any.
fn refuse_first(options: &[&'static str], why: &str) -> Result<()> {
    match options.first() {
        Some(key) => Err(TrainError::Config { key: (*key).into(), message: format!("is not supported {why}") }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn cfg(weight: f64, freq: f64, incremental: usize) -> DeqConfig {
        DeqConfig { jac_loss_weight: weight, jac_loss_freq: freq, jac_incremental: incremental, ..Default::default() }
    }

    #[test]
    fn correction_weights_every_state_by_gamma() {
        let o = DeqObjective::new(&DeqConfig { n_states: 3, gamma: 0.5, ..Default::default() }, 0).unwrap();
        assert!(!o.regularises());
        let l: Vec<Tensor> = [1.0f64, 10.0, 100.0].iter().map(|&v| Tensor::new(v, &Device::Cpu).unwrap()).collect();
        assert_eq!(o.correction(&l).unwrap().to_scalar::<f64>().unwrap(), 0.25 + 5.0 + 100.0);
        assert_eq!(o.correction(&l[2..]).unwrap().to_scalar::<f64>().unwrap(), 100.0);
        let e = o.correction(&[]).unwrap_err().to_string();
        assert!(e.contains("deq.n_states") && e.contains("no supervised state"), "{e}");
        assert_eq!(o.active_options(), vec!["deq.n_states"]);
        let e = o.refuse("with amortised training").unwrap_err().to_string();
        assert!(e.contains("deq.n_states") && e.contains("amortised"), "{e}");
        let e = o.refuse_correction("with amortised training").unwrap_err().to_string();
        assert!(e.contains("deq.n_states") && e.contains("amortised"), "{e}");
        // Every option that adds states, by name; sup_gap's "off" (-1) and 0 are not in use.
        let all = DeqObjective::new(&DeqConfig { n_states: 2, indexing: vec![3], sup_gap: 1, sup_loc: vec![2], f_max_iter: 10, ..Default::default() }, 0).unwrap();
        assert_eq!(all.correction_options(), vec!["deq.n_states", "deq.indexing", "deq.sup_gap", "deq.sup_loc"]);
        for gap in [-1, 0] {
            assert!(DeqObjective::new(&DeqConfig { sup_gap: gap, ..Default::default() }, 0).unwrap().correction_options().is_empty());
        }
        assert!(DeqObjective::new(&DeqConfig::default(), 0).unwrap().refuse("here").is_ok());
        let jac = DeqObjective::new(&cfg(1.0, 1.0, 0), 0).unwrap();
        assert_eq!((jac.active_options(), jac.correction_options()), (vec!["deq.jac_loss_weight"], vec![]));
        assert!(jac.refuse_correction("here").is_ok() && jac.refuse("here").is_err());
    }

    #[test]
    fn regulariser_draws_follow_the_frequency_and_the_schedule() {
        let o = DeqObjective::new(&cfg(0.5, 0.3, 0), 11).unwrap();
        let hits = (0..10_000).filter(|&s| o.jacobian_weight(s).is_some()).count();
        assert!((2_800..3_200).contains(&hits), "{hits} of 10000 steps at frequency 0.3");
        // Reproducible from seed and step alone; another seed draws differently.
        let again = DeqObjective::new(&cfg(0.5, 0.3, 0), 11).unwrap();
        let other = DeqObjective::new(&cfg(0.5, 0.3, 0), 12).unwrap();
        let draws = |o: &DeqObjective| (0..200).map(|s| o.jacobian_weight(s).is_some()).collect::<Vec<_>>();
        assert_eq!(draws(&o), draws(&again));
        assert_ne!(draws(&o), draws(&other));
        // Always on: weight 0.5, raised by 0.1 every 10 steps.
        let inc = DeqObjective::new(&cfg(0.5, 1.0, 10), 0).unwrap();
        assert_eq!([0, 9, 10, 25].map(|s| inc.jacobian_weight(s)), [Some(0.5), Some(0.5), Some(0.6), Some(0.7)]);
        // Starting from weight 0 the first 10 steps have nothing to add.
        let from_zero = DeqObjective::new(&cfg(0.0, 1.0, 10), 0).unwrap();
        assert_eq!((from_zero.jacobian_weight(3), from_zero.jacobian_weight(10)), (None, Some(0.1)));
    }

    #[test]
    fn options_without_effect_are_refused_by_name() {
        for (c, key) in [(cfg(1.0, 0.0, 0), "deq.jac_loss_weight"), (cfg(0.0, 0.0, 5), "deq.jac_incremental"), (cfg(0.0, 0.5, 0), "deq.jac_loss_freq"), (cfg(-1.0, 1.0, 0), "deq.jac_loss_weight")] {
            let e = DeqObjective::new(&c, 0).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let e = DeqObjective::new(&DeqConfig { gamma: 0.0, n_states: 2, ..Default::default() }, 0).unwrap_err().to_string();
        assert!(e.contains("deq.gamma"), "{e}");
    }

    #[test]
    fn jacobian_term_is_the_weighted_estimate_at_the_detached_point() {
        let dev = Device::Cpu;
        let a = Var::new(&[[0.5f64, -0.2], [0.1, 0.3]], &dev).unwrap();
        let z = Var::new(&[[0.2f64, -0.7]], &dev).unwrap();
        let f = |z: &[Tensor]| -> candle_core::Result<Vec<Tensor>> { Ok(vec![z[0].matmul(&a.as_tensor().t()?)?.tanh()?]) };
        let o = DeqObjective::new(&cfg(2.0, 1.0, 0), 5).unwrap();
        let t = o.jacobian(4, &f, &[z.as_tensor().clone()]).unwrap().unwrap();
        let want = jac_reg_states(&f, &[z.as_tensor().detach()], 1, &mut o.step_rng(4, 1)).unwrap().to_scalar::<f64>().unwrap();
        assert_eq!((t.weight, t.value), (2.0, want));
        assert!((t.term.to_scalar::<f64>().unwrap() - 2.0 * want).abs() < 1e-15);
        let g = t.term.backward().unwrap();
        assert!(g.get(a.as_tensor()).is_some() && g.get(z.as_tensor()).is_none(), "the gradient reaches f's parameters, not the fixed point");
        let off = DeqObjective::new(&DeqConfig::default(), 5).unwrap();
        assert!(off.jacobian(4, &f, &[z.as_tensor().clone()]).unwrap().is_none());
    }
}
