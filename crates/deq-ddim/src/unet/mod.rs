//! The DDPM noise model of Ho et al. as the DDIM code builds it (ermongroup/ddim
//! `models/diffusion.py`, class `Model`): a UNet over `len(ch_mult)` resolutions with
//! `num_res_blocks` residual blocks per level on the way down and one more on the way up
//! (each taking a skip connection), self-attention at the resolutions in `attn_resolutions`, a
//! middle block-attention-block, and a sinusoidal timestep embedding through two dense layers.
//!
//! Parameter names are those of the PyTorch state dicts (`temb.dense.0.weight`,
//! `down.1.block.0.nin_shortcut.weight`, `up.0.attn.2.q.bias`, `norm_out.weight`, ...), so the
//! public CIFAR-10 / CelebA / LSUN checkpoints load after `scripts/convert_ddpm_checkpoint.py`.

mod blocks;

pub use blocks::{timestep_embedding, AttnBlock, Downsample, ResnetBlock, Upsample, GROUPS, NORM_EPS};

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use deq_core::nn::silu;
use deq_core::rng::DeqRng;
use deq_train::layers::{Conv, Linear};
use serde::{Deserialize, Serialize};

/// The `[model]` table (the DDIM configs' `model` section; `ema_rate` lives in `[train]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Channels out (the noise prediction: equal to `in_channels`).
    pub out_ch: usize,
    /// Base width (a multiple of 32: every group norm has 32 groups).
    pub ch: usize,
    /// Width multiplier per resolution level.
    pub ch_mult: Vec<usize>,
    /// Residual blocks per level on the way down (one more on the way up).
    pub num_res_blocks: usize,
    /// Resolutions (side lengths) with self-attention.
    pub attn_resolutions: Vec<usize>,
    /// Dropout in the residual blocks (training only).
    pub dropout: f64,
    /// Image side length (square images).
    pub resolution: usize,
    /// Strided / upsampling convolutions (else average pooling and plain upsampling).
    pub resamp_with_conv: bool,
    /// Groups of every group norm (the DDPM code's 32; with `ch = 32` that normalises every
    /// channel on its own, which strips each feature map's mean inside the residual branches).
    pub norm_groups: usize,
}

impl Default for UNetConfig {
    /// The DDIM code's CIFAR-10 model (35.7 M parameters).
    fn default() -> Self {
        Self { in_channels: 3, out_ch: 3, ch: 128, ch_mult: vec![1, 2, 2, 2], num_res_blocks: 2, attn_resolutions: vec![16], dropout: 0.1, resolution: 32, resamp_with_conv: true, norm_groups: GROUPS }
    }
}

impl UNetConfig {
    /// The side length at each level (the strided convolution maps `n` to `(n - 1) / 2 + ...`,
    /// i.e. `floor((n - 2) / 2) + 1` after its asymmetric padding; pooling halves).
    pub fn level_resolutions(&self) -> Vec<usize> {
        let mut r = vec![self.resolution];
        for _ in 1..self.ch_mult.len() {
            let n = *r.last().expect("one level");
            // A side below 2 cannot be halved: 0 makes validation refuse the configuration.
            r.push(if n < 2 { 0 } else if self.resamp_with_conv { (n - 2) / 2 + 1 } else { n / 2 });
        }
        r
    }

    /// Checks the sizes; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.in_channels == 0 || self.out_ch == 0 {
            return Err("model.in_channels and model.out_ch must be positive".into());
        }
        if self.norm_groups == 0 || self.ch == 0 || self.ch % self.norm_groups != 0 {
            return Err(format!("model.ch = {} must be a positive multiple of model.norm_groups = {}", self.ch, self.norm_groups));
        }
        if self.ch_mult.is_empty() || self.ch_mult.contains(&0) {
            return Err(format!("model.ch_mult = {:?}: at least one level, all positive", self.ch_mult));
        }
        if self.num_res_blocks == 0 {
            return Err("model.num_res_blocks must be positive".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("model.dropout = {} must be in [0, 1)", self.dropout));
        }
        if self.resolution < 4 || self.resolution > 4096 {
            return Err(format!("model.resolution = {} must be in 4..=4096", self.resolution));
        }
        // Every level but the last is halved and later doubled back: the sizes must round-trip.
        let res = self.level_resolutions();
        for (i, w) in res.windows(2).enumerate() {
            if w[1] * 2 != w[0] || w[1] < 2 {
                return Err(format!("model.resolution = {}: level {} has side {} and level {} side {}, which upsampling does not map back (choose a resolution divisible by 2^{})", self.resolution, i, w[0], i + 1, w[1], self.ch_mult.len() - 1));
            }
        }
        for a in &self.attn_resolutions {
            if !res.contains(a) {
                return Err(format!("model.attn_resolutions: {a} is not one of the levels' sides {res:?}"));
            }
        }
        Ok(())
    }
}

