//! RAFT's correlation lookup as a custom op: for every source pixel, the `(2r + 1)^2` values of
//! its correlation map around a point, bilinearly interpolated.
//!
//! `corr` holds one map per source pixel, `(N, Hl, Wl)` with `N = B * H * W` (batch-major, then
//! row-major); `coords` `(B, 2, H, W)` holds the points in the finest level's pixels (`x` =
//! column, `y` = row). The op samples at `coords / scale + (dx, dy)` for `dx, dy` in `-r ..= r`,
//! pixel centres at integer coordinates (`align_corners = True`), each of the four neighbours
//! outside the map contributing zero (zero padding per tap, weights not renormalised), and
//! writes channel `(dx + r) * (2r + 1) + (dy + r)` of a `(B, (2r + 1)^2, H, W)` output: the `x`
//! offset is the outer index, as in RAFT.
//!
//! The offsets are whole pixels, so one pair of fractional weights serves the whole window:
//! the kernel reads a `(2r + 2)^2` window once per pixel. The backward pass gives both
//! gradients: to the maps (each pixel writes only its own map, so pixels run in parallel
//! without conflicts) and to the coordinates (the bilinear weights' derivatives, taken on the
//! right of integer points like PyTorch's `grid_sample`). Non-finite coordinates sample zeros
//! and receive zero gradient.
//!
//! CPU kernels for f32 and f64; other devices use [`lookup_composed`] (candle's gathers).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use deq_core::nn::KernelFloat;
use rayon::prelude::*;

use super::window::{coords_grad, point, sample_all, Geo, Win};

/// Reads the window of one map into `v` (zeros outside).
fn read_window<T: KernelFloat>(map: &[T], g: &Geo, win: &Win, v: &mut [f64]) {
    let n1 = g.n1();
    for a in 0..n1 {
        for c in 0..n1 {
            v[a * n1 + c] = g.inside(win, a, c).map_or(0.0, |i| map[i].to64());
        }
    }
}

fn forward<T: KernelFloat>(corr: &[T], coords: &[T], g: &Geo) -> Vec<T> {
    let plane = g.hl * g.wl;
    sample_all(g, coords, 64, |n, _, win, v| read_window(&corr[n * plane..][..plane], g, win, v))
}

/// The gradient of the maps: `(N, Hl, Wl)`.
fn grad_corr<T: KernelFloat>(coords: &[T], gy: &[T], g: &Geo) -> Vec<T> {
    let (hw, k, n1) = (g.hw(), g.k(), g.n1());
    let plane = g.hl * g.wl;
    let mut out = vec![T::default(); g.b * hw * plane];
    out.par_chunks_mut(plane).enumerate().for_each_init(
        || vec![0f64; n1 * n1],
        |gw, (n, dst)| {
            let (b, p) = (n / hw, n % hw);
            let Some(win) = g.window_at(&point(coords, g, b, p)) else { return };
            g.spread(&win, &|c| gy[(b * k + c) * hw + p].to64(), gw);
            for a in 0..n1 {
                for c in 0..n1 {
                    if let Some(i) = g.inside(&win, a, c) {
                        dst[i] = T::from64(gw[a * n1 + c]);
                    }
                }
            }
        },
    );
    out
}

/// The gradient of the coordinates: `(B, 2, H, W)`.
fn grad_coords<T: KernelFloat>(corr: &[T], coords: &[T], gy: &[T], g: &Geo) -> Vec<T> {
    let plane = g.hl * g.wl;
    coords_grad(g, coords, gy, |n, _, win, v| read_window(&corr[n * plane..][..plane], g, win, v))
}

fn slice<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("corr lookup: {what} must be contiguous"),
    }
}

struct Lookup(Geo);
struct GradCorr(Geo);
struct GradCoords(Geo);

impl CustomOp2 for Lookup {
    fn name(&self) -> &'static str {
        "deq-flow-corr-lookup"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let out = match (s1, s2) {
            (CpuStorage::F32(c), CpuStorage::F32(x)) => CpuStorage::F32(forward(slice(c, l1, "corr")?, slice(x, l2, "coords")?, g)),
            (CpuStorage::F64(c), CpuStorage::F64(x)) => CpuStorage::F64(forward(slice(c, l1, "corr")?, slice(x, l2, "coords")?, g)),
            _ => candle_core::bail!("corr lookup: f32 or f64, one dtype"),
        };
        Ok((out, Shape::from((g.b, g.k(), g.h, g.w))))
    }
    fn bwd(&self, corr: &Tensor, coords: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dc = corr.apply_op3_no_bwd(coords, &grad, &GradCorr(self.0))?;
        let dx = corr.apply_op3_no_bwd(coords, &grad, &GradCoords(self.0))?;
        Ok((Some(dc), Some(dx)))
    }
}

