//! The classification head (batch norm, outside `f`): per-branch bottleneck "increase"
//! blocks, strided downsampling, a final 1x1 conv, global average pooling and a linear layer.

use deq_train::layers::Conv;
use deq_train::layers::BatchNorm2d;
use candle_core::{DType, Device, Result, Tensor, Var, D};
use deq_core::rng::DeqRng;

/// ResNet bottleneck (expansion 4) with batch norm; the three inner norms have no affine
/// parameters, the shortcut's has (as in the zoo).
#[derive(Debug)]
pub struct Bottleneck {
    conv1: Conv,
    bn1: BatchNorm2d,
    conv2: Conv,
    bn2: BatchNorm2d,
    conv3: Conv,
    bn3: BatchNorm2d,
    shortcut: Option<(Conv, BatchNorm2d)>,
}

impl Bottleneck {
    /// `cin -> 4 planes` channels.
    pub fn new(cin: usize, planes: usize, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let out = 4 * planes;
        Ok(Self {
            conv1: Conv::new(cin, planes, 1, 1, false, rng, dtype, dev)?,
            bn1: BatchNorm2d::new(planes, false, dtype, dev)?,
            conv2: Conv::new(planes, planes, 3, 1, false, rng, dtype, dev)?,
            bn2: BatchNorm2d::new(planes, false, dtype, dev)?,
            conv3: Conv::new(planes, out, 1, 1, false, rng, dtype, dev)?,
            bn3: BatchNorm2d::new(out, false, dtype, dev)?,
            shortcut: if cin != out { Some((Conv::new(cin, out, 1, 1, false, rng, dtype, dev)?, BatchNorm2d::new(out, true, dtype, dev)?)) } else { None },
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let t = deq_core::nn::relu(&self.bn1.forward(&self.conv1.forward(x)?, train)?)?;
        let t = deq_core::nn::relu(&self.bn2.forward(&self.conv2.forward(&t)?, train)?)?;
        let t = self.bn3.forward(&self.conv3.forward(&t)?, train)?;
        let s = match &self.shortcut {
            Some((c, bn)) => bn.forward(&c.forward(x)?, train)?,
            None => x.clone(),
        };
        deq_core::nn::relu(&(t + s)?)
    }

    fn vars(&self, p: &str, out: &mut Vec<(String, Var)>) {
        self.conv1.vars(&format!("{p}.conv1"), out);
        self.conv2.vars(&format!("{p}.conv2"), out);
        self.conv3.vars(&format!("{p}.conv3"), out);
        if let Some((c, bn)) = &self.shortcut {
            c.vars(&format!("{p}.shortcut.conv"), out);
            bn.vars(&format!("{p}.shortcut.bn"), out);
        }
    }

    fn norms<'a>(&'a self, p: &str, out: &mut Vec<(String, &'a BatchNorm2d)>) {
        out.push((format!("{p}.bn1"), &self.bn1));
        out.push((format!("{p}.bn2"), &self.bn2));
        out.push((format!("{p}.bn3"), &self.bn3));
        if let Some((_, bn)) = &self.shortcut {
            out.push((format!("{p}.shortcut.bn"), bn));
        }
    }
}

/// The head: `incre[i]`, `downsamp[i]`, `final`, pooling, `fc`.
#[derive(Debug)]
pub struct Head {
    incre: Vec<Bottleneck>,
    downsamp: Vec<(Conv, BatchNorm2d)>,
    final_conv: Conv,
    final_bn: BatchNorm2d,
    fc_w: Var,
    fc_b: Var,
}

impl Head {
    /// Head over branches of `channels`, with bottleneck widths `head_channels` and
    /// `final_chansize` features before the classifier.
    pub fn new(channels: &[usize], head_channels: &[usize], final_chansize: usize, classes: usize, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let incre = channels.iter().zip(head_channels).map(|(&c, &h)| Bottleneck::new(c, h, rng, dtype, dev)).collect::<Result<Vec<_>>>()?;
        let downsamp = (0..channels.len() - 1)
            .map(|i| Ok((Conv::new(4 * head_channels[i], 4 * head_channels[i + 1], 3, 2, true, rng, dtype, dev)?, BatchNorm2d::new(4 * head_channels[i + 1], true, dtype, dev)?)))
            .collect::<Result<Vec<_>>>()?;
        let last = 4 * head_channels[channels.len() - 1];
        // PyTorch's default Linear initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        let bound = 1.0 / (final_chansize as f64).sqrt();
        let fc_w = Var::from_tensor(&rng.rand((classes, final_chansize), -bound, bound, dtype, dev)?)?;
        let fc_b = Var::from_tensor(&rng.rand(classes, -bound, bound, dtype, dev)?)?;
        Ok(Self {
            incre,
            downsamp,
            final_conv: Conv::new(last, final_chansize, 1, 1, true, rng, dtype, dev)?,
            final_bn: BatchNorm2d::new(final_chansize, true, dtype, dev)?,
            fc_w,
            fc_b,
        })
    }

    /// Logits from the fixed point `z` (one tensor per branch).
    pub fn forward(&self, z: &[Tensor], train: bool) -> Result<Tensor> {
        let mut y = self.incre[0].forward(&z[0], train)?;
        for i in 1..self.incre.len() {
            let (c, bn) = &self.downsamp[i - 1];
            y = (self.incre[i].forward(&z[i], train)? + deq_core::nn::relu(&bn.forward(&c.forward(&y)?, train)?)?)?;
        }
        let y = deq_core::nn::relu(&self.final_bn.forward(&self.final_conv.forward(&y)?, train)?)?;
        let pooled = y.mean(D::Minus1)?.mean(D::Minus1)?;
        pooled.matmul(&self.fc_w.as_tensor().t()?)?.broadcast_add(self.fc_b.as_tensor())
    }

    /// Trainable variables.
    pub fn vars(&self, p: &str, out: &mut Vec<(String, Var)>) {
        for (i, b) in self.incre.iter().enumerate() {
            b.vars(&format!("{p}.incre.{i}"), out);
        }
        for (i, (c, bn)) in self.downsamp.iter().enumerate() {
            c.vars(&format!("{p}.downsamp.{i}.conv"), out);
            bn.vars(&format!("{p}.downsamp.{i}.bn"), out);
        }
        self.final_conv.vars(&format!("{p}.final.conv"), out);
        self.final_bn.vars(&format!("{p}.final.bn"), out);
        out.push((format!("{p}.fc.weight"), self.fc_w.clone()));
        out.push((format!("{p}.fc.bias"), self.fc_b.clone()));
    }

    /// Batch-norm layers by name (their running statistics go into checkpoints).
    pub fn norms<'a>(&'a self, p: &str, out: &mut Vec<(String, &'a BatchNorm2d)>) {
        for (i, b) in self.incre.iter().enumerate() {
            b.norms(&format!("{p}.incre.{i}"), out);
        }
        for (i, (_, bn)) in self.downsamp.iter().enumerate() {
            out.push((format!("{p}.downsamp.{i}.bn"), bn));
        }
        out.push((format!("{p}.final.bn"), &self.final_bn));
    }
}
