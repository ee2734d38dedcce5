//! 2-D convolution (NCHW) with its own CPU kernels for the forward pass, the input gradient
//! and the weight gradient.
//!
//! candle's CPU `conv2d` unfolds the whole batch (im2col) with a scalar loop and multiplies
//! image by image; its backward goes through a transposed convolution (a further 3-6x slower)
//! and a convolution over the batch-transposed input. Here each image is unfolded into a
//! per-thread buffer (row copies, zero padding by ranges) and multiplied by the weight with the
//! `gemm` crate; images are spread over the threads (one single-threaded product each) when
//! the batch is at least the thread count, and each product uses every thread otherwise.
//! 1x1 stride-1 convolutions without padding skip the unfolding and multiply the image itself.
//!
//! - forward: `y[n, g] = W[g] cols(x[n], g)`;
//! - input gradient: `dx[n] = fold(W[g]^T dy[n, g])` (the fold adds the unfolded gradient back
//!   into the image);
//! - weight gradient: `dW[g] = sum_n dy[n, g] cols(x[n], g)^T`, one partial sum per thread,
//!   added in a fixed order so that the result does not depend on scheduling.
//!
//! The three products are custom ops whose backward rules are each other (the input gradient
//! is linear in `(dy, W)`, the weight gradient in `(x, dy)`), so second derivatives (the
//! Jacobian regulariser's gradient) work; they read [`crate::grad::input_wanted`], so the
//! pruned vector-Jacobian products of the adjoint solve compute the input gradient alone.
//! Other devices and dtypes use candle's `conv2d`.

use super::float::KernelFloat;
use crate::grad::input_wanted;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

mod direct;
mod direct_wgrad;
mod wide;

/// Padding (rows, columns), stride, dilation and groups of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dSpec {
    /// Zero padding of the rows (top and bottom) and of the columns (left and right).
    pub padding: (usize, usize),
    /// Stride along both axes.
    pub stride: usize,
    /// Dilation along both axes.
    pub dilation: usize,
    /// Groups: input and output channels are split into this many independent blocks.
    pub groups: usize,
}

impl Conv2dSpec {
    /// Equal padding on both axes, stride 1, no dilation, one group (candle's defaults).
    pub fn padded(padding: usize) -> Self {
        Self { padding: (padding, padding), stride: 1, dilation: 1, groups: 1 }
    }
}

type Params = Conv2dSpec;

/// The sizes of one convolution: input `(n, c, h, w)`, kernel `(o, c / groups, kh, kw)`,
/// output `(n, o, ho, wo)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    p: Params,
}

impl Geom {
    fn new(x: &[usize], k: &[usize], p: Params) -> Result<Self> {
        if x.len() != 4 || k.len() != 4 {
            candle_core::bail!("conv2d: input {x:?} and kernel {k:?} must both have rank 4");
        }
        let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
        let (o, cg, kh, kw) = (k[0], k[1], k[2], k[3]);
        if p.groups == 0 || p.stride == 0 || p.dilation == 0 {
            candle_core::bail!("conv2d: groups, stride and dilation must be positive");
        }
        if c % p.groups != 0 || o % p.groups != 0 || cg * p.groups != c {
            candle_core::bail!("conv2d: input {x:?} and kernel {k:?} do not match {} groups", p.groups);
        }
        let span = |len: usize, k: usize, pad: usize| -> Result<usize> {
            let eff = p.dilation * (k.max(1) - 1) + 1;
            if k == 0 || len + 2 * pad < eff {
                candle_core::bail!("conv2d: kernel {k} (dilation {}) larger than the padded input {len} (padding {pad})", p.dilation);
            }
            Ok((len + 2 * pad - eff) / p.stride + 1)
        };
        let (ho, wo) = (span(h, kh, p.padding.0)?, span(w, kw, p.padding.1)?);
        Ok(Self { n, c, h, w, o, kh, kw, ho, wo, p })
    }
    /// Input channels per group.
    fn cg(&self) -> usize {
        self.c / self.p.groups
    }
    /// Output channels per group.
    fn og(&self) -> usize {
        self.o / self.p.groups
    }
    /// Rows of the unfolded image (the inner size of the products).
    fn k(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    /// Output pixels per channel.
    fn pix(&self) -> usize {
        self.ho * self.wo
    }
    /// A 1x1 convolution with stride 1 and no padding: the image is its own unfolding.
    fn direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == 1 && self.p.padding == (0, 0)
    }
    fn x_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    fn k_dims(&self) -> [usize; 4] {
        [self.o, self.cg(), self.kh, self.kw]
    }
    fn y_dims(&self) -> [usize; 4] {
        [self.n, self.o, self.ho, self.wo]
    }
    /// The output columns `[lo, hi)` whose input column `ox * stride + j * dilation - pad`
    /// lies inside the image (`len` columns), for kernel column `j` (rows likewise).
    fn valid(&self, j: usize, len: usize, out: usize, pad: usize) -> (usize, usize) {
        let off = (j * self.p.dilation) as isize - pad as isize;
        let s = self.p.stride as isize;
        let lo = if off >= 0 { 0 } else { ((-off + s - 1) / s) as usize };
        let end = len as isize - off;
        let hi = if end <= 0 { 0 } else { ((end + s - 1) / s) as usize };
        let lo = lo.min(out);
        (lo, hi.clamp(lo, out))
    }
}

/// Unfolds group `g` of one image `(c, h, w)` into `col` `(cg * kh * kw, ho * wo)`.
fn unfold<T: KernelFloat>(img: &[T], g: usize, geo: &Geom, col: &mut [T]) {
    let (h, w, ho, wo, pix) = (geo.h, geo.w, geo.ho, geo.wo, geo.pix());
    let (s, d, (ph, pw)) = (geo.p.stride, geo.p.dilation, geo.p.padding);
    let zero = T::default();
    for c in 0..geo.cg() {
        let plane = &img[(g * geo.cg() + c) * h * w..][..h * w];
        for i in 0..geo.kh {
            let (ylo, yhi) = geo.valid(i, h, ho, ph);
            for j in 0..geo.kw {
                let (xlo, xhi) = geo.valid(j, w, wo, pw);
                let row = &mut col[((c * geo.kh + i) * geo.kw + j) * pix..][..pix];
                row[..ylo * wo].fill(zero);
                row[yhi * wo..].fill(zero);
                for oy in ylo..yhi {
                    let src = &plane[(oy * s + i * d - ph) * w..][..w];
                    let r = &mut row[oy * wo..][..wo];
                    r[..xlo].fill(zero);
                    r[xhi..].fill(zero);
                    if xhi == xlo {
                        // kernel column j only ever reads padding
                    } else if s == 1 {
                        let start = xlo + j * d - pw;
                        r[xlo..xhi].copy_from_slice(&src[start..start + xhi - xlo]);
                    } else {
                        for (ox, v) in r[xlo..xhi].iter_mut().enumerate() {
                            *v = src[(ox + xlo) * s + j * d - pw];
                        }
                    }
                }
            }
        }
    }
}

