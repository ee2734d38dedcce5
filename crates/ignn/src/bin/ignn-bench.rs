//! `ignn-bench`: time of one IGNN training epoch (full-batch forward solve, implicit backward,
//! Adam step) and peak memory, on Cora (the model and solver of `configs/ignn/cora.toml`) or on
//! a random graph (`--nodes`, `--edges` directed edges as `edges / 2` random undirected pairs,
//! dense random features). Prints one JSON line; `scripts/bench_ignn_compare.sh` runs it next
//! to the PyTorch + TorchDEQ version, both on one instance written by `--write-instance`
//! (initial weights, and the random graph) so that the compared problems are identical.

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Parser;
use std::collections::HashMap;
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use deq_train::memory::{peak_during, peak_rss_bytes, CountingAlloc};
use ignn::train::{train_nodes, Labels, NodeTask, NodeTrainConfig, RunOptions};
use ignn::Graph;
use std::time::Instant;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser, Debug)]
#[command(name = "ignn-bench", about = "IGNN training-epoch time and peak memory")]
struct Args {
    /// `cora` or `random`.
    #[arg(long, default_value = "cora")]
    graph: String,
    /// Nodes of the random graph.
    #[arg(long, default_value_t = 100_000)]
    nodes: usize,
    /// Directed edges of the random graph (pairs are stored both ways).
    #[arg(long, default_value_t = 1_000_000)]
    edges: usize,
    /// Feature dimension of the random graph.
    #[arg(long, default_value_t = 32)]
    features: usize,
    /// Hidden features of the implicit layer on the random graph (Cora: the config's).
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    /// Timed epochs (after one warm-up epoch).
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Equal-work mode: fixed-point iteration with tolerance 0, this many steps forward and
    /// backward (0: the config's solvers).
    #[arg(long, default_value_t = 0)]
    fixed_iters: usize,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Write the instance (the random graph with its features and labels; the model's initial
    /// weights) to this safetensors file and exit: `scripts/bench_ignn_torch.py --instance`
    /// reads it, so that both sides train the identical problem.
    #[arg(long)]
    write_instance: Option<std::path::PathBuf>,
    /// Read the instance written by `--write-instance` (the random graph from the file; the
    /// initial weights are checked equal to the file's).
    #[arg(long)]
    instance: Option<std::path::PathBuf>,
}

/// The random task's tensors for an instance file: edges, features, labels, training nodes.
fn graph_tensors(task: &NodeTask) -> Result<Vec<(&'static str, Tensor)>> {
    let dev = Device::Cpu;
    let Labels::Single(l) = &task.labels else { anyhow::bail!("the random task is single-label") };
    Ok(vec![
        ("graph.src", Tensor::new(task.graph.src.as_slice(), &dev)?),
        ("graph.dst", Tensor::new(task.graph.dst.as_slice(), &dev)?),
        ("graph.weight", Tensor::new(task.graph.weight.as_slice(), &dev)?),
        ("features", Tensor::from_slice(&task.features, (task.graph.n, task.feature_dim), &dev)?),
        ("labels", Tensor::new(l.as_slice(), &dev)?),
        ("train", Tensor::new(task.split.0.as_slice(), &dev)?),
    ])
}

/// The random task stored in an instance file.
fn task_from_instance(t: &mut HashMap<String, Tensor>, path: &std::path::Path) -> Result<NodeTask> {
    let mut get = |k: &str| deq_train::bench_instance::take(t, k, path);
    let features = get("features")?;
    let (n, p) = features.dims2()?;
    let graph = Graph { n, src: get("graph.src")?.to_vec1()?, dst: get("graph.dst")?.to_vec1()?, weight: get("graph.weight")?.to_vec1()? };
    anyhow::ensure!(graph.src.iter().chain(&graph.dst).all(|&v| (v as usize) < n), "{}: edge ids beyond {n} nodes", path.display());
    let labels: Vec<u32> = get("labels")?.to_vec1()?;
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let train: Vec<u32> = get("train")?.to_vec1()?;
    let val: Vec<u32> = (0..n as u32).filter(|i| i % 10 == 1).collect();
    let test: Vec<u32> = (0..n as u32).filter(|i| i % 10 >= 2).collect();
    Ok(NodeTask { graph, features: features.flatten_all()?.to_vec1()?, feature_dim: p, labels: Labels::Single(labels), classes, split: (train, val, test) })
}

fn random_task(n: usize, e: usize, p: usize, seed: u64) -> Result<NodeTask> {
    let mut rng = DeqRng::new(seed);
    let pairs: Vec<(u32, u32)> = (0..e / 2).map(|_| ((rng.next_u64() % n as u64) as u32, (rng.next_u64() % n as u64) as u32)).collect();
    let graph = Graph::from_edges(n, &pairs).map_err(anyhow::Error::msg)?.symmetrized();
    let features: Vec<f32> = (0..n * p).map(|_| rng.normal() as f32).collect();
    let classes = 8;
    let labels: Vec<u32> = (0..n).map(|_| (rng.next_u64() % classes as u64) as u32).collect();
    let train: Vec<u32> = (0..n as u32).filter(|i| i % 10 == 0).collect();
    let val: Vec<u32> = (0..n as u32).filter(|i| i % 10 == 1).collect();
    let test: Vec<u32> = (0..n as u32).filter(|i| i % 10 >= 2).collect();
    Ok(NodeTask { graph, features, feature_dim: p, labels: Labels::Single(labels), classes, split: (train, val, test) })
}

fn main() -> Result<()> {
    let args = Args::parse();
    deq_train::runtime::configure_cpu(Some(args.threads));
    // Before any data exists: the process's own baseline.
    let rss_at_start = deq_train::memory::current_rss_bytes();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cora_cfg = ignn::config::RunConfig::load(&repo.join("configs/ignn/cora.toml"))?;
    let mut deq: DeqConfig = cora_cfg.deq.clone();
    if args.fixed_iters > 0 {
        deq.f_solver = "fixed_point_iter".into();
        deq.b_solver = "fixed_point_iter".into();
        (deq.f_max_iter, deq.b_max_iter, deq.f_tol, deq.b_tol) = (args.fixed_iters, args.fixed_iters, 0.0, 0.0);
    }
    let (task, mut cfg) = match args.graph.as_str() {
        "cora" => (ignn::planetoid::load_planetoid(&repo.join("datasets/cora"))?, cora_cfg.node_train()?),
        "random" => {
            let t = random_task(args.nodes, args.edges, args.features, 7)?;
            let c = NodeTrainConfig { hidden: args.hidden, ..cora_cfg.node_train()? };
            (t, c)
        }
        other => anyhow::bail!("--graph `{other}` is not cora or random"),
    };
    // The model train_nodes builds: its initialisation draws from `cfg.seed` first.
    let initial = ignn::train::build_model(&task, &cfg, &deq, &mut DeqRng::new(cfg.seed), &Device::Cpu)?;
    if let Some(path) = &args.write_instance {
        deq_train::bench_instance::save(path, &initial.named_vars(), if args.graph == "random" { graph_tensors(&task)? } else { Vec::new() })?;
        return Ok(());
    }
    let task = match &args.instance {
        Some(path) => {
            let mut t = deq_train::bench_instance::load(path, &initial.named_vars())?;
            if args.graph == "random" { task_from_instance(&mut t, path)? } else { task }
        }
        None => task,
    };
    cfg.epochs = args.epochs + 1;
    cfg.select_by_val = false;
    cfg.eval_every = usize::MAX;
    let (nodes, edges) = (task.graph.n, task.graph.num_edges());
    let mut marks = Vec::new();
    let mut nfes = Vec::new();
    let t0 = Instant::now();
    let (result, peak_heap) = peak_during(|| deq_train::run_on_pool(|| train_nodes(&task, &cfg, &deq, &RunOptions::default(), |_, _, nfe| {
        marks.push(Instant::now());
        nfes.push(nfe);
    })));
    let r = result?;
    let mut times: Vec<f64> = marks.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "impl": "deq-zoo-rs", "graph": args.graph, "fixed_iters": args.fixed_iters, "nodes": nodes, "directed_edges": edges, "features": task.feature_dim,
            "hidden": cfg.hidden, "threads": args.threads, "epoch_median_s": median, "epoch_min_s": times.first(), "epochs_timed": times.len(),
            "eval_nfe": r.nfe, "train_fwd_nfe_mean": nfes.iter().skip(1).sum::<f64>() / nfes.len().saturating_sub(1).max(1) as f64, "rss_at_start_bytes": rss_at_start, "peak_heap_bytes": peak_heap, "peak_rss_bytes": peak_rss_bytes(), "total_s": t0.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
