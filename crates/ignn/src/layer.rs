//! The implicit graph layer `X = relu(W X A + Omega_1 U A + Omega_2 U)` (features as columns,
//! as in the paper), stored node-major: `Xn = relu(A^T (Xn W^T) + A^T (U Omega_1^T) + U Omega_2^T)`.
//!
//! `W`, `Omega_1` and `Omega_2` may be reparameterised by weight or spectral norm (the `norm_*`
//! keys of `[deq]`, as the zoo's `apply_norm`), recomputed at every forward. The well-posedness
//! projection then acts on the normalised `W` and passes gradients straight through to its
//! parameters (what the zoo's in-place `W.data` projection does); without a norm it projects
//! the parameter itself (projected gradient, as the IGNN paper).

use crate::graph::{aggregate, EdgeTensors};
use crate::projection::{project_inf_norm, project_tensor};
use candle_core::{DType, Device, Result, Tensor, Var};
use deq_core::norm::{NormOptions, NormedWeight};
use deq_core::rng::DeqRng;
use deq_core::{Deq, DeqConfig, NormType, SolverStats};
use deq_train::{DeqObjective, JacTerm};

/// One solve of an [`ImplicitGraph`].
#[derive(Debug)]
pub struct LayerSolve {
    /// The states `(n, m)` the DEQ returned, earliest first (the last is the fixed point).
    pub states: Vec<Tensor>,
    /// The weight `f` used (after normalisation and projection).
    pub w: Tensor,
    /// The injection `f` used.
    pub b: Tensor,
    /// Forward solver statistics.
    pub stats: SolverStats,
    /// Receives the adjoint solves' statistics when the implicit backward runs.
    pub backward: deq_core::grad::BackwardStats,
}

impl LayerSolve {
    /// The fixed point `(n, m)`.
    pub fn last(&self) -> &Tensor {
        self.states.last().expect("a DEQ returns at least one state")
    }
}

/// One implicit graph layer with `p` input and `m` hidden features per node.
#[derive(Debug)]
pub struct ImplicitGraph {
    w: NormedWeight,
    omega1: NormedWeight,
    omega2: Option<NormedWeight>,
    kappa: f64,
    deq_train: Deq,
    deq_eval: Deq,
}

