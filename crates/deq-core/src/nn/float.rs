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
