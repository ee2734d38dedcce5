//! The well-posedness projection of IGNN: each row of `W` is projected (in the Euclidean sense)
//! onto the L1 ball of radius `v`, so that `||W||_inf <= v = kappa / lambda_pf(A)` and the
//! fixed-point map `X -> relu(W X A + B)` is a contraction.

use candle_core::{DType, Result, Var};

/// Projects `row` onto `{ x : sum |x_i| <= radius }` (exact, sort-based; Duchi et al. 2008).
pub fn project_l1_ball(row: &mut [f64], radius: f64) {
    let l1: f64 = row.iter().map(|v| v.abs()).sum();
    if l1 <= radius {
        return;
    }
    if radius <= 0.0 {
        row.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let mut mags: Vec<f64> = row.iter().map(|v| v.abs()).collect();
    mags.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    // Largest k with mags[k-1] > (sum_{i<k} mags[i] - radius) / k; theta is that threshold.
    let (mut cum, mut theta) = (0.0, 0.0);
    for (k, &m) in mags.iter().enumerate() {
        cum += m;
        let t = (cum - radius) / (k + 1) as f64;
        if m > t {
            theta = t;
        } else {
            break;
        }
    }
    for v in row.iter_mut() {
        *v = v.signum() * (v.abs() - theta).max(0.0);
    }
}

/// The infinity norm (largest row L1 norm) of a `(rows, cols)` matrix.
pub fn inf_norm(w: &[f64], cols: usize) -> f64 {
    w.chunks(cols).map(|r| r.iter().map(|v| v.abs()).sum::<f64>()).fold(0.0, f64::max)
}

/// The rows of the matrix `w` projected onto the L1 ball of radius `radius` (a new tensor,
/// outside autograd).
pub fn project_tensor(w: &candle_core::Tensor, radius: f64) -> Result<candle_core::Tensor> {
    let (rows, cols) = w.dims2()?;
    let mut data = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    for r in data.chunks_mut(cols) {
        project_l1_ball(r, radius);
    }
    candle_core::Tensor::from_vec(data, (rows, cols), w.device())?.to_dtype(w.dtype())
}

/// Projects the rows of the matrix variable `w` onto the L1 ball of radius `radius`, in place
/// (outside autograd: projected gradient descent). Returns true if anything changed.
pub fn project_inf_norm(w: &Var, radius: f64) -> Result<bool> {
    let t = w.as_tensor();
    let (rows, cols) = t.dims2()?;
    let mut data = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if inf_norm(&data, cols) <= radius {
        return Ok(false);
    }
    for r in data.chunks_mut(cols) {
        project_l1_ball(r, radius);
    }
    let new = candle_core::Tensor::from_vec(data, (rows, cols), t.device())?.to_dtype(t.dtype())?;
    w.set(&new)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_is_exact_and_idempotent() {
        let mut r = vec![3.0, -1.0, 0.5, 0.0];
        project_l1_ball(&mut r, 2.0);
        // theta = 1: [2, 0, 0, 0]
        assert!((r[0] - 2.0).abs() < 1e-12 && r[1] == 0.0 && r[2] == 0.0, "{r:?}");
        let mut r = vec![1.0, -1.0, 1.0];
        project_l1_ball(&mut r, 1.5);
        assert!((r.iter().map(|v| v.abs()).sum::<f64>() - 1.5).abs() < 1e-12);
        assert!((r[0] - 0.5).abs() < 1e-12 && (r[1] + 0.5).abs() < 1e-12);
        let before = r.clone();
        project_l1_ball(&mut r, 1.5);
        assert_eq!(before, r, "idempotent");
        // Inside the ball: unchanged.
        let mut r = vec![0.1, 0.2];
        project_l1_ball(&mut r, 1.0);
        assert_eq!(r, vec![0.1, 0.2]);
    }
}