/// One level of the down path.
#[derive(Debug)]
struct DownLevel {
    blocks: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
    downsample: Option<Downsample>,
}

/// One level of the up path.
#[derive(Debug)]
struct UpLevel {
    blocks: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
    upsample: Option<Upsample>,
}

/// The UNet `eps(x_t, t)`.
#[derive(Debug)]
pub struct UNet {
    cfg: UNetConfig,
    dense0: Linear,
    dense1: Linear,
    conv_in: Conv,
    down: Vec<DownLevel>,
    mid_block_1: ResnetBlock,
    mid_attn_1: AttnBlock,
    mid_block_2: ResnetBlock,
    /// Indexed by level (`up[0]` is the full resolution), as in the state dict.
    up: Vec<UpLevel>,
    norm_out: deq_train::layers::GroupNorm,
    conv_out: Conv,
}

impl UNet {
    /// A new model with PyTorch's default initialisation drawn from `rng`.
    pub fn new(cfg: &UNetConfig, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let (ch, g) = (cfg.ch, cfg.norm_groups);
        let temb_ch = 4 * ch;
        let levels = cfg.ch_mult.len();
        let in_mult: Vec<usize> = std::iter::once(1).chain(cfg.ch_mult.iter().copied()).collect();
        let res = cfg.level_resolutions();
        let dense0 = Linear::new(ch, temb_ch, true, rng, dtype, dev)?;
        let dense1 = Linear::new(temb_ch, temb_ch, true, rng, dtype, dev)?;
        let conv_in = blocks::conv3x3(cfg.in_channels, ch, rng, dtype, dev)?;
        let mut down = Vec::with_capacity(levels);
        let mut block_in = ch;
        for i in 0..levels {
            let block_out = ch * cfg.ch_mult[i];
            block_in = ch * in_mult[i];
            let (mut bl, mut at) = (Vec::new(), Vec::new());
            for _ in 0..cfg.num_res_blocks {
                bl.push(ResnetBlock::new(block_in, block_out, temb_ch, cfg.dropout, g, rng, dtype, dev)?);
                block_in = block_out;
                if cfg.attn_resolutions.contains(&res[i]) {
                    at.push(AttnBlock::new(block_in, g, rng, dtype, dev)?);
                }
            }
            let downsample = if i + 1 != levels { Some(Downsample::new(block_in, cfg.resamp_with_conv, rng, dtype, dev)?) } else { None };
            down.push(DownLevel { blocks: bl, attn: at, downsample });
        }
        let mid_block_1 = ResnetBlock::new(block_in, block_in, temb_ch, cfg.dropout, g, rng, dtype, dev)?;
        let mid_attn_1 = AttnBlock::new(block_in, g, rng, dtype, dev)?;
        let mid_block_2 = ResnetBlock::new(block_in, block_in, temb_ch, cfg.dropout, g, rng, dtype, dev)?;
        let mut up_rev = Vec::with_capacity(levels);
        for i in (0..levels).rev() {
            let block_out = ch * cfg.ch_mult[i];
            let mut skip_in = ch * cfg.ch_mult[i];
            let (mut bl, mut at) = (Vec::new(), Vec::new());
            for j in 0..=cfg.num_res_blocks {
                if j == cfg.num_res_blocks {
                    skip_in = ch * in_mult[i];
                }
                bl.push(ResnetBlock::new(block_in + skip_in, block_out, temb_ch, cfg.dropout, g, rng, dtype, dev)?);
                block_in = block_out;
                if cfg.attn_resolutions.contains(&res[i]) {
                    at.push(AttnBlock::new(block_in, g, rng, dtype, dev)?);
                }
            }
            let upsample = if i != 0 { Some(Upsample::new(block_in, cfg.resamp_with_conv, rng, dtype, dev)?) } else { None };
            up_rev.push(UpLevel { blocks: bl, attn: at, upsample });
        }
        up_rev.reverse();
        let norm_out = blocks::output_norm(g, block_in, dtype, dev)?;
        let conv_out = blocks::conv3x3(block_in, cfg.out_ch, rng, dtype, dev)?;
        Ok(Self { cfg: cfg.clone(), dense0, dense1, conv_in, down, mid_block_1, mid_attn_1, mid_block_2, up: up_rev, norm_out, conv_out })
    }

