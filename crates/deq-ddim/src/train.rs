//! DDPM training (the DDIM code's `Diffusion.train`): the epsilon loss with antithetic
//! timesteps, Adam, gradient clipping, an EMA of the weights, checkpoints with bit-identical
//! resume, JSON-lines metrics, progress, and sample grids during training. Data-parallel jobs
//! (deq-train's launcher) average gradients across ranks; rank 0 writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use deq_core::rng::DeqRng;
use deq_train::data::{find_dataset_dir, load_cifar10, load_image_folder, load_mnist, sample_rng, ImageDataset, Loader, LoaderConfig, Shard};
use deq_train::dist::{Collective, DistContext};
use deq_train::{check_finite, clip_grad_norm, Adam, Checkpointer, Ema, MetricsWriter, Optimizer, Progress};
use serde_json::json;

pub use deq_train::RunOptions;

use crate::config::{Dataset, RunConfig};
use crate::error::{DdimError, Result};
use crate::grid::write_grid;
use crate::sample::{sample_batch, SampleRequest};
use crate::unet::UNet;

/// What a training run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimiser steps taken in total.
    pub steps: usize,
    /// Seconds of this invocation.
    pub seconds: f64,
    /// Trainable scalars.
    pub params: usize,
    /// Mean loss of the last logging window.
    pub loss: f64,
}

/// The dtype of `train.dtype`.
pub fn dtype_of(cfg: &RunConfig) -> DType {
    if cfg.train.dtype == "f64" {
        DType::F64
    } else {
        DType::F32
    }
}

/// The training images of the configured dataset (pixels as bytes, `(C, H, W)` each).
pub fn load_dataset(cfg: &RunConfig, train: bool) -> Result<ImageDataset> {
    let d = &cfg.data;
    let root = |name: &str| -> Result<PathBuf> {
        d.root.clone().or_else(|| find_dataset_dir(name)).ok_or_else(|| DdimError::config("data.root", format!("no {name} folder found (set data.root or DEQ_DATA_DIR; see datasets/README.md)")))
    };
    let ds = match d.dataset {
        Dataset::Mnist => load_mnist(&root("mnist")?, train)?,
        Dataset::Cifar10 => load_cifar10(&root("cifar10")?, train)?,
        Dataset::Folder => {
            let r = cfg.model.resolution as u32;
            load_image_folder(root("folder")?, Some((r, r)))?
        }
    };
    if ds.height != cfg.model.resolution || ds.width != cfg.model.resolution || ds.channels != cfg.model.in_channels {
        return Err(DdimError::config("model.resolution / model.in_channels", format!("{:?} images are {}x{}x{}, the model takes {}x{r}x{r}", d.dataset, ds.channels, ds.height, ds.width, cfg.model.in_channels, r = cfg.model.resolution)));
    }
    Ok(ds)
}

/// Pixels `[0, 255]` to `[-1, 1]`, flipped left-right with probability 1/2 when `flip`.
fn transform(flip: bool) -> deq_train::data::AugmentFn {
    Arc::new(move |img: &[u8], c: usize, h: usize, w: usize, rng: &mut DeqRng| {
        let mirror = flip && rng.uniform() < 0.5;
        let mut out = Vec::with_capacity(c * h * w);
        for plane in img.chunks_exact(h * w) {
            for row in plane.chunks_exact(w) {
                if mirror {
                    out.extend(row.iter().rev().map(|&v| v as f32 / 127.5 - 1.0));
                } else {
                    out.extend(row.iter().map(|&v| v as f32 / 127.5 - 1.0));
                }
            }
        }
        out
    })
}

