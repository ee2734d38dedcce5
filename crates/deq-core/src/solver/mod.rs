//! Fixed-point solvers.
//!
//! Every solver finds `z* = f(z*)` for a batched state `z` of shape `(batch, width)` (multi-tensor
//! states are flattened by [`crate::state::StateLayout`] first). Solvers follow TorchDEQ's
//! semantics: residuals are measured per sample, the best iterate is kept per sample, the solve
//! stops once every sample's current residual is under `tol`, and `indexing` asks for the
//! best-so-far states after given numbers of function evaluations (NFE).
//!
//! Differences from TorchDEQ, on purpose (each one a TorchDEQ defect):
//! * a step is always one function evaluation, for every solver, so `max_iter` is a true NFE
//!   budget and `indexing` means the same thing for every solver (TorchDEQ's Broyden is off by one
//!   and its Anderson cannot return steps 1 and 2);
//! * when the solver stops early, every requested index not yet reached receives the final best
//!   state, so the trajectory always has `indexing.len()` entries;
//! * Anderson's Tikhonov term is relative to the scale of the Gram matrix, so it does not stall
//!   at tight tolerances;
//! * Broyden returns `f(z)` of its best point `z`, like the other solvers (TorchDEQ returns `z`);
//! * the output of `f` is detached inside the solver, so iterates never hold a graph even when
//!   `f` uses trainable variables (candle has no `no_grad` mode).

mod anderson;
mod broyden;
mod fixed_point;
mod rows;
pub mod linalg;
mod stats;

pub use anderson::{Anderson, Correction};
pub use broyden::Broyden;
pub use fixed_point::{FixedPointIter, SimpleFixedPointIter};
pub use stats::{SolverStats, StopMode};
pub(crate) use stats::Tracker;

use crate::error::{DeqError, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// A solve whose last residual exceeds this many times its first, without ever meeting the
/// tolerance, is diverging ([`SolverStats::diverging`]); adjoint solves report it as
/// [`DeqError::Diverging`] instead of returning a wrong gradient.
pub const DIVERGENCE_FACTOR: f64 = 2.0;

/// Options shared by every solver. Defaults follow TorchDEQ's solver signatures.
#[derive(Debug, Clone, PartialEq)]
pub struct SolverOptions {
    /// Maximum number of function evaluations.
    pub max_iter: usize,
    /// Stopping tolerance on the residual selected by `stop_mode`.
    pub tol: f64,
    /// Which residual decides convergence and the best iterate.
    pub stop_mode: StopMode,
    /// Steps (NFE counts, 1-based) at which to record the best-so-far state.
    pub indexing: Vec<usize>,
    /// Return the last iterate instead of the per-sample best one.
    pub return_final: bool,
    /// Damping: `z <- tau f(z) + (1 - tau) z` (Anderson: mixing parameter).
    pub tau: f64,
    /// Anderson history size.
    pub m: usize,
    /// Anderson Tikhonov regularisation, relative to the mean diagonal of the Gram matrix.
    pub lam: f64,
    /// Broyden memory (number of rank-one updates kept); `None` means `max_iter`.
    pub rank: Option<usize>,
    /// Broyden Armijo line search.
    pub ls: bool,
}

impl Default for SolverOptions {
    fn default() -> Self {
        Self {
            max_iter: 50,
            tol: 1e-3,
            stop_mode: StopMode::Abs,
            indexing: Vec::new(),
            return_final: false,
            tau: 1.0,
            m: 6,
            lam: 1e-4,
            rank: None,
            ls: false,
        }
    }
}

/// The result of a solve.
#[derive(Debug, Clone)]
pub struct Solution {
    /// The per-sample best state (or the final one with `return_final`), shape `(batch, width)`.
    pub z: Tensor,
    /// Best-so-far states at the steps requested by `indexing` (always `indexing.len()` entries).
    pub trajectory: Vec<Tensor>,
    /// Per-sample statistics.
    pub stats: SolverStats,
}

/// The function a solver iterates. It maps a `(batch, width)` state to one of the same shape.
pub type FixedPointFn<'a> = dyn FnMut(&Tensor) -> candle_core::Result<Tensor> + 'a;

/// A fixed-point solver.
pub trait Solver: Send + Sync {
    /// Registry name of the solver.
    fn name(&self) -> &'static str;
    /// Solves `z = f(z)` from `z0` of shape `(batch, width)`.
    fn solve(&self, f: &mut FixedPointFn<'_>, z0: &Tensor, opts: &SolverOptions) -> Result<Solution>;
}

type Registry = BTreeMap<String, Arc<dyn Solver>>;

fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: std::sync::OnceLock<RwLock<Registry>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut r: Registry = BTreeMap::new();
        let builtin: [Arc<dyn Solver>; 4] = [
            Arc::new(FixedPointIter),
            Arc::new(SimpleFixedPointIter),
            Arc::new(Anderson),
            Arc::new(Broyden),
        ];
        for s in builtin {
            r.insert(s.name().to_string(), s);
        }
        RwLock::new(r)
    })
}

/// Looks a solver up by name (`fixed_point_iter`, `simple_fixed_point_iter`, `anderson`,
/// `broyden`, or any name added with [`register_solver`]).
pub fn get_solver(name: &str) -> Result<Arc<dyn Solver>> {
    let r = registry().read().expect("solver registry poisoned");
    r.get(name).cloned().ok_or_else(|| {
        DeqError::UnknownSolver(name.to_string(), r.keys().cloned().collect::<Vec<_>>().join(", "))
    })
}

/// Registers a solver under its [`Solver::name`], replacing any previous one of that name.
pub fn register_solver(solver: Arc<dyn Solver>) {
    let mut r = registry().write().expect("solver registry poisoned");
    r.insert(solver.name().to_string(), solver);
}

/// Names of every registered solver.
pub fn solver_names() -> Vec<String> {
    registry().read().expect("solver registry poisoned").keys().cloned().collect()
}

/// Per-sample L2 norms of the residual `fz - z` and of `fz`, as `(abs, rel)` on the host.
/// `rel = abs / (||fz|| + 1e-9)` as in TorchDEQ.
pub(crate) fn residuals(z: &Tensor, fz: &Tensor) -> Result<(Vec<f64>, Vec<f64>)> {
    let sq = rows::sq_norms(z, fz)?;
    let abs: Vec<f64> = sq.chunks_exact(2).map(|c| c[0].sqrt()).collect();
    let rel: Vec<f64> = sq.chunks_exact(2).zip(&abs).map(|(c, a)| a / (c[1].sqrt() + 1e-9)).collect();
    Ok((abs, rel))
}

/// `tau * fz + (1 - tau) * z` (returns `fz` unchanged when `tau == 1`).
pub(crate) fn damp(fz: &Tensor, z: &Tensor, tau: f64) -> candle_core::Result<Tensor> {
    if tau == 1.0 {
        Ok(fz.clone())
    } else {
        (fz.affine(tau, 0.)? + z.affine(1. - tau, 0.)?)?.contiguous()
    }
}

pub(crate) fn check_input(z0: &Tensor, context: &'static str) -> Result<()> {
    if z0.rank() != 2 {
        return Err(crate::error::shape_err(
            context,
            format!("solvers take a (batch, width) state, got {:?}", z0.dims()),
        ));
    }
    Ok(())
}

pub(crate) fn check_output(z: &Tensor, fz: &Tensor, context: &'static str) -> Result<()> {
    if z.shape() != fz.shape() {
        return Err(crate::error::shape_err(
            context,
            format!("f maps {:?} to {:?}; a fixed-point function must keep the shape", z.dims(), fz.dims()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
