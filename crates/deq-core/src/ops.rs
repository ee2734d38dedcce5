//! Vectorised element-wise kernels for the hot paths of DEQ functions.
//!
//! candle's CPU `tanh` and `sin` are scalar loops (about 10 ns per element), which dominate a
//! DEQ iteration of width 256. [`tanh`] and [`sin`] are custom ops with branch-free kernels that
//! the compiler vectorises (AVX2/FMA or AVX-512 when the CPU has them, picked at run time),
//! accurate to a few ulp in f32, and exact (`f64::tanh`, `f64::sin`) in f64. Backward passes are
//! `grad * (1 - tanh^2)` and `grad * cos(x)` (cos by the same kernel), each one fused pass.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    // Small |x|: odd Taylor polynomial (error < 2e-9 relative for |x| < 0.3).
    let x2 = x * x;
    let p = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))));
    // Otherwise 1 - 2 / (exp(2|x|) + 1), |x| clamped at 9 (tanh(9) rounds to 1 in f32).
    let a = x.abs().min(9.0);
    let y = 2.0 * a;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: round to nearest
    let t = y * LOG2E + MAGIC;
    let kf = t - MAGIC;
    // k = round(y log2 e) sits in the low mantissa bits of `t` (0 <= k <= 26): integer bit
    // arithmetic, which vectorises (a saturating `as i32` cast does not).
    let k = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let r = (y - kf * LN2_HI) - kf * LN2_LO;
    let e = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits((k + 127) << 23);
    let big = 1.0 - 2.0 / (e * scale + 1.0);
    let big = if x < 0.0 { -big } else { big };
    // NaN fails both comparisons and propagates.
    let r = if a < 0.3 { p } else { big };
    if x.abs() >= 0.0 {
        r
    } else {
        x
    }
}

