//! The fitting loop shared by the DEQ-INR and the SIREN baseline: Adam on the MSE, full batch
//! with the amortised fixed-point cache (images, audio) or random minibatches of coordinates
//! solved from zeros (video), a training-time budget, periodic evaluation (PSNR), metrics as
//! JSON lines, and checkpoints (model, Adam state, cache, RNG) that resume bit-identically.

use crate::error::{InrError, Result};
use crate::net::{AmortisedCache, InrNet, PredictSolves, TrainForward};
use crate::task::Samples;
use candle_core::{Device, Tensor};
use deq_core::rng::DeqRng;
use deq_train::schedule::cosine_decay;
use deq_train::{Adam, Checkpointer, DeqObjective, MetricsWriter, Optimizer, Progress, Schedule};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// Optimisation settings (`[fit]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Adam learning rate (the peak rate of a schedule).
    pub lr: f64,
    /// `constant` (the zoo); `cosine`: linear warm-up over `warmup_steps`, then a cosine decay
    /// to `min_lr` at `steps`; `cosine_time`: the same decay over `max_seconds` of training time
    /// (for equal-time comparisons of models whose steps cost differently; the rate then
    /// depends on the machine's speed, as the number of steps in the budget already does).
    pub lr_schedule: String,
    /// Warm-up steps of the cosine schedule.
    pub warmup_steps: usize,
    /// Final rate of the cosine schedule.
    pub min_lr: f64,
    /// Stop when the training time (evaluation excluded) reaches this many seconds (0: none).
    pub max_seconds: f64,
    /// Evaluate (PSNR on train and test, metrics, checkpoint) every this many steps and at the end.
    pub eval_every: usize,
    /// Coordinates per step (0: all, with the amortised cache).
    pub batch_size: usize,
    /// Clip gradients by value (0: off; the zoo's video uses 0.1).
    pub clip_value: f64,
    /// Seed of initialisation and minibatches.
    pub seed: u64,
    /// Points per chunk at evaluation.
    pub eval_chunk: usize,
    /// What a batch with NaN or Inf (in the forward solve, the loss, the adjoint solve or the
    /// gradient) or a diverging adjoint solve does: `stop` the run with a message naming the
    /// step and stage, or `skip` the batch (the step passes without an optimiser update) and
    /// count it.
    pub on_nonfinite: deq_train::faults::OnNonFinite,
    /// With `on_nonfinite = "skip"`: the run stops once more batches than this were skipped.
    pub max_skipped: usize,
}

impl FitConfig {
    /// The learning rate of step `step` after `train_seconds` of training; errors name
    /// `fit.lr_schedule` when it is unknown, or `cosine_time` without a time budget.
    pub fn lr_at(&self, step: usize, train_seconds: f64) -> Result<f64> {
        let bad = |message: String| InrError::Config { key: "fit.lr_schedule".into(), message };
        match self.lr_schedule.as_str() {
            "constant" => Ok(self.lr),
            "cosine" => Ok(Schedule::Cosine { warmup_steps: self.warmup_steps, total_steps: self.steps, min_lr: self.min_lr }.lr_at(self.lr, step)),
            "cosine_time" if self.max_seconds <= 0.0 => Err(bad("`cosine_time` needs fit.max_seconds > 0".into())),
            "cosine_time" if step < self.warmup_steps => Ok(self.lr * (step + 1) as f64 / self.warmup_steps as f64),
            "cosine_time" => Ok(cosine_decay(self.lr, self.min_lr, train_seconds / self.max_seconds)),
            other => Err(bad(format!("unknown schedule `{other}` (constant, cosine, cosine_time)"))),
        }
    }
}

impl Default for FitConfig {
    fn default() -> Self {
        Self { steps: 5000, lr: 1e-3, lr_schedule: "constant".into(), warmup_steps: 0, min_lr: 0.0, max_seconds: 0.0, eval_every: 500, batch_size: 0, clip_value: 0.0, seed: 0, eval_chunk: 65_536, on_nonfinite: deq_train::faults::OnNonFinite::Stop, max_skipped: 10 }
    }
}

/// One evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Steps done.
    pub step: usize,
    /// Training seconds so far (evaluation excluded).
    pub train_seconds: f64,
    /// PSNR on the training samples (dB).
    pub train_psnr: f64,
    /// PSNR on the test samples (dB).
    pub test_psnr: f64,
    /// Mean solver steps of the evaluation (DEQ).
    pub eval_solver_steps: f64,
    /// Mean training loss since the previous evaluation.
    pub train_loss: f64,
}

