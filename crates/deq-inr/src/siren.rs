//! The explicit SIREN baseline (Sitzmann et al. 2020): `h_1 = sin(w0 (W_1 x + b_1))`,
//! `h_i = sin(w (W_i h_{i-1} + b_i))`, `y = W_out h_n + b_out`, with SIREN's initialisation
//! (first layer `U(-1/k, 1/k)`, later layers `U(-sqrt(6/H)/w, sqrt(6/H)/w)`).
//! [`Siren::matching`] picks the width that gives the parameter count of a DEQ-INR.

use crate::error::Result;
use candle_core::{DType, Device, Tensor, Var};
use deq_core::rng::DeqRng;

/// A SIREN.
#[derive(Debug)]
pub struct Siren {
    layers: Vec<(Var, Var)>,
    omega_first: f64,
    omega: f64,
}

/// Parameters of a SIREN with `n` sine layers of width `h`.
pub fn siren_params(k: usize, h: usize, n: usize, channels: usize) -> usize {
    k * h + h + n.saturating_sub(1) * (h * h + h) + h * channels + channels
}

impl Siren {
    /// `n` sine layers of width `h` on `k` coordinates, `channels` outputs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(k: usize, h: usize, n: usize, channels: usize, omega_first: f64, omega: f64, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let mut layers = Vec::new();
        let mut fan_in = k;
        for i in 0..=n.max(1) {
            let out = if i == n.max(1) { channels } else { h };
            let bound = if i == 0 { 1.0 / k as f64 } else { (6.0 / fan_in as f64).sqrt() / omega };
            let bb = 1.0 / (fan_in as f64).sqrt();
            layers.push((Var::from_tensor(&rng.rand((out, fan_in), -bound, bound, dtype, dev)?)?, Var::from_tensor(&rng.rand(out, -bb, bb, dtype, dev)?)?));
            fan_in = out;
        }
        Ok(Self { layers, omega_first, omega })
    }

    /// The widest SIREN with `n` sine layers whose parameter count does not exceed `params`.
    pub fn matching(params: usize, k: usize, n: usize, channels: usize, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let mut h = 1;
        while siren_params(k, h + 1, n, channels) <= params {
            h += 1;
        }
        Self::new(k, h, n, channels, 30.0, 30.0, rng, dtype, dev)
    }

    /// Outputs `(N, channels)` for coordinates `(N, k)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            let a = h.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())?;
            h = if i == last {
                a
            } else {
                deq_core::ops::sin(&a.affine(if i == 0 { self.omega_first } else { self.omega }, 0.0)?)?
            };
        }
        Ok(h)
    }

    /// Trainable variables with names.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.layers.iter().enumerate().flat_map(|(i, (w, b))| [(format!("layer.{i}.weight"), w.clone()), (format!("layer.{i}.bias"), b.clone())]).collect()
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.as_tensor().elem_count()).sum()
    }

    /// Width of the hidden layers.
    pub fn width(&self) -> usize {
        self.layers[0].0.as_tensor().dim(0).unwrap_or(0)
    }
}
