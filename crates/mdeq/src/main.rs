//! `mdeq`: train, evaluate and run multiscale DEQ classifiers.
//!
//! `cargo run --release -p mdeq -- train` trains the default configuration
//! (`configs/mdeq/mnist-small.toml`) on the MNIST copy under `datasets/mnist`.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use deq_core::DeqArgs;
use mdeq::config::{RunConfig, MNIST_SMALL};
use mdeq::train::{evaluate, load_split, load_trained, make_loader, predict, train, RunOptions};
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
    /// Train a model (default: MDEQ-small on MNIST).
    Train {
        #[command(flatten)]
        common: Common,
        /// Continue from the latest checkpoint in the output folder.
        #[arg(long)]
        resume: bool,
        /// Stop after this many optimiser steps (smoke tests).
        #[arg(long, default_value_t = 0)]
        max_steps: usize,
    },
    /// Evaluate the latest checkpoint of a run on the test split.
    Eval {
        #[command(flatten)]
        common: Common,
    },
    /// Print class probabilities for image files (PNG/JPEG).
    Predict {
        #[command(flatten)]
        common: Common,
        /// Images to classify.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// Run configuration (TOML with [model], [deq], [train], [data]); default: mnist-small.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder (metrics.jsonl, checkpoints/, config.toml); default: runs/<config name>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Dataset folder (overrides data.dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override train.epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Override train.batch_size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Override train.lr.
    #[arg(long)]
    lr: Option<f64>,
    /// Override train.seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override train.train_limit (first N training images).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Override train.test_limit (first N test images).
    #[arg(long)]
    test_limit: Option<usize>,
    /// Override train.threads.
    #[arg(long)]
    threads: Option<usize>,
    /// DEQ options with TorchDEQ's flag names (override [deq]).
    #[command(flatten)]
    deq: DeqArgs,
}

impl Common {
    fn resolve(&self) -> Result<(RunConfig, PathBuf)> {
        let (mut cfg, name) = match &self.config {
            Some(p) => (RunConfig::from_file(p)?, p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into())),
            None => {
                let p = PathBuf::from("configs/mdeq/mnist-small.toml");
                if p.exists() {
                    (RunConfig::from_file(&p)?, "mnist-small".to_string())
                } else {
                    (RunConfig::from_toml(MNIST_SMALL, "built-in mnist-small")?, "mnist-small".to_string())
                }
            }
        };
        let t = &mut cfg.train;
        if let Some(v) = self.epochs { t.epochs = v; }
        if let Some(v) = self.batch_size { t.batch_size = v; }
        if let Some(v) = self.lr { t.lr = v; }
        if let Some(v) = self.seed { t.seed = v; }
        if let Some(v) = self.train_limit { t.train_limit = v; }
        if let Some(v) = self.test_limit { t.test_limit = v; }
        if let Some(v) = self.threads { t.threads = v; }
        if let Some(d) = &self.data_dir {
            cfg.data.dir = d.display().to_string();
        }
        self.deq.apply(&mut cfg.deq).context("DEQ flags")?;
        cfg.validate().map_err(anyhow::Error::msg).context("configuration after command-line overrides")?;
        let out = self.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("mdeq-{name}")));
        Ok((cfg, out))
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let common = match &cli.cmd {
        Cmd::Train { common, .. } | Cmd::Eval { common } | Cmd::Predict { common, .. } => common,
    };
    let (cfg, out) = common.resolve()?;
    deq_train::runtime::configure_cpu(Some(cfg.train.threads));
    deq_train::run_on_pool(move || -> Result<()> {
        match cli.cmd {
            Cmd::Train { resume, max_steps, .. } => {
                let s = train(&cfg, &RunOptions { out_dir: out.clone(), resume, max_steps })?;
                println!(
                    "{}",
                    serde_json::json!({"test_acc": s.test.accuracy, "test_loss": s.test.loss, "mean_nfe": s.test.mean_nfe,
                        "mean_rel_residual": s.test.mean_rel_residual, "params": s.params, "seconds": s.seconds, "out": out.display().to_string()})
                );
            }
            Cmd::Eval { .. } => {
                let model = load_trained(&cfg, &out)?;
                let ds = Arc::new(load_split(&cfg, false)?);
                let loader = make_loader(&cfg, ds, false, Default::default())?;
                let s = evaluate(&model, &loader, true)?;
                println!("{}", serde_json::json!({"test_acc": s.accuracy, "test_loss": s.loss, "mean_nfe": s.mean_nfe, "mean_rel_residual": s.mean_rel_residual, "n": s.n}));
            }
            Cmd::Predict { files, .. } => {
                let model = load_trained(&cfg, &out)?;
                let ds = load_split(&cfg, false).ok();
                let size = ds.map(|d| (d.height, d.width)).unwrap_or((cfg.data.image_size, cfg.data.image_size));
                let probs = predict(&cfg, &model, &files, size)?;
                for (f, p) in files.iter().zip(probs) {
                    let best = p.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
                    println!("{}", serde_json::json!({"file": f.display().to_string(), "class": best.0, "probs": p}));
                }
            }
        }
        Ok(())
    })
}
