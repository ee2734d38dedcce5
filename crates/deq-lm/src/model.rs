//! The DEQ transformer language model: adaptive embedding, one injection, `f` = the blocks
//! chained (`deq-lm`: `n_layer` pre-LN blocks; `deq-seq`: one post-LN block) over the segment
//! given the memory, solved with deq-core, then the tied adaptive log-softmax. The memory is
//! the previous segments' fixed points and injections (detached), at most `mem_len` positions.

use crate::adaptive::{AdaptiveConfig, AdaptiveEmbedding, AdaptiveLogSoftmax};
use crate::attention::{AttentionConfig, QkvLayout};
use crate::block::{Block, BlockConfig, BlockStyle};
use candle_core::{DType, Device, Tensor, Var};
use deq_core::dropout::{DropShape, VariationalDropout};
use deq_core::norm::NormOptions;
use deq_core::rng::DeqRng;
use deq_core::grad::BackwardStats;
use deq_core::solver::SolverStats;
use deq_core::{Deq, DeqConfig};

/// Which of the zoo's two models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `deq-lm`: `n_layer` pre-LN blocks in `f`, q/k/v interleaved per head.
    Lm,
    /// `deq-seq`: one post-LN block in `f` (LayerNorms without affine), q/k/v in blocks.
    Seq,
}

/// Model sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `deq-lm` or `deq-seq`.
    pub variant: Variant,
    /// Blocks chained in `f` (`deq-lm`; `deq-seq` has one).
    pub n_layer: usize,
    /// Model width.
    pub d_model: usize,
    /// Heads.
    pub n_head: usize,
    /// Head width.
    pub d_head: usize,
    /// Feed-forward width.
    pub d_inner: usize,
    /// Dropout of the blocks, the input embedding, the positions and the output.
    pub dropout: f64,
    /// Dropout of the attention probabilities.
    pub dropatt: f64,
    /// Each query sees its last `local_size` keys (0: every earlier key).
    pub local_size: usize,
    /// Embedding and output layers.
    pub adaptive: AdaptiveConfig,
    /// Positions of memory kept between segments.
    pub mem_len: usize,
    /// Standard deviation of the zoo's initialisation ([`crate::init`]); 0 keeps the
    /// constructors' draws (PyTorch's default initialisation of linear maps).
    pub init_std: f64,
}

impl ModelConfig {
    /// The number of trainable parameters of [`DeqTransformerLm`] with this configuration and
    /// weight normalisation on (`weight_norm`: one scale per output row of `f`'s linear maps),
    /// counted from the sizes without building the model (the zoo's WikiText-103 models have
    /// about 98M).
    pub fn num_params(&self, weight_norm: bool) -> usize {
        let (d, hd, di) = (self.d_model, self.n_head * self.d_head, self.d_inner);
        let a = &self.adaptive;
        let mut bounds = vec![0];
        bounds.extend(&a.cutoffs);
        bounds.push(a.n_token);
        let n = bounds.len() - 1;
        let width = |i: usize| (a.d_embed / a.div_val.max(1).pow(i as u32)).max(1);
        let needs_proj = |i: usize| width(i) != d || a.div_val > 1;
        let mut total = 0;
        for i in 0..n {
            total += (bounds[i + 1] - bounds[i]) * width(i); // embedding (tied to the output)
            total += bounds[i + 1] - bounds[i]; // output bias
            if needs_proj(i) {
                total += d * width(i); // input projection (tied for the tails)
                if i == 0 && !a.tie_first_projection {
                    total += d * width(0); // the head's own output projection
                }
            }
        }
        if n > 1 {
            total += (n - 1) * width(0) + (n - 1); // cluster weight and bias
        }
        total += 3 * hd * d + 3 * hd; // injection
        let g = |rows: usize| if weight_norm { rows } else { 0 };
        let mut block = 3 * hd * d + g(3 * hd) + hd * d + g(hd) + d * hd + d + g(d) + 2 * hd;
        block += di * d + di + g(di) + d * di + d + g(d);
        let blocks = match self.variant {
            Variant::Lm => {
                block += 2 * d + 2 * hd + 2 * d; // the three affine LayerNorms
                self.n_layer.max(1)
            }
            Variant::Seq => 1,
        };
        total + blocks * block
    }
}

