//! A reparameterised weight: `W = v * factor` with a per-output-row factor.

use crate::config::{DeqConfig, NormType};
use crate::error::Result;
use crate::rng::DeqRng;
use candle_core::{DType, Tensor, Var};
use std::sync::Mutex;

/// Options of the reparameterisation (the `norm_*` keys of [`DeqConfig`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormOptions {
    /// Weight norm, spectral norm, or none.
    pub norm_type: NormType,
    /// Learn the scale `g` (false: use `target_norm`).
    pub learn_scale: bool,
    /// Clip the factor at `clip_value`.
    pub clip: bool,
    /// Upper bound of the factor when clipping.
    pub clip_value: f64,
    /// Target norm when the scale is not learned; initial `g` of spectral norm.
    pub target_norm: f64,
    /// Power iterations per recomputation (spectral norm).
    pub n_power_iters: usize,
}

impl NormOptions {
    /// Reads the options from a DEQ configuration.
    pub fn from_config(cfg: &DeqConfig) -> Self {
        Self {
            norm_type: cfg.norm_type,
            learn_scale: !cfg.norm_no_scale,
            clip: cfg.norm_clip,
            clip_value: cfg.norm_clip_value,
            target_norm: cfg.norm_target_norm,
            n_power_iters: cfg.sn_n_power_iters,
        }
    }
}

impl Default for NormOptions {
    fn default() -> Self {
        Self::from_config(&DeqConfig::default())
    }
}

/// A weight of shape `(out, ...)` reparameterised per output row.
///
/// * weight norm: `W = v * g / ||v_row||` (`g` starts at `||v_row||`, so `W = v` at first);
/// * spectral norm: `W = v * g / sigma(v)`, `sigma` from power iteration on `v` reshaped to
///   `(out, -1)`, `g` starting at `target_norm`;
/// * with `clip`, the factor is `min(clip_value, factor)`.
///
/// Unlike TorchDEQ's spectral norm, the weight is normalised as soon as it is built (TorchDEQ
/// uses the raw weight until the first `reset_norm`); the build runs enough power iterations for
/// `sigma` to be accurate.
#[derive(Debug)]
pub struct NormedWeight {
    v: Var,
    g: Option<Var>,
    opts: NormOptions,
    u: Mutex<Tensor>,
    weight: Mutex<Tensor>,
}

fn row_norms(v: &Tensor) -> candle_core::Result<Tensor> {
    let out = v.dims()[0];
    let flat = v.reshape((out, ()))?;
    flat.sqr()?.sum_keepdim(1)?.sqrt()
}

fn normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.sqr()?.sum_all()?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&n)
}

impl NormedWeight {
    /// Reparameterises the raw weight `v` (its first dimension is the output dimension).
    pub fn new(v: Var, opts: NormOptions, rng: &mut DeqRng) -> Result<Self> {
        let t = v.as_tensor();
        let out = t.dims()[0];
        let g = if opts.learn_scale && opts.norm_type != NormType::None {
            let init = match opts.norm_type {
                NormType::WeightNorm => row_norms(t)?,
                _ => Tensor::full(opts.target_norm, (out, 1), t.device())?.to_dtype(t.dtype())?,
            };
            Some(Var::from_tensor(&init)?)
        } else {
            None
        };
        let u = normalize(&rng.randn(out, t.dtype(), t.device())?)?;
        let this = Self { weight: Mutex::new(t.clone()), v, g, opts, u: Mutex::new(u) };
        this.recompute(opts.n_power_iters.max(30))?;
        Ok(this)
    }

    /// The normalisation options.
    pub fn options(&self) -> &NormOptions {
        &self.opts
    }

    /// The raw weight `v`.
    pub fn raw(&self) -> &Var {
        &self.v
    }

    /// The learnable scale `g` (shape `(out, 1)`), if any.
    pub fn scale(&self) -> Option<&Var> {
        self.g.as_ref()
    }

    /// The trainable variables with their names (`weight_v`, `weight_g`).
    pub fn named_vars(&self) -> Vec<(&'static str, Var)> {
        let mut v = vec![("weight_v", self.v.clone())];
        if let Some(g) = &self.g {
            v.push(("weight_g", g.clone()));
        }
        v
    }

    /// The current normalised weight (with its graph to `v` and `g`).
    pub fn weight(&self) -> Tensor {
        self.weight.lock().expect("weight poisoned").clone()
    }

    /// Recomputes the weight from the current `v` and `g` (once per training step), running
    /// `n_power_iters` power iterations for spectral norm.
    pub fn reset(&self) -> Result<()> {
        self.recompute(self.opts.n_power_iters)
    }

    fn recompute(&self, iters: usize) -> Result<()> {
        let v = self.v.as_tensor();
        let out = v.dims()[0];
        let flat = v.reshape((out, ()))?;
        let factor = match self.opts.norm_type {
            NormType::None => {
                *self.weight.lock().expect("weight poisoned") = v.clone();
                return Ok(());
            }
            NormType::WeightNorm => {
                let n = row_norms(v)?.clamp(1e-12, f64::INFINITY)?;
                match &self.g {
                    Some(g) => g.as_tensor().broadcast_div(&n)?,
                    None => n.recip()?.affine(self.opts.target_norm, 0.0)?,
                }
            }
            NormType::SpectralNorm => {
                let w = flat.detach();
                let mut u = self.u.lock().expect("u poisoned");
                let mut vv = normalize(&u.unsqueeze(0)?.matmul(&w)?.squeeze(0)?)?;
                for i in 0..iters.max(1) {
                    if i > 0 {
                        vv = normalize(&u.unsqueeze(0)?.matmul(&w)?.squeeze(0)?)?;
                    }
                    *u = normalize(&w.matmul(&vv.unsqueeze(1)?)?.squeeze(1)?)?;
                }
                // sigma = u^T W v, differentiable through W with u, v fixed.
                let sigma = u.unsqueeze(0)?.matmul(&flat)?.matmul(&vv.unsqueeze(1)?)?.reshape((1, 1))?;
                match &self.g {
                    Some(g) => g.as_tensor().broadcast_div(&sigma)?,
                    None => sigma.recip()?.affine(self.opts.target_norm, 0.0)?.broadcast_as((out, 1))?.contiguous()?,
                }
            }
        };
        let factor = if self.opts.clip { factor.clamp(f64::NEG_INFINITY, self.opts.clip_value)? } else { factor };
        let w = flat.broadcast_mul(&factor)?.reshape(v.shape())?;
        *self.weight.lock().expect("weight poisoned") = w;
        Ok(())
    }

    /// Largest singular value of the current normalised weight (reshaped to `(out, -1)`),
    /// computed on the host in f64 by power iteration to convergence.
    pub fn exact_sigma(&self) -> Result<f64> {
        let w = self.weight();
        let out = w.dims()[0];
        let cols = w.elem_count() / out;
        let data = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        Ok(crate::problems::spectral_norm_f64(&data, out, cols, 3000))
    }
}
