//! Training, evaluation and prediction loops, built from deq-train's pieces.

use crate::config::{DataConfig, RunConfig};
use crate::model::Mdeq;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use deq_core::rng::DeqRng;
use deq_train::data::augment::{flip_horizontal, normalize, random_crop_with_padding, random_resized_crop, to_f32};
use deq_train::data::{find_dataset_dir, load_cifar10, load_image, load_image_folder, load_mnist, AugmentFn, ImageDataset, Loader, LoaderConfig, Shard};
use deq_train::{check_finite, clip_grad_norm, Adam, Checkpointer, Collective, DeqObjective, DistContext, JacTerm, MetricsWriter, Optimizer, Progress, Schedule, Sgd, SolverMetrics};
use crate::model::MdeqOutput;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where the dataset of `cfg` lives.
pub fn data_dir(cfg: &DataConfig) -> Result<PathBuf> {
    if !cfg.dir.is_empty() {
        return Ok(PathBuf::from(&cfg.dir));
    }
    find_dataset_dir(&cfg.dataset).with_context(|| {
        format!("dataset `{}` not found: set data.dir (`--set data.dir=DIR`) or DEQ_DATA_DIR to a folder containing `{}`", cfg.dataset, cfg.dataset)
    })
}

/// Loads the training (`train = true`) or test split, truncated to `limit` images if non-zero.
pub fn load_split(cfg: &RunConfig, train: bool) -> Result<ImageDataset> {
    let dir = data_dir(&cfg.data)?;
    let mut ds = match cfg.data.dataset.as_str() {
        "mnist" => load_mnist(&dir, train)?,
        "cifar10" => load_cifar10(&dir, train)?,
        "imagenet" => {
            let s = cfg.data.image_size as u32;
            let side = if train { s } else { s * 8 / 7 };
            load_image_folder(dir.join(if train { "train" } else { "val" }), Some((side, side)))?
        }
        other => bail!("unknown dataset `{other}`"),
    };
    let limit = if train { cfg.train.train_limit } else { cfg.train.test_limit };
    if limit > 0 && limit < ds.len() {
        ds.truncate(limit);
    }
    if ds.channels != cfg.model.in_channels {
        bail!("{}: images have {} channels, model.in_channels is {}", dir.display(), ds.channels, cfg.model.in_channels);
    }
    if ds.classes > cfg.model.num_classes {
        bail!("{}: {} classes, model.num_classes is {}", dir.display(), ds.classes, cfg.model.num_classes);
    }
    Ok(ds)
}

/// The loader of a split with the configured augmentation (training) or the plain
/// normalisation (evaluation).
pub fn make_loader(cfg: &RunConfig, ds: Arc<ImageDataset>, train: bool, shard: Shard) -> Result<Loader> {
    let d = cfg.data.clone();
    let lc = LoaderConfig {
        batch_size: if train { cfg.train.batch_size } else { cfg.train.eval_batch_size },
        shuffle: train,
        seed: cfg.train.seed,
        drop_last: false,
        shard,
        mean: d.mean.clone(),
        std: d.std.clone(),
        prefetch: 4,
    };
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let loader = Loader::new(ds, lc)?;
    let resized = d.dataset == "imagenet";
    if train && (d.crop_padding > 0 || d.flip || (d.random_resized_crop && resized)) {
        let (oh, ow) = if d.random_resized_crop { (d.image_size, d.image_size) } else { (h, w) };
        let f: AugmentFn = Arc::new(move |img: &[u8], c: usize, h: usize, w: usize, rng: &mut DeqRng| {
            let mut x = to_f32(img);
            if d.random_resized_crop {
                x = random_resized_crop(&x, c, h, w, d.image_size, d.image_size, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0), rng);
            } else if d.crop_padding > 0 {
                x = random_crop_with_padding(&x, c, h, w, d.crop_padding, rng);
            }
            let (hh, ww) = if d.random_resized_crop { (d.image_size, d.image_size) } else { (h, w) };
            if d.flip && rng.uniform() < 0.5 {
                flip_horizontal(&mut x, c, hh, ww);
            }
            normalize(&mut x, c, hh, ww, &d.mean, &d.std);
            x
        });
        return Ok(loader.with_augment(f, (c, oh, ow)));
    }
    if !train && resized {
        let s = d.image_size;
        let f: AugmentFn = Arc::new(move |img: &[u8], c: usize, h: usize, w: usize, _rng: &mut DeqRng| {
            let mut x = deq_train::data::augment::center_crop(&to_f32(img), c, h, w, s, s);
            normalize(&mut x, c, s, s, &d.mean, &d.std);
            x
        });
        return Ok(loader.with_augment(f, (c, s, s)));
    }
    Ok(loader)
}

