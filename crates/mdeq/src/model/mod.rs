//! The multiscale DEQ: stem, injection, the DEQ function `f` (per-branch residual blocks and
//! multiscale fusion, weight-normalised, group norm) solved jointly over all resolutions by
//! deq-core, and the classification head.

pub mod block;
pub mod fusion;
pub mod head;

use block::BranchBlock;
use candle_core::{DType, Device, Result, Tensor, Var};
use deq_train::layers::Conv;
use deq_core::norm::NormOptions;
use deq_core::rng::DeqRng;
use deq_core::{Deq, DeqConfig, SolverStats};
use fusion::Fusion;
use head::Head;
use deq_train::layers::BatchNorm2d;
use serde::{Deserialize, Serialize};

/// Architecture of an MDEQ (the `[model]` table of a config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Input channels (1 for MNIST, 3 for RGB).
    pub in_channels: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Channels per branch, finest resolution first (the number of branches is its length).
    pub channels: Vec<usize>,
    /// Bottleneck widths of the head per branch (outputs are 4x these).
    pub head_channels: Vec<usize>,
    /// Features before the classifier.
    pub final_chansize: usize,
    /// Width expansion inside each residual block.
    #[serde(default = "default_expansion")]
    pub expansion: usize,
    /// Group-norm groups inside `f` (the post-fusion norm uses half).
    #[serde(default = "default_groups")]
    pub groups: usize,
    /// Stride-2 convolutions in the stem (0, 1 or 2).
    #[serde(default)]
    pub downsample_times: usize,
}

fn default_expansion() -> usize {
    5
}
fn default_groups() -> usize {
    8
}

impl ModelConfig {
    /// Checks shapes that would otherwise fail deep inside a forward pass.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.channels.is_empty() {
            return Err("model.channels: at least one branch".into());
        }
        if self.head_channels.len() != self.channels.len() {
            return Err(format!("model.head_channels: {} entries for {} branches", self.head_channels.len(), self.channels.len()));
        }
        if self.downsample_times > 2 {
            return Err("model.downsample_times: 0, 1 or 2".into());
        }
        for &c in &self.channels {
            if self.groups == 0 || c % self.groups != 0 || (self.channels.len() > 1 && c % (self.groups / 2).max(1) != 0) {
                return Err(format!("model.channels: {c} is not divisible by groups = {}", self.groups));
            }
            if (self.expansion * c) % self.groups != 0 {
                return Err(format!("model.expansion: {} x {c} is not divisible by groups = {}", self.expansion, self.groups));
            }
        }
        Ok(())
    }
}

