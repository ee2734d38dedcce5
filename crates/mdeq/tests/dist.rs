//! Data parallelism: two ranks (threads of a [`ThreadGroup`]) with per-rank batch B compute the
//! gradient of the global batch of 2B, as one process does (synchronised batch norm, the
//! bucketed all-reduce), and a whole world-2 training run with batch B per rank ends where a
//! world-1 run with batch 2B ends: same losses, parameters and batch-norm buffers (in f64, to
//! rounding; in f32 the per-sample choice of the best solver iterate can flip on rounding noise
//! and the runs drift apart visibly).

use candle_core::{DType, Device, Tensor};
use deq_core::rng::DeqRng;
use deq_train::{Checkpointer, Collective, ThreadGroup};
use mdeq::config::RunConfig;
use mdeq::train::{train_with, RunOptions};
use std::sync::Arc;

mod common;

fn config(batch: usize) -> RunConfig {
    let mut cfg = common::tiny_config();
    // A fixed number of solver steps: every sample's solve is then independent of the others
    // in its batch (a tolerance would stop a batch at its worst sample).
    cfg.deq.f_tol = 0.0;
    cfg.train.batch_size = batch;
    cfg.train.train_limit = 96;
    cfg.train.lr = 0.01;
    cfg
}

/// The gradients of one step, in f64: the whole batch in one process, or this rank's
/// interleaved half in a [`ThreadGroup`] of two (synchronised batch norm, bucketed all-reduce).
fn step_grads(cfg: &RunConfig, x: &Tensor, y: &Tensor, group: Option<Arc<dyn Collective>>) -> Vec<(String, Vec<f64>)> {
    let model = mdeq::Mdeq::new(cfg.model.clone(), cfg.deq.clone(), &mut DeqRng::new(0), DType::F64, &Device::Cpu).unwrap();
    let run = || {
        let out = model.forward(x, true).unwrap();
        let loss = candle_nn::loss::cross_entropy(&out.logits, y).unwrap();
        let mut g = deq_core::grad::backward(&loss).unwrap();
        let vars: Vec<_> = model.named_vars().into_iter().map(|(_, v)| v).collect();
        if let Some(c) = &group {
            deq_train::dist::all_reduce_mean_bucketed(&**c, &mut g, &vars, 1000).unwrap();
        }
        model.named_vars().into_iter().map(|(n, v)| (n, g.get(v.as_tensor()).map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap()).unwrap_or_default())).collect()
    };
    match group.clone() {
        Some(c) => deq_train::dist::with_group(c, run),
        None => run(),
    }
}

#[test]
fn two_ranks_give_the_gradient_of_the_global_batch_in_f64() {
    let cfg = config(32);
    let x = DeqRng::new(5).randn((32, 1, 28, 28), DType::F64, &Device::Cpu).unwrap();
    let y = Tensor::from_vec((0..32u32).map(|i| (i * 7) % 10).collect::<Vec<_>>(), 32, &Device::Cpu).unwrap();
    let full = step_grads(&cfg, &x, &y, None);
    // Rank r gets samples r, r + 2, r + 4, ... (the loader's interleaving).
    let half = |t: &Tensor, r: u32| t.index_select(&Tensor::from_vec((0..16u32).map(|k| r + 2 * k).collect::<Vec<_>>(), 16, &Device::Cpu).unwrap(), 0).unwrap();
    let groups: Vec<Arc<dyn Collective>> = ThreadGroup::new(2).into_iter().map(|g| Arc::new(g) as Arc<dyn Collective>).collect();
    let ranks: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = groups.iter().enumerate().map(|(r, g)| {
            let (cfg, x, y) = (&cfg, half(&x, r as u32), half(&y, r as u32));
            s.spawn(move || step_grads(cfg, &x, &y, Some(g.clone())))
        }).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(full.len() > 50);
    for rank in &ranks {
        for ((name, a), (_, b)) in full.iter().zip(rank) {
            assert_eq!(a.len(), b.len(), "{name}");
            let scale = a.iter().fold(0f64, |m, p| m.max(p.abs())).max(1e-12);
            let diff = a.iter().zip(b).fold(0f64, |m, (p, q)| m.max((p - q).abs()));
            assert!(diff <= 1e-10 * scale + 1e-14, "{name}: world 2 differs by {diff:e} (scale {scale:e})");
        }
    }
    // Without synchronised batch norm the ranks normalise by their own halves: not the same.
    let unsynced: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u32).map(|r| {
            let (cfg, x, y) = (&cfg, half(&x, r), half(&y, r));
            s.spawn(move || step_grads(cfg, &x, &y, None))
        }).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    let stem = |g: &Vec<(String, Vec<f64>)>| g.iter().find(|(n, _)| n == "stem.0.conv.weight").unwrap().1.clone();
    let mean: Vec<f64> = stem(&unsynced[0]).iter().zip(stem(&unsynced[1])).map(|(a, b)| (a + b) / 2.0).collect();
    let d = mean.iter().zip(stem(&full)).fold(0f64, |m, (p, q)| m.max((p - q).abs()));
    assert!(d > 1e-6, "the check can tell: unsynchronised statistics change the gradient by {d:e}");
}

