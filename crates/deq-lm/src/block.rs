//! The transformer blocks inside `f`: relative attention and a position-wise feed-forward
//! network, each with a residual connection, in the two arrangements of the zoo:
//!
//! * [`BlockStyle::PreLn`] (`deq-lm`): `z + drop(W_o LN2(attend(LN1([mem; z]))) + b_o)`, then
//!   `x + drop2(W2 drop1(relu(W1 LN(x) + b1)) + b2)`, affine LayerNorms;
//! * [`BlockStyle::PostLn`] (`deq-seq`): `LN(z + drop(W_o attend([mem; z]) + b_o))`, then
//!   `LN(x + drop2(W2 drop1(relu(W1 x + b1)) + b2))`, LayerNorms without affine.
//!
//! Dropout is variational (one mask per forward, shared by every solver iteration; masks of
//! `(batch, 1, features)`), reset with [`Block::reset`].

use crate::attention::{AttentionConfig, RelAttention};
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use deq_core::dropout::{DropShape, VariationalDropout};
use deq_core::nn::LayerNorm;
use deq_core::norm::{NormLinear, NormOptions};
use deq_core::rng::DeqRng;

/// Where the LayerNorms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStyle {
    /// Before each sub-layer, affine (the zoo's `deq-lm`).
    PreLn,
    /// After each residual sum, without affine (the zoo's `deq-seq`).
    PostLn,
}

/// Sizes and dropout of a [`Block`].
#[derive(Debug, Clone, PartialEq)]
pub struct BlockConfig {
    /// The attention's sizes.
    pub attention: AttentionConfig,
    /// Hidden width of the feed-forward network.
    pub d_inner: usize,
    /// Dropout on the sub-layers' outputs and inside the feed-forward network.
    pub dropout: f64,
    /// LayerNorm placement.
    pub style: BlockStyle,
}

const LN_EPS: f64 = 1e-5;

/// One attention + feed-forward block.
#[derive(Debug)]
pub struct Block {
    cfg: BlockConfig,
    attn: RelAttention,
    w1: NormLinear,
    w2: NormLinear,
    /// PreLn: before attention, on the attention vector, before the FFN. PostLn: after the
    /// attention residual, after the FFN residual (the third unused).
    ln: [LayerNorm; 3],
    drop_attn: VariationalDropout,
    drop_inner: VariationalDropout,
    drop_ffn: VariationalDropout,
}

impl Block {
    /// A block with weights drawn from `rng` (dropout masks from seeds drawn from it too).
    pub fn new(cfg: &BlockConfig, norm: NormOptions, rng: &mut DeqRng, dtype: DType, dev: &Device) -> crate::Result<Self> {
        let d = cfg.attention.d_model;
        let attn = RelAttention::new(&cfg.attention, norm, rng, dtype, dev)?;
        let w1 = NormLinear::new(d, cfg.d_inner, true, norm, rng, dtype, dev)?;
        let w2 = NormLinear::new(cfg.d_inner, d, true, norm, rng, dtype, dev)?;
        let affine = cfg.style == BlockStyle::PreLn;
        let hd = cfg.attention.n_head * cfg.attention.d_head;
        let ln = [LayerNorm::new(d, affine, LN_EPS, dtype, dev)?, LayerNorm::new(if affine { hd } else { d }, affine, LN_EPS, dtype, dev)?, LayerNorm::new(d, affine, LN_EPS, dtype, dev)?];
        let mut drop = || VariationalDropout::new(cfg.dropout, DropShape::Token, rng.next_u64());
        Ok(Self { cfg: cfg.clone(), attn, w1, w2, ln, drop_attn: drop()?, drop_inner: drop()?, drop_ffn: drop()? })
    }

    /// Recomputes the normalised weights and forgets the dropout masks (once per forward).
    pub fn reset(&self) -> crate::Result<()> {
        self.attn.reset()?;
        self.w1.reset()?;
        self.w2.reset()?;
        for d in [&self.drop_attn, &self.drop_inner, &self.drop_ffn] {
            d.reset();
        }
        Ok(())
    }

