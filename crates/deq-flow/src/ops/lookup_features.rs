//! The correlation lookup without a stored volume (RAFT's `AlternateCorrBlock`): the window
//! values are dot products `<f1[p], f2[q]> / sqrt(D)` computed on the fly from the source
//! pixel's features and the (pooled) target features, then combined exactly as in
//! [`super::lookup`]. Memory is that of the features; the work is `(2r + 2)^2 D` per pixel and
//! level at every call (the volume costs `H W D` per pixel once).
//!
//! Features are channels-last here (`(B, H, W, D)`), so every dot product reads contiguous
//! rows; [`lookup_features`] takes the usual `(B, D, H, W)` maps and permutes them, and
//! [`channels_last`] lets a caller permute once for many lookups.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use deq_core::nn::KernelFloat;
use rayon::prelude::*;

use super::window::{coords_grad, point, sample_all, Geo, Win};

#[derive(Debug, Clone, Copy)]
struct FGeo {
    g: Geo,
    d: usize,
    /// `1 / sqrt(D)`.
    norm: f64,
}

/// The window's dot products of pixel `n` (zeros outside the target map).
fn dots<T: KernelFloat>(f1: &[T], f2: &[T], fg: &FGeo, b: usize, n: usize, win: &Win, v: &mut [f64]) {
    let (g, d) = (&fg.g, fg.d);
    let n1 = g.n1();
    let src = &f1[n * d..][..d];
    let plane = g.hl * g.wl;
    for a in 0..n1 {
        for c in 0..n1 {
            v[a * n1 + c] = match g.inside(win, a, c) {
                Some(q) => {
                    let dst = &f2[(b * plane + q) * d..][..d];
                    let mut acc = [0f64; 4];
                    let mut i = 0;
                    while i + 4 <= d {
                        for l in 0..4 {
                            acc[l] += src[i + l].to64() * dst[i + l].to64();
                        }
                        i += 4;
                    }
                    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
                    while i < d {
                        s += src[i].to64() * dst[i].to64();
                        i += 1;
                    }
                    s * fg.norm
                }
                None => 0.0,
            };
        }
    }
}

fn forward<T: KernelFloat>(f1: &[T], f2: &[T], coords: &[T], fg: &FGeo) -> Vec<T> {
    sample_all(&fg.g, coords, 16, |n, b, win, v| dots(f1, f2, fg, b, n, win, v))
}

/// The gradient of the source features `(B, H, W, D)`.
fn grad_f1<T: KernelFloat>(f2: &[T], coords: &[T], gy: &[T], fg: &FGeo) -> Vec<T> {
    let (g, d) = (&fg.g, fg.d);
    let (hw, k, n1) = (g.hw(), g.k(), g.n1());
    let plane = g.hl * g.wl;
    let mut out = vec![T::default(); g.b * hw * d];
    out.par_chunks_mut(d).enumerate().with_min_len(16).for_each_init(
        || (vec![0f64; n1 * n1], vec![0f64; d]),
        |(gw, acc), (n, dst)| {
            let (b, p) = (n / hw, n % hw);
            let Some(win) = g.window_at(&point(coords, g, b, p)) else { return };
            g.spread(&win, &|c| gy[(b * k + c) * hw + p].to64(), gw);
            acc.fill(0.0);
            for a in 0..n1 {
                for c in 0..n1 {
                    let w = gw[a * n1 + c] * fg.norm;
                    if let (Some(q), true) = (g.inside(&win, a, c), w != 0.0) {
                        for (s, &x) in acc.iter_mut().zip(&f2[(b * plane + q) * d..][..d]) {
                            *s += w * x.to64();
                        }
                    }
                }
            }
            for (o, &s) in dst.iter_mut().zip(acc.iter()) {
                *o = T::from64(s);
            }
        },
    );
    out
}

