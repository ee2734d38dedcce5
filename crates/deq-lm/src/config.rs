//! The configuration of a deq-lm run: `[model]`, `[deq]` (deq-core's `DeqConfig`, TorchDEQ
//! names), `[train]` and `[data]` in one TOML file; unknown keys are errors naming the key.
//! The vocabulary size is the corpus's, so `[model]` holds everything else.

use crate::adaptive::AdaptiveConfig;
use crate::model::{ModelConfig, Variant};
use deq_core::DeqConfig;
use serde::{Deserialize, Serialize};

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// `deq-lm` (pre-LN, `n_layer` blocks in `f`) or `deq-seq` (one post-LN block).
    pub variant: String,
    /// Blocks in `f` (`deq-lm`).
    pub n_layer: usize,
    /// Model width.
    pub d_model: usize,
    /// Width of the first cluster's embeddings.
    pub d_embed: usize,
    /// Heads.
    pub n_head: usize,
    /// Head width.
    pub d_head: usize,
    /// Feed-forward width.
    pub d_inner: usize,
    /// Dropout.
    pub dropout: f64,
    /// Dropout of the attention probabilities (the zoo's `dropatt`).
    pub dropatt: f64,
    /// Each query sees its last `local_size` keys (0: all; the zoo's default 0 means 1000,
    /// which its lengths never reach).
    pub local_size: usize,
    /// Adaptive embedding and softmax (false: one cluster, a plain tied softmax).
    pub adaptive: bool,
    /// Cluster boundaries of the adaptive layers.
    pub cutoffs: Vec<usize>,
    /// Embedding width divisor per cluster.
    pub div_val: usize,
    /// Memory kept in training.
    pub mem_len: usize,
    /// Standard deviation of the zoo's initialisation (0: PyTorch's defaults).
    pub init_std: f64,
}

impl Default for ModelSection {
    /// The zoo's WikiText-103 `deq-lm`.
    fn default() -> Self {
        Self { variant: "deq-lm".into(), n_layer: 3, d_model: 700, d_embed: 700, n_head: 10, d_head: 70, d_inner: 14_800, dropout: 0.05, dropatt: 0.0, local_size: 0, adaptive: true, cutoffs: vec![20_000, 40_000, 200_000], div_val: 4, mem_len: 150, init_std: 0.01 }
    }
}

impl ModelSection {
    /// The model for a vocabulary of `n_token` words (cutoffs at or above it are dropped, as
    /// for small corpora).
    pub fn model(&self, n_token: usize) -> Result<ModelConfig, String> {
        self.validate()?;
        let variant = if self.variant == "deq-seq" { Variant::Seq } else { Variant::Lm };
        let cutoffs = if self.adaptive { self.cutoffs.iter().copied().filter(|&c| c < n_token).collect() } else { Vec::new() };
        let div_val = if self.adaptive { self.div_val } else { 1 };
        let adaptive = AdaptiveConfig { n_token, d_embed: self.d_embed, d_model: self.d_model, cutoffs, div_val, tie_first_projection: false };
        Ok(ModelConfig { variant, n_layer: self.n_layer, d_model: self.d_model, n_head: self.n_head, d_head: self.d_head, d_inner: self.d_inner, dropout: self.dropout, dropatt: self.dropatt, local_size: self.local_size, adaptive, mem_len: self.mem_len, init_std: self.init_std })
    }

