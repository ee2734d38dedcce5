//! Batch normalisation in training mode (batch statistics) with a fused CPU forward and
//! backward.
//!
//! Composed from candle's ops, batch norm costs a transpose, two reductions and four broadcast
//! passes forward, and its autograd differentiates the broadcast division again (a square, a
//! negation and a product over the whole tensor, then reductions over the broadcast axes):
//! about 15% of an MDEQ-MNIST training step for the stem and head alone. Here the per-channel
//! statistics are two passes over the input (f64 sums over eight lanes), the output one more,
//! and the backward two: the channel sums of `dy` and `dy * x`, then `dx`.
//!
//! - forward: `y = (x - m_c) inv_c w_c + b_c` with `inv_c = 1 / sqrt(var_c + eps)`, the
//!   biased variance over the batch and spatial axes;
//! - backward: `db_c = sum(dy)`, `dw_c = sum(dy x_hat)`,
//!   `dx = inv_c w_c (dy - db_c / N - x_hat dw_c / N)` with `N` values per channel.
//!
//! Other devices and dtypes use the composed ops.

use super::float::{lane_sum, sum_and_dot, KernelFloat};
use crate::grad::input_wanted;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// `(n, c, hw)` of an input `(N, C, ...)`.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    c: usize,
    hw: usize,
}

impl Geom {
    fn new(dims: &[usize]) -> Result<Self> {
        if dims.len() < 2 {
            candle_core::bail!("batch norm: input {dims:?} needs (batch, channels, ...)");
        }
        Ok(Self { n: dims[0], c: dims[1], hw: dims[2..].iter().product() })
    }
    /// Values per channel.
    fn count(&self) -> usize {
        self.n * self.hw
    }
}

/// Per-channel batch statistics: `(mean, 1 / sqrt(var + eps), var)`.
struct Stats {
    mean: Vec<f64>,
    inv: Vec<f64>,
    var: Vec<f64>,
}

fn channel_stats<T: KernelFloat>(x: &[T], geo: Geom, eps: f64) -> Stats {
    let d = geo.count().max(1) as f64;
    let planes = |c: usize| (0..geo.n).map(move |i| &x[(i * geo.c + c) * geo.hw..][..geo.hw]);
    let per: Vec<(f64, f64)> = (0..geo.c)
        .into_par_iter()
        .map(|c| {
            let m = planes(c).map(|p| lane_sum(p, |v| v)).sum::<f64>() / d;
            let var = planes(c).map(|p| lane_sum(p, |v| (v - m) * (v - m))).sum::<f64>() / d;
            (m, var)
        })
        .collect();
    Stats { mean: per.iter().map(|p| p.0).collect(), inv: per.iter().map(|p| 1.0 / (p.1 + eps).sqrt()).collect(), var: per.iter().map(|p| p.1).collect() }
}

fn forward<T: KernelFloat>(x: &[T], w: &[T], b: &[T], geo: Geom, st: &Stats) -> Vec<T> {
    let hw = geo.hw.max(1);
    super::float::par_rows(x, hw, |r, xr, yr| {
        let c = r % geo.c;
        let (mt, a, off) = (T::from64(-st.mean[c]), T::from64(st.inv[c] * w[c].to64()), b[c]);
        for (o, &v) in yr.iter_mut().zip(xr) {
            o.write((v + mt) * a + off);
        }
    })
}

/// `[dx, dweight, dbias]` in one buffer (`dx` empty when not wanted).
fn backward<T: KernelFloat>(x: &[T], w: &[T], dy: &[T], geo: Geom, st: &Stats, want_dx: bool) -> Vec<T> {
    let d = geo.count().max(1) as f64;
    // Per channel: sum(dy) and sum(dy x_hat), images in order.
    let sums: Vec<(f64, f64)> = (0..geo.c)
        .into_par_iter()
        .map(|c| {
            let (mut s1, mut s2) = (0f64, 0f64);
            for i in 0..geo.n {
                let off = (i * geo.c + c) * geo.hw;
                let (a, b) = sum_and_dot(&dy[off..][..geo.hw], &x[off..][..geo.hw]);
                s1 += a;
                s2 += b;
            }
            (s1, st.inv[c] * (s2 - st.mean[c] * s1))
        })
        .collect();
    let mut out = if want_dx && geo.hw > 0 {
        super::float::par_zip_rows(x, dy, geo.hw, |r, xr, gr, o| {
            let c = r % geo.c;
            let (inv, wc) = (st.inv[c], w[c].to64());
            // dx = inv w (dy - s1 / N - x_hat sxh / N), x_hat = (x - m) inv
            let (a, mt, gm, sx) = (T::from64(inv * wc), T::from64(-st.mean[c]), T::from64(-sums[c].0 / d), T::from64(-inv * sums[c].1 / d));
            for ((o, &xv), &gv) in o.iter_mut().zip(xr).zip(gr) {
                o.write((gv + gm + (xv + mt) * sx) * a);
            }
        })
    } else if want_dx {
        vec![T::default(); x.len()]
    } else {
        Vec::new()
    };
    out.extend(sums.iter().map(|s| T::from64(s.1)));
    out.extend(sums.iter().map(|s| T::from64(s.0)));
    out
}