/// The gradient of the target features `(B, Hl, Wl, D)`: every source pixel adds into the
/// targets of its window, so threads sum into private copies that are added at the end.
fn grad_f2<T: KernelFloat>(f1: &[T], coords: &[T], gy: &[T], fg: &FGeo) -> Vec<T> {
    let (g, d) = (&fg.g, fg.d);
    let (hw, k, n1) = (g.hw(), g.k(), g.n1());
    let plane = g.hl * g.wl;
    let len = g.b * plane * d;
    let threads = rayon::current_num_threads().max(1);
    let chunk = (g.b * hw).div_ceil(threads).max(1);
    let parts: Vec<Vec<f64>> = (0..g.b * hw)
        .into_par_iter()
        .chunks(chunk)
        .map(|ns| {
            let mut acc = vec![0f64; len];
            let mut gw = vec![0f64; n1 * n1];
            for n in ns {
                let (b, p) = (n / hw, n % hw);
                let Some(win) = g.window_at(&point(coords, g, b, p)) else { continue };
                g.spread(&win, &|c| gy[(b * k + c) * hw + p].to64(), &mut gw);
                let src = &f1[n * d..][..d];
                for a in 0..n1 {
                    for c in 0..n1 {
                        let w = gw[a * n1 + c] * fg.norm;
                        if let (Some(q), true) = (g.inside(&win, a, c), w != 0.0) {
                            for (s, &x) in acc[(b * plane + q) * d..][..d].iter_mut().zip(src) {
                                *s += w * x.to64();
                            }
                        }
                    }
                }
            }
            acc
        })
        .collect();
    let mut out = vec![T::default(); len];
    out.par_chunks_mut(4096).enumerate().for_each(|(i, o)| {
        for (j, v) in o.iter_mut().enumerate() {
            *v = T::from64(parts.iter().map(|p| p[i * 4096 + j]).sum());
        }
    });
    out
}

/// The window dot products of every pixel `(B * H * W, (2r + 2)^2)` (for the coordinates'
/// gradient).
fn window_dots<T: KernelFloat>(f1: &[T], f2: &[T], coords: &[T], fg: &FGeo) -> Vec<T> {
    let g = &fg.g;
    let (hw, n1) = (g.hw(), g.n1());
    let mut out = vec![T::default(); g.b * hw * n1 * n1];
    out.par_chunks_mut(n1 * n1).enumerate().with_min_len(16).for_each_init(
        || vec![0f64; n1 * n1],
        |v, (n, o)| {
            let (b, p) = (n / hw, n % hw);
            let Some(win) = g.window_at(&point(coords, g, b, p)) else { return };
            dots(f1, f2, fg, b, n, &win, v);
            for (d, &s) in o.iter_mut().zip(v.iter()) {
                *d = T::from64(s);
            }
        },
    );
    out
}

/// The coordinates' gradient `(B, 2, H, W)` from the window dot products.
fn grad_coords<T: KernelFloat>(wd: &[T], coords: &[T], gy: &[T], g: &Geo) -> Vec<T> {
    let n1 = g.n1();
    coords_grad(g, coords, gy, |n, _, _, v| {
        for (x, s) in v.iter_mut().zip(&wd[n * n1 * n1..][..n1 * n1]) {
            *x = s.to64();
        }
    })
}

fn slice<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("feature lookup: {what} must be contiguous"),
    }
}

#[allow(clippy::type_complexity)]
fn run3(names: [&str; 3], s: [(&CpuStorage, &Layout); 3], f32f: &dyn Fn(&[f32], &[f32], &[f32]) -> Vec<f32>, f64f: &dyn Fn(&[f64], &[f64], &[f64]) -> Vec<f64>) -> Result<CpuStorage> {
    Ok(match (s[0].0, s[1].0, s[2].0) {
        (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => CpuStorage::F32(f32f(slice(a, s[0].1, names[0])?, slice(b, s[1].1, names[1])?, slice(c, s[2].1, names[2])?)),
        (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => CpuStorage::F64(f64f(slice(a, s[0].1, names[0])?, slice(b, s[1].1, names[1])?, slice(c, s[2].1, names[2])?)),
        _ => candle_core::bail!("feature lookup: f32 or f64, one dtype"),
    })
}

struct Fwd(FGeo);
struct GradF1(FGeo);
struct GradF2(FGeo);
struct Dots(FGeo);
struct GradCoords(Geo);

impl CustomOp3 for Fwd {
    fn name(&self) -> &'static str {
        "deq-flow-feature-lookup"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let fg = self.0;
        let out = run3(["fmap1", "fmap2", "coords"], [(s1, l1), (s2, l2), (s3, l3)], &|a, b, c| forward(a, b, c, &fg), &|a, b, c| forward(a, b, c, &fg))?;
        Ok((out, Shape::from((fg.g.b, fg.g.k(), fg.g.h, fg.g.w))))
    }
    fn bwd(&self, f1: &Tensor, f2: &Tensor, coords: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let g1 = f2.apply_op3_no_bwd(coords, &grad, &GradF1(self.0))?;
        let g2 = f1.apply_op3_no_bwd(coords, &grad, &GradF2(self.0))?;
        let wd = f1.apply_op3_no_bwd(f2, coords, &Dots(self.0))?;
        let gc = wd.apply_op3_no_bwd(coords, &grad, &GradCoords(self.0.g))?;
        Ok((Some(g1), Some(g2), Some(gc)))
    }
}

impl CustomOp3 for GradF1 {
    fn name(&self) -> &'static str {
        "deq-flow-feature-lookup-grad-f1"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let fg = self.0;
        let out = run3(["fmap2", "coords", "gradient"], [(s1, l1), (s2, l2), (s3, l3)], &|a, b, c| grad_f1(a, b, c, &fg), &|a, b, c| grad_f1(a, b, c, &fg))?;
        Ok((out, Shape::from((fg.g.b, fg.g.h, fg.g.w, fg.d))))
    }
}

