//! Anderson acceleration.

use super::linalg::lu_solve_in_place;
use super::rows::Rows;
use super::{check_input, check_output, residuals, FixedPointFn, Solution, Solver, SolverOptions, Tracker};
use crate::error::Result;
use candle_core::Tensor;

/// Anderson acceleration with history `m`, relative Tikhonov regularisation `lam` and mixing
/// `tau`.
///
/// With `G_i = f(z_i) - z_i` for the `n <= m` stored iterates, the weights `alpha` minimise
/// `||sum_i alpha_i G_i||` subject to `sum_i alpha_i = 1`, regularised by `lam * s * I` where
/// `s` is the mean diagonal of the Gram matrix `G G^T`; the next iterate is
/// `tau * sum alpha_i f(z_i) + (1 - tau) * sum alpha_i z_i`.
///
/// TorchDEQ adds `lam` unscaled, so once residuals fall under about `sqrt(lam)` the
/// regulariser dominates and the solver degrades to slow damped iteration; scaling by the Gram
/// matrix keeps the acceleration at every tolerance. Steps 1 and 2 (the bootstrap evaluations)
/// are recorded like every other step, so `indexing` can sample them.
///
/// [`Anderson::solve_corrected`] lets the caller correct every proposed iterate before it is
/// evaluated (a projection, or a safeguard that knows the map's structure).
#[derive(Debug, Clone, Copy, Default)]
pub struct Anderson;

/// A correction of Anderson's proposed iterate: called with the proposal and the newest
/// evaluated pair `(z, f(z))`, it returns the iterate to evaluate next, of the proposal's shape.
/// The solver stores the pair it actually evaluates, so its history stays exact whatever the
/// correction returns.
pub type Correction<'a> = dyn FnMut(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> + 'a;

/// Solves the regularised Anderson least-squares problem for every sample.
/// `gram` is `(batch, n, n)` flattened; returns `(batch, n)` weights summing to one.
pub(crate) fn anderson_weights(gram: &[f64], batch: usize, n: usize, lam: f64, newest: usize) -> Vec<f64> {
    let mut out = vec![0f64; batch * n];
    for b in 0..batch {
        let g = &gram[b * n * n..(b + 1) * n * n];
        let w = &mut out[b * n..(b + 1) * n];
        let trace: f64 = (0..n).map(|i| g[i * n + i]).sum::<f64>() / n as f64;
        let fallback = |w: &mut [f64]| {
            w.iter_mut().for_each(|v| *v = 0.0);
            w[newest] = 1.0;
        };
        if !(trace.is_finite() && trace > 0.0) {
            fallback(w);
            continue;
        }
        // Normalise by the scale so the system is O(1), then regularise relative to it.
        let mut h: Vec<f64> = g.iter().map(|v| v / trace).collect();
        for i in 0..n {
            h[i * n + i] += lam;
        }
        let mut rhs = vec![1.0; n];
        if lu_solve_in_place(&mut h, &mut rhs, n, 1).is_err() {
            fallback(w);
            continue;
        }
        let s: f64 = rhs.iter().sum();
        if !(s.is_finite() && s.abs() > 1e-300) {
            fallback(w);
            continue;
        }
        for i in 0..n {
            w[i] = rhs[i] / s;
        }
    }
    out
}

/// The last `m` images `f(z_i)` and residuals `g_i = f(z_i) - z_i`, with the per-sample Gram
/// matrices of the `g_i` (`m x m`, one row updated per step instead of recomputed).
struct History {
    fs: Rows,
    gs: Rows,
    gram: Vec<f64>,
    m: usize,
    b: usize,
}

