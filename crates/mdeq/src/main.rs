//! `mdeq`: train, evaluate and run multiscale DEQ classifiers.
//!
//! `cargo run --release -p mdeq -- train` trains the default configuration
//! (`configs/mdeq/mnist-small.toml`) on the MNIST copy under `datasets/mnist`. Every flag
//! follows the convention of `deq_train::cli` (`--config`, `--set`, TorchDEQ's flags, `--out`,
//! `--resume`, `--seed`, `--threads`, `--device`, `--dry-run`); `RUST_LOG` selects log lines.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use deq_train::cli::{init_logging, RunDirArgs, TrainArgs};
use deq_train::plot::PlotArgs;
use mdeq::config::{RunConfig, MNIST_SMALL};
use mdeq::train::{data_dir, evaluate, load_split, load_trained, make_loader, predict, train, RunOptions};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(name = "mdeq", version, about = "Multiscale deep equilibrium models for image classification")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train a model (default: configs/mdeq/mnist-small.toml, MDEQ-small on MNIST).
    Train {
        #[command(flatten)]
        args: TrainArgs,
        /// Stop after this many optimiser steps in total (smoke runs; 0: no limit).
        #[arg(long, default_value_t = 0)]
        max_steps: usize,
    },
    /// Evaluate the latest checkpoint of a run on the test split (the run's saved configuration).
    Eval {
        #[command(flatten)]
        run: RunDirArgs,
    },
    /// Print class probabilities for image files (PNG/JPEG) with a trained run.
    Predict {
        #[command(flatten)]
        run: RunDirArgs,
        /// Images to classify.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Draw training curves and solver diagnostics of a run folder as PNG files.
    Plot(PlotArgs),
}

const DEFAULT_CONFIG: &str = "configs/mdeq/mnist-small.toml";
const DEFAULT_RUN: &str = "runs/mdeq-mnist-small";

/// The run folder of `eval`/`predict`: `--out`, or the default run's folder.
fn run_dir(run: &RunDirArgs) -> PathBuf {
    run.out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_RUN))
}

/// What `--dry-run` prints: the resolved configuration and where things are.
fn dry_run(cfg: &RunConfig, source: &str, out: &std::path::Path) -> Result<()> {
    let data = data_dir(&cfg.data)?;
    anyhow::ensure!(data.is_dir(), "data folder {} does not exist", data.display());
    deq_train::DeqObjective::new(&cfg.deq, cfg.train.seed)?;
    Ok(deq_train::cli::print_dry_run(source, out, &data.display().to_string(), cfg)?)
}

fn main() -> std::process::ExitCode {
    deq_train::signals::exit_status(run())
}

fn run() -> Result<()> {
    init_logging();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Train { args, max_steps } => {
            // SIGINT/SIGTERM: finish the step, checkpoint, exit 75 (resume with --resume).
            deq_train::signals::install()?;
            let loaded = args.config.load::<RunConfig>(Some(DEFAULT_CONFIG), Some(MNIST_SMALL), args.seed)?;
            let (source, out) = (loaded.source(), args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("mdeq-{}", loaded.name))));
            let cfg = loaded.config;
            let device = args.runtime.device.open()?;
            if args.dry_run {
                return dry_run(&cfg, &source, &out);
            }
            let threads = args.runtime.configure(cfg.train.threads);
            tracing::info!(threads, "training into {}", out.display());
            deq_train::run_on_pool(move || -> Result<()> {
                let s = train(&cfg, &RunOptions { out_dir: out.clone(), resume: args.resume, max_steps, device })?;
                println!(
                    "{}",
                    serde_json::json!({"test_acc": s.test.accuracy, "test_loss": s.test.loss, "mean_nfe": s.test.mean_nfe,
                        "mean_rel_residual": s.test.mean_rel_residual, "params": s.params, "seconds": s.seconds, "out": out.display().to_string()})
                );
                Ok(())
            })
        }
        Cmd::Eval { run } => {
            let dir = run_dir(&run);
            let saved = run.config.load_saved::<RunConfig>(&dir)?;
            let (source, cfg) = (saved.source(), saved.config);
            let device = run.runtime.device.open()?;
            if run.dry_run {
                anyhow::ensure!(dir.join("checkpoints").join("latest.json").exists(), "{}: no checkpoints/latest.json", dir.display());
                return dry_run(&cfg, &source, &dir);
            }
            run.runtime.configure(cfg.train.threads);
            deq_train::run_on_pool(move || -> Result<()> {
                let model = load_trained(&cfg, &dir, &device)?;
                let ds = Arc::new(load_split(&cfg, false)?);
                let loader = make_loader(&cfg, ds, false, Default::default())?;
                let s = evaluate(&model, &loader, true)?;
                println!("{}", serde_json::json!({"test_acc": s.accuracy, "test_loss": s.loss, "mean_nfe": s.mean_nfe, "mean_rel_residual": s.mean_rel_residual, "n": s.n}));
                Ok(())
            })
        }
        Cmd::Predict { run, files } => {
            let dir = run_dir(&run);
            let saved = run.config.load_saved::<RunConfig>(&dir)?;
            let (source, cfg) = (saved.source(), saved.config);
            let device = run.runtime.device.open()?;
            for f in &files {
                anyhow::ensure!(f.is_file(), "{}: no such image file", f.display());
            }
            if run.dry_run {
                return dry_run(&cfg, &source, &dir);
            }
            run.runtime.configure(cfg.train.threads);
            deq_train::run_on_pool(move || -> Result<()> {
                let model = load_trained(&cfg, &dir, &device).with_context(|| format!("loading the run in {}", dir.display()))?;
                let ds = load_split(&cfg, false).ok();
                let size = ds.map(|d| (d.height, d.width)).unwrap_or((cfg.data.image_size, cfg.data.image_size));
                let probs = predict(&cfg, &model, &files, size)?;
                for (f, p) in files.iter().zip(probs) {
                    let best = p.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
                    println!("{}", serde_json::json!({"file": f.display().to_string(), "class": best.0, "probs": p}));
                }
                Ok(())
            })
        }
        Cmd::Plot(p) => Ok(deq_train::plot::run(&p, DEFAULT_RUN)?),
    }
}
