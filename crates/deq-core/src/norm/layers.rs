//! Linear and Conv2d layers with a [`NormedWeight`].

use super::{NormOptions, NormedWeight};
use crate::error::Result;
use crate::rng::DeqRng;
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::Conv2dConfig;
use crate::nn::Conv2dSpec;

fn kaiming_uniform(shape: &[usize], fan_in: usize, rng: &mut DeqRng, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    rng.rand(shape, -bound, bound, dtype, dev)
}

/// The weight's variables followed by the bias, if any.
fn named_vars(weight: &NormedWeight, bias: &Option<Var>) -> Vec<(&'static str, Var)> {
    let mut v = weight.named_vars();
    v.extend(bias.iter().map(|b| ("bias", b.clone())));
    v
}

/// `y = x W^T + b` with a normalised `W` of shape `(out, in)`.
#[derive(Debug)]
pub struct NormLinear {
    weight: NormedWeight,
    bias: Option<Var>,
}

impl NormLinear {
    /// A new layer with PyTorch's default initialisation drawn from `rng`.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, opts: NormOptions, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let w = kaiming_uniform(&[out_dim, in_dim], in_dim, rng, dtype, dev)?;
        let b = if bias { Some(kaiming_uniform(&[out_dim], in_dim, rng, dtype, dev)?) } else { None };
        Self::from_weights(w, b, opts, rng)
    }

    /// Wraps existing weights.
    pub fn from_weights(w: Tensor, b: Option<Tensor>, opts: NormOptions, rng: &mut DeqRng) -> Result<Self> {
        Ok(Self { weight: NormedWeight::new(Var::from_tensor(&w)?, opts, rng)?, bias: b.map(|b| Var::from_tensor(&b)).transpose()? })
    }

    /// The normalised weight.
    pub fn weight(&self) -> &NormedWeight {
        &self.weight
    }

    /// Recomputes the normalised weight (once per training step).
    pub fn reset(&self) -> Result<()> {
        self.weight.reset()
    }

    /// Trainable variables with names relative to the layer.
    pub fn named_vars(&self) -> Vec<(&'static str, Var)> {
        named_vars(&self.weight, &self.bias)
    }
}

impl Module for NormLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.weight.weight();
        let y = crate::nn::linear_map(x, &w)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b.as_tensor()),
            None => Ok(y),
        }
    }
}

/// 2-D convolution with a normalised kernel of shape `(out, in / groups, kh, kw)`.
#[derive(Debug)]
pub struct NormConv2d {
    weight: NormedWeight,
    bias: Option<Var>,
    spec: Conv2dSpec,
}

impl NormConv2d {
    /// A new `k x k` layer with PyTorch's default initialisation drawn from `rng`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(in_c: usize, out_c: usize, k: usize, cfg: Conv2dConfig, bias: bool, opts: NormOptions, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let spec = Conv2dSpec { padding: (cfg.padding, cfg.padding), stride: cfg.stride, dilation: cfg.dilation, groups: cfg.groups };
        Self::rect(in_c, out_c, (k, k), spec, bias, opts, rng, dtype, dev)
    }

    /// A new `kh x kw` layer (any padding per axis, e.g. RAFT's 1x5 and 5x1 GRU convolutions)
    /// with PyTorch's default initialisation drawn from `rng`.
    #[allow(clippy::too_many_arguments)]
    pub fn rect(in_c: usize, out_c: usize, (kh, kw): (usize, usize), spec: Conv2dSpec, bias: bool, opts: NormOptions, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        if spec.groups == 0 || in_c % spec.groups != 0 || out_c % spec.groups != 0 {
            return Err(crate::error::shape_err("NormConv2d", format!("{} groups do not divide {in_c} -> {out_c} channels", spec.groups)));
        }
        let fan_in = in_c / spec.groups * kh * kw;
        let w = kaiming_uniform(&[out_c, in_c / spec.groups, kh, kw], fan_in, rng, dtype, dev)?;
        let b = if bias { Some(Var::from_tensor(&kaiming_uniform(&[out_c], fan_in, rng, dtype, dev)?)?) } else { None };
        Ok(Self { weight: NormedWeight::new(Var::from_tensor(&w)?, opts, rng)?, bias: b, spec })
    }

    /// The normalised kernel.
    pub fn weight(&self) -> &NormedWeight {
        &self.weight
    }

    /// Recomputes the normalised kernel (once per training step).
    pub fn reset(&self) -> Result<()> {
        self.weight.reset()
    }

    /// Trainable variables with names relative to the layer.
    pub fn named_vars(&self) -> Vec<(&'static str, Var)> {
        named_vars(&self.weight, &self.bias)
    }
}

impl Module for NormConv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = crate::nn::conv2d_with(x, &self.weight.weight(), &self.spec)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.as_tensor().reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}
