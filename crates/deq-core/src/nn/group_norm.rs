//! Group normalisation (`torch.nn.GroupNorm`) with a fused CPU forward and backward.
//!
//! Composed from candle ops, a group norm over `(n, c, h, w)` is a mean, a subtraction, a
//! square, a second mean, a square root, a division and the per-channel scale and shift: eight
//! passes forward, more backward, each with its own temporary, and reductions that candle runs
//! on one thread. Here the forward is two passes over each `(image, group)` row (statistics in
//! f64, then `y = x a_c + b_c` with per-channel `a_c`, `b_c`), and the backward is two passes
//! that give the input gradient and the per-channel sums for the scale and shift gradients
//! together, rows spread over the threads and the per-channel sums added in a fixed order.
//! Other devices and dtypes use the composed ops (candle differentiates them).

use super::float::{row_stats, sum_and_dot, KernelFloat};
use crate::grad::input_wanted;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, Var};
use rayon::prelude::*;

/// Sizes of one group norm: `n` images, `c` channels of `hw` pixels, `groups` groups.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    c: usize,
    hw: usize,
    groups: usize,
}

impl Geom {
    fn new(dims: &[usize], groups: usize) -> Result<Self> {
        if dims.len() < 2 {
            candle_core::bail!("group norm: input {dims:?} needs (batch, channels, ...)");
        }
        let (n, c) = (dims[0], dims[1]);
        if groups == 0 || c % groups != 0 {
            candle_core::bail!("group norm: {groups} groups do not divide {c} channels");
        }
        Ok(Self { n, c, hw: dims[2..].iter().product(), groups })
    }
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    fn row(&self) -> usize {
        self.cg() * self.hw
    }
}

fn forward<T: KernelFloat>(x: &[T], w: &[T], b: &[T], geo: Geom, eps: f64) -> Vec<T> {
    let (cg, hw, row) = (geo.cg(), geo.hw, geo.row());
    if row == 0 {
        return vec![T::default(); x.len()];
    }
    super::float::par_rows(x, row, |r, xr, yr| {
        let (m, inv) = row_stats(xr, eps);
        let c0 = (r % geo.groups) * cg;
        let mt = T::from64(-m);
        for (ci, (yc, xc)) in yr.chunks_mut(hw).zip(xr.chunks(hw)).enumerate() {
            // (x - m) (inv w_c) + b_c: the subtraction first keeps rows with a large mean accurate
            let (a, off) = (T::from64(inv * w[c0 + ci].to64()), b[c0 + ci]);
            for (o, &v) in yc.iter_mut().zip(xc) {
                o.write((v + mt) * a + off);
            }
        }
    })
}

