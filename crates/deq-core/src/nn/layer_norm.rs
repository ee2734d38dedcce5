//! Layer normalisation over the last dimension, with or without an affine map (DEQ-seq's
//! post-LN has none), differentiable.

use super::float::{row_stats, KernelFloat};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, Var, D};
use rayon::prelude::*;

/// `(x - mean) / sqrt(var + eps)` over the last dimension (biased variance, as PyTorch).
struct Normalize {
    eps: f64,
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    super::float::contiguous_slice(v, l, what, "input")
}

fn last_dim(l: &Layout) -> Result<usize> {
    l.dims().last().copied().filter(|&d| d > 0).ok_or_else(|| candle_core::Error::Msg("layer norm of an empty last dimension".into()))
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "deq-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l)?;
        let eps = self.eps;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(forward_rows(contiguous(v, l, "layer norm")?, d, eps)),
            CpuStorage::F64(v) => CpuStorage::F64(forward_rows(contiguous(v, l, "layer norm")?, d, eps)),
            _ => candle_core::bail!("layer norm: f32 or f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &NormalizeBackward { eps: self.eps })?))
    }
}

/// `dL/dx` of [`Normalize`] from `x` and `g = dL/dx_hat`, per row:
/// `r * (g - mean(g) - x_hat * mean(g * x_hat))` with `r = 1 / sqrt(var + eps)`.
struct NormalizeBackward {
    eps: f64,
}

/// Rows per parallel task (a task of a few thousand elements amortises the hand-off).
fn rows_per_task(d: usize) -> usize {
    (4096 / d.max(1)).max(1)
}

/// Normalises each row of `x` (length `d`), rows spread over the threads.
fn forward_rows<T: KernelFloat>(x: &[T], d: usize, eps: f64) -> Vec<T> {
    let mut y = vec![T::default(); x.len()];
    let chunk = rows_per_task(d) * d;
    y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(yc, xc)| {
        for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
            let (m, r) = row_stats(xr, eps);
            // (x - m) r in the element type (vectorised; the subtraction first keeps rows with a
            // large mean accurate)
            let (mt, rt) = (T::from64(-m), T::from64(r));
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = (v + mt) * rt;
            }
        }
    });
    y
}

fn backward_rows<T: KernelFloat>(x: &[T], g: &[T], d: usize, eps: f64) -> Vec<T> {
    let mut dx = vec![T::default(); x.len()];
    let chunk = rows_per_task(d) * d;
    dx.par_chunks_mut(chunk).zip(x.par_chunks(chunk).zip(g.par_chunks(chunk))).for_each(|(dc, (xc, gc))| {
        for ((dr, xr), gr) in dc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
            let (m, r) = row_stats(xr, eps);
            let (mut gm, mut gxm) = (0f64, 0f64);
            for (&xv, &gv) in xr.iter().zip(gr) {
                let (xh, gv) = ((xv.to64() - m) * r, gv.to64());
                gm += gv;
                gxm += gv * xh;
            }
            let (gm, gxm) = (gm / d as f64, gxm / d as f64);
            // r (g - gm - (x - m) r gxm)
            let (mt, rt, gmt, st) = (T::from64(-m), T::from64(r), T::from64(-gm), T::from64(-r * gxm));
            for ((o, &xv), &gv) in dr.iter_mut().zip(xr).zip(gr) {
                *o = (gv + gmt + (xv + mt) * st) * rt;
            }
        }
    });
    dx
}

impl CustomOp2 for NormalizeBackward {
    fn name(&self) -> &'static str {
        "deq-layer-norm-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = last_dim(l1)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("layer norm backward: x {:?} and its gradient {:?}", l1.shape(), l2.shape());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(backward_rows(contiguous(x, l1, "layer norm")?, contiguous(g, l2, "layer norm")?, d, self.eps)),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(backward_rows(contiguous(x, l1, "layer norm")?, contiguous(g, l2, "layer norm")?, d, self.eps)),
            _ => candle_core::bail!("layer norm backward: f32 or f64, both the same"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// The composed normalisation (any device and dtype; candle differentiates it).
fn normalize_composed(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// Layer normalisation of `x` over its last dimension, then `* weight + bias` when given
/// (each of the last dimension's size). Differentiable with respect to all three.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let xh = if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(Normalize { eps })?
    } else {
        normalize_composed(x, eps)?
    };
    let y = match weight {
        Some(w) => xh.broadcast_mul(w)?,
        None => xh,
    };
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// A LayerNorm layer (PyTorch's `nn.LayerNorm(d, eps, elementwise_affine)`): weight 1 and
/// bias 0 at initialisation when affine.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    affine: Option<(Var, Var)>,
    eps: f64,
}

impl LayerNorm {
    /// A layer over `d` features; `affine` adds the learned weight and bias.
    pub fn new(d: usize, affine: bool, eps: f64, dtype: DType, dev: &candle_core::Device) -> Result<Self> {
        let affine = if affine { Some((Var::ones(d, dtype, dev)?, Var::zeros(d, dtype, dev)?)) } else { None };
        Ok(Self { affine, eps })
    }

