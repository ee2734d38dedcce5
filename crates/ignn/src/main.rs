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

/// `[data]`: `task = "chains"` (generated) or `task = "planetoid"` (a folder in the
/// Planetoid text format, `dir` or `$DEQ_DATA_DIR/planetoid/<name>` or `datasets/<name>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DataConfig {
    task: String,
    name: String,
    dir: String,
    length: usize,
    chains_per_class: usize,
    classes: usize,
    feature_dim: usize,
    train_frac: f64,
    val_frac: f64,
    split_seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { task: "chains".into(), name: String::new(), dir: String::new(), length: 10, chains_per_class: 20, classes: 2, feature_dim: 100, train_frac: 0.05, val_frac: 0.1, split_seed: 42 }
    }
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
    let d = &cfg.data;
    let task = match d.task.as_str() {
        "chains" => {
            let c = chains::generate(d.classes, d.chains_per_class, d.length, d.feature_dim, d.train_frac, d.val_frac, d.split_seed);
            NodeTask { graph: c.graph, features: c.features, feature_dim: c.feature_dim, labels: c.labels, classes: c.classes, split: c.split }
        }
        "planetoid" => {
            let dir = if !d.dir.is_empty() {
                PathBuf::from(&d.dir)
            } else {
                deq_train::data::find_dataset_dir(&d.name)
                    .or_else(|| std::env::var_os("DEQ_DATA_DIR").map(|r| PathBuf::from(r).join("planetoid").join(&d.name)))
                    .with_context(|| format!("dataset `{}` not found: set data.dir or DEQ_DATA_DIR", d.name))?
            };
            ignn::planetoid::load_planetoid(&dir)?
        }
        other => anyhow::bail!("{}: data.task `{other}` is not chains or planetoid", config.display()),
    };
    let r = deq_train::run_on_pool(|| {
        train_nodes(&task, &cfg.train, &cfg.deq, |e, l| {
            if e % 200 == 0 {
                tracing::info!(epoch = e, loss = l);
            }
        })
    })?;
    println!("{}", serde_json::json!({"task": cfg.data.task, "name": cfg.data.name, "length": cfg.data.length, "model": cfg.train.model, "seed": cfg.train.seed, "result": r}));
    Ok(())
}
