//! The training loop: batches of augmented pairs (generated or read from a dataset), the
//! fixed-point correction loss over the supervised states, AdamW with RAFT's one-cycle schedule
//! and gradient clipping, data-parallel ranks through deq-train's collectives, metrics every
//! `log_every` steps, evaluation every `eval_every`, atomic checkpoints every
//! `checkpoint_every` and at the end (or at the time limit).
//!
//! Resuming is bit-identical: a step's batch is a pure function of `(seed, step)` (the epoch's
//! permutation and each sample's generator come from [`deq_train::data::sample_rng`]), and a
//! checkpoint holds the parameters, the batch-norm statistics and the optimiser state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use deq_core::norm::NormOptions;
use deq_core::rng::DeqRng;
use deq_core::Deq;
use deq_train::data::{epoch_permutation, find_dataset_dir, sample_rng, Shard};
use deq_train::{check_finite, clip_grad_norm, Adam, Checkpointer, Collective, DistContext, MetricsWriter, Optimizer, Progress, Schedule};
use rayon::prelude::*;
use serde_json::json;

use crate::config::{RunConfig, TrainData};
use crate::data::augment::{augment_dense, augment_sparse, Rgb, Sample};
use crate::data::datasets::{self, load_pair, PairSpec, Split};
use crate::data::synth::{Generator, Texture};
use crate::error::{FlowError, Result};
use crate::eval::{self, DatasetReport};
use crate::io::frames::Frame;
use crate::loss::{loss_mask, sequence_loss, FlowErrors};
use crate::model::{deq_layer, DeqFlow};

pub use deq_train::RunOptions;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps taken in total.
    pub steps: usize,
    /// Wall-clock seconds of this process.
    pub seconds: f64,
    /// Trainable parameters.
    pub params: usize,
    /// The last evaluation.
    pub eval: Vec<DatasetReport>,
}

/// The source of training samples.
pub enum Source {
    /// Generated pairs: `n` per epoch.
    Synthetic {
        /// The generator.
        generator: Generator,
        /// Pairs per epoch.
        n: usize,
    },
    /// Pairs of a dataset.
    Pairs(Vec<PairSpec>),
}

fn to_rgb(f: &Frame) -> Rgb {
    Rgb { height: f.height, width: f.width, data: f.to_f32() }
}