/// The memory carried between segments: fixed points `(batch, mlen, d_model)` and injections
/// `(batch, mlen, 3 * n_head * d_head)`, both without gradient.
#[derive(Debug, Clone)]
pub struct Memory {
    /// Fixed points of the previous positions.
    pub z: Tensor,
    /// Their injections.
    pub u: Tensor,
}

impl Memory {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.z.dim(1).unwrap_or(0)
    }

    /// Whether it holds no position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One forward pass over a segment.
#[derive(Debug)]
pub struct LmForward {
    /// The supervised states `(batch, qlen, d_model)` (earliest first; the last is the fixed
    /// point), after the output dropout.
    pub hidden: Vec<Tensor>,
    /// The memory for the next segment.
    pub memory: Memory,
    /// Forward solver statistics.
    pub stats: SolverStats,
    /// Adjoint-solve statistics (filled in when backward runs through an IFT state).
    pub backward_stats: BackwardStats,
    /// The fixed point (detached, before output dropout).
    pub fixed_point: Tensor,
    /// What `f` was called with, for a later call at another point ([`DeqTransformerLm::f_at`]).
    pub context: FContext,
}

/// The inputs of `f` during one forward: the memory, the injection over `[memory; segment]`,
/// each block's projected positions; dropout masks stay those of the forward.
#[derive(Debug, Clone)]
pub struct FContext {
    inputs: Vec<Tensor>,
    training: bool,
}

/// The model.
#[derive(Debug)]
pub struct DeqTransformerLm {
    cfg: ModelConfig,
    emb: AdaptiveEmbedding,
    out: AdaptiveLogSoftmax,
    inj_w: Var,
    inj_b: Var,
    blocks: Vec<Block>,
    drop_in: VariationalDropout,
    drop_pos: VariationalDropout,
    drop_out: VariationalDropout,
    deq_train: Deq,
    deq_eval: Deq,
    mem_len: usize,
}

