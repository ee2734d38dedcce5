//! `ignn`: train implicit graph neural networks (and the GCN baseline) on node-classification
//! tasks. `cargo run --release -p ignn -- train --config configs/ignn/chains.toml --length 50`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use deq_core::{DeqArgs, DeqConfig};
use ignn::chains;
use ignn::train::{train_nodes, NodeTask, NodeTrainConfig};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "ignn", version, about = "Implicit graph neural networks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train and report final train/validation/test accuracy (one JSON line).
    Train {
        /// Run configuration (TOML with [data], [train], [deq]).
        #[arg(long, default_value = "configs/ignn/chains.toml")]
        config: PathBuf,
        /// Override data.length (chains).
        #[arg(long)]
        length: Option<usize>,
        /// Override train.model (`ignn` or `gcn`).
        #[arg(long)]
        model: Option<String>,
        /// Override train.epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Override train.seed.
        #[arg(long)]
        seed: Option<u64>,
        /// DEQ options with TorchDEQ's flag names.
        #[command(flatten)]
        deq: DeqArgs,
    },
}

/// `[data]` of a chains run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataConfig {
    task: String,
    length: usize,
    chains_per_class: usize,
    classes: usize,
    feature_dim: usize,
    train_frac: f64,
    val_frac: f64,
    split_seed: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunConfig {
    data: DataConfig,
    #[serde(default)]
    train: NodeTrainConfig,
    #[serde(default)]
    deq: DeqConfig,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    deq_train::runtime::configure_cpu(Some(2));
    let Cmd::Train { config, length, model, epochs, seed, deq } = cli.cmd;
    let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
    let mut cfg: RunConfig = toml::from_str(&text).with_context(|| format!("{}", config.display()))?;
    if let Some(l) = length {
        cfg.data.length = l;
    }
    if let Some(m) = model {
        cfg.train.model = m;
    }
    if let Some(e) = epochs {
        cfg.train.epochs = e;
    }
    if let Some(s) = seed {
        cfg.train.seed = s;
    }
    deq.apply(&mut cfg.deq)?;
    anyhow::ensure!(cfg.data.task == "chains", "{}: data.task `{}` is not supported yet (chains)", config.display(), cfg.data.task);
    let d = &cfg.data;
    let c = chains::generate(d.classes, d.chains_per_class, d.length, d.feature_dim, d.train_frac, d.val_frac, d.split_seed);
    let task = NodeTask { graph: c.graph, features: c.features, feature_dim: c.feature_dim, labels: c.labels, classes: c.classes, split: c.split };
    let r = deq_train::run_on_pool(|| {
        train_nodes(&task, &cfg.train, &cfg.deq, |e, l| {
            if e % 200 == 0 {
                tracing::info!(epoch = e, loss = l);
            }
        })
    })?;
    println!("{}", serde_json::json!({"task": "chains", "length": cfg.data.length, "model": cfg.train.model, "result": r}));
    Ok(())
}
