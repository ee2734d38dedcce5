//! Per-sample histories of vectors for the quasi-Newton solvers, and the fused residual.
//!
//! Anderson keeps the last `m` residuals and images, Broyden the `u_i` and `v_i` of its
//! low-rank inverse Jacobian. Both need the same two primitives on a batch of histories:
//! per-sample dot products of a new vector with every stored row, and per-sample linear
//! combinations of the stored rows. With the rows in a `(batch, m, width)` tensor these are
//! batched matrix products of tiny matrices, which candle runs as one small GEMM call per sample
//! (tens of microseconds per solver step at batch 64). [`Rows`] keeps CPU histories in plain
//! buffers and runs both primitives as single vectorised loops (f64 accumulation), and falls
//! back to tensor operations on other devices.

use candle_core::{DType, Device, Storage, Tensor};

/// Element types with a host fast path.
pub(crate) trait Real: candle_core::WithDType + Copy + Into<f64> + std::ops::Mul<Output = Self> + std::ops::Add<Output = Self> {
    fn of(v: f64) -> Self;
}
impl Real for f32 {
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
}
impl Real for f64 {
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
}

/// Runs `f` on the contiguous host data of `t` (None if `t` is not on the CPU as `T`).
pub(crate) fn host_slice<T: Real, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> candle_core::Result<Option<R>> {
    if t.dtype() != T::DTYPE || !t.device().is_cpu() {
        return Ok(None);
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { return Ok(None) };
    let Some((a, b)) = layout.contiguous_offsets() else { return Ok(None) };
    Ok(Some(f(&cpu.as_slice::<T>()?[a..b])))
}

/// Compiles `$body` (a call of an `#[inline(always)]` generic kernel) for AVX-512, AVX2+FMA
/// and baseline x86-64 and picks the widest the CPU supports at run time.
macro_rules! dispatch {
    ($name:ident < $t:ident > ( $($arg:ident : $ty:ty),* ) $body:block) => {
        fn $name<$t: Real>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
                unsafe fn wide<$t: Real>($($arg: $ty),*) $body
                #[target_feature(enable = "avx2,fma")]
                unsafe fn mid<$t: Real>($($arg: $ty),*) $body
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") && std::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: the features were detected at run time.
                    return unsafe { wide::<$t>($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were detected at run time.
                    return unsafe { mid::<$t>($($arg),*) };
                }
            }
            $body
        }
    };
}

#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> f64 {
    // Eight independent accumulators so the loop vectorises without reassociation.
    let mut acc = [0f64; 8];
    let n = a.len() / 8 * 8;
    for (ca, cb) in a[..n].chunks_exact(8).zip(b[..n].chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += ca[k].into() * cb[k].into();
        }
    }
    let mut s: f64 = acc.iter().sum();
    for k in n..a.len() {
        s += a[k].into() * b[k].into();
    }
    s
}

dispatch!(dots_kernel<T>(rows: &[T], x: &[T], out: &mut [f64], batch: usize, width: usize, slots: &[usize]) {
    let n = slots.len();
    for bi in 0..batch {
        let xb = &x[bi * width..(bi + 1) * width];
        for (j, &s) in slots.iter().enumerate() {
            let r = &rows[(s * batch + bi) * width..(s * batch + bi + 1) * width];
            out[bi * n + j] = dot(r, xb);
        }
    }
});

dispatch!(combine_kernel<T>(rows: &[T], coef: &[f64], out: &mut [T], batch: usize, width: usize, slots: &[usize]) {
    let n = slots.len();
    for bi in 0..batch {
        let o = &mut out[bi * width..(bi + 1) * width];
        o.iter_mut().for_each(|v| *v = T::of(0.0));
        for (j, &s) in slots.iter().enumerate() {
            let c = T::of(coef[bi * n + j]);
            let r = &rows[(s * batch + bi) * width..(s * batch + bi + 1) * width];
            for (ov, &rv) in o.iter_mut().zip(r) {
                *ov = *ov + c * rv;
            }
        }
    }
});