    /// [`Block::reset`], with the next dropout masks drawn from `seed` alone (so that a
    /// resumed run draws the masks of the uninterrupted one).
    pub fn reset_with_seed(&self, seed: u64) -> crate::Result<()> {
        self.reset()?;
        self.attn.reseed_dropout(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(7));
        for (i, d) in [&self.drop_attn, &self.drop_inner, &self.drop_ffn].into_iter().enumerate() {
            d.reset_with_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64 + 1));
        }
        Ok(())
    }

    /// `x W1^T` with the block's current normalised first feed-forward weight (no bias).
    #[cfg(test)]
    pub(crate) fn ffn_hidden_for_test(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_matmul(&self.w1.weight().weight().t()?)
    }

    /// Trainable variables with names relative to the block.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = self.attn.named_vars().into_iter().map(|(n, v)| (format!("attn.{n}"), v)).collect();
        for (prefix, l) in [("ff.w1", &self.w1), ("ff.w2", &self.w2)] {
            out.extend(l.named_vars().into_iter().map(|(n, v)| (format!("{prefix}.{n}"), v)));
        }
        for (i, ln) in self.ln.iter().enumerate() {
            out.extend(ln.named_vars().into_iter().map(|(n, v)| (format!("ln{}.{n}", i + 1), v)));
        }
        out
    }

    /// The attention layer (its positions' projection is computed once per forward).
    pub fn attention(&self) -> &RelAttention {
        &self.attn
    }

    /// The block on the segment `z` `(batch, qlen, d_model)` given the memory `z_hist`
    /// `(batch, mlen, d_model)`, the injection `u` `(batch, mlen + qlen, 3 * n_head * d_head)`
    /// and the projected positions `r` ([`RelAttention::project_positions`]).
    pub fn forward(&self, z: &Tensor, z_hist: &Tensor, u: &Tensor, r: &Tensor, training: bool) -> Result<Tensor> {
        let (mlen, qlen) = (z_hist.dim(1)?, z.dim(1)?);
        let [_, uk, uv] = self.attn.split_injection(&u.narrow(1, 0, mlen)?)?;
        let mem = self.memory_kv(z_hist, &uk, &uv)?;
        self.forward_after(z, &mem, &self.attn.split_injection(&u.narrow(1, mlen, qlen)?)?, r, training)
    }

    /// The attention keys and values of the memory (normalised as the block requires) with
    /// its injection's k and v parts: constant over a forward's `f` calls, so computed once.
    pub fn memory_kv(&self, z_hist: &Tensor, u_k: &Tensor, u_v: &Tensor) -> Result<[Tensor; 2]> {
        match self.cfg.style {
            BlockStyle::PreLn => self.attn.memory_kv(&self.ln[0].forward(z_hist)?, u_k, u_v),
            BlockStyle::PostLn => self.attn.memory_kv(z_hist, u_k, u_v),
        }
    }

    /// [`Block::forward`] with the memory's keys and values precomputed by
    /// [`Block::memory_kv`]; `u` is the segment's injection split into q, k, v parts
    /// ([`RelAttention::split_injection`]).
    pub fn forward_after(&self, z: &Tensor, mem: &[Tensor; 2], u: &[Tensor; 3], r: &Tensor, training: bool) -> Result<Tensor> {
        let x = match self.cfg.style {
            BlockStyle::PreLn => {
                let v = self.attn.attend_after(mem, &self.ln[0].forward(z)?, u, r, training)?;
                (z + self.drop_attn.forward(&self.attn.output(&self.ln[1].forward(&v)?)?, training)?)?
            }
            BlockStyle::PostLn => {
                let v = self.attn.attend_after(mem, z, u, r, training)?;
                self.ln[0].forward(&(z + self.drop_attn.forward(&self.attn.output(&v)?, training)?)?)?
            }
        };
        let inner = |h: &Tensor| -> Result<Tensor> {
            let a = self.drop_inner.forward(&deq_core::nn::relu(&self.w1.forward(h)?)?, training)?;
            self.drop_ffn.forward(&self.w2.forward(&a)?, training)
        };
        match self.cfg.style {
            BlockStyle::PreLn => &x + inner(&self.ln[2].forward(&x)?)?,
            BlockStyle::PostLn => self.ln[1].forward(&(&x + inner(&x)?)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::QkvLayout;
    use crate::position::relative_embedding;
    use crate::testing::{check_fd, check_var_fd, layer_inputs, LayerInputs};

    fn cfg(style: BlockStyle, dropout: f64) -> BlockConfig {
        BlockConfig { attention: AttentionConfig { d_model: 6, n_head: 2, d_head: 3, layout: QkvLayout::PerHead, local_size: 0, dropatt: 0.0 }, d_inner: 7, dropout, style }
    }

    fn norm() -> NormOptions {
        NormOptions { norm_type: deq_core::NormType::WeightNorm, ..Default::default() }
    }

    /// Central differences in f64 of `sum(block(z) * m)`, with dropout masks fixed, against the
    /// gradients of the segment, the injection and every parameter (weight norm's `v` and `g`
    /// included).
    #[test]
    fn gradients_match_finite_differences() {
        for style in [BlockStyle::PreLn, BlockStyle::PostLn] {
            let mut rng = DeqRng::new(4);
            let b = Block::new(&cfg(style, 0.2), norm(), &mut rng, DType::F64, &Device::Cpu).unwrap();
            let LayerInputs { z_hist: zh, z: z0, u: u0, upstream: m, pos } = layer_inputs(&mut rng, 2, 3);
            b.reset().unwrap();
            let loss = |z: &Tensor, u: &Tensor| -> Tensor {
                // The positions' projection depends on W_r: recomputed per evaluation.
                let r = b.attention().project_positions(&pos).unwrap();
                (b.forward(z, &zh, u, &r, true).unwrap() * &m).unwrap().sum_all().unwrap()
            };
            let (z, u) = (Var::from_tensor(&z0).unwrap(), Var::from_tensor(&u0).unwrap());
            let g = loss(z.as_tensor(), u.as_tensor()).backward().unwrap();
            let fd_check = |name: &str, base: &Tensor, grad: &Tensor, f: &dyn Fn(&Tensor) -> f64| check_fd(&format!("{style:?} {name}"), base, grad, 1e-6, 1e-6, 7, f);
            fd_check("z", &z0, g.get(z.as_tensor()).unwrap(), &|t| loss(t, &u0).to_scalar::<f64>().unwrap());
            fd_check("u", &u0, g.get(u.as_tensor()).unwrap(), &|t| loss(&z0, t).to_scalar::<f64>().unwrap());
            let vars = b.named_vars();
            assert!(vars.len() >= if style == BlockStyle::PreLn { 18 } else { 12 }, "{}", vars.len());
            // Weight norm: the normalised weights follow their parameters.
            let refresh = || {
                b.attention().reset().unwrap();
                b.w1.reset().unwrap();
                b.w2.reset().unwrap();
            };
            for (name, var) in &vars {
                let gv = g.get(var.as_tensor()).unwrap_or_else(|| panic!("{style:?}: no gradient for {name}")).clone();
                check_var_fd(&format!("{style:?} {name}"), var, &gv, 1e-6, 1e-6, 7, &|| loss(&z0, &u0).to_scalar::<f64>().unwrap(), &refresh);
            }
        }
    }

    #[test]
    fn post_ln_outputs_are_normalised_rows_and_pre_ln_keeps_the_residual() {
        let mut rng = DeqRng::new(6);
        let zh = rng.randn((2, 3, 6), DType::F64, &Device::Cpu).unwrap();
        let z = rng.randn((2, 4, 6), DType::F64, &Device::Cpu).unwrap().affine(3.0, 2.0).unwrap();
        let u = rng.randn((2, 7, 18), DType::F64, &Device::Cpu).unwrap();
        let pos = relative_embedding(7, 6, DType::F64, &Device::Cpu).unwrap();
        let post = Block::new(&cfg(BlockStyle::PostLn, 0.0), norm(), &mut rng, DType::F64, &Device::Cpu).unwrap();
        let y = post.forward(&z, &zh, &u, &post.attention().project_positions(&pos).unwrap(), false).unwrap();
        for row in y.reshape((8, 6)).unwrap().to_vec2::<f64>().unwrap() {
            let mean = row.iter().sum::<f64>() / 6.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 6.0;
            assert!(mean.abs() < 1e-12 && (var - 1.0).abs() < 1e-4, "{mean} {var}");
        }
        // Pre-LN: the output is the input plus bounded updates (LayerNorms inside the
        // branches), so a shifted input shifts the output by the same amount.
        let pre = Block::new(&cfg(BlockStyle::PreLn, 0.0), norm(), &mut rng, DType::F64, &Device::Cpu).unwrap();
        let r = pre.attention().project_positions(&pos).unwrap();
        let (a, b) = (pre.forward(&z, &zh, &u, &r, false).unwrap(), pre.forward(&(&z + 100.0).unwrap(), &(&zh + 100.0).unwrap(), &u, &r, false).unwrap());
        let d = ((b - a).unwrap() - 100.0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-9, "{d}");
    }

    #[test]
    fn dropout_masks_hold_for_a_forward_and_change_after_reset() {
        let mut rng = DeqRng::new(5);
        let b = Block::new(&cfg(BlockStyle::PreLn, 0.5), norm(), &mut rng, DType::F64, &Device::Cpu).unwrap();
        let zh = Tensor::zeros((1, 0, 6), DType::F64, &Device::Cpu).unwrap();
        let z = rng.randn((1, 4, 6), DType::F64, &Device::Cpu).unwrap();
        let u = rng.randn((1, 4, 18), DType::F64, &Device::Cpu).unwrap();
        let r = b.attention().project_positions(&relative_embedding(4, 6, DType::F64, &Device::Cpu).unwrap()).unwrap();
        let run = |train: bool| b.forward(&z, &zh, &u, &r, train).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        b.reset().unwrap();
        let (a1, a2) = (run(true), run(true));
        assert_eq!(a1, a2, "one mask per forward (every solver iteration sees the same)");
        b.reset().unwrap();
        assert_ne!(run(true), a1, "a new mask after reset");
        assert_ne!(run(false), a1, "no dropout in evaluation");
    }
}