/// Reads every PNG/JPEG under `dirs` (one level of sub-folders) as generator textures.
pub fn load_textures(dirs: &[PathBuf]) -> Result<Vec<Texture>> {
    let mut files = Vec::new();
    for d in dirs {
        let d = if d.is_dir() { d.clone() } else { find_dataset_dir(&d.to_string_lossy()).ok_or_else(|| FlowError::config("data.images", format!("{}: no such folder", d.display())))? };
        let mut stack = vec![(d, 0)];
        while let Some((dir, depth)) = stack.pop() {
            for p in deq_train::data::list_dir(&dir)? {
                if p.is_dir() && depth < 1 {
                    stack.push((p, depth + 1));
                } else if deq_train::data::is_image(&p) {
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(FlowError::config("data.images", "no PNG or JPEG files in the configured folders"));
    }
    files.par_iter().map(|p| Frame::read(p).map(|f| Texture { height: f.height, width: f.width, rgb: f.to_f32() })).collect()
}

fn root_of(cfg: &RunConfig, default: &str) -> Result<PathBuf> {
    match &cfg.data.root {
        Some(r) => Ok(r.clone()),
        None => find_dataset_dir(default).ok_or_else(|| FlowError::config("data.root", format!("no {default} folder under $DEQ_DATA_DIR or datasets/; set data.root (see datasets/README.md)"))),
    }
}

impl Source {
    /// The configured source.
    pub fn new(cfg: &RunConfig) -> Result<Self> {
        let d = &cfg.data;
        Ok(match d.train {
            TrainData::Synthetic => Source::Synthetic { generator: Generator::new(load_textures(&d.images)?, d.synthetic.clone()).map_err(|e| FlowError::config("data.synthetic", e))?, n: d.pairs_per_epoch },
            TrainData::Chairs => Source::Pairs(datasets::flying_chairs(&root_of(cfg, "FlyingChairs_release")?, Split::Training)?),
            TrainData::Things => {
                let root = root_of(cfg, "FlyingThings3D")?;
                let mut v = datasets::flying_things(&root, "clean", Split::Training)?;
                v.extend(datasets::flying_things(&root, "final", Split::Training)?);
                Source::Pairs(v)
            }
            TrainData::Sintel => {
                let root = root_of(cfg, "Sintel")?;
                let mut v = datasets::sintel(&root, "training", "clean")?;
                v.extend(datasets::sintel(&root, "training", "final")?);
                Source::Pairs(v)
            }
            TrainData::Kitti => Source::Pairs(datasets::kitti(&root_of(cfg, "KITTI")?, "training")?),
            TrainData::Hd1k => Source::Pairs(datasets::hd1k(&root_of(cfg, "HD1k")?)?),
        })
    }

    /// Samples per epoch.
    pub fn len(&self) -> usize {
        match self {
            Source::Synthetic { n, .. } => *n,
            Source::Pairs(v) => v.len(),
        }
    }

    /// True when there is nothing to train on.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The augmented sample `index` of `epoch`.
    pub fn sample(&self, cfg: &RunConfig, epoch: usize, index: usize) -> Result<Sample> {
        let mut rng = sample_rng(cfg.train.seed, epoch, index);
        let aug = &cfg.data.augment;
        match self {
            Source::Synthetic { generator, .. } => {
                let p = generator.pair(rng.next_u64());
                let (h, w) = (p.flow.height, p.flow.width);
                let s = Sample { img1: Rgb { height: h, width: w, data: p.img1 }, img2: Rgb { height: h, width: w, data: p.img2 }, flow: p.flow };
                augment_dense(s, aug, &mut rng).map_err(|e| FlowError::config("data.augment", e))
            }
            Source::Pairs(v) => {
                let spec = &v[index];
                let pair = load_pair(spec)?;
                let flow = pair.flow.ok_or_else(|| FlowError::format(&spec.img1, "training pair without ground truth"))?;
                let s = Sample { img1: to_rgb(&pair.img1), img2: to_rgb(&pair.img2), flow };
                let r = if spec.sparse { augment_sparse(s, aug, &mut rng) } else { augment_dense(s, aug, &mut rng) };
                r.map_err(|e| FlowError::format(&spec.img1, e))
            }
        }
    }
}

/// A training batch: frames `(B, 3, H, W)` in `[0, 255]`, flow `(B, 2, H, W)`, validity `(B, H, W)`.
pub struct FlowBatch {
    /// Frames 1.
    pub img1: Tensor,
    /// Frames 2.
    pub img2: Tensor,
    /// Ground truth.
    pub flow: Tensor,
    /// Validity (dense data: `|u|, |v| < 1000`, RAFT's rule; sparse: the file's mask).
    pub valid: Tensor,
}

/// Builds the batch of samples `indices` of `epoch` (in parallel).
pub fn make_batch(src: &Source, cfg: &RunConfig, epoch: usize, indices: &[usize], dtype: DType, dev: &Device) -> Result<FlowBatch> {
    let samples: Vec<Sample> = indices.par_iter().map(|&i| src.sample(cfg, epoch, i)).collect::<Result<_>>()?;
    let [h, w] = cfg.data.augment.crop;
    let (b, hw) = (samples.len(), h * w);
    let (mut i1, mut i2, mut fl, mut va) = (vec![0f32; b * 3 * hw], vec![0f32; b * 3 * hw], vec![0f32; b * 2 * hw], vec![0f32; b * hw]);
    for (k, s) in samples.iter().enumerate() {
        for p in 0..hw {
            for c in 0..3 {
                i1[(k * 3 + c) * hw + p] = s.img1.data[p * 3 + c];
                i2[(k * 3 + c) * hw + p] = s.img2.data[p * 3 + c];
            }
            let (u, v) = (s.flow.uv[2 * p], s.flow.uv[2 * p + 1]);
            fl[(k * 2) * hw + p] = if u.is_finite() { u } else { 0.0 };
            fl[(k * 2 + 1) * hw + p] = if v.is_finite() { v } else { 0.0 };
            va[k * hw + p] = match &s.flow.valid {
                Some(m) => m[p],
                None => (u.abs() < 1000.0 && v.abs() < 1000.0) as u8 as f32,
            };
        }
    }
    let t = |v: Vec<f32>, shape: &[usize]| -> Result<Tensor> { Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)?) };
    Ok(FlowBatch { img1: t(i1, &[b, 3, h, w])?, img2: t(i2, &[b, 3, h, w])?, flow: t(fl, &[b, 2, h, w])?, valid: t(va, &[b, h, w])? })
}

fn dtype_of(cfg: &RunConfig) -> DType {
    if cfg.train.dtype == "f64" {
        DType::F64
    } else {
        DType::F32
    }
}

/// A new model for `cfg` (parameters drawn from `train.seed`).
pub fn build_model(cfg: &RunConfig, dev: &Device) -> Result<DeqFlow> {
    let mut rng = DeqRng::new(cfg.train.seed);
    Ok(DeqFlow::new(&cfg.model, &NormOptions::from_config(&cfg.deq), &mut rng, dtype_of(cfg), dev)?)
}

/// The evaluation DEQ: `eval.f_solver` when set, evaluation budget from `[deq]`.
pub fn eval_deq(cfg: &RunConfig) -> Result<Deq> {
    let mut d = cfg.deq.clone();
    if let Some(s) = &cfg.eval.f_solver {
        d.f_solver = s.clone();
    }
    Ok(deq_layer(&d, false, cfg.train.seed)?)
}

fn state_tensors(model: &DeqFlow, opt: &dyn Optimizer) -> Result<Vec<(String, Tensor)>> {
    let mut t: Vec<(String, Tensor)> = model.named_vars().into_iter().map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone())).collect();
    t.extend(model.buffers().into_iter().map(|(n, x)| (format!("buffer.{n}"), x)));
    t.extend(opt.state()?.into_iter().map(|(n, x)| (format!("optim.{n}"), x)));
    Ok(t)
}

