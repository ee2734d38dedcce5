//! RAFT's feature and context encoder (`BasicEncoder`): a 7x7 stride-2 stem, three stages of
//! two residual blocks (strides 1, 2, 2), and a 1x1 projection, so features are at 1/8 of the
//! input resolution. Widths are configurable (RAFT: 64, 96, 128); the norm is instance norm
//! for the feature encoder (no parameters) and batch norm for the context encoder.

use candle_core::{DType, Device, Result, Tensor, Var};
use deq_core::nn::{relu, Conv2dSpec};
use deq_core::rng::DeqRng;
use deq_train::layers::{BatchNorm2d, Conv, ConvInit, GroupNorm};
use serde::{Deserialize, Serialize};

/// The normalisation of an encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// Per-sample, per-channel statistics, no parameters (`InstanceNorm2d`).
    Instance,
    /// Batch statistics with running averages and an affine transform (`BatchNorm2d`).
    Batch,
    /// Group norm with `channels / 8` groups and an affine transform.
    Group,
    /// None.
    None,
}

/// One normalisation layer.
#[derive(Debug)]
enum Norm {
    Group(GroupNorm),
    Batch(BatchNorm2d),
    None,
}

impl Norm {
    fn new(kind: NormKind, channels: usize, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(match kind {
            NormKind::Instance => Norm::Group(GroupNorm::new(channels, channels, false, dtype, dev)?),
            NormKind::Group => Norm::Group(GroupNorm::new((channels / 8).max(1), channels, true, dtype, dev)?),
            NormKind::Batch => Norm::Batch(BatchNorm2d::new(channels, true, dtype, dev)?),
            NormKind::None => Norm::None,
        })
    }

    fn forward(&self, x: &Tensor, batch_stats: bool) -> Result<Tensor> {
        match self {
            Norm::Group(n) => n.forward(x),
            Norm::Batch(n) => n.forward(x, batch_stats),
            Norm::None => Ok(x.clone()),
        }
    }

    fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        match self {
            Norm::Group(n) => n.vars(prefix, out),
            Norm::Batch(n) => n.vars(prefix, out),
            Norm::None => {}
        }
    }

    fn buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        if let Norm::Batch(n) = self {
            n.buffers(prefix, out);
        }
    }

    fn load_buffers(&self, prefix: &str, get: &dyn Fn(&str) -> Option<Tensor>) -> Result<()> {
        if let Norm::Batch(n) = self {
            let mean = get(&format!("{prefix}.running_mean")).ok_or_else(|| candle_core::Error::Msg(format!("missing buffer {prefix}.running_mean")))?;
            let var = get(&format!("{prefix}.running_var")).ok_or_else(|| candle_core::Error::Msg(format!("missing buffer {prefix}.running_var")))?;
            n.load_buffers(mean, var)?;
        }
        Ok(())
    }
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Conv> {
    Conv::with_init(cin, cout, (k, k), Conv2dSpec { stride, ..Conv2dSpec::padded(k / 2) }, true, ConvInit::KaimingNormalFanOut, rng, dtype, dev)
}

/// RAFT's `ResidualBlock`: two 3x3 convolutions with norm and ReLU, a strided 1x1 projection
/// of the input (with its own norm) when the block downsamples, ReLU after the sum.
#[derive(Debug)]
struct ResidualBlock {
    conv1: Conv,
    conv2: Conv,
    norm1: Norm,
    norm2: Norm,
    down: Option<(Conv, Norm)>,
}

impl ResidualBlock {
    #[allow(clippy::too_many_arguments)]
    fn new(cin: usize, planes: usize, norm: NormKind, stride: usize, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let conv1 = conv(cin, planes, 3, stride, rng, dtype, dev)?;
        let conv2 = conv(planes, planes, 3, 1, rng, dtype, dev)?;
        let down = if stride != 1 || cin != planes { Some((conv(cin, planes, 1, stride, rng, dtype, dev)?, Norm::new(norm, planes, dtype, dev)?)) } else { None };
        Ok(Self { conv1, conv2, norm1: Norm::new(norm, planes, dtype, dev)?, norm2: Norm::new(norm, planes, dtype, dev)?, down })
    }

    fn forward(&self, x: &Tensor, bs: bool) -> Result<Tensor> {
        let y = relu(&self.norm1.forward(&self.conv1.forward(x)?, bs)?)?;
        let y = relu(&self.norm2.forward(&self.conv2.forward(&y)?, bs)?)?;
        let skip = match &self.down {
            Some((c, n)) => n.forward(&c.forward(x)?, bs)?,
            None => x.clone(),
        };
        relu(&(skip + y)?)
    }

