//! The input injection of (Implicit)^2: one `Linear(k -> D (L + 1))` of the coordinates, split
//! into the filter inputs `u_0 .. u_L` of the `L + 1` filters, with the filter-specific
//! transform (`siren_like`: none, the sine is applied inside `f`; `fourier`: `sin`; `gabor`:
//! `sin` times a Gaussian envelope with learnable centres `mu` and scales `gamma`).

use crate::error::Result;
use candle_core::{DType, Device, Tensor, Var, D};
use deq_core::rng::DeqRng;
use serde::{Deserialize, Serialize};

/// The filter family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    /// `phi(a, u) = sin(a + u)`: SIREN-like, the injection stays linear.
    SirenLike,
    /// Multiplicative filter network: `u = sin(W x + b)`, `phi(a, u) = u * a`.
    Fourier,
    /// Gabor filters: `u = sin(W x + b) exp(-gamma / 2 ||x - mu||^2)`, `phi(a, u) = u * a`.
    Gabor,
}

impl std::str::FromStr for FilterKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "siren_like" => Ok(Self::SirenLike),
            "fourier" => Ok(Self::Fourier),
            "gabor" => Ok(Self::Gabor),
            other => Err(format!("unknown filter `{other}` (expected siren_like, fourier or gabor)")),
        }
    }
}

/// A sample of `Gamma(shape, 1)` (Marsaglia and Tsang; `shape < 1` by the boost
/// `Gamma(shape + 1) U^(1 / shape)`).
pub fn sample_gamma(shape: f64, rng: &mut DeqRng) -> f64 {
    if shape < 1.0 {
        let u = rng.uniform().max(f64::MIN_POSITIVE);
        return sample_gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.uniform();
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// The injection and its parameters.
#[derive(Debug)]
pub struct Injection {
    kind: FilterKind,
    weight: Var,
    bias: Var,
    mu: Option<Var>,
    gamma: Option<Var>,
    width: usize,
    filters: usize,
}

impl Injection {
    /// `filters = L + 1` filters of `width = D` features on `k`-dimensional coordinates.
    /// Initialisation as the zoo: PyTorch's default `Linear` weight scaled by
    /// `input_scale / sqrt(filters)` (gabor rows also by `sqrt(gamma_j)`), biases uniform in
    /// `[-pi, pi]`; gabor `mu ~ U(-1, 1)`, `gamma ~ Gamma(alpha, 1)`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(kind: FilterKind, k: usize, width: usize, filters: usize, input_scale: f64, alpha: f64, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let m = width * filters;
        let bound = 1.0 / (k as f64).sqrt();
        let scale = input_scale / (filters as f64).sqrt();
        let mut w: Vec<f64> = (0..m * k).map(|_| (rng.uniform() * 2.0 - 1.0) * bound * scale).collect();
        let (mu, gamma) = if kind == FilterKind::Gabor {
            let gamma: Vec<f64> = (0..m).map(|_| sample_gamma(alpha, rng)).collect();
            for (j, g) in gamma.iter().enumerate() {
                w[j * k..(j + 1) * k].iter_mut().for_each(|v| *v *= g.sqrt());
            }
            let mu: Vec<f64> = (0..m * k).map(|_| rng.uniform() * 2.0 - 1.0).collect();
            (
                Some(Var::from_tensor(&Tensor::from_vec(mu, (m, k), dev)?.to_dtype(dtype)?)?),
                Some(Var::from_tensor(&Tensor::from_vec(gamma, m, dev)?.to_dtype(dtype)?)?),
            )
        } else {
            (None, None)
        };
        let weight = Var::from_tensor(&Tensor::from_vec(w, (m, k), dev)?.to_dtype(dtype)?)?;
        let b: Vec<f64> = (0..m).map(|_| (rng.uniform() * 2.0 - 1.0) * std::f64::consts::PI).collect();
        let bias = Var::from_tensor(&Tensor::from_vec(b, m, dev)?.to_dtype(dtype)?)?;
        Ok(Self { kind, weight, bias, mu, gamma, width, filters })
    }

    /// The filter family.
    pub fn kind(&self) -> FilterKind {
        self.kind
    }

    /// The filter inputs `u_0 .. u_L`, each `(N, D)` and contiguous, for coordinates `x`
    /// (`(N, k)`).
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let x2 = if self.kind == FilterKind::Gabor { Some(x.sqr()?.sum_keepdim(D::Minus1)?) } else { None };
        // One product per filter with its rows of the weight: each `u_i` comes out contiguous,
        // and the backward pads only the small weight slices (slicing the `(N, D (L + 1))`
        // product instead copies it and pads each gradient to that size).
        let mut us = Vec::with_capacity(self.filters);
        for i in 0..self.filters {
            let rows = |t: &Tensor| t.narrow(0, i * self.width, self.width);
            let lin = x.matmul(&rows(self.weight.as_tensor())?.t()?)?.broadcast_add(&rows(self.bias.as_tensor())?)?;
            us.push(match self.kind {
                FilterKind::SirenLike => lin,
                FilterKind::Fourier => deq_core::ops::sin(&lin)?,
                FilterKind::Gabor => {
                    let (mu, gamma) = (rows(self.mu.as_ref().expect("gabor mu").as_tensor())?, rows(self.gamma.as_ref().expect("gabor gamma").as_tensor())?);
                    // ||x - mu_j||^2 = ||x||^2 + ||mu_j||^2 - 2 x . mu_j
                    let m2 = mu.sqr()?.sum(D::Minus1)?;
                    let d2 = (x.matmul(&mu.t()?)?.affine(-2.0, 0.0)?.broadcast_add(x2.as_ref().expect("gabor |x|^2"))?).broadcast_add(&m2)?;
                    let env = d2.broadcast_mul(&gamma)?.affine(-0.5, 0.0)?.exp()?;
                    (deq_core::ops::sin(&lin)? * env)?
                }
            });
        }
        Ok(us)
    }

    /// Trainable variables with names.
    pub fn named_vars(&self, prefix: &str) -> Vec<(String, Var)> {
        let mut v = vec![(format!("{prefix}.weight"), self.weight.clone()), (format!("{prefix}.bias"), self.bias.clone())];
        if let (Some(mu), Some(g)) = (&self.mu, &self.gamma) {
            v.push((format!("{prefix}.mu"), mu.clone()));
            v.push((format!("{prefix}.gamma"), g.clone()));
        }
        v
    }
}
