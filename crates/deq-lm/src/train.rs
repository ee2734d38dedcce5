//! Training and evaluation: Adam with linear warm-up and cosine decay (the zoo's, except that
//! the first step uses the warm-up's first rate, not the peak), global gradient-norm clipping,
//! the training stream read segment after segment with the memory carried across them (reset
//! at each epoch), fixed-point correction over `n_states` and the Jacobian regulariser of
//! `deq_train::DeqObjective`, validation perplexity every `eval_interval` steps (and test
//! perplexity at `test_at_minutes`), JSON-lines metrics and atomic checkpoints (parameters,
//! Adam state, every rank's training memory and the step); a resumed run is bit-identical to
//! an uninterrupted one (dropout masks are drawn from the step).
//!
//! Data parallelism: the `train.batch_size` columns of the stream are split into equal
//! contiguous slices, one per rank (as the zoo's ranks read theirs); gradients are averaged
//! over the ranks, so the update equals the single-process one on the global batch.

use crate::config::RunConfig;
use crate::data::Segments;
use crate::model::{DeqTransformerLm, Memory};
use candle_core::{DType, Device, Tensor};
use deq_core::rng::DeqRng;
use deq_train::{Adam, Checkpointer, Collective, DeqObjective, DistContext, MetricsWriter, Optimizer, Progress, Schedule, SolverMetrics};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

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
    /// Show a progress line on standard error.
    pub progress: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { out_dir: None, resume: false, max_steps: 0, device: Device::Cpu, progress: false }
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
    /// Mean relative residual of the fixed points (per sample, then over segments).
    pub rel_residual: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Seconds taken.
    pub seconds: f64,
}

impl EvalResult {
    /// The figures as JSON fields with `prefix` (`valid`, `test`).
    pub fn record(&self, prefix: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        for (k, v) in [("loss", self.loss), ("ppl", self.ppl), ("nfe", self.nfe), ("rel_residual", self.rel_residual), ("seconds", self.seconds)] {
            m.insert(format!("{prefix}_{k}"), serde_json::json!(v));
        }
        m.insert(format!("{prefix}_tokens"), serde_json::json!(self.tokens));
        m
    }
}

/// Perplexity of `ids` read in `batch` columns and segments of `tgt_len`, with the model's
/// memory length (see [`DeqTransformerLm::set_mem_len`]) and evaluation solver, no dropout.
/// `max_tokens` > 0 stops after that many target tokens (whole segments).
pub fn evaluate(model: &DeqTransformerLm, ids: &[u32], batch: usize, tgt_len: usize, max_tokens: usize, dev: &Device) -> crate::Result<EvalResult> {
    let t0 = Instant::now();
    let seg = Segments::new(ids, batch, tgt_len, 0..batch)?;
    let mut mem = model.empty_memory(batch)?;
    let (mut nll, mut tokens, mut nfe, mut res, mut n) = (0f64, 0usize, 0f64, 0f64, 0usize);
    for k in 0..seg.len() {
        let (x, y) = seg.get(k, dev)?;
        let out = model.forward(&x, &mem, false)?;
        let count = y.elem_count();
        nll += model.loss(out.hidden.last().expect("a state"), &y)?.to_dtype(DType::F64)?.to_scalar::<f64>()? * count as f64;
        tokens += count;
        nfe += out.stats.nfe as f64;
        res += mean(&out.stats.rel_lowest);
        n += 1;
        mem = out.memory;
        if max_tokens > 0 && tokens >= max_tokens {
            break;
        }
    }
    let loss = nll / tokens.max(1) as f64;
    Ok(EvalResult { loss, ppl: loss.exp(), nfe: nfe / n.max(1) as f64, rel_residual: res / n.max(1) as f64, tokens, seconds: t0.elapsed().as_secs_f64() })
}

