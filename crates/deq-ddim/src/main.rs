//! `deq-ddim`: train a DDPM, sample it with sequential DDIM / DDPM or with DEQ (the whole
//! trajectory as one fixed point), and invert images to latents.
//!
//! `train` uses `configs/deq-ddim/mnist.toml` by default (the committed MNIST, CPU-sized);
//! `sample` and `invert` read a run folder (`--out`) or converted public weights
//! (`--weights model.safetensors --config model.toml`). Every flag follows `deq_train::cli`
//! (`--config`, `--set`, TorchDEQ's flags, `--out`, `--resume`, `--seed`, `--threads`,
//! `--device`, `--dry-run`); `RUST_LOG` selects log lines.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Parser, Subcommand};
use deq_core::rng::DeqRng;
use deq_ddim::config::{RunConfig, MNIST};
use deq_ddim::grid::{read_image, to_bytes, write_grid};
use deq_ddim::invert::{invert, InvertMethod};
use deq_ddim::sample::{sample_batch, sample_batch_observed, SampleRequest};
use deq_ddim::sampler::SamplerKind;
use deq_ddim::schedule::SkipType;
use deq_ddim::train::{dtype_of, load_dataset, load_trained, load_weights, train, RunOptions};
use deq_ddim::unet::UNet;
use deq_train::cli::{init_logging, RunDirArgs, TrainArgs};
use deq_train::plot::PlotArgs;

deq_train::fast_allocator!(counting);

#[derive(Parser, Debug)]
#[command(name = "deq-ddim", version, about = "DEQ-DDIM: diffusion sampling and inversion as one fixed point")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the model comes from and how to run it.
#[derive(clap::Args, Debug)]
struct ModelArgs {
    #[command(flatten)]
    run: RunDirArgs,
    /// UNet weights in safetensors (e.g. a public checkpoint converted by
    /// scripts/convert_ddpm_checkpoint.py) instead of a run folder's checkpoint; needs
    /// --config with the matching [model] table.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Use the raw weights of the run, not their EMA.
    #[arg(long)]
    no_ema: bool,
    /// Seed of the latents and of the samplers' noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train a DDPM (default: configs/deq-ddim/mnist.toml).
    Train {
        #[command(flatten)]
        args: TrainArgs,
        /// Stop after this many optimiser steps in total (smoke runs; 0: the configured number).
        #[arg(long, default_value_t = 0)]
        max_steps: usize,
    },
    /// Sample images: a PNG grid, optionally single PNGs, statistics as JSON.
    Sample {
        #[command(flatten)]
        model: ModelArgs,
        /// ddim, deq or ddpm (default: the run's sample.sampler).
        #[arg(long, value_enum)]
        sampler: Option<SamplerKind>,
        /// Sampling steps T (default: sample.steps).
        #[arg(long)]
        steps: Option<usize>,
        /// uniform or quad (default: sample.skip).
        #[arg(long, value_enum)]
        skip: Option<SkipType>,
        /// DDIM's eta (default: sample.eta).
        #[arg(long)]
        eta: Option<f64>,
        /// How many images.
        #[arg(long, default_value_t = 64)]
        count: usize,
        /// The grid PNG to write.
        #[arg(long, value_name = "FILE", default_value = "samples.png")]
        grid: PathBuf,
        /// Also write every image as its own PNG into this folder.
        #[arg(long, value_name = "DIR")]
        images: Option<PathBuf>,
        /// Also write the images as a `.npy` array `(N, C, H, W)` in [-1, 1].
        #[arg(long, value_name = "FILE")]
        npy: Option<PathBuf>,
    },
    /// Find the latents x_T whose DDIM samples are the given images (PNG/JPEG) or MNIST test digits.
    Invert {
        #[command(flatten)]
        model: ModelArgs,
        /// Target images (resized to the model's resolution).
        #[arg(long = "image", value_name = "FILE")]
        images: Vec<PathBuf>,
        /// Or the first N images of the test split of the run's [data] (MNIST, CIFAR-10).
        #[arg(long, default_value_t = 0)]
        test_digits: usize,
        /// deq or chain (default: invert.method).
        #[arg(long, value_enum)]
        method: Option<InvertMethod>,
        /// Stop after this many seconds (default: invert.time_limit_seconds).
        #[arg(long)]
        seconds: Option<f64>,
        /// Where to write targets | reconstructions as a PNG grid.
        #[arg(long, value_name = "FILE", default_value = "inversion.png")]
        grid: PathBuf,
        /// Also write the loss trace (one JSON object per iteration) here.
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
    },
    /// DEQ against sequential DDIM on the same latents: largest pixel difference, sequential
    /// rounds, model evaluations and wall-clock, per number of steps.
    Compare {
        #[command(flatten)]
        model: ModelArgs,
        /// Numbers of steps T to compare (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "20,50,100")]
        steps: Vec<usize>,
        /// Latents (seeds) per T.
        #[arg(long, default_value_t = 64)]
        count: usize,
        /// DDIM's eta (the DEQ sampler uses the same pre-drawn noise).
        #[arg(long, default_value_t = 0.0)]
        eta: f64,
        /// Also write one JSON line per T here.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Draw training curves of a run folder as PNG files.
    Plot(PlotArgs),
}

const DEFAULT_CONFIG: &str = "configs/deq-ddim/mnist.toml";
const DEFAULT_RUN: &str = "runs/deq-ddim-mnist";

fn dry_run(cfg: &RunConfig, source: &str, out: &Path) -> Result<()> {
    let data = format!("{:?} ({})", cfg.data.dataset, cfg.data.root.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "default location".into()));
    Ok(deq_train::cli::print_dry_run(source, out, &data, cfg)?)
}