/// Adds the unfolded gradient `col` of group `g` back into the image gradient `img`.
fn fold<T: KernelFloat>(col: &[T], g: usize, geo: &Geom, img: &mut [T]) {
    let (h, w, ho, wo, pix) = (geo.h, geo.w, geo.ho, geo.wo, geo.pix());
    let (s, d, (ph, pw)) = (geo.p.stride, geo.p.dilation, geo.p.padding);
    for c in 0..geo.cg() {
        let plane = &mut img[(g * geo.cg() + c) * h * w..][..h * w];
        for i in 0..geo.kh {
            let (ylo, yhi) = geo.valid(i, h, ho, ph);
            for j in 0..geo.kw {
                let (xlo, xhi) = geo.valid(j, w, wo, pw);
                let row = &col[((c * geo.kh + i) * geo.kw + j) * pix..][..pix];
                for oy in ylo..yhi {
                    let dst = &mut plane[(oy * s + i * d - ph) * w..][..w];
                    let r = &row[oy * wo..][..wo];
                    if xhi == xlo {
                        // kernel column j only ever reads padding
                    } else if s == 1 {
                        let start = xlo + j * d - pw;
                        for (o, &v) in dst[start..start + xhi - xlo].iter_mut().zip(&r[xlo..xhi]) {
                            *o += v;
                        }
                    } else {
                        for (ox, &v) in r[xlo..xhi].iter().enumerate() {
                            dst[(ox + xlo) * s + j * d - pw] += v;
                        }
                    }
                }
            }
        }
    }
}

/// A matrix operand for `gemm`: pointer, column stride, row stride.
type Mat<T> = (*const T, isize, isize);

/// `dst (m x n, row-major) (=|+=) lhs (m x k) rhs (k x n)`.
///
/// # Safety
/// The operands must cover `m x k` and `k x n` elements with the given strides, and `dst` an
/// `m x n` row-major block that nothing else writes meanwhile.
unsafe fn product<T: KernelFloat>(m: usize, n: usize, k: usize, dst: *mut T, accumulate: bool, lhs: Mat<T>, rhs: Mat<T>, par: Parallelism) {
    gemm(m, n, k, dst, 1, n as isize, accumulate, lhs.0, lhs.1, lhs.2, rhs.0, rhs.1, rhs.2, T::from64(1.0), T::from64(1.0), false, false, false, par)
}

/// The threads of the current pool, and whether images go to threads (else each product is
/// split over every thread).
fn schedule(n: usize) -> (usize, bool, Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    if n >= threads || threads == 1 {
        (threads, true, Parallelism::None)
    } else {
        (threads, false, Parallelism::Rayon(threads))
    }
}

/// Stride-1 convolutions with many input channels per group skip the unfolding: each kernel tap
/// `(i, j)` is one product with the zero-padded image read at a flat offset. The output is
/// computed on the padded width (`wo + (kw - 1) * dilation` columns per row, the extra columns
/// discarded), so every tap's operand is a plain strided matrix (channels x pixels) without
/// copies; the unfolding would write and read `cg * kh * kw` values per output pixel.
const TAPS_MIN_CG: usize = 48;

/// The zero-padded planes of one group or image: `(channels, hp * wp)` plus a tail of zeros
/// that the last taps of the last channel read into (only for discarded columns).
struct Padded {
    hp: usize,
    wp: usize,
    tail: usize,
}

impl Padded {
    fn new(geo: &Geom) -> Self {
        let (ph, pw) = geo.p.padding;
        Self { hp: geo.h + 2 * ph, wp: geo.w + 2 * pw, tail: (geo.kw - 1) * geo.p.dilation }
    }
    fn plane(&self) -> usize {
        self.hp * self.wp
    }
    fn len(&self, channels: usize) -> usize {
        channels * self.plane() + self.tail
    }
    /// Flat offset of tap `(i, j)`.
    fn offset(&self, geo: &Geom, i: usize, j: usize) -> usize {
        (i * self.wp + j) * geo.p.dilation
    }
    /// Copies channels `c0..c0 + n` of `img` into `buf` (borders and tail zero).
    fn fill<T: KernelFloat>(&self, geo: &Geom, img: &[T], c0: usize, n: usize, buf: &mut [T]) {
        let (ph, pw) = geo.p.padding;
        let (h, w, wp, zero) = (geo.h, geo.w, self.wp, T::default());
        for c in 0..n {
            let src = &img[(c0 + c) * h * w..][..h * w];
            let dst = &mut buf[c * self.plane()..][..self.plane()];
            if h == 0 {
                dst.fill(zero);
                continue;
            }
            // Only the border is zeroed: top rows, the left and right padding of each row, the
            // bottom rows.
            dst[..ph * wp + pw].fill(zero);
            for y in 0..h {
                let row = &mut dst[(y + ph) * wp + pw..];
                row[..w].copy_from_slice(&src[y * w..][..w]);
                let next = if y + 1 < h { 2 * pw } else { row.len() - w };
                row[w..w + next].fill(zero);
            }
        }
        buf[n * self.plane()..].fill(zero);
    }
}

impl Geom {
    fn taps(&self) -> bool {
        self.p.stride == 1 && !self.direct() && self.cg() >= TAPS_MIN_CG
    }
    /// Stride 1 with few channels per group: blocks of images unfolded on the padded width
    /// ([`wide`]).
    fn wide(&self) -> bool {
        self.p.stride == 1 && !self.direct() && self.cg() < TAPS_MIN_CG
    }
}

/// The input gradient of a stride-1 convolution as a forward convolution of `dy`: kernel
/// `W'[g, c, o, i, j] = W[g, o, c, kh - 1 - i, kw - 1 - j]` (input and output channels swapped
/// within each group, taps flipped), padding `dilation * (k - 1) - padding` per axis. Its
/// products reduce over `og * kh * kw` values instead of `og`, and write `cg` rows instead of
/// `cg * kh * kw` that a fold would add back. `None` when the padding exceeds the kernel's span
/// (the transposed padding would be negative).
fn transposed<T: KernelFloat>(geo: &Geom, k: &[T]) -> Option<(Geom, Vec<T>)> {
    let d = geo.p.dilation;
    let (ph, pw) = geo.p.padding;
    if geo.p.stride != 1 || ph > d * (geo.kh - 1) || pw > d * (geo.kw - 1) {
        return None;
    }
    let (g, cg, og, kh, kw) = (geo.p.groups, geo.cg(), geo.og(), geo.kh, geo.kw);
    let mut tk = vec![T::default(); k.len()];
    for gi in 0..g {
        for o in 0..og {
            for c in 0..cg {
                let src = &k[((gi * og + o) * cg + c) * kh * kw..][..kh * kw];
                let dst = &mut tk[((gi * cg + c) * og + o) * kh * kw..][..kh * kw];
                for (t, v) in dst.iter_mut().enumerate() {
                    *v = src[kh * kw - 1 - t];
                }
            }
        }
    }
    let p = Params { padding: (d * (kh - 1) - ph, d * (kw - 1) - pw), ..geo.p };
    let tg = Geom::new(&[geo.n, geo.o, geo.ho, geo.wo], &[geo.c, og, kh, kw], p).ok()?;
    (tg.ho == geo.h && tg.wo == geo.w).then_some((tg, tk))
}

/// Runs `f(i0, nb, block, scratch, par)` over the blocks of `lay.nb` images of `out` (`per`
/// values per image): blocks over the threads when there are at least as many blocks as
/// threads, else one block after the other with every thread in each product.
fn wide_blocks<T: KernelFloat>(geo: &Geom, lay: &wide::Wide, out: &mut [T], per: usize, f: impl Fn(usize, usize, &mut [T], &mut wide::Scratch<T>, Parallelism) + Sync) {
    let threads = rayon::current_num_threads().max(1);
    let blocks = geo.n.div_ceil(lay.nb);
    if blocks >= threads || threads == 1 {
        // At least blocks / threads blocks per job: one scratch allocation per thread.
        let jobs = out.par_chunks_mut(lay.nb * per).enumerate().with_min_len(blocks.div_ceil(threads));
        jobs.for_each_init(|| lay.scratch(geo), |s, (b, o)| f(b * lay.nb, o.len() / per, o, s, Parallelism::None));
    } else {
        let mut s = lay.scratch(geo);
        for (b, o) in out.chunks_mut(lay.nb * per).enumerate() {
            f(b * lay.nb, o.len() / per, o, &mut s, Parallelism::Rayon(threads));
        }
    }
}

