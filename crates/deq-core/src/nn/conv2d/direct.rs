//! Direct f32 convolution for few input channels per group (AVX2 + FMA).
//!
//! With 16 or 32 channels, an unfolded product does little work per unfolded value (one
//! multiply-add per output channel), so writing the unfolding and packing it again for the
//! product costs as much as the arithmetic. Here the output of one image is computed on the
//! padded width (the positions `q = y * wp + x` of a flat plane, as in [`super::wide`]) in
//! register blocks of [`OB`] output channels by [`QB`] vectors of 8 positions: for every input
//! channel and tap the block loads `QB` shifted vectors of the zero-padded planes and multiplies
//! them by `OB` broadcast weights, accumulating in registers; nothing is unfolded. The padded
//! planes of an image (a few KiB for MNIST-sized inputs) stay in the L1 cache while every block
//! of output channels reads them.
//!
//! A stride `s` above 1 splits each padded plane into its `s * s` phases (rows `a, a + s, ...`
//! and columns `b, b + s, ...`): the convolution is then a stride-1 convolution over the phase
//! planes, tap `(i, j)` reading phase `(d i mod s, d j mod s)` at the shift `(d i / s, d j / s)`.
//!
//! Used for the forward pass (and through it for input gradients taken as forward
//! convolutions) of f32 convolutions with at most [`MAX_OG`] output channels per group on CPUs
//! with AVX2 and FMA when the batch has at least one image per thread; everything else goes to
//! the blocked products of [`super::wide`] or the per-image products.

use super::Geom;
use rayon::prelude::*;

/// Output channels per register block.
const OB: usize = 4;
/// Vectors of 8 positions per register block.
const QB: usize = 3;
/// Positions per register block.
const QW: usize = 8 * QB;

/// At most this many output channels per group: with more, the unfolded products amortise
/// their copies over enough outputs and run faster (measured: 32 -> 160 channels at 32x32 took
/// twice the time of the blocked products).
const MAX_OG: usize = 64;

/// The forward convolution by direct kernels, or `None` where they do not apply (not f32, no
/// AVX2/FMA, more than [`MAX_OG`] output channels per group, fewer images than threads).
pub(super) fn forward<T: 'static + Copy + Send + Sync + Default>(x: &[T], k: &[T], geo: &Geom) -> Option<Vec<T>> {
    with_f32(x, k, geo, run)
}

/// Runs an f32 kernel `f(a, b, geo, threads)` on `T` slices where the direct kernels apply: `T`
/// is f32, the CPU has AVX2 and FMA, at most [`MAX_OG`] output channels per group, at least one
/// image per thread; `None` elsewhere.
pub(super) fn with_f32<T: 'static + Copy + Send + Sync + Default>(a: &[T], b: &[T], geo: &Geom, f: fn(&[f32], &[f32], &Geom, usize) -> Vec<f32>) -> Option<Vec<T>> {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() || geo.og() > MAX_OG || !available() {
        return None;
    }
    let threads = rayon::current_num_threads().max(1);
    if geo.n < threads {
        return None;
    }
    // SAFETY: T is f32 (checked above), so the slices are f32 slices of the same length.
    let (a32, b32) = unsafe { (std::slice::from_raw_parts(a.as_ptr() as *const f32, a.len()), std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len())) };
    let y = f(a32, b32, geo, threads);
    let mut y = std::mem::ManuallyDrop::new(y);
    // SAFETY: T is f32: the vector is handed over with its own pointer, length and capacity.
    Some(unsafe { Vec::from_raw_parts(y.as_mut_ptr() as *mut T, y.len(), y.capacity()) })
}

pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Per-thread buffers: the (phase) planes of one group and the output of one group on the
/// padded width.
struct Scratch {
    pad: Vec<f32>,
    out: Vec<f32>,
}

/// The phase planes of an input: `s * s` planes of `hs x ws` per channel.
struct Phases {
    s: usize,
    hs: usize,
    ws: usize,
}

