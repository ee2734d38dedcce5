//! deq-lm's data parallelism: a world-2 run (two threads of a [`ThreadGroup`], each reading
//! half of the stream's columns) trains as a world-1 run on all columns, without dropout
//! (ranks draw their own masks); the checkpoint holds the memory of every column, so a
//! world-2 run resumes in a world-1 job.

use candle_core::Device;
use deq_lm::config::RunConfig;
use deq_lm::train::{train, train_with, Streams, TrainOptions};
use deq_train::{Checkpointer, SingleProcess, ThreadGroup};
use std::sync::Arc;

fn cfg(max_step: usize) -> RunConfig {
    let mut c = RunConfig::from_toml(
        r#"
[model]
n_layer = 1
d_model = 8
d_embed = 8
n_head = 2
d_head = 4
d_inner = 12
dropout = 0.0
adaptive = false
mem_len = 6

[deq]
f_solver = "fixed_point_iter"
f_max_iter = 0
eval_f_max_iter = 3
f_tol = 0.0
grad = [3]

[train]
batch_size = 4
tgt_len = 5
lr = 1e-2
warmup_step = 2
eval_interval = 4
eval_batch_size = 2
log_interval = 2
seed = 9
"#,
        "test",
    )
    .unwrap();
    c.train.max_step = max_step;
    c
}

fn data() -> Streams {
    let ids = |n: usize, k: u32| (0..n as u32).map(|i| (i * 7 + k) % 11).collect::<Vec<_>>();
    Streams { train: ids(160, 0), valid: ids(40, 3), test: ids(40, 5), n_token: 11 }
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("deq-lm-dist-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn params(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let c = Checkpointer::load(&dir.join("checkpoints/latest.json"), &Device::Cpu).unwrap();
    let mut v: Vec<_> = c.tensors.iter().filter(|(k, _)| k.starts_with("model.") || k.starts_with("memory.")).map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn two_ranks_train_as_one_process_on_all_columns() {
    let (one, two) = (tmp("one"), tmp("two"));
    let d = data();
    let mut l1 = Vec::new();
    let opts = |dir: &std::path::Path| TrainOptions { out_dir: Some(dir.to_path_buf()), ..Default::default() };
    train_with(&cfg(8), &d, &opts(&one), Arc::new(SingleProcess::default()), |_, l| l1.push(l)).unwrap();
    let ranks: Vec<_> = ThreadGroup::new(2)
        .into_iter()
        .map(|g| {
            let (d, o) = (d.clone(), opts(&two));
            std::thread::spawn(move || {
                let mut l = Vec::new();
                train_with(&cfg(8), &d, &o, Arc::new(g), |_, x| l.push(x)).unwrap();
                l
            })
        })
        .collect();
    let losses: Vec<Vec<f64>> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
    // Each rank's loss is over its own columns; their mean is the single process's loss.
    for (k, a) in l1.iter().enumerate() {
        let mean = (losses[0][k] + losses[1][k]) / 2.0;
        assert!((a - mean).abs() < 1e-5, "step {}: {a} against {mean}", k + 1);
        assert!((losses[0][k] - losses[1][k]).abs() > 1e-6, "the ranks read different columns");
    }
    let (p1, p2) = (params(&one), params(&two));
    assert_eq!(p1.len(), p2.len());
    for ((n, a), (_, b)) in p1.iter().zip(&p2) {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "{n}: {d}");
    }
    // The world-2 checkpoint (every column's memory) resumes in one process, as the world-1
    // run continued.
    let (mut r1, mut r2) = (Vec::new(), Vec::new());
    train(&cfg(12), &d, &TrainOptions { resume: true, ..opts(&one) }, |_, l| r1.push(l)).unwrap();
    train(&cfg(12), &d, &TrainOptions { resume: true, ..opts(&two) }, |_, l| r2.push(l)).unwrap();
    assert_eq!(r1.len(), 4);
    for (a, b) in r1.iter().zip(&r2) {
        assert!((a - b).abs() < 1e-4, "{r1:?} against {r2:?}");
    }
    // Three ranks cannot split four columns.
    let e: Vec<String> = ThreadGroup::new(3)
        .into_iter()
        .map(|g| {
            let d = d.clone();
            std::thread::spawn(move || train_with(&cfg(2), &d, &TrainOptions::default(), Arc::new(g), |_, _| {}).unwrap_err().to_string())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(e.iter().all(|m| m.contains("train.batch_size") && m.contains("3 ranks")), "{e:?}");
    for d in [one, two] {
        let _ = std::fs::remove_dir_all(d);
    }
}