/// The standard normal latents of batch `b` (`n` images) of a `sample` or `compare` run with
/// `seed`: the same seed gives the same latents in both commands.
fn batch_latents(cfg: &RunConfig, seed: u64, b: usize, n: usize, device: &Device) -> Result<Tensor> {
    let m = &cfg.model;
    Ok(DeqRng::new(seed.wrapping_mul(0x9E37_79B9).wrapping_add(b as u64)).randn((n, m.in_channels, m.resolution, m.resolution), dtype_of(cfg), device)?)
}

/// The configuration, the model and the device of `sample` / `invert`.
fn open_model(m: &ModelArgs) -> Result<(RunConfig, UNet, Device, PathBuf, String)> {
    let dir = m.run.out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_RUN));
    let loaded = if m.weights.is_some() && m.run.out.is_none() {
        anyhow::ensure!(m.run.config.config.is_some(), "--weights needs --config FILE with the weights' [model] table");
        m.run.config.load::<RunConfig>(None, None, None)?
    } else {
        m.run.config.load_saved::<RunConfig>(&dir)?
    };
    let (source, mut cfg) = (loaded.source(), loaded.config);
    cfg.apply_deq_flags(&m.run.config.deq);
    cfg.validate().map_err(anyhow::Error::msg)?;
    let device = m.run.runtime.device.open()?;
    if m.run.dry_run {
        if m.weights.is_none() {
            anyhow::ensure!(dir.join("checkpoints").join("latest.json").exists(), "{}: no checkpoints/latest.json (train a run first)", dir.display());
        }
        dry_run(&cfg, &source, &dir)?;
        std::process::exit(0);
    }
    m.run.runtime.configure(cfg.train.threads);
    let model = match &m.weights {
        Some(w) => load_weights(&cfg, w, &device)?,
        None => load_trained(&cfg, &dir, &device, !m.no_ema && cfg.sample.use_ema).with_context(|| format!("loading the run in {}", dir.display()))?,
    };
    Ok((cfg, model, device, dir, source.to_string()))
}

fn main() -> std::process::ExitCode {
    deq_train::signals::exit_status(run())
}

