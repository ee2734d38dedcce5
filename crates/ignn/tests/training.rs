//! Short training runs: losses fall (node, multi-label with the stacked PPI model, graph
//! classification), a resumed run ends bit-identical to an uninterrupted one, a checkpoint
//! evaluates as during training, and bad settings are named.

use deq_core::DeqConfig;
use ignn::graph_train::{evaluate_fold, train_graphs, GraphTrainConfig};
use ignn::train::{train_nodes, NodeTrainConfig, RunOptions};
use ignn::tu::GraphDataset;
use std::path::{Path, PathBuf};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ignn-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn deq() -> DeqConfig {
    DeqConfig { norm_type: deq_core::NormType::None, f_solver: "anderson".into(), f_max_iter: 30, f_tol: 1e-4, b_solver: "fixed_point_iter".into(), b_max_iter: 30, b_tol: 1e-5, ift: true, ..Default::default() }
}

fn chains_cfg(epochs: usize) -> NodeTrainConfig {
    NodeTrainConfig { hidden: 8, epochs, eval_every: 5, normalize_readout: false, select_by_val: true, ..Default::default() }
}

#[test]
fn resumed_chains_run_is_bit_identical_and_eval_reproduces_it() {
    let task: ignn::train::NodeTask = ignn::chains::generate(2, 10, 8, 20, 0.1, 0.1, 1).into();
    let (full_dir, part_dir) = (tmp("full"), tmp("part"));
    let mut losses = Vec::new();
    let full = train_nodes(&task, &chains_cfg(20), &deq(), &RunOptions { out_dir: Some(full_dir.clone()), resume: false, ..Default::default() }, |_, l, _| losses.push(l)).unwrap();
    assert!(losses[19] < losses[0], "loss falls: {losses:?}");
    train_nodes(&task, &chains_cfg(10), &deq(), &RunOptions { out_dir: Some(part_dir.clone()), resume: false, ..Default::default() }, |_, _, _| {}).unwrap();
    let mut resumed_losses = Vec::new();
    let resumed = train_nodes(&task, &chains_cfg(20), &deq(), &RunOptions { out_dir: Some(part_dir.clone()), resume: true, ..Default::default() }, |e, l, _| resumed_losses.push((e, l))).unwrap();
    assert_eq!(resumed_losses.first().map(|x| x.0), Some(10), "resumes after epoch 10");
    assert_eq!(resumed_losses.iter().map(|x| x.1).collect::<Vec<_>>(), losses[10..].to_vec(), "same losses after resuming");
    assert_eq!((full.train, full.val, full.test, full.epoch), (resumed.train, resumed.val, resumed.test, resumed.epoch));
    // metrics.jsonl of the resumed run continues the file: epochs 5, 10, 15, 20.
    let lines = std::fs::read_to_string(part_dir.join("metrics.jsonl")).unwrap();
    let epochs: Vec<u64> = lines.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, vec![5, 10, 15, 20]);
    // Solver statistics: forward solves of training and evaluation, the adjoint solves of the
    // implicit backward, the whole graph's residual trace.
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    for key in ["train_fwd_nfe_mean", "train_fwd_nfe_max", "train_bwd_nfe_mean", "train_bwd_rel_residual_max", "eval_fwd_rel_residual_mean", "test_acc"] {
        assert!(last[key].is_number(), "{key} missing: {last}");
    }
    assert!(last["train_bwd_nfe_mean"].as_f64().unwrap() >= 1.0);
    assert!(!last["probe_rel_trace"].as_array().unwrap().is_empty());
    assert_eq!(deq_train::plot::plot_run(&part_dir, None).unwrap().len(), 3);
    // The best checkpoint evaluates to the reported scores.
    let ck = deq_train::Checkpointer::load(&full_dir.join("best/latest.json"), &candle_core::Device::Cpu).unwrap();
    let model = ignn::train::build_model(&task, &chains_cfg(20), &deq(), &mut deq_core::rng::DeqRng::new(0), &candle_core::Device::Cpu).unwrap();
    deq_train::load_vars(&model.named_vars(), &ck, "model.").unwrap();
    let (a, lam, u) = ignn::train::full_graph(&task, "aug_normalized", &candle_core::Device::Cpu).unwrap();
    let (r, _) = ignn::train::evaluate(&model, &task, &u, &a, lam, 0, std::time::Instant::now()).unwrap();
    assert_eq!((r.train, r.val, r.test), (full.train, full.val, full.test));
    // SIGTERM (in a child process: the simulated signal is process-wide) ends a run after its
    // first epoch, evaluated and checkpointed; the resumed run ends with the whole one's model.
    let sig_dir = tmp("sigterm");
    deq_train::hostile::run_in_child("sigterm_child", &sig_dir.display().to_string()).unwrap();
    train_nodes(&task, &chains_cfg(20), &deq(), &RunOptions { out_dir: Some(sig_dir.clone()), resume: true, ..Default::default() }, |_, _, _| {}).unwrap();
    let params = |d: &std::path::Path| {
        let c = deq_train::Checkpointer::load(&d.join("checkpoints/latest.json"), &candle_core::Device::Cpu).unwrap();
        let mut v: Vec<(String, Vec<f64>)> = c.tensors.iter().map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        (c.step, v)
    };
    assert!(params(&full_dir) == params(&sig_dir), "the resumed run ends elsewhere");
    for d in [full_dir, part_dir, sig_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn stacked_ppi_model_learns_multilabel_targets_inductively() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ppi-mini");
    let task = ignn::ppi::load_graphsage(&dir, "ppi", true).unwrap();
    // The zoo's setting, scaled down: spectral norm with clip, phantom gradient 5 steps tau
    // 0.5, raw adjacency, kappa 0.98, Adam 0.005; one minibatch per training component.
    let deq = DeqConfig { norm_type: deq_core::NormType::SpectralNorm, norm_clip: true, grad: vec![5], tau: 0.5, ift: false, f_solver: "fixed_point_iter".into(), ..Default::default() };
    let cfg = NodeTrainConfig { model: "ignn_stack".into(), hidden: 4, kappa: 0.98, adjacency: "raw".into(), skip_input: true, lr: 0.005, weight_decay: 0.0, clip_per_param: 0.0, epochs: 30, eval_every: 10, inductive: true, batches: 2, dropout: 0.0, ..Default::default() };
    let mut losses = Vec::new();
    let r = train_nodes(&task, &cfg, &deq, &RunOptions::default(), |_, l, _| losses.push(l)).unwrap();
    assert!(losses[29] < 0.8 * losses[0], "BCE falls: {:.4} -> {:.4}", losses[0], losses[29]);
    // Better than every constant predictor: all labels positive, or each label's majority value
    // over the training nodes (micro-F1 on the training nodes), and a BCE below the best
    // constant's (each label's training frequency).
    let ignn::train::Labels::Multi(t) = &task.labels else { panic!("PPI is multi-label") };
    let (train_ids, c) = (&task.split.0, task.classes);
    let freq: Vec<f64> = (0..c).map(|j| train_ids.iter().map(|&i| t[i as usize * c + j] as f64).sum::<f64>() / train_ids.len() as f64).collect();
    let constant = |per_label: &dyn Fn(usize) -> f32| -> f64 {
        let lg: Vec<f32> = (0..t.len()).map(|k| per_label(k % c)).collect();
        deq_train::micro_f1(&lg, t, c, Some(train_ids))
    };
    let all_positive = constant(&|_| 1.0);
    let majority = constant(&|j| if freq[j] > 0.5 { 1.0 } else { -1.0 });
    let constant_bce = freq.iter().map(|&p| if p <= 0.0 || p >= 1.0 { 0.0 } else { -(p * p.ln() + (1.0 - p) * (1.0 - p).ln()) }).sum::<f64>() / c as f64;
    eprintln!("train {:.4} all-positive {all_positive:.4} majority {majority:.4}; loss {:.4} -> {:.4}, constant BCE {constant_bce:.4}", r.train, losses[0], losses[29]);
    assert!(r.train > all_positive.max(majority) + 0.1 && r.nfe > 0, "{r:?} against constant predictors {all_positive:.4} / {majority:.4}");
    assert!(losses[29] < constant_bce, "BCE {:.4} not below the best constant predictor's {constant_bce:.4}", losses[29]);
    // batches without inductive is a configuration error naming the key.
    let bad = NodeTrainConfig { inductive: false, ..cfg };
    let e = train_nodes(&task, &bad, &deq, &RunOptions::default(), |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("train.batches") && e.contains("train.inductive"), "{e}");
}

