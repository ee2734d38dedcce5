//! Stride-1 convolutions with few input channels per group: several images per product, each
//! unfolded on the padded width.
//!
//! The output of one image is computed on `ho` rows of the padded width `wp` (the extra
//! `(kw - 1) * dilation` columns of each row are discarded), so that the unfolded row of channel
//! `c` and tap `(i, j)` is one contiguous run of the zero-padded plane: `ho * wp` values copied
//! at once instead of `ho` short rows with their zero borders. `nb` images side by side make the
//! products wide (about [`WIDE_COLS`] columns) even for 7x7 or 14x14 images, where one image per
//! product leaves the `gemm` crate's packing and edge kernels dominant.
//!
//! - forward: `Y_wide = W[g] [cols(x[i0]) .. cols(x[i0 + nb - 1])]`, cropped into `y`;
//! - input gradient: `dcols = W[g]^T [dy_wide ...]` (zeros in the discarded columns), each
//!   image's run added back into its padded planes, which are cropped into `dx`;
//! - weight gradient: `dW[g] += [dy_wide ...] [cols ...]^T`.

use super::{Geom, Padded};
use crate::nn::float::KernelFloat;
use gemm::{gemm, Parallelism};

/// Columns one product aims for (images side by side).
pub(super) const WIDE_COLS: usize = 1024;
/// At most this many values in one unfolded block (4 MiB of f32).
const MAX_COL: usize = 1 << 20;

/// The layout of a block of `nb` images on the padded width.
pub(super) struct Wide {
    pub(super) pd: Padded,
    /// Columns of one image (`ho * wp`).
    pub(super) cw: usize,
    /// Images per product.
    pub(super) nb: usize,
}

impl Wide {
    /// The layout for `geo`, with at most one block per thread when the batch is small.
    pub(super) fn new(geo: &Geom, threads: usize) -> Self {
        let pd = Padded::new(geo);
        let cw = geo.ho * pd.wp;
        let mut nb = WIDE_COLS.div_ceil(cw.max(1)).max(1);
        nb = nb.min(geo.n.div_ceil(threads.max(1))).max(1);
        nb = nb.min((MAX_COL / (geo.k() * cw).max(1)).max(1));
        Self { pd, cw, nb }
    }
    /// Per-thread scratch for a block: padded planes, unfolded block, gradient block.
    pub(super) fn scratch<T: KernelFloat>(&self, geo: &Geom) -> Scratch<T> {
        let n = self.nb * self.cw;
        Scratch { pad: vec![T::default(); self.pd.len(geo.cg())], col: vec![T::default(); geo.k() * n], wide: vec![T::default(); geo.og() * n] }
    }
}

/// Scratch buffers of one thread.
pub(super) struct Scratch<T> {
    pad: Vec<T>,
    col: Vec<T>,
    wide: Vec<T>,
}

/// Unfolds group `g` of the images `x[i0 .. i0 + nb]` into `col` `(k, nb * cw)`.
fn unfold<T: KernelFloat>(x: &[T], i0: usize, nb: usize, g: usize, geo: &Geom, lay: &Wide, pad: &mut [T], col: &mut [T]) {
    let (chw, cg, n) = (geo.c * geo.h * geo.w, geo.cg(), nb * lay.cw);
    let pd = &lay.pd;
    for b in 0..nb {
        pd.fill(geo, &x[(i0 + b) * chw..][..chw], g * cg, cg, pad);
        for c in 0..cg {
            for i in 0..geo.kh {
                for j in 0..geo.kw {
                    let row = (c * geo.kh + i) * geo.kw + j;
                    let src = &pad[c * pd.plane() + pd.offset(geo, i, j)..][..lay.cw];
                    col[row * n + b * lay.cw..][..lay.cw].copy_from_slice(src);
                }
            }
        }
    }
}

/// Lays group `g` of `dy[i0 .. i0 + nb]` on the padded width: `buf` `(og, nb * cw)`, zeros in
/// the discarded columns.
fn widen<T: KernelFloat>(dy: &[T], i0: usize, nb: usize, g: usize, geo: &Geom, lay: &Wide, buf: &mut [T]) {
    let (og, pix, n, wp) = (geo.og(), geo.pix(), nb * lay.cw, lay.pd.wp);
    let buf = &mut buf[..og * n];
    buf.fill(T::default());
    for b in 0..nb {
        for o in 0..og {
            let src = &dy[((i0 + b) * geo.o + g * og + o) * pix..][..pix];
            for y in 0..geo.ho {
                buf[o * n + b * lay.cw + y * wp..][..geo.wo].copy_from_slice(&src[y * geo.wo..][..geo.wo]);
            }
        }
    }
}

