//! A small seeded random number generator.
//!
//! candle's CPU random ops cannot be seeded, so everything random in `deq-core` (spectral-norm
//! vectors, dropout masks, Hutchinson probes, initialisation helpers) draws from this generator
//! and is reproducible from a seed.

use candle_core::{DType, Device, Shape, Tensor};

/// SplitMix64 generator with Gaussian and uniform helpers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeqRng {
    state: u64,
}

impl DeqRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed ^ 0x9E37_79B9_7F4A_7C15 }
    }

    /// The full internal state (for checkpoints).
    pub fn state(&self) -> u64 {
        self.state
    }

    /// Restores a state returned by [`DeqRng::state`].
    pub fn from_state(state: u64) -> Self {
        Self { state }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A derived, independent generator (for handing to a sub-component).
    pub fn fork(&mut self) -> Self {
        Self::new(self.next_u64())
    }

    /// A tensor of standard normal values.
    pub fn randn<S: Into<Shape>>(&mut self, shape: S, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f64> = (0..shape.elem_count()).map(|_| self.normal()).collect();
        Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
    }

    /// A tensor of values uniform in `[lo, hi)`.
    pub fn rand<S: Into<Shape>>(&mut self, shape: S, lo: f64, hi: f64, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f64> = (0..shape.elem_count()).map(|_| lo + (hi - lo) * self.uniform()).collect();
        Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
    }

    /// A tensor of Bernoulli(`p_keep`) values scaled by `1 / p_keep` (dropout masks).
    pub fn dropout_mask<S: Into<Shape>>(&mut self, shape: S, p_keep: f64, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f64> = (0..shape.elem_count())
            .map(|_| if self.uniform() < p_keep { 1.0 / p_keep } else { 0.0 })
            .collect();
        Tensor::from_vec(v, shape, device)?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_sane_moments() {
        let mut a = DeqRng::new(7);
        let mut b = DeqRng::new(7);
        let xs: Vec<f64> = (0..20000).map(|_| a.normal()).collect();
        let ys: Vec<f64> = (0..20000).map(|_| b.normal()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "{mean} {var}");
        assert_ne!(DeqRng::new(8).next_u64(), DeqRng::new(7).next_u64());
    }
}