/// Cycles (class 1) against paths (class 0) of 4-7 nodes: triangles-free but the cycle's
/// extra edge changes every node's degree-based features.
fn cycles_and_paths(n: usize) -> GraphDataset {
    let mut graphs = Vec::new();
    for i in 0..n {
        let len = 4 + i % 4;
        let cyclic = i % 2 == 1;
        let mut edges: Vec<(u32, u32)> = (0..len as u32 - 1).map(|k| (k, k + 1)).collect();
        if cyclic {
            edges.push((len as u32 - 1, 0));
        }
        let graph = ignn::Graph::from_edges(len, &edges).unwrap().symmetrized();
        graphs.push(ignn::tu::GraphSample { graph, features: vec![1.0; len], label: cyclic as u32 });
    }
    GraphDataset { graphs, feature_dim: 1, classes: 2, label_values: vec![0, 1] }
}

/// The interrupted run of [`resumed_chains_run_is_bit_identical_and_eval_reproduces_it`], in a
/// child process of its own: SIGTERM before the first epoch ends the run after it with a
/// checkpoint and `Interrupted`.
#[test]
fn sigterm_child() {
    let Some(dir) = deq_train::hostile::child_case() else { return };
    let task: ignn::train::NodeTask = ignn::chains::generate(2, 10, 8, 20, 0.1, 0.1, 1).into();
    deq_train::signals::simulate(15);
    let e = train_nodes(&task, &chains_cfg(20), &deq(), &RunOptions { out_dir: Some(dir.clone().into()), resume: false, ..Default::default() }, |_, _, _| {}).unwrap_err();
    assert!(format!("{e:#}").contains("stopped by SIGTERM after step 1"), "{e:#}");
    let c = deq_train::Checkpointer::load(&std::path::Path::new(&dir).join("checkpoints/latest.json"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(c.step, 1);
}

#[test]
fn graph_classifier_trains_and_its_fold_checkpoint_evaluates() {
    let ds = cycles_and_paths(40);
    let cfg = GraphTrainConfig { hidden: 8, layers: 2, epochs: 15, batch_size: 8, folds: 4, fold: Some(2), dropout: 0.0, lr: 0.02, ..Default::default() };
    let out = tmp("tu");
    let mut losses = Vec::new();
    let r = train_graphs(&ds, &cfg, &deq(), &RunOptions { out_dir: Some(out.clone()), resume: false, ..Default::default() }, |_, _, l| losses.push(l)).unwrap();
    assert_eq!(r.folds.len(), 1);
    assert!(losses[14] < losses[0], "loss falls: {losses:?}");
    let again = evaluate_fold(&ds, &cfg, &deq(), &out.join("fold-2")).unwrap();
    assert_eq!((again.fold, again.test_acc, again.train_acc), (2, r.folds[0].test_acc, r.folds[0].train_acc));
    // Resume skips the finished fold.
    let mut calls = 0;
    let r2 = train_graphs(&ds, &cfg, &deq(), &RunOptions { out_dir: Some(out.clone()), resume: true, ..Default::default() }, |_, _, _| calls += 1).unwrap();
    assert_eq!((calls, r2.folds[0].test_acc), (0, r.folds[0].test_acc));
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn folds_are_stratified_and_partition_the_data() {
    let labels: Vec<u32> = (0..53).map(|i| (i % 3 == 0) as u32).collect();
    let folds = ignn::graph_train::stratified_folds(&labels, 10, 3);
    let mut all: Vec<usize> = folds.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..53).collect::<Vec<_>>());
    for f in &folds {
        assert!((5..=6).contains(&f.len()), "{}", f.len());
        let ones = f.iter().filter(|&&i| labels[i] == 1).count();
        assert!((1..=2).contains(&ones), "{ones}");
    }
}

#[test]
fn every_config_parses_and_unknown_keys_are_named() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ignn");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let cfg = ignn::config::RunConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        if cfg.data.task == "tu" {
            cfg.graph_train().unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        } else {
            cfg.node_train().unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        }
        seen += 1;
    }
    assert!(seen >= 5);
    let ppi = ignn::config::RunConfig::load(&dir.join("ppi.toml")).unwrap();
    let t = ppi.node_train().unwrap();
    assert_eq!((t.model.as_str(), t.hidden, t.kappa, t.lr, t.epochs), ("ignn_stack", 256, 0.98, 0.005, 1000));
    assert_eq!((ppi.deq.norm_type, ppi.deq.norm_clip, ppi.deq.grad.clone(), ppi.deq.tau, ppi.deq.ift), (deq_core::NormType::SpectralNorm, true, vec![5], 0.5, false));
    let mut bad = ppi.clone();
    bad.set_train("hiden", toml::Value::Integer(3)).unwrap();
    let e = format!("{:#}", bad.node_train().unwrap_err());
    assert!(e.contains("hiden"), "{e}");
    let p = tmp("badcfg");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("x.toml"), "[data]\ntask = \"chains\"\nlenght = 3\n").unwrap();
    let e = format!("{:#}", ignn::config::RunConfig::load(&p.join("x.toml")).unwrap_err());
    assert!(e.contains("x.toml") && e.contains("lenght"), "{e}");
}