/// The epsilon loss of a batch `x0` (`(B, C, H, W)` in `[-1, 1]`): timesteps drawn
/// antithetically (`t` and `T - 1 - t` in pairs), `x_t = sqrt(a) x0 + sqrt(1 - a) e`,
/// `sum_pixels (e - eps(x_t, t))^2` averaged over the batch. Dropout draws from `rng`.
pub fn epsilon_loss(model: &UNet, alpha_bar: &[f64], x0: &Tensor, rng: &mut DeqRng, train: bool) -> Result<Tensor> {
    let (b, c, h, w) = x0.dims4()?;
    let big_t = alpha_bar.len();
    let half: Vec<usize> = (0..b / 2 + 1).map(|_| (rng.next_u64() % big_t as u64) as usize).collect();
    let t: Vec<usize> = half.iter().copied().chain(half.iter().map(|&t| big_t - 1 - t)).take(b).collect();
    let (dtype, dev) = (x0.dtype(), x0.device());
    let sa: Vec<f64> = t.iter().map(|&t| alpha_bar[t].sqrt()).collect();
    let sb: Vec<f64> = t.iter().map(|&t| (1.0 - alpha_bar[t]).sqrt()).collect();
    let col = |v: Vec<f64>| -> candle_core::Result<Tensor> { Tensor::from_vec(v, (b, 1, 1, 1), &Device::Cpu)?.to_dtype(dtype)?.to_device(dev) };
    let e = rng.randn((b, c, h, w), dtype, dev)?;
    let x = (x0.broadcast_mul(&col(sa)?)? + e.broadcast_mul(&col(sb)?)?)?;
    let tt = Tensor::from_vec(t.iter().map(|&t| t as f32).collect::<Vec<_>>(), b, dev)?.to_dtype(dtype)?;
    let out = model.forward_with(&x, &tt, if train { Some(rng) } else { None })?;
    Ok((e - out)?.sqr()?.sum_all()?.affine(1.0 / b as f64, 0.0)?)
}

/// Builds a model with the run's initialisation.
pub fn build_model(cfg: &RunConfig, dev: &Device) -> Result<UNet> {
    Ok(UNet::new(&cfg.model, &mut DeqRng::new(cfg.train.seed), dtype_of(cfg), dev)?)
}

/// The latest checkpoint of a run folder (or of a `latest.json` path).
pub fn load_checkpoint(path: &Path, dev: &Device) -> Result<deq_train::Checkpoint> {
    let latest = if path.is_dir() { path.join("checkpoints").join("latest.json") } else { path.to_path_buf() };
    if !latest.exists() {
        return Err(DdimError::io(&latest, std::io::Error::new(std::io::ErrorKind::NotFound, "no checkpoint (train a run first)")));
    }
    deq_train::Checkpointer::load(&latest, dev)
}

/// The trained model of a run folder: the EMA weights when `ema` and the run kept them, else
/// the raw weights.
pub fn load_trained(cfg: &RunConfig, dir: &Path, dev: &Device, ema: bool) -> Result<UNet> {
    let c = load_checkpoint(dir, dev)?;
    let model = build_model(cfg, dev)?;
    let prefix = if ema && c.tensors.keys().any(|k| k.starts_with("ema.")) { "ema." } else { "model." };
    let t: HashMap<String, Tensor> = c.tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone()))).collect();
    model.load(&t, &c.path.display().to_string())?;
    Ok(model)
}

/// The model from a safetensors file of UNet weights (`scripts/convert_ddpm_checkpoint.py`'s
/// output).
pub fn load_weights(cfg: &RunConfig, file: &Path, dev: &Device) -> Result<UNet> {
    let model = build_model(cfg, dev)?;
    let t = candle_core::safetensors::load(file, dev).map_err(|e| DdimError::format(file, e.to_string()))?;
    model.load(&t, &file.display().to_string()).map_err(|e| DdimError::format(file, e.to_string()))?;
    Ok(model)
}

fn state_tensors(model: &UNet, ema: Option<&Ema>, opt: &dyn Optimizer) -> Result<Vec<(String, Tensor)>> {
    let mut t: Vec<(String, Tensor)> = model.vars().into_iter().map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone())).collect();
    if let Some(e) = ema {
        t.extend(e.tensors().iter().map(|(n, x)| (format!("ema.{n}"), x.clone())));
    }
    t.extend(opt.state()?.into_iter().map(|(n, x)| (format!("optim.{n}"), x)));
    Ok(t)
}

fn prefixed(c: &deq_train::Checkpoint, prefix: &str) -> HashMap<String, Tensor> {
    c.tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone()))).collect()
}

/// The fixed latents of the grids written during training (the same images every time).
fn grid_latents(cfg: &RunConfig, dev: &Device) -> Result<Tensor> {
    let m = &cfg.model;
    Ok(DeqRng::new(cfg.train.seed ^ 0x5A3B1E).randn((cfg.train.sample_count, m.in_channels, m.resolution, m.resolution), dtype_of(cfg), dev)?)
}

/// Trains as the job that the environment describes (a single process when it describes none).
pub fn train(cfg: &RunConfig, opts: &RunOptions) -> Result<TrainSummary> {
    let collective = deq_train::collective_for(DistContext::from_env()?, &opts.device)?;
    deq_train::dist::with_group(collective.clone(), || train_rank(cfg, opts, &*collective))
}