fn build_optimizer(cfg: &RunConfig, model: &Mdeq) -> Result<Box<dyn Optimizer>> {
    let t = &cfg.train;
    let params = model.named_vars();
    Ok(match t.optimizer.as_str() {
        "sgd" => Box::new(Sgd::new(params, t.lr, t.momentum, t.nesterov, t.weight_decay)?),
        "adam" => Box::new(Adam::new(params, t.lr, (0.9, 0.999), 1e-8, t.weight_decay, false)?),
        "adamw" => Box::new(Adam::new(params, t.lr, (0.9, 0.999), 1e-8, t.weight_decay, true)?),
        other => bail!("train.optimizer: unknown `{other}`"),
    })
}

fn build_schedule(cfg: &RunConfig, steps_per_epoch: usize) -> Schedule {
    let t = &cfg.train;
    let total = t.epochs * steps_per_epoch;
    match t.schedule.as_str() {
        "cosine" => Schedule::Cosine { warmup_steps: (t.warmup_epochs * steps_per_epoch as f64).round() as usize, total_steps: total, min_lr: t.min_lr },
        "step" => Schedule::Step { step_size: t.step_epochs * steps_per_epoch, gamma: t.gamma },
        "onecycle" => Schedule::OneCycle { total_steps: total, pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 },
        _ => Schedule::Constant,
    }
}

/// Evaluation figures over a split.
#[derive(Debug, Clone, Default)]
pub struct EvalSummary {
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Mean forward NFE per batch.
    pub mean_nfe: f64,
    /// Mean over samples of the final relative residual.
    pub mean_rel_residual: f64,
    /// Images evaluated.
    pub n: usize,
    /// Solver statistics of every batch (mean/max NFE, residuals, spectral radius).
    pub solver: SolverMetrics,
    /// Residual trace of the first batch (the split is not shuffled: a fixed probe batch).
    pub probe_trace: Vec<f64>,
}

/// Evaluates `model` (evaluation mode: solver only, running batch-norm statistics).
pub fn evaluate(model: &Mdeq, loader: &Loader, progress: bool) -> Result<EvalSummary> {
    let mut s = EvalSummary::default();
    let (mut correct, mut loss_sum, mut nfe_sum, mut res_sum, mut batches) = (0usize, 0f64, 0f64, 0f64, 0usize);
    let mut bar = Progress::new("eval", loader.num_batches(), progress);
    for batch in loader.epoch(0) {
        let batch = batch?;
        let out = model.forward(&batch.images, false)?;
        let labels = batch.labels.to_device(out.logits.device())?;
        let n = labels.dim(0)?;
        correct += deq_train::topk_correct(&out.logits, &batch.labels, 1)?;
        loss_sum += candle_nn::loss::cross_entropy(&out.logits, &labels)?.to_dtype(DType::F64)?.to_scalar::<f64>()? * n as f64;
        nfe_sum += out.stats.nfe as f64;
        res_sum += out.stats.rel_lowest.iter().sum::<f64>();
        if batches == 0 {
            s.probe_trace = deq_train::probe_trace(&out.stats);
        }
        s.solver.add_forward(&out.stats);
        s.n += n;
        batches += 1;
        bar.inc(1, "");
    }
    s.accuracy = correct as f64 / s.n.max(1) as f64;
    s.loss = loss_sum / s.n.max(1) as f64;
    s.mean_nfe = nfe_sum / batches.max(1) as f64;
    s.mean_rel_residual = res_sum / s.n.max(1) as f64;
    Ok(s)
}

