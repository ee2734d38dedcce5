//! The per-branch residual block inside `f`.

use deq_train::layers::norm_conv_vars;
use deq_train::layers::GroupNorm;
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::Conv2dConfig;
use deq_core::norm::{NormConv2d, NormOptions};
use deq_core::rng::DeqRng;

/// `conv3x3(c -> E c) -> GN -> ReLU -> conv3x3(E c -> c) [+ injection] -> GN -> + z -> ReLU -> GN`,
/// both convolutions weight-normalised and without bias (the zoo's MDEQ `BasicBlock`).
#[derive(Debug)]
pub struct BranchBlock {
    conv1: NormConv2d,
    gn1: GroupNorm,
    conv2: NormConv2d,
    gn2: GroupNorm,
    gn3: GroupNorm,
}

impl BranchBlock {
    /// A block for a branch of `c` channels with expansion `e` and `groups` group-norm groups.
    pub fn new(c: usize, e: usize, groups: usize, norm: NormOptions, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let cfg = Conv2dConfig { padding: 1, ..Default::default() };
        let err = |e: deq_core::DeqError| candle_core::Error::Msg(e.to_string());
        Ok(Self {
            conv1: NormConv2d::new(c, e * c, 3, cfg, false, norm, rng, dtype, dev).map_err(err)?,
            gn1: GroupNorm::new(groups, e * c, true, dtype, dev)?,
            conv2: NormConv2d::new(e * c, c, 3, cfg, false, norm, rng, dtype, dev).map_err(err)?,
            gn2: GroupNorm::new(groups, c, true, dtype, dev)?,
            gn3: GroupNorm::new(groups, c, true, dtype, dev)?,
        })
    }

    /// The block applied to the branch state `z`, with the injection `u` (branch 0 only).
    pub fn forward(&self, z: &Tensor, u: Option<&Tensor>) -> Result<Tensor> {
        let t = deq_core::nn::relu(&self.gn1.forward(&self.conv1.forward(z)?)?)?;
        let mut t = self.conv2.forward(&t)?;
        if let Some(u) = u {
            t = (t + u)?;
        }
        let t = deq_core::nn::relu(&(self.gn2.forward(&t)? + z)?)?;
        self.gn3.forward(&t)
    }

    /// Recomputes the normalised kernels (once per training step).
    pub fn reset(&self) -> Result<()> {
        let err = |e: deq_core::DeqError| candle_core::Error::Msg(e.to_string());
        self.conv1.reset().map_err(err)?;
        self.conv2.reset().map_err(err)
    }

    /// Trainable variables.
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        norm_conv_vars(&self.conv1, &format!("{prefix}.conv1"), out);
        self.gn1.vars(&format!("{prefix}.gn1"), out);
        norm_conv_vars(&self.conv2, &format!("{prefix}.conv2"), out);
        self.gn2.vars(&format!("{prefix}.gn2"), out);
        self.gn3.vars(&format!("{prefix}.gn3"), out);
    }
}