/// Adds per-thread partial sums in their fixed order (the result does not depend on scheduling).
fn sum_parts<T: KernelFloat>(parts: Vec<Vec<T>>, len: usize) -> Vec<T> {
    let mut it = parts.into_iter();
    let mut total = it.next().unwrap_or_else(|| vec![T::default(); len]);
    for s in it {
        for (t, v) in total.iter_mut().zip(s) {
            *t += v;
        }
    }
    total
}

/// Forward of one image by taps: `out` `(o, ho, wo)`; `pad` and `acc` are scratch buffers.
fn forward_taps<T: KernelFloat>(img: &[T], k: &[T], geo: &Geom, out: &mut [T], pad: &mut Vec<T>, acc: &mut Vec<T>, par: Parallelism) {
    let pd = Padded::new(geo);
    let (cg, og, kk, wo, ho) = (geo.cg(), geo.og(), geo.k(), geo.wo, geo.ho);
    let cols = ho * pd.wp;
    pad.resize(pd.len(cg), T::default());
    acc.resize(og * cols, T::default());
    for g in 0..geo.p.groups {
        pd.fill(geo, img, g * cg, cg, pad);
        for i in 0..geo.kh {
            for j in 0..geo.kw {
                let tap = i * geo.kw + j;
                let first = tap == 0;
                // SAFETY: W's tap block is og x cg with strides (kk, kh * kw); the shifted padded
                // planes are cg x cols with strides (plane, 1) and end inside `pad` (the tail);
                // `acc` is og x cols row-major.
                unsafe {
                    gemm(og, cols, cg, acc.as_mut_ptr(), 1, cols as isize, !first, k[g * og * kk + tap..].as_ptr(), (geo.kh * geo.kw) as isize, kk as isize, pad[pd.offset(geo, i, j)..].as_ptr(), 1, pd.plane() as isize, T::from64(1.0), T::from64(1.0), false, false, false, par)
                }
            }
        }
        for o in 0..og {
            for y in 0..ho {
                out[((g * og + o) * ho + y) * wo..][..wo].copy_from_slice(&acc[o * cols + y * pd.wp..][..wo]);
            }
        }
    }
}

/// Lays `dy`'s group block `(og, ho, wo)` on the padded width (zeros in the extra columns).
fn widen<T: KernelFloat>(gy: &[T], og: usize, geo: &Geom, wp: usize, buf: &mut Vec<T>) {
    let cols = geo.ho * wp;
    buf.resize(og * cols, T::default());
    buf.fill(T::default());
    for o in 0..og {
        for y in 0..geo.ho {
            buf[o * cols + y * wp..][..geo.wo].copy_from_slice(&gy[(o * geo.ho + y) * geo.wo..][..geo.wo]);
        }
    }
}

/// Input gradient of one image by taps: `out` `(c, h, w)`.
fn input_grad_taps<T: KernelFloat>(gy: &[T], k: &[T], geo: &Geom, out: &mut [T], pad: &mut Vec<T>, wide: &mut Vec<T>, par: Parallelism) {
    let pd = Padded::new(geo);
    let (cg, og, kk, pix) = (geo.cg(), geo.og(), geo.k(), geo.pix());
    let cols = geo.ho * pd.wp;
    let (ph, pw) = geo.p.padding;
    pad.resize(pd.len(cg), T::default());
    for g in 0..geo.p.groups {
        widen(&gy[g * og * pix..], og, geo, pd.wp, wide);
        pad.fill(T::default());
        for i in 0..geo.kh {
            for j in 0..geo.kw {
                let tap = i * geo.kw + j;
                // SAFETY: W_tap^T is cg x og with strides (kh * kw, kk); `wide` og x cols
                // row-major; the destination, cg x cols with strides (plane, 1) at the tap's
                // offset, ends inside `pad`.
                unsafe {
                    gemm(cg, cols, og, pad[pd.offset(geo, i, j)..].as_mut_ptr(), 1, pd.plane() as isize, true, k[g * og * kk + tap..].as_ptr(), kk as isize, (geo.kh * geo.kw) as isize, wide.as_ptr(), 1, cols as isize, T::from64(1.0), T::from64(1.0), false, false, false, par)
                }
            }
        }
        for c in 0..cg {
            for y in 0..geo.h {
                out[((g * cg + c) * geo.h + y) * geo.w..][..geo.w].copy_from_slice(&pad[c * pd.plane() + (y + ph) * pd.wp + pw..][..geo.w]);
            }
        }
    }
}

/// Adds one image's weight gradient by taps into `acc` `(o, cg, kh, kw)`.
fn weight_grad_taps<T: KernelFloat>(img: &[T], gy: &[T], geo: &Geom, acc: &mut [T], accumulate: bool, pad: &mut Vec<T>, wide: &mut Vec<T>, par: Parallelism) {
    let pd = Padded::new(geo);
    let (cg, og, kk, pix) = (geo.cg(), geo.og(), geo.k(), geo.pix());
    let cols = geo.ho * pd.wp;
    pad.resize(pd.len(cg), T::default());
    for g in 0..geo.p.groups {
        pd.fill(geo, img, g * cg, cg, pad);
        widen(&gy[g * og * pix..], og, geo, pd.wp, wide);
        for i in 0..geo.kh {
            for j in 0..geo.kw {
                let tap = i * geo.kw + j;
                // SAFETY: `wide` is og x cols row-major; the shifted planes read as cols x cg
                // have strides (1, plane) and end inside `pad`; the destination og x cg with
                // strides (kk, kh * kw) lies in `acc`.
                unsafe {
                    gemm(og, cg, cols, acc[g * og * kk + tap..].as_mut_ptr(), (geo.kh * geo.kw) as isize, kk as isize, accumulate, wide.as_ptr(), 1, cols as isize, pad[pd.offset(geo, i, j)..].as_ptr(), pd.plane() as isize, 1, T::from64(1.0), T::from64(1.0), false, false, false, par)
                }
            }
        }
    }
}

/// Per-thread scratch: the unfolded image (or the padded planes) and, for taps, the output
/// or gradient on the padded width.
fn scratch<T: KernelFloat>(geo: &Geom) -> (Vec<T>, Vec<T>) {
    if geo.taps() || geo.direct() {
        (Vec::new(), Vec::new())
    } else {
        (vec![T::default(); geo.k() * geo.pix()], Vec::new())
    }
}

