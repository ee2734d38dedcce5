//! Training and evaluation: Adam with linear warm-up and cosine decay (the zoo's, except that
//! the first step uses the warm-up's first rate, not the peak), global gradient-norm clipping,
//! the training stream read segment after segment with the memory carried across them (reset
//! at each epoch), validation perplexity every `eval_interval` steps, JSON-lines metrics and
//! atomic checkpoints (parameters, Adam state, the training memory and the step); a resumed
//! run is bit-identical to an uninterrupted one (dropout masks are drawn from the step).

use crate::config::RunConfig;
use crate::data::Segments;
use crate::model::{DeqTransformerLm, Memory};
use candle_core::{DType, Device, Tensor};
use deq_core::rng::DeqRng;
use deq_train::{Adam, Checkpointer, MetricsWriter, Optimizer, Schedule};
use std::path::PathBuf;

/// The token streams of the three splits and the vocabulary size.
#[derive(Debug, Clone)]
pub struct Streams {
    /// Training ids.
    pub train: Vec<u32>,
    /// Validation ids.
    pub valid: Vec<u32>,
    /// Test ids.
    pub test: Vec<u32>,
    /// Vocabulary size.
    pub n_token: usize,
}

/// Where a run writes and how far it goes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Output folder (`metrics.jsonl`, `checkpoints/`); none: nothing is written.
    pub out_dir: Option<PathBuf>,
    /// Continue from the latest checkpoint in `out_dir`.
    pub resume: bool,
    /// Stop after this many steps in total (0: `train.max_step`).
    pub max_steps: usize,
    /// Device.
    pub device: Device,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { out_dir: None, resume: false, max_steps: 0, device: Device::Cpu }
    }
}

/// The result of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    /// Mean negative log-likelihood per token.
    pub loss: f64,
    /// `exp(loss)`.
    pub ppl: f64,
    /// Mean forward NFE per segment.
    pub nfe: f64,
    /// Tokens scored.
    pub tokens: usize,
}

/// Perplexity of `ids` read in `batch` columns and segments of `tgt_len`, with a memory of
/// `mem_len` positions (no dropout).
pub fn evaluate(model: &DeqTransformerLm, ids: &[u32], batch: usize, tgt_len: usize, dev: &Device) -> crate::Result<EvalResult> {
    let seg = Segments::new(ids, batch, tgt_len, 0..batch)?;
    let mut mem = model.empty_memory(batch)?;
    let (mut nll, mut tokens, mut nfe) = (0f64, 0usize, 0f64);
    for k in 0..seg.len() {
        let (x, y) = seg.get(k, dev)?;
        let out = model.forward(&x, &mem, false)?;
        let n = y.elem_count();
        nll += model.loss(out.hidden.last().expect("a state"), &y)?.to_dtype(DType::F64)?.to_scalar::<f64>()? * n as f64;
        tokens += n;
        nfe += out.stats.nfe as f64;
        mem = out.memory;
    }
    let loss = nll / tokens.max(1) as f64;
    Ok(EvalResult { loss, ppl: loss.exp(), nfe: nfe / seg.len().max(1) as f64, tokens })
}

/// What a run ends with.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps trained in total.
    pub steps: usize,
    /// The last validation result.
    pub valid: Option<EvalResult>,
    /// Mean training loss of the last evaluation interval.
    pub train_loss: f64,
}