    fn vars(&self, p: &str, out: &mut Vec<(String, Var)>) {
        self.conv1.vars(&format!("{p}.conv1"), out);
        self.conv2.vars(&format!("{p}.conv2"), out);
        self.norm1.vars(&format!("{p}.norm1"), out);
        self.norm2.vars(&format!("{p}.norm2"), out);
        if let Some((c, n)) = &self.down {
            c.vars(&format!("{p}.downsample.0"), out);
            n.vars(&format!("{p}.downsample.1"), out);
        }
    }

    fn norms(&self, p: &str) -> Vec<(String, &Norm)> {
        let mut v = vec![(format!("{p}.norm1"), &self.norm1), (format!("{p}.norm2"), &self.norm2)];
        if let Some((_, n)) = &self.down {
            v.push((format!("{p}.downsample.1"), n));
        }
        v
    }
}

/// RAFT's `BasicEncoder` with widths `dims` and output channels `out`.
#[derive(Debug)]
pub struct Encoder {
    conv1: Conv,
    norm1: Norm,
    layers: Vec<ResidualBlock>,
    conv2: Conv,
    out: usize,
}

impl Encoder {
    /// A new encoder `3 -> out` channels at 1/8 resolution; convolutions drawn from `rng`
    /// (Kaiming normal, fan-out), norms at identity.
    pub fn new(dims: [usize; 3], out: usize, norm: NormKind, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let conv1 = conv(3, dims[0], 7, 2, rng, dtype, dev)?;
        let norm1 = Norm::new(norm, dims[0], dtype, dev)?;
        let mut layers = Vec::new();
        let mut cin = dims[0];
        for (i, &d) in dims.iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            layers.push(ResidualBlock::new(cin, d, norm, stride, rng, dtype, dev)?);
            layers.push(ResidualBlock::new(d, d, norm, 1, rng, dtype, dev)?);
            cin = d;
        }
        let conv2 = Conv::with_init(dims[2], out, (1, 1), Conv2dSpec::padded(0), true, ConvInit::KaimingNormalFanOut, rng, dtype, dev)?;
        Ok(Self { conv1, norm1, layers, conv2, out })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out
    }

    /// Encodes `x` `(B, 3, H, W)` into `(B, out, H/8, W/8)` (sizes rounded up at each stride);
    /// `batch_stats` selects batch statistics in batch norms (training, not frozen).
    pub fn forward(&self, x: &Tensor, batch_stats: bool) -> Result<Tensor> {
        let mut y = relu(&self.norm1.forward(&self.conv1.forward(x)?, batch_stats)?)?;
        for l in &self.layers {
            y = l.forward(&y, batch_stats)?;
        }
        self.conv2.forward(&y)
    }

    /// Trainable variables, PyTorch names (`conv1`, `norm1`, `layer{1,2,3}.{0,1}.…`, `conv2`).
    pub fn vars(&self, p: &str, out: &mut Vec<(String, Var)>) {
        self.conv1.vars(&format!("{p}.conv1"), out);
        self.norm1.vars(&format!("{p}.norm1"), out);
        for (i, l) in self.layers.iter().enumerate() {
            l.vars(&format!("{p}.layer{}.{}", i / 2 + 1, i % 2), out);
        }
        self.conv2.vars(&format!("{p}.conv2"), out);
    }

    fn norms(&self, p: &str) -> Vec<(String, &Norm)> {
        let mut v = vec![(format!("{p}.norm1"), &self.norm1)];
        for (i, l) in self.layers.iter().enumerate() {
            v.extend(l.norms(&format!("{p}.layer{}.{}", i / 2 + 1, i % 2)));
        }
        v
    }

    /// Running statistics of the batch norms, for checkpoints.
    pub fn buffers(&self, p: &str, out: &mut Vec<(String, Tensor)>) {
        for (name, n) in self.norms(p) {
            n.buffers(&name, out);
        }
    }

    /// Restores the running statistics saved by [`Encoder::buffers`] (looked up by name).
    pub fn load_buffers(&self, p: &str, get: &dyn Fn(&str) -> Option<Tensor>) -> Result<()> {
        for (name, n) in self.norms(p) {
            n.load_buffers(&name, get)?;
        }
        Ok(())
    }
}
