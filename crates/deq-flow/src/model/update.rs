//! The update block of DEQ-Flow (RAFT's `BasicUpdateBlock` without the mask head): the motion
//! encoder, the separable convolutional GRU and the flow head, all weight-normalised (the
//! fixed-point function `f` is made of these), plus the upsampling-mask head applied outside
//! `f` to decoded states.

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use deq_core::nn::{relu, Conv2dSpec};
use deq_core::norm::{NormConv2d, NormOptions};
use deq_core::rng::DeqRng;
use deq_train::layers::{norm_conv_vars, Conv, ConvInit};

fn wconv(cin: usize, cout: usize, (kh, kw): (usize, usize), opts: &NormOptions, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<NormConv2d> {
    let spec = Conv2dSpec { padding: (kh / 2, kw / 2), stride: 1, dilation: 1, groups: 1 };
    NormConv2d::rect(cin, cout, (kh, kw), spec, true, opts.clone(), rng, dtype, dev).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Widths of the update block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateDims {
    /// Correlation channels (`levels * (2 radius + 1)^2`).
    pub corr: usize,
    /// Hidden state channels.
    pub hidden: usize,
    /// Context channels.
    pub context: usize,
    /// `convc1`, `convc2`, `convf1`, `convf2` output channels.
    pub motion: [usize; 4],
    /// Motion features (including the 2 flow channels appended last).
    pub motion_out: usize,
    /// Hidden channels of the flow head.
    pub head: usize,
}

/// Motion encoder: correlation and flow features, concatenated with the flow.
#[derive(Debug)]
pub struct MotionEncoder {
    convc1: NormConv2d,
    convc2: NormConv2d,
    convf1: NormConv2d,
    convf2: NormConv2d,
    conv: NormConv2d,
}

/// RAFT's separable GRU: a 1x5 step, then a 5x1 step.
#[derive(Debug)]
pub struct SepConvGru {
    z: [NormConv2d; 2],
    r: [NormConv2d; 2],
    q: [NormConv2d; 2],
}

/// The flow head: `3x3 conv, ReLU, 3x3 conv -> 2` (the flow increment).
#[derive(Debug)]
pub struct FlowHead {
    conv1: NormConv2d,
    conv2: NormConv2d,
}

/// The update block inside `f`.
#[derive(Debug)]
pub struct UpdateBlock {
    /// Motion encoder.
    pub encoder: MotionEncoder,
    /// GRU.
    pub gru: SepConvGru,
    /// Flow head.
    pub flow_head: FlowHead,
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::sigmoid(x)
}

impl UpdateBlock {
    /// A new block with PyTorch's default initialisation and the DEQ's weight normalisation.
    pub fn new(d: &UpdateDims, opts: &NormOptions, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let [c1, c2, f1, f2] = d.motion;
        if d.motion_out < 3 {
            candle_core::bail!("motion_out must exceed the 2 flow channels");
        }
        let encoder = MotionEncoder {
            convc1: wconv(d.corr, c1, (1, 1), opts, rng, dtype, dev)?,
            convc2: wconv(c1, c2, (3, 3), opts, rng, dtype, dev)?,
            convf1: wconv(2, f1, (7, 7), opts, rng, dtype, dev)?,
            convf2: wconv(f1, f2, (3, 3), opts, rng, dtype, dev)?,
            conv: wconv(c2 + f2, d.motion_out - 2, (3, 3), opts, rng, dtype, dev)?,
        };
        let gin = d.hidden + d.context + d.motion_out;
        // PyTorch's construction order: convz1, convr1, convq1 (1x5), then convz2, convr2,
        // convq2 (5x1).
        let mut horiz = Vec::new();
        let mut vert = Vec::new();
        for _ in 0..3 {
            horiz.push(wconv(gin, d.hidden, (1, 5), opts, rng, dtype, dev)?);
        }
        for _ in 0..3 {
            vert.push(wconv(gin, d.hidden, (5, 1), opts, rng, dtype, dev)?);
        }
        let (mut h, mut v) = (horiz.into_iter(), vert.into_iter());
        let mut next = || -> [NormConv2d; 2] { [h.next().expect("three"), v.next().expect("three")] };
        let gru = SepConvGru { z: next(), r: next(), q: next() };
        let flow_head = FlowHead { conv1: wconv(d.hidden, d.head, (3, 3), opts, rng, dtype, dev)?, conv2: wconv(d.head, 2, (3, 3), opts, rng, dtype, dev)? };
        Ok(Self { encoder, gru, flow_head })
    }

    /// Recomputes the normalised weights (once per forward pass, before the solve).
    pub fn reset(&self) -> Result<()> {
        for c in self.convs() {
            c.1.reset().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        Ok(())
    }

    fn convs(&self) -> Vec<(String, &NormConv2d)> {
        let e = &self.encoder;
        let mut v = vec![
            ("encoder.convc1".to_string(), &e.convc1),
            ("encoder.convc2".to_string(), &e.convc2),
            ("encoder.convf1".to_string(), &e.convf1),
            ("encoder.convf2".to_string(), &e.convf2),
            ("encoder.conv".to_string(), &e.conv),
        ];
        for (i, s) in ["1", "2"].iter().enumerate() {
            v.push((format!("gru.convz{s}"), &self.gru.z[i]));
            v.push((format!("gru.convr{s}"), &self.gru.r[i]));
            v.push((format!("gru.convq{s}"), &self.gru.q[i]));
        }
        v.push(("flow_head.conv1".to_string(), &self.flow_head.conv1));
        v.push(("flow_head.conv2".to_string(), &self.flow_head.conv2));
        v
    }

    /// Trainable variables under `prefix` (PyTorch names: `encoder.convc1.weight_v`, …).
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        for (name, c) in self.convs() {
            norm_conv_vars(c, &format!("{prefix}.{name}"), out);
        }
    }

    /// One update: `(h, context, corr, flow) -> (h', delta_flow)`.
    pub fn forward(&self, h: &Tensor, context: &Tensor, corr: &Tensor, flow: &Tensor) -> Result<(Tensor, Tensor)> {
        let motion = self.encoder.forward(flow, corr)?;
        let x = Tensor::cat(&[context, &motion], 1)?;
        let h = self.gru.forward(h, &x)?;
        let delta = self.flow_head.forward(&h)?;
        Ok((h, delta))
    }
}

impl MotionEncoder {
    /// `(flow, corr) -> [features, flow]`.
    pub fn forward(&self, flow: &Tensor, corr: &Tensor) -> Result<Tensor> {
        let cor = relu(&self.convc1.forward(corr)?)?;
        let cor = relu(&self.convc2.forward(&cor)?)?;
        let flo = relu(&self.convf1.forward(flow)?)?;
        let flo = relu(&self.convf2.forward(&flo)?)?;
        let out = relu(&self.conv.forward(&Tensor::cat(&[&cor, &flo], 1)?)?)?;
        Tensor::cat(&[&out, flow], 1)
    }
}

impl SepConvGru {
    /// Two GRU steps (horizontal, then vertical) of `h` with input `x`.
    pub fn forward(&self, h: &Tensor, x: &Tensor) -> Result<Tensor> {
        let mut h = h.clone();
        for i in 0..2 {
            let hx = Tensor::cat(&[&h, x], 1)?;
            let z = sigmoid(&self.z[i].forward(&hx)?)?;
            let r = sigmoid(&self.r[i].forward(&hx)?)?;
            let q = deq_core::ops::tanh(&self.q[i].forward(&Tensor::cat(&[&(&r * &h)?, x], 1)?)?)?;
            // (1 - z) h + z q = h + z (q - h).
            h = (&h + (z * (q - &h)?)?)?;
        }
        Ok(h)
    }
}

impl FlowHead {
    /// The flow increment from the hidden state.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        self.conv2.forward(&relu(&self.conv1.forward(h)?)?)
    }
}

/// The upsampling-mask head (outside `f`, not normalised): `3x3 conv hidden -> mid, ReLU,
/// 1x1 conv -> 576` (9 convex weights for each of the 8x8 sub-pixels), scaled by 0.25.
#[derive(Debug)]
pub struct MaskHead {
    conv1: Conv,
    conv2: Conv,
}

impl MaskHead {
    /// A new head with PyTorch's default initialisation.
    pub fn new(hidden: usize, mid: usize, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let conv1 = Conv::with_init(hidden, mid, (3, 3), Conv2dSpec::padded(1), true, ConvInit::TorchDefault, rng, dtype, dev)?;
        let conv2 = Conv::with_init(mid, 64 * 9, (1, 1), Conv2dSpec::padded(0), true, ConvInit::TorchDefault, rng, dtype, dev)?;
        Ok(Self { conv1, conv2 })
    }

    /// The mask logits `(B, 576, H, W)` of a hidden state.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        self.conv2.forward(&relu(&self.conv1.forward(h)?)?)? * 0.25
    }

    /// Trainable variables (`{prefix}.0.*`, `{prefix}.2.*` as PyTorch's `Sequential`).
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        self.conv1.vars(&format!("{prefix}.0"), out);
        self.conv2.vars(&format!("{prefix}.2"), out);
    }
}
