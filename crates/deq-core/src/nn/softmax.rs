//! Softmax over the last dimension, differentiable (candle_nn's fused `softmax_last_dim` has
//! no backward pass). Entries of `-inf` (masked attention scores) get probability 0; a row
//! that is all `-inf` gives NaN, as in PyTorch.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

struct Softmax;

fn rows<T: Copy + Into<f64>>(v: &[T], d: usize, out: impl Fn(f64) -> T) -> Vec<T> {
    let mut y = Vec::with_capacity(v.len());
    for row in v.chunks(d) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x.into()));
        let sum: f64 = row.iter().map(|&x| (x.into() - max).exp()).sum();
        y.extend(row.iter().map(|&x| out((x.into() - max).exp() / sum)));
    }
    y
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "deq-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims().last().copied().filter(|&d| d > 0).ok_or_else(|| candle_core::Error::Msg("softmax of an empty last dimension".into()))?;
        let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("softmax expects a contiguous input".into()))?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(rows(&v[a..b], d, |x| x as f32)),
            CpuStorage::F64(v) => CpuStorage::F64(rows(&v[a..b], d, |x| x)),
            _ => candle_core::bail!("softmax: f32 or f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // dx = y * (g - sum(g * y)) per row.
        let s = (grad * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * grad.broadcast_sub(&s)?)?))
    }
}

/// `softmax(x)` over the last dimension: a fused kernel on the CPU (f32/f64, f64 sums),
/// candle's composed softmax elsewhere; both differentiable.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::DeqRng;
    use candle_core::{Device, Var};

    #[test]
    fn forward_matches_candle_and_masks_give_zero() {
        let mut rng = DeqRng::new(4);
        let x = rng.randn((3, 4, 11), DType::F64, &Device::Cpu).unwrap().affine(5.0, 0.0).unwrap();
        let ours = softmax_last_dim(&x).unwrap();
        let theirs = candle_nn::ops::softmax_last_dim(&x).unwrap();
        assert!((ours.clone() - theirs).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap() < 1e-14);
        let masked = Tensor::new(&[[1.0f32, f32::NEG_INFINITY, 2.0], [0.0, 0.0, f32::NEG_INFINITY]], &Device::Cpu).unwrap();
        let p = softmax_last_dim(&masked).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!((p[0][1], p[1][2]), (0.0, 0.0));
        assert!((p[0][0] + p[0][2] - 1.0).abs() < 1e-6 && (p[1][0] - 0.5).abs() < 1e-6);
        let f32_vs_f64 = (softmax_last_dim(&x.to_dtype(DType::F32).unwrap()).unwrap().to_dtype(DType::F64).unwrap() - ours).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(f32_vs_f64 < 1e-6, "{f32_vs_f64}");
    }

    #[test]
    fn other_dtypes_take_candles_softmax() {
        let x = DeqRng::new(7).randn((3, 9), DType::F32, &Device::Cpu).unwrap();
        let h = softmax_last_dim(&x.to_dtype(DType::BF16).unwrap()).unwrap();
        assert_eq!(h.dtype(), DType::BF16);
        let d = (h.to_dtype(DType::F32).unwrap() - softmax_last_dim(&x).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-2, "{d}");
        assert!(softmax_last_dim(&Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string().contains("empty last dimension"));
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = DeqRng::new(5);
        let x0 = rng.randn((2, 7), DType::F64, &Device::Cpu).unwrap().affine(2.0, 0.0).unwrap();
        let m = rng.randn((2, 7), DType::F64, &Device::Cpu).unwrap();
        let x = Var::from_tensor(&x0).unwrap();
        let g = (softmax_last_dim(x.as_tensor()).unwrap() * &m).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let f = |v: &[f64]| (softmax_last_dim(&Tensor::from_slice(v, (2, 7), &Device::Cpu).unwrap()).unwrap() * &m).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let base = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in 0..base.len() {
            let (mut p, mut q) = (base.clone(), base.clone());
            p[i] += 1e-6;
            q[i] -= 1e-6;
            let fd = (f(&p) - f(&q)) / 2e-6;
            assert!((g[i] - fd).abs() < 1e-8, "dx[{i}] {} against {fd}", g[i]);
        }
    }
}
