//! `x + bias` with one bias value per plane of a `(B, C, ...)` tensor: a per-channel bias
//! `(C,)` (convolutions) or a per-sample, per-channel bias `(B, C)` (a time or class embedding
//! projected onto the channels). candle's `broadcast_add` differentiates the bias by a
//! reduction over the batch and spatial axes that runs as a strided scalar loop (a sixth of a
//! DDPM UNet's backward pass); here the forward and the bias gradient are single parallel
//! passes over contiguous planes. Other devices and dtypes use `broadcast_add`.

use super::float::{contiguous_slice, KernelFloat};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Planes per sample and their size for `x` `(B, C, ...)` and a bias of `bias_dims`.
fn geometry(x: &[usize], bias: &[usize]) -> Result<(usize, usize, usize, bool)> {
    if x.len() < 2 {
        candle_core::bail!("plane bias: the input {x:?} has no channel axis");
    }
    let (b, c) = (x[0], x[1]);
    let size: usize = x[2..].iter().product();
    let per_sample = match bias {
        [n] if *n == c => false,
        [n, m] if *n == b && *m == c => true,
        _ => candle_core::bail!("plane bias: a bias of shape {bias:?} does not fit the input {x:?} (want ({c},) or ({b}, {c}))"),
    };
    Ok((b, c, size, per_sample))
}

struct PlaneBias;

fn fwd<T: KernelFloat>(x: &[T], bias: &[T], c: usize, size: usize, per_sample: bool) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    out.par_chunks_mut(size.max(1)).zip(x.par_chunks(size.max(1))).enumerate().for_each(|(p, (o, x))| {
        let v = bias[if per_sample { p } else { p % c }];
        for (o, &x) in o.iter_mut().zip(x) {
            *o = x + v;
        }
    });
    out
}

impl CustomOp2 for PlaneBias {
    fn name(&self) -> &'static str {
        "deq-plane-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c, size, per_sample) = geometry(l1.dims(), l2.dims())?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(b)) => CpuStorage::F32(fwd(contiguous_slice(x, l1, "plane bias", "input")?, contiguous_slice(b, l2, "plane bias", "bias")?, c, size, per_sample)),
            (CpuStorage::F64(x), CpuStorage::F64(b)) => CpuStorage::F64(fwd(contiguous_slice(x, l1, "plane bias", "input")?, contiguous_slice(b, l2, "plane bias", "bias")?, c, size, per_sample)),
            _ => candle_core::bail!("plane bias: f32 or f64 input and bias of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, bias: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let per_sample = bias.rank() == 2;
        let g = grad.contiguous()?;
        let db = g.apply_op1(PlaneSums { channels: bias.dims()[bias.rank() - 1], per_sample })?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// Sums of `g` over each plane: `(B, C)` per sample, or over the batch too: `(C,)`.
struct PlaneSums {
    channels: usize,
    per_sample: bool,
}

fn plane_sums<T: KernelFloat>(g: &[T], b: usize, c: usize, size: usize, per_sample: bool) -> Vec<T> {
    let sums: Vec<f64> = g.par_chunks(size.max(1)).map(|p| p.iter().map(|v| v.to64()).sum::<f64>()).collect();
    if per_sample {
        sums.into_iter().map(T::from64).collect()
    } else {
        (0..c).map(|ch| T::from64((0..b).map(|n| sums[n * c + ch]).sum())).collect()
    }
}

impl CustomOp1 for PlaneSums {
    fn name(&self) -> &'static str {
        "deq-plane-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims();
        if d.len() < 2 || d[1] != self.channels {
            candle_core::bail!("plane sums: input {d:?} for {} channels", self.channels);
        }
        let (b, c, size) = (d[0], d[1], d[2..].iter().product::<usize>());
        let shape: Shape = if self.per_sample { (b, c).into() } else { c.into() };
        let out = match s {
            CpuStorage::F32(g) => CpuStorage::F32(plane_sums(contiguous_slice(g, l, "plane sums", "gradient")?, b, c, size, self.per_sample)),
            CpuStorage::F64(g) => CpuStorage::F64(plane_sums(contiguous_slice(g, l, "plane sums", "gradient")?, b, c, size, self.per_sample)),
            _ => candle_core::bail!("plane sums: f32 or f64"),
        };
        Ok((out, shape))
    }

    /// Linear: the gradient of the sums spreads `gg` back over the planes.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, gg: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(plane_bias_add(&arg.zeros_like()?, gg)?))
    }
}

