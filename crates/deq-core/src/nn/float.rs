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
