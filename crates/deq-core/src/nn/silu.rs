//! SiLU (`x * sigmoid(x)`, PyTorch's `F.silu`, the DDPM UNet's nonlinearity) with one-pass
//! kernels. candle's CPU `silu` is a scalar map on one thread and its gradient is composed of
//! five element-wise ops (five passes and four temporaries); here the forward and the backward
//! (`g * s * (1 + x * (1 - s))`, `s = sigmoid(x)`) are single parallel passes. The backward's
//! own gradient (second derivatives, e.g. through a Jacobian regulariser) is composed from
//! candle ops. Other devices and dtypes use candle's `silu`, which candle differentiates.

use super::float::{contiguous_slice, par_map, par_zip_map};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

const CHUNK: usize = 1 << 13;

/// An element type of the SiLU kernels.
trait SiluFloat: Copy + Send + Sync + 'static {
    fn silu(self) -> Self;
    fn silu_grad(self, g: Self) -> Self;
}

macro_rules! silu_float {
    ($t:ty) => {
        impl SiluFloat for $t {
            #[inline]
            fn silu(self) -> Self {
                self / (1.0 + (-self).exp())
            }
            #[inline]
            fn silu_grad(self, g: Self) -> Self {
                let s = 1.0 / (1.0 + (-self).exp());
                g * s * (1.0 + self * (1.0 - s))
            }
        }
    };
}
silu_float!(f32);
silu_float!(f64);

fn slice<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    contiguous_slice(v, l, "silu", what)
}

struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "deq-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(par_map(slice(v, l, "input")?, CHUNK, SiluFloat::silu)),
            CpuStorage::F64(v) => CpuStorage::F64(par_map(slice(v, l, "input")?, CHUNK, SiluFloat::silu)),
            _ => candle_core::bail!("silu: f32 or f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2(&grad.contiguous()?, SiluGrad)?))
    }
}

/// `g * silu'(x)` from `(x, g)`.
struct SiluGrad;

impl CustomOp2 for SiluGrad {
    fn name(&self) -> &'static str {
        "deq-silu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("silu backward: input {:?} and gradient {:?} differ", l1.dims(), l2.dims());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(par_zip_map(slice(x, l1, "input")?, slice(g, l2, "gradient")?, CHUNK, SiluFloat::silu_grad)),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(par_zip_map(slice(x, l1, "input")?, slice(g, l2, "gradient")?, CHUNK, SiluFloat::silu_grad)),
            _ => candle_core::bail!("silu backward: f32 or f64 on the CPU"),
        };
        Ok((out, l1.shape().clone()))
    }

    /// The output `g * d(x)` with `d = s (1 + x (1 - s))`: its gradient with respect to `g` is
    /// `gg * d(x)` (this op again), with respect to `x` it is `gg * g * d'(x)`,
    /// `d' = s (1 - s) (2 + x (1 - 2 s))`.
    fn bwd(&self, x: &Tensor, g: &Tensor, _res: &Tensor, gg: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gg = gg.contiguous()?;
        let s = candle_nn::ops::sigmoid(x)?;
        let one_minus = s.affine(-1.0, 1.0)?;
        let dd = ((&s * &one_minus)? * (x * s.affine(-2.0, 1.0)?)?.affine(1.0, 2.0)?)?;
        let dx = ((&gg * g)? * dd)?;
        Ok((Some(dx), Some(x.apply_op2(&gg, SiluGrad)?)))
    }
}

/// `x * sigmoid(x)`, differentiable (twice).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[-1f32, 0.0, 2.0], &Device::Cpu)?;
/// let y: Vec<f32> = deq_core::nn::silu(&x)?.to_vec1()?;
/// assert!((y[0] + 0.26894).abs() < 1e-5 && y[1] == 0.0 && (y[2] - 1.76159).abs() < 1e-5);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(Silu)
    } else {
        x.silu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{assert_gradient, central_differences, max_abs_diff};
    use crate::rng::DeqRng;
    use candle_core::{Device, Var};

    #[test]
    fn equals_candle_in_value_and_gradient() {
        let mut rng = DeqRng::new(5);
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&(rng.randn((3, 1000), dtype, &Device::Cpu).unwrap() * 4.0).unwrap()).unwrap();
            let up = rng.randn((3, 1000), dtype, &Device::Cpu).unwrap();
            let ours = silu(x.as_tensor()).unwrap();
            let theirs = x.as_tensor().silu().unwrap();
            assert!(max_abs_diff(&ours, &theirs).unwrap() < 1e-6, "{dtype:?}");
            let ga = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (theirs * &up).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_abs_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()).unwrap() < 1e-5, "{dtype:?}");
        }
    }

    #[test]
    fn first_and_second_derivatives_match_finite_differences() {
        let mut rng = DeqRng::new(6);
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(rng.randn(40, DType::F64, &dev).unwrap() * 3.0).unwrap()).unwrap();
        let v = Var::from_tensor(&rng.randn(40, DType::F64, &dev).unwrap()).unwrap();
        let up = rng.randn(40, DType::F64, &dev).unwrap();
        let val = |t: &Tensor| t.mul(&up).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        // First derivative.
        let g = silu(x.as_tensor()).unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        let fd = central_differences(x.as_tensor(), 1e-6, 1, &|t| val(&silu(t).unwrap())).unwrap();
        assert_gradient("silu'", g.get(&x).unwrap(), &fd, 1e-7);
        // The backward op's own gradients, with respect to the input and to the incoming gradient.
        let gg = x.as_tensor().apply_op2(v.as_tensor(), SiluGrad).unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        let fd_x = central_differences(x.as_tensor(), 1e-6, 1, &|t| val(&t.apply_op2(v.as_tensor(), SiluGrad).unwrap())).unwrap();
        assert_gradient("silu'' (input)", gg.get(&x).unwrap(), &fd_x, 1e-7);
        let fd_v = central_differences(v.as_tensor(), 1e-6, 1, &|t| val(&x.as_tensor().apply_op2(t, SiluGrad).unwrap())).unwrap();
        assert_gradient("silu'' (gradient)", gg.get(&v).unwrap(), &fd_v, 1e-7);
    }
}
