//! Node-level training (chains, Planetoid, PPI): full-batch on one graph (transductive), or on
//! the subgraph of the training nodes split into minibatches of connected components
//! (inductive, as the zoo's PPI loop that steps once per training graph). Single-label tasks
//! use cross-entropy and accuracy, multi-label tasks BCE with logits and micro-F1.
//!
//! With an output folder the run writes `metrics.jsonl` (one record per evaluation),
//! `checkpoints/` (every evaluation; model, Adam state, RNG state) and, when selecting by
//! validation score, `best/`; a resumed run continues bit-identically.

use crate::graph::{EdgeTensors, Graph};
use crate::model::{NodeModel, Solves};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use deq_train::data::loader::sample_rng;
use deq_train::dist::{all_reduce_sum_f64, broadcast_vars};
use deq_train::{check_finite, Adam, Checkpointer, Collective, DeqObjective, DistContext, MetricsWriter, Optimizer, Progress, SolverMetrics};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Model and optimisation settings of a node-level run (`[train]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeTrainConfig {
    /// `ignn` (one implicit layer + readout), `ignn_stack` (the zoo's 5-layer PPI model) or
    /// `gcn`.
    pub model: String,
    /// Hidden features (`nhid` of the stacked model).
    pub hidden: usize,
    /// Well-posedness bound `||W||_inf lambda_pf(A) <= kappa` (0 disables the projection).
    pub kappa: f64,
    /// Dropout before the readout (IGNN) or between the layers (GCN).
    pub dropout: f64,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam weight decay (coupled, as `torch.optim.Adam`).
    pub weight_decay: f64,
    /// Epochs.
    pub epochs: usize,
    /// Clip each parameter's gradient norm to this value (0: off).
    pub clip_per_param: f64,
    /// Seed of initialisation, dropout and minibatch order.
    pub seed: u64,
    /// `aug_normalized` ((D+I)^-1/2 (A+I) (D+I)^-1/2, as the reference) or `raw` (the
    /// adjacency as given; a directed chain is then nilpotent, `lambda_pf = 0`, and the
    /// projection leaves `W` free).
    pub adjacency: String,
    /// Add the `Omega_2 U` term (the zoo's layer; needed with `raw` so that nodes without
    /// in-edges see their own features).
    pub skip_input: bool,
    /// L2-normalise node features before the IGNN readout (the reference does).
    pub normalize_readout: bool,
    /// Dropout on the input features in training (as GCN does on Planetoid).
    pub input_dropout: f64,
    /// Report the scores at the evaluation of best validation score instead of the last.
    pub select_by_val: bool,
    /// Evaluation (and metrics and checkpoint) period in epochs; the last epoch is always
    /// evaluated.
    pub eval_every: usize,
    /// Train on the subgraph induced by the training nodes only (inductive, PPI).
    pub inductive: bool,
    /// Minibatches per epoch (inductive only): the training subgraph's connected components
    /// are dealt into this many groups, visited in a seeded random order every epoch.
    pub batches: usize,
    /// Minibatches per optimiser step and process (inductive only): the step's gradient is the
    /// mean over them (and over the processes of a data-parallel job, each of which takes its
    /// own minibatches of the step).
    pub parts_per_step: usize,
    /// What a step with NaN or Inf (in the forward solve, the loss, the adjoint solve or the
    /// gradient) or a diverging adjoint solve does: `stop` the run with a message naming the
    /// step and stage, or `skip` it (no optimiser update) and count it.
    pub on_nonfinite: deq_train::faults::OnNonFinite,
    /// With `on_nonfinite = "skip"`: the run stops once more steps than this were skipped.
    pub max_skipped: usize,
}

impl Default for NodeTrainConfig {
    fn default() -> Self {
        Self {
            on_nonfinite: deq_train::faults::OnNonFinite::Stop,
            max_skipped: 10,
            model: "ignn".into(),
            hidden: 16,
            kappa: 0.9,
            dropout: 0.5,
            lr: 0.01,
            weight_decay: 5e-4,
            epochs: 2000,
            clip_per_param: 0.5,
            seed: 42,
            adjacency: "aug_normalized".into(),
            skip_input: false,
            normalize_readout: true,
            input_dropout: 0.0,
            select_by_val: false,
            eval_every: 10,
            inductive: false,
            batches: 1,
            parts_per_step: 1,
        }
    }
}

/// Node labels.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    /// One class per node.
    Single(Vec<u32>),
    /// Multi-hot targets `(n, classes)`, row-major.
    Multi(Vec<f32>),
}

impl Labels {
    /// The class of each node (single-label tasks).
    pub fn single(&self) -> Option<&[u32]> {
        match self {
            Labels::Single(l) => Some(l),
            Labels::Multi(_) => None,
        }
    }
}

/// A node-level problem.
#[derive(Debug, Clone)]
pub struct NodeTask {
    /// The graph (raw; normalised by the trainer).
    pub graph: Graph,
    /// Features `(n, p)` row-major.
    pub features: Vec<f32>,
    /// Feature dimension `p`.
    pub feature_dim: usize,
    /// Labels.
    pub labels: Labels,
    /// Classes (labels of a multi-label task).
    pub classes: usize,
    /// Train / validation / test node ids.
    pub split: (Vec<u32>, Vec<u32>, Vec<u32>),
}

/// Where a run writes its files (none: nothing is written) and where it runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Output folder for `metrics.jsonl`, `checkpoints/` and `best/`.
    pub out_dir: Option<PathBuf>,
    /// Continue from the latest checkpoint in `out_dir`.
    pub resume: bool,
    /// The device of the model and the graphs (node tasks; graph classification runs on the
    /// CPU).
    pub device: Device,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { out_dir: None, resume: false, device: Device::Cpu }
    }
}

/// Scores of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NodeResult {
    /// Epochs trained when it was measured.
    pub epoch: usize,
    /// Training score (accuracy, or micro-F1 for multi-label tasks).
    pub train: f64,
    /// Validation score.
    pub val: f64,
    /// Test score.
    pub test: f64,
    /// Forward NFE of the evaluation (all implicit layers).
    pub nfe: usize,
    /// Seconds since the start of the run.
    pub seconds: f64,
}

/// The score's name for `labels`.
pub fn metric_name(labels: &Labels) -> &'static str {
    match labels {
        Labels::Single(_) => "accuracy",
        Labels::Multi(_) => "micro_f1",
    }
}

/// Normalises `g` as `[train] adjacency` says and returns it with `lambda_pf` (+1e-5).
pub fn normalize(g: &Graph, adjacency: &str) -> Result<(Graph, f64)> {
    let norm = match adjacency {
        "aug_normalized" => g.aug_normalized(),
        "raw" => g.clone(),
        other => anyhow::bail!("train.adjacency: `{other}` is not aug_normalized or raw"),
    };
    let lambda = norm.lambda_pf(10_000) + 1e-5;
    Ok((norm, lambda))
}

/// Averages the local gradients `grads` over the ranks of `collective`, clips each
/// parameter's gradient norm to `clip_per_param` (0: off) and takes an optimiser step.
pub(crate) fn reduce_and_step(mut grads: candle_core::backprop::GradStore, vars: &[candle_core::Var], clip_per_param: f64, opt: &mut Adam, collective: &dyn Collective) -> Result<()> {
    collective.all_reduce_mean(&mut grads, vars)?;
    if clip_per_param > 0.0 {
        for v in vars {
            deq_train::clip_grad_norm(&mut grads, std::slice::from_ref(v), clip_per_param)?;
        }
    }
    opt.step(&grads)?;
    Ok(())
}

/// The whole graph of `task` normalised as `adjacency` says, as edge tensors, with its
/// `lambda_pf` and the node features `(n, p)`: the inputs of full-graph evaluation.
pub fn full_graph(task: &NodeTask, adjacency: &str, dev: &Device) -> Result<(EdgeTensors, f64, Tensor)> {
    let (norm, lambda) = normalize(&task.graph, adjacency)?;
    let u = Tensor::from_vec(task.features.clone(), (task.graph.n, task.feature_dim), dev)?;
    Ok((norm.tensors(DType::F32, dev)?, lambda, u))
}

/// Builds the configured model for `task`.
pub fn build_model(task: &NodeTask, cfg: &NodeTrainConfig, deq: &DeqConfig, rng: &mut DeqRng, dev: &Device) -> Result<NodeModel> {
    let (p, c) = (task.feature_dim, task.classes);
    let mut model = match cfg.model.as_str() {
        "ignn" => NodeModel::ignn(p, cfg.hidden, c, cfg.kappa, cfg.dropout, cfg.skip_input, deq.clone(), rng, DType::F32, dev)?,
        "ignn_stack" => NodeModel::stacked(p, cfg.hidden, c, cfg.kappa, cfg.skip_input, deq.clone(), rng, DType::F32, dev)?,
        "gcn" => NodeModel::gcn(p, cfg.hidden, c, cfg.dropout, rng, DType::F32, dev)?,
        other => anyhow::bail!("train.model: `{other}` is not ignn, ignn_stack or gcn"),
    };
    if let NodeModel::Ignn { normalize, .. } = &mut model {
        *normalize = cfg.normalize_readout;
    }
    Ok(model)
}

/// One training minibatch: a (sub)graph with its inputs and the rows the loss uses.
struct Part {
    a: EdgeTensors,
    lambda: f64,
    u: Tensor,
    rows: Tensor,
    targets: Tensor,
}

fn targets_for(task: &NodeTask, nodes: &[u32], dev: &Device) -> Result<Tensor> {
    Ok(match &task.labels {
        Labels::Single(l) => Tensor::from_vec(nodes.iter().map(|&i| l[i as usize]).collect::<Vec<_>>(), nodes.len(), dev)?,
        Labels::Multi(t) => {
            let c = task.classes;
            let rows: Vec<f32> = nodes.iter().flat_map(|&i| t[i as usize * c..(i as usize + 1) * c].iter().copied()).collect();
            Tensor::from_vec(rows, (nodes.len(), c), dev)?
        }
    })
}

fn rows_of(task: &NodeTask, nodes: &[u32], dev: &Device) -> Result<Tensor> {
    let p = task.feature_dim;
    let data: Vec<f32> = nodes.iter().flat_map(|&i| task.features[i as usize * p..(i as usize + 1) * p].iter().copied()).collect();
    Ok(Tensor::from_vec(data, (nodes.len(), p), dev)?)
}

fn training_parts(task: &NodeTask, cfg: &NodeTrainConfig, full: (&EdgeTensors, f64, &Tensor), dev: &Device) -> Result<Vec<Part>> {
    let train = &task.split.0;
    if !cfg.inductive {
        anyhow::ensure!(cfg.batches <= 1, "train.batches = {} needs train.inductive = true (a transductive graph is one batch)", cfg.batches);
        let rows = Tensor::from_vec(train.clone(), train.len(), dev)?;
        return Ok(vec![Part { a: full.0.clone(), lambda: full.1, u: full.2.clone(), rows, targets: targets_for(task, train, dev)? }]);
    }
    let sub = task.graph.induced(train);
    let mut comps = sub.components();
    // Largest first, each to the currently smallest group: balanced, deterministic groups.
    comps.sort_by_key(|c| std::cmp::Reverse(c.len()));
    let groups = cfg.batches.max(1).min(comps.len().max(1));
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); groups];
    for c in comps {
        let g = (0..groups).min_by_key(|&g| members[g].len()).unwrap_or(0);
        members[g].extend(c.into_iter().map(|local| train[local as usize]));
    }
    members
        .into_iter()
        .filter(|m| !m.is_empty())
        .map(|mut nodes| {
            nodes.sort_unstable();
            let (norm, lambda) = normalize(&task.graph.induced(&nodes), &cfg.adjacency)?;
            let all = Tensor::arange(0u32, nodes.len() as u32, dev)?;
            Ok(Part { a: norm.tensors(DType::F32, dev)?, lambda, u: rows_of(task, &nodes, dev)?, rows: all, targets: targets_for(task, &nodes, dev)? })
        })
        .collect()
}

fn loss_of(labels: &Labels, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(match labels {
        Labels::Single(_) => candle_nn::loss::cross_entropy(logits, targets)?,
        Labels::Multi(_) => deq_train::bce_with_logits(logits, targets)?,
    })
}

/// The training loss from the task losses of every supervised state (earliest first):
/// fixed-point correction plus the implicit layers' Jacobian terms in `solves`. Also returns
/// the fixed point's task loss (the figure reported as the training loss).
pub fn objective_loss(objective: &DeqObjective, losses: &[Tensor], solves: &Solves) -> Result<(Tensor, f64)> {
    let task = losses.last().context("no supervised state")?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let mut loss = objective.correction(losses)?;
    if let Some(j) = solves.jac_term()? {
        loss = (loss + j)?;
    }
    Ok((loss, task))
}

/// Scores of every split from full-graph logits.
pub fn scores(task: &NodeTask, logits: &Tensor) -> Result<[f64; 3]> {
    let ids = [&task.split.0, &task.split.1, &task.split.2];
    Ok(match &task.labels {
        Labels::Single(l) => {
            let pred = logits.argmax(1)?.to_vec1::<u32>()?;
            ids.map(|s| if s.is_empty() { 0.0 } else { s.iter().filter(|&&i| pred[i as usize] == l[i as usize]).count() as f64 / s.len() as f64 })
        }
        Labels::Multi(t) => {
            let lg = logits.flatten_all()?.to_vec1::<f32>()?;
            ids.map(|s| deq_train::micro_f1(&lg, t, task.classes, Some(s)))
        }
    })
}

/// Evaluates `model` on the whole normalised graph; also returns the solves (the whole graph
/// is the fixed probe of the metrics' residual trace).
pub fn evaluate(model: &NodeModel, task: &NodeTask, u: &Tensor, a: &EdgeTensors, lambda_pf: f64, epoch: usize, start: std::time::Instant) -> Result<(NodeResult, Solves)> {
    let (logits, solves) = model.forward(u, a, lambda_pf, None)?;
    let [train, val, test] = scores(task, &logits)?;
    Ok((NodeResult { epoch, train, val, test, nfe: solves.nfe(), seconds: start.elapsed().as_secs_f64() }, solves))
}

fn state_tensors(model: &NodeModel, opt: &Adam) -> Result<Vec<(String, Tensor)>> {
    let mut t: Vec<(String, Tensor)> = model.named_vars().into_iter().map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone())).collect();
    t.extend(opt.state()?.into_iter().map(|(n, v)| (format!("optim.{n}"), v)));
    Ok(t)
}

/// Trains `cfg.model` on `task` and reports the scores of the last evaluation (or of the best
/// validation score with `select_by_val`). `on_epoch(epoch, mean training loss, mean forward
/// NFE)` is called after every epoch.
pub fn train_nodes(task: &NodeTask, cfg: &NodeTrainConfig, deq: &DeqConfig, opts: &RunOptions, on_epoch: impl FnMut(usize, f64, f64)) -> Result<NodeResult> {
    let collective = deq_train::collective_for(DistContext::from_env()?, &opts.device)?;
    train_nodes_with(task, cfg, deq, opts, on_epoch, &*collective)
}

/// [`train_nodes`] as one rank of `collective`'s job (inductive training only: a
/// transductive graph is one minibatch). Every optimiser step takes `world * parts_per_step`
/// minibatches of the epoch's order, `parts_per_step` per rank, and averages the gradient
/// over them (fewer in an epoch's last step); dropout masks are drawn per (epoch, minibatch),
/// so a world-N run with `parts_per_step = k` trains as a world-1 run with `N k`. Rank 0's
/// initial parameters are broadcast; every rank evaluates, only rank 0 writes files.
pub fn train_nodes_with(task: &NodeTask, cfg: &NodeTrainConfig, deq: &DeqConfig, opts: &RunOptions, mut on_epoch: impl FnMut(usize, f64, f64), collective: &dyn Collective) -> Result<NodeResult> {
    let start = std::time::Instant::now();
    let dev = opts.device.clone();
    let (rank, world) = (collective.context().rank, collective.context().world_size);
    let main = rank == 0;
    anyhow::ensure!(cfg.parts_per_step >= 1, "train.parts_per_step must be at least 1");
    if !cfg.inductive {
        anyhow::ensure!(cfg.parts_per_step == 1, "train.parts_per_step = {} needs train.inductive = true (a transductive graph is one batch)", cfg.parts_per_step);
        anyhow::ensure!(world == 1, "WORLD_SIZE = {world}: data parallelism needs train.inductive = true (a transductive graph is one batch; run one process)");
    }
    let (a, lambda_pf, u) = full_graph(task, &cfg.adjacency, &dev)?;
    let parts = training_parts(task, cfg, (&a, lambda_pf, &u), &dev)?;
    let mut rng = DeqRng::new(cfg.seed);
    let model = build_model(task, cfg, deq, &mut rng, &dev)?;
    let objective = DeqObjective::new(deq, cfg.seed)?;
    if !model.is_implicit() {
        objective.refuse(&format!("by the `{}` model, which is not a DEQ", cfg.model))?;
    }
    let mut opt = Adam::new(model.named_vars(), cfg.lr, (0.9, 0.999), 1e-8, cfg.weight_decay, false)?;
    let vars: Vec<_> = model.named_vars().into_iter().map(|(_, v)| v).collect();
    let cfg_json = serde_json::to_value(cfg)?;

    let mut files = match &opts.out_dir {
        Some(d) if main => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            let lock = deq_train::run_lock::RunLock::acquire(d)?;
            Some((Checkpointer::new(d.join("checkpoints"), 2)?, Checkpointer::new(d.join("best"), 1)?, MetricsWriter::open(d.join("metrics.jsonl"))?, lock))
        }
        _ => None,
    };
    let mut best: Option<NodeResult> = None;
    let mut epoch0 = 0;
    let mut skipped0 = 0usize;
    if opts.resume {
        let ck = Checkpointer::new(opts.out_dir.as_ref().context("--resume needs an output folder")?.join("checkpoints"), 2)?;
        match ck.load_latest(&dev)? {
            Some(c) => {
                deq_train::load_vars(&model.named_vars(), &c, "model.")?;
                let optim: std::collections::HashMap<String, Tensor> = c.tensors.iter().filter_map(|(k, v)| k.strip_prefix("optim.").map(|s| (s.to_string(), v.clone()))).collect();
                opt.load_state(&optim)?;
                epoch0 = c.meta["epoch"].as_u64().context("checkpoint has no epoch")? as usize;
                rng = DeqRng::from_state(c.meta["rng_state"].as_str().and_then(|s| s.parse().ok()).context("checkpoint has no rng_state")?);
                best = serde_json::from_value(c.meta["best"].clone()).ok();
                skipped0 = c.meta.get("skipped_batches").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
                tracing::info!(epoch = epoch0, "resumed from {}", c.path.display());
            }
            None => tracing::warn!("--resume: no checkpoint in {}, starting fresh", ck.dir().display()),
        }
    }

    // Every rank starts from rank 0's parameters (a resumed run: from the same checkpoint).
    broadcast_vars(collective, &vars)?;

    let mut bar = Progress::new(format!("{} epochs", cfg.model), cfg.epochs.saturating_sub(epoch0), main);
    let mut last = None;
    let mut order: Vec<usize> = (0..parts.len()).collect();
    // Minibatches per optimiser step over all ranks, and steps per epoch.
    let per_step = world * cfg.parts_per_step;
    let steps = parts.len().div_ceil(per_step);
    let mut guard = deq_train::faults::FaultGuard::new(cfg.on_nonfinite, cfg.max_skipped, skipped0);
    for epoch in epoch0..cfg.epochs {
        if parts.len() > 1 {
            // The epoch's order, the same on every rank: from the main stream of a single
            // minibatch-per-step run (as before data parallelism), else from (seed, epoch).
            let mut order_rng = sample_rng(cfg.seed, epoch, usize::MAX);
            let r = if cfg.inductive && per_step > 1 { &mut order_rng } else { &mut rng };
            for i in (1..order.len()).rev() {
                order.swap(i, (r.next_u64() % (i as u64 + 1)) as usize);
            }
        }
        let (mut loss_sum, mut nfe_sum) = (0.0, 0usize);
        let (mut jac_sum, mut jac_steps) = (0f64, 0usize);
        let mut train_solver = SolverMetrics::default();
        for step_k in 0..steps {
            let step = epoch * steps + step_k;
            let global = &order[step_k * per_step..((step_k + 1) * per_step).min(order.len())];
            let mine = global.iter().skip(rank * cfg.parts_per_step).take(cfg.parts_per_step);
            // Each rank's loss is weighted so that the mean over ranks is the mean over the
            // step's minibatches.
            let weight = world as f64 / global.len() as f64;
            // The step's stages up to the local gradient; a numerical fault in any of them is
            // agreed on by every rank, then stops the run or skips the step (on_nonfinite).
            let attempt = guard.run_step(collective, step, |stage| -> Result<_> {
                let mut total: Option<Tensor> = None;
                let mut solves_all = Vec::new();
                let (mut step_loss, mut step_nfe, mut step_jac) = (0.0, 0usize, (0f64, 0usize));
                for &pi in mine {
                    let part = &parts[pi];
                    // Per-minibatch dropout streams make the masks independent of which rank
                    // draws them; a single minibatch per step keeps the run's main stream.
                    let mut part_rng = sample_rng(cfg.seed ^ 0x5eed_d80f, epoch, pi);
                    let r = if per_step > 1 { &mut part_rng } else { &mut rng };
                    let u_in = crate::model::dropout(&part.u, cfg.input_dropout, r)?;
                    stage.set("forward solve");
                    let (logits, solves) = model.forward_train(&u_in, &part.a, part.lambda, r, &objective, step)?;
                    step_nfe += solves.nfe();
                    stage.set("loss");
                    let losses = logits.iter().map(|l| loss_of(&task.labels, &l.index_select(&part.rows, 0)?, &part.targets)).collect::<Result<Vec<_>>>()?;
                    let (loss, lv) = objective_loss(&objective, &losses, &solves)?;
                    if !solves.jac.is_empty() {
                        step_jac = (step_jac.0 + solves.jac.iter().map(|j| j.value).sum::<f64>(), step_jac.1 + 1);
                    }
                    check_finite("training loss", loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?, step)?;
                    let loss = if weight == 1.0 { loss } else { loss.affine(weight, 0.0)? };
                    total = Some(match total {
                        Some(t) => (t + loss)?,
                        None => loss,
                    });
                    step_loss += lv;
                    solves_all.push(solves);
                }
                // A rank without a minibatch in the epoch's last step contributes zero gradients.
                let total = match total {
                    Some(t) => t,
                    None => (vars[0].as_tensor().sum_all()? * 0.0)?,
                };
                stage.set("backward (adjoint solve)");
                let grads = deq_core::grad::backward(&total)?;
                stage.set("gradient");
                check_finite("gradient norm", deq_train::grad_norm(&grads, &vars)?, step)?;
                Ok((grads, solves_all, step_loss, step_nfe, step_jac))
            })?;
            let Some((grads, solves_all, step_loss, step_nfe, step_jac)) = attempt else {
                continue;
            };
            reduce_and_step(grads, &vars, cfg.clip_per_param, &mut opt, collective)?;
            (loss_sum, nfe_sum, jac_sum, jac_steps) = (loss_sum + step_loss, nfe_sum + step_nfe, jac_sum + step_jac.0, jac_steps + step_jac.1);
            for solves in &solves_all {
                solves.add_forward_to(&mut train_solver);
                solves.add_backward_to(&mut train_solver);
            }
        }
        let sums = all_reduce_sum_f64(collective, &[loss_sum, nfe_sum as f64, jac_sum, jac_steps as f64])?;
        let (loss_sum, nfe_sum, jac_sum, jac_steps) = (sums[0], sums[1], sums[2], sums[3] as usize);
        let loss = loss_sum / parts.len() as f64;
        on_epoch(epoch, loss, nfe_sum / parts.len() as f64);
        bar.inc(1, &format!("loss {loss:.4}"));
        // SIGINT/SIGTERM on any rank: evaluate and checkpoint this epoch, then stop (exit code 75).
        let signal = deq_train::dist::agree_on_signal(collective)?;
        if (epoch + 1) % cfg.eval_every.max(1) != 0 && epoch + 1 != cfg.epochs && signal.is_none() {
            continue;
        }
        let (r, eval_solves) = evaluate(&model, task, &u, &a, lambda_pf, epoch + 1, start)?;
        let improved = best.map_or(true, |b| r.val > b.val);
        if improved {
            best = Some(r);
        }
        last = Some(r);
        tracing::debug!(epoch = epoch + 1, loss, train = r.train, val = r.val, test = r.test, nfe = r.nfe);
        if let Some((ck, best_ck, metrics, _)) = files.as_mut() {
            let m = if metric_name(&task.labels) == "accuracy" { "acc" } else { "f1" };
            let mut record = serde_json::json!({"epoch": epoch + 1, "step": (epoch + 1) * steps, "skipped_batches": guard.skipped(), "train_loss": loss, "metric": metric_name(&task.labels),
                "train": r.train, "val": r.val, "test": r.test, format!("train_{m}"): r.train, format!("val_{m}"): r.val, format!("test_{m}"): r.test,
                "eval_nfe": r.nfe, "elapsed_seconds": r.seconds});
            if objective.regularises() {
                record["train_jac_loss"] = serde_json::json!(if jac_steps > 0 { jac_sum / jac_steps as f64 } else { f64::NAN });
            }
            train_solver.extend_record("train", &mut record);
            let mut eval_solver = SolverMetrics::default();
            eval_solves.add_forward_to(&mut eval_solver);
            eval_solver.extend_record("eval", &mut record);
            if let Some(first) = eval_solves.forward.first() {
                record["probe_rel_trace"] = serde_json::json!(deq_train::probe_trace(first));
            }
            metrics.write(&record)?;
            let meta = serde_json::json!({"epoch": epoch + 1, "rng_state": rng.state().to_string(), "best": best, "config": cfg_json, "metrics": record, "skipped_batches": guard.skipped()});
            let tensors = state_tensors(&model, &opt)?;
            if improved && cfg.select_by_val {
                best_ck.save(epoch + 1, &tensors, meta.clone())?;
            }
            ck.save(epoch + 1, &tensors, meta)?;
        }
        if let Some(sig) = signal {
            let checkpoint = opts.out_dir.as_ref().map(|d| d.join("checkpoints").join("latest.json")).unwrap_or_default();
            return Err(deq_train::TrainError::Interrupted { signal: deq_train::signals::name(sig), step: epoch + 1, checkpoint }.into());
        }
    }
    let last = match last {
        Some(l) => l,
        None => evaluate(&model, task, &u, &a, lambda_pf, cfg.epochs, start)?.0,
    };
    Ok(match best {
        Some(b) if cfg.select_by_val && b.val > last.val => NodeResult { seconds: last.seconds, ..b },
        _ => last,
    })
}