/// Restores parameters and batch-norm statistics from a checkpoint.
pub fn restore_model(model: &DeqFlow, ckpt: &deq_train::Checkpoint) -> Result<()> {
    deq_train::load_vars(&model.named_vars(), ckpt, "model.")?;
    model.load_buffers(&|n| ckpt.tensors.get(&format!("buffer.{n}")).cloned())?;
    Ok(())
}

/// The latest checkpoint of a run folder (or of a `latest.json` path).
pub fn load_checkpoint(path: &Path, dev: &Device) -> Result<deq_train::Checkpoint> {
    let json = if path.is_dir() { path.join("checkpoints").join("latest.json") } else { path.to_path_buf() };
    if !json.is_file() {
        return Err(FlowError::format(&json, "no checkpoint here (train a run first)"));
    }
    Ok(Checkpointer::load(&json, dev)?)
}

/// A trained model from a run folder.
pub fn load_trained(cfg: &RunConfig, dir: &Path, dev: &Device) -> Result<DeqFlow> {
    let model = build_model(cfg, dev)?;
    restore_model(&model, &load_checkpoint(dir, dev)?)?;
    Ok(model)
}

/// Evaluates on the configured datasets (`eval.datasets`, at most `eval.max_pairs` each).
pub fn evaluate_all(cfg: &RunConfig, model: &DeqFlow, dev: &Device, progress: bool) -> Result<Vec<DatasetReport>> {
    let deq = eval_deq(cfg)?;
    eval::expand(&cfg.eval.datasets)
        .iter()
        .map(|name| {
            let (mut specs, pad, sparse) = eval::dataset(name, None, cfg.eval.pad)?;
            if cfg.eval.max_pairs > 0 {
                specs.truncate(cfg.eval.max_pairs);
            }
            eval::evaluate(model, &deq, name, &specs, pad, sparse, dev, progress, None)
        })
        .collect()
}

/// Trains as the job that the environment describes (a single process when it describes none).
pub fn train(cfg: &RunConfig, opts: &RunOptions) -> Result<TrainSummary> {
    let collective = deq_train::collective_for(DistContext::from_env()?, &opts.device)?;
    deq_train::dist::with_group(collective.clone(), || train_rank(cfg, opts, &*collective))
}

/// [`train`] as one rank of `collective`'s job (`train.batch_size` per rank, gradients averaged,
/// batch norms on the global batch, rank 0 evaluates and writes).
pub fn train_with(cfg: &RunConfig, opts: &RunOptions, collective: Arc<dyn Collective>) -> Result<TrainSummary> {
    deq_train::dist::with_group(collective.clone(), || train_rank(cfg, opts, &*collective))
}