impl Phases {
    fn new(geo: &Geom) -> Self {
        let s = geo.p.stride;
        let (ph, pw) = geo.p.padding;
        Self { s, hs: (geo.h + 2 * ph).div_ceil(s), ws: (geo.w + 2 * pw).div_ceil(s) }
    }
    fn plane(&self) -> usize {
        self.hs * self.ws
    }
    /// Flat offset of tap `(i, j)` within a channel's phase planes: its phase and shift.
    fn offset(&self, geo: &Geom, i: usize, j: usize) -> usize {
        let (s, d) = (self.s, geo.p.dilation);
        let phase = (d * i) % s * s + (d * j) % s;
        phase * self.plane() + (d * i / s) * self.ws + d * j / s
    }
    /// Writes channels `c0 .. c0 + n` of `img` as phase planes into `buf` (zeros outside the
    /// image; `buf` longer than the planes is zeroed past them).
    fn fill(&self, geo: &Geom, img: &[f32], c0: usize, n: usize, buf: &mut [f32]) {
        let (ph, pw) = geo.p.padding;
        let (h, w, s) = (geo.h as isize, geo.w as isize, self.s);
        let plane = self.plane();
        for c in 0..n {
            let src = &img[(c0 + c) * geo.h * geo.w..][..geo.h * geo.w];
            for a in 0..s {
                for b in 0..s {
                    let dst = &mut buf[((c * s + a) * s + b) * plane..][..plane];
                    for y in 0..self.hs {
                        let row = &mut dst[y * self.ws..][..self.ws];
                        let iy = (s * y + a) as isize - ph as isize;
                        if iy < 0 || iy >= h {
                            row.fill(0.0);
                            continue;
                        }
                        let srow = &src[iy as usize * geo.w..][..geo.w];
                        // Columns x with 0 <= s x + b - pw < w: [lo, hi).
                        let lo = ((pw as isize - b as isize).max(0) as usize).div_ceil(s).min(self.ws);
                        let hi = ((w + pw as isize - b as isize).max(0) as usize).div_ceil(s).clamp(lo, self.ws);
                        row[..lo].fill(0.0);
                        row[hi..].fill(0.0);
                        let first = s * lo + b - pw;
                        if s == 1 {
                            row[lo..hi].copy_from_slice(&srow[first..first + hi - lo]);
                        } else {
                            for (v, &e) in row[lo..hi].iter_mut().zip(srow[first..].iter().step_by(s)) {
                                *v = e;
                            }
                        }
                    }
                }
            }
        }
        buf[n * s * s * plane..].fill(0.0);
    }
}

fn run(x: &[f32], k: &[f32], geo: &Geom, threads: usize) -> Vec<f32> {
    let ps = Phases::new(geo);
    let (cg, og, taps, pix, chw) = (geo.cg(), geo.og(), geo.kh * geo.kw, geo.pix(), geo.c * geo.h * geo.w);
    let cols = geo.ho * ps.ws;
    let blocks = cols.div_ceil(QW);
    // Weights per group as [c][tap][o] (output channels contiguous, padded to OB with zeros).
    let ogp = og.div_ceil(OB) * OB;
    let mut wr = vec![0f32; geo.p.groups * cg * taps * ogp];
    for g in 0..geo.p.groups {
        for o in 0..og {
            for c in 0..cg {
                for t in 0..taps {
                    wr[((g * cg + c) * taps + t) * ogp + o] = k[((g * og + o) * cg + c) * taps + t];
                }
            }
        }
    }
    // The flat offset of every tap within a channel's phase planes.
    let offsets: Vec<usize> = (0..geo.kh).flat_map(|i| (0..geo.kw).map(move |j| (i, j))).map(|(i, j)| ps.offset(geo, i, j)).collect();
    // Every read lies below the last channel's largest offset plus the last block's end.
    let cstride = ps.s * ps.s * ps.plane();
    let pad_len = (cg * cstride).max((cg - 1) * cstride + offsets.iter().max().copied().unwrap_or(0) + blocks * QW);
    // Every output value is written exactly once below (each channel's `ho` rows of `wo`), so
    // the output starts uninitialised instead of zero-filled.
    let mut y: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(geo.n * geo.o * pix);
    // SAFETY: MaybeUninit needs no initialisation; the capacity was reserved above.
    unsafe { y.set_len(geo.n * geo.o * pix) };
    let image = |img: &[f32], out: &mut [std::mem::MaybeUninit<f32>], s: &mut Scratch| {
        s.pad.resize(pad_len, 0.0);
        s.out.resize(ogp * blocks * QW, 0.0);
        for g in 0..geo.p.groups {
            ps.fill(geo, img, g * cg, cg, &mut s.pad);
            let w = &wr[g * cg * taps * ogp..][..cg * taps * ogp];
            // Position blocks outside: the input window of one block of positions stays in
            // the cache while every block of output channels reads it.
            for qb in 0..blocks {
                for ob in 0..ogp / OB {
                    // SAFETY: AVX2 and FMA are available (checked by `forward`); every read of
                    // `pad` is below (cg - 1) * cstride + max(offsets) + blocks * QW <= pad_len,
                    // and the block's writes lie in `out` (ogp rows of blocks * QW).
                    unsafe { block(&s.pad, w, &offsets, cg, cstride, ogp, ob * OB, qb * QW, &mut s.out, blocks * QW) };
                }
            }
            for o in 0..og {
                let dst = &mut out[(g * og + o) * pix..][..pix];
                for yy in 0..geo.ho {
                    let src = &s.out[o * blocks * QW + yy * ps.ws..][..geo.wo];
                    let row = &mut dst[yy * geo.wo..][..geo.wo];
                    // SAFETY: `row` and `src` are `wo` values each and do not overlap.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), row.as_mut_ptr() as *mut f32, geo.wo) };
                }
            }
        }
    };
    let per = geo.o * pix;
    y.par_chunks_mut(per)
        .zip(x.par_chunks(chw))
        .with_min_len(geo.n.div_ceil(threads))
        .for_each_init(|| Scratch { pad: Vec::new(), out: Vec::new() }, |s, (out, img)| image(img, out, s));
    let mut y = std::mem::ManuallyDrop::new(y);
    // SAFETY: every element was written above; MaybeUninit<f32> has f32's layout.
    unsafe { Vec::from_raw_parts(y.as_mut_ptr() as *mut f32, y.len(), y.capacity()) }
}

