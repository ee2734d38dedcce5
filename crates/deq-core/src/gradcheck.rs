//! Finite-difference gradient checks, for the tests of custom ops and DEQ layers.
//!
//! Every gradient path of this workspace is checked in f64 against central differences
//! `(l(x + h e_i) - l(x - h e_i)) / 2h`; these helpers are the one implementation of that check,
//! public so that crates built on deq-core can check their own `f` the same way.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use deq_core::gradcheck::{assert_gradient, central_differences};
//!
//! let x = Tensor::new(&[0.3f64, -1.2, 2.0], &Device::Cpu).unwrap();
//! // l(x) = sum sin(x), so dl/dx = cos(x).
//! let loss = |t: &Tensor| t.sin().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
//! let fd = central_differences(&x, 1e-6, 1, &loss).unwrap();
//! assert_gradient("sin", &x.cos().unwrap(), &fd, 1e-6);
//! ```

use candle_core::{DType, Result, Tensor, Var};

/// The largest absolute entry of `a - b`, computed in f64 (0 for empty tensors).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = (a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.flatten_all()?;
    if d.elem_count() == 0 {
        return Ok(0.0);
    }
    d.max(0)?.to_scalar::<f64>()
}

/// Central differences of `loss` at `x` for every `stride`-th entry (flat index), in f64,
/// returned with the entries' flat indices. `x` is converted to f64 before it is perturbed.
pub fn central_differences(x: &Tensor, h: f64, stride: usize, loss: &dyn Fn(&Tensor) -> f64) -> Result<Vec<(usize, f64)>> {
    let base = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let mut out = Vec::with_capacity(base.len() / stride.max(1) + 1);
    for i in (0..base.len()).step_by(stride.max(1)) {
        let at = |d: f64| -> Result<f64> {
            let mut v = base.clone();
            v[i] += d;
            Ok(loss(&Tensor::from_vec(v, x.shape(), x.device())?))
        };
        let (p, m) = (at(h)?, at(-h)?);
        out.push((i, (p - m) / (2.0 * h)));
    }
    Ok(out)
}

/// Central differences of `loss` in the entries `indices` (flat) of the f64 variable `var`:
/// each evaluation sets `var`, calls `loss`, and `var` is restored afterwards.
pub fn var_central_differences(var: &Var, indices: &[usize], h: f64, loss: &dyn Fn() -> f64) -> Result<Vec<(usize, f64)>> {
    let original = var.as_tensor().copy()?;
    let base = original.flatten_all()?.to_vec1::<f64>()?;
    let shape = original.shape().clone();
    let mut out = Vec::with_capacity(indices.len());
    for &i in indices {
        let at = |d: f64| -> Result<f64> {
            let mut v = base.clone();
            v[i] += d;
            var.set(&Tensor::from_vec(v, shape.clone(), original.device())?)?;
            Ok(loss())
        };
        let (p, m) = (at(h)?, at(-h)?);
        out.push((i, (p - m) / (2.0 * h)));
    }
    var.set(&original)?;
    Ok(out)
}

/// Asserts `|grad[i] - fd| <= tol (1 + |fd|)` for every `(i, fd)` of `fd` (flat indices), and
/// that at least one checked derivative is non-zero (a check of zeros proves nothing; where
/// zeros are the truth, e.g. a scale that a later normalisation cancels, use
/// [`assert_gradient_values`]).
///
/// # Panics
/// When an entry disagrees (the message names `name`, the index and both values), when every
/// finite difference is zero, or when `grad` cannot be read as f64.
pub fn assert_gradient(name: &str, grad: &Tensor, fd: &[(usize, f64)], tol: f64) {
    assert_gradient_values(name, grad, fd, tol);
    assert!(fd.iter().any(|p| p.1.abs() > 1e-9), "{name}: every checked derivative is zero; the check proves nothing");
}