impl CustomOp3 for GradF2 {
    fn name(&self) -> &'static str {
        "deq-flow-feature-lookup-grad-f2"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let fg = self.0;
        let out = run3(["fmap1", "coords", "gradient"], [(s1, l1), (s2, l2), (s3, l3)], &|a, b, c| grad_f2(a, b, c, &fg), &|a, b, c| grad_f2(a, b, c, &fg))?;
        Ok((out, Shape::from((fg.g.b, fg.g.hl, fg.g.wl, fg.d))))
    }
}

impl CustomOp3 for Dots {
    fn name(&self) -> &'static str {
        "deq-flow-feature-lookup-dots"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let fg = self.0;
        let out = run3(["fmap1", "fmap2", "coords"], [(s1, l1), (s2, l2), (s3, l3)], &|a, b, c| window_dots(a, b, c, &fg), &|a, b, c| window_dots(a, b, c, &fg))?;
        let n1 = fg.g.n1();
        Ok((out, Shape::from((fg.g.b * fg.g.hw(), n1 * n1))))
    }
}

impl CustomOp3 for GradCoords {
    fn name(&self) -> &'static str {
        "deq-flow-feature-lookup-grad-coords"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out = run3(["window", "coords", "gradient"], [(s1, l1), (s2, l2), (s3, l3)], &|a, b, c| grad_coords(a, b, c, &g), &|a, b, c| grad_coords(a, b, c, &g))?;
        Ok((out, l2.shape().clone()))
    }
}

/// `(B, D, H, W) -> (B, H, W, D)`, contiguous (differentiable).
pub fn channels_last(x: &Tensor) -> Result<Tensor> {
    x.permute((0, 2, 3, 1))?.contiguous()
}

/// The lookup of [`super::lookup`] on the correlation of channels-last features `f1` `(B, H,
/// W, D)` and `f2` `(B, Hl, Wl, D)` (scaled by `1 / sqrt(D)`), without the volume:
/// `(B, (2r + 1)^2, H, W)`, differentiable in all three inputs.
pub fn lookup_channels_last(f1: &Tensor, f2: &Tensor, coords: &Tensor, radius: usize, scale: f64) -> Result<Tensor> {
    let (b, h, w, d) = f1.dims4()?;
    let (b2, hl, wl, d2) = f2.dims4()?;
    if b2 != b || d2 != d || coords.dims4()? != (b, 2, h, w) || hl == 0 || wl == 0 || d == 0 {
        candle_core::bail!("feature lookup: features {:?}, {:?} and coordinates {:?} do not fit (want (B, H, W, D), (B, Hl, Wl, D), (B, 2, H, W))", f1.dims(), f2.dims(), coords.dims());
    }
    if !(scale.is_finite() && scale > 0.0) {
        candle_core::bail!("feature lookup: scale {scale} must be positive");
    }
    if f1.dtype() != f2.dtype() || f1.dtype() != coords.dtype() {
        candle_core::bail!("feature lookup: one dtype for features and coordinates");
    }
    let fg = FGeo { g: Geo { b, h, w, hl, wl, r: radius, inv: 1.0 / scale }, d, norm: 1.0 / (d as f64).sqrt() };
    if f1.device().is_cpu() && matches!(f1.dtype(), DType::F32 | DType::F64) {
        f1.contiguous()?.apply_op3(&f2.contiguous()?, &coords.contiguous()?, Fwd(fg))
    } else {
        // Other devices: the volume of this level, then the gather-based lookup.
        let a = f1.reshape((b, h * w, d))?;
        let c = f2.reshape((b, hl * wl, d))?.transpose(1, 2)?;
        let vol = (a.matmul(&c)? * fg.norm)?.reshape((b * h * w, hl, wl))?;
        super::lookup_composed(&vol, coords, radius, scale)
    }
}