/// Trains `cfg` on `data`; `on_step(step, loss)` is called after every step.
pub fn train(cfg: &RunConfig, data: &Streams, opts: &TrainOptions, mut on_step: impl FnMut(usize, f64)) -> crate::Result<TrainSummary> {
    let dev = &opts.device;
    let t = &cfg.train;
    let model_cfg = cfg.model.model(data.n_token).map_err(candle_core::Error::Msg)?;
    let model = DeqTransformerLm::new(&model_cfg, &cfg.deq, &mut DeqRng::new(t.seed), DType::F32, dev)?;
    let vars = model.named_vars();
    let plain: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Adam::new(vars, t.lr, (0.9, 0.999), 1e-8, 0.0, false)?;
    let schedule = Schedule::Cosine { warmup_steps: t.warmup_step, total_steps: t.max_step, min_lr: 0.0 };
    let seg = Segments::new(&data.train, t.batch_size, t.tgt_len, 0..t.batch_size)?;
    if t.eval_mem_len != 0 && t.eval_mem_len != cfg.model.mem_len {
        return Err(candle_core::Error::Msg(format!("train.eval_mem_len = {}: evaluation with another memory length than model.mem_len is not available yet", t.eval_mem_len)).into());
    }
    let mut ck = match &opts.out_dir {
        Some(d) => Some((Checkpointer::new(d.join("checkpoints"), 2)?, MetricsWriter::open(d.join("metrics.jsonl"))?)),
        None => None,
    };
    let mut step = 0usize;
    let mut mem = model.empty_memory(t.batch_size)?;
    if opts.resume {
        let (c, _) = ck.as_ref().ok_or_else(|| candle_core::Error::Msg("--resume needs an output folder".into()))?;
        if let Some(c) = c.load_latest(dev)? {
            deq_train::load_vars(&model.named_vars(), &c, "model.")?;
            let optim: std::collections::HashMap<String, Tensor> = c.tensors.iter().filter_map(|(k, v)| k.strip_prefix("optim.").map(|s| (s.to_string(), v.clone()))).collect();
            opt.load_state(&optim)?;
            let get = |k: &str| c.tensors.get(k).cloned().ok_or_else(|| crate::LmError::data(&c.path, format!("no tensor `{k}`")));
            mem = Memory { z: get("memory.z")?, u: get("memory.u")? };
            step = c.step;
        }
    }
    let last = if opts.max_steps > 0 { opts.max_steps.min(t.max_step) } else { t.max_step };
    let (mut loss_sum, mut loss_n) = (0f64, 0usize);
    let mut valid = None;
    let mut train_loss = f64::NAN;
    while step < last {
        let k = step % seg.len();
        if k == 0 {
            mem = model.empty_memory(t.batch_size)?;
        }
        let (x, y) = seg.get(k, dev)?;
        opt.set_lr(schedule.lr_at(t.lr, step));
        let seed = t.seed.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(step as u64);
        let out = model.forward_seeded(&x, &mem, true, seed)?;
        let loss = model.loss(out.hidden.last().expect("a state"), &y)?;
        let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        deq_train::check_finite("training loss", lv, step)?;
        let mut grads = deq_core::grad::backward(&loss)?;
        if t.clip > 0.0 {
            deq_train::clip_grad_norm(&mut grads, &plain, t.clip)?;
        }
        opt.step(&grads)?;
        mem = out.memory;
        step += 1;
        loss_sum += lv;
        loss_n += 1;
        on_step(step, lv);
        if step % t.eval_interval.max(1) == 0 || step == last {
            let v = evaluate(&model, &data.valid, t.eval_batch_size, t.tgt_len, dev)?;
            train_loss = loss_sum / loss_n.max(1) as f64;
            (loss_sum, loss_n) = (0.0, 0);
            valid = Some(v);
            if let Some((c, metrics)) = ck.as_mut() {
                metrics.write(&serde_json::json!({"step": step, "train_loss": train_loss, "valid_loss": v.loss, "valid_ppl": v.ppl, "valid_nfe": v.nfe, "lr": opt.lr()}))?;
                let mut tensors: Vec<(String, Tensor)> = model.named_vars().into_iter().map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone())).collect();
                tensors.extend(opt.state()?.into_iter().map(|(n, v)| (format!("optim.{n}"), v)));
                tensors.push(("memory.z".into(), mem.z.clone()));
                tensors.push(("memory.u".into(), mem.u.clone()));
                c.save(step, &tensors, serde_json::json!({"train_loss": train_loss, "valid_loss": v.loss, "valid_ppl": v.ppl}))?;
            }
        }
    }
    Ok(TrainSummary { steps: step, valid, train_loss })
}
