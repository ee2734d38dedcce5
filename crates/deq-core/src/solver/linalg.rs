//! Small batched dense linear algebra, which candle lacks.
//!
//! The systems solved here are tiny (Anderson's history is a handful of vectors), so they are
//! solved on the host in f64 with LU factorisation and partial pivoting, then moved back.

use crate::error::{shape_err, DeqError, Result};
use candle_core::{DType, Tensor};

/// Solves `a x = b` in place for one `n x n` row-major matrix and `nrhs` right-hand sides stored
/// row-major as `n x nrhs`. On return `b` holds `x`; `a` is overwritten by its LU factors.
pub fn lu_solve_in_place(a: &mut [f64], b: &mut [f64], n: usize, nrhs: usize) -> Result<()> {
    assert_eq!(a.len(), n * n, "matrix size");
    assert_eq!(b.len(), n * nrhs, "rhs size");
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
    if !scale.is_finite() {
        return Err(DeqError::NonFinite { context: "linear solve", samples: vec![] });
    }
    for k in 0..n {
        // Partial pivoting.
        let mut p = k;
        let mut best = a[k * n + k].abs();
        for r in k + 1..n {
            let v = a[r * n + k].abs();
            if v > best {
                best = v;
                p = r;
            }
        }
        if best <= scale * 1e-15 || best == 0.0 {
            return Err(DeqError::Singular("lu_solve"));
        }
        if p != k {
            for c in 0..n {
                a.swap(k * n + c, p * n + c);
            }
            for c in 0..nrhs {
                b.swap(k * nrhs + c, p * nrhs + c);
            }
        }
        let piv = a[k * n + k];
        for r in k + 1..n {
            let l = a[r * n + k] / piv;
            if l == 0.0 {
                continue;
            }
            a[r * n + k] = l;
            for c in k + 1..n {
                a[r * n + c] -= l * a[k * n + c];
            }
            for c in 0..nrhs {
                b[r * nrhs + c] -= l * b[k * nrhs + c];
            }
        }
    }
    // Back substitution.
    for k in (0..n).rev() {
        let piv = a[k * n + k];
        for c in 0..nrhs {
            let mut s = b[k * nrhs + c];
            for j in k + 1..n {
                s -= a[k * n + j] * b[j * nrhs + c];
            }
            b[k * nrhs + c] = s / piv;
        }
    }
    Ok(())
}

/// Batched solve of `a x = b` with `a` of shape `(batch, n, n)` and `b` of shape `(batch, n, k)`
/// (or `(batch, n)`). Computed in f64 on the host; the result has `b`'s dtype and device.
pub fn solve(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (batch, n, n2) = a.dims3().map_err(|_| shape_err("linalg::solve", format!("a must be (batch, n, n), got {:?}", a.dims())))?;
    if n != n2 {
        return Err(shape_err("linalg::solve", format!("a must be square, got {:?}", a.dims())));
    }
    let vector = b.rank() == 2;
    let b3 = if vector { b.unsqueeze(2)? } else { b.clone() };
    let (bb, bn, k) = b3.dims3()?;
    if bb != batch || bn != n {
        return Err(shape_err("linalg::solve", format!("a is {:?} but b is {:?}", a.dims(), b.dims())));
    }
    let mut av = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let mut bv = b3.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    for i in 0..batch {
        lu_solve_in_place(&mut av[i * n * n..(i + 1) * n * n], &mut bv[i * n * k..(i + 1) * n * k], n, k)?;
    }
    let x = Tensor::from_vec(bv, (batch, n, k), b.device())?.to_dtype(b.dtype())?;
    Ok(if vector { x.squeeze(2)? } else { x })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn solves_ill_conditioned_systems_to_high_accuracy() -> Result<()> {
        // Hilbert-like matrix plus a permutation that needs pivoting.
        let n = 6;
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = 1.0 / (i + j + 1) as f64;
            }
        }
        a.swap(0, n); // break the leading diagonal
        let x_true: Vec<f64> = (0..n).map(|i| (i as f64 + 1.0).sin()).collect();
        let mut b = vec![0f64; n];
        for i in 0..n {
            b[i] = (0..n).map(|j| a[i * n + j] * x_true[j]).sum();
        }
        let mut a2 = a.clone();
        lu_solve_in_place(&mut a2, &mut b, n, 1)?;
        for i in 0..n {
            assert!((b[i] - x_true[i]).abs() < 1e-6, "{} vs {}", b[i], x_true[i]);
        }
        Ok(())
    }

    #[test]
    fn batched_solve_matches_product() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[[4f64, 1.], [2., 3.]], [[0., 1.], [1., 0.]]], &dev)?;
        let x = Tensor::new(&[[1f64, 2.], [3., -1.]], &dev)?;
        let b = a.matmul(&x.unsqueeze(2)?)?.squeeze(2)?;
        let got = solve(&a, &b)?;
        let err = (got - x)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(err < 1e-14);
        Ok(())
    }

    #[test]
    fn singular_system_is_an_error() {
        let mut a = vec![1.0, 2.0, 2.0, 4.0];
        let mut b = vec![1.0, 1.0];
        assert!(lu_solve_in_place(&mut a, &mut b, 2, 1).is_err());
    }
}
