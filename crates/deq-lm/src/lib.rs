//! # deq-lm
//!
//! The DEQ transformer language model of the DEQ zoo (Bai, Kolter, Koltun, NeurIPS 2019; the
//! zoo's `deq-lm` and `deq-seq`): a weight-tied transformer block whose output over a text
//! segment is the fixed point `z* = f(z*, u)`, with Transformer-XL relative attention over the
//! previous segment's fixed points.
//!
//! This crate is being built in steps (issue 15). Present: the relative positional embedding
//! ([`position`]), the relative multi-head attention with the injection added to q, k and v
//! ([`attention`]) and the blocks of `f` ([`block`]), checked against finite differences in
//! f64.
//!
//! | module | what it holds |
//! |---|---|
//! | [`position`] | Transformer-XL's sinusoidal embedding of relative distances |
//! | [`adaptive`] | adaptive input embedding and projected adaptive log-softmax, tied, without a full logit matrix |
//! | [`attention`] | relative multi-head attention, `rel_shift`, the causal mask over [memory; current] |
//! | [`block`] | the pre-LN (`deq-lm`) and post-LN (`deq-seq`) attention + feed-forward blocks with variational dropout |
//! | [`config`] | the TOML run configuration (`[model]`, `[deq]`, `[train]`, `[data]`); the zoo's configs are in `configs/deq-lm/` |
//! | [`data`] | corpus readers (WikiText, PTB, plain text), the word-level `tokenizer.json` vocabulary, columns and segments |
//! | [`bench`] | the training-step benchmark of `deq-lm-bench` |
//! | [`error`] | the crate's error type |
//! | [`generate`] | sampling text after a prompt with the segment memory |
//! | [`init`] | the zoo's initialisation, by variable name |
//! | [`rel_probs`] | the fused rel-shift, causal mask and softmax of the attention scores (CPU kernel, composed elsewhere) |
//! | [`train`] | training (Adam, warm-up + cosine, clipping, memory across segments, checkpoints, bit-identical resume) and perplexity |
//! | [`model`] | the model: embedding, injection, `f` solved with deq-core, memory, loss |
//!
//! ## Example: one attention call over a memory of 3 and a segment of 4 tokens
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use deq_core::rng::DeqRng;
//! use deq_lm::attention::{AttentionConfig, QkvLayout, RelAttention};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let mut rng = DeqRng::new(0);
//! let cfg = AttentionConfig { d_model: 8, n_head: 2, d_head: 4, layout: QkvLayout::PerHead, local_size: 0, dropatt: 0.0 };
//! let attn = RelAttention::new(&cfg, Default::default(), &mut rng, DType::F32, &dev)?;
//! let (mem, cur) = (3, 4);
//! let z_hist = rng.randn((2, mem, 8), DType::F32, &dev)?;
//! let z = rng.randn((2, cur, 8), DType::F32, &dev)?;
//! // The injection, one (3 * n_head * d_head)-vector per key position.
//! let u = rng.randn((2, mem + cur, 24), DType::F32, &dev)?;
//! let pos = deq_lm::position::relative_embedding(mem + cur, 8, DType::F32, &dev)?;
//! let out = attn.forward(&z, &z_hist, &u, &pos)?;
//! assert_eq!(out.dims(), &[2, cur, 8]);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod adaptive;
pub mod attention;
pub mod bench;
pub mod block;
pub mod config;
pub mod data;
pub mod error;
pub mod generate;
pub mod init;
pub mod model;
pub mod position;
pub mod rel_probs;
#[cfg(test)]
mod testing;
pub mod train;

pub use error::{LmError, Result};