/// Forward of images `i0 .. i0 + nb`; `out` is their block of `y`.
pub(super) fn forward<T: KernelFloat>(x: &[T], k: &[T], geo: &Geom, lay: &Wide, i0: usize, nb: usize, out: &mut [T], s: &mut Scratch<T>, par: Parallelism) {
    let (og, kk, pix, n, wp) = (geo.og(), geo.k(), geo.pix(), nb * lay.cw, lay.pd.wp);
    for g in 0..geo.p.groups {
        unfold(x, i0, nb, g, geo, lay, &mut s.pad, &mut s.col);
        // SAFETY: W[g] is og x kk row-major, `col` kk x n and `wide` og x n row-major.
        unsafe {
            gemm(og, n, kk, s.wide.as_mut_ptr(), 1, n as isize, false, k[g * og * kk..].as_ptr(), 1, kk as isize, s.col.as_ptr(), 1, n as isize, T::from64(1.0), T::from64(1.0), false, false, false, par)
        }
        for b in 0..nb {
            for o in 0..og {
                let dst = &mut out[(b * geo.o + g * og + o) * pix..][..pix];
                for y in 0..geo.ho {
                    dst[y * geo.wo..][..geo.wo].copy_from_slice(&s.wide[o * n + b * lay.cw + y * wp..][..geo.wo]);
                }
            }
        }
    }
}

/// Input gradient of images `i0 .. i0 + nb`; `out` is their block of `dx`.
pub(super) fn input_grad<T: KernelFloat>(dy: &[T], k: &[T], geo: &Geom, lay: &Wide, i0: usize, nb: usize, out: &mut [T], s: &mut Scratch<T>, par: Parallelism) {
    let (cg, og, kk, n) = (geo.cg(), geo.og(), geo.k(), nb * lay.cw);
    let (pd, (ph, pw), chw) = (&lay.pd, geo.p.padding, geo.c * geo.h * geo.w);
    for g in 0..geo.p.groups {
        widen(dy, i0, nb, g, geo, lay, &mut s.wide);
        // SAFETY: W[g]^T is kk x og with strides (kk, 1); `wide` og x n and `col` kk x n
        // row-major.
        unsafe {
            gemm(kk, n, og, s.col.as_mut_ptr(), 1, n as isize, false, k[g * og * kk..].as_ptr(), kk as isize, 1, s.wide.as_ptr(), 1, n as isize, T::from64(1.0), T::from64(1.0), false, false, false, par)
        }
        for b in 0..nb {
            s.pad.fill(T::default());
            for c in 0..cg {
                for i in 0..geo.kh {
                    for j in 0..geo.kw {
                        let row = (c * geo.kh + i) * geo.kw + j;
                        let dst = &mut s.pad[c * pd.plane() + pd.offset(geo, i, j)..][..lay.cw];
                        for (d, &v) in dst.iter_mut().zip(&s.col[row * n + b * lay.cw..][..lay.cw]) {
                            *d += v;
                        }
                    }
                }
            }
            for c in 0..cg {
                let dst = &mut out[b * chw + (g * cg + c) * geo.h * geo.w..][..geo.h * geo.w];
                for y in 0..geo.h {
                    dst[y * geo.w..][..geo.w].copy_from_slice(&s.pad[c * pd.plane() + (y + ph) * pd.wp + pw..][..geo.w]);
                }
            }
        }
    }
}

/// Adds the weight gradient of images `i0 .. i0 + nb` into `acc` `(o, cg, kh, kw)` (or writes
/// it, when `accumulate` is false).
pub(super) fn weight_grad<T: KernelFloat>(x: &[T], dy: &[T], geo: &Geom, lay: &Wide, i0: usize, nb: usize, acc: &mut [T], accumulate: bool, s: &mut Scratch<T>, par: Parallelism) {
    let (og, kk, n) = (geo.og(), geo.k(), nb * lay.cw);
    for g in 0..geo.p.groups {
        unfold(x, i0, nb, g, geo, lay, &mut s.pad, &mut s.col);
        widen(dy, i0, nb, g, geo, lay, &mut s.wide);
        // SAFETY: `wide` is og x n row-major; cols^T (n x kk) is read from the kk x n row-major
        // block with strides (n, 1); the destination is og x kk row-major inside `acc`.
        unsafe {
            gemm(og, kk, n, acc[g * og * kk..].as_mut_ptr(), 1, kk as isize, accumulate, s.wide.as_ptr(), 1, n as isize, s.col.as_ptr(), n as isize, 1, T::from64(1.0), T::from64(1.0), false, false, false, par)
        }
    }
}