/// `[dx, dweight, dbias]` in one buffer (`dx` empty when not wanted).
fn backward<T: KernelFloat>(x: &[T], w: &[T], dy: &[T], geo: Geom, eps: f64, want_dx: bool) -> Vec<T> {
    let (cg, hw, row) = (geo.cg(), geo.hw, geo.row());
    let rows = geo.n * geo.groups;
    let mut out = vec![T::default(); if want_dx { x.len() } else { 0 } + 2 * geo.c];
    if row == 0 {
        return out;
    }
    // Per row: the channel sums of dy and dy * x_hat (cg each), for the parameter gradients.
    let mut sums = vec![0f64; rows * 2 * cg];
    let (dx, params) = out.split_at_mut(if want_dx { x.len() } else { 0 });
    let work = |r: usize, xr: &[T], gr: &[T], s: &mut [f64], dxr: Option<&mut [T]>| {
        let (m, inv) = row_stats(xr, eps);
        let c0 = (r % geo.groups) * cg;
        let (mut gm, mut gxm) = (0f64, 0f64);
        for ci in 0..cg {
            let (xc, gc) = (&xr[ci * hw..][..hw], &gr[ci * hw..][..hw]);
            let (s1, s2) = sum_and_dot(gc, xc);
            // sum dy * x_hat over the channel = inv * (sum dy x - m sum dy)
            let sxh = inv * (s2 - m * s1);
            s[ci] = s1;
            s[cg + ci] = sxh;
            let wc = w[c0 + ci].to64();
            gm += wc * s1;
            gxm += wc * sxh;
        }
        if let Some(dxr) = dxr {
            let d = row as f64;
            let (gm, gxm) = (gm / d, gxm / d);
            // dx = inv (w_c dy - gm - (x - m) inv gxm)
            let (mt, it, gmt, st) = (T::from64(-m), T::from64(inv), T::from64(-gm), T::from64(-inv * gxm));
            for ci in 0..cg {
                let wt = w[c0 + ci];
                let (xc, gc) = (&xr[ci * hw..][..hw], &gr[ci * hw..][..hw]);
                for ((o, &xv), &gv) in dxr[ci * hw..][..hw].iter_mut().zip(xc).zip(gc) {
                    *o = (gv * wt + gmt + (xv + mt) * st) * it;
                }
            }
        }
    };
    if want_dx {
        dx.par_chunks_mut(row).zip(x.par_chunks(row).zip(dy.par_chunks(row))).zip(sums.par_chunks_mut(2 * cg)).enumerate().for_each(|(r, ((dxr, (xr, gr)), s))| work(r, xr, gr, s, Some(dxr)));
    } else {
        x.par_chunks(row).zip(dy.par_chunks(row)).zip(sums.par_chunks_mut(2 * cg)).enumerate().for_each(|(r, ((xr, gr), s))| work(r, xr, gr, s, None));
    }
    // Parameter gradients: sums over the images, in image order.
    let (dw, db) = params.split_at_mut(geo.c);
    let (mut acc_w, mut acc_b) = (vec![0f64; geo.c], vec![0f64; geo.c]);
    for (r, s) in sums.chunks(2 * cg).enumerate() {
        let c0 = (r % geo.groups) * cg;
        for ci in 0..cg {
            acc_b[c0 + ci] += s[ci];
            acc_w[c0 + ci] += s[cg + ci];
        }
    }
    for (o, v) in dw.iter_mut().zip(acc_w) {
        *o = T::from64(v);
    }
    for (o, v) in db.iter_mut().zip(acc_b) {
        *o = T::from64(v);
    }
    out
}

fn slice<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    super::float::contiguous_slice(v, l, "group norm", what)
}

/// `(x, weight, bias) -> y`.
struct GroupNormOp {
    groups: usize,
    eps: f64,
}

/// `(x, weight, dy) -> [dx, dweight, dbias]` flattened (`dx` left out when `want_dx` is false).
struct GroupNormBackward {
    groups: usize,
    eps: f64,
    want_dx: bool,
}

fn check_params(geo: Geom, lw: &Layout, lb: &Layout) -> Result<()> {
    if lw.dims() != [geo.c] || lb.dims() != [geo.c] {
        candle_core::bail!("group norm: weight {:?} and bias {:?} must have {} entries", lw.dims(), lb.dims(), geo.c);
    }
    Ok(())
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "deq-group-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geom::new(l1.dims(), self.groups)?;
        check_params(geo, l2, l3)?;
        let y = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => CpuStorage::F32(forward(slice(x, l1, "input")?, slice(w, l2, "weight")?, slice(b, l3, "bias")?, geo, self.eps)),
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => CpuStorage::F64(forward(slice(x, l1, "input")?, slice(w, l2, "weight")?, slice(b, l3, "bias")?, geo, self.eps)),
            _ => candle_core::bail!("group norm: f32 or f64, all three the same"),
        };
        Ok((y, l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_w, want_b) = (input_wanted(0), input_wanted(1), input_wanted(2));
        let all = x.apply_op3_no_bwd(w, &dy.contiguous()?, &GroupNormBackward { groups: self.groups, eps: self.eps, want_dx: want_x })?;
        split_grads(&all, x, w.elem_count(), [want_x, want_w, want_b])
    }
}

