//! Amortised implicit gradients with a carried adjoint.
//!
//! When a DEQ is trained on the same inputs step after step (an implicit neural representation
//! fitted to one signal), the fixed point of the previous step is a warm start and a few tracked
//! steps from it are enough for the forward pass (the zoo's amortised solving). The implicit
//! gradient needs the adjoint `a* = (I - J^T)^{-1} g` of `g = dL/dz*`; it changes as slowly as
//! `z*` does, so it can be warm-started the same way, and then one backward pass through the
//! tracked steps both uses and advances it:
//!
//! * forward: `k` damped steps `z_{i+1} = tau f(z_i) + (1 - tau) z_i` with graph from the
//!   cached `z_0` (a leaf variable);
//! * backward: the gradient arriving at `z_k` is `g + c`, with `c` the carried adjoint (added to
//!   the loss as the term `sum(z_k * c)`, see [`AdjointCarry::seed`]); the parameters receive
//!   `F_theta^T sum_{i<k} (J^T)^i (g + c)` and the leaf `z_0` receives `(J^T)^k (g + c)`, which is
//!   the next step's `c`.
//!
//! At a fixed point of this recursion (`z`, parameters and `c` unchanged) `c = (J^T)^k (g + c)`,
//! so `g + c = (I - (J^T)^k)^{-1} g` and the parameter gradient is exactly the implicit one,
//! `F_theta^T (I - J^T)^{-1} g`, for any `k >= 1` and any damping `tau` (tested against finite
//! differences). Per step it costs `k` evaluations of `f` and one backward pass through them, the
//! same as `k` phantom steps, while the phantom gradient with small `k` stays biased (`k = 1` is
//! the Jacobian-free gradient `F_theta^T g`). The Jacobian inside `c` lags one step behind the
//! parameters, as the warm start itself does. This is not in TorchDEQ; with `c = 0` it reduces to
//! TorchDEQ's phantom gradient.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// The carried adjoint of an amortised DEQ and the leaf of the step in flight.
#[derive(Debug, Clone, Default)]
pub struct AdjointCarry {
    adjoint: Option<Tensor>,
    start: Option<Var>,
}

impl AdjointCarry {
    /// A carry starting from `adjoint` (`None`: zero, the first step is a phantom step).
    pub fn new(adjoint: Option<Tensor>) -> Self {
        Self { adjoint, start: None }
    }

    /// The carried adjoint `c` (the gradient that the next step adds at its last state).
    pub fn adjoint(&self) -> Option<&Tensor> {
        self.adjoint.as_ref()
    }

    /// Whether an [`AdjointCarry::unroll`] awaits its [`AdjointCarry::update`].
    pub fn is_pending(&self) -> bool {
        self.start.is_some()
    }

    /// Forgets the adjoint (after a fresh solve, when the state no longer matches it).
    pub fn reset(&mut self) {
        self.adjoint = None;
        self.start = None;
    }

    /// Takes `k >= 1` damped steps of `f` from `z0` with graph and returns the last state. `z0`
    /// becomes a leaf whose gradient [`AdjointCarry::update`] reads.
    pub fn unroll(&mut self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>, z0: &Tensor, k: usize, tau: f64) -> Result<Tensor> {
        if k == 0 {
            candle_core::bail!("a carried-adjoint step needs at least one tracked step (grad >= 1)");
        }
        let start = Var::from_tensor(&z0.detach())?;
        let mut z = start.as_tensor().clone();
        for _ in 0..k {
            let fz = f(&z)?;
            z = crate::solver::damp(&fz, &z, tau)?;
        }
        self.start = Some(start);
        Ok(z)
    }

    /// The term `sum(z * c)` to add to the loss before `backward` (`None` while `c` is zero),
    /// where `z` is the state returned by [`AdjointCarry::unroll`]. Its value is not a loss;
    /// only its gradient, `c` at `z`, matters.
    pub fn seed(&self, z: &Tensor) -> Result<Option<Tensor>> {
        match &self.adjoint {
            Some(c) => Ok(Some((z * c)?.sum_all()?)),
            None => Ok(None),
        }
    }

    /// After `backward`: the gradient at the leaf of the last [`AdjointCarry::unroll`] becomes
    /// the carried adjoint (zero when the loss did not reach it).
    pub fn update(&mut self, grads: &GradStore) -> Result<()> {
        let start = self.start.take().ok_or_else(|| candle_core::Error::Msg("AdjointCarry::update without a preceding unroll".into()))?;
        self.adjoint = grads.get(start.as_tensor()).map(|g| g.detach());
        Ok(())
    }
}
