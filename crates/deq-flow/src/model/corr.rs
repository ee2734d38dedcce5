//! The correlation pyramid (RAFT's `CorrBlock` and `AlternateCorrBlock`): the correlation of
//! source pixel `p` with target pixel `q` is `<f1[:, p], f2[:, q]> / sqrt(D)` on the
//! 1/8-resolution feature maps; level `l` averages the targets over `2^l x 2^l` blocks. Two
//! implementations with equal values and gradients:
//!
//! - `volume`: all pairs stored, one `H x W` map per source pixel, pooled level by level;
//!   memory `(HW)^2 (1 + 1/4 + …)` values per frame pair, cheap lookups.
//! - `features`: nothing stored but the (pooled) target features; every lookup computes the
//!   `(2r + 2)^2` dot products it needs (memory `O(HW D)`, for large frames).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::ops::{avg_pool2x2, channels_last, lookup, lookup_channels_last};

/// Which correlation implementation a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CorrKind {
    /// The stored all-pairs volume.
    #[default]
    Volume,
    /// Dot products on the fly from the features.
    Features,
}

/// The correlation pyramid of one batch of frame pairs.
#[derive(Debug, Clone)]
pub struct CorrPyramid {
    kind: CorrKind,
    /// `volume`: level `l` as `(B * H * W, H >> l, W >> l)` maps. `features`: the source
    /// features `(B, H, W, D)` followed by the target features of each level `(B, H >> l, W >>
    /// l, D)`, channels last.
    tensors: Vec<Tensor>,
    radius: usize,
}

impl CorrPyramid {
    /// Builds `levels` levels from feature maps `(B, D, H, W)` of the two frames.
    pub fn new(kind: CorrKind, fmap1: &Tensor, fmap2: &Tensor, levels: usize, radius: usize) -> Result<Self> {
        let (b, d, h, w) = fmap1.dims4()?;
        if fmap2.dims4()? != (b, d, h, w) {
            candle_core::bail!("correlation: feature maps {:?} and {:?} differ", fmap1.dims(), fmap2.dims());
        }
        if levels == 0 || (h >> (levels - 1)) == 0 || (w >> (levels - 1)) == 0 {
            candle_core::bail!("correlation: a {h}x{w} feature map (input {}x{}) cannot hold {levels} pyramid levels; use larger images or fewer levels", 8 * h, 8 * w);
        }
        let tensors = match kind {
            CorrKind::Volume => {
                let a = fmap1.reshape((b, d, h * w))?.transpose(1, 2)?.contiguous()?;
                let c = fmap2.reshape((b, d, h * w))?.contiguous()?;
                let vol = (deq_core::nn::bmm(&a, &c)? / (d as f64).sqrt())?.reshape((b * h * w, h, w))?;
                let mut out = vec![vol];
                for _ in 1..levels {
                    let next = avg_pool2x2(out.last().expect("one level"))?;
                    out.push(next);
                }
                out
            }
            CorrKind::Features => {
                let mut out = vec![channels_last(fmap1)?];
                let mut f2 = fmap2.clone();
                for l in 0..levels {
                    if l > 0 {
                        f2 = avg_pool2x2(&f2)?;
                    }
                    out.push(channels_last(&f2)?);
                }
                out
            }
        };
        Ok(Self { kind, tensors, radius })
    }

    /// The tensors the lookups read (DEQ inputs).
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// Rebuilds a pyramid from its tensors (e.g. the DEQ's detached inputs).
    pub fn from_tensors(kind: CorrKind, tensors: &[Tensor], radius: usize) -> Self {
        Self { kind, tensors: tensors.to_vec(), radius }
    }

    /// Looks up every level around `coords` `(B, 2, H, W)`: `(B, levels * (2r + 1)^2, H, W)`,
    /// level-major.
    pub fn lookup(&self, coords: &Tensor) -> Result<Tensor> {
        let scale = |l: usize| (1u64 << l) as f64;
        let outs = match self.kind {
            CorrKind::Volume => self.tensors.iter().enumerate().map(|(l, m)| lookup(m, coords, self.radius, scale(l))).collect::<Result<Vec<_>>>()?,
            CorrKind::Features => self.tensors[1..].iter().enumerate().map(|(l, f2)| lookup_channels_last(&self.tensors[0], f2, coords, self.radius, scale(l))).collect::<Result<Vec<_>>>()?,
        };
        Tensor::cat(&outs, 1)
    }
}