/// A multiscale deep equilibrium classifier.
#[derive(Debug)]
pub struct Mdeq {
    cfg: ModelConfig,
    stem: Vec<(Conv, BatchNorm2d)>,
    stage0: Option<(Conv, BatchNorm2d)>,
    blocks: Vec<BranchBlock>,
    fusion: Fusion,
    head: Head,
    deq_train: Deq,
    deq_eval: Deq,
    dtype: DType,
    device: Device,
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct MdeqOutput {
    /// Class logits `(batch, classes)` of the fixed point.
    pub logits: Tensor,
    /// Class logits of every state the DEQ returned, earliest first (the last is `logits`): in
    /// training one per supervised state (`n_states`, `indexing`, `sup_gap`, `sup_loc`), for
    /// fixed-point correction; in evaluation just the fixed point.
    pub state_logits: Vec<Tensor>,
    /// The fixed point (with its gradient path in training).
    pub fixed_point: Vec<Tensor>,
    /// The injection `u` the fixed point was solved for (the input of [`Mdeq::f`]).
    pub injection: Tensor,
    /// Statistics of the fixed-point solve.
    pub stats: SolverStats,
    /// Statistics of the adjoint solves, filled in when the implicit backward runs.
    pub backward_stats: deq_core::grad::BackwardStats,
}

fn deq_err(e: deq_core::DeqError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl Mdeq {
    /// Builds the model with parameters drawn from `rng`.
    pub fn new(cfg: ModelConfig, deq: DeqConfig, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let c0 = cfg.channels[0];
        let s1 = if cfg.downsample_times >= 1 { 2 } else { 1 };
        let s2 = if cfg.downsample_times >= 2 { 2 } else { 1 };
        let stem = vec![
            (Conv::new(cfg.in_channels, c0, 3, s1, false, rng, dtype, dev)?, BatchNorm2d::new(c0, true, dtype, dev)?),
            (Conv::new(c0, c0, 3, s2, false, rng, dtype, dev)?, BatchNorm2d::new(c0, true, dtype, dev)?),
        ];
        let stage0 = if cfg.downsample_times > 0 || cfg.channels.len() > 2 {
            Some((Conv::new(c0, c0, 1, 1, false, rng, dtype, dev)?, BatchNorm2d::new(c0, true, dtype, dev)?))
        } else {
            None
        };
        let norm = NormOptions::from_config(&deq);
        let blocks = cfg.channels.iter().map(|&c| BranchBlock::new(c, cfg.expansion, cfg.groups, norm, rng, dtype, dev)).collect::<Result<Vec<_>>>()?;
        let fusion = Fusion::new(&cfg.channels, cfg.groups, norm, rng, dtype, dev)?;
        let head = Head::new(&cfg.channels, &cfg.head_channels, cfg.final_chansize, cfg.num_classes, rng, dtype, dev)?;
        let deq_train = Deq::new(deq.clone()).map_err(deq_err)?;
        let mut deq_eval = Deq::new(deq).map_err(deq_err)?;
        deq_eval.set_training(false);
        Ok(Self { cfg, stem, stage0, blocks, fusion, head, deq_train, deq_eval, dtype, device: dev.clone() })
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The floating-point type of the parameters (inputs are converted to it).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The DEQ function `f(z, u)`: residual block per branch (injection into branch 0), then
    /// multiscale fusion.
    pub fn f(&self, z: &[Tensor], u: &Tensor) -> Result<Vec<Tensor>> {
        let b = self
            .blocks
            .iter()
            .zip(z)
            .enumerate()
            .map(|(i, (blk, zi))| blk.forward(zi, if i == 0 { Some(u) } else { None }))
            .collect::<Result<Vec<_>>>()?;
        self.fusion.forward(&b)
    }

    /// Stem and injection: the input of `f` for a batch of images `(B, C, H, W)`.
    pub fn inject(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for (c, bn) in &self.stem {
            h = deq_core::nn::relu(&bn.forward(&c.forward(&h)?, train)?)?;
        }
        if let Some((c, bn)) = &self.stage0 {
            h = deq_core::nn::relu(&bn.forward(&c.forward(&h)?, train)?)?;
        }
        Ok(h)
    }

    /// Zero initial state for an injection `u` (branch `i` at `1 / 2^i` of its resolution).
    pub fn z0(&self, u: &Tensor) -> Result<Vec<Tensor>> {
        let (b, _, h, w) = u.dims4()?;
        let mut out = Vec::with_capacity(self.cfg.channels.len());
        let (mut hh, mut ww) = (h, w);
        for (i, &c) in self.cfg.channels.iter().enumerate() {
            if i > 0 {
                hh = hh.div_ceil(2);
                ww = ww.div_ceil(2);
            }
            out.push(Tensor::zeros((b, c, hh, ww), u.dtype(), u.device())?);
        }
        Ok(out)
    }

    /// Recomputes every weight-normalised kernel of `f` (once per step, before the solve).
    pub fn reset_norms(&self) -> Result<()> {
        for b in &self.blocks {
            b.reset()?;
        }
        self.fusion.reset()
    }

    /// Classifies a batch. In training the fixed point carries the configured gradient
    /// (phantom or implicit); in evaluation it is detached.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<MdeqOutput> {
        self.reset_norms()?;
        let u = self.inject(&x.to_device(&self.device)?.to_dtype(self.dtype)?, train)?;
        let z0 = self.z0(&u)?;
        let deq = if train { &self.deq_train } else { &self.deq_eval };
        let out = deq.forward(|z: &[Tensor], inp: &[Tensor]| self.f(z, &inp[0]), std::slice::from_ref(&u), &z0).map_err(deq_err)?;
        // The head (with its batch norms) runs once per state, the fixed point's call exactly as
        // with a single state.
        let state_logits = out.states.iter().map(|z| self.head.forward(z, train)).collect::<Result<Vec<_>>>()?;
        let logits = state_logits.last().cloned().ok_or_else(|| candle_core::Error::Msg("the DEQ returned no state".into()))?;
        Ok(MdeqOutput { logits, state_logits, fixed_point: out.last().to_vec(), injection: u, stats: out.stats, backward_stats: out.backward_stats })
    }

    /// Every trainable variable with its name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, (c, bn)) in self.stem.iter().enumerate() {
            c.vars(&format!("stem.{i}.conv"), &mut out);
            bn.vars(&format!("stem.{i}.bn"), &mut out);
        }
        if let Some((c, bn)) = &self.stage0 {
            c.vars("stage0.conv", &mut out);
            bn.vars("stage0.bn", &mut out);
        }
        for (i, b) in self.blocks.iter().enumerate() {
            b.vars(&format!("f.block.{i}"), &mut out);
        }
        self.fusion.vars("f", &mut out);
        self.head.vars("head", &mut out);
        out
    }

    /// Batch-norm layers by name.
    pub fn batch_norms(&self) -> Vec<(String, &BatchNorm2d)> {
        let mut out = Vec::new();
        for (i, (_, bn)) in self.stem.iter().enumerate() {
            out.push((format!("stem.{i}.bn"), bn));
        }
        if let Some((_, bn)) = &self.stage0 {
            out.push(("stage0.bn".to_string(), bn));
        }
        self.head.norms("head", &mut out);
        out
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.as_tensor().elem_count()).sum()
    }
}
