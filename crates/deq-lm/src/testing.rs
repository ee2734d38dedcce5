//! Finite-difference checks shared by the crate's gradient tests.

use candle_core::{DType, Device, Tensor, Var};
use deq_core::gradcheck::{assert_gradient_values, central_differences};
use deq_core::rng::DeqRng;

/// Asserts that `grad` equals the central differences `(f(x + h e_i) - f(x - h e_i)) / 2h` at
/// `base` for every `stride`-th entry, within `tol * (1 + |fd|)`.
pub(crate) fn check_fd(name: &str, base: &Tensor, grad: &Tensor, h: f64, tol: f64, stride: usize, f: &dyn Fn(&Tensor) -> f64) {
    assert_eq!(base.elem_count(), grad.elem_count(), "{name}: gradient of another shape");
    assert_gradient_values(name, grad, &central_differences(base, h, stride, f).unwrap(), tol);
}

/// [`check_fd`] for a variable: each evaluation sets it (then calls `refresh`, e.g. to
/// recompute normalised weights), evaluates `loss` and restores it.
pub(crate) fn check_var_fd(name: &str, var: &Var, grad: &Tensor, h: f64, tol: f64, stride: usize, loss: &dyn Fn() -> f64, refresh: &dyn Fn()) {
    let v0 = var.as_tensor().copy().unwrap();
    check_fd(name, &v0, grad, h, tol, stride, &|t| {
        var.set(t).unwrap();
        refresh();
        let l = loss();
        var.set(&v0).unwrap();
        refresh();
        l
    });
}

/// The inputs of the attention and block gradient tests (batch 2, width 6, 2 heads of 3): a
/// memory of `mem` and a segment of `cur` positions, the injection over both, a random
/// upstream gradient of the output and the relative positions.
pub(crate) struct LayerInputs {
    pub z_hist: Tensor,
    pub z: Tensor,
    pub u: Tensor,
    pub upstream: Tensor,
    pub pos: Tensor,
}

/// Draws [`LayerInputs`] from `rng` in f64.
pub(crate) fn layer_inputs(rng: &mut DeqRng, mem: usize, cur: usize) -> LayerInputs {
    let mut draw = |shape: (usize, usize, usize)| rng.randn(shape, DType::F64, &Device::Cpu).unwrap();
    let (z_hist, z, u, upstream) = (draw((2, mem, 6)), draw((2, cur, 6)), draw((2, mem + cur, 18)), draw((2, cur, 6)));
    let pos = crate::position::relative_embedding(mem + cur, 6, DType::F64, &Device::Cpu).unwrap();
    LayerInputs { z_hist, z, u, upstream, pos }
}