fn slice<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    super::float::contiguous_slice(v, l, "batch norm", what)
}

/// `y` from `(x, weight, bias)` with the statistics of this `x`.
struct BatchNormOp(Arc<Stats>);

/// `[dx, dweight, dbias]` from `(x, weight, dy)`.
struct BatchNormBackward {
    stats: Arc<Stats>,
    want_dx: bool,
}

fn check(geo: Geom, st: &Stats, lw: &Layout, lb: &Layout) -> Result<()> {
    if lw.dims() != [geo.c] || lb.dims() != [geo.c] || st.mean.len() != geo.c {
        candle_core::bail!("batch norm: weight {:?} and bias {:?} must have {} entries", lw.dims(), lb.dims(), geo.c);
    }
    Ok(())
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "deq-batch-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geom::new(l1.dims())?;
        check(geo, &self.0, l2, l3)?;
        let y = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => CpuStorage::F32(forward(slice(x, l1, "input")?, slice(w, l2, "weight")?, slice(b, l3, "bias")?, geo, &self.0)),
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => CpuStorage::F64(forward(slice(x, l1, "input")?, slice(w, l2, "weight")?, slice(b, l3, "bias")?, geo, &self.0)),
            _ => candle_core::bail!("batch norm: f32 or f64, all three the same"),
        };
        Ok((y, l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_w, want_b) = (input_wanted(0), input_wanted(1), input_wanted(2));
        let all = x.apply_op3_no_bwd(w, &dy.contiguous()?, &BatchNormBackward { stats: self.0.clone(), want_dx: want_x })?;
        super::group_norm::split_grads(&all, x, w.elem_count(), [want_x, want_w, want_b])
    }
}

impl CustomOp3 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "deq-batch-norm-backward"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geom::new(l1.dims())?;
        if l2.dims() != [geo.c] || l3.dims() != l1.dims() || self.stats.mean.len() != geo.c {
            candle_core::bail!("batch norm backward: x {:?}, weight {:?}, gradient {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(g)) => CpuStorage::F32(backward(slice(x, l1, "input")?, slice(w, l2, "weight")?, slice(g, l3, "gradient")?, geo, &self.stats, self.want_dx)),
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(g)) => CpuStorage::F64(backward(slice(x, l1, "input")?, slice(w, l2, "weight")?, slice(g, l3, "gradient")?, geo, &self.stats, self.want_dx)),
            _ => candle_core::bail!("batch norm backward: f32 or f64, all three the same"),
        };
        let len = if self.want_dx { l1.shape().elem_count() } else { 0 } + 2 * geo.c;
        Ok((out, Shape::from(len)))
    }
}

fn composed(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let dims = x.dims().to_vec();
    let geo = Geom::new(&dims)?;
    let xt = x.transpose(0, 1)?.reshape((geo.c, geo.n * geo.hw))?;
    let mean = xt.mean_keepdim(1)?;
    let var = xt.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
    let mut pshape = vec![1usize; dims.len()];
    pshape[1] = geo.c;
    let (m, v) = (mean.reshape(pshape.as_slice())?, var.reshape(pshape.as_slice())?);
    let mut y = x.broadcast_sub(&m)?.broadcast_div(&(v + eps)?.sqrt()?)?;
    if let Some(w) = weight {
        y = y.broadcast_mul(&w.reshape(pshape.as_slice())?)?;
    }
    if let Some(b) = bias {
        y = y.broadcast_add(&b.reshape(pshape.as_slice())?)?;
    }
    Ok((y, mean.flatten_all()?.detach(), var.flatten_all()?.detach()))
}