/// [`assert_gradient`] without the requirement of a non-zero derivative.
///
/// # Panics
/// When an entry disagrees or `grad` cannot be read as f64.
pub fn assert_gradient_values(name: &str, grad: &Tensor, fd: &[(usize, f64)], tol: f64) {
    let g = grad.to_dtype(DType::F64).and_then(|g| g.flatten_all()).and_then(|g| g.to_vec1::<f64>());
    let g = g.unwrap_or_else(|e| panic!("{name}: cannot read the gradient: {e}"));
    for &(i, d) in fd {
        assert!(i < g.len(), "{name}: index {i} outside a gradient of {} entries", g.len());
        assert!((g[i] - d).abs() <= tol * (1.0 + d.abs()), "{name}[{i}]: analytic {} vs finite differences {d}", g[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cube_loss(t: &Tensor) -> f64 {
        t.powf(3.0).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn differences_match_known_derivatives_and_skip_by_stride() {
        let x = Tensor::new(&[1.0f64, -2.0, 0.5, 3.0, -0.25], &Device::Cpu).unwrap();
        let fd = central_differences(&x, 1e-5, 2, &cube_loss).unwrap();
        assert_eq!(fd.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 2, 4]);
        for (i, d) in fd {
            let v = [1.0, -2.0, 0.5, 3.0, -0.25][i];
            assert!((d - 3.0 * v * v).abs() < 1e-8, "{i}: {d}");
        }
    }

    #[test]
    fn var_differences_restore_the_variable() {
        let v = Var::new(&[0.5f64, 2.0, -1.0], &Device::Cpu).unwrap();
        let fd = var_central_differences(&v, &[1, 2], 1e-5, &|| cube_loss(v.as_tensor())).unwrap();
        assert_eq!(fd.len(), 2);
        assert!((fd[0].1 - 12.0).abs() < 1e-8 && (fd[1].1 - 3.0).abs() < 1e-8, "{fd:?}");
        assert_eq!(v.as_tensor().to_vec1::<f64>().unwrap(), vec![0.5, 2.0, -1.0]);
    }

    #[test]
    fn max_abs_diff_finds_the_largest_entry() {
        let a = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[1.5f64, 2.0], [0.0, 4.25]], &Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&a, &b.to_dtype(DType::F32).unwrap()).unwrap(), 3.0);
        assert_eq!(max_abs_diff(&a, &a).unwrap(), 0.0);
    }

    #[test]
    fn assert_gradient_accepts_the_true_gradient() {
        let x = Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let fd = central_differences(&x, 1e-5, 1, &cube_loss).unwrap();
        assert_gradient("cube", &Tensor::new(&[3.0f64, 12.0], &Device::Cpu).unwrap(), &fd, 1e-6);
    }

    #[test]
    #[should_panic(expected = "cube[1]")]
    fn assert_gradient_rejects_a_wrong_entry() {
        let x = Tensor::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let fd = central_differences(&x, 1e-5, 1, &cube_loss).unwrap();
        assert_gradient("cube", &Tensor::new(&[3.0f64, 12.1], &Device::Cpu).unwrap(), &fd, 1e-6);
    }

    #[test]
    #[should_panic(expected = "every checked derivative is zero")]
    fn assert_gradient_rejects_an_all_zero_check() {
        let x = Tensor::new(&[0.0f64, 0.0], &Device::Cpu).unwrap();
        let fd = central_differences(&x, 1e-5, 1, &|_| 1.0).unwrap();
        assert_gradient_values("const", &x, &fd, 1e-6);
        assert_gradient("const", &x, &fd, 1e-6);
    }

    #[test]
    #[should_panic(expected = "const[0]")]
    fn assert_gradient_values_still_compares_values() {
        let x = Tensor::new(&[0.0f64, 0.0], &Device::Cpu).unwrap();
        let fd = central_differences(&x, 1e-5, 1, &|_| 1.0).unwrap();
        assert_gradient_values("const", &Tensor::new(&[1e-3f64, 0.0], &Device::Cpu).unwrap(), &fd, 1e-6);
    }
}
