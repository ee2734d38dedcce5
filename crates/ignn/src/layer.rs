//! The implicit graph layer `X = relu(W X A + Omega_1 U A + Omega_2 U)` (features as columns,
//! as in the paper), stored node-major: `Xn = relu(A^T (Xn W^T) + A^T (U Omega_1^T) + U Omega_2^T)`.

use crate::graph::{aggregate, EdgeTensors};
use crate::projection::project_inf_norm;
use candle_core::{DType, Device, Result, Tensor, Var};
use deq_core::rng::DeqRng;
use deq_core::{Deq, DeqConfig, SolverStats};

/// One implicit graph layer with `p` input and `m` hidden features per node.
#[derive(Debug)]
pub struct ImplicitGraph {
    w: Var,
    omega1: Var,
    omega2: Option<Var>,
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
        let w = Var::from_tensor(&rng.rand((m, m), -s, s, dtype, dev)?)?;
        let omega1 = Var::from_tensor(&rng.rand((m, p), -s, s, dtype, dev)?)?;
        let omega2 = if skip_input { Some(Var::from_tensor(&rng.rand((m, p), -s, s, dtype, dev)?)?) } else { None };
        let deq_train = Deq::new(deq.clone()).map_err(deq_err)?;
        let mut deq_eval = Deq::new(deq).map_err(deq_err)?;
        deq_eval.set_training(false);
        Ok(Self { w, omega1, omega2, kappa, deq_train, deq_eval })
    }

    /// Projects `W` onto `||W||_inf <= kappa / lambda_pf` (in place; called by `forward`).
    pub fn project(&self, lambda_pf: f64) -> Result<()> {
        if self.kappa > 0.0 && lambda_pf > 0.0 {
            project_inf_norm(&self.w, self.kappa / lambda_pf)?;
        }
        Ok(())
    }

    /// The map `f(Xn) = relu(A^T Xn W^T + B)` for node-major `xn` (`(n, m)`).
    pub fn f(&self, xn: &Tensor, b: &Tensor, a: &EdgeTensors) -> Result<Tensor> {
        (aggregate(&xn.matmul(&self.w.as_tensor().t()?)?, a)? + b)?.relu()
    }

    /// The injection `B = A^T U Omega_1^T (+ U Omega_2^T)` for node-major inputs `u` (`(n, p)`).
    pub fn injection(&self, u: &Tensor, a: &EdgeTensors) -> Result<Tensor> {
        let b = aggregate(&u.matmul(&self.omega1.as_tensor().t()?)?, a)?;
        match &self.omega2 {
            Some(o2) => b + u.matmul(&o2.as_tensor().t()?)?,
            None => Ok(b),
        }
    }

    /// The equilibrium features `(n, m)` for inputs `u` (`(n, p)`), with the configured gradient
    /// in training. The whole graph is one sample of the solver (its nodes are coupled).
    pub fn forward(&self, u: &Tensor, a: &EdgeTensors, lambda_pf: f64, train: bool) -> Result<(Tensor, SolverStats)> {
        self.project(lambda_pf)?;
        let b = self.injection(u, a)?;
        let (n, m) = b.dims2()?;
        let z0 = Tensor::zeros((1, n, m), b.dtype(), b.device())?;
        let deq = if train { &self.deq_train } else { &self.deq_eval };
        let out = deq
            .forward(
                |z: &[Tensor], inp: &[Tensor]| Ok(vec![self.f(&z[0].reshape((n, m))?, &inp[0], a)?.reshape((1, n, m))?]),
                std::slice::from_ref(&b),
                std::slice::from_ref(&z0),
            )
            .map_err(deq_err)?;
        Ok((out.last()[0].reshape((n, m))?, out.stats))
    }

    /// `W`, `Omega_1` (and `Omega_2`) with their names under `prefix`.
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        out.push((format!("{prefix}.w"), self.w.clone()));
        out.push((format!("{prefix}.omega1"), self.omega1.clone()));
        if let Some(o) = &self.omega2 {
            out.push((format!("{prefix}.omega2"), o.clone()));
        }
    }

    /// The weight `W` (for tests and diagnostics).
    pub fn w(&self) -> &Var {
        &self.w
    }
}
