//! DEQ-Flow: RAFT's encoders and correlation pyramid outside the fixed point, and the update
//! block as the fixed-point function over the joint state `(h, c)` (GRU hidden state and 1/8
//! resolution target coordinates).
//!
//! `f(h, c) = (h', c + flow_head(h'))` with `h' = gru(h, [context, motion(c - c0, corr(c))])`;
//! the correlation lookup runs inside every call of `f`. Unless `all_grad`, `c` is detached
//! inside `f` (the zoo's default): gradient flows through `h` only. The state starts at `h = 0`,
//! `c = c0 + flow_init`. Each supervised state is decoded by the mask head and convex
//! upsampling into a full-resolution flow.

pub mod corr;
pub mod encoder;
pub mod update;

use candle_core::{DType, Device, Result, Tensor, Var};
use deq_core::norm::NormOptions;
use deq_core::rng::DeqRng;
use deq_core::{Deq, DeqConfig};
use serde::{Deserialize, Serialize};

use crate::ops::convex_upsample;
use corr::{CorrKind, CorrPyramid};
use encoder::{Encoder, NormKind};
use update::{MaskHead, UpdateBlock, UpdateDims};

/// The `[model]` table: the architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Widths of the encoders' three stages (RAFT: `[64, 96, 128]`).
    pub encoder_dims: [usize; 3],
    /// Feature channels of the feature encoder (RAFT/DEQ-Flow: 256; tiny: 64).
    pub feature_dim: usize,
    /// Hidden-state channels (B: 128, H: 256).
    pub hidden_dim: usize,
    /// Context channels (B: 128, H: 256).
    pub context_dim: usize,
    /// Correlation pyramid levels (4).
    pub corr_levels: usize,
    /// Lookup radius (4).
    pub corr_radius: usize,
    /// Motion encoder widths `[convc1, convc2, convf1, convf2]` (B: `[256, 192, 128, 64]`).
    pub motion_dims: [usize; 4],
    /// Motion features including the two flow channels (B: 128).
    pub motion_out: usize,
    /// Hidden channels of the flow head (B: 256, H: 512).
    pub head_dim: usize,
    /// Hidden channels of the mask head (256).
    pub mask_dim: usize,
    /// Norm of the feature encoder (`instance`).
    #[serde(default = "instance")]
    pub feature_norm: NormKind,
    /// Norm of the context encoder (`batch`).
    #[serde(default = "batch")]
    pub context_norm: NormKind,
    /// Let gradient reach the coordinates inside `f` (the zoo's `--all_grad`, Things stage).
    #[serde(default)]
    pub all_grad: bool,
    /// Correlation implementation: `volume` (stored) or `features` (on the fly).
    #[serde(default)]
    pub corr: CorrKind,
}

fn instance() -> NormKind {
    NormKind::Instance
}
fn batch() -> NormKind {
    NormKind::Batch
}

impl ModelConfig {
    /// DEQ-Flow-B (5.24M parameters with weight norm).
    pub fn b() -> Self {
        Self { encoder_dims: [64, 96, 128], feature_dim: 256, hidden_dim: 128, context_dim: 128, corr_levels: 4, corr_radius: 4, motion_dims: [256, 192, 128, 64], motion_out: 128, head_dim: 256, mask_dim: 256, feature_norm: NormKind::Instance, context_norm: NormKind::Batch, all_grad: false, corr: CorrKind::Volume }
    }

    /// DEQ-Flow-H (13.39M parameters with weight norm).
    pub fn h() -> Self {
        Self { hidden_dim: 256, context_dim: 256, motion_dims: [512, 384, 256, 128], motion_out: 256, head_dim: 512, ..Self::b() }
    }

    /// The zoo's tiny size (`--tiny`: hidden and context 32, features 64).
    pub fn tiny() -> Self {
        Self { feature_dim: 64, hidden_dim: 32, context_dim: 32, motion_dims: [64, 48, 32, 16], motion_out: 32, head_dim: 64, ..Self::b() }
    }