    /// The configuration.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// The noise prediction for `x` `(B, in_channels, R, R)` at timesteps `t` `(B,)` (floats,
    /// the raw step indices `0..T`), without dropout.
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.forward_with(x, t, None)
    }

    /// [`UNet::forward`] with dropout drawn from `rng` when given (training).
    pub fn forward_with(&self, x: &Tensor, t: &Tensor, mut rng: Option<&mut DeqRng>) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let r = self.cfg.resolution;
        if c != self.cfg.in_channels || h != r || w != r {
            candle_core::bail!("unet: input {:?}, expected (B, {}, {r}, {r})", x.dims(), self.cfg.in_channels);
        }
        if t.dims() != [b] {
            candle_core::bail!("unet: timesteps {:?} for a batch of {b}", t.dims());
        }
        let t = t.to_dtype(x.dtype())?;
        let temb = self.dense1.forward(&silu(&self.dense0.forward(&timestep_embedding(&t, self.cfg.ch)?)?)?)?;
        // Every residual block applies SiLU to the embedding first: compute it once.
        let st = silu(&temb)?;
        let mut hs = vec![self.conv_in.forward(x)?];
        for level in &self.down {
            for (j, block) in level.blocks.iter().enumerate() {
                let mut h = block.forward(hs.last().expect("conv_in"), &st, rng.as_deref_mut())?;
                if let Some(a) = level.attn.get(j) {
                    h = a.forward(&h)?;
                }
                hs.push(h);
            }
            if let Some(d) = &level.downsample {
                let h = d.forward(hs.last().expect("a block"))?;
                hs.push(h);
            }
        }
        let mut h = self.mid_block_1.forward(hs.last().expect("down path"), &st, rng.as_deref_mut())?;
        h = self.mid_attn_1.forward(&h)?;
        h = self.mid_block_2.forward(&h, &st, rng.as_deref_mut())?;
        for level in self.up.iter().rev() {
            for (j, block) in level.blocks.iter().enumerate() {
                let skip = hs.pop().expect("one skip per up block");
                h = block.forward(&Tensor::cat(&[&h, &skip], 1)?, &st, rng.as_deref_mut())?;
                if let Some(a) = level.attn.get(j) {
                    h = a.forward(&h)?;
                }
            }
            if let Some(u) = &level.upsample {
                h = u.forward(&h)?;
            }
        }
        debug_assert!(hs.is_empty());
        self.conv_out.forward(&silu(&self.norm_out.forward(&h)?)?)
    }

    /// Trainable variables under the PyTorch state-dict names, in its order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.dense0.vars("temb.dense.0", &mut out);
        self.dense1.vars("temb.dense.1", &mut out);
        self.conv_in.vars("conv_in", &mut out);
        for (i, l) in self.down.iter().enumerate() {
            for (j, b) in l.blocks.iter().enumerate() {
                b.vars(&format!("down.{i}.block.{j}"), &mut out);
            }
            for (j, a) in l.attn.iter().enumerate() {
                a.vars(&format!("down.{i}.attn.{j}"), &mut out);
            }
            if let Some(d) = &l.downsample {
                d.vars(&format!("down.{i}.downsample"), &mut out);
            }
        }
        self.mid_block_1.vars("mid.block_1", &mut out);
        self.mid_attn_1.vars("mid.attn_1", &mut out);
        self.mid_block_2.vars("mid.block_2", &mut out);
        for (i, l) in self.up.iter().enumerate() {
            for (j, b) in l.blocks.iter().enumerate() {
                b.vars(&format!("up.{i}.block.{j}"), &mut out);
            }
            for (j, a) in l.attn.iter().enumerate() {
                a.vars(&format!("up.{i}.attn.{j}"), &mut out);
            }
            if let Some(u) = &l.upsample {
                u.vars(&format!("up.{i}.upsample"), &mut out);
            }
        }
        self.norm_out.vars("norm_out", &mut out);
        self.conv_out.vars("conv_out", &mut out);
        out
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Sets every parameter from `tensors` (state-dict names; shapes must match; extra
    /// tensors are an error naming them, so a checkpoint of another architecture is refused).
    pub fn load(&self, tensors: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        let vars = self.vars();
        let known: std::collections::HashSet<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        let extra: Vec<&String> = tensors.keys().filter(|k| !known.contains(k.as_str())).collect();
        if !extra.is_empty() {
            candle_core::bail!("{origin}: {} tensors that this model does not have (first: {}); is the [model] configuration the checkpoint's?", extra.len(), extra[0]);
        }
        for (name, var) in &vars {
            let t = tensors.get(name).ok_or_else(|| candle_core::Error::msg(format!("{origin}: no tensor {name}")))?;
            if t.dims() != var.dims() {
                candle_core::bail!("{origin}: {name} has shape {:?}, the model {:?}", t.dims(), var.dims());
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