fn forward<T: KernelFloat>(x: &[T], k: &[T], geo: &Geom) -> Vec<T> {
    let (og, kk, pix, chw) = (geo.og(), geo.k(), geo.pix(), geo.c * geo.h * geo.w);
    if geo.n * geo.o * pix == 0 {
        return Vec::new();
    }
    // Few channels per group, any stride: the direct kernels where they apply (they allocate
    // their own output, written once without a zero-fill pass).
    if !geo.direct() && geo.cg() < TAPS_MIN_CG {
        if let Some(y) = direct::forward(x, k, geo) {
            return y;
        }
    }
    let mut y = vec![T::default(); geo.n * geo.o * pix];
    if geo.wide() {
        let lay = wide::Wide::new(geo, rayon::current_num_threads());
        wide_blocks(geo, &lay, &mut y, geo.o * pix, |i0, nb, out, s, par| wide::forward(x, k, geo, &lay, i0, nb, out, s, par));
        return y;
    }
    let (_, by_image, par) = schedule(geo.n);
    let image = |i: usize, out: &mut [T], (col, acc): &mut (Vec<T>, Vec<T>)| {
        let img = &x[i * chw..][..chw];
        if geo.taps() {
            return forward_taps(img, k, geo, out, col, acc, par);
        }
        for g in 0..geo.p.groups {
            let rhs = if geo.direct() {
                img[g * kk * pix..].as_ptr()
            } else {
                unfold(img, g, geo, col);
                col.as_ptr()
            };
            // SAFETY: the kernel block of group g is og x kk row-major, the unfolded image
            // kk x pix row-major, and `out`'s group block og x pix row-major, all in bounds.
            unsafe { product(og, pix, kk, out[g * og * pix..].as_mut_ptr(), false, (k[g * og * kk..].as_ptr(), 1, kk as isize), (rhs, 1, pix as isize), par) }
        }
    };
    if by_image {
        y.par_chunks_mut(geo.o * pix).enumerate().for_each_init(|| scratch(geo), |sc, (i, out)| image(i, out, sc));
    } else {
        let mut sc = scratch(geo);
        for (i, out) in y.chunks_mut(geo.o * pix).enumerate() {
            image(i, out, &mut sc);
        }
    }
    y
}

fn input_grad<T: KernelFloat>(dy: &[T], k: &[T], geo: &Geom) -> Vec<T> {
    let (og, kk, pix, chw) = (geo.og(), geo.k(), geo.pix(), geo.c * geo.h * geo.w);
    if geo.n * chw == 0 {
        return Vec::new();
    }
    if geo.wide() {
        if let Some((tg, tk)) = transposed(geo, k) {
            return forward(dy, &tk, &tg);
        }
    }
    let mut dx = vec![T::default(); geo.n * chw];
    if geo.wide() {
        let lay = wide::Wide::new(geo, rayon::current_num_threads());
        wide_blocks(geo, &lay, &mut dx, chw, |i0, nb, out, s, par| wide::input_grad(dy, k, geo, &lay, i0, nb, out, s, par));
        return dx;
    }
    let (_, by_image, par) = schedule(geo.n);
    let image = |i: usize, out: &mut [T], (col, wide): &mut (Vec<T>, Vec<T>)| {
        let gy = &dy[i * geo.o * pix..][..geo.o * pix];
        if geo.taps() {
            return input_grad_taps(gy, k, geo, out, col, wide, par);
        }
        for g in 0..geo.p.groups {
            // W[g]^T: kk x og, read from the og x kk row-major kernel block.
            let lhs = (k[g * og * kk..].as_ptr(), kk as isize, 1);
            let rhs = (gy[g * og * pix..].as_ptr(), 1, pix as isize);
            if geo.direct() {
                // SAFETY: group g's channels of `out` are a kk x pix row-major block.
                unsafe { product(kk, pix, og, out[g * kk * pix..].as_mut_ptr(), false, lhs, rhs, par) }
            } else {
                // SAFETY: `col` holds kk x pix elements.
                unsafe { product(kk, pix, og, col.as_mut_ptr(), false, lhs, rhs, par) }
                fold(col, g, geo, out);
            }
        }
    };
    if by_image {
        dx.par_chunks_mut(chw).enumerate().for_each_init(|| scratch(geo), |sc, (i, out)| image(i, out, sc));
    } else {
        let mut sc = scratch(geo);
        for (i, out) in dx.chunks_mut(chw).enumerate() {
            image(i, out, &mut sc);
        }
    }
    dx
}

fn weight_grad<T: KernelFloat>(x: &[T], dy: &[T], geo: &Geom) -> Vec<T> {
    let (og, kk, pix, chw) = (geo.og(), geo.k(), geo.pix(), geo.c * geo.h * geo.w);
    let len = geo.o * kk;
    if len == 0 || geo.n == 0 || pix == 0 {
        return vec![T::default(); len];
    }
    // Few channels per group, stride 1: the direct kernel where it applies.
    if !geo.direct() && geo.cg() < TAPS_MIN_CG {
        if let Some(dw) = direct_wgrad::weight_grad(x, dy, geo) {
            return dw;
        }
    }
    let (threads, by_image, par) = schedule(geo.n);
    if geo.wide() {
        let lay = wide::Wide::new(geo, threads);
        let blocks = geo.n.div_ceil(lay.nb);
        // Blocks [a, b) into one partial sum.
        let partial = |a: usize, b: usize, par: Parallelism| -> Vec<T> {
            let mut acc = vec![T::default(); len];
            let mut s = lay.scratch(geo);
            for blk in a..b {
                let i0 = blk * lay.nb;
                wide::weight_grad(x, dy, geo, &lay, i0, lay.nb.min(geo.n - i0), &mut acc, blk > a, &mut s, par);
            }
            acc
        };
        if blocks < threads || threads == 1 {
            return partial(0, blocks, if threads == 1 { Parallelism::None } else { Parallelism::Rayon(threads) });
        }
        let bounds: Vec<(usize, usize)> = (0..threads).map(|t| (t * blocks / threads, (t + 1) * blocks / threads)).collect();
        return sum_parts(bounds.par_iter().map(|&(a, b)| partial(a, b, Parallelism::None)).collect(), len);
    }
    // Images [a, b) into one partial sum.
    let partial = |a: usize, b: usize| -> Vec<T> {
        let mut acc = vec![T::default(); len];
        let (mut col, mut wide) = scratch(geo);
        for i in a..b {
            let img = &x[i * chw..][..chw];
            let gy = &dy[i * geo.o * pix..][..geo.o * pix];
            if geo.taps() {
                weight_grad_taps(img, gy, geo, &mut acc, i > a, &mut col, &mut wide, par);
                continue;
            }
            for g in 0..geo.p.groups {
                // cols^T: pix x kk, read from the kk x pix row-major unfolding.
                let rhs = if geo.direct() {
                    img[g * kk * pix..].as_ptr()
                } else {
                    unfold(img, g, geo, &mut col);
                    col.as_ptr()
                };
                // SAFETY: dy's group block is og x pix row-major, the unfolding kk x pix, the
                // accumulator's group block og x kk row-major.
                unsafe { product(og, kk, pix, acc[g * og * kk..].as_mut_ptr(), i > a, (gy[g * og * pix..].as_ptr(), 1, pix as isize), (rhs, pix as isize, 1), par) }
            }
        }
        acc
    };
    if !by_image {
        return partial(0, geo.n);
    }
    let parts = threads.min(geo.n);
    let bounds: Vec<(usize, usize)> = (0..parts).map(|t| (t * geo.n / parts, (t + 1) * geo.n / parts)).collect();
    sum_parts(bounds.par_iter().map(|&(a, b)| partial(a, b)).collect(), len)
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    super::float::contiguous_slice(v, l, "conv2d", what)
}