    /// The learned parameters (`weight`, `bias`), none without affine.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        match &self.affine {
            Some((w, b)) => vec![("weight".into(), w.clone()), ("bias".into(), b.clone())],
            None => Vec::new(),
        }
    }
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.affine {
            Some((w, b)) => layer_norm(x, Some(w.as_tensor()), Some(b.as_tensor()), self.eps),
            None => layer_norm(x, None, None, self.eps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::max_abs_diff;
    use crate::rng::DeqRng;
    use candle_core::{Device, Module};

    #[test]
    fn forward_matches_the_composed_ops_and_candle_nn() {
        let mut rng = DeqRng::new(1);
        for d in [1usize, 7, 64] {
            let x = rng.randn((3, 5, d), DType::F64, &Device::Cpu).unwrap().affine(3.0, 1.5).unwrap();
            let fused = layer_norm(&x, None, None, 1e-5).unwrap();
            assert!(max_abs_diff(&fused, &normalize_composed(&x, 1e-5).unwrap()).unwrap() < 1e-12, "d {d}");
            let w = rng.randn(d, DType::F64, &Device::Cpu).unwrap();
            let b = rng.randn(d, DType::F64, &Device::Cpu).unwrap();
            let ours = layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap();
            // candle_nn's fused layer norm (f32 only): the same forward, no backward.
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let candle = candle_nn::ops::layer_norm(&f32(&x), &f32(&w), &f32(&b), 1e-5).unwrap();
            assert!(max_abs_diff(&ours, &candle).unwrap() < 1e-5, "d {d}");
            // f32 against f64.
            let x32 = x.to_dtype(DType::F32).unwrap();
            assert!(max_abs_diff(&layer_norm(&x32, None, None, 1e-5).unwrap(), &fused).unwrap() < 2e-6, "d {d}");
        }
    }

    /// Central differences of `sum(layer_norm(x) * m)` in f64 against the gradients of x,
    /// weight and bias.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = DeqRng::new(2);
        let (n, d) = (4usize, 9usize);
        let x0 = rng.randn((n, d), DType::F64, &Device::Cpu).unwrap().affine(2.0, 0.3).unwrap();
        let w0 = rng.randn(d, DType::F64, &Device::Cpu).unwrap();
        let b0 = rng.randn(d, DType::F64, &Device::Cpu).unwrap();
        let m = rng.randn((n, d), DType::F64, &Device::Cpu).unwrap();
        for affine in [false, true] {
            let (x, w, b) = (Var::from_tensor(&x0).unwrap(), Var::from_tensor(&w0).unwrap(), Var::from_tensor(&b0).unwrap());
            let f = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
                let y = if affine { layer_norm(x, Some(w), Some(b), 1e-5) } else { layer_norm(x, None, None, 1e-5) }.unwrap();
                (y * &m).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
            };
            let y = if affine { layer_norm(x.as_tensor(), Some(w.as_tensor()), Some(b.as_tensor()), 1e-5) } else { layer_norm(x.as_tensor(), None, None, 1e-5) }.unwrap();
            let g = (y * &m).unwrap().sum_all().unwrap().backward().unwrap();
            let h = 1e-6;
            let fd = |which: usize, i: usize| -> f64 {
                let bump = |t: &Tensor, s: f64| -> Tensor {
                    let mut v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                    v[i] += s;
                    Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap()
                };
                let args = |s: f64| match which {
                    0 => (bump(&x0, s), w0.clone(), b0.clone()),
                    1 => (x0.clone(), bump(&w0, s), b0.clone()),
                    _ => (x0.clone(), w0.clone(), bump(&b0, s)),
                };
                let (p, q) = (args(h), args(-h));
                (f(&p.0, &p.1, &p.2) - f(&q.0, &q.1, &q.2)) / (2.0 * h)
            };
            let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for (i, gv) in gx.iter().enumerate() {
                assert!((gv - fd(0, i)).abs() < 1e-7, "affine {affine}: dx[{i}] {gv} against {}", fd(0, i));
            }
            if affine {
                for (which, var) in [(1, &w), (2, &b)] {
                    let gv = g.get(var.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
                    for (i, v) in gv.iter().enumerate() {
                        assert!((v - fd(which, i)).abs() < 1e-7, "param {which}[{i}] {v} against {}", fd(which, i));
                    }
                }
            }
        }
    }

    #[test]
    fn other_dtypes_take_the_composed_path_and_empty_rows_are_refused() {
        let x = DeqRng::new(6).randn((5, 12), DType::F32, &Device::Cpu).unwrap();
        let h = layer_norm(&x.to_dtype(DType::BF16).unwrap(), None, None, 1e-5).unwrap();
        assert_eq!(h.dtype(), DType::BF16);
        assert!(max_abs_diff(&h, &layer_norm(&x, None, None, 1e-5).unwrap()).unwrap() < 3e-2);
        let e = layer_norm(&Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap(), None, None, 1e-5).unwrap_err().to_string();
        assert!(e.contains("empty last dimension"), "{e}");
    }

    #[test]
    fn f32_backward_matches_f64() {
        let mut rng = DeqRng::new(3);
        let x = rng.randn((6, 33), DType::F64, &Device::Cpu).unwrap();
        let m = rng.randn((6, 33), DType::F64, &Device::Cpu).unwrap();
        let grad = |dtype: DType| {
            let v = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
            let y = LayerNorm::new(33, false, 1e-5, dtype, &Device::Cpu).unwrap().forward(v.as_tensor()).unwrap();
            let g = (y * m.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(v.as_tensor()).unwrap().clone()
        };
        assert!(max_abs_diff(&grad(DType::F32), &grad(DType::F64)).unwrap() < 1e-5);
        assert!(LayerNorm::new(4, false, 1e-5, DType::F32, &Device::Cpu).unwrap().named_vars().is_empty());
        assert_eq!(LayerNorm::new(4, true, 1e-5, DType::F32, &Device::Cpu).unwrap().named_vars().len(), 2);
    }
}
