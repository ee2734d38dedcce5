//! Convolutions: plain ones outside `f` (stem and head, N(0, 0.01) initialisation as in the
//! zoo) and weight-normalised ones inside `f` (deq-core's `NormConv2d`).

use candle_core::{DType, Device, Result, Tensor, Var};
use deq_core::rng::DeqRng;

/// A 2-D convolution with square kernel, optional bias.
#[derive(Debug)]
pub struct Conv {
    weight: Var,
    bias: Option<Var>,
    stride: usize,
    padding: usize,
}

impl Conv {
    /// A `k x k` convolution `cin -> cout` (padding `k / 2`), weights and bias from N(0, 0.01).
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, bias: bool, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let weight = Var::from_tensor(&(rng.randn((cout, cin, k, k), dtype, dev)? * 0.01)?)?;
        let bias = if bias { Some(Var::from_tensor(&(rng.randn(cout, dtype, dev)? * 0.01)?)?) } else { None };
        Ok(Self { weight, bias, stride, padding: k / 2 })
    }

    /// Applies the convolution.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = deq_core::nn::conv2d(x, self.weight.as_tensor(), self.padding, self.stride, 1, 1)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.as_tensor().reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
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
