//! Damped fixed-point iteration.

use super::{check_input, check_output, damp, residuals, FixedPointFn, Solution, Solver, SolverOptions, SolverStats, Tracker};
use crate::error::Result;
use candle_core::Tensor;

/// Damped fixed-point iteration `z <- tau f(z) + (1 - tau) z` with per-sample best tracking.
///
/// Each step evaluates `f` once; the candidate recorded at step `k` is the new iterate and its
/// residual is `||z_k - z_{k-1}||` (the damped residual when `tau < 1`), as in TorchDEQ.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedPointIter;

impl Solver for FixedPointIter {
    fn name(&self) -> &'static str {
        "fixed_point_iter"
    }

    fn solve(&self, f: &mut FixedPointFn<'_>, z0: &Tensor, opts: &SolverOptions) -> Result<Solution> {
        check_input(z0, "fixed_point_iter")?;
        let mut tracker = Tracker::new(z0, opts);
        let mut z = z0.clone();
        for _ in 0..opts.max_iter {
            let fz = f(&z)?.detach();
            check_output(&z, &fz, "fixed_point_iter")?;
            let next = damp(&fz, &z, opts.tau)?;
            let (abs, rel) = residuals(&z, &next)?;
            let done = tracker.record(&next, abs, rel)?;
            z = next;
            if done {
                break;
            }
        }
        tracker.finish()
    }
}

/// A fixed number of damped iterations with no statistics beyond the final residual: the
/// cheapest forward solver, and usable as a backward solver (unlike in TorchDEQ, where it fails
/// because it passes `tau` to the adjoint function).
///
/// `indexing` returns raw iterates (there is no best tracking); `tol` is ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimpleFixedPointIter;

impl Solver for SimpleFixedPointIter {
    fn name(&self) -> &'static str {
        "simple_fixed_point_iter"
    }

    fn solve(&self, f: &mut FixedPointFn<'_>, z0: &Tensor, opts: &SolverOptions) -> Result<Solution> {
        check_input(z0, "simple_fixed_point_iter")?;
        let b = z0.dims()[0];
        let mut z = z0.clone();
        let mut prev = z0.clone();
        let mut trajectory = Vec::with_capacity(opts.indexing.len());
        for k in 0..opts.max_iter {
            let fz = f(&z)?.detach();
            check_output(&z, &fz, "simple_fixed_point_iter")?;
            prev = z;
            z = damp(&fz, &prev, opts.tau)?;
            if opts.indexing.contains(&(k + 1)) {
                trajectory.push(z.clone());
            }
        }
        while trajectory.len() < opts.indexing.len() {
            trajectory.push(z.clone());
        }
        let (abs, rel) = if opts.max_iter == 0 { (vec![0.0; b], vec![0.0; b]) } else { residuals(&prev, &z)? };
        let nonfinite: Vec<bool> = abs.iter().zip(&rel).map(|(a, r)| !a.is_finite() || !r.is_finite()).collect();
        if nonfinite.iter().any(|&n| n) {
            let bad = nonfinite.iter().enumerate().filter(|(_, &n)| n).map(|(i, _)| i).collect();
            return Err(crate::error::DeqError::NonFinite { context: "simple_fixed_point_iter", samples: bad });
        }
        let stats = SolverStats {
            stop_mode: opts.stop_mode,
            abs_lowest: abs.clone(),
            rel_lowest: rel.clone(),
            nstep: vec![opts.max_iter; b],
            abs_trace: vec![abs],
            rel_trace: vec![rel],
            nfe: opts.max_iter,
            nonfinite,
            sradius: None,
        };
        Ok(Solution { z, trajectory, stats })
    }
}