fn three<'a>(s1: &'a CpuStorage, l1: &Layout, s2: &'a CpuStorage, l2: &Layout, s3: &'a CpuStorage, l3: &Layout, f32f: impl FnOnce(&[f32], &[f32], &[f32]) -> Vec<f32>, f64f: impl FnOnce(&[f64], &[f64], &[f64]) -> Vec<f64>) -> Result<CpuStorage> {
    Ok(match (s1, s2, s3) {
        (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => CpuStorage::F32(f32f(slice(a, l1, "corr")?, slice(b, l2, "coords")?, slice(c, l3, "gradient")?)),
        (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => CpuStorage::F64(f64f(slice(a, l1, "corr")?, slice(b, l2, "coords")?, slice(c, l3, "gradient")?)),
        _ => candle_core::bail!("corr lookup backward: f32 or f64, one dtype"),
    })
}

impl CustomOp3 for GradCorr {
    fn name(&self) -> &'static str {
        "deq-flow-corr-lookup-grad-corr"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out = three(s1, l1, s2, l2, s3, l3, |_, x, gy| grad_corr(x, gy, &g), |_, x, gy| grad_corr(x, gy, &g))?;
        Ok((out, l1.shape().clone()))
    }
}

impl CustomOp3 for GradCoords {
    fn name(&self) -> &'static str {
        "deq-flow-corr-lookup-grad-coords"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out = three(s1, l1, s2, l2, s3, l3, |c, x, gy| grad_coords(c, x, gy, &g), |c, x, gy| grad_coords(c, x, gy, &g))?;
        Ok((out, l2.shape().clone()))
    }
}

fn geometry(corr: &Tensor, coords: &Tensor, radius: usize, scale: f64) -> Result<Geo> {
    let (n, hl, wl) = corr.dims3()?;
    let (b, two, h, w) = coords.dims4()?;
    if two != 2 || n != b * h * w || hl == 0 || wl == 0 {
        candle_core::bail!("corr lookup: maps {:?} do not fit coordinates {:?} (want (B*H*W, Hl, Wl) and (B, 2, H, W))", corr.dims(), coords.dims());
    }
    if !(scale.is_finite() && scale > 0.0) {
        candle_core::bail!("corr lookup: scale {scale} must be positive");
    }
    if corr.dtype() != coords.dtype() {
        candle_core::bail!("corr lookup: maps are {:?}, coordinates {:?}", corr.dtype(), coords.dtype());
    }
    Ok(Geo { b, h, w, hl, wl, r: radius, inv: 1.0 / scale })
}

/// Samples `corr` `(B*H*W, Hl, Wl)` around `coords / scale` `(B, 2, H, W)` in a
/// `(2 radius + 1)^2` window: `(B, (2 radius + 1)^2, H, W)`, differentiable in both inputs.
pub fn lookup(corr: &Tensor, coords: &Tensor, radius: usize, scale: f64) -> Result<Tensor> {
    let g = geometry(corr, coords, radius, scale)?;
    if corr.device().is_cpu() && matches!(corr.dtype(), DType::F32 | DType::F64) {
        corr.contiguous()?.apply_op2(&coords.contiguous()?, Lookup(g))
    } else {
        lookup_composed(corr, coords, radius, scale)
    }
}

