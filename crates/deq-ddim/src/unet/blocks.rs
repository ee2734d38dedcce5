//! The UNet's building blocks (ermongroup/ddim `models/diffusion.py`): residual blocks with a
//! timestep projection, single-head self-attention, down- and up-sampling, the sinusoidal
//! timestep embedding. Group norms have 32 groups and eps 1e-6; the nonlinearity is SiLU.

use candle_core::{DType, Device, Result, Tensor, Var};
use deq_core::nn::{bmm, silu, softmax_last_dim, Conv2dSpec};
use deq_core::rng::DeqRng;
use deq_train::layers::{Conv, ConvInit, GroupNorm, Linear};

/// Groups of every group norm of the DDPM UNet (the public checkpoints' value; configurable
/// with `model.norm_groups`).
pub const GROUPS: usize = 32;
/// Epsilon of every group norm of the UNet.
pub const NORM_EPS: f64 = 1e-6;

/// The sinusoidal embedding of (float) timesteps `t` `(B,)`: `(B, dim)`, sines of
/// `t * exp(-i ln(10000) / (dim/2 - 1))` for `i < dim/2` followed by the cosines, a zero column
/// when `dim` is odd.
pub fn timestep_embedding(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    if half < 2 {
        candle_core::bail!("timestep embedding: dimension {dim} is below 4");
    }
    let step = (10000f64).ln() / (half - 1) as f64;
    let freqs: Vec<f32> = (0..half).map(|i| (-(i as f64) * step).exp() as f32).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?.to_dtype(t.dtype())?;
    let arg = t.reshape(((), 1))?.broadcast_mul(&freqs)?;
    let mut emb = Tensor::cat(&[arg.sin()?, arg.cos()?], 1)?;
    if dim % 2 == 1 {
        emb = emb.pad_with_zeros(1, 0, 1)?;
    }
    Ok(emb)
}

fn norm(groups: usize, channels: usize, dtype: DType, dev: &Device) -> Result<GroupNorm> {
    GroupNorm::with_eps(groups, channels, true, NORM_EPS, dtype, dev)
}

fn conv(cin: usize, cout: usize, k: usize, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Conv> {
    Conv::with_init(cin, cout, (k, k), Conv2dSpec::padded(k / 2), true, ConvInit::TorchDefault, rng, dtype, dev)
}

/// Dropout of `x` with probability `p` when `rng` is given (training), the identity otherwise.
fn dropout(x: &Tensor, p: f64, rng: Option<&mut DeqRng>) -> Result<Tensor> {
    match rng {
        Some(rng) if p > 0.0 => {
            let mask = rng.dropout_mask(x.dims(), 1.0 - p, x.dtype(), x.device())?;
            x.mul(&mask)
        }
        _ => Ok(x.clone()),
    }
}

/// `x + conv2(dropout(silu(norm2(conv1(silu(norm1(x))) + temb_proj(silu(temb)))))`, with a
/// 1x1 `nin_shortcut` on `x` when the widths differ.
#[derive(Debug)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv,
    temb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv,
    nin_shortcut: Option<Conv>,
    dropout: f64,
}

impl ResnetBlock {
    /// A block `cin -> cout` taking a `temb_ch`-wide time embedding, with `groups`-group norms.
    #[allow(clippy::too_many_arguments)]
    pub fn new(cin: usize, cout: usize, temb_ch: usize, dropout: f64, groups: usize, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(Self {
            norm1: norm(groups, cin, dtype, dev)?,
            conv1: conv(cin, cout, 3, rng, dtype, dev)?,
            temb_proj: Linear::new(temb_ch, cout, true, rng, dtype, dev)?,
            norm2: norm(groups, cout, dtype, dev)?,
            conv2: conv(cout, cout, 3, rng, dtype, dev)?,
            nin_shortcut: if cin != cout { Some(conv(cin, cout, 1, rng, dtype, dev)?) } else { None },
            dropout,
        })
    }

    /// `x` `(B, cin, H, W)`, `silu_temb` the SiLU of the time embedding `(B, temb_ch)`; dropout
    /// draws from `rng` when given.
    pub fn forward(&self, x: &Tensor, silu_temb: &Tensor, rng: Option<&mut DeqRng>) -> Result<Tensor> {
        let h = self.conv1.forward(&silu(&self.norm1.forward(x)?)?)?;
        let t = self.temb_proj.forward(silu_temb)?;
        let h = deq_core::nn::plane_bias_add(&h, &t)?;
        let h = dropout(&silu(&self.norm2.forward(&h)?)?, self.dropout, rng)?;
        let h = self.conv2.forward(&h)?;
        match &self.nin_shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }

