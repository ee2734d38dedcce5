//! Graph-classification training with stratified k-fold cross-validation (the protocol of the
//! IGNN paper's TU experiments): minibatches of graphs as disjoint unions, cross-entropy, Adam.
//! The score of a fold is its test accuracy after the last epoch (no selection on the test
//! fold). With an output folder, `metrics.jsonl` gets one record per epoch and fold,
//! `folds.jsonl` one per finished fold, and `fold-<k>/` the fold's final model; `resume`
//! skips the folds already in `folds.jsonl`.

use crate::graph::{EdgeTensors, Graph};
use crate::graph_model::GraphClassifier;
use crate::train::{normalize, RunOptions};
use crate::tu::GraphDataset;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use deq_train::{check_finite, Adam, Checkpointer, MetricsWriter, Progress};
use serde::{Deserialize, Serialize};

/// Settings of a graph-classification run (`[train]` when `data.task = "tu"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphTrainConfig {
    /// Hidden features of every implicit layer and of the MLP.
    pub hidden: usize,
    /// Implicit layers (the zoo: 3).
    pub layers: usize,
    /// Well-posedness bound (0 disables the projection).
    pub kappa: f64,
    /// Dropout in the MLP head.
    pub dropout: f64,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam weight decay (coupled).
    pub weight_decay: f64,
    /// Epochs per fold.
    pub epochs: usize,
    /// Graphs per minibatch.
    pub batch_size: usize,
    /// Folds of the cross-validation.
    pub folds: usize,
    /// Run only this fold (1-based); all folds when absent.
    pub fold: Option<usize>,
    /// Seed of the folds, initialisation, dropout and shuffling.
    pub seed: u64,
    /// `aug_normalized` or `raw` adjacency.
    pub adjacency: String,
    /// Add the `Omega_2 U` term in every implicit layer.
    pub skip_input: bool,
    /// Clip each parameter's gradient norm (0: off).
    pub clip_per_param: f64,
    /// NaN or Inf in the forward solve, the loss, the adjoint solve or the gradient: `stop`
    /// (default) or `skip` the minibatch.
    pub on_nonfinite: deq_train::faults::OnNonFinite,
    /// With `on_nonfinite = "skip"`: a fold stops the run once more minibatches than this
    /// were skipped in it.
    pub max_skipped: usize,
}

impl Default for GraphTrainConfig {
    fn default() -> Self {
        Self {
            hidden: 64,
            layers: 3,
            kappa: 0.9,
            dropout: 0.5,
            lr: 0.01,
            weight_decay: 0.0,
            epochs: 100,
            batch_size: 32,
            folds: 10,
            fold: None,
            seed: 0,
            adjacency: "aug_normalized".into(),
            skip_input: true,
            clip_per_param: 0.0,
            on_nonfinite: deq_train::faults::OnNonFinite::Stop,
            max_skipped: 10,
        }
    }
}

/// Result of one fold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FoldResult {
    /// Fold number (1-based).
    pub fold: usize,
    /// Training accuracy after the last epoch.
    pub train_acc: f64,
    /// Test accuracy after the last epoch.
    pub test_acc: f64,
    /// Mean forward NFE per test batch (all layers).
    pub nfe: f64,
    /// Seconds for the fold.
    pub seconds: f64,
}

/// Result of the cross-validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CvResult {
    /// Every fold run.
    pub folds: Vec<FoldResult>,
    /// Mean test accuracy.
    pub mean: f64,
    /// Standard deviation of the test accuracy (population).
    pub std: f64,
}

/// Stratified folds: the graphs of each class are shuffled with `seed` and dealt round-robin,
/// continuing across classes, so every fold gets a near-equal share of every class.
pub fn stratified_folds(labels: &[u32], k: usize, seed: u64) -> Vec<Vec<usize>> {
    let k = k.max(1);
    let mut rng = DeqRng::new(seed);
    let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut folds = vec![Vec::new(); k];
    let mut next = 0;
    for c in 0..classes {
        let mut ids: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] as usize == c).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for id in ids {
            folds[next % k].push(id);
            next += 1;
        }
    }
    folds.iter_mut().for_each(|f| f.sort_unstable());
    folds
}

/// The normalised graphs of a dataset with their `lambda_pf`.
struct Prepared {
    graphs: Vec<(Graph, f64)>,
}