/// Result of a fit.
#[derive(Debug, Clone, Serialize)]
pub struct FitResult {
    /// `deq` or `siren`.
    pub model: String,
    /// Trainable parameters.
    pub params: usize,
    /// Evaluations, in order; the last is the final model.
    pub curve: Vec<EvalPoint>,
    /// Evaluations of `f` per training step (DEQ; 0 for SIREN), averaged after the first step.
    pub f_evals_per_step: f64,
    /// Final test predictions (model space, `(N, C)` row-major).
    #[serde(skip)]
    pub test_pred: Vec<f32>,
}

impl FitResult {
    /// The final evaluation.
    pub fn last(&self) -> EvalPoint {
        *self.curve.last().expect("a fit evaluates at least once")
    }
}

/// Where a fit writes (none: nothing).
#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    /// Output folder: `metrics.jsonl`, `checkpoints/`.
    pub out_dir: Option<PathBuf>,
    /// Continue from the latest checkpoint in `out_dir`.
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
}

fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok((pred - target)?.sqr()?.mean_all()?)
}

/// The loss of a training forward `fw` against `targets` at step `step`: MSE on every state's
/// prediction weighted by fixed-point correction, plus the Jacobian regulariser on the steps
/// `objective` draws (`None`: SIREN, plain MSE). Also returns the fixed point's MSE (the
/// figure reported as the training loss).
pub fn training_loss(net: &InrNet, objective: Option<&DeqObjective>, fw: &TrainForward, targets: &Tensor, step: usize) -> Result<(Tensor, f64)> {
    // One MSE per state; the last state's prediction is `fw.pred`.
    let losses = fw.state_preds.iter().map(|p| mse(p, targets)).collect::<Result<Vec<_>>>()?;
    let task = losses.last().ok_or_else(|| candle_core::Error::Msg("a training forward has a prediction".into()))?;
    let task_v = task.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let Some(objective) = objective else { return Ok((task.clone(), task_v)) };
    let mut loss = objective.correction(&losses)?;
    if let Some(j) = net.jacobian(objective, step, fw)? {
        loss = (loss + j.term)?;
    }
    Ok((loss, task_v))
}

/// Evaluates `net` on `train` and `test`; returns the point and the test predictions.
pub fn evaluate(net: &InrNet, train: &Samples, test: &Samples, cfg: &FitConfig, dev: &Device) -> Result<(f64, f64, PredictSolves, Vec<f32>)> {
    let (tr, _) = net.predict(&train.coords_tensor(dev)?, cfg.eval_chunk)?;
    let (te, solves) = net.predict(&test.coords_tensor(dev)?, cfg.eval_chunk)?;
    Ok((train.psnr(&tr), test.psnr(&te), solves, te))
}

/// Fits `net` to `train`, evaluating on `test`.
pub fn fit(net: &InrNet, train: &Samples, test: &Samples, cfg: &FitConfig, opts: &FitOptions) -> Result<FitResult> {
    let collective = deq_train::collective_for(deq_train::DistContext::from_env()?, &net.device())?;
    fit_with(net, train, test, cfg, opts, &*collective)
}