dispatch!(residual_kernel<T>(z: &[T], fz: &[T], out: &mut [f64], batch: usize, width: usize) {
    for bi in 0..batch {
        let zb = &z[bi * width..(bi + 1) * width];
        let fb = &fz[bi * width..(bi + 1) * width];
        let mut dd = [0f64; 8];
        let mut ff = [0f64; 8];
        let n = width / 8 * 8;
        for (cz, cf) in zb[..n].chunks_exact(8).zip(fb[..n].chunks_exact(8)) {
            for k in 0..8 {
                let f: f64 = cf[k].into();
                let e = f - cz[k].into();
                dd[k] += e * e;
                ff[k] += f * f;
            }
        }
        let (mut d2, mut f2): (f64, f64) = (dd.iter().sum(), ff.iter().sum());
        for k in n..width {
            let f: f64 = fb[k].into();
            let e = f - zb[k].into();
            d2 += e * e;
            f2 += f * f;
        }
        out[2 * bi] = d2;
        out[2 * bi + 1] = f2;
    }
});

/// Per-sample `(||fz - z||^2, ||fz||^2)` of two `(batch, width)` tensors, fused on the CPU.
pub(crate) fn sq_norms(z: &Tensor, fz: &Tensor) -> candle_core::Result<Vec<f64>> {
    let (b, d) = z.dims2()?;
    fn host<T: Real>(z: &Tensor, fz: &Tensor, b: usize, d: usize) -> candle_core::Result<Option<Vec<f64>>> {
        let fz = fz.contiguous()?;
        let r = host_slice::<T, _>(z, |zs| {
            host_slice::<T, _>(&fz, |fs| {
                let mut out = vec![0f64; 2 * b];
                residual_kernel(zs, fs, &mut out, b, d);
                out
            })
        })?;
        r.transpose().map(|o| o.flatten())
    }
    let fast = match z.dtype() {
        DType::F32 => host::<f32>(z, fz, b, d)?,
        DType::F64 => host::<f64>(z, fz, b, d)?,
        _ => None,
    };
    if let Some(v) = fast {
        return Ok(v);
    }
    let both = Tensor::stack(&[(fz - z)?.sqr()?.sum(1)?, fz.sqr()?.sum(1)?], 1)?;
    both.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

enum Store {
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// `(batch, cap, width)` on a non-CPU device (or a dtype without a host path).
    Device(Tensor),
}

/// A ring of `cap` rows per sample: `rows[slot]` is a `(batch, width)` matrix.
pub(crate) struct Rows {
    store: Store,
    batch: usize,
    width: usize,
    cap: usize,
    dtype: DType,
    device: Device,
}

impl Rows {
    /// An all-zero store shaped for states like `like` (`(batch, width)`).
    pub(crate) fn new(like: &Tensor, cap: usize) -> candle_core::Result<Self> {
        let (batch, width) = like.dims2()?;
        let n = cap * batch * width;
        let store = match (like.device().is_cpu(), like.dtype()) {
            (true, DType::F32) => Store::F32(vec![0.0; n]),
            (true, DType::F64) => Store::F64(vec![0.0; n]),
            _ => Store::Device(Tensor::zeros((batch, cap, width), like.dtype(), like.device())?),
        };
        Ok(Self { store, batch, width, cap, dtype: like.dtype(), device: like.device().clone() })
    }

    /// Number of slots.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Overwrites row `slot` with `x` (`(batch, width)`).
    pub(crate) fn set(&mut self, slot: usize, x: &Tensor) -> candle_core::Result<()> {
        let (bw, off) = (self.batch * self.width, slot * self.batch * self.width);
        match &mut self.store {
            Store::F32(v) => {
                host_slice::<f32, _>(x, |s| v[off..off + bw].copy_from_slice(s))?.ok_or_else(|| wrong(x))?;
            }
            Store::F64(v) => {
                host_slice::<f64, _>(x, |s| v[off..off + bw].copy_from_slice(s))?.ok_or_else(|| wrong(x))?;
            }
            Store::Device(t) => t.slice_set(&x.unsqueeze(1)?.contiguous()?, 1, slot)?,
        }
        Ok(())
    }

    /// `out[b * n + j] = <rows[slots[j]][b], x[b]>` for every sample `b`.
    pub(crate) fn dots(&self, x: &Tensor, slots: &[usize]) -> candle_core::Result<Vec<f64>> {
        let (b, w) = (self.batch, self.width);
        let mut out = vec![0f64; b * slots.len()];
        match &self.store {
            Store::F32(v) => host_slice::<f32, _>(x, |s| dots_kernel(v, s, &mut out, b, w, slots))?.ok_or_else(|| wrong(x))?,
            Store::F64(v) => host_slice::<f64, _>(x, |s| dots_kernel(v, s, &mut out, b, w, slots))?.ok_or_else(|| wrong(x))?,
            Store::Device(t) => {
                let r = self.gather(t, slots)?;
                out = x.unsqueeze(1)?.matmul(&r.t()?)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            }
        }
        Ok(out)
    }

    /// `sum_j coef[b * n + j] rows[slots[j]][b]` for every sample `b`, as a `(batch, width)` tensor.
    pub(crate) fn combine(&self, coef: &[f64], slots: &[usize]) -> candle_core::Result<Tensor> {
        let (b, w) = (self.batch, self.width);
        match &self.store {
            Store::F32(v) => {
                let mut out = vec![0f32; b * w];
                combine_kernel(v, coef, &mut out, b, w, slots);
                Tensor::from_vec(out, (b, w), &self.device)
            }
            Store::F64(v) => {
                let mut out = vec![0f64; b * w];
                combine_kernel(v, coef, &mut out, b, w, slots);
                Tensor::from_vec(out, (b, w), &self.device)
            }
            Store::Device(t) => {
                let r = self.gather(t, slots)?;
                let c = Tensor::from_vec(coef.to_vec(), (b, 1, slots.len()), &self.device)?.to_dtype(self.dtype)?;
                c.matmul(&r)?.squeeze(1)
            }
        }
    }

    fn gather(&self, t: &Tensor, slots: &[usize]) -> candle_core::Result<Tensor> {
        let contiguous_prefix = slots.iter().enumerate().all(|(i, &s)| i == s);
        if contiguous_prefix {
            t.narrow(1, 0, slots.len())?.contiguous()
        } else {
            let idx: Vec<u32> = slots.iter().map(|&s| s as u32).collect();
            t.index_select(&Tensor::new(idx.as_slice(), &self.device)?, 1)
        }
    }
}

fn wrong(x: &Tensor) -> candle_core::Error {
    candle_core::Error::Msg(format!("solver history: state of dtype {:?} on {:?} does not match the history", x.dtype(), x.device()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_device_paths_agree() -> candle_core::Result<()> {
        let mut rng = crate::rng::DeqRng::new(3);
        let (b, w, cap) = (3, 21, 4);
        let x = rng.randn((b, w), DType::F64, &Device::Cpu)?;
        let rows: Vec<Tensor> = (0..cap).map(|_| rng.randn((b, w), DType::F64, &Device::Cpu)).collect::<candle_core::Result<_>>()?;
        let mut host = Rows::new(&x, cap)?;
        let mut dev = Rows { store: Store::Device(Tensor::zeros((b, cap, w), DType::F64, &Device::Cpu)?), ..Rows::new(&x, cap)? };
        for (i, r) in rows.iter().enumerate() {
            host.set(i, r)?;
            dev.set(i, r)?;
        }
        for slots in [vec![0, 1, 2], vec![3, 0, 2, 1]] {
            let (a, c) = (host.dots(&x, &slots)?, dev.dots(&x, &slots)?);
            for (p, q) in a.iter().zip(&c) {
                assert!((p - q).abs() < 1e-12, "{p} {q}");
            }
            // combine(coef) row b = sum_j coef[b, j] rows[slots[j]][b], checked by hand.
            let ch = host.combine(&a, &slots)?;
            let cd = dev.combine(&a, &slots)?;
            assert!((&ch - &cd)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
            let mut hand = Tensor::zeros((b, w), DType::F64, &Device::Cpu)?;
            for (j, &s) in slots.iter().enumerate() {
                let c: Vec<f64> = (0..b).map(|bi| a[bi * slots.len() + j]).collect();
                hand = (hand + rows[s].broadcast_mul(&Tensor::from_vec(c, (b, 1), &Device::Cpu)?)?)?;
            }
            assert!((&ch - &hand)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
        }
        let fz = rng.randn((b, w), DType::F32, &Device::Cpu)?;
        let z = rng.randn((b, w), DType::F32, &Device::Cpu)?;
        let fused = sq_norms(&z, &fz)?;
        let want = Tensor::stack(&[(&fz - &z)?.sqr()?.sum(1)?, fz.sqr()?.sum(1)?], 1)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        for (p, q) in fused.iter().zip(&want) {
            assert!((p - q).abs() < 1e-5 * q.abs().max(1.0), "{p} {q}");
        }
        Ok(())
    }
}
