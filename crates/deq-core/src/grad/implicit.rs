//! Implicit differentiation (IFT).
//!
//! At the fixed point `z* = f(z*, theta)`, the gradient of a loss `L(z*)` is
//! `dL/dtheta = y^T df/dtheta` where `y` solves the adjoint fixed point `y = J^T y + dL/dz*`
//! (`J = df/dz` at `z*`). candle has no gradient hooks, so the layer returns
//! `op(f(z*, theta))` where `op` is a custom op whose forward is the identity and whose backward
//! replaces the incoming gradient by `y`, found with the backward solver through
//! vector-Jacobian products of a graph of `f` built once at `z*`. Memory is one evaluation of
//! `f`, whatever the number of solver iterations.

use super::vjp::Vjp;
use crate::solver::{Solver, SolverOptions, SolverStats};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// Statistics of the adjoint solves, filled in when backward runs (TorchDEQ's `backward_writer`).
#[derive(Debug, Clone, Default)]
pub struct BackwardStats(Arc<Mutex<Vec<SolverStats>>>);

impl BackwardStats {
    /// Statistics of every adjoint solve run so far through this handle.
    pub fn get(&self) -> Vec<SolverStats> {
        self.0.lock().expect("backward stats poisoned").clone()
    }
    fn push(&self, s: SolverStats) {
        self.0.lock().expect("backward stats poisoned").push(s);
    }
}

struct ImplicitBackward {
    vjp: Vjp,
    solver: Arc<dyn Solver>,
    opts: SolverOptions,
    stats: BackwardStats,
}

fn copy_contiguous(s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("deq-implicit expects a contiguous input".into()))?;
    Ok(match s {
        CpuStorage::F32(v) => CpuStorage::F32(v[a..b].to_vec()),
        CpuStorage::F64(v) => CpuStorage::F64(v[a..b].to_vec()),
        CpuStorage::F16(v) => CpuStorage::F16(v[a..b].to_vec()),
        CpuStorage::BF16(v) => CpuStorage::BF16(v[a..b].to_vec()),
        _ => candle_core::bail!("deq-implicit supports floating-point states only"),
    })
}

impl CustomOp1 for ImplicitBackward {
    fn name(&self) -> &'static str {
        "deq-implicit"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((copy_contiguous(s, l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        if l.start_offset() != 0 || !l.is_contiguous() {
            candle_core::bail!("deq-implicit expects a contiguous input at offset 0");
        }
        Ok((s.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = grad.detach().contiguous()?;
        let mut adjoint = |y: &Tensor| -> candle_core::Result<Tensor> { self.vjp.apply(y)? + &g };
        let y0 = g.zeros_like()?;
        let sol = self
            .solver
            .solve(&mut adjoint, &y0, &self.opts)
            .map_err(|e| candle_core::Error::Msg(format!("implicit backward solve failed: {e}")))?;
        let diverging = sol.stats.diverging(self.opts.tol, crate::solver::DIVERGENCE_FACTOR);
        let summary = sol.stats.summary();
        self.stats.push(sol.stats);
        if !diverging.is_empty() {
            return Err(candle_core::Error::wrap(crate::DeqError::Diverging { context: "adjoint (implicit backward) solve", samples: diverging, summary }));
        }
        Ok(Some(sol.z.detach()))
    }
}

/// Wraps `new = f(z*)` (built with gradient tracking) so that backward solves the adjoint system.
///
/// * `new` is `f(z)` at the fixed point `z` (a fresh [`candle_core::Var`]) with the real inputs:
///   the path to the parameters and inputs;
/// * `vjp` computes `y^T df/dz` at that point: a pruned plan over `new`'s own graph when every
///   op has a rule (see [`super::vjp`]), otherwise candle's backward through a copy of `f(z)`
///   built with detached inputs.
///
/// Returns a tensor equal to `new` whose backward pass feeds `new` the adjoint solution.
pub fn implicit_backward_op(
    new: &Tensor,
    vjp: Vjp,
    solver: Arc<dyn Solver>,
    opts: SolverOptions,
    stats: BackwardStats,
) -> candle_core::Result<Tensor> {
    let new = new.contiguous()?;
    new.apply_op1_arc(Arc::new(Box::new(ImplicitBackward { vjp, solver, opts, stats })))
}