    /// Trainable variables under the checkpoint names (`norm1.weight`, `conv1.weight`, ...).
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        self.norm1.vars(&format!("{prefix}.norm1"), out);
        self.conv1.vars(&format!("{prefix}.conv1"), out);
        self.temb_proj.vars(&format!("{prefix}.temb_proj"), out);
        self.norm2.vars(&format!("{prefix}.norm2"), out);
        self.conv2.vars(&format!("{prefix}.conv2"), out);
        if let Some(s) = &self.nin_shortcut {
            s.vars(&format!("{prefix}.nin_shortcut"), out);
        }
    }
}

/// Single-head self-attention over the pixels: `x + proj_out(v softmax(q^T k / sqrt(C))^T)`
/// with 1x1 convolutions `q`, `k`, `v`, `proj_out` of a group-normalised `x`.
#[derive(Debug)]
pub struct AttnBlock {
    norm: GroupNorm,
    q: Conv,
    k: Conv,
    v: Conv,
    proj_out: Conv,
}

impl AttnBlock {
    /// A block over `channels` channels with a `groups`-group norm.
    pub fn new(channels: usize, groups: usize, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(Self {
            norm: norm(groups, channels, dtype, dev)?,
            q: conv(channels, channels, 1, rng, dtype, dev)?,
            k: conv(channels, channels, 1, rng, dtype, dev)?,
            v: conv(channels, channels, 1, rng, dtype, dev)?,
            proj_out: conv(channels, channels, 1, rng, dtype, dev)?,
        })
    }

    /// Applies the block to `(B, C, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = self.norm.forward(x)?;
        let q = self.q.forward(&n)?.reshape((b, c, h * w))?;
        let k = self.k.forward(&n)?.reshape((b, c, h * w))?;
        let v = self.v.forward(&n)?.reshape((b, c, h * w))?;
        // Scores (B, HW_q, HW_k), softmax over the keys.
        let scores = bmm(&q.transpose(1, 2)?.contiguous()?, &k)?.affine(1.0 / (c as f64).sqrt(), 0.0)?;
        let p = softmax_last_dim(&scores)?;
        let out = bmm(&v, &p.transpose(1, 2)?.contiguous()?)?.reshape((b, c, h, w))?;
        x + self.proj_out.forward(&out)?
    }

    /// Trainable variables (`norm`, `q`, `k`, `v`, `proj_out`).
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        self.norm.vars(&format!("{prefix}.norm"), out);
        for (name, c) in [("q", &self.q), ("k", &self.k), ("v", &self.v), ("proj_out", &self.proj_out)] {
            c.vars(&format!("{prefix}.{name}"), out);
        }
    }
}

/// Halves the resolution: a 3x3 stride-2 convolution after padding one zero column on the
/// right and one zero row at the bottom, or a 2x2 average pool.
#[derive(Debug)]
pub struct Downsample {
    conv: Option<Conv>,
}

impl Downsample {
    /// With a convolution when `with_conv`.
    pub fn new(channels: usize, with_conv: bool, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let conv = if with_conv {
            Some(Conv::with_init(channels, channels, (3, 3), Conv2dSpec { stride: 2, ..Conv2dSpec::padded(0) }, true, ConvInit::TorchDefault, rng, dtype, dev)?)
        } else {
            None
        };
        Ok(Self { conv })
    }

    /// `(B, C, H, W) -> (B, C, ceil((H-1)/2), ...)` with a convolution, `(B, C, H/2, W/2)`
    /// with the pool.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.conv {
            Some(c) => c.forward(&x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?),
            None => x.avg_pool2d(2),
        }
    }

    /// Trainable variables (`conv`).
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        if let Some(c) = &self.conv {
            c.vars(&format!("{prefix}.conv"), out);
        }
    }
}

/// Doubles the resolution: nearest-neighbour upsampling, then a 3x3 convolution when
/// configured.
#[derive(Debug)]
pub struct Upsample {
    conv: Option<Conv>,
}

impl Upsample {
    /// With a convolution when `with_conv`.
    pub fn new(channels: usize, with_conv: bool, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(Self { conv: if with_conv { Some(conv(channels, channels, 3, rng, dtype, dev)?) } else { None } })
    }

    /// `(B, C, H, W) -> (B, C, 2H, 2W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let up = x.upsample_nearest2d(2 * h, 2 * w)?;
        match &self.conv {
            Some(c) => c.forward(&up),
            None => Ok(up),
        }
    }

    /// Trainable variables (`conv`).
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        if let Some(c) = &self.conv {
            c.vars(&format!("{prefix}.conv"), out);
        }
    }
}

/// The output head's norm (kept with the blocks so all norms share one definition).
pub(crate) fn output_norm(groups: usize, channels: usize, dtype: DType, dev: &Device) -> Result<GroupNorm> {
    norm(groups, channels, dtype, dev)
}

pub(crate) fn conv3x3(cin: usize, cout: usize, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Conv> {
    conv(cin, cout, 3, rng, dtype, dev)
}