/// Runs `f32`/`f64` kernels on two CPU storages.
fn dispatch(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    names: (&str, &str),
    f32k: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    f64k: impl FnOnce(&[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    Ok(match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(f32k(contiguous(a, l1, names.0)?, contiguous(b, l2, names.1)?)),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(f64k(contiguous(a, l1, names.0)?, contiguous(b, l2, names.1)?)),
        _ => candle_core::bail!("conv2d: two f32 or two f64 operands"),
    })
}

/// `y = conv(x, W)`: inputs `(x, W)`.
struct Forward(Params);
/// `dx` from `(dy, W)`, for an input of the stored size.
struct InputGrad(Params, [usize; 4]);
/// `dW` from `(x, dy)`, for a kernel of the stored size.
struct WeightGrad(Params, [usize; 4]);

fn check_out(geo: &Geom, dy: &Layout) -> Result<()> {
    if dy.dims() != geo.y_dims() {
        candle_core::bail!("conv2d: output gradient {:?} where {:?} was expected", dy.dims(), geo.y_dims());
    }
    Ok(())
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "deq-conv2d"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geom::new(l1.dims(), l2.dims(), self.0)?;
        let y = dispatch(s1, l1, s2, l2, ("input", "kernel"), |x, k| forward(x, k, &geo), |x, k| forward(x, k, &geo))?;
        Ok((y, Shape::from(geo.y_dims().to_vec())))
    }
    fn bwd(&self, x: &Tensor, k: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = if input_wanted(0) { Some(dy.apply_op2(k, InputGrad(self.0, dims4(x)?))?) } else { None };
        let dk = if input_wanted(1) { Some(x.apply_op2(&dy, WeightGrad(self.0, dims4(k)?))?) } else { None };
        Ok((dx, dk))
    }
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "deq-conv2d-input-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geom::new(&self.1, l2.dims(), self.0)?;
        check_out(&geo, l1)?;
        let dx = dispatch(s1, l1, s2, l2, ("output gradient", "kernel"), |dy, k| input_grad(dy, k, &geo), |dy, k| input_grad(dy, k, &geo))?;
        Ok((dx, Shape::from(self.1.to_vec())))
    }
    fn bwd(&self, dy: &Tensor, k: &Tensor, _dx: &Tensor, u: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dx is linear in dy (the transposed convolution) and in W.
        let u = u.contiguous()?;
        let ddy = if input_wanted(0) { Some(u.apply_op2(k, Forward(self.0))?) } else { None };
        let dk = if input_wanted(1) { Some(u.apply_op2(&dy.contiguous()?, WeightGrad(self.0, dims4(k)?))?) } else { None };
        Ok((ddy, dk))
    }
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "deq-conv2d-weight-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = Geom::new(l1.dims(), &self.1, self.0)?;
        check_out(&geo, l2)?;
        let dk = dispatch(s1, l1, s2, l2, ("input", "output gradient"), |x, dy| weight_grad(x, dy, &geo), |x, dy| weight_grad(x, dy, &geo))?;
        Ok((dk, Shape::from(self.1.to_vec())))
    }
    fn bwd(&self, x: &Tensor, dy: &Tensor, _dk: &Tensor, v: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let v = v.contiguous()?;
        let dx = if input_wanted(0) { Some(dy.contiguous()?.apply_op2(&v, InputGrad(self.0, dims4(x)?))?) } else { None };
        let ddy = if input_wanted(1) { Some(x.contiguous()?.apply_op2(&v, Forward(self.0))?) } else { None };
        Ok((dx, ddy))
    }
}

fn dims4(t: &Tensor) -> Result<[usize; 4]> {
    let d = t.dims();
    if d.len() != 4 {
        candle_core::bail!("conv2d: rank-4 tensor expected, got {d:?}");
    }
    Ok([d[0], d[1], d[2], d[3]])
}

/// 2-D convolution of `x` `(n, c, h, w)` with `kernel` `(o, c / groups, kh, kw)`, with the
/// arguments of candle's `Tensor::conv2d` (equal `padding` on both axes, `stride`,
/// `dilation`, `groups`). Differentiable to any order; f32/f64 on the CPU use this module's
/// kernels, everything else candle's `conv2d`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::arange(0f32, 16., &Device::Cpu)?.reshape((1, 1, 4, 4))?;
/// let k = Tensor::ones((2, 1, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
/// let y = deq_core::nn::conv2d(&x, &k, 1, 2, 1, 1)?;
/// assert_eq!(y.dims(), &[1, 2, 2, 2]);
/// assert_eq!(y.get(0)?.get(0)?.to_vec2::<f32>()?, vec![vec![10., 24.], vec![51., 90.]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn conv2d(x: &Tensor, kernel: &Tensor, padding: usize, stride: usize, dilation: usize, groups: usize) -> Result<Tensor> {
    conv2d_with(x, kernel, &Conv2dSpec { padding: (padding, padding), stride, dilation, groups })
}

fn fast_path(a: &Tensor, b: &Tensor) -> bool {
    a.device().is_cpu() && b.device().is_cpu() && a.dtype() == b.dtype() && matches!(a.dtype(), DType::F32 | DType::F64)
}

/// [`conv2d`] with separate row and column padding (RAFT's `1 x 5` and `5 x 1` convolutions pad
/// `(0, 2)` and `(2, 0)`). On other devices the input is zero-padded and candle's `conv2d` runs.
pub fn conv2d_with(x: &Tensor, kernel: &Tensor, spec: &Conv2dSpec) -> Result<Tensor> {
    Geom::new(x.dims(), kernel.dims(), *spec)?;
    if !fast_path(x, kernel) {
        let (ph, pw) = spec.padding;
        if ph == pw {
            return x.conv2d(kernel, ph, spec.stride, spec.dilation, spec.groups);
        }
        let xp = x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?;
        return xp.conv2d(kernel, 0, spec.stride, spec.dilation, spec.groups);
    }
    x.contiguous()?.apply_op2(&kernel.contiguous()?, Forward(*spec))
}

