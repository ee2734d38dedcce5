//! ignn's data parallelism on inductive minibatches: a world-2 run with one minibatch per rank
//! and step (the two ranks are threads of a [`ThreadGroup`]) trains as a world-1 run with two
//! minibatches per step: the same dropout masks (drawn per epoch and minibatch), the mean
//! gradient of the same minibatches, also in an epoch's last step where one rank has none.

use candle_core::Device;
use deq_core::DeqConfig;
use deq_train::{Checkpointer, Collective, SingleProcess, ThreadGroup};
use ignn::train::{train_nodes_with, NodeResult, NodeTask, NodeTrainConfig, RunOptions};
use std::path::{Path, PathBuf};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ignn-dist-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn deq() -> DeqConfig {
    // A fixed number of contracting iterations: the last iterate is every sample's best, so
    // rounding noise cannot change which iterate a run returns.
    DeqConfig { norm_type: deq_core::NormType::None, f_solver: "fixed_point_iter".into(), f_max_iter: 12, f_tol: 0.0, b_solver: "fixed_point_iter".into(), b_max_iter: 12, b_tol: 0.0, ift: true, ..Default::default() }
}

fn cfg(parts_per_step: usize) -> NodeTrainConfig {
    // Five minibatches of chain components: steps of two leave one for an epoch's last step.
    NodeTrainConfig { hidden: 8, epochs: 6, eval_every: 3, normalize_readout: false, inductive: true, batches: 5, parts_per_step, dropout: 0.3, input_dropout: 0.1, kappa: 0.9, ..Default::default() }
}

fn task() -> NodeTask {
    ignn::chains::generate(2, 10, 8, 20, 0.5, 0.2, 1).into()
}

fn run(task: &NodeTask, cfg: &NodeTrainConfig, dir: &Path, c: &dyn Collective) -> (NodeResult, Vec<f64>) {
    let mut losses = Vec::new();
    let r = train_nodes_with(task, cfg, &deq(), &RunOptions { out_dir: Some(dir.to_path_buf()), resume: false, ..Default::default() }, |_, l, _| losses.push(l), c).unwrap();
    (r, losses)
}

/// Largest relative difference over the latest checkpoints' tensors of `a` and `b`.
fn checkpoint_diff(a: &Path, b: &Path) -> f64 {
    let load = |d: &Path| Checkpointer::load(&d.join("checkpoints/latest.json"), &Device::Cpu).unwrap();
    let (c1, c2) = (load(a), load(b));
    assert_eq!(c1.tensors.len(), c2.tensors.len());
    let mut worst = 0f64;
    for (name, t1) in &c1.tensors {
        let x = t1.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
        let y = c2.tensors[name].flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
        let scale = x.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
        worst = worst.max(x.iter().zip(&y).fold(0f64, |m, (p, q)| m.max((p - q).abs())) / scale);
    }
    worst
}

#[test]
fn world_two_trains_as_world_one_with_two_minibatches_per_step() {
    let task = task();
    let (one, two, single) = (tmp("one"), tmp("two"), tmp("single"));
    let (r1, l1) = run(&task, &cfg(2), &one, &SingleProcess::default());
    let ranks: Vec<_> = ThreadGroup::new(2)
        .into_iter()
        .map(|g| {
            let (task, dir) = (task.clone(), two.clone());
            std::thread::spawn(move || run(&task, &cfg(1), &dir, &g))
        })
        .collect();
    let ranks: Vec<_> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
    for (r2, l2) in &ranks {
        for (a, b) in l1.iter().zip(l2) {
            assert!((a - b).abs() <= 1e-5 * a.abs(), "epoch losses {l1:?} (world 1) against {l2:?} (world 2)");
        }
        assert_eq!((r1.train, r1.val, r1.test, r1.epoch), (r2.train, r2.val, r2.test, r2.epoch));
    }
    let d = checkpoint_diff(&one, &two);
    assert!(d < 1e-4, "parameters and Adam state of world 2 differ from world 1 by {d:e} (relative)");
    // The check can tell: one minibatch per step in one process is another run.
    run(&task, &cfg(1), &single, &SingleProcess::default());
    let other = checkpoint_diff(&one, &single);
    assert!(other > 1e-2, "two minibatches per step against one: {other:e}");
    // Only rank 0 wrote files; each epoch's loss is the mean over all five minibatches.
    assert_eq!(std::fs::read_to_string(two.join("metrics.jsonl")).unwrap().lines().count(), 2);
    for d in [one, two, single] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn transductive_training_and_steps_of_nothing_are_refused() {
    let task = task();
    let ranks: Vec<_> = ThreadGroup::new(2)
        .into_iter()
        .map(|g| {
            let task = task.clone();
            std::thread::spawn(move || {
                let c = NodeTrainConfig { inductive: false, batches: 1, ..cfg(1) };
                train_nodes_with(&task, &c, &deq(), &RunOptions::default(), |_, _, _| {}, &g).unwrap_err().to_string()
            })
        })
        .collect();
    for h in ranks {
        let e = h.join().unwrap();
        assert!(e.contains("WORLD_SIZE = 2") && e.contains("train.inductive"), "{e}");
    }
    let e = train_nodes_with(&task, &cfg(0), &deq(), &RunOptions::default(), |_, _, _| {}, &SingleProcess::default()).unwrap_err().to_string();
    assert!(e.contains("train.parts_per_step"), "{e}");
}