/// [`lookup_channels_last`] on `(B, D, H, W)` feature maps.
pub fn lookup_features(fmap1: &Tensor, fmap2: &Tensor, coords: &Tensor, radius: usize, scale: f64) -> Result<Tensor> {
    lookup_channels_last(&channels_last(fmap1)?, &channels_last(fmap2)?, coords, radius, scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deq_core::gradcheck::{assert_gradient, central_differences, max_abs_diff};
    use candle_core::{Device, Var};
    use deq_core::rng::DeqRng;

    /// The volume of `f1` against `f2` (NCHW), as the stored-volume path builds it.
    fn volume(f1: &Tensor, f2: &Tensor) -> Tensor {
        let (b, d, h, w) = f1.dims4().unwrap();
        let (_, _, hl, wl) = f2.dims4().unwrap();
        let a = f1.reshape((b, d, h * w)).unwrap().transpose(1, 2).unwrap();
        let c = f2.reshape((b, d, hl * wl)).unwrap();
        (a.matmul(&c).unwrap() / (d as f64).sqrt()).unwrap().reshape((b * h * w, hl, wl)).unwrap()
    }

    #[test]
    fn equals_the_volume_lookup_in_values_and_gradients() {
        let mut rng = DeqRng::new(11);
        let dev = Device::Cpu;
        for &(b, d, h, w, hl, wl, r, scale) in &[(2, 5, 3, 4, 3, 4, 1, 1.0), (1, 9, 4, 3, 2, 1, 2, 2.0)] {
            let f1 = Var::from_tensor(&rng.randn((b, d, h, w), DType::F64, &dev).unwrap()).unwrap();
            let f2 = Var::from_tensor(&rng.randn((b, d, hl, wl), DType::F64, &dev).unwrap()).unwrap();
            let coords = (rng.rand((b, 2, h, w), -2.0, (hl.max(wl) * 2) as f64, DType::F64, &dev).unwrap().floor().unwrap() + 0.3).unwrap();
            let cv = Var::from_tensor(&coords).unwrap();
            let ours = lookup_features(f1.as_tensor(), f2.as_tensor(), cv.as_tensor(), r, scale).unwrap();
            let theirs = super::super::lookup(&volume(f1.as_tensor(), f2.as_tensor()), cv.as_tensor(), r, scale).unwrap();
            assert!(max_abs_diff(&ours, &theirs).unwrap() < 1e-12);
            let up = rng.randn(ours.dims(), DType::F64, &dev).unwrap();
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("f1", &f1), ("f2", &f2), ("coords", &cv)] {
                assert!(max_abs_diff(g1.get(v).unwrap(), g2.get(v).unwrap()).unwrap() < 1e-10, "{name}");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = DeqRng::new(4);
        let dev = Device::Cpu;
        let f1 = rng.randn((1, 3, 2, 3), DType::F64, &dev).unwrap();
        let f2 = rng.randn((1, 3, 4, 4), DType::F64, &dev).unwrap();
        let coords = (rng.rand((1, 2, 2, 3), -1.0, 4.0, DType::F64, &dev).unwrap().floor().unwrap() + 0.61).unwrap();
        let up = rng.randn((1, 9, 2, 3), DType::F64, &dev).unwrap();
        let loss = |a: &Tensor, b: &Tensor, c: &Tensor| lookup_features(a, b, c, 1, 1.0).unwrap().mul(&up).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let vars = [&f1, &f2, &coords].map(|t| Var::from_tensor(t).unwrap());
        let g = lookup_features(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), 1, 1.0).unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        assert_gradient("f1", g.get(&vars[0]).unwrap(), &central_differences(&f1, 1e-6, 1, &|x| loss(x, &f2, &coords)).unwrap(), 1e-6);
        assert_gradient("f2", g.get(&vars[1]).unwrap(), &central_differences(&f2, 1e-6, 1, &|x| loss(&f1, x, &coords)).unwrap(), 1e-6);
        assert_gradient("coords", g.get(&vars[2]).unwrap(), &central_differences(&coords, 1e-6, 1, &|x| loss(&f1, &f2, x)).unwrap(), 1e-6);
    }

    #[test]
    fn f32_matches_f64() {
        let mut rng = DeqRng::new(6);
        let dev = Device::Cpu;
        let f1 = rng.randn((2, 13, 3, 5), DType::F64, &dev).unwrap();
        let f2 = rng.randn((2, 13, 3, 5), DType::F64, &dev).unwrap();
        let coords = rng.rand((2, 2, 3, 5), -3.0, 8.0, DType::F64, &dev).unwrap();
        let a = lookup_features(&f1, &f2, &coords, 2, 1.0).unwrap();
        let t = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
        let b = lookup_features(&t(&f1), &t(&f2), &t(&coords), 2, 1.0).unwrap();
        assert!(max_abs_diff(&a, &b).unwrap() < 1e-4);
    }
}