/// Batch normalisation of `x` `(N, C, ...)` with batch statistics (training mode of
/// `torch.nn.BatchNorm2d`): `(x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c`, the
/// biased variance over every axis but the channels. Returns `(y, mean, var)`, the statistics
/// detached `(C,)` in `x`'s dtype (for running averages; PyTorch's running variance is the
/// unbiased one, `var * N / (N - 1)`). Differentiable in `x`, `weight` and `bias`; f32/f64 on
/// the CPU use the fused kernels (f64 sums), everything else candle's ops.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[[1f32, 3.]], [[5., 7.]]], &Device::Cpu)?.reshape((2, 1, 1, 2))?;
/// let (y, mean, var) = deq_core::nn::batch_norm_train(&x, None, None, 0.0)?;
/// assert_eq!(mean.to_vec1::<f32>()?, [4.0]);
/// assert_eq!(var.to_vec1::<f32>()?, [5.0]);
/// let y = y.flatten_all()?.to_vec1::<f32>()?;
/// assert!((y[0] + 3.0 / 5f32.sqrt()).abs() < 1e-6);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn batch_norm_train(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let fast = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && weight.is_none_or(|w| w.dtype() == x.dtype()) && bias.is_none_or(|b| b.dtype() == x.dtype());
    if !fast {
        return composed(x, weight, bias, eps);
    }
    let geo = Geom::new(x.dims())?;
    let x = x.contiguous()?;
    let stats = {
        let (s, l) = x.storage_and_layout();
        match &*s {
            candle_core::Storage::Cpu(CpuStorage::F32(v)) => channel_stats(slice(v, l, "input")?, geo, eps),
            candle_core::Storage::Cpu(CpuStorage::F64(v)) => channel_stats(slice(v, l, "input")?, geo, eps),
            _ => candle_core::bail!("batch norm: f32 or f64 on the CPU"),
        }
    };
    let mean = Tensor::from_vec(stats.mean.clone(), geo.c, x.device())?.to_dtype(x.dtype())?;
    let var = Tensor::from_vec(stats.var.clone(), geo.c, x.device())?.to_dtype(x.dtype())?;
    let w = match weight {
        Some(w) => w.contiguous()?,
        None => Tensor::ones(geo.c, x.dtype(), x.device())?,
    };
    let b = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(geo.c, x.dtype(), x.device())?,
    };
    let y = x.apply_op3(&w, &b, BatchNormOp(Arc::new(stats)))?;
    Ok((y, mean, var))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::max_abs_diff;
    use crate::rng::DeqRng;
    use candle_core::{Device, Var};

    const SHAPES: &[&[usize]] = &[&[3, 4, 5, 6], &[2, 3, 1, 1], &[5, 2, 7], &[1, 6, 3, 3], &[4, 1, 2, 9]];

    #[test]
    fn equals_the_composed_ops_and_their_gradients_f64_and_f32() {
        let mut rng = DeqRng::new(21);
        for &dims in SHAPES {
            let c = dims[1];
            // A large common offset: the two-pass statistics must stay accurate.
            let x = Var::from_tensor(&(rng.randn(dims.to_vec(), DType::F64, &Device::Cpu).unwrap() + 100.0).unwrap()).unwrap();
            let w = Var::from_tensor(&rng.randn(c, DType::F64, &Device::Cpu).unwrap()).unwrap();
            let b = Var::from_tensor(&rng.randn(c, DType::F64, &Device::Cpu).unwrap()).unwrap();
            let up = rng.randn(dims.to_vec(), DType::F64, &Device::Cpu).unwrap();
            let (y, m, v) = batch_norm_train(x.as_tensor(), Some(w.as_tensor()), Some(b.as_tensor()), 1e-5).unwrap();
            let (yr, mr, vr) = composed(x.as_tensor(), Some(w.as_tensor()), Some(b.as_tensor()), 1e-5).unwrap();
            assert!(max_abs_diff(&y, &yr).unwrap() < 1e-9 && max_abs_diff(&m, &mr).unwrap() < 1e-11 && max_abs_diff(&v, &vr).unwrap() < 1e-9, "{dims:?}");
            let g1 = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&yr * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for var in [&x, &w, &b] {
                let d = max_abs_diff(g1.get(var.as_tensor()).unwrap(), g2.get(var.as_tensor()).unwrap()).unwrap();
                assert!(d < 1e-8, "{dims:?}: {d}");
            }
            // The f32 kernels against the f64 ones.
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let (xs, ws, bs) = (Var::from_tensor(&f32(x.as_tensor())).unwrap(), Var::from_tensor(&f32(w.as_tensor())).unwrap(), Var::from_tensor(&f32(b.as_tensor())).unwrap());
            let (y32, m32, v32) = batch_norm_train(xs.as_tensor(), Some(ws.as_tensor()), Some(bs.as_tensor()), 1e-5).unwrap();
            assert!(max_abs_diff(&y32, &y).unwrap() < 1e-3 && max_abs_diff(&m32, &m).unwrap() < 1e-4 && max_abs_diff(&v32, &v).unwrap() < 1e-3, "f32 {dims:?}");
            let g3 = (&y32 * &f32(&up)).unwrap().sum_all().unwrap().backward().unwrap();
            for (v32, v64) in [(&xs, &x), (&ws, &w), (&bs, &b)] {
                let d = max_abs_diff(g3.get(v32.as_tensor()).unwrap(), g1.get(v64.as_tensor()).unwrap()).unwrap();
                assert!(d < 1e-2, "f32 gradient {dims:?}: {d}");
            }
        }
    }

    #[test]
    fn statistics_are_two_pass_accurate_far_from_zero() {
        // Values around 1e4 with unit spread: E[x^2] - mean^2 would lose about 1e-8 of the
        // variance in f64; the two passes keep it to rounding.
        let mut rng = DeqRng::new(8);
        let x = (rng.randn((4, 3, 5, 5), DType::F64, &Device::Cpu).unwrap() + 1e4).unwrap();
        let (_, _, var) = batch_norm_train(&x, None, None, 1e-5).unwrap();
        let v: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        for (c, got) in var.to_vec1::<f64>().unwrap().into_iter().enumerate() {
            let vals: Vec<f64> = (0..4).flat_map(|i| v[(i * 3 + c) * 25..][..25].to_vec()).collect();
            let m = vals.iter().sum::<f64>() / 100.0;
            let want = vals.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / 100.0;
            assert!((got - want).abs() < 1e-11 * want, "channel {c}: {got} vs {want}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = DeqRng::new(4);
        let dims = [3usize, 2, 3, 2];
        let x = rng.randn(dims.to_vec(), DType::F64, &Device::Cpu).unwrap();
        let w = rng.randn(2, DType::F64, &Device::Cpu).unwrap();
        let b = rng.randn(2, DType::F64, &Device::Cpu).unwrap();
        let up = rng.randn(dims.to_vec(), DType::F64, &Device::Cpu).unwrap();
        // A loss that is not linear in y, so that every term of dx matters.
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor| (batch_norm_train(x, Some(w), Some(b), 1e-5).unwrap().0 * &up).unwrap().sqr().unwrap().sum_all().unwrap();
        let vars = [Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap()];
        let grads = loss(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor()).backward().unwrap();
        for (which, v) in vars.iter().enumerate() {
            let g: Vec<f64> = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for i in 0..base.len() {
                let at = |d: f64| {
                    let mut p = base.clone();
                    p[i] += d;
                    let t = Tensor::from_vec(p, v.as_tensor().dims(), &Device::Cpu).unwrap();
                    let mut args = [x.clone(), w.clone(), b.clone()];
                    args[which] = t;
                    loss(&args[0], &args[1], &args[2]).to_scalar::<f64>().unwrap()
                };
                let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
                assert!((fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()), "input {which} index {i}: {fd} vs {}", g[i]);
            }
        }
    }

    #[test]
    fn pruned_backward_and_bad_inputs() {
        let mut rng = DeqRng::new(6);
        let x = rng.randn((2, 3, 4), DType::F64, &Device::Cpu).unwrap();
        let w = Tensor::ones(3, DType::F64, &Device::Cpu).unwrap();
        let b = Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap();
        let (y, _, _) = batch_norm_train(&x, None, None, 1e-5).unwrap();
        let op = BatchNormOp(Arc::new(channel_stats(&x.flatten_all().unwrap().to_vec1::<f64>().unwrap(), Geom::new(x.dims()).unwrap(), 1e-5)));
        let dy = y.ones_like().unwrap();
        let (dx, dw, db) = crate::grad::with_wanted(&[true, false, false], || op.bwd(&x, &w, &b, &y, &dy)).unwrap();
        assert!(dx.is_some() && dw.is_none() && db.is_none());
        let (dx, dw, db) = crate::grad::with_wanted(&[false, true, true], || op.bwd(&x, &w, &b, &y, &dy)).unwrap();
        assert!(dx.is_none() && dw.is_some() && db.is_some());
        // Unit upstream gradient: dx sums to zero per channel, db is the count per channel.
        assert_eq!(db.unwrap().to_vec1::<f64>().unwrap(), [8.0, 8.0, 8.0]);
        assert!(batch_norm_train(&x, Some(&Tensor::ones(2, DType::F64, &Device::Cpu).unwrap()), None, 1e-5).is_err());
        assert!(batch_norm_train(&x, None, Some(&Tensor::ones(4, DType::F64, &Device::Cpu).unwrap()), 1e-5).is_err());
        assert!(batch_norm_train(&Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap(), None, None, 1e-5).is_err());
        // bf16 goes through candle's ops.
        let (yb, _, _) = batch_norm_train(&x.to_dtype(DType::BF16).unwrap(), None, None, 1e-5).unwrap();
        assert!(max_abs_diff(&yb, &y).unwrap() < 0.05);
    }
}