    /// Checks the sizes; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let pos = |v: usize, k: &str| if v == 0 { Err(format!("model.{k} must be positive")) } else { Ok(()) };
        for (i, d) in self.encoder_dims.iter().enumerate() {
            pos(*d, &format!("encoder_dims[{i}]"))?;
        }
        for (i, d) in self.motion_dims.iter().enumerate() {
            pos(*d, &format!("motion_dims[{i}]"))?;
        }
        pos(self.feature_dim, "feature_dim")?;
        pos(self.hidden_dim, "hidden_dim")?;
        pos(self.context_dim, "context_dim")?;
        pos(self.head_dim, "head_dim")?;
        pos(self.mask_dim, "mask_dim")?;
        if !(1..=6).contains(&self.corr_levels) {
            return Err(format!("model.corr_levels = {} must be 1 to 6", self.corr_levels));
        }
        if self.corr_radius == 0 || self.corr_radius > 16 {
            return Err(format!("model.corr_radius = {} must be 1 to 16", self.corr_radius));
        }
        if self.motion_out < 3 {
            return Err(format!("model.motion_out = {} must exceed the 2 flow channels", self.motion_out));
        }
        Ok(())
    }

    fn update_dims(&self) -> UpdateDims {
        let side = 2 * self.corr_radius + 1;
        UpdateDims { corr: self.corr_levels * side * side, hidden: self.hidden_dim, context: self.context_dim, motion: self.motion_dims, motion_out: self.motion_out, head: self.head_dim }
    }
}

/// The result of a forward pass.
#[derive(Debug)]
pub struct FlowOutput {
    /// Full-resolution flows `(B, 2, H, W)` of the supervised states, earliest first (one in
    /// evaluation).
    pub flows: Vec<Tensor>,
    /// The last state's 1/8-resolution flow `(B, 2, H/8, W/8)` (a warm start for the next pair).
    pub flow_low: Tensor,
    /// The last state's hidden state.
    pub hidden: Tensor,
    /// Forward solver statistics.
    pub stats: deq_core::SolverStats,
}

/// The DEQ-Flow model.
#[derive(Debug)]
pub struct DeqFlow {
    cfg: ModelConfig,
    fnet: Encoder,
    cnet: Encoder,
    update: UpdateBlock,
    mask: MaskHead,
    dtype: DType,
    device: Device,
}

/// The identity grid `(B, 2, H, W)`: channel 0 the column `x`, channel 1 the row `y`.
pub fn coords_grid(b: usize, h: usize, w: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; 2 * h * w];
    for i in 0..h {
        for j in 0..w {
            v[i * w + j] = j as f32;
            v[h * w + i * w + j] = i as f32;
        }
    }
    Tensor::from_vec(v, (1, 2, h, w), dev)?.to_dtype(dtype)?.repeat((b, 1, 1, 1))
}

impl DeqFlow {
    /// A new model; parameters drawn from `rng` in a fixed order (feature encoder, context
    /// encoder, update block, mask head); `norm` is the DEQ's weight normalisation.
    pub fn new(cfg: &ModelConfig, norm: &NormOptions, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let fnet = Encoder::new(cfg.encoder_dims, cfg.feature_dim, cfg.feature_norm, rng, dtype, dev)?;
        let cnet = Encoder::new(cfg.encoder_dims, cfg.context_dim, cfg.context_norm, rng, dtype, dev)?;
        let update = UpdateBlock::new(&cfg.update_dims(), norm, rng, dtype, dev)?;
        let mask = MaskHead::new(cfg.hidden_dim, cfg.mask_dim, rng, dtype, dev)?;
        Ok(Self { cfg: cfg.clone(), fnet, cnet, update, mask, dtype, device: dev.clone() })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Trainable variables with PyTorch-style names (`fnet.*`, `cnet.*`, `update_block.*`,
    /// `mask.*`).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.fnet.vars("fnet", &mut out);
        self.cnet.vars("cnet", &mut out);
        self.update.vars("update_block", &mut out);
        self.mask.vars("mask", &mut out);
        out
    }

    /// The number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.as_tensor().elem_count()).sum()
    }