/// [`fit`] as one rank of `collective`'s job (minibatch fits only): every rank draws the same
/// global minibatch of `world_size * fit.batch_size` points and trains on its slice of it,
/// gradients are averaged over the ranks, rank 0's initial parameters are broadcast, the time
/// budget is rank 0's, and only rank 0 writes metrics and checkpoints. A world-N fit with
/// `batch_size` B ends where a world-1 fit with `N * B` ends.
pub fn fit_with(net: &InrNet, train: &Samples, test: &Samples, cfg: &FitConfig, opts: &FitOptions, collective: &dyn deq_train::Collective) -> Result<FitResult> {
    let dev = net.device();
    let ctx = collective.context().clone();
    let (world, main) = (ctx.world_size, ctx.is_main());
    let dtype = net.named_vars().first().map(|(_, v)| v.dtype()).unwrap_or(candle_core::DType::F32);
    let x = train.coords_tensor(&dev)?.to_dtype(dtype)?;
    let y = train.targets_tensor(&dev)?.to_dtype(dtype)?;
    let n = train.len();
    let full = cfg.batch_size == 0 || cfg.batch_size >= n;
    if world > 1 && full {
        return Err(InrError::Config { key: "fit.batch_size".into(), message: format!("a full-batch fit runs in one process ({world} were started): set a minibatch size") });
    }
    let objective = net.objective(cfg.seed, full)?;
    cfg.lr_at(0, 0.0)?;
    let mut opt = Adam::new(net.named_vars(), cfg.lr, (0.9, 0.999), 1e-8, 0.0, false)?;
    let mut rng = DeqRng::new(cfg.seed ^ 0x5EED_F17);
    let mut cache = AmortisedCache::default();
    let (mut step0, mut train_seconds, mut skipped0) = (0usize, 0.0f64, 0usize);
    let mut curve: Vec<EvalPoint> = Vec::new();
    // One writer per run folder (rank 0 writes for the job).
    let _lock = match opts.out_dir.as_ref().filter(|_| main) {
        Some(d) => Some(deq_train::run_lock::RunLock::acquire(d)?),
        None => None,
    };
    let mut files = match opts.out_dir.as_ref().filter(|_| main) {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| InrError::io(d, e))?;
            Some((Checkpointer::new(d.join("checkpoints"), 2)?, MetricsWriter::open(d.join("metrics.jsonl"))?))
        }
        None => None,
    };
    if opts.resume {
        let dir = opts.out_dir.as_ref().ok_or_else(|| InrError::Config { key: "--resume".into(), message: "needs an output folder".into() })?;
        let ck = Checkpointer::new(dir.join("checkpoints"), 2)?;
        if let Some(c) = ck.load_latest(&dev)? {
            deq_train::load_vars(&net.named_vars(), &c, "model.")?;
            let optim: std::collections::HashMap<String, Tensor> = c.tensors.iter().filter_map(|(k, v)| k.strip_prefix("optim.").map(|s| (s.to_string(), v.clone()))).collect();
            opt.load_state(&optim)?;
            cache = AmortisedCache::restore(c.tensors.get("cache").cloned(), c.tensors.get("cache_adjoint").cloned());
            step0 = c.step;
            train_seconds = c.meta["train_seconds"].as_f64().unwrap_or(0.0);
            rng = DeqRng::from_state(c.meta["rng_state"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0));
            curve = serde_json::from_value(c.meta["curve"].clone()).unwrap_or_default();
            skipped0 = c.meta.get("skipped_batches").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
            tracing::info!(step = step0, "resumed from {}", c.path.display());
        }
    }
    let vars: Vec<_> = net.named_vars().into_iter().map(|(_, v)| v).collect();
    deq_train::dist::broadcast_vars(collective, &vars)?;
    let mut bar = Progress::new(format!("fit {}", net.kind()), cfg.steps.saturating_sub(step0), opts.progress && main);
    let (mut loss_sum, mut loss_n) = (0.0, 0usize);
    let (mut evals_after_first, mut steps_after_first) = (0usize, 0usize);
    let mut step = step0;
    let mut last_pred = Vec::new();
    let mut guard = deq_train::faults::FaultGuard::new(cfg.on_nonfinite, cfg.max_skipped, skipped0);
    while step < cfg.steps && !(cfg.max_seconds > 0.0 && train_seconds >= cfg.max_seconds) {
        let t0 = Instant::now();
        opt.set_lr(cfg.lr_at(step, train_seconds)?);
        let evals_before = net.f_evals();
        let (xb, yb) = if full {
            (x.clone(), y.clone())
        } else {
            // The global minibatch (the same draw on every rank), this rank's slice of it.
            let mut idx: Vec<u32> = (0..cfg.batch_size * world).map(|_| (rng.next_u64() % n as u64) as u32).collect();
            idx.sort_unstable();
            let mine = idx[ctx.rank * cfg.batch_size..(ctx.rank + 1) * cfg.batch_size].to_vec();
            let it = Tensor::from_vec(mine, cfg.batch_size, &dev)?;
            (x.index_select(&it, 0)?, y.index_select(&it, 0)?)
        };
        // The step's stages up to the local gradient; a numerical fault in any of them is
        // agreed on by every rank, then stops the run or skips the batch (fit.on_nonfinite).
        let attempt = guard.run_step(collective, step, |stage| -> Result<_> {
            stage.set("forward solve");
            let fw = net.train_forward(&xb, if full { Some(&mut cache) } else { None })?;
            stage.set("loss");
            let (loss, lv) = training_loss(net, objective.as_ref(), &fw, &yb, step)?;
            deq_train::check_finite("training loss", loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?, step)?;
            stage.set("backward (adjoint solve)");
            let grads = deq_core::grad::backward(&fw.backward_target(loss)?)?;
            stage.set("gradient");
            deq_train::check_finite("gradient norm", deq_train::grad_norm(&grads, &vars)?, step)?;
            Ok((lv, grads))
        })?;
        let lv = match attempt {
            Some((lv, mut grads)) => {
                net.finish_step(&grads, if full { Some(&mut cache) } else { None })?;
                collective.all_reduce_mean(&mut grads, &vars)?;
                if cfg.clip_value > 0.0 {
                    deq_train::clip_grad_value(&mut grads, &vars, cfg.clip_value)?;
                }
                opt.step(&grads)?;
                Some(lv)
            }
            None => None,
        };
        if step > step0 {
            evals_after_first += net.f_evals() - evals_before;
            steps_after_first += 1;
        }
        train_seconds += t0.elapsed().as_secs_f64();
        if world > 1 {
            // One clock for the budget: rank 0's (the ranks stop at the same step).
            train_seconds = collective.broadcast(&Tensor::new(&[train_seconds], &dev)?, 0)?.to_vec1::<f64>()?[0];
        }
        step += 1;
        match lv {
            Some(lv) => {
                loss_sum += lv;
                loss_n += 1;
                bar.inc(1, &format!("loss {lv:.3e} {:.0}s", train_seconds));
            }
            None => bar.inc(1, &format!("skipped the batch of step {} ({} in all)", step - 1, guard.skipped())),
        }
        let out_of_time = cfg.max_seconds > 0.0 && train_seconds >= cfg.max_seconds;
        // SIGINT/SIGTERM on any rank: evaluate and checkpoint this step, then stop (exit 75).
        let signal = deq_train::dist::agree_on_signal(collective)?;
        if step % cfg.eval_every.max(1) == 0 || step == cfg.steps || out_of_time || signal.is_some() {
            // The training loss over all ranks' slices.
            let g = deq_train::dist::all_reduce_sum_f64(collective, &[loss_sum, loss_n as f64])?;
            (loss_sum, loss_n) = (g[0] / world as f64, (g[1] / world as f64) as usize);
            let (train_psnr, test_psnr, solves, pred) = evaluate(net, train, test, cfg, &dev)?;
            let eval_steps = solves.mean_steps;
            let p = EvalPoint { step, train_seconds, train_psnr, test_psnr, eval_solver_steps: eval_steps, train_loss: loss_sum / loss_n.max(1) as f64 };
            (loss_sum, loss_n) = (0.0, 0);
            tracing::info!(step, train_seconds, train_psnr, test_psnr, eval_steps, "{}", net.kind());
            curve.push(p);
            last_pred = pred;
            if let Some((ck, metrics)) = files.as_mut() {
                let mut record = serde_json::to_value(p).unwrap_or_default();
                solves.solver.extend_record("test", &mut record);
                if !solves.probe_trace.is_empty() {
                    record["probe_rel_trace"] = serde_json::json!(solves.probe_trace);
                }
                metrics.write(&record)?;
                let mut tensors: Vec<(String, Tensor)> = net.named_vars().into_iter().map(|(k, v)| (format!("model.{k}"), v.as_tensor().clone())).collect();
                tensors.extend(opt.state()?.into_iter().map(|(k, v)| (format!("optim.{k}"), v)));
                if let Some(c) = &cache.z {
                    tensors.push(("cache".into(), c.clone()));
                }
                if let Some(a) = cache.carry.adjoint() {
                    tensors.push(("cache_adjoint".into(), a.clone()));
                }
                let meta = serde_json::json!({"train_seconds": train_seconds, "rng_state": rng.state().to_string(), "curve": curve, "model": net.kind(), "skipped_batches": guard.skipped()});
                ck.save(step, &tensors, meta)?;
            }
        }
        if let Some(sig) = signal {
            let checkpoint = files.as_ref().map(|(ck, _)| ck.latest_path()).unwrap_or_default();
            return Err(deq_train::TrainError::Interrupted { signal: deq_train::signals::name(sig), step, checkpoint }.into());
        }
    }
    if curve.last().map_or(true, |p| p.step != step) {
        let (train_psnr, test_psnr, solves, pred) = evaluate(net, train, test, cfg, &dev)?;
        curve.push(EvalPoint { step, train_seconds, train_psnr, test_psnr, eval_solver_steps: solves.mean_steps, train_loss: loss_sum / loss_n.max(1) as f64 });
        last_pred = pred;
    }
    Ok(FitResult {
        model: net.kind().into(),
        params: net.num_params(),
        curve,
        f_evals_per_step: evals_after_first as f64 / steps_after_first.max(1) as f64,
        test_pred: last_pred,
    })
}