fn out_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mdeq-dist-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn metrics(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Trains `cfg` in `dir` as the two ranks of a [`ThreadGroup`] (threads).
fn train_two_ranks(cfg: &RunConfig, dir: &std::path::Path, resume: bool) {
    let handles: Vec<_> = ThreadGroup::new(2)
        .into_iter()
        .map(|g| {
            let (cfg, opts) = (cfg.clone(), RunOptions { out_dir: dir.to_path_buf(), resume, max_steps: 0, device: Device::Cpu });
            std::thread::spawn(move || train_with(&cfg, &opts, Arc::new(g)).map_err(|e| format!("{e:#}")))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
}

/// Asserts that the latest checkpoints of `a` and `b` hold the same step and every tensor of
/// `a`'s, equal to 1e-9 relative (f64); returns the number of tensors compared.
fn assert_same_checkpoint(a: &std::path::Path, b: &std::path::Path, what: &str) -> usize {
    let dev = Device::Cpu;
    let (c1, c2) = (Checkpointer::load(&a.join("checkpoints/latest.json"), &dev).unwrap(), Checkpointer::load(&b.join("checkpoints/latest.json"), &dev).unwrap());
    assert_eq!(c1.step, c2.step, "{what}");
    for (name, t1) in &c1.tensors {
        let t2 = c2.tensors.get(name).unwrap_or_else(|| panic!("{what}: {name} missing"));
        let (x, y) = (t1.flatten_all().unwrap().to_vec1::<f64>().unwrap(), t2.flatten_all().unwrap().to_vec1::<f64>().unwrap());
        let scale = x.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = x.iter().zip(&y).fold(0f64, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= 1e-9 * scale + 1e-15, "{what}: {name} differs by {diff:e} (scale {scale:e})");
    }
    c1.tensors.len()
}

#[test]
fn world_two_with_batch_b_trains_as_world_one_with_batch_2b() {
    let f64_config = |batch: usize| RunConfig { train: mdeq::config::TrainConfig { dtype: "f64".into(), ..config(batch).train }, ..config(batch) };
    let one = out_dir("one");
    train_with(&f64_config(32), &RunOptions { out_dir: one.clone(), resume: false, max_steps: 0, device: Device::Cpu }, Arc::new(deq_train::SingleProcess::default())).unwrap();
    let two = out_dir("two");
    train_two_ranks(&f64_config(16), &two, false);
    let (m1, m2) = (metrics(&one), metrics(&two));
    assert_eq!((m1.len(), m2.len()), (2, 2), "two epochs; only rank 0 writes metrics");
    for (a, b) in m1.iter().zip(&m2) {
        assert_eq!(a["step"], b["step"], "3 steps of 32 samples per epoch on both");
        for key in ["train_loss", "test_loss"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-9 * x.abs(), "{key}: {x} (world 1) against {y} (world 2)");
        }
        assert_eq!(a["train_acc"], b["train_acc"]);
    }
    let compared = assert_same_checkpoint(&one, &two, "world 2");
    assert!(compared > 40, "{compared} tensors (parameters, optimiser state, batch-norm buffers) compared");

    // Resume across world sizes: epoch 1 in one process, epoch 2 resumed by two ranks, ends
    // where the uninterrupted world-1 run ends.
    let mixed = out_dir("mixed");
    train_with(&f64_config(32), &RunOptions { out_dir: mixed.clone(), resume: false, max_steps: 3, device: Device::Cpu }, Arc::new(deq_train::SingleProcess::default())).unwrap();
    train_two_ranks(&f64_config(16), &mixed, true);
    assert_same_checkpoint(&one, &mixed, "resumed by two ranks");
    for d in [one, two, mixed] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The multi-process path end to end: two `mdeq train` processes started by
/// `scripts/launch.sh` find each other over TCP (torchrun's environment, the id port) and end
/// where two in-process ranks end; both equal the one-process run with the global batch
/// (the test above), so this checks the transport, the launcher and the binary's wiring.
#[test]
fn two_processes_started_by_the_launcher_train_as_two_in_process_ranks() {
    let f64_config = |batch: usize| RunConfig { train: mdeq::config::TrainConfig { dtype: "f64".into(), epochs: 1, ..config(batch).train }, ..config(batch) };
    let cfg = f64_config(16);
    let threads = out_dir("threads");
    train_two_ranks(&cfg, &threads, false);
    let procs = out_dir("procs");
    let cfg_path = deq_train::cli::save_config(&procs.join("cfg"), &cfg).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/launch.sh");
    let run = procs.join("run");
    let out = std::process::Command::new("bash")
        .args([launcher, "--nproc-per-node", "2", "--master-port", &(port - 1).to_string(), "--"])
        .arg(env!("CARGO_BIN_EXE_mdeq"))
        .args(["train", "--threads", "1", "--config"])
        .arg(&cfg_path)
        .arg("--out")
        .arg(&run)
        .env("DEQ_DIST_TIMEOUT", "120")
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(log.contains("[rank 0] ") && log.contains("[rank 1] "), "{log}");
    let (m1, m2) = (metrics(&threads), metrics(&run));
    assert_eq!(m2.len(), 1, "rank 0 alone writes metrics");
    for key in ["train_loss", "test_loss", "train_acc", "step"] {
        let (x, y) = (m1[0][key].as_f64().unwrap(), m2[0][key].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-9 * x.abs(), "{key}: {x} (threads) against {y} (processes)");
    }
    assert!(assert_same_checkpoint(&threads, &run, "two processes") > 40);
    for d in [threads, procs] {
        let _ = std::fs::remove_dir_all(d);
    }
}