/// A minibatch as tensors.
struct Batch {
    u: Tensor,
    a: EdgeTensors,
    lambda: f64,
    graph_of: Tensor,
    labels: Tensor,
    count: usize,
}

fn batch(ds: &GraphDataset, prep: &Prepared, ids: &[usize], dev: &Device) -> Result<Batch> {
    let gs: Vec<&Graph> = ids.iter().map(|&i| &prep.graphs[i].0).collect();
    let (union, owner) = Graph::disjoint_union(&gs);
    let lambda = ids.iter().map(|&i| prep.graphs[i].1).fold(0.0, f64::max);
    let feats: Vec<f32> = ids.iter().flat_map(|&i| ds.graphs[i].features.iter().copied()).collect();
    let labels: Vec<u32> = ids.iter().map(|&i| ds.graphs[i].label).collect();
    Ok(Batch {
        u: Tensor::from_vec(feats, (union.n, ds.feature_dim), dev)?,
        a: union.tensors(DType::F32, dev)?,
        lambda,
        graph_of: Tensor::from_vec(owner, union.n, dev)?,
        labels: Tensor::from_vec(labels, ids.len(), dev)?,
        count: ids.len(),
    })
}

fn accuracy(model: &GraphClassifier, batches: &[Batch]) -> Result<(f64, f64, deq_train::SolverMetrics)> {
    let (mut correct, mut total, mut nfe) = (0usize, 0usize, 0usize);
    let mut solver = deq_train::SolverMetrics::default();
    for b in batches {
        let (logits, solves) = model.forward(&b.u, &b.a, b.lambda, &b.graph_of, b.count, None)?;
        correct += deq_train::topk_correct(&logits, &b.labels, 1)?;
        total += b.count;
        nfe += solves.nfe();
        solves.add_forward_to(&mut solver);
    }
    Ok((correct as f64 / total.max(1) as f64, nfe as f64 / batches.len().max(1) as f64, solver))
}