/// What `train` reports at the end.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Final test evaluation.
    pub test: EvalSummary,
    /// Wall time of the run (this process), seconds.
    pub seconds: f64,
    /// Trainable parameters.
    pub params: usize,
    /// Epochs completed.
    pub epochs: usize,
}

pub use deq_train::RunOptions;

/// Running sums of an epoch kept in a mid-epoch checkpoint (`partial.sums`): loss, correct,
/// seen, NFE, residual, batches, Jacobian term, Jacobian steps.
const PARTIAL_SUMS: usize = 8;

fn state_tensors(model: &Mdeq, opt: &dyn Optimizer) -> Result<Vec<(String, Tensor)>> {
    let mut t: Vec<(String, Tensor)> = model.named_vars().into_iter().map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone())).collect();
    for (name, bn) in model.batch_norms() {
        let mut b = Vec::new();
        bn.buffers(&name, &mut b);
        t.extend(b.into_iter().map(|(n, x)| (format!("buffer.{n}"), x)));
    }
    t.extend(opt.state()?.into_iter().map(|(n, x)| (format!("optim.{n}"), x)));
    Ok(t)
}

/// Loads model weights and batch-norm statistics from a checkpoint.
pub fn restore_model(model: &Mdeq, ckpt: &deq_train::Checkpoint) -> Result<()> {
    deq_train::load_vars(&model.named_vars(), ckpt, "model.")?;
    for (name, bn) in model.batch_norms() {
        let get = |k: &str| -> Result<Tensor> {
            let key = format!("buffer.{name}.{k}");
            ckpt.tensors.get(&key).cloned().with_context(|| format!("{}: no tensor `{key}`", ckpt.path.display()))
        };
        bn.load_buffers(get("running_mean")?, get("running_var")?)?;
    }
    Ok(())
}

/// The loss of one training step and what it is made of.
#[derive(Debug)]
pub struct StepLoss {
    /// What backward runs on: the fixed-point-corrected cross-entropy plus the Jacobian term.
    pub loss: Tensor,
    /// Cross-entropy of the fixed point's logits (the figure reported as `train_loss`).
    pub task: f64,
    /// The Jacobian regulariser of this step, when it was applied.
    pub jac: Option<JacTerm>,
    /// The forward pass.
    pub out: MdeqOutput,
}

/// The training loss of `images` against `labels` at optimiser step `step`: cross-entropy on
/// every state the DEQ returned, weighted by fixed-point correction, plus the Jacobian
/// regulariser at the fixed point on the steps `objective` draws.
pub fn training_loss(model: &Mdeq, objective: &DeqObjective, images: &Tensor, labels: &Tensor, step: usize) -> Result<StepLoss> {
    let out = model.forward(images, true)?;
    let labels = &labels.to_device(out.logits.device())?;
    let losses = out.state_logits.iter().map(|l| candle_nn::loss::cross_entropy(l, labels)).collect::<candle_core::Result<Vec<_>>>()?;
    let task = losses.last().map(|l| l.to_dtype(DType::F64)?.to_scalar::<f64>()).transpose()?.unwrap_or(f64::NAN);
    let mut loss = objective.correction(&losses)?;
    let jac = objective.jacobian(step, &|z: &[Tensor]| model.f(z, &out.injection), &out.fixed_point)?;
    if let Some(j) = &jac {
        loss = (loss + &j.term)?;
    }
    Ok(StepLoss { loss, task, jac, out })
}

