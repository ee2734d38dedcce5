//! Full-batch node-classification training (chains, Planetoid).

use crate::graph::Graph;
use crate::model::NodeModel;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use deq_train::{check_finite, Adam, Optimizer};
use serde::{Deserialize, Serialize};

/// Model and optimisation settings of a node-classification run (`[train]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeTrainConfig {
    /// `ignn` or `gcn`.
    pub model: String,
    /// Hidden features.
    pub hidden: usize,
    /// Well-posedness bound `||W||_inf lambda_pf(A) <= kappa` (IGNN).
    pub kappa: f64,
    /// Dropout before the readout (IGNN) or between the layers (GCN).
    pub dropout: f64,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam weight decay (coupled, as `torch.optim.Adam`).
    pub weight_decay: f64,
    /// Full-batch epochs.
    pub epochs: usize,
    /// Clip each parameter's gradient norm to this value (0: off).
    pub clip_per_param: f64,
    /// Seed of initialisation and dropout.
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
    /// Report the test accuracy at the epoch of best validation accuracy (evaluated every
    /// `eval_every` epochs) instead of after the last epoch.
    pub select_by_val: bool,
    /// Evaluation period in epochs when `select_by_val`.
    pub eval_every: usize,
}

impl Default for NodeTrainConfig {
    fn default() -> Self {
        Self {
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
        }
    }
}

/// A node-classification problem.
#[derive(Debug, Clone)]
pub struct NodeTask {
    /// The graph (raw; normalised by the trainer).
    pub graph: Graph,
    /// Features `(n, p)` row-major.
    pub features: Vec<f32>,
    /// Feature dimension `p`.
    pub feature_dim: usize,
    /// Labels.
    pub labels: Vec<u32>,
    /// Classes.
    pub classes: usize,
    /// Train / validation / test node ids.
    pub split: (Vec<u32>, Vec<u32>, Vec<u32>),
}

/// Final figures of a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NodeResult {
    /// Final training accuracy.
    pub train_acc: f64,
    /// Final validation accuracy.
    pub val_acc: f64,
    /// Final test accuracy.
    pub test_acc: f64,
    /// Forward NFE of the last evaluation (IGNN).
    pub nfe: usize,
    /// Seconds.
    pub seconds: f64,
}

fn accuracy(logits: &Tensor, labels: &[u32], ids: &[u32]) -> Result<f64> {
    if ids.is_empty() {
        return Ok(0.0);
    }
    let pred = logits.argmax(1)?.to_vec1::<u32>()?;
    Ok(ids.iter().filter(|&&i| pred[i as usize] == labels[i as usize]).count() as f64 / ids.len() as f64)
}

/// Trains `cfg.model` on `task` full-batch and reports the final accuracies (no model
/// selection, as the IGNN paper's chains protocol).
pub fn train_nodes(task: &NodeTask, cfg: &NodeTrainConfig, deq: &DeqConfig, mut on_epoch: impl FnMut(usize, f64)) -> Result<NodeResult> {
    let start = std::time::Instant::now();
    let dev = Device::Cpu;
    let norm = match cfg.adjacency.as_str() {
        "aug_normalized" => task.graph.aug_normalized(),
        "raw" => task.graph.clone(),
        other => anyhow::bail!("train.adjacency: `{other}` is not aug_normalized or raw"),
    };
    let lambda_pf = norm.lambda_pf(10_000) + 1e-5;
    let a = norm.tensors(DType::F32, &dev)?;
    let u = Tensor::from_vec(task.features.clone(), (task.graph.n, task.feature_dim), &dev)?;
    let mut rng = DeqRng::new(cfg.seed);
    let mut model = match cfg.model.as_str() {
        "ignn" => NodeModel::ignn(task.feature_dim, cfg.hidden, task.classes, cfg.kappa, cfg.dropout, cfg.skip_input, deq.clone(), &mut rng, DType::F32, &dev)?,
        "gcn" => NodeModel::gcn(task.feature_dim, cfg.hidden, task.classes, cfg.dropout, &mut rng, DType::F32, &dev)?,
        other => anyhow::bail!("train.model: `{other}` is not ignn or gcn"),
    };
    if let NodeModel::Ignn { normalize, .. } = &mut model {
        *normalize = cfg.normalize_readout;
    }
    let mut opt = Adam::new(model.named_vars(), cfg.lr, (0.9, 0.999), 1e-8, cfg.weight_decay, false)?;
    let train_ids = Tensor::from_vec(task.split.0.clone(), task.split.0.len(), &dev)?;
    let train_labels = Tensor::from_vec(task.split.0.iter().map(|&i| task.labels[i as usize]).collect::<Vec<_>>(), task.split.0.len(), &dev)?;
    let vars: Vec<_> = model.named_vars().into_iter().map(|(_, v)| v).collect();
    let mut best: Option<NodeResult> = None;
    for epoch in 0..cfg.epochs {
        let u_in = crate::model::dropout(&u, cfg.input_dropout, &mut rng)?;
        let (logits, _) = model.forward(&u_in, &a, lambda_pf, Some(&mut rng))?;
        let loss = candle_nn::loss::cross_entropy(&logits.index_select(&train_ids, 0)?, &train_labels)?;
        let lv = loss.to_scalar::<f32>()? as f64;
        check_finite("training loss", lv, epoch)?;
        let mut grads = deq_core::grad::backward(&loss)?;
        if cfg.clip_per_param > 0.0 {
            for v in &vars {
                deq_train::clip_grad_norm(&mut grads, std::slice::from_ref(v), cfg.clip_per_param)?;
            }
        }
        opt.step(&grads)?;
        on_epoch(epoch, lv);
        if cfg.select_by_val && (epoch + 1) % cfg.eval_every.max(1) == 0 {
            let r = evaluate(&model, &u, &a, lambda_pf, task, start)?;
            if best.map_or(true, |b| r.val_acc > b.val_acc) {
                best = Some(r);
            }
        }
    }
    let last = evaluate(&model, &u, &a, lambda_pf, task, start)?;
    Ok(match best {
        Some(b) if cfg.select_by_val && b.val_acc > last.val_acc => NodeResult { seconds: last.seconds, ..b },
        _ => last,
    })
}

fn evaluate(model: &NodeModel, u: &Tensor, a: &crate::graph::EdgeTensors, lambda_pf: f64, task: &NodeTask, start: std::time::Instant) -> Result<NodeResult> {
    let (logits, stats) = model.forward(u, a, lambda_pf, None)?;
    Ok(NodeResult {
        train_acc: accuracy(&logits, &task.labels, &task.split.0)?,
        val_acc: accuracy(&logits, &task.labels, &task.split.1)?,
        test_acc: accuracy(&logits, &task.labels, &task.split.2)?,
        nfe: stats.map(|s| s.nfe).unwrap_or(0),
        seconds: start.elapsed().as_secs_f64(),
    })
}