impl History {
    /// Stores the pair in `slot` and updates the Gram rows against the `filled` stored slots.
    fn store(&mut self, slot: usize, filled: usize, z: &Tensor, fz: &Tensor) -> Result<()> {
        let (m, b) = (self.m, self.b);
        let g = (fz - z)?;
        self.fs.set(slot, fz)?;
        self.gs.set(slot, &g)?;
        let others: Vec<usize> = (0..filled).collect();
        let row = self.gs.dots(&g, &others)?;
        for bi in 0..b {
            for (j, &v) in row[bi * filled..(bi + 1) * filled].iter().enumerate() {
                self.gram[bi * m * m + slot * m + j] = v;
                self.gram[bi * m * m + j * m + slot] = v;
            }
        }
        Ok(())
    }

    /// The next iterate from the `n` stored pairs (`newest` is the latest slot).
    fn next(&self, n: usize, newest: usize, opts: &SolverOptions) -> Result<Tensor> {
        let (m, b) = (self.m, self.b);
        let slots: Vec<usize> = (0..n).collect();
        let alpha = if n == 1 {
            vec![1.0; b]
        } else {
            let mut sub = vec![0f64; b * n * n];
            for bi in 0..b {
                for i in 0..n {
                    sub[(bi * n + i) * n..(bi * n + i + 1) * n].copy_from_slice(&self.gram[bi * m * m + i * m..bi * m * m + i * m + n]);
                }
            }
            anderson_weights(&sub, b, n, opts.lam, newest)
        };
        // tau sum a_i f_i + (1 - tau) sum a_i z_i = sum a_i f_i - (1 - tau) sum a_i g_i.
        let z = self.fs.combine(&alpha, &slots)?;
        if opts.tau == 1.0 {
            Ok(z)
        } else {
            Ok((z - self.gs.combine(&alpha, &slots)?.affine(1.0 - opts.tau, 0.0)?)?)
        }
    }
}

impl Solver for Anderson {
    fn name(&self) -> &'static str {
        "anderson"
    }

    fn solve(&self, f: &mut FixedPointFn<'_>, z0: &Tensor, opts: &SolverOptions) -> Result<Solution> {
        self.solve_corrected(f, z0, opts, &mut |proposal, _, _| Ok(proposal.clone()))
    }
}

impl Anderson {
    /// [`Solver::solve`] with `correct` applied to every proposed iterate before it is
    /// evaluated (see [`Correction`]); the first evaluation, at `z0`, is not corrected.
    pub fn solve_corrected(&self, f: &mut FixedPointFn<'_>, z0: &Tensor, opts: &SolverOptions, correct: &mut Correction<'_>) -> Result<Solution> {
        check_input(z0, "anderson")?;
        let b = z0.dims()[0];
        let m = opts.m.max(1);
        let mut tracker = Tracker::new(z0, opts);
        if opts.max_iter == 0 {
            return tracker.finish();
        }
        let mut hist = History { fs: Rows::new(z0, m)?, gs: Rows::new(z0, m)?, gram: vec![0f64; b * m * m], m, b };
        let z0 = z0.contiguous()?;
        let fz = f(&z0)?.detach();
        check_output(&z0, &fz, "anderson")?;
        let (abs, rel) = residuals(&z0, &fz)?;
        let mut done = tracker.record(&fz, abs, rel)?;
        hist.store(0, 1, &z0, &fz)?;
        let (mut last_z, mut last_fz) = (z0, fz);
        let mut count = 1usize;
        while !done && tracker.step < opts.max_iter {
            let n = count.min(m);
            let newest = (count - 1) % m;
            let proposal = hist.next(n, newest, opts)?;
            let z = correct(&proposal, &last_z, &last_fz)?.contiguous()?;
            check_output(&proposal, &z, "anderson correction")?;
            let fz = f(&z)?.detach();
            check_output(&z, &fz, "anderson")?;
            let (abs, rel) = residuals(&z, &fz)?;
            done = tracker.record(&fz, abs, rel)?;
            hist.store(count % m, (count + 1).min(m), &z, &fz)?;
            (last_z, last_fz) = (z, fz);
            count += 1;
        }
        tracker.finish()
    }
}