/// Trains `cfg` and returns the final test figures, in the data-parallel job the environment
/// describes (a single process when it describes none).
pub fn train(cfg: &RunConfig, opts: &RunOptions) -> Result<TrainSummary> {
    train_with(cfg, opts, deq_train::collective_for(DistContext::from_env()?, &opts.device)?)
}

/// [`train`] as one rank of `collective`'s job: each rank trains on its shard of every global
/// batch (`train.batch_size` per rank), gradients are averaged over the ranks, batch norms use
/// the statistics of the global batch, rank 0's initial parameters and buffers are broadcast,
/// and only rank 0 evaluates and writes metrics and checkpoints (its summary is the run's).
pub fn train_with(cfg: &RunConfig, opts: &RunOptions, collective: Arc<dyn Collective>) -> Result<TrainSummary> {
    deq_train::dist::with_group(collective.clone(), || train_rank(cfg, opts, &*collective))
}

fn train_rank(cfg: &RunConfig, opts: &RunOptions, collective: &dyn Collective) -> Result<TrainSummary> {
    let start = Instant::now();
    let dist = collective.context().clone();
    let objective = DeqObjective::new(&cfg.deq, cfg.train.seed)?;
    let dev = opts.device.clone();
    let main = dist.is_main();
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    // One writer per run folder (rank 0 writes for the job).
    let _lock = if main { Some(deq_train::run_lock::RunLock::acquire(&opts.out_dir)?) } else { None };
    if main {
        deq_train::cli::save_config(&opts.out_dir, cfg)?;
    }
    let train_ds = Arc::new(load_split(cfg, true)?);
    let test_ds = Arc::new(load_split(cfg, false)?);
    let shard = Shard::new(dist.rank, dist.world_size)?;
    let train_loader = make_loader(cfg, train_ds.clone(), true, shard)?;
    let test_loader = make_loader(cfg, test_ds.clone(), false, Shard::default())?;
    let mut rng = DeqRng::new(cfg.train.seed);
    let model = Mdeq::new(cfg.model.clone(), cfg.deq.clone(), &mut rng, cfg.train.dtype(), &dev)?;
    let params = model.num_params();
    let mut opt = build_optimizer(cfg, &model)?;
    let steps_per_epoch = train_loader.num_batches();
    let schedule = build_schedule(cfg, steps_per_epoch);
    let ckpt = Checkpointer::new(opts.out_dir.join("checkpoints"), cfg.train.keep_checkpoints)?;
    let mut metrics = if main { Some(MetricsWriter::open(opts.out_dir.join("metrics.jsonl"))?) } else { None };
    let (mut epoch0, mut step) = (0usize, 0usize);
    // Where a mid-epoch checkpoint stopped: batches done in that epoch and the epoch's running
    // sums (so its record matches an uninterrupted run's).
    let mut resume_within: Option<(usize, Vec<f64>, SolverMetrics)> = None;
    let mut skipped0 = 0usize;
    if opts.resume {
        match ckpt.load_latest(&dev)? {
            Some(c) => {
                restore_model(&model, &c)?;
                let optim: std::collections::HashMap<String, Tensor> =
                    c.tensors.iter().filter_map(|(k, v)| k.strip_prefix("optim.").map(|s| (s.to_string(), v.clone()))).collect();
                opt.load_state(&optim)?;
                epoch0 = c.meta.get("epoch").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
                step = c.step;
                skipped0 = c.meta.get("skipped_batches").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
                if let Some(done) = c.meta.get("batches_done").and_then(|v| v.as_u64()) {
                    let sums = c.tensors.get("partial.sums").with_context(|| format!("{}: no tensor `partial.sums`", c.path.display()))?.to_vec1::<f64>()?;
                    anyhow::ensure!(sums.len() == PARTIAL_SUMS, "{}: `partial.sums` holds {} values, expected {PARTIAL_SUMS}", c.path.display(), sums.len());
                    resume_within = Some((done as usize, sums, SolverMetrics::from_tensors(&c.tensors, "partial.solver.")?));
                }
                tracing::info!(epoch = epoch0, step, "resumed from {}", c.path.display());
            }
            None => tracing::warn!("--resume: no checkpoint in {}, starting fresh", ckpt.dir().display()),
        }
    }
    tracing::info!(params, train = train_ds.len(), test = test_ds.len(), steps_per_epoch, world = dist.world_size, "MDEQ on {}", cfg.data.dataset);
    let vars: Vec<_> = model.named_vars().into_iter().map(|(_, v)| v).collect();
    // Every rank starts from rank 0's parameters and batch-norm buffers.
    deq_train::dist::broadcast_vars(collective, &vars)?;
    if dist.world_size > 1 {
        for (_, bn) in model.batch_norms() {
            let mut b = Vec::new();
            bn.buffers("", &mut b);
            bn.load_buffers(collective.broadcast(&b[0].1, 0)?, collective.broadcast(&b[1].1, 0)?)?;
        }
    }
    let mut last_test = EvalSummary::default();
    let mut guard = deq_train::faults::FaultGuard::new(cfg.train.on_nonfinite, cfg.train.max_skipped, skipped0);
    for epoch in epoch0..cfg.train.epochs {
        let t0 = Instant::now();
        let mut bar = Progress::new(format!("epoch {}/{}", epoch + 1, cfg.train.epochs), steps_per_epoch, main);
        let (mut loss_sum, mut correct, mut seen, mut nfe_sum, mut res_sum, mut batches) = (0f64, 0usize, 0usize, 0f64, 0f64, 0usize);
        let (mut jac_sum, mut jac_steps) = (0f64, 0usize);
        let mut train_solver = SolverMetrics::default();
        let mut skip = 0;
        if let Some((done, sums, solver)) = resume_within.take() {
            // Rank 0 saved the sums over every rank; the epoch-end all-reduce adds them once.
            let mine = |v: f64| if main { v } else { 0.0 };
            (loss_sum, correct, seen, nfe_sum, res_sum, batches) = (mine(sums[0]), mine(sums[1]) as usize, mine(sums[2]) as usize, mine(sums[3]), mine(sums[4]), mine(sums[5]) as usize);
            (jac_sum, jac_steps) = (mine(sums[6]), mine(sums[7]) as usize);
            train_solver = solver;
            skip = done;
            bar.inc(done, "resumed");
        }
        let mut done_in_epoch = skip;
        for batch in train_loader.epoch_from(epoch, skip) {
            let batch = batch?;
            let lr = schedule.lr_at(cfg.train.lr, step);
            opt.set_lr(lr);
            // The step's stages up to the local gradient; a numerical fault in any of them is
            // agreed on by every rank, then stops the run or skips the batch (train.on_nonfinite).
            let attempt = guard.run_step(collective, step, |stage| -> Result<(StepLoss, candle_core::backprop::GradStore)> {
                deq_train::faults::check_tensor_finite("the input batch", &batch.images, step)?;
                stage.set("forward solve");
                let sl = training_loss(&model, &objective, &batch.images, &batch.labels, step)?;
                stage.set("loss");
                check_finite("training loss", sl.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, step)?;
                stage.set("backward (adjoint solve)");
                let grads = deq_core::grad::backward(&sl.loss)?;
                stage.set("gradient");
                check_finite("gradient norm", deq_train::clip::grad_norm(&grads, &vars)?, step)?;
                Ok((sl, grads))
            })?;
            let Some((StepLoss { loss: _, task: loss_v, jac, out }, mut grads)) = attempt else {
                done_in_epoch += 1;
                bar.inc(1, &format!("skipped a batch at step {step} ({} in all)", guard.skipped()));
                continue;
            };
            if let Some(j) = jac {
                (jac_sum, jac_steps) = (jac_sum + j.value, jac_steps + 1);
            }
            collective.all_reduce_mean(&mut grads, &vars)?;
            if cfg.train.grad_clip > 0.0 {
                let norm = clip_grad_norm(&mut grads, &vars, cfg.train.grad_clip)?;
                check_finite("gradient norm", norm, step)?;
            }
            opt.step(&grads)?;
            train_solver.add_forward(&out.stats);
            train_solver.add_backward(&out.backward_stats.get());
            step += 1;
            let n = batch.labels.dim(0)?;
            loss_sum += loss_v * n as f64;
            correct += deq_train::topk_correct(&out.logits, &batch.labels, 1)?;
            seen += n;
            nfe_sum += out.stats.nfe as f64;
            res_sum += out.stats.rel_lowest.iter().sum::<f64>() / n as f64;
            batches += 1;
            done_in_epoch += 1;
            bar.inc(1, &format!("loss {:.4} acc {:.4} nfe {} lr {lr:.4}", loss_sum / seen as f64, correct as f64 / seen as f64, out.stats.nfe));
            if opts.max_steps > 0 && step >= opts.max_steps {
                break;
            }
            // A stop request (SIGINT/SIGTERM on any rank) or a periodic checkpoint within the
            // epoch; the epoch's last batch is checkpointed below with its evaluation.
            let signal = deq_train::dist::agree_on_signal(collective)?;
            let periodic = cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0;
            if done_in_epoch < steps_per_epoch && (periodic || signal.is_some()) {
                let g = deq_train::dist::all_reduce_sum_f64(collective, &[loss_sum, correct as f64, seen as f64, nfe_sum, res_sum, batches as f64, jac_sum, jac_steps as f64])?;
                let path = if main {
                    let mut tensors = state_tensors(&model, opt.as_ref())?;
                    tensors.push(("partial.sums".into(), Tensor::new(g.as_slice(), &Device::Cpu)?));
                    tensors.extend(train_solver.to_tensors("partial.solver.")?);
                    let meta = serde_json::json!({"epoch": epoch, "batches_done": done_in_epoch, "skipped_batches": guard.skipped(), "config": cfg.to_toml()});
                    Some(ckpt.save(step, &tensors, meta)?)
                } else {
                    None
                };
                if let Some(sig) = signal {
                    return Err(deq_train::TrainError::Interrupted {
                        signal: deq_train::signals::name(sig),
                        step,
                        checkpoint: path.unwrap_or_else(|| ckpt.latest_path()),
                    }
                    .into());
                }
            }
        }
        let train_secs = t0.elapsed().as_secs_f64();
        // The epoch's figures over all ranks.
        let g = deq_train::dist::all_reduce_sum_f64(collective, &[loss_sum, correct as f64, seen as f64, nfe_sum, res_sum, batches as f64, jac_sum, jac_steps as f64])?;
        (loss_sum, correct, seen, nfe_sum, res_sum, batches, jac_sum, jac_steps) = (g[0], g[1] as usize, g[2] as usize, g[3], g[4], g[5] as usize, g[6], g[7] as usize);
        if main {
            last_test = evaluate(&model, &test_loader, main)?;
        }
        let mut record = serde_json::json!({
            "epoch": epoch + 1, "step": step, "lr": opt.lr(),
            "train_loss": loss_sum / seen.max(1) as f64, "train_acc": correct as f64 / seen.max(1) as f64,
            "train_mean_nfe": nfe_sum / batches.max(1) as f64, "train_mean_rel_residual": res_sum / batches.max(1) as f64,
            "test_acc": last_test.accuracy, "test_loss": last_test.loss, "test_mean_nfe": last_test.mean_nfe,
            "test_mean_rel_residual": last_test.mean_rel_residual, "epoch_train_seconds": train_secs,
            "elapsed_seconds": start.elapsed().as_secs_f64(), "probe_rel_trace": last_test.probe_trace,
            "skipped_batches": guard.skipped(),
        });
        if objective.regularises() {
            record["train_jac_loss"] = serde_json::json!(if jac_steps > 0 { jac_sum / jac_steps as f64 } else { f64::NAN });
            record["train_jac_steps"] = serde_json::json!(jac_steps);
        }
        train_solver.extend_record("train", &mut record);
        last_test.solver.extend_record("test", &mut record);
        if let Some(m) = metrics.as_mut() {
            m.write(&record)?;
            tracing::info!(
                "epoch {:>3}: train loss {:.4} acc {:.4} | test acc {:.4} loss {:.4} | fwd NFE {:.1} (test {:.1}) | rel residual {:.2e} (test {:.2e}) | {:.0}s",
                epoch + 1,
                record["train_loss"].as_f64().unwrap_or(0.0),
                record["train_acc"].as_f64().unwrap_or(0.0),
                last_test.accuracy,
                last_test.loss,
                nfe_sum / batches.max(1) as f64,
                last_test.mean_nfe,
                res_sum / batches.max(1) as f64,
                last_test.mean_rel_residual,
                train_secs
            );
            // The only random state of a run is its seed: initialisation draws from it once, and
            // the loader derives each epoch's permutation and each sample's augmentation
            // generator from (seed, epoch, index), so a resumed run replays the same stream.
            let rng = serde_json::json!({"seed": cfg.train.seed, "scheme": "SplitMix64; loader streams derived from (seed, epoch, sample index)", "next_epoch": epoch + 1});
            let meta = serde_json::json!({"epoch": epoch + 1, "skipped_batches": guard.skipped(), "config": cfg.to_toml(), "rng": rng, "metrics": record});
            ckpt.save(step, &state_tensors(&model, opt.as_ref())?, meta)?;
        }
        if opts.max_steps > 0 && step >= opts.max_steps {
            break;
        }
        if let Some(sig) = deq_train::dist::agree_on_signal(collective)? {
            return Err(deq_train::TrainError::Interrupted { signal: deq_train::signals::name(sig), step, checkpoint: ckpt.latest_path() }.into());
        }
    }
    Ok(TrainSummary { test: last_test, seconds: start.elapsed().as_secs_f64(), params, epochs: cfg.train.epochs })
}

