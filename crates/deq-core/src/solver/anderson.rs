//! Anderson acceleration.

use super::linalg::lu_solve_in_place;
use super::{check_input, check_output, residuals, FixedPointFn, Solution, Solver, SolverOptions, Tracker};
use crate::error::Result;
use candle_core::{DType, Tensor};

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
#[derive(Debug, Clone, Copy, Default)]
pub struct Anderson;

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

impl Solver for Anderson {
    fn name(&self) -> &'static str {
        "anderson"
    }

    fn solve(&self, f: &mut FixedPointFn<'_>, z0: &Tensor, opts: &SolverOptions) -> Result<Solution> {
        check_input(z0, "anderson")?;
        let (b, d) = z0.dims2()?;
        let m = opts.m.max(1);
        let mut tracker = Tracker::new(z0, opts);
        if opts.max_iter == 0 {
            return tracker.finish();
        }
        let xs = Tensor::zeros((b, m, d), z0.dtype(), z0.device())?;
        let fs = Tensor::zeros((b, m, d), z0.dtype(), z0.device())?;
        let z0 = z0.contiguous()?;
        let fz = f(&z0)?.detach();
        check_output(&z0, &fz, "anderson")?;
        let fz = fz.contiguous()?;
        let (abs, rel) = residuals(&z0, &fz)?;
        let mut done = tracker.record(&fz, abs, rel)?;
        xs.slice_set(&z0.unsqueeze(1)?, 1, 0)?;
        fs.slice_set(&fz.unsqueeze(1)?, 1, 0)?;
        let mut count = 1usize;
        while !done && tracker.step < opts.max_iter {
            let n = count.min(m);
            let newest = (count - 1) % m;
            let (xn, fn_) = if n == m { (xs.clone(), fs.clone()) } else { (xs.narrow(1, 0, n)?.contiguous()?, fs.narrow(1, 0, n)?.contiguous()?) };
            let alpha = if n == 1 {
                Tensor::ones((b, 1, 1), z0.dtype(), z0.device())?
            } else {
                let g = (&fn_ - &xn)?;
                let gram = g.matmul(&g.t()?)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                let w = anderson_weights(&gram, b, n, opts.lam, newest);
                Tensor::from_vec(w, (b, 1, n), z0.device())?.to_dtype(z0.dtype())?
            };
            let mixed_f = alpha.matmul(&fn_)?;
            let z = if opts.tau == 1.0 {
                mixed_f
            } else {
                let mixed_x = alpha.matmul(&xn)?;
                (mixed_f.affine(opts.tau, 0.)? + mixed_x.affine(1. - opts.tau, 0.)?)?
            };
            let z = z.reshape((b, d))?.contiguous()?;
            let fz = f(&z)?.detach();
            check_output(&z, &fz, "anderson")?;
            let fz = fz.contiguous()?;
            let (abs, rel) = residuals(&z, &fz)?;
            done = tracker.record(&fz, abs, rel)?;
            let slot = count % m;
            xs.slice_set(&z.unsqueeze(1)?, 1, slot)?;
            fs.slice_set(&fz.unsqueeze(1)?, 1, slot)?;
            count += 1;
        }
        tracker.finish()
    }
}
