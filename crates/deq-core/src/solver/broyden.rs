//! Limited-memory Broyden's method.

use super::rows::Rows;
use super::{check_input, check_output, residuals, FixedPointFn, Solution, Solver, SolverOptions, Tracker};
use crate::error::Result;
use candle_core::{DType, Tensor};

/// Broyden's ("good") method on `g(z) = f(z) - z` with a limited-memory inverse Jacobian
/// `J^{-1} ~ -I + sum_i u_i v_i^T` (memory `rank`, default `max_iter`), and an optional
/// Armijo line search (off by default, as in TorchDEQ).
///
/// A step is one evaluation of `f`. The candidate recorded for an evaluated point `z` is
/// `f(z)` with residual `||f(z) - z||`, the same convention as the other solvers (TorchDEQ's
/// Broyden returns `z`, and samples `indexing` one step late).
#[derive(Debug, Clone, Copy, Default)]
pub struct Broyden;

/// The low-rank part `sum_i u_i v_i^T` of the inverse Jacobian, per sample, as a ring of
/// `cap` pairs (the oldest pair is overwritten when full).
struct Memory {
    us: Rows,
    vts: Rows,
    len: usize,
    next: usize,
}

impl Memory {
    fn slots(&self) -> Vec<usize> {
        (0..self.len).collect()
    }
    /// `(-I + U V^T) x`.
    fn matvec(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.len == 0 {
            return x.neg();
        }
        let slots = self.slots();
        let c = self.vts.dots(x, &slots)?;
        self.us.combine(&c, &slots)? - x
    }
    /// `x^T (-I + U V^T)`.
    fn rmatvec(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.len == 0 {
            return x.neg();
        }
        let slots = self.slots();
        let c = self.us.dots(x, &slots)?;
        self.vts.combine(&c, &slots)? - x
    }
    fn push(&mut self, u: &Tensor, vt: &Tensor) -> candle_core::Result<()> {
        self.us.set(self.next, u)?;
        self.vts.set(self.next, vt)?;
        self.next = (self.next + 1) % self.us.cap();
        self.len = (self.len + 1).min(self.us.cap());
        Ok(())
    }
}

fn row_dot(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    Ok((a * b)?.sum(1)?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

fn col(v: Vec<f64>, like: &Tensor) -> Result<Tensor> {
    let b = v.len();
    Ok(Tensor::from_vec(v, (b, 1), like.device())?.to_dtype(like.dtype())?)
}

impl Solver for Broyden {
    fn name(&self) -> &'static str {
        "broyden"
    }

    fn solve(&self, f: &mut FixedPointFn<'_>, z0: &Tensor, opts: &SolverOptions) -> Result<Solution> {
        check_input(z0, "broyden")?;
        let mut tracker = Tracker::new(z0, opts);
        if opts.max_iter == 0 {
            return tracker.finish();
        }
        let cap = opts.rank.unwrap_or(opts.max_iter).max(1);
        let mut mem = Memory { us: Rows::new(z0, cap)?, vts: Rows::new(z0, cap)?, len: 0, next: 0 };
        let mut x = z0.contiguous()?;
        // Evaluates g at `x`, records `f(x)`, and returns (g(x), ||g||^2 summed over the batch, converged).
        let mut eval = |x: &Tensor, tracker: &mut Tracker| -> Result<(Tensor, f64, bool)> {
            let fx = f(x)?.detach();
            check_output(x, &fx, "broyden")?;
            let gx = (&fx - x)?;
            let (abs, rel) = residuals(x, &fx)?;
            let phi: f64 = abs.iter().map(|a| a * a).sum();
            let done = tracker.record(&fx, abs, rel)?;
            Ok((gx, if phi.is_finite() { phi } else { f64::INFINITY }, done))
        };
        let (mut gx, mut phi, mut done) = eval(&x, &mut tracker)?;
        let mut update = gx.clone();
        while !done && tracker.step < opts.max_iter {
            // Line search along `update` (Armijo on the batch-global ||g||^2, TorchDEQ's rule).
            let mut s = 1.0f64;
            let mut x_new = (&x + &update)?;
            let (mut gx_new, mut phi_new, mut d) = eval(&x_new, &mut tracker)?;
            if opts.ls {
                let c1 = 1e-4;
                while !d && tracker.step < opts.max_iter && !(phi_new <= phi * (1.0 - 2.0 * c1 * s)) {
                    // Quadratic model of phi along the step, derphi(0) = -2 phi.
                    let denom = phi_new - phi + 2.0 * phi * s;
                    let mut s_next = if denom > 0.0 && denom.is_finite() { phi * s * s / denom } else { s / 2.0 };
                    s_next = s_next.clamp(s * 0.1, s * 0.5);
                    if s_next < 1e-2 {
                        break;
                    }
                    s = s_next;
                    x_new = (&x + update.affine(s, 0.)?)?;
                    let r = eval(&x_new, &mut tracker)?;
                    gx_new = r.0;
                    phi_new = r.1;
                    d = r.2;
                }
            }
            done = d;
            let dx = (&x_new - &x)?;
            let dg = (&gx_new - &gx)?;
            x = x_new;
            gx = gx_new;
            phi = phi_new;
            if done || tracker.step >= opts.max_iter {
                break;
            }
            // Good Broyden update of the inverse Jacobian.
            let vt = mem.rmatvec(&dx)?;
            let denom = row_dot(&vt, &dg)?;
            let scale: Vec<f64> = denom
                .iter()
                .map(|&v| if v.is_finite() && v.abs() > 1e-30 { 1.0 / v } else { 0.0 })
                .collect();
            let keep: Vec<f64> = scale.iter().map(|&s| if s == 0.0 { 0.0 } else { 1.0 }).collect();
            let u = (&dx - mem.matvec(&dg)?)?.broadcast_mul(&col(scale, &dx)?)?;
            let vt = vt.broadcast_mul(&col(keep, &dx)?)?;
            mem.push(&u, &vt)?;
            update = mem.matvec(&gx)?.neg()?;
        }
        let _ = phi;
        tracker.finish()
    }
}