fn train_rank(cfg: &RunConfig, opts: &RunOptions, collective: &dyn Collective) -> Result<TrainSummary> {
    let start = Instant::now();
    let dist = collective.context().clone();
    let main = dist.is_main();
    let dev = opts.device.clone();
    let t = &cfg.train;
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| FlowError::io(&opts.out_dir, e))?;
    // One writer per run folder (rank 0 writes for the job).
    let _lock = if main { Some(deq_train::run_lock::RunLock::acquire(&opts.out_dir)?) } else { None };
    if main {
        deq_train::cli::save_config(&opts.out_dir, cfg)?;
    }
    let src = Source::new(cfg)?;
    let per_step = t.batch_size * dist.world_size;
    if src.len() < per_step {
        return Err(FlowError::config("train.batch_size", format!("{} training pairs cannot fill a global batch of {per_step}", src.len())));
    }
    let steps_per_epoch = src.len() / per_step;
    let shard = Shard::new(dist.rank, dist.world_size)?;
    let model = build_model(cfg, &dev)?;
    let params = model.parameter_count();
    let named = model.named_vars();
    let vars: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Adam::new(named.clone(), t.lr, (0.9, 0.999), t.epsilon, t.weight_decay, true)?;
    let schedule = Schedule::OneCycle { total_steps: t.steps + 100, pct_start: t.pct_start, div_factor: 25.0, final_div_factor: 1e4 };
    let ckpt = Checkpointer::new(opts.out_dir.join("checkpoints"), 3)?;
    let mut metrics = if main { Some(MetricsWriter::open(opts.out_dir.join("metrics.jsonl"))?) } else { None };
    let mut step = 0usize;
    let mut resumed = false;
    let mut skipped0 = 0usize;
    if opts.resume {
        match ckpt.load_latest(&dev)? {
            Some(c) => {
                restore_model(&model, &c)?;
                let optim: HashMap<String, Tensor> = c.tensors.iter().filter_map(|(k, v)| k.strip_prefix("optim.").map(|s| (s.to_string(), v.clone()))).collect();
                opt.load_state(&optim)?;
                step = c.step;
                skipped0 = c.meta.get("skipped_batches").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
                resumed = true;
                tracing::info!(step, "resumed from {}", c.path.display());
            }
            None => tracing::warn!("--resume: no checkpoint in {}, starting fresh", ckpt.dir().display()),
        }
    }
    if !resumed {
        if let Some(init) = &t.init {
            let c = load_checkpoint(init, &dev).map_err(|e| FlowError::config("train.init", e.to_string()))?;
            restore_model(&model, &c)?;
            tracing::info!("weights from {}", c.path.display());
        }
    }
    deq_train::dist::broadcast_vars(collective, &vars)?;
    let deq = deq_layer(&cfg.deq, true, t.seed)?;
    let total = if opts.max_steps > 0 { opts.max_steps.min(t.steps) } else { t.steps };
    tracing::info!(params, pairs = src.len(), steps_per_epoch, world = dist.world_size, "DEQ-Flow training, steps {step}..{total}");
    let dtype = dtype_of(cfg);
    let mut bar = Progress::new("train", total.saturating_sub(step), main);
    let mut order: Option<(usize, Vec<usize>)> = None;
    let (mut acc_loss, mut acc_n, mut acc_err, mut acc_nfe, mut acc_res, mut acc_norm) = (0f64, 0usize, FlowErrors::default(), 0f64, 0f64, 0f64);
    let mut window = Instant::now();
    let mut last_eval = Vec::new();
    let mut stopped_early = false;
    let mut guard = deq_train::faults::FaultGuard::new(t.on_nonfinite, t.max_skipped, skipped0);
    while step < total {
        let epoch = step / steps_per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, shard.take(&epoch_permutation(t.seed, epoch, src.len()), steps_per_epoch * t.batch_size)));
        }
        let k = step % steps_per_epoch;
        let idx = &order.as_ref().expect("this epoch's order").1[k * t.batch_size..(k + 1) * t.batch_size];
        let batch = make_batch(&src, cfg, epoch, idx, dtype, &dev)?;
        let lr = schedule.lr_at(t.lr, step);
        opt.set_lr(lr);
        // The step's stages up to the local gradient; a numerical fault in any of them is
        // agreed on by every rank, then stops the run or skips the batch (train.on_nonfinite).
        let attempt = guard.run_step(collective, step, |stage| -> Result<_> {
            for (what, x) in [("the first frames", &batch.img1), ("the second frames", &batch.img2)] {
                deq_train::faults::check_tensor_finite(what, x, step)?;
            }
            stage.set("forward solve");
            let out = model.forward(&batch.img1, &batch.img2, None, &deq, !t.freeze_bn)?;
            stage.set("loss");
            let loss = sequence_loss(&out.flows, &batch.flow, &batch.valid, cfg.deq.gamma, t.max_flow)?;
            let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            check_finite("training loss", loss_v, step)?;
            stage.set("backward (adjoint solve)");
            let grads = deq_core::grad::backward(&loss)?;
            stage.set("gradient");
            check_finite("gradient norm", deq_train::grad_norm(&grads, &vars)?, step)?;
            Ok((out, loss_v, grads))
        })?;
        step += 1;
        if let Some((out, loss_v, mut grads)) = attempt {
            collective.all_reduce_mean(&mut grads, &vars)?;
            let norm = if t.clip > 0.0 { clip_grad_norm(&mut grads, &vars, t.clip)? } else { deq_train::grad_norm(&grads, &vars)? };
            check_finite("gradient norm", norm, step - 1)?;
            opt.step(&grads)?;
            let mask = loss_mask(&batch.flow, &batch.valid, t.max_flow)?;
            acc_err.add(&FlowErrors::of(&out.flows[out.flows.len() - 1].detach(), &batch.flow, &mask)?);
            acc_loss += loss_v;
            acc_n += 1;
            acc_nfe += out.stats.nfe as f64;
            acc_res += out.stats.mean_rel();
            acc_norm += norm;
            bar.inc(1, &format!("loss {loss_v:.3} epe {:.2}", acc_err.epe()));
        } else {
            bar.inc(1, &format!("skipped the batch of step {} ({} in all)", step - 1, guard.skipped()));
        }
        let out_of_time = t.time_limit_minutes > 0.0 && start.elapsed().as_secs_f64() > t.time_limit_minutes * 60.0;
        // SIGINT/SIGTERM on any rank: checkpoint this step, then stop (exit code 75).
        let signal = deq_train::dist::agree_on_signal(collective)?;
        let last = step == total || out_of_time || signal.is_some();
        if main && (step % t.log_every == 0 || last) {
            // A window of skipped batches only has no figures (NaN, written as null).
            let n = acc_n as f64;
            let px = acc_err.accuracies();
            let rec = json!({"step": step, "epoch": epoch, "lr": lr, "train_loss": acc_loss / n, "train_epe": acc_err.epe(), "train_1px": px[0], "train_3px": px[1], "train_5px": px[2],
                "train_fwd_nfe_mean": acc_nfe / n, "train_fwd_rel_residual_mean": acc_res / n, "grad_norm": acc_norm / n,
                "step_seconds": window.elapsed().as_secs_f64() / n, "elapsed_seconds": start.elapsed().as_secs_f64(), "skipped_batches": guard.skipped()});
            if let Some(m) = metrics.as_mut() {
                m.write(&rec)?;
            }
            tracing::info!("{rec}");
            (acc_loss, acc_n, acc_err, acc_nfe, acc_res, acc_norm) = (0.0, 0, FlowErrors::default(), 0.0, 0.0, 0.0);
            window = Instant::now();
        }
        if main && ((t.eval_every > 0 && step % t.eval_every == 0) || last) && !cfg.eval.datasets.is_empty() {
            last_eval = evaluate_all(cfg, &model, &dev, false)?;
            let mut rec = json!({"step": step, "elapsed_seconds": start.elapsed().as_secs_f64()});
            for r in &last_eval {
                let key = r.name.replace([':', '/', '-'], "_");
                rec[format!("eval_{key}_epe")] = json!(r.epe);
                rec[format!("eval_{key}_1px")] = json!(r.px[0]);
                rec[format!("eval_{key}_f1")] = json!(r.f1);
                rec[format!("eval_{key}_fwd_nfe_mean")] = json!(r.nfe);
                rec[format!("eval_{key}_fwd_rel_residual_mean")] = json!(r.rel_residual);
            }
            if let Some(m) = metrics.as_mut() {
                m.write(&rec)?;
            }
            tracing::info!("{rec}");
        }
        if main && ((t.checkpoint_every > 0 && step % t.checkpoint_every == 0) || last) {
            ckpt.save(step, &state_tensors(&model, &opt)?, json!({"config": cfg.to_toml(), "params": params, "skipped_batches": guard.skipped()}))?;
        }
        if let Some(sig) = signal {
            return Err(deq_train::TrainError::Interrupted { signal: deq_train::signals::name(sig), step, checkpoint: ckpt.latest_path() }.into());
        }
        if out_of_time {
            tracing::warn!(step, "train.time_limit_minutes reached: stopping with a checkpoint");
            stopped_early = true;
            break;
        }
    }
    if stopped_early && step < total {
        tracing::info!("resume with --resume to continue");
    }
    Ok(TrainSummary { steps: step, seconds: start.elapsed().as_secs_f64(), params, eval: last_eval })
}