/// `x + bias` for `x` `(B, C, ...)` and `bias` `(C,)` (one value per channel) or `(B, C)` (one
/// per sample and channel), broadcast over the remaining axes; differentiable in both.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::zeros((2, 3, 2, 2), candle_core::DType::F32, &Device::Cpu)?;
/// let b = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu)?;
/// let y = deq_core::nn::plane_bias_add(&x, &b)?;
/// assert_eq!(y.get(1)?.get(2)?.flatten_all()?.to_vec1::<f32>()?, [3.0; 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn plane_bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (_, c, _, per_sample) = geometry(x.dims(), bias.dims())?;
    let fast = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && bias.dtype() == x.dtype();
    if fast {
        return x.contiguous()?.apply_op2(&bias.contiguous()?, PlaneBias);
    }
    let mut shape = vec![1usize; x.rank()];
    shape[1] = c;
    if per_sample {
        shape[0] = x.dim(0)?;
    }
    x.broadcast_add(&bias.reshape(shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{assert_gradient, central_differences, max_abs_diff};
    use crate::rng::DeqRng;
    use candle_core::{Device, Var};

    #[test]
    fn equals_broadcast_add_with_the_same_gradients() {
        let mut rng = DeqRng::new(8);
        for dtype in [DType::F32, DType::F64] {
            for (xd, bd) in [(vec![2, 3, 4, 5], vec![3]), (vec![2, 3, 4, 5], vec![2, 3]), (vec![3, 4, 7], vec![4]), (vec![2, 2], vec![2, 2])] {
                let x = Var::from_tensor(&rng.randn(xd.clone(), dtype, &Device::Cpu).unwrap()).unwrap();
                let b = Var::from_tensor(&rng.randn(bd.clone(), dtype, &Device::Cpu).unwrap()).unwrap();
                let up = rng.randn(xd.clone(), dtype, &Device::Cpu).unwrap();
                let mut shape = vec![1usize; xd.len()];
                shape[1] = xd[1];
                if bd.len() == 2 {
                    shape[0] = xd[0];
                }
                let ours = plane_bias_add(x.as_tensor(), b.as_tensor()).unwrap();
                let theirs = x.as_tensor().broadcast_add(&b.as_tensor().reshape(shape).unwrap()).unwrap();
                assert!(max_abs_diff(&ours, &theirs).unwrap() < 1e-6);
                let ga = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let gb = (theirs * &up).unwrap().sum_all().unwrap().backward().unwrap();
                assert!(max_abs_diff(ga.get(&b).unwrap(), gb.get(&b).unwrap()).unwrap() < 1e-4, "{xd:?} {bd:?} {dtype:?}");
                assert!(max_abs_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()).unwrap() < 1e-6);
            }
        }
        assert!(plane_bias_add(&Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap(), &Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap()).is_err());
    }

    #[test]
    fn gradients_match_finite_differences_including_second_order() {
        let mut rng = DeqRng::new(9);
        let x = rng.randn((2, 3, 2, 2), DType::F64, &Device::Cpu).unwrap();
        let b = Var::from_tensor(&rng.randn((2, 3), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let up = rng.randn((2, 3, 2, 2), DType::F64, &Device::Cpu).unwrap();
        let loss = |b: &Tensor| plane_bias_add(&x, b).unwrap().sqr().unwrap().mul(&up).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let g = plane_bias_add(&x, b.as_tensor()).unwrap().sqr().unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        let fd = central_differences(b.as_tensor(), 1e-6, 1, &loss).unwrap();
        assert_gradient("bias", g.get(&b).unwrap(), &fd, 1e-7);
        // The plane sums' own backward.
        let gv = Var::from_tensor(&up).unwrap();
        let w = rng.randn((2, 3), DType::F64, &Device::Cpu).unwrap();
        let s = gv.as_tensor().apply_op1(PlaneSums { channels: 3, per_sample: true }).unwrap();
        let g2 = s.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let fd2 = central_differences(&up, 1e-6, 1, &|t| t.apply_op1(PlaneSums { channels: 3, per_sample: true }).unwrap().mul(&w).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()).unwrap();
        assert_gradient("plane sums", g2.get(&gv).unwrap(), &fd2, 1e-7);
    }
}
