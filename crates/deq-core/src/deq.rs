//! The DEQ layer: solves `z* = f(z*, x)` and attaches the configured gradient.

use crate::config::{Core, DeqConfig};
use crate::error::{DeqError, Result};
use crate::grad::{implicit_backward_op, phantom_steps, BackwardStats, Vjp};
use crate::loss::power_method;
use crate::rng::DeqRng;
use crate::solver::{get_solver, Solver, SolverOptions, SolverStats};
use crate::state::{detach_state, StateLayout};
use candle_core::{Tensor, Var};
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

/// What a DEQ forward pass returns.
#[derive(Debug, Clone)]
pub struct DeqOutput {
    /// The states to supervise, earliest first; each state is a list of tensors shaped like
    /// `z0`. The last one is the fixed point (with IFT or phantom gradient attached in training).
    pub states: Vec<Vec<Tensor>>,
    /// Forward solver statistics (for the sliced core: all segments chained).
    pub stats: SolverStats,
    /// Adjoint-solve statistics, filled in when backward runs through an IFT state.
    pub backward_stats: BackwardStats,
}

impl DeqOutput {
    /// The last (fixed-point) state.
    pub fn last(&self) -> &[Tensor] {
        self.states.last().map(|s| s.as_slice()).unwrap_or(&[])
    }
    /// The first tensor of the last state (for single-tensor DEQs).
    pub fn z(&self) -> &Tensor {
        &self.last()[0]
    }
}

/// A deep equilibrium layer built from a [`DeqConfig`] (TorchDEQ's `get_deq`).
///
/// `f` receives the state (a list of tensors, batch first) and the injected inputs, and returns
/// the next state. Inputs are passed explicitly so that the solver and the adjoint solve run on
/// detached copies while the gradient still reaches whatever produced them.
pub struct Deq {
    cfg: DeqConfig,
    pub(crate) f_solver: Arc<dyn Solver>,
    pub(crate) b_solver: Arc<dyn Solver>,
    training: bool,
    rng: Mutex<DeqRng>,
}

impl std::fmt::Debug for Deq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deq").field("cfg", &self.cfg).field("training", &self.training).finish()
    }
}

/// Cumulative solver steps of the indexing core (TorchDEQ's `_compute_f_iter`).
pub fn indexing_steps(cfg: &DeqConfig, max_iter: usize) -> Vec<usize> {
    if cfg.n_states > 1 {
        let n = cfg.n_states.min(max_iter).max(1);
        let d = max_iter / n;
        if max_iter % n == 0 {
            (1..=n).map(|k| k * d).collect()
        } else {
            (0..n).map(|k| max_iter - (n - k - 1) * d).collect()
        }
    } else {
        let mut v: Vec<usize> = cfg.indexing.iter().copied().filter(|&i| i < max_iter).collect();
        v.push(max_iter);
        v
    }
}

/// Segment lengths of the sliced core.
pub fn slice_lengths(cfg: &DeqConfig, max_iter: usize) -> Vec<usize> {
    let steps = indexing_steps(cfg, max_iter);
    let mut prev = 0;
    steps
        .iter()
        .map(|&s| {
            let d = s - prev;
            prev = s;
            d
        })
        .collect()
}

