//! `ignn`: train and evaluate implicit graph neural networks (and the GCN baseline) on node
//! classification (chains, Planetoid, GraphSAGE/PPI) and graph classification (TU).
//! `cargo run --release -p ignn -- train --config configs/ignn/chains.toml --set data.length=50`.
//! Every flag follows the convention of `deq_train::cli`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use deq_train::cli::{init_logging, RunDirArgs, TrainArgs};
use deq_train::plot::PlotArgs;
use ignn::config::{data_dir, RunConfig};
use ignn::graph_train::{evaluate_fold, train_graphs};
use ignn::train::{build_model, evaluate, full_graph, metric_name, train_nodes, NodeTask, RunOptions};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "ignn", version, about = "Implicit graph neural networks: train and evaluate")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train (default: configs/ignn/chains.toml); prints the final scores as one JSON line.
    /// The architecture is `train.model` (`ignn`, `ignn_stack` or `gcn`: `--set train.model=gcn`).
    Train {
        #[command(flatten)]
        args: TrainArgs,
    },
    /// Evaluate a trained run with its saved configuration; prints the scores as one JSON line.
    Eval {
        #[command(flatten)]
        run: RunDirArgs,
        /// A particular checkpoint: a `latest.json`, a checkpoint folder, or for TU a
        /// `fold-<k>/` folder (default: the run's best/, else its checkpoints/).
        #[arg(long, value_name = "PATH")]
        checkpoint: Option<PathBuf>,
    },
    /// Draw training curves and solver diagnostics of a run folder as PNG files.
    Plot(PlotArgs),
}

const DEFAULT_CONFIG: &str = "configs/ignn/chains.toml";
const DEFAULT_RUN: &str = "runs/ignn-chains";

fn node_task(d: &ignn::config::DataConfig) -> Result<NodeTask> {
    Ok(match d.task.as_str() {
        "chains" => ignn::chains::generate(d.classes, d.chains_per_class, d.length, d.feature_dim, d.train_frac, d.val_frac, d.split_seed).into(),
        "planetoid" => ignn::planetoid::load_planetoid(&data_dir(d)?)?,
        "graphsage" => ignn::ppi::load_graphsage(&data_dir(d)?, &d.prefix, d.standardize)?,
        other => anyhow::bail!("data.task `{other}` is not chains, planetoid, graphsage or tu"),
    })
}

/// `--dry-run`: the data folder must exist (generated tasks need none); prints the configuration.
fn dry_run(cfg: &RunConfig, source: &str, out: &Path) -> Result<()> {
    let data = if cfg.data.task == "chains" { "generated (chains)".to_string() } else { data_dir(&cfg.data)?.display().to_string() };
    // The [deq] options that act on the loss must be able to act (the seed does not matter here).
    deq_train::DeqObjective::new(&cfg.deq, 0)?;
    Ok(deq_train::cli::print_dry_run(source, out, &data, cfg)?)
}

fn main() -> std::process::ExitCode {
    deq_train::signals::exit_status(run())
}

fn run() -> Result<()> {
    init_logging();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Train { args } => {
            // SIGINT/SIGTERM: checkpoint, then exit 75 (continue with --resume).
            deq_train::signals::install()?;
            let loaded = args.config.load::<RunConfig>(Some(DEFAULT_CONFIG), None, args.seed)?;
            let (source, out) = (loaded.source(), args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("ignn-{}", loaded.name))));
            let cfg = loaded.config;
            let device = args.runtime.device.open()?;
            if args.dry_run {
                return dry_run(&cfg, &source, &out);
            }
            let threads = args.runtime.configure(0);
            tracing::info!(threads, "training into {}", out.display());
            // In a data-parallel job rank 0 alone writes the run's files.
            if deq_train::DistContext::from_env()?.is_main() {
                deq_train::cli::save_config(&out, &cfg)?;
            }
            let opts = RunOptions { out_dir: Some(out.clone()), resume: args.resume, device };
            if cfg.data.task == "tu" {
                let tc = cfg.graph_train().with_context(|| source.clone())?;
                let ds = ignn::tu::load_tu(&data_dir(&cfg.data)?, &cfg.data.name)?;
                tracing::info!(graphs = ds.graphs.len(), classes = ds.classes, features = ds.feature_dim, "TU dataset {}", cfg.data.name);
                let r = deq_train::run_on_pool(|| train_graphs(&ds, &tc, &cfg.deq, &opts, |_, _, _| {}))?;
                println!("{}", serde_json::json!({"task": "tu", "name": cfg.data.name, "seed": tc.seed, "result": r, "out": out}));
                return Ok(());
            }
            let tc = cfg.node_train().with_context(|| source.clone())?;
            let task = node_task(&cfg.data)?;
            let r = deq_train::run_on_pool(|| train_nodes(&task, &tc, &cfg.deq, &opts, |_, _, _| {}))?;
            println!(
                "{}",
                serde_json::json!({"task": cfg.data.task, "name": cfg.data.name, "length": cfg.data.length, "model": tc.model, "seed": tc.seed, "metric": metric_name(&task.labels), "result": r, "out": out})
            );
        }
        Cmd::Eval { run, checkpoint } => {
            let dir = run.out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_RUN));
            let saved = run.config.load_saved::<RunConfig>(&dir)?;
            let (source, cfg) = (saved.source(), saved.config);
            let device = run.runtime.device.open()?;
            let target = checkpoint.unwrap_or_else(|| dir.clone());
            anyhow::ensure!(target.exists(), "{}: no such checkpoint or folder", target.display());
            if run.dry_run {
                return dry_run(&cfg, &source, &dir);
            }
            run.runtime.configure(0);
            if cfg.data.task == "tu" {
                anyhow::ensure!(device.is_cpu(), "graph classification (TU) runs on the CPU only; `--device {}` cannot be honoured", run.runtime.device);
                let tc = cfg.graph_train()?;
                let ds = ignn::tu::load_tu(&data_dir(&cfg.data)?, &cfg.data.name)?;
                let r = deq_train::run_on_pool(|| evaluate_fold(&ds, &tc, &cfg.deq, &target))?;
                println!("{}", serde_json::json!({"task": "tu", "name": cfg.data.name, "result": r}));
                return Ok(());
            }
            let tc = cfg.node_train()?;
            let task = node_task(&cfg.data)?;
            let json = if target.is_dir() {
                [target.join("best"), target.join("checkpoints"), target.clone()]
                    .iter()
                    .map(|s| s.join("latest.json"))
                    .find(|p| p.exists())
                    .with_context(|| format!("{}: no best/ or checkpoints/ with a latest.json", target.display()))?
            } else {
                target.clone()
            };
            let dev = device;
            let ck = deq_train::Checkpointer::load(&json, &dev)?;
            let r = deq_train::run_on_pool(|| -> Result<_> {
                let model = build_model(&task, &tc, &cfg.deq, &mut deq_core::rng::DeqRng::new(0), &dev)?;
                deq_train::load_vars(&model.named_vars(), &ck, "model.")?;
                let (a, lambda, u) = full_graph(&task, &tc.adjacency, &dev)?;
                let epoch = ck.meta["epoch"].as_u64().unwrap_or(0) as usize;
                Ok(evaluate(&model, &task, &u, &a, lambda, epoch, std::time::Instant::now())?.0)
            })?;
            println!("{}", serde_json::json!({"checkpoint": ck.path, "metric": metric_name(&task.labels), "result": r}));
        }
        Cmd::Plot(p) => deq_train::plot::run(&p, DEFAULT_RUN)?,
    }
    Ok(())
}