    /// Batch-norm running statistics, for checkpoints.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.fnet.buffers("fnet", &mut out);
        self.cnet.buffers("cnet", &mut out);
        out
    }

    /// Restores the running statistics by name.
    pub fn load_buffers(&self, get: &dyn Fn(&str) -> Option<Tensor>) -> Result<()> {
        self.fnet.load_buffers("fnet", get)?;
        self.cnet.load_buffers("cnet", get)
    }

    /// Recomputes the update block's normalised weights from the raw ones ([`DeqFlow::forward`]
    /// does this before every solve; call it before using [`DeqFlow::f`] directly).
    pub fn reset_norms(&self) -> Result<()> {
        self.update.reset()
    }

    /// The fixed-point function over `z = [h, c]` with inputs `[context, corr levels…]`.
    pub fn f(&self, z: &[Tensor], inputs: &[Tensor], coords0: &Tensor) -> Result<Vec<Tensor>> {
        let (h, c) = (&z[0], &z[1]);
        let c = if self.cfg.all_grad { c.clone() } else { c.detach() };
        let pyramid = CorrPyramid::from_tensors(self.cfg.corr, &inputs[1..], self.cfg.corr_radius);
        let corr = pyramid.lookup(&c)?;
        let flow = (&c - coords0)?;
        let (h, delta) = self.update.forward(h, &inputs[0], &corr, &flow)?;
        Ok(vec![h, (c + delta)?])
    }

    /// The upsampled flow of a state `(h, c)`.
    pub fn decode(&self, h: &Tensor, c: &Tensor, coords0: &Tensor) -> Result<Tensor> {
        let mask = self.mask.forward(h)?;
        convex_upsample(&(c - coords0)?, &mask)
    }

    /// Flow from `img1` to `img2` (`(B, 3, H, W)`, values in `[0, 255]`, `H` and `W` multiples
    /// of 8). `flow_init` `(B, 2, H/8, W/8)` warm-starts the coordinates; `bn_batch_stats`
    /// selects batch statistics in the context encoder's batch norms (training, not frozen).
    /// The DEQ's training flag decides between supervised states with gradients and a single
    /// evaluation solve.
    pub fn forward(&self, img1: &Tensor, img2: &Tensor, flow_init: Option<&Tensor>, deq: &Deq, bn_batch_stats: bool) -> Result<FlowOutput> {
        let (b, _, hh, ww) = img1.dims4()?;
        if img2.dims4()? != (b, 3, hh, ww) || img1.dim(1)? != 3 {
            candle_core::bail!("deq-flow: frames {:?} and {:?} must both be (B, 3, H, W)", img1.dims(), img2.dims());
        }
        if hh % 8 != 0 || ww % 8 != 0 || hh == 0 || ww == 0 {
            candle_core::bail!("deq-flow: frame size {hh}x{ww} must be a positive multiple of 8 (pad the frames)");
        }
        let norm = |x: &Tensor| x.to_dtype(self.dtype)?.affine(2.0 / 255.0, -1.0);
        let (i1, i2) = (norm(img1)?, norm(img2)?);
        let fmaps = self.fnet.forward(&Tensor::cat(&[&i1, &i2], 0)?, false)?;
        let (f1, f2) = (fmaps.narrow(0, 0, b)?, fmaps.narrow(0, b, b)?);
        let pyramid = CorrPyramid::new(self.cfg.corr, &f1, &f2, self.cfg.corr_levels, self.cfg.corr_radius)?;
        let context = deq_core::nn::relu(&self.cnet.forward(&i1, bn_batch_stats)?)?;
        let (h8, w8) = (hh / 8, ww / 8);
        let coords0 = coords_grid(b, h8, w8, self.dtype, &self.device)?;
        let h0 = Tensor::zeros((b, self.cfg.hidden_dim, h8, w8), self.dtype, &self.device)?;
        let c0 = match flow_init {
            Some(fi) => (&coords0 + fi.to_dtype(self.dtype)?)?,
            None => coords0.clone(),
        };
        self.update.reset()?;
        let mut inputs = vec![context];
        inputs.extend(pyramid.tensors().iter().cloned());
        let out = deq
            .forward(|z: &[Tensor], x: &[Tensor]| self.f(z, x, &coords0), &inputs, &[h0, c0])
            .map_err(|e| match e {
                deq_core::DeqError::Candle(c) => c,
                other => candle_core::Error::Msg(other.to_string()),
            })?;
        let flows = out.states.iter().map(|s| self.decode(&s[0], &s[1], &coords0)).collect::<Result<Vec<_>>>()?;
        let last = out.last();
        Ok(FlowOutput { flows, flow_low: (&last[1] - &coords0)?.detach(), hidden: last[0].detach(), stats: out.stats })
    }
}

/// The DEQ settings of the zoo's recipes: `DeqConfig` defaults with the given overrides kept
/// (the caller's `[deq]` table).
pub fn deq_layer(cfg: &DeqConfig, training: bool, seed: u64) -> deq_core::Result<Deq> {
    let mut d = Deq::new(cfg.clone())?.with_seed(seed);
    d.set_training(training);
    Ok(d)
}