/// The gradients `(dx, dkernel)` of `sum(dy * conv2d_with(x, kernel, spec))`, without building
/// the forward graph (benchmarks, and custom backward passes). Differentiable like the
/// convolution itself; other devices and dtypes go through candle's autograd.
pub fn conv2d_backward(x: &Tensor, kernel: &Tensor, dy: &Tensor, spec: &Conv2dSpec) -> Result<(Tensor, Tensor)> {
    let geo = Geom::new(x.dims(), kernel.dims(), *spec)?;
    if dy.dims() != geo.y_dims() {
        candle_core::bail!("conv2d backward: output gradient {:?} where {:?} was expected", dy.dims(), geo.y_dims());
    }
    if !(fast_path(x, kernel) && fast_path(x, dy)) {
        let (xv, kv) = (candle_core::Var::from_tensor(x)?, candle_core::Var::from_tensor(kernel)?);
        let y = conv2d_with(xv.as_tensor(), kv.as_tensor(), spec)?;
        let grads = (y * dy)?.sum_all()?.backward()?;
        let get = |v: &candle_core::Var| grads.get(v.as_tensor()).cloned().ok_or_else(|| candle_core::Error::Msg("conv2d backward: no gradient".into()));
        return Ok((get(&xv)?, get(&kv)?));
    }
    let dy = dy.contiguous()?;
    let dx = dy.apply_op2(&kernel.contiguous()?, InputGrad(*spec, geo.x_dims()))?;
    let dk = x.contiguous()?.apply_op2(&dy, WeightGrad(*spec, geo.k_dims()))?;
    Ok((dx, dk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::max_abs_diff;
    use crate::rng::DeqRng;
    use candle_core::{Device, Var};

    /// Direct loops in f64: `y`, and for an output gradient `dy` the gradients `(dx, dk)`.
    fn reference(x: &Tensor, k: &Tensor, dy: Option<&Tensor>, spec: Conv2dSpec) -> (Tensor, Option<(Tensor, Tensor)>) {
        let geo = Geom::new(x.dims(), k.dims(), spec).unwrap();
        let xv: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        let kv: Vec<f64> = k.flatten_all().unwrap().to_vec1().unwrap();
        let dyv: Option<Vec<f64>> = dy.map(|d| d.flatten_all().unwrap().to_vec1().unwrap());
        let (cg, og) = (geo.cg(), geo.og());
        let mut y = vec![0f64; geo.n * geo.o * geo.pix()];
        let mut dx = vec![0f64; xv.len()];
        let mut dk = vec![0f64; kv.len()];
        for n in 0..geo.n {
            for o in 0..geo.o {
                let g = o / og;
                for oy in 0..geo.ho {
                    for ox in 0..geo.wo {
                        let yi = ((n * geo.o + o) * geo.ho + oy) * geo.wo + ox;
                        for c in 0..cg {
                            for i in 0..geo.kh {
                                for j in 0..geo.kw {
                                    let iy = (oy * spec.stride + i * spec.dilation) as isize - spec.padding.0 as isize;
                                    let ix = (ox * spec.stride + j * spec.dilation) as isize - spec.padding.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= geo.h as isize || ix >= geo.w as isize {
                                        continue;
                                    }
                                    let xi = ((n * geo.c + g * cg + c) * geo.h + iy as usize) * geo.w + ix as usize;
                                    let ki = ((o * cg + c) * geo.kh + i) * geo.kw + j;
                                    y[yi] += xv[xi] * kv[ki];
                                    if let Some(d) = &dyv {
                                        dx[xi] += d[yi] * kv[ki];
                                        dk[ki] += d[yi] * xv[xi];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let t = |v: Vec<f64>, d: [usize; 4]| Tensor::from_vec(v, d.to_vec(), &Device::Cpu).unwrap();
        let grads = dyv.map(|_| (t(dx, geo.x_dims()), t(dk, geo.k_dims())));
        (t(y, geo.y_dims()), grads)
    }

    /// (x dims, kernel dims, padding, stride, dilation, groups): odd sizes, strides, padding,
    /// dilation, groups, depthwise, 1x1, a kernel wider than the unpadded input.
    const CASES: &[([usize; 4], [usize; 4], usize, usize, usize, usize)] = &[
        // stride 1 with at least TAPS_MIN_CG input channels per group: the tap products
        ([2, 50, 5, 6], [3, 50, 3, 3], 1, 1, 1, 1),
        ([1, 96, 6, 5], [4, 48, 3, 2], 1, 1, 2, 2),
        ([2, 3, 7, 5], [4, 3, 3, 3], 1, 1, 1, 1),
        ([3, 4, 9, 8], [6, 2, 3, 3], 1, 2, 1, 2),
        ([2, 6, 6, 7], [6, 1, 3, 3], 1, 1, 1, 6),
        ([1, 5, 5, 5], [3, 5, 1, 1], 0, 1, 1, 1),
        ([2, 4, 6, 6], [2, 4, 1, 1], 0, 2, 1, 1),
        ([2, 2, 8, 9], [3, 2, 3, 2], 2, 1, 2, 1),
        ([3, 2, 4, 3], [2, 2, 5, 5], 2, 3, 1, 1),
        ([1, 3, 3, 4], [2, 3, 4, 4], 1, 1, 1, 1),
        ([4, 3, 10, 11], [5, 3, 5, 3], 0, 2, 1, 1),
        ([2, 2, 1, 2], [3, 2, 7, 7], 3, 1, 1, 1),
        // padding beyond the kernel's span: the input gradient cannot be a forward convolution
        ([3, 3, 4, 5], [4, 3, 1, 3], 1, 1, 1, 1),
        // ... with groups and several images per block
        ([3, 4, 5, 4], [6, 2, 3, 1], 1, 1, 1, 2),
    ];

    #[test]
    fn equals_direct_loops_and_candle_forward_and_gradients_f64_and_f32() {
        let mut rng = DeqRng::new(11);
        for &(xd, kd, pad, stride, dil, groups) in CASES {
            let spec = Conv2dSpec { padding: (pad, pad), stride, dilation: dil, groups };
            let x = Var::from_tensor(&rng.randn(xd.to_vec(), DType::F64, &Device::Cpu).unwrap()).unwrap();
            let k = Var::from_tensor(&rng.randn(kd.to_vec(), DType::F64, &Device::Cpu).unwrap()).unwrap();
            let ours = conv2d(x.as_tensor(), k.as_tensor(), pad, stride, dil, groups).unwrap();
            let theirs = x.as_tensor().conv2d(k.as_tensor(), pad, stride, dil, groups).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "{xd:?} {kd:?}");
            assert!(max_abs_diff(&ours, &theirs).unwrap() < 1e-12, "forward against candle {xd:?} {kd:?}");
            let up = rng.randn(ours.dims().to_vec(), DType::F64, &Device::Cpu).unwrap();
            let (direct, grads) = reference(x.as_tensor(), k.as_tensor(), Some(&up), spec);
            let (dx_ref, dk_ref) = grads.unwrap();
            assert!(max_abs_diff(&ours, &direct).unwrap() < 1e-12, "forward against loops {xd:?} {kd:?}");
            let ga = (&ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (v, want, what) in [(&x, &dx_ref, "input"), (&k, &dk_ref, "kernel")] {
                let d = max_abs_diff(ga.get(v.as_tensor()).unwrap(), want).unwrap();
                assert!(d < 1e-11, "{what} gradient {xd:?} {kd:?}: {d}");
            }
            // The f32 path against the f64 one.
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let y32 = conv2d(&f32(x.as_tensor()), &f32(k.as_tensor()), pad, stride, dil, groups).unwrap();
            assert!(max_abs_diff(&y32, &ours).unwrap() < 1e-4, "f32 forward {xd:?} {kd:?}");
            let (dx32, dk32) = conv2d_backward(&f32(x.as_tensor()), &f32(k.as_tensor()), &f32(&up), &spec).unwrap();
            assert!(max_abs_diff(&dx32, &dx_ref).unwrap() < 1e-4 && max_abs_diff(&dk32, &dk_ref).unwrap() < 1e-3, "f32 gradients {xd:?} {kd:?}");
        }
    }

    #[test]
    fn gradients_match_finite_differences_to_second_order() {
        // f(x, W) = sum(u * conv(x, W)) + sum((v * dconv/dx^T u)^2): the second term
        // differentiates the input-gradient op, whose gradient in turn runs the forward and
        // weight-gradient ops.
        let mut rng = DeqRng::new(5);
        for &(xd, kd, pad, stride, dil, groups) in &CASES[..8] {
            let x = Var::from_tensor(&rng.randn(xd.to_vec(), DType::F64, &Device::Cpu).unwrap()).unwrap();
            let k = Var::from_tensor(&rng.randn(kd.to_vec(), DType::F64, &Device::Cpu).unwrap()).unwrap();
            let y_dims = conv2d(x.as_tensor(), k.as_tensor(), pad, stride, dil, groups).unwrap().dims().to_vec();
            let u = rng.randn(y_dims, DType::F64, &Device::Cpu).unwrap();
            let v = rng.randn(xd.to_vec(), DType::F64, &Device::Cpu).unwrap();
            let w2 = rng.randn(kd.to_vec(), DType::F64, &Device::Cpu).unwrap();
            let loss = |x: &Tensor, k: &Tensor| -> Tensor {
                let y = conv2d(x, k, pad, stride, dil, groups).unwrap();
                let dx = u.apply_op2(k, InputGrad(Params { padding: (pad, pad), stride, dilation: dil, groups }, xd)).unwrap();
                let dk = x.apply_op2(&u, WeightGrad(Params { padding: (pad, pad), stride, dilation: dil, groups }, kd)).unwrap();
                let a = (&y * &u).unwrap().sum_all().unwrap();
                let b = (&dx * &v).unwrap().sqr().unwrap().sum_all().unwrap();
                let c = (&dk * &w2).unwrap().sqr().unwrap().sum_all().unwrap();
                ((a + b).unwrap() + c).unwrap()
            };
            let grads = loss(x.as_tensor(), k.as_tensor()).backward().unwrap();
            for v in [&x, &k] {
                let g: Vec<f64> = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                for idx in (0..base.len()).step_by(base.len() / 7 + 1) {
                    let eps = 1e-5;
                    let at = |delta: f64| {
                        let mut p = base.clone();
                        p[idx] += delta;
                        let t = Tensor::from_vec(p, v.as_tensor().dims(), &Device::Cpu).unwrap();
                        let l = if std::ptr::eq(v, &x) { loss(&t, k.as_tensor()) } else { loss(x.as_tensor(), &t) };
                        l.to_scalar::<f64>().unwrap()
                    };
                    let fd = (at(eps) - at(-eps)) / (2.0 * eps);
                    assert!((fd - g[idx]).abs() < 1e-6 * (1.0 + fd.abs()), "{xd:?} {kd:?} idx {idx}: {fd} vs {}", g[idx]);
                }
            }
        }
    }

    #[test]
    fn batches_smaller_than_the_pool_use_threaded_products_and_agree() {
        // A batch smaller than the pool splits each product over the threads instead; both the
        // unfolding (4 channels) and the tap products (64 channels, stride 1).
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let mut rng = DeqRng::new(2);
        for (c, stride, ho, wo) in [(4usize, 2usize, 6usize, 5usize), (64, 1, 12, 10)] {
            let x = rng.randn((2, c, 12, 10), DType::F64, &Device::Cpu).unwrap();
            let k = rng.randn((5, c, 3, 3), DType::F64, &Device::Cpu).unwrap();
            let dy = rng.randn((2, 5, ho, wo), DType::F64, &Device::Cpu).unwrap();
            let spec = Conv2dSpec { padding: (1, 1), stride, dilation: 1, groups: 1 };
            let run = || {
                let (dx, dk) = conv2d_backward(&x, &k, &dy, &spec).unwrap();
                (conv2d_with(&x, &k, &spec).unwrap(), dx, dk)
            };
            let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(run);
            let threaded = pool.install(run);
            assert!(max_abs_diff(&single.0, &threaded.0).unwrap() < 1e-12);
            assert!(max_abs_diff(&single.1, &threaded.1).unwrap() < 1e-12);
            assert!(max_abs_diff(&single.2, &threaded.2).unwrap() < 1e-12);
            let (direct, grads) = reference(&x, &k, Some(&dy), spec);
            let (dx, dk) = grads.unwrap();
            assert!(max_abs_diff(&threaded.0, &direct).unwrap() < 1e-11);
            assert!(max_abs_diff(&threaded.1, &dx).unwrap() < 1e-11);
            assert!(max_abs_diff(&threaded.2, &dk).unwrap() < 1e-11);
        }
    }

    #[test]
    fn image_blocks_cover_uneven_batches_on_any_pool() {
        // The wide path puts several images into one product: 7 images in one block on one
        // thread, in blocks 4 + 3 on two and 3 + 3 + 1 on three; a dilated kernel and two
        // groups; every pool agrees with the loops.
        let mut rng = DeqRng::new(9);
        for (xd, kd, pad, dil, groups) in [([7, 4, 5, 6], [6, 4, 3, 3], 1, 1, 1), ([7, 6, 7, 5], [4, 3, 3, 2], 2, 2, 2)] {
            let spec = Conv2dSpec { padding: (pad, pad), stride: 1, dilation: dil, groups };
            let geo = Geom::new(&xd, &kd, spec).unwrap();
            assert!(geo.wide());
            let x = rng.randn(xd.to_vec(), DType::F64, &Device::Cpu).unwrap();
            let k = rng.randn(kd.to_vec(), DType::F64, &Device::Cpu).unwrap();
            let dy = rng.randn(geo.y_dims().to_vec(), DType::F64, &Device::Cpu).unwrap();
            let (direct, grads) = reference(&x, &k, Some(&dy), spec);
            let (dx_ref, dk_ref) = grads.unwrap();
            for threads in [1usize, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                assert_eq!(wide::Wide::new(&geo, threads).nb, 7usize.div_ceil(threads));
                let (y, dx, dk) = pool.install(|| {
                    let (dx, dk) = conv2d_backward(&x, &k, &dy, &spec).unwrap();
                    (conv2d_with(&x, &k, &spec).unwrap(), dx, dk)
                });
                assert!(max_abs_diff(&y, &direct).unwrap() < 1e-12, "{threads} threads {kd:?}");
                assert!(max_abs_diff(&dx, &dx_ref).unwrap() < 1e-11, "{threads} threads {kd:?}");
                assert!(max_abs_diff(&dk, &dk_ref).unwrap() < 1e-11, "{threads} threads {kd:?}");
            }
        }
    }

    #[test]
    fn direct_f32_kernels_match_the_f64_loops() {
        // Output channels not a multiple of the register block, groups, dilation, a kernel
        // wider than the image, strides 2 and 3 (phase planes); images over up to three
        // threads and on one.
        let mut rng = DeqRng::new(12);
        let cases = [
            ([6, 16, 14, 14], [32, 16, 3, 3], 1, 1, 1, 1),
            // positions beyond one chunk of the weight gradient; 1x5 and 5x1 taps
            ([2, 5, 40, 37], [6, 5, 3, 3], 1, 1, 1, 1),
            ([3, 8, 9, 11], [5, 8, 1, 5], 0, 1, 1, 1),
            ([2, 8, 11, 9], [4, 4, 5, 1], 2, 1, 1, 2),
            ([3, 6, 7, 9], [10, 3, 3, 3], 2, 1, 2, 2),
            ([4, 3, 5, 4], [5, 3, 1, 5], 2, 1, 1, 1),
            ([3, 2, 2, 3], [7, 2, 5, 5], 2, 1, 1, 1),
            // strides: phase planes
            ([4, 16, 14, 14], [16, 16, 3, 3], 1, 2, 1, 1),
            ([3, 1, 28, 27], [6, 1, 3, 3], 1, 2, 1, 1),
            ([3, 4, 11, 10], [6, 2, 3, 2], 2, 3, 2, 2),
            ([2, 3, 16, 15], [4, 3, 7, 7], 3, 2, 1, 1),
        ];
        for (xd, kd, pad, stride, dil, groups) in cases {
            let spec = Conv2dSpec { padding: (pad, pad), stride, dilation: dil, groups };
            let geo = Geom::new(&xd, &kd, spec).unwrap();
            let x = rng.randn(xd.to_vec(), DType::F64, &Device::Cpu).unwrap();
            let k = rng.randn(kd.to_vec(), DType::F64, &Device::Cpu).unwrap();
            let (want, _) = reference(&x, &k, None, spec);
            let (x32, k32) = (x.to_dtype(DType::F32).unwrap(), k.to_dtype(DType::F32).unwrap());
            let xs: Vec<f32> = x32.flatten_all().unwrap().to_vec1().unwrap();
            let ks: Vec<f32> = k32.flatten_all().unwrap().to_vec1().unwrap();
            for threads in [1usize, xd[0].min(3)] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let Some(y) = pool.install(|| direct::forward(&xs, &ks, &geo)) else {
                    assert!(!(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")), "the direct kernels apply here");
                    return;
                };
                let y = Tensor::from_vec(y, geo.y_dims().to_vec(), &Device::Cpu).unwrap();
                assert!(max_abs_diff(&y, &want).unwrap() < 1e-4, "{kd:?} on {threads} threads: {}", max_abs_diff(&y, &want).unwrap());
                let through_op = pool.install(|| conv2d_with(&x32, &k32, &spec).unwrap());
                assert_eq!(max_abs_diff(&through_op, &y).unwrap(), 0.0, "conv2d_with takes the direct path");
                // The direct weight gradient (stride 1) against the loops' and through the op.
                let dy = rng.randn(geo.y_dims().to_vec(), DType::F64, &Device::Cpu).unwrap();
                let (_, grads) = reference(&x, &k, Some(&dy), spec);
                let dk_want = grads.unwrap().1;
                let dy32 = dy.to_dtype(DType::F32).unwrap();
                let dys: Vec<f32> = dy32.flatten_all().unwrap().to_vec1().unwrap();
                match pool.install(|| direct_wgrad::weight_grad(&xs, &dys, &geo)) {
                    Some(dk) => {
                        assert_eq!(stride, 1, "the direct weight gradient is for stride 1 only");
                        let dk = Tensor::from_vec(dk, geo.k_dims().to_vec(), &Device::Cpu).unwrap();
                        let scale = dk_want.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                        assert!(max_abs_diff(&dk, &dk_want).unwrap() < 1e-5 * (1.0 + scale), "weight gradient {kd:?} on {threads} threads: {}", max_abs_diff(&dk, &dk_want).unwrap());
                        let (_, dk_op) = pool.install(|| conv2d_backward(&x32, &k32, &dy32, &spec).unwrap());
                        assert_eq!(max_abs_diff(&dk_op, &dk).unwrap(), 0.0, "conv2d_backward takes the direct weight gradient");
                    }
                    None => assert!(stride != 1, "the direct weight gradient applies to {kd:?}"),
                }
            }
            // Not for f64, and not for fewer images than threads.
            assert!(direct::forward(&x.flatten_all().unwrap().to_vec1::<f64>().unwrap(), &k.flatten_all().unwrap().to_vec1::<f64>().unwrap(), &geo).is_none());
            let pool = rayon::ThreadPoolBuilder::new().num_threads(xd[0] + 1).build().unwrap();
            assert!(pool.install(|| direct::forward(&xs, &ks, &geo)).is_none());
        }
        // Not for many output channels per group.
        let geo = Geom::new(&[2, 3, 5, 5], &[65, 3, 3, 3], Conv2dSpec::padded(1)).unwrap();
        assert!(direct::forward(&vec![0f32; 150], &vec![0f32; 65 * 27], &geo).is_none());
        assert!(direct_wgrad::weight_grad(&vec![0f32; 150], &vec![0f32; 2 * 65 * 25], &geo).is_none());
        let geo64 = Geom::new(&[2, 3, 5, 5], &[64, 3, 3, 3], Conv2dSpec::padded(1)).unwrap();
        let avx = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        assert_eq!(direct_wgrad::weight_grad(&vec![1f32; 150], &vec![1f32; 2 * 64 * 25], &geo64).map(|d| d.len()), Some(64 * 27).filter(|_| avx));
        let geo = Geom::new(&[2, 3, 5, 5], &[64, 3, 3, 3], Conv2dSpec::padded(1)).unwrap();
        assert_eq!(direct::forward(&vec![1f32; 150], &vec![0f32; 64 * 27], &geo).map(|y| y.len()), Some(2 * 64 * 25).filter(|_| std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")));
    }

    #[test]
    fn pruned_backward_skips_the_unwanted_gradient() {
        let mut rng = DeqRng::new(8);
        let x = rng.randn((2, 3, 5, 5), DType::F64, &Device::Cpu).unwrap();
        let k = rng.randn((4, 3, 3, 3), DType::F64, &Device::Cpu).unwrap();
        let y = conv2d(&x, &k, 1, 1, 1, 1).unwrap();
        let dy = y.ones_like().unwrap();
        let op = Forward(Params { padding: (1, 1), stride: 1, dilation: 1, groups: 1 });
        let (dx, dk) = crate::grad::with_wanted(&[true, false], || op.bwd(&x, &k, &y, &dy)).unwrap();
        assert!(dx.is_some() && dk.is_none());
        let (dx, dk) = crate::grad::with_wanted(&[false, true], || op.bwd(&x, &k, &y, &dy)).unwrap();
        assert!(dx.is_none() && dk.is_some());
    }

    #[test]
    fn uneven_padding_and_the_backward_function() {
        // RAFT's separable GRU: 1x5 with padding (0, 2) and 5x1 with padding (2, 0).
        let mut rng = DeqRng::new(4);
        let x = Var::from_tensor(&rng.randn((2, 3, 6, 7), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let wide = Var::from_tensor(&rng.randn((2, 64, 6, 7), DType::F64, &Device::Cpu).unwrap()).unwrap();
        for (x, kd, pad) in [(&x, (4, 3, 1, 5), (0, 2)), (&x, (4, 3, 5, 1), (2, 0)), (&x, (2, 3, 3, 3), (0, 1)), (&wide, (4, 64, 1, 5), (0, 2)), (&wide, (3, 64, 5, 1), (2, 0))] {
            let spec = Conv2dSpec { padding: pad, stride: 1, dilation: 1, groups: 1 };
            let geo = Geom::new(x.as_tensor().dims(), &[kd.0, kd.1, kd.2, kd.3], spec).unwrap();
            assert_eq!(geo.taps(), kd.1 >= TAPS_MIN_CG, "both paths are covered");
            let k = Var::from_tensor(&rng.randn(kd, DType::F64, &Device::Cpu).unwrap()).unwrap();
            let ours = conv2d_with(x.as_tensor(), k.as_tensor(), &spec).unwrap();
            let padded = x.as_tensor().pad_with_zeros(2, pad.0, pad.0).unwrap().pad_with_zeros(3, pad.1, pad.1).unwrap();
            let theirs = padded.conv2d(k.as_tensor(), 0, 1, 1, 1).unwrap();
            assert!(max_abs_diff(&ours, &theirs).unwrap() < 1e-12, "{kd:?}");
            let dy = rng.randn(ours.dims().to_vec(), DType::F64, &Device::Cpu).unwrap();
            let (dx, dk) = conv2d_backward(x.as_tensor(), k.as_tensor(), &dy, &spec).unwrap();
            let g = (&theirs * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_abs_diff(&dx, g.get(x.as_tensor()).unwrap()).unwrap() < 1e-12, "{kd:?}");
            assert!(max_abs_diff(&dk, g.get(k.as_tensor()).unwrap()).unwrap() < 1e-12, "{kd:?}");
            // The f32 kernels against the f64 ones.
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let (dx32, dk32) = conv2d_backward(&f32(x.as_tensor()), &f32(k.as_tensor()), &f32(&dy), &spec).unwrap();
            assert!(max_abs_diff(&dx32, &dx).unwrap() < 1e-4 && max_abs_diff(&dk32, &dk).unwrap() < 1e-4, "{kd:?}");
        }
        let bad = Tensor::zeros((2, 4, 6, 6), DType::F64, &Device::Cpu).unwrap();
        let k = Tensor::zeros((4, 3, 1, 5), DType::F64, &Device::Cpu).unwrap();
        assert!(conv2d_backward(x.as_tensor(), &k, &bad, &Conv2dSpec { padding: (0, 2), stride: 1, dilation: 1, groups: 1 }).is_err());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = Tensor::zeros((1, 4, 5, 5), DType::F32, &Device::Cpu).unwrap();
        for (k, pad, stride, groups) in [((2, 3, 3, 3), 1, 1, 1), ((3, 2, 3, 3), 1, 1, 2), ((2, 4, 9, 9), 1, 1, 1), ((2, 4, 3, 3), 1, 0, 1)] {
            let k = Tensor::zeros(k, DType::F32, &Device::Cpu).unwrap();
            assert!(conv2d(&x, &k, pad, stride, 1, groups).is_err());
        }
        let k = Tensor::zeros((2, 4, 3, 3), DType::F64, &Device::Cpu).unwrap();
        assert!(conv2d(&x, &k, 1, 1, 1, 1).is_err(), "mixed dtypes");
    }
}
