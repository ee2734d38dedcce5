//! Transformer-XL's relative multi-head attention as the DEQ transformer uses it: queries from
//! the current segment, keys and values over `[memory; current]`, the injection `u` added to
//! the q/k/v projections at every key position, learned biases `r_w` (content) and `r_r`
//! (position), relative positions through `rel_shift`, and a causal mask over the memory and
//! the segment. Layout: token-first, `(batch, length, features)`.

use deq_core::dropout::{DropShape, VariationalDropout};
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use deq_core::norm::{NormLinear, NormOptions};
use deq_core::rng::DeqRng;

/// How the `3 * n_head * d_head` channels of the q/k/v projection are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvLayout {
    /// The zoo's `deq-lm`: per head, `d_head` q channels, then k, then v.
    PerHead,
    /// The zoo's `deq-seq`, Transformer-XL and the original DEQ: all q channels, then all k,
    /// then all v, each block head-major.
    Blocks,
}

/// Sizes of a [`RelAttention`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionConfig {
    /// Model width.
    pub d_model: usize,
    /// Heads.
    pub n_head: usize,
    /// Width of each head.
    pub d_head: usize,
    /// Channel order of the q/k/v projection (and of the injection added to it).
    pub layout: QkvLayout,
    /// Each query sees its last `local_size` keys (0: all earlier keys; the zoo's
    /// `local_size`, whose default 0 means a window of 1000).
    pub local_size: usize,
    /// Dropout of the attention probabilities (the zoo's `dropatt`): one element-wise mask
    /// per forward, reused by every `f` call.
    pub dropatt: f64,
}

/// Relative multi-head attention (the linear maps optionally weight-normalised).
#[derive(Debug)]
pub struct RelAttention {
    cfg: AttentionConfig,
    qkv: NormLinear,
    r: NormLinear,
    o: NormLinear,
    r_w_bias: Var,
    r_r_bias: Var,
    drop_probs: Option<VariationalDropout>,
}

/// `rel_shift` of Transformer-XL on scores `(..., qlen, klen)`: pad one zero column on the
/// left, read the buffer as `(..., klen + 1, qlen)`, drop the first row and read it as
/// `(..., qlen, klen)`. Entry `[i, j]` becomes `x[i, j + qlen - 1 - i]` wherever that index is
/// in range (every unmasked entry); the others hold the pad or the next row's values and are
/// masked by the causal mask.
pub fn rel_shift(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let r = dims.len();
    if r < 2 {
        candle_core::bail!("rel_shift needs (..., qlen, klen), got {dims:?}");
    }
    let (q, k) = (dims[r - 2], dims[r - 1]);
    let padded = x.pad_with_zeros(r - 1, 1, 0)?;
    let mut as_rows = dims.clone();
    as_rows[r - 2] = k + 1;
    as_rows[r - 1] = q;
    let shifted = padded.reshape(as_rows)?.narrow(r - 2, 1, k)?.contiguous()?;
    shifted.reshape(dims)
}