fn deq_err(e: deq_core::DeqError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl ImplicitGraph {
    /// A layer `p -> m` with the reference initialisation `U(-1/sqrt(m), 1/sqrt(m))`;
    /// `skip_input` adds the `Omega_2 U` term; `kappa` (in (0, 1)) bounds
    /// `||W||_inf lambda_pf(A)` (0 disables the projection).
    #[allow(clippy::too_many_arguments)]
    pub fn new(p: usize, m: usize, skip_input: bool, kappa: f64, deq: DeqConfig, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let s = 1.0 / (m as f64).sqrt();
        let opts = NormOptions::from_config(&deq);
        // Spectral norm draws its power-iteration vector from `rng`; without a norm nothing is
        // drawn, so the initialisation stream is that of the plain layer.
        let normed = |v: Tensor, rng: &mut DeqRng| -> Result<NormedWeight> {
            let mut scratch = DeqRng::new(0);
            let r = if opts.norm_type == NormType::None { &mut scratch } else { rng };
            NormedWeight::new(Var::from_tensor(&v)?, opts, r).map_err(deq_err)
        };
        let w = rng.rand((m, m), -s, s, dtype, dev)?;
        let w = normed(w, rng)?;
        let o1 = rng.rand((m, p), -s, s, dtype, dev)?;
        let omega1 = normed(o1, rng)?;
        let omega2 = if skip_input {
            let o2 = rng.rand((m, p), -s, s, dtype, dev)?;
            Some(normed(o2, rng)?)
        } else {
            None
        };
        let deq_train = Deq::new(deq.clone()).map_err(deq_err)?;
        let mut deq_eval = Deq::new(deq).map_err(deq_err)?;
        deq_eval.set_training(false);
        Ok(Self { w, omega1, omega2, kappa, deq_train, deq_eval })
    }

    /// Recomputes the normalised weights and returns `W` projected onto
    /// `||W||_inf <= kappa / lambda_pf` (called by `forward`; `kappa = 0` disables the
    /// projection). Without a norm the parameter itself is projected in place.
    pub fn prepare(&self, lambda_pf: f64) -> Result<Tensor> {
        let radius = if self.kappa > 0.0 && lambda_pf > 0.0 { Some(self.kappa / lambda_pf) } else { None };
        let plain = self.w.options().norm_type == NormType::None;
        if let (Some(r), true) = (radius, plain) {
            project_inf_norm(self.w.raw(), r)?;
        }
        for nw in [Some(&self.w), Some(&self.omega1), self.omega2.as_ref()].into_iter().flatten() {
            nw.reset().map_err(deq_err)?;
        }
        let w = self.w.weight();
        match (radius, plain) {
            (Some(r), false) => {
                // Straight-through: the value of P(W), the gradient of W.
                let p = project_tensor(&w, r)?;
                w.clone() + (p - w)?.detach()
            }
            _ => Ok(w),
        }
    }

    /// The map `f(Xn) = relu(A^T Xn W^T + B)` for node-major `xn` (`(n, m)`) and the weight
    /// `w` returned by [`ImplicitGraph::prepare`].
    pub fn f(&self, w: &Tensor, xn: &Tensor, b: &Tensor, a: &EdgeTensors) -> Result<Tensor> {
        (aggregate(&xn.matmul(&w.t()?)?, a)? + b)?.relu()
    }

    /// The injection `B = A^T U Omega_1^T (+ U Omega_2^T)` for node-major inputs `u` (`(n, p)`).
    pub fn injection(&self, u: &Tensor, a: &EdgeTensors) -> Result<Tensor> {
        let b = aggregate(&u.matmul(&self.omega1.weight().t()?)?, a)?;
        match &self.omega2 {
            Some(o2) => b + u.matmul(&o2.weight().t()?)?,
            None => Ok(b),
        }
    }

    /// The equilibrium features `(n, m)` for inputs `u` (`(n, p)`), with the configured gradient
    /// in training, the forward solve's statistics and the handle that receives the adjoint
    /// solves' statistics when the implicit backward runs. The whole graph is one sample of the
    /// solver (its nodes are coupled).
    pub fn forward(&self, u: &Tensor, a: &EdgeTensors, lambda_pf: f64, train: bool) -> Result<(Tensor, SolverStats, deq_core::grad::BackwardStats)> {
        let s = self.forward_states(u, a, lambda_pf, train)?;
        Ok((s.last().clone(), s.stats, s.backward))
    }

    /// [`ImplicitGraph::forward`] with every state the DEQ returned (in training one per
    /// supervised state) and the weight and injection `f` was solved with.
    pub fn forward_states(&self, u: &Tensor, a: &EdgeTensors, lambda_pf: f64, train: bool) -> Result<LayerSolve> {
        let w = self.prepare(lambda_pf)?;
        let b = self.injection(u, a)?;
        let (n, m) = b.dims2()?;
        let z0 = Tensor::zeros((1, n, m), b.dtype(), b.device())?;
        let deq = if train { &self.deq_train } else { &self.deq_eval };
        let out = deq
            .forward(
                |z: &[Tensor], inp: &[Tensor]| Ok(vec![self.f(&w, &z[0].reshape((n, m))?, &inp[0], a)?.reshape((1, n, m))?]),
                std::slice::from_ref(&b),
                std::slice::from_ref(&z0),
            )
            .map_err(deq_err)?;
        let states = out.states.iter().map(|z| z[0].reshape((n, m))).collect::<Result<Vec<_>>>()?;
        Ok(LayerSolve { states, w, b, stats: out.stats, backward: out.backward_stats })
    }

    /// The Jacobian regulariser of `objective` at step `step` at the fixed point of `solve`
    /// (`None` on steps it skips).
    pub fn jacobian(&self, solve: &LayerSolve, a: &EdgeTensors, objective: &DeqObjective, step: usize) -> deq_train::Result<Option<JacTerm>> {
        let f = |z: &[Tensor]| -> Result<Vec<Tensor>> { Ok(vec![self.f(&solve.w, &z[0], &solve.b, a)?]) };
        objective.jacobian(step, &f, std::slice::from_ref(solve.last()))
    }

    /// The parameters with their names under `prefix`: `w`, `omega1`, `omega2` without a
    /// norm; `w.weight_v`, `w.weight_g`, ... with one.
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        for (name, nw) in [("w", Some(&self.w)), ("omega1", Some(&self.omega1)), ("omega2", self.omega2.as_ref())] {
            let Some(nw) = nw else { continue };
            if nw.options().norm_type == NormType::None {
                out.push((format!("{prefix}.{name}"), nw.raw().clone()));
            } else {
                for (k, v) in nw.named_vars() {
                    out.push((format!("{prefix}.{name}.{k}"), v));
                }
            }
        }
    }

    /// The raw parameter of `W` (for tests and diagnostics).
    pub fn w(&self) -> &Var {
        self.w.raw()
    }

    /// The normalised `W` as of the last forward (before the projection).
    pub fn w_normalized(&self) -> Tensor {
        self.w.weight()
    }
}