/// Splits the flat `[dx, dweight, dbias]` of a fused normalisation backward (`dx` absent unless
/// wanted) into the wanted gradients of `(x, weight, bias)`, `c` channels.
pub(super) fn split_grads(all: &Tensor, x: &Tensor, c: usize, want: [bool; 3]) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let nx = if want[0] { x.elem_count() } else { 0 };
    let dx = if want[0] { Some(all.narrow(0, 0, nx)?.reshape(x.shape())?) } else { None };
    let dw = if want[1] { Some(all.narrow(0, nx, c)?) } else { None };
    let db = if want[2] { Some(all.narrow(0, nx + c, c)?) } else { None };
    Ok((dx, dw, db))
}

impl CustomOp3 for GroupNormBackward {
    fn name(&self) -> &'static str {
        "deq-group-norm-backward"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geom::new(l1.dims(), self.groups)?;
        if l2.dims() != [geo.c] || l3.dims() != l1.dims() {
            candle_core::bail!("group norm backward: x {:?}, weight {:?}, gradient {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(g)) => CpuStorage::F32(backward(slice(x, l1, "input")?, slice(w, l2, "weight")?, slice(g, l3, "gradient")?, geo, self.eps, self.want_dx)),
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(g)) => CpuStorage::F64(backward(slice(x, l1, "input")?, slice(w, l2, "weight")?, slice(g, l3, "gradient")?, geo, self.eps, self.want_dx)),
            _ => candle_core::bail!("group norm backward: f32 or f64, all three the same"),
        };
        let len = if self.want_dx { l1.shape().elem_count() } else { 0 } + 2 * geo.c;
        Ok((out, Shape::from(len)))
    }
}

/// The composed group norm (any device and dtype).
fn composed(x: &Tensor, groups: usize, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let geo = Geom::new(&dims, groups)?;
    let g = x.reshape((geo.n, groups, geo.row()))?;
    let mean = g.mean_keepdim(2)?;
    let centred = g.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(2)?;
    let mut y = centred.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims.as_slice())?;
    let mut pshape = vec![1usize; dims.len()];
    pshape[1] = geo.c;
    if let Some(w) = weight {
        y = y.broadcast_mul(&w.reshape(pshape.as_slice())?)?;
    }
    if let Some(b) = bias {
        y = y.broadcast_add(&b.reshape(pshape.as_slice())?)?;
    }
    Ok(y)
}

/// Group normalisation of `x` `(n, c, ...)` over `groups` groups of channels (biased variance,
/// as PyTorch), then `* weight + bias` per channel when given. Differentiable with respect to
/// all three.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::arange(0f32, 8., &Device::Cpu)?.reshape((1, 2, 2, 2))?;
/// let y = deq_core::nn::group_norm(&x, 2, None, None, 1e-5)?;
/// let row: Vec<f32> = y.flatten_all()?.to_vec1()?;
/// assert!((row[0] + 1.3416).abs() < 1e-3 && (row[4] + 1.3416).abs() < 1e-3);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn group_norm(x: &Tensor, groups: usize, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let fast = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && weight.is_none_or(|w| w.dtype() == x.dtype()) && bias.is_none_or(|b| b.dtype() == x.dtype());
    if !fast {
        return composed(x, groups, weight, bias, eps);
    }
    let geo = Geom::new(x.dims(), groups)?;
    let ones;
    let zeros;
    let w = match weight {
        Some(w) => w.contiguous()?,
        None => {
            ones = Tensor::ones(geo.c, x.dtype(), x.device())?;
            ones
        }
    };
    let b = match bias {
        Some(b) => b.contiguous()?,
        None => {
            zeros = Tensor::zeros(geo.c, x.dtype(), x.device())?;
            zeros
        }
    };
    x.contiguous()?.apply_op3(&w, &b, GroupNormOp { groups, eps })
}

/// A GroupNorm layer (`torch.nn.GroupNorm(groups, channels, eps, affine)`): weight 1 and bias 0
/// at initialisation when affine.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    groups: usize,
    channels: usize,
    eps: f64,
    affine: Option<(Var, Var)>,
}

impl GroupNorm {
    /// `groups` must divide `channels`; `affine` adds the learned per-channel weight and bias.
    pub fn new(groups: usize, channels: usize, affine: bool, eps: f64, dtype: DType, dev: &candle_core::Device) -> Result<Self> {
        if groups == 0 || channels % groups != 0 {
            candle_core::bail!("group norm: {groups} groups do not divide {channels} channels");
        }
        let affine = if affine { Some((Var::ones(channels, dtype, dev)?, Var::zeros(channels, dtype, dev)?)) } else { None };
        Ok(Self { groups, channels, eps, affine })
    }

