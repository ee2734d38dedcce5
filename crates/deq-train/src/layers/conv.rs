//! Plain (not weight-normalised) 2-D convolutions with an optional bias, through deq-core's
//! `nn::conv2d_with`, and the helper that names a weight-normalised convolution's variables.

use candle_core::{DType, Device, Result, Tensor, Var};
use deq_core::nn::Conv2dSpec;
use deq_core::rng::DeqRng;

/// How a convolution's parameters are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConvInit {
    /// Weight and bias from N(0, std^2) (the DEQ zoo's MDEQ stem and head use 0.01).
    Normal(f64),
    /// PyTorch's default for `nn.Conv2d`: weight and bias from U(-b, b), `b = 1 / sqrt(fan_in)`.
    TorchDefault,
    /// Weight from N(0, 2 / fan_out) (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`,
    /// RAFT's encoders), bias as in [`ConvInit::TorchDefault`].
    KaimingNormalFanOut,
}

/// A 2-D convolution `(B, cin, H, W) -> (B, cout, H', W')` with an optional bias.
#[derive(Debug)]
pub struct Conv {
    weight: Var,
    bias: Option<Var>,
    spec: Conv2dSpec,
}

impl Conv {
    /// A `k x k` convolution `cin -> cout` (padding `k / 2`), weights and bias from N(0, 0.01).
    #[allow(clippy::too_many_arguments)]
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, bias: bool, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        Self::with_init(cin, cout, (k, k), Conv2dSpec { stride, ..Conv2dSpec::padded(k / 2) }, bias, ConvInit::Normal(0.01), rng, dtype, dev)
    }

    /// A `kh x kw` convolution `cin -> cout` with the given padding, stride and dilation
    /// (`spec.groups` must be 1) and initialisation.
    #[allow(clippy::too_many_arguments)]
    pub fn with_init(cin: usize, cout: usize, (kh, kw): (usize, usize), spec: Conv2dSpec, bias: bool, init: ConvInit, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        if spec.groups != 1 || cin == 0 || cout == 0 || kh == 0 || kw == 0 {
            candle_core::bail!("conv: {cin} -> {cout} channels, {kh}x{kw} kernel, {} groups is not a plain convolution", spec.groups);
        }
        let (fan_in, fan_out) = ((cin * kh * kw) as f64, (cout * kh * kw) as f64);
        let bound = 1.0 / fan_in.sqrt();
        let weight = match init {
            ConvInit::Normal(std) => (rng.randn((cout, cin, kh, kw), dtype, dev)? * std)?,
            ConvInit::TorchDefault => rng.rand((cout, cin, kh, kw), -bound, bound, dtype, dev)?,
            ConvInit::KaimingNormalFanOut => (rng.randn((cout, cin, kh, kw), dtype, dev)? * (2.0 / fan_out).sqrt())?,
        };
        let bias = if bias {
            let b = match init {
                ConvInit::Normal(std) => (rng.randn(cout, dtype, dev)? * std)?,
                ConvInit::TorchDefault | ConvInit::KaimingNormalFanOut => rng.rand(cout, -bound, bound, dtype, dev)?,
            };
            Some(Var::from_tensor(&b)?)
        } else {
            None
        };
        Ok(Self { weight: Var::from_tensor(&weight)?, bias, spec })
    }

    /// Applies the convolution.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = deq_core::nn::conv2d_with(x, self.weight.as_tensor(), &self.spec)?;
        match &self.bias {
            Some(b) => deq_core::nn::plane_bias_add(&y, b.as_tensor()),
            None => Ok(y),
        }
    }

    /// The kernel `(cout, cin, kh, kw)`.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// Trainable variables (`weight`, `bias`).
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        out.push((format!("{prefix}.weight"), self.weight.clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{prefix}.bias"), b.clone()));
        }
    }
}

/// Pushes a weight-normalised convolution's variables under `prefix`.
pub fn norm_conv_vars(conv: &deq_core::norm::NormConv2d, prefix: &str, out: &mut Vec<(String, Var)>) {
    for (name, v) in conv.named_vars() {
        out.push((format!("{prefix}.{name}"), v));
    }
}