fn train_rank(cfg: &RunConfig, opts: &RunOptions, collective: &dyn Collective) -> Result<TrainSummary> {
    let start = Instant::now();
    let dist = collective.context().clone();
    let main = dist.is_main();
    let dev = opts.device.clone();
    let t = &cfg.train;
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| DdimError::io(&opts.out_dir, e))?;
    // One writer per run folder (rank 0 writes for the job).
    let _lock = if main { Some(deq_train::run_lock::RunLock::acquire(&opts.out_dir)?) } else { None };
    if main {
        deq_train::cli::save_config(&opts.out_dir, cfg)?;
    }
    let ds = Arc::new(load_dataset(cfg, true)?);
    let c = ds.channels;
    let loader = Loader::new(ds.clone(), LoaderConfig { batch_size: t.batch_size, shuffle: true, seed: t.seed, drop_last: true, shard: Shard::new(dist.rank, dist.world_size)?, ..Default::default() })?
        .with_augment(transform(t.random_flip), (c, ds.height, ds.width));
    let steps_per_epoch = loader.num_batches();
    if steps_per_epoch == 0 {
        return Err(DdimError::config("train.batch_size", format!("{} images cannot fill a batch of {} on {} ranks", ds.len(), t.batch_size, dist.world_size)));
    }
    let schedule = cfg.diffusion.schedule()?;
    let alpha_bar: Vec<f64> = (0..schedule.len()).map(|i| schedule.alpha_bar(i as i64)).collect();
    let model = build_model(cfg, &dev)?;
    let params = model.num_params();
    let named = model.vars();
    let vars: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Adam::new(named.clone(), t.lr, (0.9, 0.999), t.epsilon, t.weight_decay, false)?;
    let mut ema = if t.ema_rate > 0.0 { Some(Ema::new(&named, t.ema_rate)?) } else { None };
    let ckpt = Checkpointer::new(opts.out_dir.join("checkpoints"), 3)?;
    let mut metrics = if main { Some(MetricsWriter::open(opts.out_dir.join("metrics.jsonl"))?) } else { None };
    let mut step = 0usize;
    let mut skipped0 = 0usize;
    if opts.resume {
        match ckpt.load_latest(&dev)? {
            Some(c) => {
                model.load(&prefixed(&c, "model."), &c.path.display().to_string())?;
                opt.load_state(&prefixed(&c, "optim."))?;
                if let Some(e) = ema.as_mut() {
                    e.load(&prefixed(&c, "ema."))?;
                }
                step = c.step;
                skipped0 = c.meta.get("skipped_batches").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
                tracing::info!(step, "resumed from {}", c.path.display());
            }
            None => tracing::warn!("--resume: no checkpoint in {}, starting fresh", ckpt.dir().display()),
        }
    }
    deq_train::dist::broadcast_vars(collective, &vars)?;
    let total = if opts.max_steps > 0 { opts.max_steps.min(t.steps) } else { t.steps };
    tracing::info!(params, images = ds.len(), steps_per_epoch, world = dist.world_size, "DDPM training, steps {step}..{total}");
    let dtype = dtype_of(cfg);
    let samples_dir = opts.out_dir.join("samples");
    let latents = grid_latents(cfg, &dev)?;
    let ema_model = if main { Some(build_model(cfg, &dev)?) } else { None };
    let mut bar = Progress::new("train", total.saturating_sub(step), main);
    let (mut acc_loss, mut acc_norm, mut acc_n) = (0f64, 0f64, 0usize);
    let mut last_loss = f64::NAN;
    let mut window = Instant::now();
    let mut order: Option<(usize, Vec<Vec<usize>>)> = None;
    let mut guard = deq_train::faults::FaultGuard::new(t.on_nonfinite, t.max_skipped, skipped0);
    while step < total {
        let epoch = step / steps_per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, loader.batch_indices(epoch)));
        }
        let idx = order.as_ref().expect("this epoch's order").1[step % steps_per_epoch].clone();
        let batch = loader.make_batch(epoch, idx)?;
        let x0 = batch.images.to_dtype(dtype)?.to_device(&dev)?;
        let lr = if t.warmup_steps > 0 { t.lr * ((step + 1) as f64 / t.warmup_steps as f64).min(1.0) } else { t.lr };
        opt.set_lr(lr);
        let mut rng = sample_rng(t.seed ^ 0xD1FF_0510, step, dist.rank);
        // The step's stages up to the local gradient; a numerical fault in any of them is
        // agreed on by every rank, then stops the run or skips the batch (train.on_nonfinite).
        let attempt = guard.run_step(collective, step, |stage| -> Result<_> {
            deq_train::faults::check_tensor_finite("the training images", &x0, step)?;
            stage.set("loss");
            let loss = epsilon_loss(&model, &alpha_bar, &x0, &mut rng, true)?;
            let loss_v = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            check_finite("training loss", loss_v, step)?;
            stage.set("backward");
            let grads = loss.backward()?;
            stage.set("gradient");
            check_finite("gradient norm", deq_train::grad_norm(&grads, &vars)?, step)?;
            Ok((loss_v, grads))
        })?;
        step += 1;
        if let Some((loss_v, mut grads)) = attempt {
            collective.all_reduce_mean(&mut grads, &vars)?;
            let norm = if t.grad_clip > 0.0 { clip_grad_norm(&mut grads, &vars, t.grad_clip)? } else { deq_train::grad_norm(&grads, &vars)? };
            check_finite("gradient norm", norm, step - 1)?;
            opt.step(&grads)?;
            if let Some(e) = ema.as_mut() {
                e.update(&named)?;
            }
            acc_loss += loss_v;
            acc_norm += norm;
            acc_n += 1;
            bar.inc(1, &format!("loss {loss_v:.2}"));
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
            last_loss = acc_loss / n;
            let rec = json!({"step": step, "epoch": epoch, "lr": lr, "train_loss": last_loss, "grad_norm": acc_norm / n,
                "step_seconds": window.elapsed().as_secs_f64() / n, "elapsed_seconds": start.elapsed().as_secs_f64(), "skipped_batches": guard.skipped()});
            if let Some(m) = metrics.as_mut() {
                m.write(&rec)?;
            }
            tracing::info!("{rec}");
            (acc_loss, acc_norm, acc_n) = (0.0, 0.0, 0);
            window = Instant::now();
        }
        if main && ((t.sample_every > 0 && step % t.sample_every == 0) || last) {
            let m = ema_model.as_ref().expect("rank 0 has the sampling model");
            match &ema {
                Some(e) if cfg.sample.use_ema => e.copy_to(&m.vars())?,
                _ => {
                    for ((_, dst), (_, src)) in m.vars().iter().zip(&named) {
                        dst.set(src.as_tensor())?;
                    }
                }
            }
            let started = Instant::now();
            let req = SampleRequest::from_config(cfg, cfg.sample.sampler);
            let (mut images, mut rounds) = (Vec::new(), 0);
            for (i, start) in (0..t.sample_count).step_by(cfg.sample.batch_size).enumerate() {
                let n = cfg.sample.batch_size.min(t.sample_count - start);
                let out = sample_batch(m, &schedule, &req, &latents.narrow(0, start, n)?, t.seed.wrapping_add(i as u64))?;
                rounds += out.stats.rounds;
                images.push(out.images);
            }
            std::fs::create_dir_all(&samples_dir).map_err(|e| DdimError::io(&samples_dir, e))?;
            let path = samples_dir.join(format!("step-{step:07}.png"));
            write_grid(&path, &Tensor::cat(&images, 0)?, 0)?;
            let rec = json!({"step": step, "grid": path.display().to_string(), "sample_seconds": started.elapsed().as_secs_f64(), "sample_rounds": rounds});
            if let Some(mw) = metrics.as_mut() {
                mw.write(&rec)?;
            }
        }
        if main && ((t.checkpoint_every > 0 && step % t.checkpoint_every == 0) || last) {
            ckpt.save(step, &state_tensors(&model, ema.as_ref(), &opt)?, json!({"config": cfg.to_toml(), "params": params, "skipped_batches": guard.skipped()}))?;
        }
        if let Some(sig) = signal {
            return Err(deq_train::TrainError::Interrupted { signal: deq_train::signals::name(sig), step, checkpoint: ckpt.latest_path() }.into());
        }
        if out_of_time {
            tracing::warn!(step, "train.time_limit_minutes reached: stopping with a checkpoint; continue with --resume");
            break;
        }
    }
    Ok(TrainSummary { steps: step, seconds: start.elapsed().as_secs_f64(), params, loss: last_loss })
}