/// The mean over samples of `|a - b| / |a|` (samples along the first dimension).
fn relative_residual(a: &Tensor, b: &Tensor) -> crate::Result<f64> {
    let n = a.dim(0)?;
    let num = (a - b)?.reshape((n, ()))?.sqr()?.sum(1)?.sqrt()?;
    let den = a.reshape((n, ()))?.sqr()?.sum(1)?.sqrt()?;
    let r: Vec<f64> = (num / (den + 1e-9)?)?.to_dtype(DType::F64)?.to_vec1()?;
    Ok(mean(&r))
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
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
    /// Parameters.
    pub params: usize,
    /// Training seconds (evaluation excluded) of this process's part of the run.
    pub train_seconds: f64,
}

/// A model as `cfg` builds it (the zoo's initialisation from `train.seed`).
pub fn build_model(cfg: &RunConfig, n_token: usize, dev: &Device) -> crate::Result<DeqTransformerLm> {
    let model_cfg = cfg.model.model(n_token).map_err(candle_core::Error::Msg)?;
    DeqTransformerLm::new(&model_cfg, &cfg.deq, &mut DeqRng::new(cfg.train.seed), DType::F32, dev)
}

/// A trained model from the latest checkpoint in `run_dir` (its memory length and evaluation
/// solver as `cfg` says).
pub fn load_trained(cfg: &RunConfig, n_token: usize, run_dir: &std::path::Path, dev: &Device) -> crate::Result<(DeqTransformerLm, usize)> {
    let mut model = build_model(cfg, n_token, dev)?;
    let c = Checkpointer::load(&run_dir.join("checkpoints").join("latest.json"), dev)?;
    deq_train::load_vars(&model.named_vars(), &c, "model.")?;
    if cfg.train.eval_mem_len > 0 {
        model.set_mem_len(cfg.train.eval_mem_len);
    }
    Ok((model, c.step))
}

/// Trains `cfg` on `data` in the data-parallel job the environment describes (a single
/// process when it describes none); `on_step(step, loss)` is called after every step.
pub fn train(cfg: &RunConfig, data: &Streams, opts: &TrainOptions, on_step: impl FnMut(usize, f64)) -> crate::Result<TrainSummary> {
    let collective = deq_train::collective_for(DistContext::from_env()?, &opts.device)?;
    train_with(cfg, data, opts, collective, on_step)
}

/// [`train`] as one rank of `collective`'s job.
pub fn train_with(cfg: &RunConfig, data: &Streams, opts: &TrainOptions, collective: Arc<dyn Collective>, on_step: impl FnMut(usize, f64)) -> crate::Result<TrainSummary> {
    deq_train::dist::with_group(collective.clone(), || train_rank(cfg, data, opts, &*collective, on_step))
}

/// The step's training seed, from which every dropout mask is drawn.
fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(step as u64)
}

/// Every rank's memory in rank order along the batch (each rank's columns are contiguous, so
/// this is the memory of the global batch, whatever the job's size).
fn gather_memory(collective: &dyn Collective, mem: &Memory) -> crate::Result<Memory> {
    let ctx = collective.context();
    if ctx.world_size == 1 {
        return Ok(mem.clone());
    }
    let place = |t: &Tensor| -> crate::Result<Tensor> {
        let b = t.dim(0)?;
        let padded = t.pad_with_zeros(0, ctx.rank * b, (ctx.world_size - 1 - ctx.rank) * b)?;
        Ok(collective.all_reduce_sum(&padded)?)
    };
    Ok(Memory { z: place(&mem.z)?, u: place(&mem.u)? })
}

/// The logging and evaluation windows a run stopped by a signal left open, kept in its
/// checkpoint (`window`) so that the resumed run's records are those of a run that never
/// stopped.
#[derive(serde::Serialize, serde::Deserialize)]
struct OpenWindow {
    /// Interval loss and steps, Jacobian-loss sum and steps, evaluation-window loss and
    /// steps, summed over the ranks.
    sums: [f64; 6],
    tokens: usize,
    seconds: f64,
    state_rel_residual: Option<f64>,
}

