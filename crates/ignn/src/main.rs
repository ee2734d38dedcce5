//! `ignn`: train and evaluate implicit graph neural networks (and the GCN baseline) on node
//! classification (chains, Planetoid, GraphSAGE/PPI) and graph classification (TU).
//! `cargo run --release -p ignn -- train --config configs/ignn/chains.toml --length 50`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use deq_core::DeqArgs;
use ignn::graph_train::{evaluate_fold, train_graphs};
use ignn::train::{build_model, evaluate, full_graph, metric_name, train_nodes, NodeTask, RunOptions};
use ignn::config::{data_dir, RunConfig};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "ignn", version, about = "Implicit graph neural networks: train and evaluate")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Overrides shared by `train` and `eval`.
#[derive(clap::Args, Debug)]
struct Common {
    /// Run configuration (TOML with [data], [train], [deq]).
    #[arg(long, default_value = "configs/ignn/chains.toml")]
    config: PathBuf,
    /// Override data.length (chains).
    #[arg(long)]
    length: Option<usize>,
    /// Override train.model (`ignn`, `ignn_stack` or `gcn`; node tasks).
    #[arg(long)]
    model: Option<String>,
    /// Override train.seed.
    #[arg(long)]
    seed: Option<u64>,
    /// DEQ options with TorchDEQ's flag names.
    #[command(flatten)]
    deq: DeqArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train; prints the final scores as one JSON line.
    Train {
        #[command(flatten)]
        common: Common,
        /// Override train.epochs.
        #[arg(long)]
        epochs: Option<usize>,
        /// Output folder (metrics.jsonl, checkpoints/, best/; fold-<k>/ for TU).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from the latest checkpoint in --out.
        #[arg(long)]
        resume: bool,
    },
    /// Evaluate a checkpoint (a run folder, preferring best/ over checkpoints/, a fold-<k>/
    /// folder for TU, or a latest.json); prints the scores as one JSON line.
    Eval {
        #[command(flatten)]
        common: Common,
        /// The checkpoint.
        #[arg(long)]
        checkpoint: PathBuf,
    },
}

fn load_config(c: &Common) -> Result<RunConfig> {
    let mut cfg = RunConfig::load(&c.config)?;
    if let Some(l) = c.length {
        cfg.data.length = l;
    }
    c.deq.apply(&mut cfg.deq)?;
    if let Some(m) = &c.model {
        cfg.set_train("model", toml::Value::String(m.clone()))?;
    }
    if let Some(s) = c.seed {
        cfg.set_train("seed", toml::Value::Integer(s as i64))?;
    }
    Ok(cfg)
}

fn node_task(d: &ignn::config::DataConfig, config: &Path) -> Result<NodeTask> {
    Ok(match d.task.as_str() {
        "chains" => ignn::chains::generate(d.classes, d.chains_per_class, d.length, d.feature_dim, d.train_frac, d.val_frac, d.split_seed).into(),
        "planetoid" => ignn::planetoid::load_planetoid(&data_dir(d)?)?,
        "graphsage" => ignn::ppi::load_graphsage(&data_dir(d)?, &d.prefix, d.standardize)?,
        other => anyhow::bail!("{}: data.task `{other}` is not chains, planetoid, graphsage or tu", config.display()),
    })
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    deq_train::runtime::configure_cpu(Some(2));
    match cli.cmd {
        Cmd::Train { common, epochs, out, resume } => {
            let mut cfg = load_config(&common)?;
            if let Some(e) = epochs {
                cfg.set_train("epochs", toml::Value::Integer(e as i64))?;
            }
            let opts = RunOptions { out_dir: out, resume };
            if cfg.data.task == "tu" {
                let tc = cfg.graph_train().with_context(|| common.config.display().to_string())?;
                let ds = ignn::tu::load_tu(&data_dir(&cfg.data)?, &cfg.data.name)?;
                tracing::info!(graphs = ds.graphs.len(), classes = ds.classes, features = ds.feature_dim, "TU dataset {}", cfg.data.name);
                let r = deq_train::run_on_pool(|| train_graphs(&ds, &tc, &cfg.deq, &opts, |_, _, _| {}))?;
                println!("{}", serde_json::json!({"task": "tu", "name": cfg.data.name, "seed": tc.seed, "result": r}));
                return Ok(());
            }
            let tc = cfg.node_train().with_context(|| common.config.display().to_string())?;
            let task = node_task(&cfg.data, &common.config)?;
            let r = deq_train::run_on_pool(|| train_nodes(&task, &tc, &cfg.deq, &opts, |_, _, _| {}))?;
            println!(
                "{}",
                serde_json::json!({"task": cfg.data.task, "name": cfg.data.name, "length": cfg.data.length, "model": tc.model, "seed": tc.seed, "metric": metric_name(&task.labels), "result": r})
            );
        }
        Cmd::Eval { common, checkpoint } => {
            let cfg = load_config(&common)?;
            if cfg.data.task == "tu" {
                let tc = cfg.graph_train().with_context(|| common.config.display().to_string())?;
                let ds = ignn::tu::load_tu(&data_dir(&cfg.data)?, &cfg.data.name)?;
                let r = deq_train::run_on_pool(|| evaluate_fold(&ds, &tc, &cfg.deq, &checkpoint))?;
                println!("{}", serde_json::json!({"task": "tu", "name": cfg.data.name, "result": r}));
                return Ok(());
            }
            let tc = cfg.node_train().with_context(|| common.config.display().to_string())?;
            let task = node_task(&cfg.data, &common.config)?;
            let json = if checkpoint.is_dir() {
                ["best", "checkpoints"].iter().map(|s| checkpoint.join(s).join("latest.json")).find(|p| p.exists()).with_context(|| format!("{}: no best/ or checkpoints/ with a latest.json", checkpoint.display()))?
            } else {
                checkpoint.clone()
            };
            let dev = candle_core::Device::Cpu;
            let ck = deq_train::Checkpointer::load(&json, &dev)?;
            let r = deq_train::run_on_pool(|| -> Result<_> {
                let model = build_model(&task, &tc, &cfg.deq, &mut deq_core::rng::DeqRng::new(0), &dev)?;
                deq_train::load_vars(&model.named_vars(), &ck, "model.")?;
                let (a, lambda, u) = full_graph(&task, &tc.adjacency, &dev)?;
                let epoch = ck.meta["epoch"].as_u64().unwrap_or(0) as usize;
                evaluate(&model, &task, &u, &a, lambda, epoch, std::time::Instant::now())
            })?;
            println!("{}", serde_json::json!({"checkpoint": ck.path, "metric": metric_name(&task.labels), "result": r}));
        }
    }
    Ok(())
}