fn tanh_slice_generic(src: &[f32], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = tanh_f32(s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_slice_avx2(src: &[f32], dst: &mut [f32]) {
    tanh_slice_generic(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
unsafe fn tanh_slice_avx512(src: &[f32], dst: &mut [f32]) {
    tanh_slice_generic(src, dst)
}

/// `tanh` of a slice of f32, dispatched to the widest vector unit available.
pub fn tanh_slice(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "tanh_slice lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") && std::is_x86_feature_detected!("avx512vl") {
            // SAFETY: the features were detected at run time.
            return unsafe { tanh_slice_avx512(src, dst) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            return unsafe { tanh_slice_avx2(src, dst) };
        }
    }
    tanh_slice_generic(src, dst)
}

/// The elements of a CPU f32 tensor in logical order (None for other devices and dtypes).
fn host_f32(t: &Tensor) -> Result<Option<Vec<f32>>> {
    if !t.device().is_cpu() || t.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    Ok(Some(t.flatten_all()?.to_vec1::<f32>()?))
}

struct FastTanh;

impl CustomOp1 for FastTanh {
    fn name(&self) -> &'static str {
        "deq-fast-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("fast tanh expects a contiguous input".into()))?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(map_chunks(&v[a..b], tanh_slice)),
            CpuStorage::F64(v) => CpuStorage::F64(v[a..b].iter().map(|x| x.tanh()).collect()),
            _ => candle_core::bail!("fast tanh supports f32 and f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d tanh = 1 - tanh^2, from the saved result; one fused pass on the CPU in f32 (this
        // runs once per adjoint iteration of implicit differentiation).
        if let (Some(g), Some(y)) = (host_f32(grad)?, host_f32(res)?) {
            let out: Vec<f32> = g.iter().zip(&y).map(|(g, y)| g * (1.0 - y * y)).collect();
            return Ok(Some(Tensor::from_vec(out, res.shape(), res.device())?));
        }
        Ok(Some(grad.mul(&res.sqr()?.affine(-1.0, 1.0)?)?))
    }
}

/// `sin(x)` (`cos = false`) or `cos(x)` for f32 `x`, branch-free: reduction by multiples of
/// pi/2 in f64 (two-part pi/2, exact for |x| < 2^20), then fdlibm's kernel polynomials on
/// [-pi/4, pi/4] truncated for f32 accuracy. NaN and infinities give NaN.
#[inline(always)]
fn sincos_f32(x: f32, cos: bool) -> f32 {
    const FRAC_2_PI: f64 = std::f64::consts::FRAC_2_PI;
    const PIO2_HI: f64 = 1.570_796_326_734_125_6;
    const PIO2_LO: f64 = 6.077_100_506_506_192e-11;
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: round to nearest
    let xd = x as f64;
    let t = xd * FRAC_2_PI + MAGIC;
    let kf = t - MAGIC;
    // k mod 4 from the low mantissa bits (two's complement, so negative k works too).
    let q = t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(cos as u64);
    let r = (xd - kf * PIO2_HI) - kf * PIO2_LO;
    let z = r * r;
    let s = r + r * z * (-1.666_666_666_666_663_2e-1 + z * (8.333_333_333_322_49e-3 + z * (-1.984_126_982_985_795e-4 + z * 2.755_731_370_707_006_8e-6)));
    let c = 1.0 - 0.5 * z + z * z * (4.166_666_666_666_660_2e-2 + z * (-1.388_888_888_887_411e-3 + z * (2.480_158_728_947_673e-5 + z * -2.755_731_435_139_066_3e-7)));
    let v = if q & 1 == 0 { s } else { c };
    let v = if q & 2 == 0 { v } else { -v };
    v as f32
}

fn sincos_slice_generic(src: &[f32], dst: &mut [f32], cos: bool) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = sincos_f32(s, cos);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sincos_slice_avx2(src: &[f32], dst: &mut [f32], cos: bool) {
    sincos_slice_generic(src, dst, cos)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
unsafe fn sincos_slice_avx512(src: &[f32], dst: &mut [f32], cos: bool) {
    sincos_slice_generic(src, dst, cos)
}

/// `sin` (or `cos` with `cos = true`) of a slice of f32, dispatched to the widest vector unit.
pub fn sincos_slice(src: &[f32], dst: &mut [f32], cos: bool) {
    assert_eq!(src.len(), dst.len(), "sincos_slice lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") && std::is_x86_feature_detected!("avx512vl") {
            // SAFETY: the features were detected at run time.
            return unsafe { sincos_slice_avx512(src, dst, cos) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected at run time.
            return unsafe { sincos_slice_avx2(src, dst, cos) };
        }
    }
    sincos_slice_generic(src, dst, cos)
}

/// Applies `kernel` to `src` in parallel chunks (threads only for large inputs).
fn map_chunks(src: &[f32], kernel: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    const CHUNK: usize = 1 << 16;
    if src.len() > 2 * CHUNK {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).max(1);
        let per = src.len().div_ceil(threads).div_ceil(1024) * 1024;
        std::thread::scope(|sc| {
            for (sch, dch) in src.chunks(per).zip(dst.chunks_mut(per)) {
                let k = &kernel;
                sc.spawn(move || k(sch, dch));
            }
        });
    } else {
        kernel(src, &mut dst);
    }
    dst
}

struct FastSin;

impl CustomOp1 for FastSin {
    fn name(&self) -> &'static str {
        "deq-fast-sin"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("fast sin expects a contiguous input".into()))?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(map_chunks(&v[a..b], |s, d| sincos_slice(s, d, false))),
            CpuStorage::F64(v) => CpuStorage::F64(v[a..b].iter().map(|x| x.sin()).collect()),
            _ => candle_core::bail!("fast sin supports f32 and f64"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if let (Some(g), Some(x)) = (host_f32(grad)?, host_f32(arg)?) {
            let mut c = map_chunks(&x, |s, d| sincos_slice(s, d, true));
            c.iter_mut().zip(&g).for_each(|(c, g)| *c *= g);
            return Ok(Some(Tensor::from_vec(c, arg.shape(), arg.device())?));
        }
        Ok(Some(grad.mul(&arg.cos()?)?))
    }
}

/// Blocked transpose of the last two dimensions of a `(batch, rows, cols)` buffer.
fn transpose_blocks<T: Copy>(src: &[T], dst: &mut [T], batch: usize, rows: usize, cols: usize) {
    const B: usize = 32;
    for bi in 0..batch {
        let (s, d) = (&src[bi * rows * cols..(bi + 1) * rows * cols], &mut dst[bi * rows * cols..(bi + 1) * rows * cols]);
        for r0 in (0..rows).step_by(B) {
            for c0 in (0..cols).step_by(B) {
                for r in r0..(r0 + B).min(rows) {
                    for c in c0..(c0 + B).min(cols) {
                        d[c * rows + r] = s[r * cols + c];
                    }
                }
            }
        }
    }
}

struct TransposeLast2;

impl CustomOp1 for TransposeLast2 {
    fn name(&self) -> &'static str {
        "deq-transpose-last2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("transpose expects a contiguous input".into()))?;
        let dims = l.dims();
        let (rows, cols) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let batch = dims[..dims.len() - 2].iter().product::<usize>();
        let mut out_dims = dims.to_vec();
        out_dims.swap(dims.len() - 2, dims.len() - 1);
        let out = match s {
            CpuStorage::F32(v) => {
                let mut d = vec![0f32; b - a];
                transpose_blocks(&v[a..b], &mut d, batch, rows, cols);
                CpuStorage::F32(d)
            }
            CpuStorage::F64(v) => {
                let mut d = vec![0f64; b - a];
                transpose_blocks(&v[a..b], &mut d, batch, rows, cols);
                CpuStorage::F64(d)
            }
            _ => candle_core::bail!("fast transpose supports f32 and f64"),
        };
        Ok((out, Shape::from(out_dims)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(transpose_last2(grad)?))
    }
}

/// `x.t().contiguous()` (swap the last two dimensions and materialise), with a cache-blocked
/// kernel on the CPU: candle copies a transposed view one strided element at a time (about
/// 55 us for a 256 x 256 matrix; this takes a fraction of that). Differentiable.
pub fn transpose_last2(x: &Tensor) -> Result<Tensor> {
    if x.rank() < 2 || !x.device().is_cpu() || !matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        return x.t()?.contiguous();
    }
    x.contiguous()?.apply_op1(TransposeLast2)
}

/// Element-wise `tanh`: the vectorised kernel on CPU, candle's `tanh` elsewhere.
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        return x.tanh();
    }
    x.contiguous()?.apply_op1(FastTanh)
}