/// The additive causal mask `(qlen, mlen + qlen)`: 0 where query `i` may see key `j`
/// (`j <= mlen + i`, and `j > mlen + i - local` when `local` > 0), `-inf` elsewhere.
pub fn causal_mask(qlen: usize, mlen: usize, local: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let klen = mlen + qlen;
    let hidden = move |i: usize, j: usize| j > mlen + i || (local > 0 && j + local <= mlen + i);
    let v: Vec<f32> = (0..qlen).flat_map(|i| (0..klen).map(move |j| if hidden(i, j) { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(v, (qlen, klen), dev)?.to_dtype(dtype)
}

impl RelAttention {
    /// A layer with PyTorch's default initialisation of the linear maps and the biases `r_w`,
    /// `r_r` uniform in `[-0.05, 0.05]` (the zoo's); `norm` configures weight normalisation of
    /// the three linear maps.
    pub fn new(cfg: &AttentionConfig, norm: NormOptions, rng: &mut DeqRng, dtype: DType, dev: &Device) -> crate::Result<Self> {
        let hd = cfg.n_head * cfg.d_head;
        let qkv = NormLinear::new(cfg.d_model, 3 * hd, false, norm, rng, dtype, dev)?;
        let r = NormLinear::new(cfg.d_model, hd, false, norm, rng, dtype, dev)?;
        let o = NormLinear::new(hd, cfg.d_model, true, norm, rng, dtype, dev)?;
        let r_w_bias = Var::from_tensor(&rng.rand((cfg.n_head, cfg.d_head), -0.05, 0.05, dtype, dev)?)?;
        let r_r_bias = Var::from_tensor(&rng.rand((cfg.n_head, cfg.d_head), -0.05, 0.05, dtype, dev)?)?;
        // Drawn only when used, so that the parameters' draws do not depend on it.
        let drop_probs = if cfg.dropatt > 0.0 { Some(VariationalDropout::new(cfg.dropatt, DropShape::Full, rng.next_u64())?) } else { None };
        Ok(Self { cfg: cfg.clone(), qkv, r, o, r_w_bias, r_r_bias, drop_probs })
    }

    /// Recomputes the normalised weights and forgets the attention-dropout mask (once per
    /// forward).
    pub fn reset(&self) -> crate::Result<()> {
        self.qkv.reset()?;
        self.r.reset()?;
        if let Some(d) = &self.drop_probs {
            d.reset();
        }
        Ok(self.o.reset()?)
    }

    /// Forgets the attention-dropout mask and draws the next one from `seed` alone (the
    /// weights are left to [`RelAttention::reset`]).
    pub fn reseed_dropout(&self, seed: u64) {
        if let Some(d) = &self.drop_probs {
            d.reset_with_seed(seed);
        }
    }

    /// Trainable variables with names relative to the layer.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (prefix, l) in [("qkv", &self.qkv), ("r", &self.r), ("o", &self.o)] {
            out.extend(l.named_vars().into_iter().map(|(n, v)| (format!("{prefix}.{n}"), v)));
        }
        out.push(("r_w_bias".into(), self.r_w_bias.clone()));
        out.push(("r_r_bias".into(), self.r_r_bias.clone()));
        out
    }

    /// The positions' projection `W_r P`, `(n_head, klen, d_head)`, for `pos` `(klen, d_model)`
    /// from [`crate::position::relative_embedding`] (the same for every `f` call of a forward).
    pub fn project_positions(&self, pos: &Tensor) -> Result<Tensor> {
        let (klen, _) = pos.dims2()?;
        self.r.forward(pos)?.reshape((klen, self.cfg.n_head, self.cfg.d_head))?.transpose(0, 1)?.contiguous()
    }

    /// The attention vectors of the last `qlen` positions of `c` (`(batch, klen, d_model)`,
    /// memory then segment, already normalised as the block requires): `(batch, qlen,
    /// n_head * d_head)`, before the output projection. `u` is the injection
    /// `(batch, klen, 3 * n_head * d_head)`, `r` from [`RelAttention::project_positions`].
    pub fn attend(&self, c: &Tensor, u: &Tensor, r: &Tensor, qlen: usize) -> Result<Tensor> {
        let (_, klen, _) = c.dims3()?;
        if qlen > klen {
            candle_core::bail!("attention: {qlen} queries over {klen} keys");
        }
        let mlen = klen - qlen;
        let [_, uk, uv] = self.split_injection(&u.narrow(1, 0, mlen)?)?;
        let mem = self.memory_kv(&c.narrow(1, 0, mlen)?, &uk, &uv)?;
        self.attend_after(&mem, &c.narrow(1, mlen, qlen)?, &self.split_injection(&u.narrow(1, mlen, qlen)?)?, r, false)
    }

    /// The rows of the `(3 * n_head * d_head)`-channel axis that hold part `i` (0: q, 1: k,
    /// 2: v) in the layout's order.
    fn part_channels(&self, i: usize) -> Vec<u32> {
        let (h, dh) = (self.cfg.n_head, self.cfg.d_head);
        match self.cfg.layout {
            QkvLayout::PerHead => (0..h).flat_map(|hh| (0..dh).map(move |j| (hh * 3 * dh + i * dh + j) as u32)).collect(),
            QkvLayout::Blocks => (i * h * dh..(i + 1) * h * dh).map(|c| c as u32).collect(),
        }
    }

    /// An injection `(batch, len, 3 * n_head * d_head)` split into its q, k and v parts
    /// `(batch, len, n_head * d_head)` (channel `head * d_head + j`), once per forward.
    pub fn split_injection(&self, u: &Tensor) -> Result<[Tensor; 3]> {
        let part = |i: usize| -> Result<Tensor> {
            match self.cfg.layout {
                QkvLayout::Blocks => u.narrow(2, i * self.cfg.n_head * self.cfg.d_head, self.cfg.n_head * self.cfg.d_head)?.contiguous(),
                QkvLayout::PerHead => u.contiguous()?.index_select(&Tensor::new(self.part_channels(i).as_slice(), u.device())?, 2),
            }
        };
        Ok([part(0)?, part(1)?, part(2)?])
    }

    /// `W_part c` for part `i` of the q/k/v projection: `(batch, len, n_head * d_head)`.
    fn project_part(&self, c: &Tensor, i: usize) -> Result<Tensor> {
        let w = self.qkv.weight().weight();
        let wi = match self.cfg.layout {
            QkvLayout::Blocks => w.narrow(0, i * self.cfg.n_head * self.cfg.d_head, self.cfg.n_head * self.cfg.d_head)?,
            QkvLayout::PerHead => w.index_select(&Tensor::new(self.part_channels(i).as_slice(), w.device())?, 0)?,
        };
        deq_core::nn::linear_map(c, &wi)
    }

    /// `(batch, len, n_head * d_head)` to head-major `(n_head, batch, len, d_head)`.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, len, _) = x.dims3()?;
        x.reshape((b, len, self.cfg.n_head, self.cfg.d_head))?.permute((2, 0, 1, 3))?.contiguous()
    }

    /// The memory's keys and values `W_k c + u_k`, `W_v c + u_v`, head-major
    /// `(n_head, batch, mlen, d_head)`: the same for every `f` call of a forward, so computed
    /// once (see [`RelAttention::attend_after`]); `u_k`, `u_v` from [`RelAttention::split_injection`].
    pub fn memory_kv(&self, c_mem: &Tensor, u_k: &Tensor, u_v: &Tensor) -> Result<[Tensor; 2]> {
        Ok([self.heads(&(self.project_part(c_mem, 1)? + u_k)?)?, self.heads(&(self.project_part(c_mem, 2)? + u_v)?)?])
    }

    /// [`RelAttention::attend`] with the memory's keys and values precomputed by
    /// [`RelAttention::memory_kv`]: `c` `(batch, qlen, d_model)` and `u` (the segment's
    /// injection split by [`RelAttention::split_injection`]); `training` applies the
    /// attention dropout.
    pub fn attend_after(&self, mem: &[Tensor; 2], c: &Tensor, u: &[Tensor; 3], r: &Tensor, training: bool) -> Result<Tensor> {
        let (b, qlen, _) = c.dims3()?;
        let mlen = mem[0].dim(2)?;
        let klen = mlen + qlen;
        let (h, dh) = (self.cfg.n_head, self.cfg.d_head);
        // Head-major (h, b, len, dh): the position scores of a head are then one
        // (b * qlen, dh) x (dh, klen) product.
        let q = self.heads(&(self.project_part(c, 0)? + &u[0])?)?;
        let k = Tensor::cat(&[&mem[0], &self.heads(&(self.project_part(c, 1)? + &u[1])?)?], 2)?;
        let v = Tensor::cat(&[&mem[1], &self.heads(&(self.project_part(c, 2)? + &u[2])?)?], 2)?;
        let bias = |t: &Var| t.as_tensor().reshape((h, 1, 1, dh));
        let ac = deq_core::nn::bmm(&q.broadcast_add(&bias(&self.r_w_bias)?)?, &k.transpose(2, 3)?)?;
        let qr = q.broadcast_add(&bias(&self.r_r_bias)?)?.reshape((h, b * qlen, dh))?;
        let bd = qr.matmul(&r.transpose(1, 2)?)?.reshape((h, b, qlen, klen))?;
        let mut a = crate::rel_probs::rel_probs(&ac, &bd, 1.0 / (dh as f64).sqrt(), mlen, self.cfg.local_size)?;
        if let Some(d) = &self.drop_probs {
            a = d.forward(&a, training)?;
        }
        deq_core::nn::bmm(&a, &v)?.permute((1, 2, 0, 3))?.reshape((b, qlen, h * dh))
    }

    /// The output projection `W_o v + b_o` of attention vectors.
    pub fn output(&self, v: &Tensor) -> Result<Tensor> {
        self.o.forward(v)
    }

    /// The whole layer without normalisation: `W_o attend([z_hist; z]) + b_o`, `(batch, qlen,
    /// d_model)` for `z` `(batch, qlen, d_model)` and `z_hist` `(batch, mlen, d_model)`.
    pub fn forward(&self, z: &Tensor, z_hist: &Tensor, u: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let c = Tensor::cat(&[z_hist, z], 1)?;
        self.output(&self.attend(&c, u, &self.project_positions(pos)?, z.dim(1)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::relative_embedding;
    use crate::testing::{check_fd, check_var_fd, layer_inputs, LayerInputs};

    fn cfg(layout: QkvLayout) -> AttentionConfig {
        AttentionConfig { d_model: 6, n_head: 2, d_head: 3, layout, local_size: 0, dropatt: 0.0 }
    }

    fn no_norm() -> NormOptions {
        NormOptions { norm_type: deq_core::NormType::None, ..Default::default() }
    }

    #[test]
    fn rel_shift_reads_each_query_at_its_own_distance() {
        let (q, k) = (3usize, 5usize);
        let x = Tensor::arange(0f64, (2 * q * k) as f64, &Device::Cpu).unwrap().reshape((2, q, k)).unwrap();
        let s = rel_shift(&x).unwrap().to_vec3::<f64>().unwrap();
        let x = x.to_vec3::<f64>().unwrap();
        let mlen = k - q;
        for b in 0..2 {
            for i in 0..q {
                for j in 0..=mlen + i {
                    assert_eq!(s[b][i][j], x[b][i][j + q - 1 - i], "[{b}, {i}, {j}]");
                }
            }
        }
        // Query 0 attends to keys 0..=mlen; key mlen + 1 is the pad.
        assert_eq!(s[0][0][mlen + 1], 0.0);
    }

    #[test]
    fn rel_shift_of_a_matrix_and_of_too_few_dimensions() {
        let x = Tensor::arange(0f64, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
        // q = 2, k = 3: [i, j] = x[i, j + 1 - i] for j <= 1 + i.
        let s = rel_shift(&x).unwrap().to_vec2::<f64>().unwrap();
        assert_eq!((s[0][0], s[0][1], s[1][0], s[1][1], s[1][2]), (1.0, 2.0, 3.0, 4.0, 5.0));
        assert!(rel_shift(&Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap()).is_err());
    }

    /// The attention vectors against Transformer-XL's formula written out element by element:
    /// `S[i, j] = ((q_i + r_w) . k_j + (q_i + r_r) . R[d]) / sqrt(d_head)` with `d` the
    /// distance `mlen + i - j` and `R[d]` the projected embedding of distance `d`, softmax over
    /// `j <= mlen + i`, then the weighted values; q, k, v from `W_qkv c + u`.
    #[test]
    fn attend_computes_the_transformer_xl_scores() {
        let mut rng = DeqRng::new(7);
        let a = RelAttention::new(&cfg(QkvLayout::Blocks), no_norm(), &mut rng, DType::F64, &Device::Cpu).unwrap();
        let (mem, cur, h, dh) = (2usize, 3usize, 2usize, 3usize);
        let klen = mem + cur;
        let c = rng.randn((1, klen, 6), DType::F64, &Device::Cpu).unwrap();
        let u = rng.randn((1, klen, 18), DType::F64, &Device::Cpu).unwrap();
        let pos = relative_embedding(klen, 6, DType::F64, &Device::Cpu).unwrap();
        let r = a.project_positions(&pos).unwrap();
        let got = a.attend(&c, &u, &r, cur).unwrap().to_vec3::<f64>().unwrap();
        let wh = (a.qkv.forward(&c).unwrap() + &u).unwrap().to_vec3::<f64>().unwrap();
        let rr = r.to_vec3::<f64>().unwrap(); // (h, klen, dh), row j = distance klen - 1 - j
        let (rw, rb) = (a.r_w_bias.as_tensor().to_vec2::<f64>().unwrap(), a.r_r_bias.as_tensor().to_vec2::<f64>().unwrap());
        // Blocks layout: q at channel h * dh + d, k at 6 + ..., v at 12 + ...
        let at = |part: usize, pos: usize, head: usize, d: usize| wh[0][pos][part * 6 + head * dh + d];
        for head in 0..h {
            for i in 0..cur {
                let qi = mem + i;
                let visible = 0..=qi;
                let scores: Vec<f64> = visible
                    .clone()
                    .map(|j| {
                        let dist = qi - j;
                        let row = klen - 1 - dist;
                        (0..dh).map(|d| (at(0, qi, head, d) + rw[head][d]) * at(1, j, head, d) + (at(0, qi, head, d) + rb[head][d]) * rr[head][row][d]).sum::<f64>() / (dh as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for d in 0..dh {
                    let want: f64 = visible.clone().zip(&scores).map(|(j, s)| (s - max).exp() / z * at(2, j, head, d)).sum();
                    let have = got[0][i][head * dh + d];
                    assert!((want - have).abs() < 1e-12, "head {head} query {i} dim {d}: {have} against {want}");
                }
            }
        }
    }

    #[test]
    fn the_mask_hides_later_tokens_and_keeps_the_memory() {
        let inf = f32::NEG_INFINITY;
        let local = causal_mask(2, 3, 2, DType::F32, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(local, vec![vec![inf, inf, 0.0, 0.0, inf], vec![inf, inf, inf, 0.0, 0.0]]);
        let m = causal_mask(2, 3, 0, DType::F32, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0], vec![0.0, 0.0, 0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0.0; 5]);
        // Changing a later token of the segment leaves earlier outputs unchanged; changing the
        // memory changes all of them.
        let mut rng = DeqRng::new(1);
        let a = RelAttention::new(&cfg(QkvLayout::PerHead), no_norm(), &mut rng, DType::F64, &Device::Cpu).unwrap();
        let (mem, cur) = (2, 4);
        let zh = rng.randn((1, mem, 6), DType::F64, &Device::Cpu).unwrap();
        let z = rng.randn((1, cur, 6), DType::F64, &Device::Cpu).unwrap();
        let u = rng.randn((1, mem + cur, 18), DType::F64, &Device::Cpu).unwrap();
        let pos = relative_embedding(mem + cur, 6, DType::F64, &Device::Cpu).unwrap();
        let base = a.forward(&z, &zh, &u, &pos).unwrap();
        let later = z.slice_assign(&[0..1, 3..4, 0..6], &rng.randn((1, 1, 6), DType::F64, &Device::Cpu).unwrap()).unwrap();
        let moved = a.forward(&later, &zh, &u, &pos).unwrap();
        let d = |x: &Tensor, y: &Tensor, t: usize| (x.narrow(1, t, 1).unwrap() - y.narrow(1, t, 1).unwrap()).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        for t in 0..3 {
            assert!(d(&base, &moved, t) < 1e-14, "position {t} sees a later token");
        }
        assert!(d(&base, &moved, 3) > 1e-6);
        let other_mem = a.forward(&z, &(&zh + 1.0).unwrap(), &u, &pos).unwrap();
        for t in 0..cur {
            assert!(d(&base, &other_mem, t) > 1e-6, "position {t} ignores the memory");
        }
    }

    #[test]
    fn layouts_differ_only_in_channel_order() {
        // The same weights read as PerHead or as Blocks give the same output once the q/k/v
        // rows of the projection and the injection channels are permuted accordingly.
        let mut rng = DeqRng::new(2);
        let per_head = RelAttention::new(&cfg(QkvLayout::PerHead), no_norm(), &mut rng, DType::F64, &Device::Cpu).unwrap();
        let blocks = RelAttention::new(&cfg(QkvLayout::Blocks), no_norm(), &mut DeqRng::new(2), DType::F64, &Device::Cpu).unwrap();
        // Blocks channel (p, h, d) = PerHead channel (h, p, d).
        let perm: Vec<u32> = (0..3).flat_map(|p| (0..2).flat_map(move |h| (0..3).map(move |d| (h * 9 + p * 3 + d) as u32))).collect();
        let idx = Tensor::new(perm.as_slice(), &Device::Cpu).unwrap();
        let wq = per_head.qkv.named_vars().into_iter().find(|(n, _)| *n == "weight_v").map(|(_, v)| v).unwrap();
        let wb = blocks.qkv.named_vars().into_iter().find(|(n, _)| *n == "weight_v").map(|(_, v)| v).unwrap();
        wb.set(&wq.as_tensor().index_select(&idx, 0).unwrap()).unwrap();
        blocks.reset().unwrap();
        let (zh, z) = (rng.randn((2, 1, 6), DType::F64, &Device::Cpu).unwrap(), rng.randn((2, 3, 6), DType::F64, &Device::Cpu).unwrap());
        let u = rng.randn((2, 4, 18), DType::F64, &Device::Cpu).unwrap();
        let pos = relative_embedding(4, 6, DType::F64, &Device::Cpu).unwrap();
        let a = per_head.forward(&z, &zh, &u, &pos).unwrap();
        let b = blocks.forward(&z, &zh, &u.index_select(&idx, 2).unwrap(), &pos).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(diff < 1e-13, "{diff}");
    }

    /// Central differences in f64 of `sum(attention(z, z_hist, u) * m)` against the gradients
    /// of the inputs and of the position biases.
    #[test]
    fn gradients_match_finite_differences() {
        for layout in [QkvLayout::PerHead, QkvLayout::Blocks] {
            let mut rng = DeqRng::new(3);
            let a = RelAttention::new(&cfg(layout), no_norm(), &mut rng, DType::F64, &Device::Cpu).unwrap();
            let LayerInputs { z_hist: zh, z: z0, u: u0, upstream: m, pos } = layer_inputs(&mut rng, 2, 3);
            let loss = |z: &Tensor, u: &Tensor| (a.forward(z, &zh, u, &pos).unwrap() * &m).unwrap().sum_all().unwrap();
            let (z, u) = (Var::from_tensor(&z0).unwrap(), Var::from_tensor(&u0).unwrap());
            let g = loss(z.as_tensor(), u.as_tensor()).backward().unwrap();
            let check = |name: &str, base: &Tensor, grad: &Tensor, f: &dyn Fn(&Tensor) -> f64| check_fd(&format!("{layout:?} {name}"), base, grad, 1e-6, 1e-7, 5, f);
            check("z", &z0, g.get(z.as_tensor()).unwrap(), &|t| loss(t, &u0).to_scalar::<f64>().unwrap());
            check("u", &u0, g.get(u.as_tensor()).unwrap(), &|t| loss(&z0, t).to_scalar::<f64>().unwrap());
            for bias in [&a.r_w_bias, &a.r_r_bias] {
                let gb = g.get(bias.as_tensor()).unwrap().clone();
                check_var_fd(&format!("{layout:?} bias"), bias, &gb, 1e-6, 1e-7, 5, &|| loss(&z0, &u0).to_scalar::<f64>().unwrap(), &|| ());
            }
        }
    }

    /// Attention dropout: one element-wise mask per forward (the same output for every call
    /// until the next reset, a new one after it, none outside training), scaled by 1 / (1 - p);
    /// a local window changes what a query sees.
    #[test]
    fn attention_dropout_is_variational_and_the_window_limits_the_keys() {
        let mut rng = DeqRng::new(4);
        let c = AttentionConfig { dropatt: 0.5, ..cfg(QkvLayout::PerHead) };
        let a = RelAttention::new(&c, no_norm(), &mut rng, DType::F64, &Device::Cpu).unwrap();
        let plain = RelAttention::new(&cfg(QkvLayout::PerHead), no_norm(), &mut DeqRng::new(4), DType::F64, &Device::Cpu).unwrap();
        let LayerInputs { z_hist: zh, z, u, pos, .. } = layer_inputs(&mut rng, 2, 3);
        let (mlen, qlen) = (zh.dim(1).unwrap(), z.dim(1).unwrap());
        let r = a.project_positions(&pos).unwrap();
        let run = |att: &RelAttention, training: bool| {
            let [_, uk, uv] = att.split_injection(&u.narrow(1, 0, mlen).unwrap()).unwrap();
            let mem = att.memory_kv(&zh, &uk, &uv).unwrap();
            att.attend_after(&mem, &z, &att.split_injection(&u.narrow(1, mlen, qlen).unwrap()).unwrap(), &r, training).unwrap()
        };
        let diff = |x: &Tensor, y: &Tensor| (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(diff(&run(&a, false), &run(&plain, false)) < 1e-12, "no dropout outside training");
        a.reseed_dropout(1);
        let (t1, t2) = (run(&a, true), run(&a, true));
        assert!(diff(&t1, &t2) == 0.0, "one mask per forward");
        assert!(diff(&t1, &run(&plain, true)) > 1e-3);
        a.reseed_dropout(1);
        assert!(diff(&t1, &run(&a, true)) == 0.0, "the mask follows its seed");
        a.reseed_dropout(2);
        assert!(diff(&t1, &run(&a, true)) > 1e-6);
        let w = RelAttention::new(&AttentionConfig { local_size: 2, ..cfg(QkvLayout::PerHead) }, no_norm(), &mut DeqRng::new(4), DType::F64, &Device::Cpu).unwrap();
        assert!(diff(&run(&w, false), &run(&plain, false)) > 1e-6);
    }
}
