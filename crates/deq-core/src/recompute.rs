//! Recomputation (checkpointing): a DEQ training step that keeps no graph of `f` between the
//! forward and the backward pass.
//!
//! [`Deq::forward`] builds one tracked evaluation of `f` at the fixed point (implicit
//! differentiation) or `k` of them (phantom gradient) and keeps their activations alive until
//! `backward`. For a large `f` (MDEQ's multi-resolution blocks) inside a larger network, that is
//! memory held while the rest of the network runs its forward and backward passes.
//! [`Deq::forward_recompute`] returns the fixed point as fresh variables and keeps only the
//! state; after the loss's own backward, [`Deq::backward_recompute`] rebuilds `f` at the fixed
//! point, runs the adjoint solve (or the phantom steps) and adds the parameter and input
//! gradients into the same [`GradStore`]. The gradients equal those of [`Deq::forward`].
//!
//! The forward budget and solver statistics are those of the training forward pass with the
//! sliced core and a single supervised state (fixed-point correction needs intermediate states
//! and is not available in this mode).

use crate::deq::Deq;
use crate::error::{DeqError, Result};
use crate::grad::{phantom_steps, Vjp};
use crate::solver::SolverStats;
use crate::state::{detach_state, StateLayout};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// What [`Deq::forward_recompute`] returns.
#[derive(Debug)]
pub struct Recomputed {
    /// The fixed point, one variable per state tensor. Build the loss from these.
    pub z: Vec<Var>,
    /// Forward solver statistics.
    pub stats: SolverStats,
    layout: StateLayout,
}

impl Recomputed {
    /// The fixed point as tensors (tracked through the variables).
    pub fn states(&self) -> Vec<Tensor> {
        self.z.iter().map(|v| v.as_tensor().clone()).collect()
    }
}

/// What [`Deq::backward_recompute`] did.
#[derive(Debug, Clone)]
pub struct RecomputeReport {
    /// Adjoint-solve statistics (implicit differentiation only).
    pub adjoint: Option<SolverStats>,
    /// True when the fixed point received no gradient (nothing was done).
    pub skipped: bool,
}

fn to_candle(e: DeqError) -> candle_core::Error {
    match e {
        DeqError::Candle(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    }
}

/// Adds every gradient of `extra` into `grads`, skipping the ids in `skip`.
fn merge(grads: &mut GradStore, extra: GradStore, skip: &[candle_core::TensorId]) -> Result<()> {
    let ids: Vec<_> = extra.get_ids().copied().filter(|id| !skip.contains(id)).collect();
    for id in ids {
        let g = extra.get_id(id).expect("listed id").detach();
        let sum = match grads.get_id(id) {
            Some(prev) => (prev + &g)?,
            None => g,
        };
        grads.insert_id(id, sum);
    }
    Ok(())
}

impl Deq {
    fn check_recompute(&self) -> Result<()> {
        let cfg = self.config();
        if cfg.n_states > 1 || !cfg.indexing.is_empty() {
            return Err(DeqError::Config {
                key: if cfg.n_states > 1 { "n_states".into() } else { "indexing".into() },
                message: "recomputation supervises the fixed point only; fixed-point correction needs the tracked forward".into(),
            });
        }
        Ok(())
    }

    /// Solves `z* = f(z*, inputs)` with the training budget and returns `z*` as variables,
    /// keeping no graph of `f`. Pair with [`Deq::backward_recompute`].
    pub fn forward_recompute<F>(&self, f: F, inputs: &[Tensor], z0: &[Tensor]) -> Result<Recomputed>
    where
        F: Fn(&[Tensor], &[Tensor]) -> candle_core::Result<Vec<Tensor>>,
    {
        self.check_recompute()?;
        let layout = StateLayout::of(z0)?;
        let inputs_d = detach_state(inputs);
        let mut solve_fn = |z: &Tensor| -> candle_core::Result<Tensor> { layout.apply_flat(z, |zs| f(zs, &inputs_d)).map_err(to_candle) };
        let z0f = layout.flatten(&detach_state(z0))?;
        let opts = self.f_opts(self.config().f_max_iter, vec![]);
        let sol = self.f_solver.solve(&mut solve_fn, &z0f, &opts)?;
        let z = layout.unflatten(&sol.z.detach())?.iter().map(Var::from_tensor).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Recomputed { z, stats: sol.stats, layout })
    }

    /// Rebuilds `f` at the fixed point of `out`, takes the gradient the loss left on `out.z`
    /// from `grads`, and adds the resulting gradients of everything `f` and `inputs` depend on
    /// into `grads` (implicit differentiation or phantom gradient, as configured).
    pub fn backward_recompute<F>(&self, f: F, inputs: &[Tensor], out: &Recomputed, grads: &mut GradStore) -> Result<RecomputeReport>
    where
        F: Fn(&[Tensor], &[Tensor]) -> candle_core::Result<Vec<Tensor>>,
    {
        let layout = &out.layout;
        let gs: Vec<Option<Tensor>> = out.z.iter().map(|v| grads.remove(v.as_tensor())).collect();
        if gs.iter().all(|g| g.is_none()) {
            return Ok(RecomputeReport { adjoint: None, skipped: true });
        }
        let gs = gs
            .into_iter()
            .zip(&out.z)
            .map(|(g, v)| g.map(Ok).unwrap_or_else(|| v.as_tensor().zeros_like()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let g = layout.flatten(&gs)?.detach();
        let z_star = layout.flatten(&out.states())?.detach();
        let flat_f = |z: &Tensor, x: &[Tensor]| -> candle_core::Result<Tensor> { layout.apply_flat(z, |zs| f(zs, x)).map_err(to_candle) };
        let cfg = self.config();
        if cfg.uses_ift() {
            let z = Var::from_tensor(&z_star)?;
            let new = flat_f(z.as_tensor(), inputs)?;
            let planned = Vjp::new(&new, &z);
            let vjp = if planned.is_pruned() { planned } else { Vjp::Full { out: flat_f(z.as_tensor(), &detach_state(inputs))?, wrt: z.clone() } };
            let mut adjoint = |y: &Tensor| -> candle_core::Result<Tensor> { vjp.apply(y)? + &g };
            let opts = self.b_opts();
            let sol = self.b_solver.solve(&mut adjoint, &g.zeros_like()?, &opts)?;
            let diverging = sol.stats.diverging(opts.tol, crate::solver::DIVERGENCE_FACTOR);
            if !diverging.is_empty() {
                return Err(crate::DeqError::Diverging { context: "adjoint (implicit backward) solve", samples: diverging, summary: sol.stats.summary() });
            }
            let extra = (&new * sol.z.detach())?.sum_all()?.backward()?;
            merge(grads, extra, &[z.as_tensor().id()])?;
            Ok(RecomputeReport { adjoint: Some(sol.stats), skipped: false })
        } else {
            let k = cfg.grad.last().copied().unwrap_or(1);
            let mut step = |z: &Tensor| flat_f(z, inputs);
            let zk = phantom_steps(&mut step, &z_star, k, cfg.tau, -1, &[])?.pop().expect("final state");
            let extra = (&zk * &g)?.sum_all()?.backward()?;
            merge(grads, extra, &[])?;
            Ok(RecomputeReport { adjoint: None, skipped: false })
        }
    }
}