/// Runs the cross-validation of `cfg` on `ds`. `on_epoch(fold, epoch, mean loss)` is called
/// after every epoch.
pub fn train_graphs(ds: &GraphDataset, cfg: &GraphTrainConfig, deq: &DeqConfig, opts: &RunOptions, mut on_epoch: impl FnMut(usize, usize, f64)) -> Result<CvResult> {
    anyhow::ensure!(!ds.graphs.is_empty(), "the dataset has no graphs");
    anyhow::ensure!(opts.device.is_cpu(), "graph classification (TU) runs on the CPU only; `--device {:?}` cannot be honoured", opts.device);
    let world = deq_train::DistContext::from_env()?.world_size;
    anyhow::ensure!(world == 1, "WORLD_SIZE = {world}: graph classification (TU) runs in one process (data parallelism covers ignn's node tasks with train.inductive = true)");
    anyhow::ensure!(cfg.folds >= 2 || cfg.fold.is_none(), "train.folds must be at least 2");
    let dev = Device::Cpu;
    let objective = deq_train::DeqObjective::new(deq, cfg.seed)?;
    let prep = Prepared { graphs: ds.graphs.iter().map(|g| normalize(&g.graph, &cfg.adjacency)).collect::<Result<_>>()? };
    let labels: Vec<u32> = ds.graphs.iter().map(|g| g.label).collect();
    let folds = stratified_folds(&labels, cfg.folds, cfg.seed);
    let mut done: Vec<FoldResult> = Vec::new();
    let mut lock = None;
    let mut metrics = match &opts.out_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            lock = Some(deq_train::run_lock::RunLock::acquire(d)?);
            let fp = d.join("folds.jsonl");
            if opts.resume && fp.exists() {
                let text = std::fs::read_to_string(&fp).with_context(|| format!("reading {}", fp.display()))?;
                for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    done.push(serde_json::from_str(l).with_context(|| format!("{}:{}", fp.display(), i + 1))?);
                }
            }
            Some((MetricsWriter::open(d.join("metrics.jsonl"))?, MetricsWriter::open(fp)?))
        }
        None => None,
    };
    let todo: Vec<usize> = match cfg.fold {
        Some(f) => {
            anyhow::ensure!((1..=cfg.folds).contains(&f), "train.fold = {f} is not in 1..={}", cfg.folds);
            vec![f]
        }
        None => (1..=cfg.folds).collect(),
    };
    for k in todo {
        if done.iter().any(|r| r.fold == k) {
            tracing::info!(fold = k, "already done, skipped");
            continue;
        }
        let start = std::time::Instant::now();
        let test_ids = &folds[k - 1];
        let train_ids: Vec<usize> = (0..ds.graphs.len()).filter(|i| test_ids.binary_search(i).is_err()).collect();
        // The fold's own stream: initialisation, dropout and shuffling.
        let mut rng = DeqRng::new(cfg.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let model = GraphClassifier::new(ds.feature_dim, cfg.hidden, ds.classes, cfg.layers, cfg.kappa, cfg.dropout, cfg.skip_input, deq.clone(), &mut rng, DType::F32, &dev)?;
        let mut opt = Adam::new(model.named_vars(), cfg.lr, (0.9, 0.999), 1e-8, cfg.weight_decay, false)?;
        let vars: Vec<_> = model.named_vars().into_iter().map(|(_, v)| v).collect();
        let bs = cfg.batch_size.max(1);
        let steps_per_epoch = train_ids.len().div_ceil(bs);
        let test_batches: Vec<Batch> = test_ids.chunks(bs).map(|c| batch(ds, &prep, c, &dev)).collect::<Result<_>>()?;
        let mut bar = Progress::new(format!("fold {k}/{}", cfg.folds), cfg.epochs, true);
        let mut order = train_ids.clone();
        // A stopped fold starts again on resume, so its skipped count starts at zero.
        let mut guard = deq_train::faults::FaultGuard::new(cfg.on_nonfinite, cfg.max_skipped, 0);
        let single = deq_train::SingleProcess::default();
        for epoch in 0..cfg.epochs {
            for i in (1..order.len()).rev() {
                order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            let (mut loss_sum, mut seen) = (0.0, 0usize);
            let mut train_solver = deq_train::SolverMetrics::default();
            for (i, ids) in order.chunks(bs).enumerate() {
                let b = batch(ds, &prep, ids, &dev)?;
                let step = epoch * steps_per_epoch + i;
                // The step's stages up to the gradient; a numerical fault in any of them stops
                // the run or skips the minibatch (train.on_nonfinite).
                let attempt = guard.run_step(&single, step, |stage| -> Result<_> {
                    stage.set("forward solve");
                    let (logits, solves) = model.forward_train(&b.u, &b.a, b.lambda, &b.graph_of, b.count, &mut rng, &objective, step)?;
                    stage.set("loss");
                    let losses = logits.iter().map(|l| candle_nn::loss::cross_entropy(l, &b.labels)).collect::<candle_core::Result<Vec<_>>>()?;
                    let (loss, lv) = crate::train::objective_loss(&objective, &losses, &solves)?;
                    check_finite("training loss", loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, step)?;
                    stage.set("backward (adjoint solve)");
                    let grads = deq_core::grad::backward(&loss)?;
                    stage.set("gradient");
                    check_finite("gradient norm", deq_train::grad_norm(&grads, &vars)?, step)?;
                    Ok((grads, solves, lv))
                })?;
                if let Some((grads, solves, lv)) = attempt {
                    crate::train::reduce_and_step(grads, &vars, cfg.clip_per_param, &mut opt, &single)?;
                    solves.add_forward_to(&mut train_solver);
                    solves.add_backward_to(&mut train_solver);
                    loss_sum += lv * b.count as f64;
                    seen += b.count;
                }
                // SIGINT/SIGTERM: stop after this step. Runs resume by folds: the folds in
                // folds.jsonl are kept, this one starts again.
                if let Some(sig) = deq_train::signals::requested() {
                    let checkpoint = opts.out_dir.as_ref().map(|d| d.join("folds.jsonl")).unwrap_or_default();
                    drop(lock.take());
                    return Err(deq_train::TrainError::Interrupted { signal: deq_train::signals::name(sig), step: step + 1, checkpoint }.into());
                }
            }
            let loss = loss_sum / seen.max(1) as f64;
            on_epoch(k, epoch, loss);
            bar.inc(1, &format!("loss {loss:.4}"));
            if let Some((m, _)) = metrics.as_mut() {
                // `step` counts epochs over all folds, so curves of successive folds follow each other.
                let mut record = serde_json::json!({"fold": k, "epoch": epoch + 1, "step": (k - 1) * cfg.epochs + epoch + 1, "train_loss": loss, "skipped_batches": guard.skipped(), "elapsed_seconds": start.elapsed().as_secs_f64()});
                train_solver.extend_record("train", &mut record);
                m.write(&record)?;
            }
        }
        let train_batches: Vec<Batch> = train_ids.chunks(bs).map(|c| batch(ds, &prep, c, &dev)).collect::<Result<_>>()?;
        let (train_acc, _, _) = accuracy(&model, &train_batches)?;
        let (test_acc, nfe, test_solver) = accuracy(&model, &test_batches)?;
        let r = FoldResult { fold: k, train_acc, test_acc, nfe, seconds: start.elapsed().as_secs_f64() };
        tracing::info!(fold = k, train_acc, test_acc, nfe, "fold done");
        if let (Some((_, f)), Some(d)) = (metrics.as_mut(), &opts.out_dir) {
            let ck = Checkpointer::new(d.join(format!("fold-{k}")), 1)?;
            let tensors: Vec<(String, Tensor)> = model.named_vars().into_iter().map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone())).collect();
            ck.save(cfg.epochs, &tensors, serde_json::json!({"fold": k, "result": r, "config": serde_json::to_value(cfg)?, "skipped_batches": guard.skipped()}))?;
            let mut record = serde_json::to_value(r)?;
            test_solver.extend_record("test", &mut record);
            f.write(&record)?;
        }
        done.push(r);
    }
    done.sort_by_key(|r| r.fold);
    let accs: Vec<f64> = done.iter().map(|r| r.test_acc).collect();
    let mean = accs.iter().sum::<f64>() / accs.len().max(1) as f64;
    let std = (accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / accs.len().max(1) as f64).sqrt();
    Ok(CvResult { folds: done, mean, std })
}