#[test]
fn a_diverging_run_stops_naming_step_and_stage_or_skips_and_counts() {
    let task: ignn::train::NodeTask = ignn::chains::generate(2, 10, 8, 20, 0.1, 0.1, 1).into();
    // Adam steps of 1e20 overflow f32 from the second epoch.
    let mut cfg = NodeTrainConfig { lr: 1e20, ..chains_cfg(8) };
    let e = format!("{:#}", train_nodes(&task, &cfg, &deq(), &RunOptions::default(), |_, _, _| {}).unwrap_err());
    assert!(e.contains("diverged at step") && e.contains("stage `") && e.contains("on_nonfinite"), "{e}");
    cfg.on_nonfinite = deq_train::faults::OnNonFinite::Skip;
    cfg.max_skipped = 3;
    let e = format!("{:#}", train_nodes(&task, &cfg, &deq(), &RunOptions::default(), |_, _, _| {}).unwrap_err());
    assert!(e.contains("3 batches were skipped already"), "{e}");
}

#[test]
fn a_diverging_graph_classification_stops_naming_step_and_stage_or_skips_and_counts() {
    let ds = cycles_and_paths(40);
    // Adam steps of 1e20 overflow f32 after the first minibatch.
    let mut cfg = GraphTrainConfig { hidden: 8, layers: 2, epochs: 3, batch_size: 8, folds: 4, fold: Some(1), dropout: 0.0, lr: 1e20, ..Default::default() };
    let e = format!("{:#}", train_graphs(&ds, &cfg, &deq(), &RunOptions::default(), |_, _, _| {}).unwrap_err());
    assert!(e.contains("diverged at step") && e.contains("stage `") && e.contains("on_nonfinite"), "{e}");
    // Skipped minibatches are counted in the metrics and the fold's checkpoint; past
    // `max_skipped` the run stops.
    cfg.on_nonfinite = deq_train::faults::OnNonFinite::Skip;
    cfg.max_skipped = 100;
    let out = tmp("tu-skip");
    train_graphs(&ds, &cfg, &deq(), &RunOptions { out_dir: Some(out.clone()), resume: false, ..Default::default() }, |_, _, _| {}).unwrap();
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let skipped = last["skipped_batches"].as_u64().unwrap();
    // 30 training graphs in minibatches of 8: 4 steps an epoch, 12 in all, the first one fine.
    assert!((1..12).contains(&skipped), "{metrics}");
    let c = deq_train::Checkpointer::load(&out.join("fold-1/latest.json"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(c.meta["skipped_batches"].as_u64(), Some(skipped));
    cfg.max_skipped = 1;
    let e = format!("{:#}", train_graphs(&ds, &cfg, &deq(), &RunOptions::default(), |_, _, _| {}).unwrap_err());
    assert!(e.contains("1 batches were skipped already"), "{e}");
    let _ = std::fs::remove_dir_all(out);
}