impl DeqTransformerLm {
    /// A model with parameters drawn from `rng`; `deq` configures the solver, the gradient and
    /// the weight normalisation of `f`'s linear maps.
    pub fn new(cfg: &ModelConfig, deq: &DeqConfig, rng: &mut DeqRng, dtype: DType, dev: &Device) -> crate::Result<Self> {
        let (d, hd) = (cfg.d_model, cfg.n_head * cfg.d_head);
        if cfg.adaptive.d_model != d {
            return Err(candle_core::Error::Msg(format!("adaptive.d_model {} differs from d_model {d}", cfg.adaptive.d_model)).into());
        }
        let emb = AdaptiveEmbedding::new(&cfg.adaptive, rng, dtype, dev)?;
        let out = AdaptiveLogSoftmax::new(&emb, rng)?;
        let inj_w = Var::from_tensor(&rng.randn((3 * hd, d), dtype, dev)?.affine(0.01, 0.0)?)?;
        let inj_b = Var::zeros(3 * hd, dtype, dev)?;
        let (style, layout, n) = match cfg.variant {
            Variant::Lm => (BlockStyle::PreLn, QkvLayout::PerHead, cfg.n_layer.max(1)),
            Variant::Seq => (BlockStyle::PostLn, QkvLayout::Blocks, 1),
        };
        let bc = BlockConfig { attention: AttentionConfig { d_model: d, n_head: cfg.n_head, d_head: cfg.d_head, layout, local_size: cfg.local_size, dropatt: cfg.dropatt }, d_inner: cfg.d_inner, dropout: cfg.dropout, style };
        let norm = NormOptions::from_config(deq);
        let blocks = (0..n).map(|_| Block::new(&bc, norm, rng, dtype, dev)).collect::<crate::Result<Vec<_>>>()?;
        let drop = |shape, rng: &mut DeqRng| VariationalDropout::new(cfg.dropout, shape, rng.next_u64());
        let (drop_in, drop_pos, drop_out) = (drop(DropShape::Token, rng)?, drop(DropShape::Token, rng)?, drop(DropShape::Channel, rng)?);
        let deq_train = Deq::new(deq.clone())?;
        let mut deq_eval = Deq::new(deq.clone())?;
        deq_eval.set_training(false);
        let this = Self { cfg: cfg.clone(), emb, out, inj_w, inj_b, blocks, drop_in, drop_pos, drop_out, deq_train, deq_eval, mem_len: cfg.mem_len };
        if cfg.init_std > 0.0 {
            crate::init::zoo_init(&this.named_vars(), cfg.init_std, norm.norm_type == deq_core::NormType::WeightNorm, rng)?;
            for blk in &this.blocks {
                blk.reset()?;
            }
        }
        Ok(this)
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Keeps `mem_len` positions of memory from now on (evaluation may use a longer memory than
    /// training: nothing in the weights depends on it).
    pub fn set_mem_len(&mut self, mem_len: usize) {
        self.mem_len = mem_len;
    }

    /// The memory length in use.
    pub fn mem_len(&self) -> usize {
        self.mem_len
    }

    /// Evaluates with the solver of `deq` (its `eval_f_max_iter`, solver and tolerance) from
    /// now on, e.g. to trade forward NFE for perplexity.
    pub fn set_eval_solver(&mut self, deq: &DeqConfig) -> crate::Result<()> {
        let mut d = Deq::new(deq.clone())?;
        d.set_training(false);
        self.deq_eval = d;
        Ok(())
    }

    /// Every trainable variable with its name (tied matrices once).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> = self.emb.named_vars().into_iter().map(|(n, x)| (format!("emb.{n}"), x)).collect();
        v.extend(self.out.named_vars().into_iter().map(|(n, x)| (format!("out.{n}"), x)));
        v.push(("injection.weight".into(), self.inj_w.clone()));
        v.push(("injection.bias".into(), self.inj_b.clone()));
        for (i, b) in self.blocks.iter().enumerate() {
            v.extend(b.named_vars().into_iter().map(|(n, x)| (format!("blocks.{i}.{n}"), x)));
        }
        v
    }

    /// An empty memory for `batch` sequences.
    pub fn empty_memory(&self, batch: usize) -> candle_core::Result<Memory> {
        let (dtype, dev) = (self.inj_w.dtype(), self.inj_w.device());
        let hd = self.cfg.n_head * self.cfg.d_head;
        Ok(Memory { z: Tensor::zeros((batch, 0, self.cfg.d_model), dtype, dev)?, u: Tensor::zeros((batch, 0, 3 * hd), dtype, dev)? })
    }

    /// `f(z)` given `inputs`: the segment's injection (q, k and v parts), each block's
    /// projected positions, then each block's memory keys and values ([`Block::memory_kv`]).
    fn f(&self, z: &Tensor, inputs: &[Tensor], training: bool) -> candle_core::Result<Tensor> {
        let n = self.blocks.len();
        let u = [inputs[0].clone(), inputs[1].clone(), inputs[2].clone()];
        let mut z = z.clone();
        for (i, b) in self.blocks.iter().enumerate() {
            let mem = [inputs[3 + n + 2 * i].clone(), inputs[4 + n + 2 * i].clone()];
            z = b.forward_after(&z, &mem, &u, &inputs[3 + i], training)?;
        }
        Ok(z)
    }

    /// The forward pass over the segment `tokens` `(batch, qlen)` (u32) after `memory`.
    pub fn forward(&self, tokens: &Tensor, memory: &Memory, training: bool) -> crate::Result<LmForward> {
        for blk in &self.blocks {
            blk.reset()?;
        }
        for d in [&self.drop_in, &self.drop_pos, &self.drop_out] {
            d.reset();
        }
        self.forward_reset(tokens, memory, training)
    }

    /// [`DeqTransformerLm::forward`] with every dropout mask drawn from `seed` alone (a
    /// trainer passes one derived from the step, so that a resumed run is bit-identical).
    pub fn forward_seeded(&self, tokens: &Tensor, memory: &Memory, training: bool, seed: u64) -> crate::Result<LmForward> {
        for (i, blk) in self.blocks.iter().enumerate() {
            blk.reset_with_seed(seed ^ ((i as u64 + 1) << 56))?;
        }
        for (i, d) in [&self.drop_in, &self.drop_pos, &self.drop_out].into_iter().enumerate() {
            d.reset_with_seed(seed.wrapping_mul(0xD1B5_4A32_D192_ED03).wrapping_add(i as u64));
        }
        self.forward_reset(tokens, memory, training)
    }

    fn forward_reset(&self, tokens: &Tensor, memory: &Memory, training: bool) -> crate::Result<LmForward> {
        let (b, qlen) = tokens.dims2()?;
        if memory.z.dim(0)? != b {
            return Err(candle_core::Error::Msg(format!("memory of batch {} for a batch of {b}", memory.z.dim(0)?)).into());
        }
        let e = self.drop_in.forward(&self.emb.forward(tokens)?, training)?;
        let u_now = deq_core::nn::linear_map(&e, self.inj_w.as_tensor())?.broadcast_add(self.inj_b.as_tensor())?;
        let klen = memory.len() + qlen;
        let pos = crate::position::relative_embedding(klen, self.cfg.d_model, e.dtype(), e.device())?;
        let pos = self.drop_pos.forward(&pos.unsqueeze(0)?, training)?.squeeze(0)?;
        // The memory's part of every f call is the same: its projections are computed once.
        let z_hist = memory.z.detach();
        let attn = self.blocks[0].attention();
        let mut inputs: Vec<Tensor> = attn.split_injection(&u_now)?.into();
        for blk in &self.blocks {
            inputs.push(blk.attention().project_positions(&pos)?);
        }
        let [_, mem_k, mem_v] = attn.split_injection(&memory.u)?;
        for blk in &self.blocks {
            inputs.extend(blk.memory_kv(&z_hist, &mem_k, &mem_v)?);
        }
        let z0 = Tensor::zeros((b, qlen, self.cfg.d_model), e.dtype(), e.device())?;
        let deq = if training { &self.deq_train } else { &self.deq_eval };
        let out = deq.forward1(|z, x| self.f(z, x, training), &inputs, &z0)?;
        let z_star = out.z().detach();
        let context = FContext { inputs, training };
        let keep = |t: Tensor| -> candle_core::Result<Tensor> {
            let n = t.dim(1)?;
            let from = n.saturating_sub(self.mem_len);
            t.narrow(1, from, n - from)?.contiguous()
        };
        let memory = Memory { z: keep(Tensor::cat(&[&memory.z, &z_star], 1)?)?, u: keep(Tensor::cat(&[&memory.u, &u_now.detach()], 1)?)? };
        let hidden = out.states.iter().map(|s| self.drop_out.forward(&s[0], training)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(LmForward { hidden, memory, stats: out.stats, backward_stats: out.backward_stats, fixed_point: z_star, context })
    }

    /// `f(z)` with the memory, injection, positions and dropout masks of the forward that made
    /// `ctx` (e.g. for the Jacobian regulariser at its fixed point).
    pub fn f_at(&self, ctx: &FContext, z: &Tensor) -> candle_core::Result<Tensor> {
        self.f(z, &ctx.inputs, ctx.training)
    }

    /// Log-probabilities of the next token `(batch, n_token)` after the last position of
    /// `hidden` `(batch, qlen, d_model)`.
    pub fn next_token_log_probs(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let q = hidden.dim(1)?;
        self.out.log_probs(&hidden.narrow(1, q - 1, 1)?.squeeze(1)?)
    }

    /// The mean negative log-likelihood of `targets` `(batch, qlen)` under `hidden`
    /// `(batch, qlen, d_model)`.
    pub fn loss(&self, hidden: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
        let (b, q, d) = hidden.dims3()?;
        self.out.nll(&hidden.reshape((b * q, d))?, &targets.flatten_all()?)?.mean_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::check_var_fd;

    fn cfg(variant: Variant) -> ModelConfig {
        ModelConfig {
            variant,
            n_layer: 2,
            d_model: 6,
            n_head: 2,
            d_head: 3,
            d_inner: 5,
            dropout: 0.0,
            dropatt: 0.0,
            local_size: 0,
            adaptive: AdaptiveConfig { n_token: 11, d_embed: 6, d_model: 6, cutoffs: vec![4], div_val: 2, tie_first_projection: false },
            mem_len: 5,
            init_std: 0.0,
        }
    }

    /// Tokens from both clusters (ids below and above the cutoff 4) in every segment.
    fn tokens(b: usize, q: usize, seed: u64) -> Tensor {
        Tensor::from_vec((0..b * q).map(|k| ((seed as usize * 3 + k * 5) % 11) as u32).collect::<Vec<_>>(), (b, q), &Device::Cpu).unwrap()
    }

    /// The zoo's deq-lm training: no forward solve (`f_max_iter = 0`), a phantom gradient of
    /// k unrolled steps from zero, i.e. exactly a weight-tied k-layer network: its gradient is
    /// the finite differences of the loss, for every parameter.
    #[test]
    fn the_unrolled_training_gradient_matches_finite_differences() {
        let deq = DeqConfig { f_max_iter: 0, grad: vec![3], tau: 1.0, ift: false, ..Default::default() };
        let m = DeqTransformerLm::new(&cfg(Variant::Lm), &deq, &mut DeqRng::new(1), DType::F64, &Device::Cpu).unwrap();
        let (x, y) = (tokens(2, 4, 2), tokens(2, 4, 3));
        let mem = m.empty_memory(2).unwrap();
        // A memory from a first segment, so the second segment's attention reads it.
        let mem = m.forward(&tokens(2, 3, 4), &mem, true).unwrap().memory;
        let loss = || -> Tensor {
            let out = m.forward(&x, &mem, true).unwrap();
            m.loss(out.hidden.last().unwrap(), &y).unwrap()
        };
        let g = deq_core::grad::backward(&loss()).unwrap();
        let vars = m.named_vars();
        assert!(vars.len() > 30, "{}", vars.len());
        for (name, var) in vars {
            let gv = g.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")).clone();
            check_var_fd(&name, &var, &gv, 1e-6, 1e-7, 11, &|| loss().to_scalar::<f64>().unwrap(), &|| ());
        }
    }

    /// deq-seq's training: the fixed point solved tightly and differentiated implicitly; the
    /// gradient of every parameter matches finite differences of the solved loss.
    #[test]
    fn the_implicit_gradient_matches_finite_differences() {
        let deq = DeqConfig { f_solver: "broyden".into(), f_max_iter: 60, f_tol: 1e-12, b_solver: "broyden".into(), b_max_iter: 60, b_tol: 1e-12, ift: true, grad: vec![1], ..Default::default() };
        let m = DeqTransformerLm::new(&cfg(Variant::Seq), &deq, &mut DeqRng::new(5), DType::F64, &Device::Cpu).unwrap();
        let (x, y) = (tokens(2, 3, 6), tokens(2, 3, 7));
        let mem = m.forward(&tokens(2, 2, 8), &m.empty_memory(2).unwrap(), true).unwrap().memory;
        let loss = || -> (Tensor, SolverStats) {
            let out = m.forward(&x, &mem, true).unwrap();
            (m.loss(out.hidden.last().unwrap(), &y).unwrap(), out.stats)
        };
        let (l, stats) = loss();
        assert!(stats.rel_lowest.iter().all(|&r| r < 1e-9), "the solve converged: {:?}", stats.rel_lowest);
        let g = deq_core::grad::backward(&l).unwrap();
        for (name, var) in m.named_vars() {
            let gv = g.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")).clone();
            check_var_fd(&name, &var, &gv, 1e-5, 1e-6, 13, &|| loss().0.to_scalar::<f64>().unwrap(), &|| ());
        }
    }

    /// The zoo's initialisation: N(0, 0.01) maps and embeddings, N(1, 0.01) LayerNorm
    /// weights, zero biases, U(-0.05, 0.05) position biases, weight norm's `g` the rows' norms.
    #[test]
    fn the_zoo_initialisation_is_applied() {
        let c = ModelConfig { init_std: 0.01, d_model: 64, n_head: 4, d_head: 16, d_inner: 96, adaptive: AdaptiveConfig { n_token: 300, d_embed: 64, d_model: 64, cutoffs: vec![100], div_val: 2, tie_first_projection: false }, ..cfg(Variant::Lm) };
        let m = DeqTransformerLm::new(&c, &DeqConfig::default(), &mut DeqRng::new(4), DType::F64, &Device::Cpu).unwrap();
        let vars = m.named_vars();
        let stats = |v: &Var| {
            let x: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let mean = x.iter().sum::<f64>() / x.len() as f64;
            (mean, (x.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / x.len() as f64).sqrt(), x.iter().fold(0f64, |m, a| m.max(a.abs())))
        };
        let mut seen = [0usize; 5];
        for (name, v) in &vars {
            let (mean, sd, max) = stats(v);
            match crate::init::rule(name) {
                crate::init::InitRule::Normal if v.elem_count() >= 500 => {
                    assert!(mean.abs() < 2e-3 && (sd - 0.01).abs() < 1.5e-3, "{name}: mean {mean}, sd {sd}");
                    seen[0] += 1;
                }
                crate::init::InitRule::NormalAroundOne => {
                    assert!((mean - 1.0).abs() < 5e-3 && (sd - 0.01).abs() < 4e-3, "{name}: mean {mean}, sd {sd}");
                    seen[1] += 1;
                }
                crate::init::InitRule::Zero => {
                    assert_eq!(max, 0.0, "{name}");
                    seen[2] += 1;
                }
                crate::init::InitRule::Keep => {
                    assert!(max <= 0.05 && sd > 0.02, "{name}: sd {sd}, max {max}");
                    seen[3] += 1;
                }
                crate::init::InitRule::RowNorms => {
                    let raw = &vars.iter().find(|(n, _)| *n == name.replace("weight_g", "weight_v")).unwrap().1;
                    let rows = raw.dim(0).unwrap();
                    let norms = raw.as_tensor().sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap().reshape((rows, 1)).unwrap();
                    let d = (norms - v.as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                    assert!(d < 1e-12, "{name}: {d}");
                    seen[4] += 1;
                }
                _ => {}
            }
        }
        // Each rule reached: 2 blocks x (qkv, r, o, w1, w2) + injection + embeddings and projections;
        // 2 x 3 LayerNorms; the biases; 2 x 2 position biases; 2 x 5 scales.
        assert!(seen[0] >= 12 && seen[1] == 6 && seen[2] >= 10 && seen[3] == 4 && seen[4] == 10, "{seen:?}");
        // The normalised weights the blocks use are the drawn ones (g = |v| leaves W = v).
        let x = DeqRng::new(1).randn((1, 2, 64), DType::F64, &Device::Cpu).unwrap();
        let w1v = &vars.iter().find(|(n, _)| n == "blocks.0.ff.w1.weight_v").unwrap().1;
        let direct = x.broadcast_matmul(&w1v.as_tensor().t().unwrap()).unwrap();
        let via = m.blocks[0].ffn_hidden_for_test(&x).unwrap();
        let d = (direct - via).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-12, "{d}");
    }

    #[test]
    fn parameter_counts_match_the_model_and_the_zoo() {
        for variant in [Variant::Lm, Variant::Seq] {
            for (norm, wn) in [(deq_core::NormType::WeightNorm, true), (deq_core::NormType::None, false)] {
                let deq = DeqConfig { norm_type: norm, ..Default::default() };
                let c = cfg(variant);
                let m = DeqTransformerLm::new(&c, &deq, &mut DeqRng::new(0), DType::F32, &Device::Cpu).unwrap();
                let built: usize = m.named_vars().iter().map(|(_, v)| v.elem_count()).sum();
                assert_eq!(c.num_params(wn), built, "{variant:?}, weight norm {wn}");
            }
        }
        // The zoo's WikiText-103 models (vocabulary 267,735; README: 98M parameters).
        let adaptive = AdaptiveConfig { n_token: 267_735, d_embed: 700, d_model: 700, cutoffs: vec![20_000, 40_000, 200_000], div_val: 4, tie_first_projection: false };
        let lm = ModelConfig { variant: Variant::Lm, n_layer: 3, d_model: 700, n_head: 10, d_head: 70, d_inner: 14_800, dropout: 0.05, dropatt: 0.0, local_size: 0, adaptive, mem_len: 150, init_std: 0.01 };
        let seq = ModelConfig { variant: Variant::Seq, n_layer: 1, d_inner: 48_000, ..lm.clone() };
        for c in [lm, seq] {
            let n = c.num_params(true) as f64 / 1e6;
            assert!((97.0..99.0).contains(&n), "{:?}: {n:.2}M", c.variant);
        }
    }

    #[test]
    fn the_memory_is_detached_bounded_and_read() {
        let deq = DeqConfig { f_solver: "fixed_point_iter".into(), f_max_iter: 8, f_tol: 0.0, ..Default::default() };
        let m = DeqTransformerLm::new(&cfg(Variant::Lm), &deq, &mut DeqRng::new(9), DType::F64, &Device::Cpu).unwrap();
        let empty = m.empty_memory(2).unwrap();
        let first = m.forward(&tokens(2, 3, 10), &empty, false).unwrap();
        assert_eq!((first.memory.len(), first.memory.u.dims()), (3, &[2usize, 3, 18][..]));
        let second = m.forward(&tokens(2, 4, 11), &first.memory, false).unwrap();
        assert_eq!(second.memory.len(), 5, "mem_len caps the memory");
        // The memory's last positions are the second segment's fixed point.
        let tail = second.memory.z.narrow(1, 1, 4).unwrap();
        let d = (tail - second.hidden.last().unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-12, "{d}");
        // The same segment without the memory predicts differently; causality within it holds.
        let alone = m.forward(&tokens(2, 4, 11), &empty, false).unwrap();
        let diff = (alone.hidden.last().unwrap() - second.hidden.last().unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(diff > 1e-6);
        let mut later = tokens(2, 4, 11).to_vec2::<u32>().unwrap();
        later[0][3] = (later[0][3] + 1) % 11;
        let changed = m.forward(&Tensor::new(later, &Device::Cpu).unwrap(), &first.memory, false).unwrap();
        let early = |o: &LmForward| o.hidden.last().unwrap().narrow(1, 0, 3).unwrap();
        let d = (early(&changed) - early(&second)).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-12, "a later token changed earlier positions by {d}");
        assert!(m.forward(&tokens(3, 4, 1), &first.memory, false).is_err(), "a memory of another batch size");
    }
}