impl Deq {
    /// Builds the layer; validates the configuration.
    pub fn new(cfg: DeqConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            f_solver: get_solver(&cfg.f_solver)?,
            b_solver: get_solver(&cfg.b_solver)?,
            cfg,
            training: true,
            rng: Mutex::new(DeqRng::new(0x5EED)),
        })
    }

    /// Reseeds the generator used for power-method probes.
    pub fn with_seed(self, seed: u64) -> Self {
        *self.rng.lock().expect("rng poisoned") = DeqRng::new(seed);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &DeqConfig {
        &self.cfg
    }

    /// Switches between training (gradients attached, `f_max_iter`) and evaluation
    /// (`eval_f_max_iter` / `eval_factor`, no gradient unless `differentiable_eval`).
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// True in training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }

    pub(crate) fn f_opts(&self, max_iter: usize, indexing: Vec<usize>) -> SolverOptions {
        SolverOptions { max_iter, tol: self.cfg.f_tol, stop_mode: self.cfg.f_stop_mode, indexing, ..Default::default() }
    }

    pub(crate) fn b_opts(&self) -> SolverOptions {
        SolverOptions { max_iter: self.cfg.b_max_iter, tol: self.cfg.b_tol, stop_mode: self.cfg.b_stop_mode, ..Default::default() }
    }

    /// Single-tensor convenience form of [`Deq::forward`].
    pub fn forward1<F>(&self, f: F, inputs: &[Tensor], z0: &Tensor) -> Result<DeqOutput>
    where
        F: Fn(&Tensor, &[Tensor]) -> candle_core::Result<Tensor>,
    {
        self.forward(|z: &[Tensor], x: &[Tensor]| Ok(vec![f(&z[0], x)?]), inputs, std::slice::from_ref(z0))
    }

    /// Solves `z* = f(z*, inputs)` from `z0` and returns the supervised states.
    pub fn forward<F>(&self, f: F, inputs: &[Tensor], z0: &[Tensor]) -> Result<DeqOutput>
    where
        F: Fn(&[Tensor], &[Tensor]) -> candle_core::Result<Vec<Tensor>>,
    {
        let layout = StateLayout::of(z0)?;
        let inputs_d = detach_state(inputs);
        let first_err: RefCell<Option<DeqError>> = RefCell::new(None);
        // Flat view of f: (batch, width) -> (batch, width), remembering layout errors.
        let flat_f = |z: &Tensor, x: &[Tensor]| -> candle_core::Result<Tensor> {
            match layout.apply_flat(z, |zs| f(zs, x)) {
                Ok(t) => Ok(t),
                Err(DeqError::Candle(e)) => Err(e),
                Err(e) => {
                    let msg = e.to_string();
                    first_err.borrow_mut().get_or_insert(e);
                    Err(candle_core::Error::Msg(msg))
                }
            }
        };
        let lift = |r: Result<crate::solver::Solution>| -> Result<crate::solver::Solution> {
            r.map_err(|e| first_err.borrow_mut().take().unwrap_or(e))
        };
        let mut solve_fn = |z: &Tensor| flat_f(z, &inputs_d);
        let z0f = layout.flatten(&detach_state(z0))?;
        let backward_stats = BackwardStats::default();

        let ift_state = |z_star: &Tensor| -> Result<Vec<Tensor>> {
            let z = Var::from_tensor(&z_star.detach())?;
            let new = flat_f(z.as_tensor(), inputs)?;
            // One graph serves both the parameter gradient and the adjoint's products when the
            // pruned plan applies; candle's full backward needs a copy with detached inputs.
            let planned = Vjp::new(&new, &z);
            let vjp = if planned.is_pruned() { planned } else { Vjp::Full { out: flat_f(z.as_tensor(), &inputs_d)?, wrt: z } };
            Ok(vec![implicit_backward_op(&new, vjp, self.b_solver.clone(), self.b_opts(), backward_stats.clone())?])
        };
        let phantom_state = |z_star: &Tensor, k: usize| -> Result<Vec<Tensor>> {
            let mut step = |z: &Tensor| flat_f(z, inputs);
            Ok(phantom_steps(&mut step, z_star, k, self.cfg.tau, self.cfg.sup_gap, &self.cfg.sup_loc)?)
        };
        let grad_for = |i: usize, n: usize, z_star: &Tensor| -> Result<Vec<Tensor>> {
            if i + 1 == n && self.cfg.uses_ift() {
                ift_state(z_star)
            } else {
                let k = if self.cfg.grad.len() == 1 { self.cfg.grad[0] } else { self.cfg.grad[i.min(self.cfg.grad.len() - 1)] };
                phantom_state(z_star, k)
            }
        };

        let mut flat_states: Vec<Tensor> = Vec::new();
        let stats;
        if !self.training {
            let sol = lift(self.f_solver.solve(&mut solve_fn, &z0f, &self.f_opts(self.cfg.eval_max_iter(), vec![])))?;
            let mut st = sol.stats;
            if self.cfg.sradius_mode {
                let z = Var::from_tensor(&sol.z.detach())?;
                let fz = flat_f(z.as_tensor(), &inputs_d)?;
                let mut rng = self.rng.lock().expect("rng poisoned");
                st.sradius = Some(power_method(&fz, &z, 100, &mut rng)?);
            }
            stats = st;
            if self.cfg.differentiable_eval {
                flat_states.extend(grad_for(0, 1, &sol.z)?);
            } else {
                flat_states.push(sol.z.detach());
            }
        } else {
            match self.cfg.core {
                Core::Indexing => {
                    let steps = indexing_steps(&self.cfg, self.cfg.f_max_iter);
                    let n = steps.len();
                    let sol = lift(self.f_solver.solve(&mut solve_fn, &z0f, &self.f_opts(self.cfg.f_max_iter, steps)))?;
                    for (i, z) in sol.trajectory.iter().enumerate() {
                        flat_states.extend(grad_for(i, n, z)?);
                    }
                    stats = sol.stats;
                }
                Core::Sliced => {
                    let segs = slice_lengths(&self.cfg, self.cfg.f_max_iter);
                    let n = segs.len();
                    let mut z_cur = z0f.clone();
                    let mut all: Option<SolverStats> = None;
                    for (i, &seg) in segs.iter().enumerate() {
                        let sol = lift(self.f_solver.solve(&mut solve_fn, &z_cur, &self.f_opts(seg, vec![])))?;
                        match all.as_mut() {
                            None => all = Some(sol.stats),
                            Some(a) => a.chain(sol.stats),
                        }
                        let out = grad_for(i, n, &sol.z)?;
                        z_cur = out.last().expect("a gradient state").detach();
                        flat_states.extend(out);
                    }
                    stats = all.expect("at least one segment");
                }
            }
        }
        let states = flat_states.iter().map(|s| layout.unflatten(s)).collect::<Result<Vec<_>>>()?;
        Ok(DeqOutput { states, stats, backward_stats })
    }
}