    fn validate(&self) -> Result<(), String> {
        if !["deq-lm", "deq-seq"].contains(&self.variant.as_str()) {
            return Err(format!("model.variant: `{}` is not deq-lm or deq-seq", self.variant));
        }
        if self.d_model == 0 || self.n_head == 0 || self.d_head == 0 || self.d_inner == 0 || self.n_layer == 0 || self.d_embed == 0 {
            return Err("model: d_model, d_embed, n_head, d_head, d_inner and n_layer must be positive".into());
        }
        if self.d_model % 2 != 0 {
            return Err(format!("model.d_model: {} must be even (sinusoidal positions)", self.d_model));
        }
        if self.variant == "deq-lm" && self.n_head * self.d_head != self.d_model {
            return Err(format!("model: deq-lm needs n_head * d_head = d_model ({} * {} != {})", self.n_head, self.d_head, self.d_model));
        }
        if !(self.init_std >= 0.0 && self.init_std.is_finite()) {
            return Err(format!("model.init_std: {} is not a standard deviation", self.init_std));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("model.dropout: {} is not in [0, 1)", self.dropout));
        }
        if !(0.0..1.0).contains(&self.dropatt) {
            return Err(format!("model.dropatt: {} is not in [0, 1)", self.dropatt));
        }
        if self.adaptive && (self.div_val == 0 || self.cutoffs.windows(2).any(|w| w[0] >= w[1])) {
            return Err("model.cutoffs must increase and model.div_val be positive".into());
        }
        Ok(())
    }
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Columns of the token stream (global batch).
    pub batch_size: usize,
    /// Segment length.
    pub tgt_len: usize,
    /// Optimiser steps.
    pub max_step: usize,
    /// Adam's peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps, then a cosine decay to 0 at `max_step`.
    pub warmup_step: usize,
    /// Clip the global gradient norm (0: off).
    pub clip: f64,
    /// Steps between evaluations and checkpoints.
    pub eval_interval: usize,
    /// Columns of the evaluation stream.
    pub eval_batch_size: usize,
    /// Memory kept in evaluation (0: `model.mem_len`).
    pub eval_mem_len: usize,
    /// Steps between training-metric records.
    pub log_interval: usize,
    /// Stop after this many minutes of training (evaluation excluded; 0: no limit).
    pub max_minutes: f64,
    /// Training minutes (evaluation excluded) at which validation and test perplexity are
    /// recorded and a checkpoint written, e.g. `[15, 30, 60]`.
    pub test_at_minutes: Vec<f64>,
    /// Steps at which validation and test perplexity are recorded and a checkpoint written
    /// (for comparisons at equal steps).
    pub test_at_steps: Vec<usize>,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// CPU threads (0: every core; `--threads` overrides).
    pub threads: usize,
    /// Seed.
    pub seed: u64,
    /// What a batch with NaN or Inf (in the forward solve, the loss, the adjoint solve or the
    /// gradient) or a diverging adjoint solve does: `stop` the run with a message naming the
    /// step and stage, or `skip` the batch (the step passes without an optimiser update) and
    /// count it.
    pub on_nonfinite: deq_train::faults::OnNonFinite,
    /// With `on_nonfinite = "skip"`: the run stops once more batches than this were skipped.
    pub max_skipped: usize,
}

impl Default for TrainSection {
    /// The zoo's WikiText-103 `deq-lm`.
    fn default() -> Self {
        Self { batch_size: 56, tgt_len: 150, max_step: 150_000, lr: 2.5e-4, warmup_step: 8_000, clip: 0.25, eval_interval: 5_000, eval_batch_size: 16, eval_mem_len: 0, log_interval: 200, max_minutes: 0.0, test_at_minutes: Vec::new(), test_at_steps: Vec::new(), keep_checkpoints: 2, threads: 0, seed: 42, on_nonfinite: deq_train::faults::OnNonFinite::Stop, max_skipped: 10 }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Corpus folder (`wiki.*.tokens`, `ptb.*.txt` or `{train,valid,test}.txt`); empty: the
    /// dataset `name` under `DEQ_DATA_DIR`.
    pub dir: String,
    /// Dataset name (`wikitext-103`, `ptb`, ...).
    pub name: String,
    /// `word` (the zoo's word-level vocabulary) or `bpe` (byte-level BPE for raw text).
    pub tokenizer: String,
    /// BPE vocabulary size.
    pub bpe_vocab: usize,
    /// An existing `tokenizer.json` to use instead of building one (empty: build).
    pub vocab_file: String,
    /// Cache the vocabulary and token streams in `<corpus>/deq-lm-cache/`.
    pub cache: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        Self { dir: String::new(), name: "wikitext-103".into(), tokenizer: "word".into(), bpe_vocab: 16_000, vocab_file: String::new(), cache: true }
    }
}

impl DataSection {
    /// The corpus folder: `dir`, else `name` under `DEQ_DATA_DIR` or `datasets/`.
    pub fn corpus_dir(&self) -> Result<std::path::PathBuf, String> {
        if !self.dir.is_empty() {
            return Ok(self.dir.clone().into());
        }
        deq_train::data::find_dataset_dir(&self.name).ok_or_else(|| {
            format!("dataset `{}` not found: set data.dir (`--set data.dir=DIR`) or DEQ_DATA_DIR to a folder containing `{}` (see datasets/README.md for the fetch scripts)", self.name, self.name)
        })
    }

    /// The tokenization options.
    pub fn text_options(&self) -> crate::data::TextOptions {
        let kind = if self.tokenizer == "bpe" { crate::data::VocabKind::Bpe } else { crate::data::VocabKind::Word };
        crate::data::TextOptions { kind, bpe_vocab: self.bpe_vocab, cache: self.cache }
    }
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Model sizes.
    #[serde(default)]
    pub model: ModelSection,
    /// Solver, gradient, normalisation and regularisation (TorchDEQ's options).
    #[serde(default)]
    pub deq: DeqConfig,
    /// Optimisation.
    #[serde(default)]
    pub train: TrainSection,
    /// Data.
    #[serde(default)]
    pub data: DataSection,
}

