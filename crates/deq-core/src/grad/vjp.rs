//! Vector-Jacobian products and whole-loss backpropagation, with or without graph pruning.
//!
//! With the cargo feature `pruned-vjp` (needs a candle-core with `Tensor::op` public; see
//! [`super::pruned`]), [`Vjp`] and [`backward`] propagate only through the nodes on a path to
//! the wanted inputs and use corrected rules for `scatter_add`, `scatter` and `max_pool2d`.
//! Without it they call candle's `Tensor::backward`, which computes every gradient: the same
//! values (for graphs without those three ops), more arithmetic. `deq-bench` reports both.

use candle_core::{Tensor, Var};

#[cfg(feature = "pruned-vjp")]
use super::pruned::VjpPlan;

/// True when this build prunes reverse passes (the `pruned-vjp` feature).
pub const PRUNED: bool = cfg!(feature = "pruned-vjp");

/// A vector-Jacobian product at a fixed point of the graph: the pruned [`VjpPlan`] when the
/// feature is on and every op on the path has a rule, candle's full backward otherwise.
#[derive(Debug, Clone)]
pub enum Vjp {
    /// The pruned reverse pass.
    #[cfg(feature = "pruned-vjp")]
    Pruned(VjpPlan),
    /// candle's backward through `out` (computes every gradient, keeps the one of `wrt`).
    Full {
        /// The output.
        out: Tensor,
        /// The input.
        wrt: Var,
    },
}

impl Vjp {
    /// Plans `v^T d out / d wrt`, falling back to candle's backward when needed.
    pub fn new(out: &Tensor, wrt: &Var) -> Self {
        #[cfg(feature = "pruned-vjp")]
        match VjpPlan::new(std::slice::from_ref(out), std::slice::from_ref(wrt.as_tensor())) {
            Ok(p) => return Vjp::Pruned(p),
            Err(e) => tracing::debug!("{e}; using candle's full backward"),
        }
        Vjp::Full { out: out.clone(), wrt: wrt.clone() }
    }

    /// True when the pruned pass is used.
    pub fn is_pruned(&self) -> bool {
        !matches!(self, Vjp::Full { .. })
    }

    /// `v^T d out / d wrt`, detached.
    pub fn apply(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            #[cfg(feature = "pruned-vjp")]
            Vjp::Pruned(p) => Ok(p.apply(std::slice::from_ref(v))?.remove(0)),
            Vjp::Full { out, wrt } => full_vjp(out, wrt, v),
        }
    }
}

/// The vector-Jacobian product `y^T d out / d input` through candle's full backward, detached.
pub fn full_vjp(out: &Tensor, input: &Var, y: &Tensor) -> candle_core::Result<Tensor> {
    let grads = (out * y)?.sum_all()?.backward()?;
    match grads.get(input.as_tensor()) {
        Some(g) => Ok(g.detach()),
        None => input.as_tensor().zeros_like(),
    }
}

/// Backpropagation from a scalar `loss` to every variable it depends on, like candle's
/// `Tensor::backward`. With `pruned-vjp` it visits only the nodes on a path to a variable and
/// computes only the input gradients that lead to one (candle computes the gradient of both
/// operands of every tracked product, and of every intermediate; PyTorch prunes the same way
/// through `requires_grad`), falling back to candle's backward when the graph holds an op
/// without a rule here. Without the feature it is `loss.backward()`.
pub fn backward(loss: &Tensor) -> candle_core::Result<candle_core::backprop::GradStore> {
    #[cfg(feature = "pruned-vjp")]
    {
        let plan = match VjpPlan::for_variables(std::slice::from_ref(loss)) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("{e}; using candle's full backward");
                return loss.backward();
            }
        };
        let seed = loss.ones_like()?;
        let grads = plan.apply(std::slice::from_ref(&seed))?;
        let mut store = candle_core::backprop::GradStore::default();
        for (v, g) in plan.wrt().iter().zip(grads) {
            store.insert(v, g);
        }
        Ok(store)
    }
    #[cfg(not(feature = "pruned-vjp"))]
    loss.backward()
}

/// One vector-Jacobian product `y^T d out / d input` (pruned when possible), detached.
pub fn vjp(out: &Tensor, input: &Var, y: &Tensor) -> candle_core::Result<Tensor> {
    Vjp::new(out, input).apply(y)
}
