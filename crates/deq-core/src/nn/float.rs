//! The element types of the CPU kernels (f32 and f64): values are widened to f64 for sums and
//! narrowed back for outputs; exponentials run in the type's own precision.

/// An element type of the fused CPU kernels.
pub trait KernelFloat:
    Copy + Send + Sync + Default + PartialOrd + std::ops::Add<Output = Self> + std::ops::AddAssign + std::ops::Mul<Output = Self> + 'static
{
    /// The value as f64.
    fn to64(self) -> f64;
    /// An f64 rounded to this type.
    fn from64(v: f64) -> Self;
    /// `exp(self - m)` computed in this type's precision (f32's `exp` is several times faster
    /// than f64's), widened.
    fn exp_minus(self, m: f64) -> f64;
}

impl KernelFloat for f32 {
    fn to64(self) -> f64 {
        self as f64
    }
    fn from64(v: f64) -> Self {
        v as f32
    }
    fn exp_minus(self, m: f64) -> f64 {
        (self - m as f32).exp() as f64
    }
}

impl KernelFloat for f64 {
    fn to64(self) -> f64 {
        self
    }
    fn from64(v: f64) -> Self {
        v
    }
    fn exp_minus(self, m: f64) -> f64 {
        (self - m).exp()
    }
}

/// The elements of a contiguous layout `l` over `v`, or an error naming the op and the
/// operand (`op`: "conv2d", `what`: "kernel").
pub(crate) fn contiguous_slice<'a, T>(v: &'a [T], l: &candle_core::Layout, op: &str, what: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: the {what} must be contiguous"),
    }
}

/// `f` applied to every element of `x`, in parallel chunks of `chunk` values, into a new vector
/// that is never zero-filled first (a zeroed output costs one more pass over memory).
pub(crate) fn par_map<T: Copy + Send + Sync, U: Send>(x: &[T], chunk: usize, f: impl Fn(T) -> U + Sync) -> Vec<U> {
    par_zip_map(x, x, chunk, |a, _| f(a))
}

/// `f(a[i], b[i])` for every `i < min(a.len(), b.len())`, like [`par_map`].
pub(crate) fn par_zip_map<T: Copy + Send + Sync, S: Copy + Send + Sync, U: Send>(a: &[T], b: &[S], chunk: usize, f: impl Fn(T, S) -> U + Sync) -> Vec<U> {
    par_zip_rows(a, b, chunk, |_, a, b, o| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            o.write(f(a, b));
        }
    })
}

/// A new vector of `x.len()` values written row by row in parallel: `fill(r, x_row, out_row)`
/// must write every element of `out_row` (rows of `row` values, the last one possibly shorter).
pub(crate) fn par_rows<T: Sync, U: Send>(x: &[T], row: usize, fill: impl Fn(usize, &[T], &mut [std::mem::MaybeUninit<U>]) + Sync) -> Vec<U> {
    par_zip_rows(x, x, row, |r, a, _, o| fill(r, a, o))
}

/// [`par_rows`] over two inputs (`min(a.len(), b.len())` values): `fill(r, a_row, b_row,
/// out_row)` must write every element of `out_row`.
pub(crate) fn par_zip_rows<T: Sync, S: Sync, U: Send>(a: &[T], b: &[S], row: usize, fill: impl Fn(usize, &[T], &[S], &mut [std::mem::MaybeUninit<U>]) + Sync) -> Vec<U> {
    use rayon::prelude::*;
    let (len, row) = (a.len().min(b.len()), row.max(1));
    let mut out: Vec<U> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(row).zip(a[..len].par_chunks(row).zip(b[..len].par_chunks(row))).enumerate().for_each(|(r, (o, (a, b)))| {
        debug_assert!(o.len() == a.len() && o.len() == b.len());
        fill(r, a, b, o);
    });
    // SAFETY: the rows of `out`'s first `len` slots pair with rows of `a` and `b` of the same
    // lengths, and `fill` writes every element of each (its contract).
    unsafe { out.set_len(len) };
    out
}

/// `(sum(g), sum(g * x))` in f64, eight interleaved partial sums each (see [`lane_sum`]).
pub(crate) fn sum_and_dot<T: KernelFloat>(g: &[T], x: &[T]) -> (f64, f64) {
    const LANES: usize = 8;
    let (mut a, mut b) = ([0f64; LANES], [0f64; LANES]);
    let n = g.len().min(x.len());
    let full = n - n % LANES;
    for (gc, xc) in g[..full].chunks_exact(LANES).zip(x[..full].chunks_exact(LANES)) {
        for l in 0..LANES {
            a[l] += gc[l].to64();
            b[l] += gc[l].to64() * xc[l].to64();
        }
    }
    for l in 0..n - full {
        a[l] += g[full + l].to64();
        b[l] += g[full + l].to64() * x[full + l].to64();
    }
    (fold_lanes(a), fold_lanes(b))
}

fn fold_lanes(v: [f64; 8]) -> f64 {
    ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
}

/// Mean and `1 / sqrt(var + eps)` of a row (biased variance; two passes, f64 sums).
pub(crate) fn row_stats<T: KernelFloat>(row: &[T], eps: f64) -> (f64, f64) {
    let n = row.len().max(1) as f64;
    let mean = lane_sum(row, |v| v) / n;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `sum(f(v))` in f64 over eight interleaved partial sums (independent lanes the compiler
/// vectorises; one running sum would serialise every addition), added pairwise at the end.
pub(crate) fn lane_sum<T: KernelFloat>(row: &[T], f: impl Fn(f64) -> f64) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0f64; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v.to64());
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(v.to64());
    }
    fold_lanes(acc)
}
