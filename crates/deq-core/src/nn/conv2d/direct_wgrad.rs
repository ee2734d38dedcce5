//! Direct f32 weight gradient of stride-1 convolutions with few input channels per group
//! (AVX2 + FMA), the counterpart of [`super::direct`]'s forward kernels.
//!
//! `dW[o, c, t] = sum over images and positions q of dy[o, q] * x_pad[c, q + offset(t)]`: with
//! `dy` laid on the padded width (`q = y * wp + x`, zeros in the extra columns) and the input's
//! zero-padded planes, every tap is a dot product of two contiguous rows. A register block
//! takes [`OB`] output channels and [`TB`] taps of one input channel and sweeps the rows in
//! vectors of 8: per vector, `OB` loads of `dy`, `TB` shifted loads of the plane, `OB x TB`
//! multiply-adds into twelve accumulators, summed across lanes at the end. Nothing is unfolded
//! (the blocked products of [`super::wide`] copy `cg * kh * kw` values per position first) and
//! nothing is packed.
//!
//! Used for f32 with AVX2 and FMA, stride 1, fewer than `TAPS_MIN_CG` input channels per group,
//! at most [`super::direct`]'s output-channel bound per group, and at least one image per
//! thread; each thread sums its images, the threads' sums are added at the end.

use super::{Geom, Padded};
use rayon::prelude::*;

/// Output channels per register block.
const OB: usize = 4;
/// Taps per register block.
const TB: usize = 3;
/// Positions per chunk (four rows of dy: 16 KiB).
const CHUNK: usize = 1024;

/// The weight gradient `(o, cg, kh, kw)` by the direct kernel, or `None` where it does not
/// apply (see the module docs).
pub(super) fn weight_grad<T: 'static + Copy + Send + Sync + Default>(x: &[T], dy: &[T], geo: &Geom) -> Option<Vec<T>> {
    if geo.p.stride != 1 {
        return None;
    }
    super::direct::with_f32(x, dy, geo, run)
}