/// Element-wise `sin`: the vectorised kernel on CPU (f32; exact `f64::sin` in f64), candle's
/// `sin` elsewhere. Differentiable (its backward is itself differentiable through candle's
/// `cos`/`sin` on non-f32 paths only: second derivatives of the f32 kernel are not provided).
pub fn sin(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64) {
        return x.sin();
    }
    x.contiguous()?.apply_op1(FastSin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn fast_tanh_is_accurate_in_f32() {
        let xs: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 1e-4).chain([1e-30, -1e-30, 0.0, 50.0, -50.0, 1e4]).collect();
        let mut out = vec![0f32; xs.len()];
        tanh_slice(&xs, &mut out);
        let mut worst = 0f64;
        for (x, y) in xs.iter().zip(&out) {
            let t = (*x as f64).tanh();
            let err = ((*y as f64) - t).abs() / t.abs().max(1e-30);
            worst = worst.max(if t == 0.0 { (*y as f64).abs() } else { err });
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    #[test]
    fn fast_sin_and_cos_are_accurate_in_f32() {
        let xs: Vec<f32> = (-400_000..=400_000).map(|i| i as f32 * 1e-4).chain((0..20_000).map(|i| (i as f32 - 1e4) * 2.345)).chain([1e-30, -1e-30, 0.0, 17_677.67, -25_000.0]).collect();
        for cos in [false, true] {
            let mut out = vec![0f32; xs.len()];
            sincos_slice(&xs, &mut out, cos);
            let mut worst = 0f64;
            for (x, y) in xs.iter().zip(&out) {
                let t = if cos { (*x as f64).cos() } else { (*x as f64).sin() };
                worst = worst.max(((*y as f64) - t).abs());
            }
            // Absolute error: a few f32 ulp of values in [-1, 1].
            assert!(worst < 2e-7, "cos={cos}: worst absolute error {worst}");
        }
        assert!(sincos_f32(f32::NAN, false).is_nan() && sincos_f32(f32::INFINITY, true).is_nan());
    }

    #[test]
    fn fast_sin_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        // f64: exact sin; the backward is cos by the f64 path.
        let x = Var::from_tensor(&Tensor::new(&[-7.0f64, -0.5, 0.0, 0.1, 2.7, 300.0], &dev)?)?;
        let c = Tensor::new(&[1.0f64, -2.0, 0.5, 3.0, 1.5, -1.0], &dev)?;
        let g = (sin(x.as_tensor())? * &c)?.sum_all()?.backward()?;
        let g = g.get(x.as_tensor()).unwrap().to_vec1::<f64>()?;
        let (xv, cv) = (x.as_tensor().to_vec1::<f64>()?, c.to_vec1::<f64>()?);
        for i in 0..6 {
            let h = 1e-6;
            let fd = cv[i] * (((xv[i] + h).sin() - (xv[i] - h).sin()) / (2.0 * h));
            assert!((g[i] - fd).abs() < 1e-8, "{i}: {} vs {fd}", g[i]);
        }
        // f32: the fused cos kernel in the backward against cos in f64.
        let big: Vec<f32> = (0..300_000).map(|i| (i as f32 - 150_000.0) * 0.003).collect();
        let x32 = Var::from_tensor(&Tensor::from_vec(big.clone(), big.len(), &dev)?)?;
        let g = sin(x32.as_tensor())?.sum_all()?.backward()?;
        let g = g.get(x32.as_tensor()).unwrap().to_vec1::<f32>()?;
        let worst = big.iter().zip(&g).map(|(x, g)| ((*g as f64) - (*x as f64).cos()).abs()).fold(0.0, f64::max);
        assert!(worst < 2e-7, "{worst}");
        Ok(())
    }

    #[test]
    fn fast_transpose_matches_candle_and_differentiates() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::arange(0f64, 2.0 * 37.0 * 45.0, &dev)?.reshape((2, 37, 45))?)?;
        let y = transpose_last2(x.as_tensor())?;
        let want = x.as_tensor().t()?.contiguous()?;
        assert_eq!(y.dims(), &[2, 45, 37]);
        assert_eq!(y.flatten_all()?.to_vec1::<f64>()?, want.flatten_all()?.to_vec1::<f64>()?);
        let c = Tensor::arange(0f64, 2.0 * 45.0 * 37.0, &dev)?.reshape((2, 45, 37))?;
        let g = (y * &c)?.sum_all()?.backward()?;
        let gx = g.get(x.as_tensor()).unwrap();
        assert_eq!(gx.flatten_all()?.to_vec1::<f64>()?, c.t()?.contiguous()?.flatten_all()?.to_vec1::<f64>()?);
        Ok(())
    }

    #[test]
    fn fast_tanh_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[-2.0f64, -0.5, 0.0, 0.1, 0.7, 3.0], &dev)?)?;
        let c = Tensor::new(&[1.0f64, -2.0, 0.5, 3.0, 1.5, -1.0], &dev)?;
        let g = (tanh(x.as_tensor())? * &c)?.sum_all()?.backward()?;
        let g = g.get(x.as_tensor()).unwrap().to_vec1::<f64>()?;
        let xv = x.as_tensor().to_vec1::<f64>()?;
        let cv = c.to_vec1::<f64>()?;
        for i in 0..6 {
            let h = 1e-6;
            let fd = cv[i] * (((xv[i] + h).tanh() - (xv[i] - h).tanh()) / (2.0 * h));
            assert!((g[i] - fd).abs() < 1e-8, "{i}: {} vs {fd}", g[i]);
        }
        let y = tanh(&Tensor::new(&[0.5f32], &dev)?.to_dtype(DType::F32)?)?;
        assert!((y.to_vec1::<f32>()?[0] - 0.5f32.tanh()).abs() < 1e-7);
        Ok(())
    }

    /// Every f32 fast path (vectorised forward, fused backward) against the f64 path on the
    /// same (f32-representable) inputs, with random upstream gradients, at sizes that cover the
    /// vector bodies, their tails and the multi-threaded chunks.
    #[test]
    fn f32_fast_paths_match_f64_with_random_upstream_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::DeqRng::new(7);
        let ops: [(&str, fn(&Tensor) -> Result<Tensor>); 2] = [("tanh", tanh), ("sin", sin)];
        for n in [1usize, 7, 33, 4099, 100_003] {
            let x32 = (rng.randn(n, DType::F32, &dev)? * 3.0)?;
            let c32 = rng.randn(n, DType::F32, &dev)?;
            for (name, op) in ops {
                let run = |dt: DType| -> Result<(Vec<f64>, Vec<f64>)> {
                    let x = Var::from_tensor(&x32.to_dtype(dt)?)?;
                    let y = op(x.as_tensor())?;
                    let g = (&y * c32.to_dtype(dt)?)?.sum_all()?.backward()?;
                    let gx = g.get(x.as_tensor()).expect("x has a gradient");
                    Ok((y.to_dtype(DType::F64)?.to_vec1()?, gx.to_dtype(DType::F64)?.to_vec1()?))
                };
                let ((y32, g32), (y64, g64)) = (run(DType::F32)?, run(DType::F64)?);
                let worst = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                let (ey, eg) = (worst(&y32, &y64), worst(&g32, &g64));
                assert!(ey < 1e-6, "{name} n={n}: forward error {ey}");
                // |c| reaches ~5: a few f32 ulp of the product.
                assert!(eg < 5e-6, "{name} n={n}: backward error {eg}");
            }
        }
        Ok(())
    }

}
