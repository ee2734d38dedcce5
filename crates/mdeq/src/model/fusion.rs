//! Multiscale fusion and the post-fusion layers inside `f`.

use deq_train::layers::norm_conv_vars;
use deq_train::layers::GroupNorm;
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::Conv2dConfig;
use deq_core::norm::{NormConv2d, NormOptions};
use deq_core::rng::DeqRng;

/// One path from branch `j` to branch `i`.
#[derive(Debug)]
enum Path {
    /// Coarser to finer (`j > i`): 1x1 conv, group norm, nearest upsampling.
    Up { conv: NormConv2d, gn: GroupNorm },
    /// Finer to coarser (`j < i`): `i - j` stride-2 3x3 convs, each followed by group norm,
    /// with ReLU between them.
    Down { stages: Vec<(NormConv2d, GroupNorm)> },
}

/// Fusion `s_i = b_i + sum_{j != i} path_{j -> i}(b_j)` followed by, per branch,
/// `GN(groups / 2)(conv1x1(ReLU(s_i)))`. Every convolution is weight-normalised, without bias.
#[derive(Debug)]
pub struct Fusion {
    paths: Vec<Vec<Option<Path>>>,
    post: Vec<(NormConv2d, GroupNorm)>,
}

fn err(e: deq_core::DeqError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl Fusion {
    /// Fusion across branches with `channels[i]` channels each.
    pub fn new(channels: &[usize], groups: usize, norm: NormOptions, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let nb = channels.len();
        let one = Conv2dConfig::default();
        let down = Conv2dConfig { padding: 1, stride: 2, ..Default::default() };
        let mut paths = Vec::with_capacity(nb);
        for i in 0..nb {
            let mut row = Vec::with_capacity(nb);
            for j in 0..nb {
                row.push(if j == i || nb == 1 {
                    None
                } else if j > i {
                    Some(Path::Up {
                        conv: NormConv2d::new(channels[j], channels[i], 1, one, false, norm, rng, dtype, dev).map_err(err)?,
                        gn: GroupNorm::new(groups, channels[i], true, dtype, dev)?,
                    })
                } else {
                    let mut stages = Vec::new();
                    for k in 0..(i - j) {
                        let cout = if k + 1 == i - j { channels[i] } else { channels[j] };
                        stages.push((
                            NormConv2d::new(channels[j], cout, 3, down, false, norm, rng, dtype, dev).map_err(err)?,
                            GroupNorm::new(groups, cout, true, dtype, dev)?,
                        ));
                    }
                    Some(Path::Down { stages })
                });
            }
            paths.push(row);
        }
        let post = if nb == 1 {
            Vec::new()
        } else {
            channels
                .iter()
                .map(|&c| Ok((NormConv2d::new(c, c, 1, one, false, norm, rng, dtype, dev).map_err(err)?, GroupNorm::new((groups / 2).max(1), c, true, dtype, dev)?)))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Self { paths, post })
    }

    /// Fuses the block outputs `b` (one tensor per branch).
    pub fn forward(&self, b: &[Tensor]) -> Result<Vec<Tensor>> {
        if self.post.is_empty() {
            return Ok(b.to_vec());
        }
        let mut out = Vec::with_capacity(b.len());
        for (i, row) in self.paths.iter().enumerate() {
            let (_, _, h, w) = b[i].dims4()?;
            let mut s = b[i].clone();
            for (j, path) in row.iter().enumerate() {
                let Some(path) = path else { continue };
                let y = match path {
                    Path::Up { conv, gn } => gn.forward(&conv.forward(&b[j])?)?.upsample_nearest2d(h, w)?,
                    Path::Down { stages } => {
                        let mut y = b[j].clone();
                        for (k, (conv, gn)) in stages.iter().enumerate() {
                            y = gn.forward(&conv.forward(&y)?)?;
                            if k + 1 < stages.len() {
                                y = deq_core::nn::relu(&y)?;
                            }
                        }
                        y
                    }
                };
                s = (s + y)?;
            }
            let (conv, gn) = &self.post[i];
            out.push(gn.forward(&conv.forward(&deq_core::nn::relu(&s)?)?)?);
        }
        Ok(out)
    }

    /// Recomputes the normalised kernels.
    pub fn reset(&self) -> Result<()> {
        for row in &self.paths {
            for p in row.iter().flatten() {
                match p {
                    Path::Up { conv, .. } => conv.reset().map_err(err)?,
                    Path::Down { stages } => {
                        for (c, _) in stages {
                            c.reset().map_err(err)?;
                        }
                    }
                }
            }
        }
        for (c, _) in &self.post {
            c.reset().map_err(err)?;
        }
        Ok(())
    }

    /// Trainable variables.
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        for (i, row) in self.paths.iter().enumerate() {
            for (j, p) in row.iter().enumerate() {
                let Some(p) = p else { continue };
                let pre = format!("{prefix}.fuse.{i}.{j}");
                match p {
                    Path::Up { conv, gn } => {
                        norm_conv_vars(conv, &format!("{pre}.conv"), out);
                        gn.vars(&format!("{pre}.gn"), out);
                    }
                    Path::Down { stages } => {
                        for (k, (c, g)) in stages.iter().enumerate() {
                            norm_conv_vars(c, &format!("{pre}.{k}.conv"), out);
                            g.vars(&format!("{pre}.{k}.gn"), out);
                        }
                    }
                }
            }
        }
        for (i, (c, g)) in self.post.iter().enumerate() {
            norm_conv_vars(c, &format!("{prefix}.post.{i}.conv"), out);
            g.vars(&format!("{prefix}.post.{i}.gn"), out);
        }
    }
}
