//! Synthetic fixed-point problems used by the tests, the doc examples and `deq-bench`.

use crate::rng::DeqRng;
use candle_core::{DType, Device, Result, Tensor};

/// Largest singular value of a row-major `rows x cols` matrix, by power iteration in f64.
pub fn spectral_norm_f64(w: &[f64], rows: usize, cols: usize, iters: usize) -> f64 {
    let mut v = vec![1.0 / (cols as f64).sqrt(); cols];
    let mut sigma = 0.0;
    for _ in 0..iters {
        let u: Vec<f64> = (0..rows).map(|i| (0..cols).map(|j| w[i * cols + j] * v[j]).sum()).collect();
        let nu = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut nv: Vec<f64> = (0..cols).map(|j| (0..rows).map(|i| w[i * cols + j] * u[i]).sum::<f64>()).collect();
        let n = nv.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n == 0.0 {
            return 0.0;
        }
        nv.iter_mut().for_each(|x| *x /= n);
        v = nv;
        sigma = n / nu.max(1e-300);
    }
    sigma.sqrt() * sigma.sqrt()
}

/// `f(z) = tanh(z W^T + x U^T)` with `W` scaled to spectral norm `rho`.
#[derive(Debug, Clone)]
pub struct Problem {
    /// `(width, width)` weight of the state.
    pub w: Tensor,
    /// `(width, width)` weight of the input.
    pub u: Tensor,
    /// `(batch, width)` input.
    pub x: Tensor,
    /// Precomputed injection `x U^T`.
    pub inj: Tensor,
}

impl Problem {
    /// Evaluates `f(z)`.
    pub fn f(&self, z: &Tensor) -> Result<Tensor> {
        z.matmul(&self.w.t()?)?.add(&self.inj)?.tanh()
    }
    /// A zero initial state.
    pub fn z0(&self) -> Result<Tensor> {
        self.inj.zeros_like()
    }
}

/// Builds a [`Problem`] with batch `b`, width `d`, spectral norm `rho`, seeded by `seed`.
pub fn linear_tanh_problem(b: usize, d: usize, rho: f64, seed: u64, dtype: DType) -> Result<Problem> {
    let dev = Device::Cpu;
    let mut rng = DeqRng::new(seed);
    let w: Vec<f64> = (0..d * d).map(|_| rng.normal()).collect();
    let s = spectral_norm_f64(&w, d, d, 500);
    let w: Vec<f64> = w.iter().map(|v| v * rho / s).collect();
    let w = Tensor::from_vec(w, (d, d), &dev)?.to_dtype(dtype)?;
    let u = (rng.randn((d, d), dtype, &dev)? / (d as f64).sqrt())?;
    let x = rng.randn((b, d), dtype, &dev)?;
    let inj = x.matmul(&u.t()?)?;
    Ok(Problem { w, u, x, inj })
}

/// A hard problem: symmetric `W` with spectral radius exactly `rho` (so the iteration map's
/// contraction factor is close to `rho`) and a small injection keeping `tanh` near its linear
/// regime.
pub fn hard_tanh_problem(b: usize, d: usize, rho: f64, seed: u64, dtype: DType) -> Result<Problem> {
    let dev = Device::Cpu;
    let mut rng = DeqRng::new(seed);
    let a: Vec<f64> = (0..d * d).map(|_| rng.normal()).collect();
    let mut w = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..d {
            w[i * d + j] = 0.5 * (a[i * d + j] + a[j * d + i]);
        }
    }
    let s = spectral_norm_f64(&w, d, d, 2000);
    let w: Vec<f64> = w.iter().map(|v| v * rho / s).collect();
    let w = Tensor::from_vec(w, (d, d), &dev)?.to_dtype(dtype)?;
    let u = (rng.randn((d, d), dtype, &dev)? * (0.1 / (d as f64).sqrt()))?;
    let x = rng.randn((b, d), dtype, &dev)?;
    let inj = x.matmul(&u.t()?)?;
    Ok(Problem { w, u, x, inj })
}