impl RunConfig {
    /// Parses and validates a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, String> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        cfg.check().map_err(|e| format!("{origin}: {e}"))?;
        Ok(cfg)
    }

    /// Checks every section; the message names the key.
    pub fn check(&self) -> Result<(), String> {
        self.model.validate()?;
        self.deq.validate().map_err(|e| format!("deq: {e}"))?;
        let t = &self.train;
        if t.batch_size == 0 || t.tgt_len == 0 || t.eval_batch_size == 0 || t.max_step == 0 || t.log_interval == 0 || t.keep_checkpoints == 0 {
            return Err("train.batch_size, tgt_len, eval_batch_size, max_step, log_interval and keep_checkpoints must be positive".into());
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) || t.clip < 0.0 {
            return Err("train.lr must be positive and train.clip not negative".into());
        }
        if !(t.max_minutes >= 0.0 && t.max_minutes.is_finite()) || t.test_at_minutes.iter().any(|m| !(*m > 0.0 && m.is_finite())) {
            return Err("train.max_minutes must be >= 0 and train.test_at_minutes positive".into());
        }
        if !["word", "bpe"].contains(&self.data.tokenizer.as_str()) {
            return Err(format!("data.tokenizer: `{}` is not word or bpe", self.data.tokenizer));
        }
        if self.data.tokenizer == "bpe" && self.data.bpe_vocab < 257 {
            return Err(format!("data.bpe_vocab: {} is below 257 (256 bytes and <eos>)", self.data.bpe_vocab));
        }
        Ok(())
    }
}

impl deq_train::cli::TrainerConfig for RunConfig {
    const SEED_SECTION: &'static str = "train";
    fn deq_mut(&mut self) -> &mut DeqConfig {
        &mut self.deq
    }
    fn validate(&self) -> Result<(), String> {
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> RunConfig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/deq-lm").join(name);
        RunConfig::from_toml(&std::fs::read_to_string(&path).unwrap(), &path.display().to_string()).unwrap()
    }

    #[test]
    fn the_zoo_configs_parse_and_have_the_zoos_settings_and_sizes() {
        let lm = load("wt103-deq-lm.toml");
        assert_eq!((lm.deq.f_max_iter, lm.deq.grad.clone(), lm.deq.tau, lm.deq.ift, lm.deq.eval_f_max_iter), (0, vec![12], 1.0, false, 12));
        assert_eq!((lm.train.warmup_step, lm.train.max_step, lm.train.clip), (8_000, 150_000, 0.25));
        let seq = load("wt103-deq-seq.toml");
        assert_eq!((seq.model.variant.as_str(), seq.model.d_inner, seq.deq.f_solver.as_str(), seq.deq.f_max_iter, seq.deq.ift), ("deq-seq", 48_000, "broyden", 35, true));
        let jr = load("wt103-deq-seq-jr.toml");
        assert_eq!((jr.deq.jac_loss_weight, jr.deq.jac_loss_freq), (0.1, 0.4));
        for c in [&lm, &seq, &jr] {
            let n = c.model.model(267_735).unwrap().num_params(true) as f64 / 1e6;
            assert!((97.0..99.0).contains(&n), "{}: {n:.2}M parameters", c.model.variant);
        }
        let ptb = load("ptb-cpu.toml");
        let m = ptb.model.model(10_000).unwrap();
        assert!(m.num_params(true) < 6_000_000, "the CPU model is small: {}", m.num_params(true));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = RunConfig::from_toml("[model]\nd_modl = 4\n", "x.toml").unwrap_err();
        assert!(e.contains("x.toml") && e.contains("d_modl"), "{e}");
        let e = RunConfig::from_toml("[model]\nvariant = \"deq-xl\"\n", "x.toml").unwrap_err();
        assert!(e.contains("model.variant") && e.contains("deq-xl"), "{e}");
        let e = RunConfig::from_toml("[model]\nn_head = 3\n", "x.toml").unwrap_err();
        assert!(e.contains("n_head * d_head = d_model"), "{e}");
        let e = RunConfig::from_toml("[train]\nlr = 0\n", "x.toml").unwrap_err();
        assert!(e.contains("train.lr"), "{e}");
        // Cutoffs above a small vocabulary are dropped; no adaptive means one cluster.
        let s = ModelSection { cutoffs: vec![100, 20_000], ..Default::default() };
        assert_eq!(s.model(5_000).unwrap().adaptive.cutoffs, vec![100]);
        assert!(ModelSection { adaptive: false, ..Default::default() }.model(5_000).unwrap().adaptive.cutoffs.is_empty());
    }
}