/// One register block: output channels `o0 .. o0 + OB`, positions `q0 .. q0 + QW` of the padded
/// width, summed over `cg` channels (`cstride` values apart in `pad`) and the taps at the flat
/// `offsets` within a channel, with the weights `w[(c * taps + t) * ogp + o]`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `pad` must hold `(cg - 1) * cstride + max(offsets) + q0 +
/// QW` values, `w` `cg * offsets.len() * ogp` with `o0 + OB <= ogp`, and `out` `(o0 + OB) * ld`
/// with `q0 + QW <= ld`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block(pad: &[f32], w: &[f32], offsets: &[usize], cg: usize, cstride: usize, ogp: usize, o0: usize, q0: usize, out: &mut [f32], ld: usize) {
    use std::arch::x86_64::*;
    // Twelve named accumulators (OB x QB = 4 x 3), so that they stay in registers.
    let z = _mm256_setzero_ps();
    let (mut a00, mut a01, mut a02, mut a10, mut a11, mut a12) = (z, z, z, z, z, z);
    let (mut a20, mut a21, mut a22, mut a30, mut a31, mut a32) = (z, z, z, z, z, z);
    let taps = offsets.len();
    let (pp, wp) = (pad.as_ptr().add(q0), w.as_ptr().add(o0));
    for c in 0..cg {
        let (base, wc) = (pp.add(c * cstride), wp.add(c * taps * ogp));
        for t in 0..taps {
            let src = base.add(*offsets.get_unchecked(t));
            let (v0, v1, v2) = (_mm256_loadu_ps(src), _mm256_loadu_ps(src.add(8)), _mm256_loadu_ps(src.add(16)));
            let wt = wc.add(t * ogp);
            let b0 = _mm256_broadcast_ss(&*wt);
            a00 = _mm256_fmadd_ps(b0, v0, a00);
            a01 = _mm256_fmadd_ps(b0, v1, a01);
            a02 = _mm256_fmadd_ps(b0, v2, a02);
            let b1 = _mm256_broadcast_ss(&*wt.add(1));
            a10 = _mm256_fmadd_ps(b1, v0, a10);
            a11 = _mm256_fmadd_ps(b1, v1, a11);
            a12 = _mm256_fmadd_ps(b1, v2, a12);
            let b2 = _mm256_broadcast_ss(&*wt.add(2));
            a20 = _mm256_fmadd_ps(b2, v0, a20);
            a21 = _mm256_fmadd_ps(b2, v1, a21);
            a22 = _mm256_fmadd_ps(b2, v2, a22);
            let b3 = _mm256_broadcast_ss(&*wt.add(3));
            a30 = _mm256_fmadd_ps(b3, v0, a30);
            a31 = _mm256_fmadd_ps(b3, v1, a31);
            a32 = _mm256_fmadd_ps(b3, v2, a32);
        }
    }
    let op = out.as_mut_ptr();
    for (ob, row) in [[a00, a01, a02], [a10, a11, a12], [a20, a21, a22], [a30, a31, a32]].iter().enumerate() {
        for (qi, a) in row.iter().enumerate() {
            _mm256_storeu_ps(op.add((o0 + ob) * ld + q0 + 8 * qi), *a);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn block(_: &[f32], _: &[f32], _: &[usize], _: usize, _: usize, _: usize, _: usize, _: usize, _: &mut [f32], _: usize) {
    unreachable!("the direct kernels run on x86_64 only")
}
