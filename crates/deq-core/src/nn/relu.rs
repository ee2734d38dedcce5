//! ReLU with a one-pass backward. candle's CPU `relu` is a scalar map, and its gradient is
//! built from a comparison, a dtype conversion and a product (three passes over the tensor
//! and two temporaries); here the forward is a vectorisable loop and the backward is
//! `g * (y > 0)` in one pass over the saved output, rows in parallel. Other devices and dtypes
//! use candle's `relu`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use super::float::{contiguous_slice, par_map, par_zip_map};

struct Relu;

const CHUNK: usize = 1 << 14;

fn fwd<T: Copy + Send + Sync + PartialOrd + Default>(x: &[T]) -> Vec<T> {
    par_map(x, CHUNK, |v| if v > T::default() { v } else { T::default() })
}

fn bwd<T: Copy + Send + Sync + PartialOrd + Default>(y: &[T], g: &[T]) -> Vec<T> {
    par_zip_map(y, g, CHUNK, |y, g| if y > T::default() { g } else { T::default() })
}

fn slice<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    contiguous_slice(v, l, "relu", "input")
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "deq-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(fwd(slice(v, l)?)),
            CpuStorage::F64(v) => CpuStorage::F64(fwd(slice(v, l)?)),
            _ => candle_core::bail!("relu: f32 or f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2(&grad.contiguous()?, ReluGrad)?))
    }
}

/// `g * (y > 0)` from `(y, g)`; linear in `g`, so its own gradient is itself (second
/// derivatives, e.g. the Jacobian regulariser's, pass through ReLU's backward).
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "deq-relu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("relu backward: output {:?} and gradient {:?} differ", l1.dims(), l2.dims());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(y), CpuStorage::F32(g)) => CpuStorage::F32(bwd(slice(y, l1)?, slice(g, l2)?)),
            (CpuStorage::F64(y), CpuStorage::F64(g)) => CpuStorage::F64(bwd(slice(y, l1)?, slice(g, l2)?)),
            _ => candle_core::bail!("relu backward: f32 or f64 on the CPU"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, y: &Tensor, _g: &Tensor, _res: &Tensor, gg: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((None, Some(y.apply_op2(&gg.contiguous()?, ReluGrad)?)))
    }
}

/// `max(x, 0)`, differentiable, with gradient 0 at 0 as in PyTorch (candle's own rule passes
/// the gradient at 0).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::DeqRng;
    use candle_core::{Device, Var};

    #[test]
    fn equals_candles_relu_and_its_gradient() {
        for dt in [DType::F64, DType::F32] {
            let mut rng = DeqRng::new(1);
            // Large enough for several parallel chunks, with exact zeros.
            let mut v: Vec<f64> = rng.randn(40_000, DType::F64, &Device::Cpu).unwrap().to_vec1().unwrap();
            v[7] = 0.0;
            let x = Var::from_tensor(&Tensor::from_vec(v, (200, 200), &Device::Cpu).unwrap().to_dtype(dt).unwrap()).unwrap();
            let up = rng.randn((200, 200), DType::F64, &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            let ours = relu(&x.as_tensor().t().unwrap()).unwrap();
            let theirs = x.as_tensor().t().unwrap().relu().unwrap();
            let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            assert_eq!(diff(&ours, &theirs), 0.0);
            let g1 = (ours * &up.t().unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &up.t().unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |g: &candle_core::backprop::GradStore| g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            let (a, b) = (flat(&g1), flat(&g2));
            // Equal everywhere but at the exact zero, where ours is PyTorch's 0.
            assert_eq!(a[7], 0.0);
            assert!(a.iter().zip(&b).enumerate().all(|(i, (p, q))| i == 7 || p == q), "{dt:?}");
            assert!(a.iter().filter(|v| **v != 0.0).count() > 15_000);
        }
        let h = relu(&Tensor::new(&[-1f32, 2.0], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap()).unwrap();
        assert_eq!(h.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), [0.0, 2.0]);
    }

    #[test]
    fn the_backward_is_differentiable_in_the_upstream_gradient() {
        // ReLU's backward `(y, g) -> g (y > 0)` as an op of its own: d/da sum((a u (y > 0))^2)
        // = 2 a sum(u^2 (y > 0)), against the closed form and central differences.
        let mut rng = DeqRng::new(3);
        let y = relu(&rng.randn((5, 7), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let u = rng.randn((5, 7), DType::F64, &Device::Cpu).unwrap();
        let loss = |a: &Tensor| y.apply_op2(&u.broadcast_mul(a).unwrap(), ReluGrad).unwrap().sqr().unwrap().sum_all().unwrap();
        let a0 = 0.7f64;
        let a = Var::new(&[a0], &Device::Cpu).unwrap();
        let got = loss(a.as_tensor()).backward().unwrap().get(a.as_tensor()).unwrap().to_vec1::<f64>().unwrap()[0];
        let ys: Vec<f64> = y.flatten_all().unwrap().to_vec1().unwrap();
        let us: Vec<f64> = u.flatten_all().unwrap().to_vec1().unwrap();
        let want = 2.0 * a0 * ys.iter().zip(&us).filter(|(y, _)| **y > 0.0).map(|(_, u)| u * u).sum::<f64>();
        assert!(want > 0.0 && (got - want).abs() < 1e-12 * want, "{got} vs {want}");
        let at = |d: f64| loss(&Tensor::new(&[a0 + d], &Device::Cpu).unwrap()).to_scalar::<f64>().unwrap();
        let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
        assert!((fd - got).abs() < 1e-6 * (1.0 + fd.abs()), "{fd} vs {got}");
        let bad = Tensor::zeros((5, 6), DType::F64, &Device::Cpu).unwrap();
        assert!(y.apply_op2(&bad, ReluGrad).is_err());
    }
}