fn run() -> Result<()> {
    init_logging();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Train { args, max_steps } => {
            // SIGINT/SIGTERM: checkpoint, then exit 75 (continue with --resume).
            deq_train::signals::install()?;
            let loaded = args.config.load::<RunConfig>(Some(DEFAULT_CONFIG), Some(MNIST), args.seed)?;
            let (source, out) = (loaded.source(), args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("deq-ddim-{}", loaded.name))));
            let mut cfg = loaded.config;
            cfg.apply_deq_flags(&args.config.deq);
            cfg.validate().map_err(anyhow::Error::msg)?;
            let device = args.runtime.device.open()?;
            if args.dry_run {
                load_dataset(&cfg, true)?;
                return dry_run(&cfg, &source, &out);
            }
            let threads = args.runtime.configure(cfg.train.threads);
            tracing::info!(threads, "training into {}", out.display());
            deq_train::run_on_pool(move || -> Result<()> {
                let s = train(&cfg, &RunOptions { out_dir: out.to_path_buf(), resume: args.resume, max_steps, device })?;
                println!("{}", serde_json::json!({"steps": s.steps, "seconds": s.seconds, "params": s.params, "loss": s.loss, "out": out.display().to_string()}));
                Ok(())
            })
        }
        Cmd::Sample { model, sampler, steps, skip, eta, count, grid, images, npy } => {
            let (cfg, unet, device, _, _) = open_model(&model)?;
            let mut req = SampleRequest::from_config(&cfg, sampler.unwrap_or(cfg.sample.sampler));
            req.steps = steps.unwrap_or(req.steps);
            req.skip = skip.unwrap_or(req.skip);
            req.eta = eta.unwrap_or(req.eta);
            let mut check = cfg.clone();
            (check.sample.sampler, check.sample.steps, check.sample.eta) = (req.sampler, req.steps, req.eta);
            check.validate().map_err(anyhow::Error::msg)?;
            anyhow::ensure!(count > 0, "--count must be positive");
            let seed = model.seed;
            deq_train::run_on_pool(move || -> Result<()> {
                let schedule = cfg.diffusion.schedule()?;
                let m = &cfg.model;
                let bs = cfg.sample.batch_size;
                let mut outs = Vec::new();
                let (mut rounds, mut evals, mut secs, mut worst) = (0usize, 0usize, 0f64, 0f64);
                let mut bar = deq_train::Progress::new("sample", count, true);
                for (b, start) in (0..count).step_by(bs).enumerate() {
                    let n = bs.min(count - start);
                    let x_t = batch_latents(&cfg, seed, b, n, &device)?;
                    let out = sample_batch(&unet, &schedule, &req, &x_t, seed.wrapping_add(b as u64))?;
                    rounds += out.stats.rounds;
                    evals += out.stats.model_evals;
                    secs += out.stats.seconds;
                    worst = worst.max(out.stats.residual);
                    bar.inc(n, &format!("{} rounds", out.stats.rounds));
                    outs.push(out.images.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
                }
                let all = Tensor::cat(&outs, 0)?;
                write_grid(&grid, &all, 0)?;
                if let Some(dir) = &images {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                    let c = m.in_channels;
                    for (i, px) in to_bytes(&all)?.iter().enumerate() {
                        deq_train::data::write_png(&dir.join(format!("{i:05}.png")), m.resolution, m.resolution, c, px)?;
                    }
                }
                if let Some(p) = &npy {
                    deq_train::data::write_npy_f32(p, all.dims(), &all.flatten_all()?.to_vec1::<f32>()?)?;
                }
                println!("{}", serde_json::json!({"sampler": req.sampler, "steps": req.steps, "eta": req.eta, "count": count, "rounds": rounds, "model_evals": evals, "seconds": secs, "max_residual": worst, "grid": grid.display().to_string()}));
                Ok(())
            })
        }
        Cmd::Invert { model, images, test_digits, method, seconds, grid, trace } => {
            let (mut cfg, unet, device, _, _) = open_model(&model)?;
            if let Some(m) = method {
                cfg.invert.method = m;
            }
            if let Some(s) = seconds {
                cfg.invert.time_limit_seconds = s;
            }
            cfg.validate().map_err(anyhow::Error::msg)?;
            let m = cfg.model.clone();
            let target = if !images.is_empty() {
                let t: Vec<Tensor> = images.iter().map(|p| read_image(p, m.in_channels, m.resolution, &device)).collect::<deq_ddim::Result<_>>()?;
                Tensor::cat(&t, 0)?
            } else {
                anyhow::ensure!(test_digits > 0, "give --image FILE (repeatable) or --test-digits N");
                anyhow::ensure!(cfg.data.dataset != deq_ddim::config::Dataset::Folder, "--test-digits: a folder dataset has no test split; give --image FILE");
                let ds = load_dataset(&cfg, false)?;
                anyhow::ensure!(test_digits <= ds.len(), "--test-digits {test_digits}: the test set has {}", ds.len());
                let px: Vec<f32> = (0..test_digits).flat_map(|i| ds.image(i).iter().map(|&v| v as f32 / 127.5 - 1.0).collect::<Vec<_>>()).collect();
                Tensor::from_vec(px, (test_digits, m.in_channels, m.resolution, m.resolution), &device)?
            }
            .to_dtype(dtype_of(&cfg))?;
            let seed = model.seed;
            deq_train::run_on_pool(move || -> Result<()> {
                let schedule = cfg.diffusion.schedule()?;
                let noise = DeqRng::new(seed).randn(target.dims4()?, target.dtype(), target.device())?;
                let mut lines = Vec::new();
                let started = Instant::now();
                let ((res, peak), _) = (deq_train::memory::peak_during(|| {
                    invert(&unet, &schedule, &cfg.invert, &target, Some(&noise), |r| {
                        tracing::info!("{}", serde_json::to_string(r).unwrap_or_default());
                        lines.push(serde_json::to_string(r).unwrap_or_default());
                    })
                }), ());
                let res = res?;
                let last = res.trace.last().expect("one iteration");
                let both = Tensor::cat(&[&target, &res.images], 0)?;
                write_grid(&grid, &both, target.dim(0)?)?;
                if let Some(p) = &trace {
                    std::fs::write(p, lines.join("\n") + "\n").with_context(|| format!("writing {}", p.display()))?;
                }
                let best = res.trace.iter().map(|r| r.mse).fold(f64::INFINITY, f64::min);
                println!("{}", serde_json::json!({"method": cfg.invert.method, "images": target.dim(0)?, "iters": last.iter, "seconds": started.elapsed().as_secs_f64(), "final_mse": last.mse, "best_mse": best, "mse_per_image": res.mse_per_image, "peak_heap_mb": peak as f64 / 1e6, "grid": grid.display().to_string()}));
                Ok(())
            })
        }
        Cmd::Compare { model, steps, count, eta, json } => {
            let (cfg, unet, device, _, _) = open_model(&model)?;
            anyhow::ensure!(count > 0 && !steps.is_empty(), "--count and --steps must be positive");
            let seed = model.seed;
            deq_train::run_on_pool(move || -> Result<()> {
                let schedule = cfg.diffusion.schedule()?;
                let bs = cfg.sample.batch_size;
                let mut lines = Vec::new();
                for &t in &steps {
                    let mut check = cfg.clone();
                    (check.sample.steps, check.sample.eta) = (t, eta);
                    check.validate().map_err(anyhow::Error::msg)?;
                    let (mut diff, mut rounds, mut evals, mut s_seq, mut s_deq, mut worst) = (0f64, Vec::new(), 0usize, 0f64, 0f64, 0f64);
                    let (mut seq_rounds, mut seq_evals) = (0usize, 0usize);
                    let (mut trace, mut per_batch, mut start_rounds) = (Vec::new(), Vec::new(), 0);
                    let largest_diff = |x: &Tensor, y: &Tensor| -> candle_core::Result<f64> { (x - y)?.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>() };
                    for (b, start) in (0..count).step_by(bs).enumerate() {
                        let n = bs.min(count - start);
                        let x_t = batch_latents(&cfg, seed, b, n, &device)?;
                        let mut req = SampleRequest::from_config(&cfg, SamplerKind::Ddim);
                        (req.steps, req.eta) = (t, eta);
                        let a = sample_batch(&unet, &schedule, &req, &x_t, seed.wrapping_add(b as u64))?;
                        req.sampler = SamplerKind::Deq;
                        let mut per_round = Vec::new();
                        let d = sample_batch_observed(&unet, &schedule, &req, &x_t, seed.wrapping_add(b as u64), &mut |x| {
                            per_round.push(largest_diff(x, &a.images)?);
                            Ok(())
                        })?;
                        // After its last round, a batch that stopped early counts with its returned images.
                        let last = largest_diff(&a.images, &d.images)?;
                        // Rounds before the solver's first (the start's model call).
                        start_rounds = d.stats.rounds - per_round.len();
                        per_batch.push((per_round, last));
                        diff = diff.max(last);
                        rounds.push(d.stats.rounds);
                        (seq_rounds, seq_evals) = (a.stats.rounds, seq_evals + a.stats.model_evals);
                        evals += d.stats.model_evals;
                        s_seq += a.stats.seconds;
                        s_deq += d.stats.seconds;
                        worst = worst.max(d.stats.residual);
                        if trace.is_empty() {
                            trace = d.stats.residual_trace.clone();
                        }
                    }
                    // The largest difference over every image after each round (a batch that
                    // stopped early counts with its returned images from then on).
                    let most = per_batch.iter().map(|(r, _)| r.len()).max().unwrap_or(0);
                    let round_diff: Vec<f64> = (0..most).map(|r| per_batch.iter().map(|(v, last)| v.get(r).copied().unwrap_or(*last)).fold(0.0, f64::max)).collect();
                    let line = serde_json::json!({"steps": t, "count": count, "eta": eta, "max_abs_diff": diff, "deq_rounds": rounds, "deq_model_evals": evals, "ddim_rounds": seq_rounds, "ddim_model_evals": seq_evals,
                        "ddim_seconds": s_seq, "deq_seconds": s_deq, "max_residual": worst, "residual_trace_first_batch": trace,
                        "max_abs_diff_per_round": round_diff, "rounds_to_1e-3": round_diff.iter().position(|&d| d <= 1e-3).map(|r| r + 1 + start_rounds), "init": cfg.sample.deq.init, "picard_prefix": cfg.sample.deq.picard_prefix, "solver": cfg.sample.deq.solver, "tol": cfg.sample.deq.tol, "max_iter": cfg.sample.deq.max_iter});
                    println!("{line}");
                    lines.push(line.to_string());
                }
                if let Some(p) = &json {
                    std::fs::write(p, lines.join("\n") + "\n").with_context(|| format!("writing {}", p.display()))?;
                }
                Ok(())
            })
        }
        Cmd::Plot(p) => Ok(deq_train::plot::run(&p, DEFAULT_RUN)?),
    }
}