    /// The learned parameters (`weight`, `bias`), none without affine.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        match &self.affine {
            Some((w, b)) => vec![("weight".into(), w.clone()), ("bias".into(), b.clone())],
            None => Vec::new(),
        }
    }
}

impl candle_core::Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() < 2 || x.dim(1)? != self.channels {
            candle_core::bail!("group norm: expected {} channels, got input {:?}", self.channels, x.dims());
        }
        match &self.affine {
            Some((w, b)) => group_norm(x, self.groups, Some(w.as_tensor()), Some(b.as_tensor()), self.eps),
            None => group_norm(x, self.groups, None, None, self.eps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::max_abs_diff;
    use crate::rng::DeqRng;
    use candle_core::{Device, Module};

    const SHAPES: &[(&[usize], usize)] = &[(&[2, 6, 3, 5], 3), (&[3, 8, 4, 4], 8), (&[2, 4, 7], 1), (&[1, 6, 1, 1], 2), (&[4, 12, 5, 3], 4)];

    #[test]
    fn equals_the_composed_ops_with_the_same_gradients() {
        let mut rng = DeqRng::new(3);
        for &(dims, groups) in SHAPES {
            let c = dims[1];
            let x = Var::from_tensor(&rng.randn(dims.to_vec(), DType::F64, &Device::Cpu).unwrap().affine(2.0, 0.7).unwrap()).unwrap();
            let w = Var::from_tensor(&rng.randn(c, DType::F64, &Device::Cpu).unwrap()).unwrap();
            let b = Var::from_tensor(&rng.randn(c, DType::F64, &Device::Cpu).unwrap()).unwrap();
            let up = rng.randn(dims.to_vec(), DType::F64, &Device::Cpu).unwrap();
            for affine in [true, false] {
                let (wo, bo) = if affine { (Some(w.as_tensor()), Some(b.as_tensor())) } else { (None, None) };
                let ours = group_norm(x.as_tensor(), groups, wo, bo, 1e-5).unwrap();
                let theirs = composed(x.as_tensor(), groups, wo, bo, 1e-5).unwrap();
                assert!(max_abs_diff(&ours, &theirs).unwrap() < 1e-12, "{dims:?}");
                let ga = (&ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let gb = (&theirs * &up).unwrap().sum_all().unwrap().backward().unwrap();
                let vars: Vec<&Var> = if affine { vec![&x, &w, &b] } else { vec![&x] };
                for v in vars {
                    let d = max_abs_diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap()).unwrap();
                    assert!(d < 1e-10, "{dims:?} affine {affine}: {d}");
                }
                // f32 against f64.
                let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let y32 = match (wo, bo) {
                    (Some(w), Some(b)) => group_norm(&f32(x.as_tensor()), groups, Some(&f32(w)), Some(&f32(b)), 1e-5).unwrap(),
                    _ => group_norm(&f32(x.as_tensor()), groups, None, None, 1e-5).unwrap(),
                };
                assert!(max_abs_diff(&y32, &ours).unwrap() < 1e-4, "{dims:?}");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = DeqRng::new(9);
        let dims = [2usize, 6, 3, 2];
        let x0 = rng.randn(dims.to_vec(), DType::F64, &Device::Cpu).unwrap();
        let w0 = rng.randn(6, DType::F64, &Device::Cpu).unwrap();
        let b0 = rng.randn(6, DType::F64, &Device::Cpu).unwrap();
        let m = rng.randn(dims.to_vec(), DType::F64, &Device::Cpu).unwrap();
        let f = |x: &Tensor, w: &Tensor, b: &Tensor| (group_norm(x, 3, Some(w), Some(b), 1e-5).unwrap() * &m).unwrap().sum_all().unwrap();
        let (x, w, b) = (Var::from_tensor(&x0).unwrap(), Var::from_tensor(&w0).unwrap(), Var::from_tensor(&b0).unwrap());
        let g = f(x.as_tensor(), w.as_tensor(), b.as_tensor()).backward().unwrap();
        for (which, v) in [&x, &w, &b].into_iter().enumerate() {
            let grad: Vec<f64> = g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for i in (0..base.len()).step_by(5) {
                let at = |s: f64| {
                    let mut p = base.clone();
                    p[i] += s;
                    let t = Tensor::from_vec(p, v.as_tensor().dims(), &Device::Cpu).unwrap();
                    let (xx, ww, bb) = match which {
                        0 => (t, w0.clone(), b0.clone()),
                        1 => (x0.clone(), t, b0.clone()),
                        _ => (x0.clone(), w0.clone(), t),
                    };
                    f(&xx, &ww, &bb).to_scalar::<f64>().unwrap()
                };
                let h = 1e-6;
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!((fd - grad[i]).abs() < 1e-6 * (1.0 + fd.abs()), "input {which} index {i}: {fd} vs {}", grad[i]);
            }
        }
    }

    #[test]
    fn pruned_backward_leaves_out_unwanted_gradients() {
        let mut rng = DeqRng::new(1);
        // 3 channels per group (2 would make `2 * cg` and `2 + cg` alike)
        let x = rng.randn((2, 6, 3, 3), DType::F64, &Device::Cpu).unwrap();
        let w = rng.randn(6, DType::F64, &Device::Cpu).unwrap();
        let b = rng.randn(6, DType::F64, &Device::Cpu).unwrap();
        let y = group_norm(&x, 2, Some(&w), Some(&b), 1e-5).unwrap();
        let dy = rng.randn((2, 6, 3, 3), DType::F64, &Device::Cpu).unwrap();
        let op = GroupNormOp { groups: 2, eps: 1e-5 };
        let full = op.bwd(&x, &w, &b, &y, &dy).unwrap();
        let only_x = crate::grad::with_wanted(&[true, false, false], || op.bwd(&x, &w, &b, &y, &dy)).unwrap();
        assert!(only_x.1.is_none() && only_x.2.is_none());
        assert!(max_abs_diff(only_x.0.as_ref().unwrap(), full.0.as_ref().unwrap()).unwrap() == 0.0);
        let only_w = crate::grad::with_wanted(&[false, true, true], || op.bwd(&x, &w, &b, &y, &dy)).unwrap();
        assert!(only_w.0.is_none());
        assert!(max_abs_diff(only_w.1.as_ref().unwrap(), full.1.as_ref().unwrap()).unwrap() == 0.0);
        assert!(max_abs_diff(only_w.2.as_ref().unwrap(), full.2.as_ref().unwrap()).unwrap() == 0.0);
    }

    #[test]
    fn rows_with_a_large_mean_normalise_accurately() {
        // Two-pass statistics: E[x^2] - m^2 would lose the variance of 1 under a mean of 1e7.
        let mut rng = DeqRng::new(6);
        let x = rng.randn((2, 4, 5, 5), DType::F64, &Device::Cpu).unwrap().affine(1.0, 1e7).unwrap();
        let ours = group_norm(&x, 2, None, None, 1e-5).unwrap();
        let centred = (&x - 1e7).unwrap();
        let reference = composed(&centred, 2, None, None, 1e-5).unwrap();
        assert!(max_abs_diff(&ours, &reference).unwrap() < 1e-6, "{}", max_abs_diff(&ours, &reference).unwrap());
    }

    #[test]
    fn layer_and_errors() {
        let gn = GroupNorm::new(2, 4, true, 1e-5, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(gn.named_vars().len(), 2);
        assert!(gn.forward(&Tensor::zeros((1, 3, 2, 2), DType::F32, &Device::Cpu).unwrap()).is_err());
        assert!(GroupNorm::new(3, 4, true, 1e-5, DType::F32, &Device::Cpu).is_err());
        let x = Tensor::ones((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let y = gn.forward(&x).unwrap();
        assert!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.abs() < 1e-6), "a constant group normalises to 0");
        let w = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
        assert!(group_norm(&x, 2, Some(&w), None, 1e-5).is_err());
    }
}