/// Evaluates a fold's saved model (`fold-<k>/` folder or its `latest.json`) on that fold's
/// test graphs, rebuilding the folds from `cfg` (which must be the training configuration).
pub fn evaluate_fold(ds: &GraphDataset, cfg: &GraphTrainConfig, deq: &DeqConfig, checkpoint: &std::path::Path) -> Result<FoldResult> {
    let dev = Device::Cpu;
    let json = if checkpoint.is_dir() { checkpoint.join("latest.json") } else { checkpoint.to_path_buf() };
    let ck = Checkpointer::load(&json, &dev)?;
    let k = ck.meta["fold"].as_u64().with_context(|| format!("{}: no `fold` in the checkpoint", json.display()))? as usize;
    anyhow::ensure!((1..=cfg.folds).contains(&k), "{}: fold {k} is not in 1..={} (train.folds)", json.display(), cfg.folds);
    let start = std::time::Instant::now();
    let prep = Prepared { graphs: ds.graphs.iter().map(|g| normalize(&g.graph, &cfg.adjacency)).collect::<Result<_>>()? };
    let labels: Vec<u32> = ds.graphs.iter().map(|g| g.label).collect();
    let folds = stratified_folds(&labels, cfg.folds, cfg.seed);
    let model = GraphClassifier::new(ds.feature_dim, cfg.hidden, ds.classes, cfg.layers, cfg.kappa, cfg.dropout, cfg.skip_input, deq.clone(), &mut DeqRng::new(0), DType::F32, &dev)?;
    deq_train::load_vars(&model.named_vars(), &ck, "model.")?;
    let bs = cfg.batch_size.max(1);
    let test: Vec<Batch> = folds[k - 1].chunks(bs).map(|c| batch(ds, &prep, c, &dev)).collect::<Result<_>>()?;
    let train_ids: Vec<usize> = (0..ds.graphs.len()).filter(|i| folds[k - 1].binary_search(i).is_err()).collect();
    let train: Vec<Batch> = train_ids.chunks(bs).map(|c| batch(ds, &prep, c, &dev)).collect::<Result<_>>()?;
    let (train_acc, _, _) = accuracy(&model, &train)?;
    let (test_acc, nfe, _) = accuracy(&model, &test)?;
    Ok(FoldResult { fold: k, train_acc, test_acc, nfe, seconds: start.elapsed().as_secs_f64() })
}