fn train_rank(cfg: &RunConfig, data: &Streams, opts: &TrainOptions, collective: &dyn Collective, mut on_step: impl FnMut(usize, f64)) -> crate::Result<TrainSummary> {
    let dev = &opts.device;
    let t = &cfg.train;
    let dist = collective.context().clone();
    let main = dist.is_main();
    let cols = Segments::rank_columns(t.batch_size, dist.rank, dist.world_size)
        .map_err(|_| crate::LmError::Data { path: "train.batch_size".into(), message: format!("{} columns cannot be split equally over {} ranks", t.batch_size, dist.world_size) })?;
    let local = cols.len();
    let objective = DeqObjective::new(&cfg.deq, t.seed)?;
    // Each rank draws its own dropout masks (rank 0 those of a single-process run).
    let rank_mix = (dist.rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut model = build_model(cfg, data.n_token, dev)?;
    let params: usize = model.named_vars().iter().map(|(_, v)| v.elem_count()).sum();
    let named = model.named_vars();
    let vars: Vec<_> = named.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Adam::new(named, t.lr, (0.9, 0.999), 1e-8, 0.0, false)?;
    let schedule = Schedule::Cosine { warmup_steps: t.warmup_step, total_steps: t.max_step, min_lr: 0.0 };
    let seg = Segments::new(&data.train, t.batch_size, t.tgt_len, cols.clone())?;
    // One writer per run folder (rank 0 writes for the job).
    let _lock = match (&opts.out_dir, main) {
        (Some(d), true) => Some(deq_train::run_lock::RunLock::acquire(d)?),
        _ => None,
    };
    let mut ck = match (&opts.out_dir, main) {
        (Some(d), true) => Some((Checkpointer::new(d.join("checkpoints"), t.keep_checkpoints)?, MetricsWriter::open(d.join("metrics.jsonl"))?)),
        _ => None,
    };
    let mut step = 0usize;
    let mut mem = model.empty_memory(local)?;
    let mut skipped0 = 0usize;
    // The logging window a run stopped by a signal left open (see the end of the loop).
    let mut window: Option<(OpenWindow, SolverMetrics)> = None;
    if opts.resume {
        let dir = opts.out_dir.as_ref().ok_or_else(|| candle_core::Error::Msg("--resume needs an output folder".into()))?;
        match Checkpointer::new(dir.join("checkpoints"), t.keep_checkpoints)?.load_latest(dev)? {
            Some(c) => {
                deq_train::load_vars(&model.named_vars(), &c, "model.")?;
                let optim: std::collections::HashMap<String, Tensor> = c.tensors.iter().filter_map(|(k, v)| k.strip_prefix("optim.").map(|s| (s.to_string(), v.clone()))).collect();
                opt.load_state(&optim)?;
                let get = |k: &str| c.tensors.get(k).cloned().ok_or_else(|| crate::LmError::data(&c.path, format!("no tensor `{k}`")));
                let (z, u) = (get("memory.z")?, get("memory.u")?);
                if z.dim(0)? != t.batch_size {
                    return Err(crate::LmError::data(&c.path, format!("a memory of {} columns for train.batch_size {}", z.dim(0)?, t.batch_size)));
                }
                mem = Memory { z: z.narrow(0, cols.start, local)?.contiguous()?, u: u.narrow(0, cols.start, local)?.contiguous()? };
                step = c.step;
                skipped0 = c.meta.get("skipped_batches").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
                if let Some(w) = c.meta.get("window") {
                    let w = <OpenWindow as serde::Deserialize>::deserialize(w).map_err(|e| crate::LmError::data(&c.path, format!("a malformed `window` (the logging window of a stopped run): {e}")))?;
                    window = Some((w, SolverMetrics::from_tensors(&c.tensors, "window.solver.")?));
                }
                tracing::info!(step, "resumed from {}", c.path.display());
            }
            None => tracing::warn!("--resume: no checkpoint in {}, starting fresh", dir.display()),
        }
    }
    deq_train::dist::broadcast_vars(collective, &vars)?;
    let last = if opts.max_steps > 0 { opts.max_steps.min(t.max_step) } else { t.max_step };
    tracing::info!(params, segments = seg.len(), tokens = data.train.len(), world = dist.world_size, "deq-lm {} on a stream of {} tokens", cfg.model.variant, data.train.len());
    let eval_mem = if t.eval_mem_len > 0 { t.eval_mem_len } else { cfg.model.mem_len };
    let mut marks: Vec<f64> = t.test_at_minutes.clone();
    marks.sort_by(f64::total_cmp);
    let (mut loss_sum, mut loss_n, mut interval_loss, mut interval_n) = (0f64, 0usize, 0f64, 0usize);
    let (mut jac_sum, mut jac_n) = (0f64, 0usize);
    let mut solver = SolverMetrics::default();
    let mut phantom_res: Option<f64> = None;
    let mut valid = None;
    let mut train_loss = f64::NAN;
    let mut train_secs = 0f64;
    let mut interval_secs = 0f64;
    let mut interval_tokens = 0usize;
    if let Some((w, m)) = window {
        let sums = w.sums;
        // The sums are over all ranks: rank 0 carries them on, the others start from zero.
        if main {
            (interval_loss, interval_n, jac_sum, jac_n, loss_sum, loss_n) = (sums[0], sums[1] as usize, sums[2], sums[3] as usize, sums[4], sums[5] as usize);
        }
        (interval_tokens, interval_secs, phantom_res, solver) = (w.tokens, w.seconds, w.state_rel_residual, m);
    }
    let mut bar = Progress::new("train", last.saturating_sub(step), opts.progress && main);
    let mut guard = deq_train::faults::FaultGuard::new(t.on_nonfinite, t.max_skipped, skipped0);
    while step < last {
        let t0 = Instant::now();
        let k = step % seg.len();
        if k == 0 {
            mem = model.empty_memory(local)?;
        }
        let (x, y) = seg.get(k, dev)?;
        opt.set_lr(schedule.lr_at(t.lr, step));
        // The step's stages up to the local gradient; a numerical fault in any of them is
        // agreed on by every rank, then stops the run or skips the segment (train.on_nonfinite;
        // a skipped segment leaves the memory as it was).
        let attempt = guard.run_step(collective, step, |stage| -> crate::Result<_> {
            stage.set("forward solve");
            let out = model.forward_seeded(&x, &mem, true, step_seed(t.seed, step) ^ rank_mix)?;
            stage.set("loss");
            let losses = out.hidden.iter().map(|h| model.loss(h, &y)).collect::<candle_core::Result<Vec<_>>>()?;
            let task = losses.last().expect("a state").to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let mut loss = objective.correction(&losses)?;
            let jac = objective.jacobian(step, &|z: &[Tensor]| Ok(vec![model.f_at(&out.context, &z[0])?]), std::slice::from_ref(&out.fixed_point))?;
            if let Some(j) = &jac {
                loss = (loss + &j.term)?;
            }
            deq_train::check_finite("training loss", loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, step)?;
            stage.set("backward (adjoint solve)");
            let grads = deq_core::grad::backward(&loss)?;
            stage.set("gradient");
            deq_train::check_finite("gradient norm", deq_train::grad_norm(&grads, &vars)?, step)?;
            Ok((out, task, jac.map(|j| j.value), grads))
        })?;
        if let Some((out, task, jac, mut grads)) = attempt {
            if let Some(j) = jac {
                (jac_sum, jac_n) = (jac_sum + j, jac_n + 1);
            }
            collective.all_reduce_mean(&mut grads, &vars)?;
            if t.clip > 0.0 {
                let norm = deq_train::clip_grad_norm(&mut grads, &vars, t.clip)?;
                deq_train::check_finite("gradient norm", norm, step)?;
            }
            opt.step(&grads)?;
            solver.add_forward(&out.stats);
            solver.add_backward(&out.backward_stats.get());
            if (step + 1) % t.log_interval == 0 {
                // The training state's relative residual |f(z) - z| / |f(z)| (per sample, mean),
                // from one more call of f without graph: the solver reports none when training
                // does not solve (deq-lm's f_max_iter = 0), as the zoo's extra call does.
                let z = out.fixed_point.clone();
                let fz = model.f_at(&out.context, &z)?.detach();
                phantom_res = Some(relative_residual(&fz, &z)?);
            }
            mem = out.memory;
            step += 1;
            (loss_sum, loss_n, interval_loss, interval_n) = (loss_sum + task, loss_n + 1, interval_loss + task, interval_n + 1);
            on_step(step, task);
            bar.inc(1, &format!("loss {task:.3} ppl {:.1} nfe {}", task.exp(), out.stats.nfe));
        } else {
            step += 1;
            bar.inc(1, &format!("skipped the segment of step {} ({} in all)", step - 1, guard.skipped()));
        }
        interval_tokens += y.elem_count() * dist.world_size;
        let dt = t0.elapsed().as_secs_f64();
        (train_secs, interval_secs) = (train_secs + dt, interval_secs + dt);
        // Decisions by time must agree over the ranks: they use the ranks' mean.
        let minutes = if dist.world_size > 1 && (t.max_minutes > 0.0 || !marks.is_empty()) {
            deq_train::dist::all_reduce_sum_f64(collective, &[train_secs])?[0] / dist.world_size as f64 / 60.0
        } else {
            train_secs / 60.0
        };
        let out_of_time = t.max_minutes > 0.0 && minutes >= t.max_minutes;
        if step % t.log_interval == 0 || step == last || out_of_time {
            let g = deq_train::dist::all_reduce_sum_f64(collective, &[interval_loss, interval_n as f64, jac_sum, jac_n as f64])?;
            let l = g[0] / g[1].max(1.0);
            let secs = interval_secs;
            let mut rec = serde_json::json!({"step": step, "lr": opt.lr(), "train_loss": l, "train_ppl": l.exp(), "tokens_per_s": interval_tokens as f64 / secs.max(1e-9), "train_minutes": minutes});
            if objective.regularises() {
                rec["train_jac_loss"] = serde_json::json!(if g[3] > 0.0 { g[2] / g[3] } else { f64::NAN });
                rec["train_jac_steps"] = serde_json::json!(g[3]);
            }
            solver.extend_record("train", &mut rec);
            if let Some(r) = phantom_res.take() {
                rec["train_state_rel_residual"] = serde_json::json!(r);
            }
            if let Some((_, m)) = ck.as_mut() {
                m.write(&rec)?;
            }
            tracing::debug!("step {step}: loss {l:.4}, ppl {:.2}, {:.0} tokens/s", l.exp(), interval_tokens as f64 / secs.max(1e-9));
            (interval_loss, interval_n, jac_sum, jac_n, interval_tokens) = (0.0, 0, 0.0, 0, 0);
            solver = SolverMetrics::default();
            interval_secs = 0.0;
        }
        let mark = marks.first().is_some_and(|&m| minutes >= m) || t.test_at_steps.contains(&step);
        if step % t.eval_interval.max(1) == 0 || step == last || mark || out_of_time {
            let g = deq_train::dist::all_reduce_sum_f64(collective, &[loss_sum, loss_n as f64])?;
            train_loss = g[0] / g[1].max(1.0);
            (loss_sum, loss_n) = (0.0, 0);
            let full_mem = gather_memory(collective, &mem)?;
            if main {
                model.set_mem_len(eval_mem);
                let v = evaluate(&model, &data.valid, t.eval_batch_size, t.tgt_len, 0, dev)?;
                let mut rec = serde_json::json!({"step": step, "train_minutes": minutes, "interval_train_loss": train_loss, "skipped_batches": guard.skipped()});
                rec.as_object_mut().expect("an object").extend(v.record("valid"));
                if mark || out_of_time || step == t.max_step {
                    let te = evaluate(&model, &data.test, t.eval_batch_size, t.tgt_len, 0, dev)?;
                    rec.as_object_mut().expect("an object").extend(te.record("test"));
                    tracing::info!("step {step} ({minutes:.1} min): valid ppl {:.2}, test ppl {:.2}, eval NFE {:.1}", v.ppl, te.ppl, v.nfe);
                } else {
                    tracing::info!("step {step} ({minutes:.1} min): train loss {train_loss:.3}, valid ppl {:.2}, eval NFE {:.1}", v.ppl, v.nfe);
                }
                model.set_mem_len(cfg.model.mem_len);
                valid = Some(v);
                if let Some((c, metrics)) = ck.as_mut() {
                    metrics.write(&rec)?;
                    let mut tensors: Vec<(String, Tensor)> = model.named_vars().into_iter().map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone())).collect();
                    tensors.extend(opt.state()?.into_iter().map(|(n, v)| (format!("optim.{n}"), v)));
                    tensors.push(("memory.z".into(), full_mem.z.clone()));
                    tensors.push(("memory.u".into(), full_mem.u.clone()));
                    c.save(step, &tensors, rec)?;
                }
            }
            while marks.first().is_some_and(|&m| minutes >= m) {
                marks.remove(0);
            }
            collective.barrier()?;
        }
        // SIGINT/SIGTERM on any rank: checkpoint this step (weights, Adam state, every rank's
        // memory), then stop (exit code 75); --resume continues from here.
        if let Some(sig) = deq_train::dist::agree_on_signal(collective)? {
            let full_mem = gather_memory(collective, &mem)?;
            // The open logging and evaluation windows, summed over the ranks, so that the
            // resumed run's records are those of a run that never stopped.
            let sums = deq_train::dist::all_reduce_sum_f64(collective, &[interval_loss, interval_n as f64, jac_sum, jac_n as f64, loss_sum, loss_n as f64])?;
            let sums: [f64; 6] = sums.try_into().map_err(|_| candle_core::Error::Msg("all-reduce of the open window changed its length".into()))?;
            let window = OpenWindow { sums, tokens: interval_tokens, seconds: interval_secs, state_rel_residual: phantom_res };
            let mut checkpoint = std::path::PathBuf::new();
            if let Some((c, _)) = ck.as_mut() {
                let mut tensors: Vec<(String, Tensor)> = model.named_vars().into_iter().map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone())).collect();
                tensors.extend(opt.state()?.into_iter().map(|(n, v)| (format!("optim.{n}"), v)));
                tensors.push(("memory.z".into(), full_mem.z.clone()));
                tensors.push(("memory.u".into(), full_mem.u.clone()));
                tensors.extend(solver.to_tensors("window.solver.")?);
                c.save(step, &tensors, serde_json::json!({"step": step, "stopped_by": deq_train::signals::name(sig), "skipped_batches": guard.skipped(), "window": serde_json::to_value(&window).map_err(|e| candle_core::Error::Msg(e.to_string()))?}))?;
                checkpoint = c.latest_path();
            }
            return Err(deq_train::TrainError::Interrupted { signal: deq_train::signals::name(sig), step, checkpoint }.into());
        }
        if out_of_time {
            tracing::info!("train.max_minutes = {} reached at step {step}", t.max_minutes);
            break;
        }
    }
    Ok(TrainSummary { steps: step, valid, train_loss, params, train_seconds: train_secs })
}