fn run(x: &[f32], dy: &[f32], geo: &Geom, threads: usize) -> Vec<f32> {
    let pd = Padded::new(geo);
    let (cg, og, pix, chw) = (geo.cg(), geo.og(), geo.pix(), geo.c * geo.h * geo.w);
    let taps = geo.kh * geo.kw;
    let kk = cg * taps;
    let len = geo.o * kk;
    let cols = geo.ho * pd.wp;
    let colsr = cols.div_ceil(8) * 8;
    let ogp = og.div_ceil(OB) * OB;
    let offsets: Vec<usize> = (0..geo.kh).flat_map(|i| (0..geo.kw).map(move |j| (i, j))).map(|(i, j)| pd.offset(geo, i, j)).collect();
    let max_off = offsets.iter().copied().max().unwrap_or(0);
    // Every read lies below the last channel's largest offset plus the rounded row; this also
    // covers the planes themselves (`cols + max_off >= plane`).
    let pad_len = (cg - 1) * pd.plane() + max_off + colsr;
    let blocks = taps.div_ceil(TB);
    // Images [a, b) into one partial sum.
    let partial = |a: usize, b: usize| -> Vec<f32> {
        let mut acc = vec![0f32; len];
        let mut pad = vec![0f32; pad_len];
        let mut wide = vec![0f32; ogp * colsr];
        for i in a..b {
            let img = &x[i * chw..][..chw];
            for g in 0..geo.p.groups {
                // The unchecked reads of `block` stay inside `pad`.
                assert!((cg - 1) * pd.plane() + max_off + colsr <= pad.len(), "direct weight gradient: padded planes too short");
                pd.fill(geo, img, g * cg, cg, &mut pad);
                // dy of the group on the padded width: ogp rows of colsr, zeros elsewhere.
                wide.fill(0.0);
                for o in 0..og {
                    let src = &dy[((i * geo.o) + g * og + o) * pix..][..pix];
                    for y in 0..geo.ho {
                        wide[o * colsr + y * pd.wp..][..geo.wo].copy_from_slice(&src[y * geo.wo..][..geo.wo]);
                    }
                }
                // Positions in chunks whose rows of dy stay in the L1 cache while every
                // channel and tap block reads them.
                for q0 in (0..colsr).step_by(CHUNK) {
                    let n8 = CHUNK.min(colsr - q0) / 8;
                    for ob in 0..ogp / OB {
                        for c in 0..cg {
                            for tb in 0..blocks {
                                let t0 = tb * TB;
                                let nt = TB.min(taps - t0);
                                // A short last block repeats its first tap (its extra sums are
                                // dropped).
                                let offs: [usize; TB] = std::array::from_fn(|k| offsets[t0 + if k < nt { k } else { 0 }]);
                                // SAFETY: AVX2 and FMA are available (checked by `weight_grad`);
                                // `wide` holds ogp rows of colsr; the plane reads end below
                                // c * plane + max_off + colsr <= pad_len.
                                let r = unsafe { block(wide.as_ptr().add(ob * OB * colsr + q0), colsr, pad.as_ptr().add(c * pd.plane() + q0), offs, n8) };
                                for (k, row) in r.iter().enumerate() {
                                    let o = ob * OB + k;
                                    if o >= og {
                                        break;
                                    }
                                    let base = ((g * og + o) * cg + c) * taps + t0;
                                    for (t, v) in row.iter().take(nt).enumerate() {
                                        acc[base + t] += v;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        acc
    };
    let parts = threads.min(geo.n);
    let bounds: Vec<(usize, usize)> = (0..parts).map(|t| (t * geo.n / parts, (t + 1) * geo.n / parts)).collect();
    super::sum_parts(bounds.par_iter().map(|&(a, b)| partial(a, b)).collect(), len)
}

/// Dot products of [`OB`] rows of `dy` (`ld` apart) with a plane read at [`TB`] offsets, over
/// `n8` vectors of 8 positions.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `dy` must hold `(OB - 1) * ld + 8 * n8` values and `x`
/// `max(offs) + 8 * n8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block(dy: *const f32, ld: usize, x: *const f32, offs: [usize; TB], n8: usize) -> [[f32; TB]; OB] {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let (mut a00, mut a01, mut a02, mut a10, mut a11, mut a12) = (z, z, z, z, z, z);
    let (mut a20, mut a21, mut a22, mut a30, mut a31, mut a32) = (z, z, z, z, z, z);
    let (x0, x1, x2) = (x.add(offs[0]), x.add(offs[1]), x.add(offs[2]));
    let (d0, d1, d2, d3) = (dy, dy.add(ld), dy.add(2 * ld), dy.add(3 * ld));
    for v in 0..n8 {
        let q = 8 * v;
        let (v0, v1, v2) = (_mm256_loadu_ps(x0.add(q)), _mm256_loadu_ps(x1.add(q)), _mm256_loadu_ps(x2.add(q)));
        let g = _mm256_loadu_ps(d0.add(q));
        a00 = _mm256_fmadd_ps(g, v0, a00);
        a01 = _mm256_fmadd_ps(g, v1, a01);
        a02 = _mm256_fmadd_ps(g, v2, a02);
        let g = _mm256_loadu_ps(d1.add(q));
        a10 = _mm256_fmadd_ps(g, v0, a10);
        a11 = _mm256_fmadd_ps(g, v1, a11);
        a12 = _mm256_fmadd_ps(g, v2, a12);
        let g = _mm256_loadu_ps(d2.add(q));
        a20 = _mm256_fmadd_ps(g, v0, a20);
        a21 = _mm256_fmadd_ps(g, v1, a21);
        a22 = _mm256_fmadd_ps(g, v2, a22);
        let g = _mm256_loadu_ps(d3.add(q));
        a30 = _mm256_fmadd_ps(g, v0, a30);
        a31 = _mm256_fmadd_ps(g, v1, a31);
        a32 = _mm256_fmadd_ps(g, v2, a32);
    }
    let sum = |a: __m256| -> f32 {
        let mut l = [0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), a);
        ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
    };
    [[sum(a00), sum(a01), sum(a02)], [sum(a10), sum(a11), sum(a12)], [sum(a20), sum(a21), sum(a22)], [sum(a30), sum(a31), sum(a32)]]
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block(_: *const f32, _: usize, _: *const f32, _: [usize; TB], _: usize) -> [[f32; TB]; OB] {
    unreachable!("weight_grad checks for AVX2 and FMA first")
}