/// The same lookup from candle's own ops (gathers of the four neighbours with zero padding):
/// the reference of the tests and the path on devices without a kernel. Gradients reach both
/// inputs through candle's autograd.
pub fn lookup_composed(corr: &Tensor, coords: &Tensor, radius: usize, scale: f64) -> Result<Tensor> {
    let g = geometry(corr, coords, radius, scale)?;
    let (side, hw, dev, dt) = (g.side(), g.hw(), corr.device(), corr.dtype());
    let r = radius as f64;
    // Sample points per (pixel, offset): (B, H*W, K) for x and y.
    let xs = (coords.narrow(1, 0, 1)?.reshape((g.b, hw, 1))? * g.inv)?;
    let ys = (coords.narrow(1, 1, 1)?.reshape((g.b, hw, 1))? * g.inv)?;
    let k = g.k();
    let dxs: Vec<f64> = (0..k).map(|c| (c / side) as f64 - r).collect();
    let dys: Vec<f64> = (0..k).map(|c| (c % side) as f64 - r).collect();
    let dx = Tensor::from_vec(dxs, (1, 1, k), dev)?.to_dtype(dt)?;
    let dy = Tensor::from_vec(dys, (1, 1, k), dev)?.to_dtype(dt)?;
    let sx = xs.broadcast_add(&dx)?;
    let sy = ys.broadcast_add(&dy)?;
    // candle's floor has no gradient: the integer corners come from detached copies, so the
    // fractional weights carry the coordinates' gradient.
    let (x0, y0) = (sx.detach().floor()?, sy.detach().floor()?);
    let (fx, fy) = ((&sx - &x0)?, (&sy - &y0)?);
    let maps = corr.reshape((g.b, hw, g.hl * g.wl))?;
    let mut out: Option<Tensor> = None;
    for (ox, oy) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)] {
        let xi = (&x0 + ox)?;
        let yi = (&y0 + oy)?;
        let wx = if ox == 0.0 { fx.affine(-1.0, 1.0)? } else { fx.clone() };
        let wy = if oy == 0.0 { fy.affine(-1.0, 1.0)? } else { fy.clone() };
        let inside = xi.ge(0.0)?.mul(&xi.le((g.wl - 1) as f64)?)?.mul(&yi.ge(0.0)?)?.mul(&yi.le((g.hl - 1) as f64)?)?.to_dtype(dt)?;
        let idx = (yi.clamp(0.0, (g.hl - 1) as f64)? * g.wl as f64)?.add(&xi.clamp(0.0, (g.wl - 1) as f64)?)?.to_dtype(DType::U32)?;
        let v = maps.gather(&idx, 2)?;
        let term = (v * wx)?.mul(&wy)?.mul(&inside)?;
        out = Some(match out {
            None => term,
            Some(o) => (o + term)?,
        });
    }
    let out = out.expect("four corners");
    // (B, H*W, K) -> (B, K, H, W).
    out.transpose(1, 2)?.reshape((g.b, k, g.h, g.w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deq_core::gradcheck::{assert_gradient, central_differences, max_abs_diff};
    use candle_core::{Device, Var};
    use deq_core::rng::DeqRng;

    /// Maps and coordinates with points inside, near the border and far outside.
    fn case(rng: &mut DeqRng, b: usize, h: usize, w: usize, hl: usize, wl: usize) -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        let corr = rng.randn((b * h * w, hl, wl), DType::F64, &dev).unwrap();
        let span = (hl.max(wl) * 3) as f64;
        let coords = rng.rand((b, 2, h, w), -span / 2.0, span, DType::F64, &dev).unwrap();
        (corr, coords)
    }

    #[test]
    fn channels_follow_rafts_order_x_offset_outer() {
        // A linear map v(y, x) = 100 y + x sampled at integer points gives exact values.
        let (hl, wl, r) = (12, 15, 2);
        let map: Vec<f64> = (0..hl * wl).map(|i| (100 * (i / wl) + i % wl) as f64).collect();
        let corr = Tensor::from_vec(map, (1, hl, wl), &Device::Cpu).unwrap();
        let coords = Tensor::from_vec(vec![7.0f64, 5.0], (1, 2, 1, 1), &Device::Cpu).unwrap();
        let out = lookup(&corr, &coords, r, 1.0).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (k, v) in out.iter().enumerate() {
            let (dx, dy) = ((k / 5) as f64 - 2.0, (k % 5) as f64 - 2.0);
            assert_eq!(*v, 100.0 * (5.0 + dy) + 7.0 + dx, "channel {k}");
        }
        // Level scaling: coordinates are divided by the scale; half-way points interpolate.
        let out = lookup(&corr, &(coords * 1.0).unwrap(), r, 2.0).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!((out[12] - (100.0 * 2.5 + 3.5)).abs() < 1e-12, "{}", out[12]);
    }

    #[test]
    fn forward_and_gradients_equal_the_composed_ops_f64() {
        let mut rng = DeqRng::new(5);
        for &(b, h, w, hl, wl, r, scale) in &[(2, 3, 4, 3, 4, 1, 1.0), (1, 5, 3, 5, 3, 2, 1.0), (2, 4, 4, 2, 2, 3, 2.0), (1, 6, 7, 1, 1, 1, 8.0)] {
            let (corr, coords) = case(&mut rng, b, h, w, hl, wl);
            let (cv, xv) = (Var::from_tensor(&corr).unwrap(), Var::from_tensor(&coords).unwrap());
            let ours = lookup(cv.as_tensor(), xv.as_tensor(), r, scale).unwrap();
            let theirs = lookup_composed(cv.as_tensor(), xv.as_tensor(), r, scale).unwrap();
            assert!(max_abs_diff(&ours, &theirs).unwrap() < 1e-12, "forward {:?}", (b, h, w, hl, wl, r));
            let up = rng.randn(ours.dims(), DType::F64, &Device::Cpu).unwrap();
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &up).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_abs_diff(g1.get(&cv).unwrap(), g2.get(&cv).unwrap()).unwrap() < 1e-12, "corr gradient");
            assert!(max_abs_diff(g1.get(&xv).unwrap(), g2.get(&xv).unwrap()).unwrap() < 1e-10, "coords gradient");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = DeqRng::new(8);
        let (corr, coords) = case(&mut rng, 2, 3, 3, 6, 5);
        // Keep points off integer positions, where the bilinear weights have kinks.
        let coords = (coords.floor().unwrap() + 0.37).unwrap();
        let up = rng.randn((2, 9, 3, 3), DType::F64, &Device::Cpu).unwrap();
        let loss = |c: &Tensor, x: &Tensor| lookup(c, x, 1, 1.5).unwrap().mul(&up).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let (cv, xv) = (Var::from_tensor(&corr).unwrap(), Var::from_tensor(&coords).unwrap());
        let g = lookup(cv.as_tensor(), xv.as_tensor(), 1, 1.5).unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
        assert_gradient("corr", g.get(&cv).unwrap(), &central_differences(&corr, 1e-6, 7, &|c| loss(c, &coords)).unwrap(), 1e-6);
        assert_gradient("coords", g.get(&xv).unwrap(), &central_differences(&coords, 1e-6, 1, &|x| loss(&corr, x)).unwrap(), 1e-6);
    }

    #[test]
    fn f32_matches_f64_and_bad_points_sample_zero() {
        let mut rng = DeqRng::new(2);
        let (corr, coords) = case(&mut rng, 2, 4, 5, 4, 5);
        let a = lookup(&corr, &coords, 2, 1.0).unwrap();
        let b = lookup(&corr.to_dtype(DType::F32).unwrap(), &coords.to_dtype(DType::F32).unwrap(), 2, 1.0).unwrap();
        assert_eq!(b.dtype(), DType::F32);
        assert!(max_abs_diff(&a, &b).unwrap() < 1e-4);
        // The f32 backward kernels against the f64 ones.
        let up = rng.randn(a.dims(), DType::F64, &Device::Cpu).unwrap();
        let grads = |dt: DType| {
            let (cv, xv) = (Var::from_tensor(&corr.to_dtype(dt).unwrap()).unwrap(), Var::from_tensor(&coords.to_dtype(dt).unwrap()).unwrap());
            let g = lookup(cv.as_tensor(), xv.as_tensor(), 2, 1.0).unwrap().mul(&up.to_dtype(dt).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            (g.get(&cv).unwrap().clone(), g.get(&xv).unwrap().clone())
        };
        let ((c64, x64), (c32, x32)) = (grads(DType::F64), grads(DType::F32));
        assert_eq!((c32.dtype(), x32.dtype()), (DType::F32, DType::F32));
        assert!(max_abs_diff(&c64, &c32).unwrap() < 1e-4 && max_abs_diff(&x64, &x32).unwrap() < 1e-3);
        // Half precision has no kernel: the composed ops serve it.
        let h = lookup(&corr.to_dtype(DType::F16).unwrap(), &coords.to_dtype(DType::F16).unwrap(), 2, 1.0).unwrap();
        assert_eq!(h.dtype(), DType::F16);
        assert!(max_abs_diff(&a, &h).unwrap() < 0.1);
        let mut v = coords.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        v[0] = f64::NAN;
        v[1] = f64::INFINITY;
        v[2] = 1e300;
        let bad = Tensor::from_vec(v, coords.shape(), &Device::Cpu).unwrap();
        let xv = Var::from_tensor(&bad).unwrap();
        let out = lookup(&corr, xv.as_tensor(), 2, 1.0).unwrap();
        let o = out.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert!(o.iter().all(|x| x.is_finite()));
        // Pixel 0 (NaN x) samples zeros in every channel.
        assert!((0..25).all(|k| o[k * 20] == 0.0));
        let g = out.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&xv).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().all(|x| x.is_finite()));
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = Device::Cpu;
        let corr = Tensor::zeros((6, 3, 3), DType::F32, &dev).unwrap();
        assert!(lookup(&corr, &Tensor::zeros((1, 2, 2, 2), DType::F32, &dev).unwrap(), 1, 1.0).is_err());
        assert!(lookup(&corr, &Tensor::zeros((1, 3, 2, 3), DType::F32, &dev).unwrap(), 1, 1.0).is_err());
        assert!(lookup(&corr, &Tensor::zeros((1, 2, 2, 3), DType::F64, &dev).unwrap(), 1, 1.0).is_err());
        assert!(lookup(&corr, &Tensor::zeros((1, 2, 2, 3), DType::F32, &dev).unwrap(), 1, 0.0).is_err());
        // Empty maps, with the point count right.
        for empty in [(6, 0, 3), (6, 3, 0)] {
            assert!(lookup(&Tensor::zeros(empty, DType::F32, &dev).unwrap(), &Tensor::zeros((1, 2, 2, 3), DType::F32, &dev).unwrap(), 1, 1.0).is_err());
        }
        assert!(lookup(&corr, &Tensor::zeros((1, 2, 2, 3), DType::F32, &dev).unwrap(), 1, 1.0).is_ok());
    }
}