/// Loads a model onto `dev` from the latest checkpoint of `run_dir` (or a `latest.json` path).
pub fn load_trained(cfg: &RunConfig, ckpt_path: &Path, dev: &Device) -> Result<Mdeq> {
    let dev = dev.clone();
    let json = if ckpt_path.is_dir() { ckpt_path.join("checkpoints").join("latest.json") } else { ckpt_path.to_path_buf() };
    let ckpt = Checkpointer::load(&json, &dev)?;
    let model = Mdeq::new(cfg.model.clone(), cfg.deq.clone(), &mut DeqRng::new(0), cfg.train.dtype(), &dev)?;
    restore_model(&model, &ckpt)?;
    Ok(model)
}

/// Class probabilities for image files (resized to the training resolution; RGB files are
/// converted to grey for single-channel models).
pub fn predict(cfg: &RunConfig, model: &Mdeq, files: &[PathBuf], size: (usize, usize)) -> Result<Vec<Vec<f32>>> {
    let (h, w) = size;
    let mut data = Vec::with_capacity(files.len() * cfg.model.in_channels * h * w);
    for f in files {
        let (rgb, _, _) = load_image(f, Some((h as u32, w as u32)))?;
        let mut x = to_f32(&rgb);
        if cfg.model.in_channels == 1 {
            let plane = h * w;
            x = (0..plane).map(|i| 0.299 * x[i] + 0.587 * x[plane + i] + 0.114 * x[2 * plane + i]).collect();
        }
        normalize(&mut x, cfg.model.in_channels, h, w, &cfg.data.mean, &cfg.data.std);
        data.extend(x);
    }
    let x = Tensor::from_vec(data, (files.len(), cfg.model.in_channels, h, w), &Device::Cpu)?;
    let out = model.forward(&x, false)?;
    Ok(deq_train::metrics::softmax_probs(&out.logits)?)
}
