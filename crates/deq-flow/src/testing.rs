//! Test helpers: central finite differences of scalar functions of tensors (f64).

use candle_core::{DType, Tensor};

/// Central differences `(l(x + h e_i) - l(x - h e_i)) / 2h` for every `stride`-th entry of `x`
/// (f64), returned with the entries' flat indices.
pub(crate) fn central_fd(x: &Tensor, h: f64, stride: usize, loss: &dyn Fn(&Tensor) -> f64) -> Vec<(usize, f64)> {
    let base = x.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let shape = x.shape().clone();
    let at = |v: Vec<f64>| Tensor::from_vec(v, shape.clone(), x.device()).unwrap();
    (0..base.len())
        .step_by(stride.max(1))
        .map(|i| {
            let mut p = base.clone();
            p[i] += h;
            let mut m = base.clone();
            m[i] -= h;
            (i, (loss(&at(p)) - loss(&at(m))) / (2.0 * h))
        })
        .collect()
}

/// Asserts `|g - fd| <= tol (1 + |fd|)` for the finite differences of [`central_fd`].
pub(crate) fn assert_fd(name: &str, grad: &Tensor, fd: &[(usize, f64)], tol: f64) {
    let g = grad.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let mut nonzero = 0;
    for &(i, d) in fd {
        assert!((g[i] - d).abs() <= tol * (1.0 + d.abs()), "{name}[{i}]: analytic {} vs finite differences {d}", g[i]);
        if d.abs() > 1e-9 {
            nonzero += 1;
        }
    }
    assert!(nonzero > 0, "{name}: every checked derivative is zero; the check proves nothing");
}
