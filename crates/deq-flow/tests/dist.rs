//! Data parallelism: a world-2 training run (ranks as threads of a `ThreadGroup`) with batch B
//! per rank ends where a world-1 run with batch 2B ends: the same parameters (in f64, to
//! rounding), with the context encoder's batch norm synchronised over the ranks.

mod common;

use std::sync::Arc;

use candle_core::Device;
use common::{params, textures, tiny, tmp};
use deq_flow::train::{train_with, RunOptions};
use deq_train::{Collective, SingleProcess, ThreadGroup};

#[test]
fn world_two_with_batch_b_trains_as_world_one_with_batch_2b() {
    let root = tmp("dist");
    textures(&root.join("images"));
    let mut cfg = tiny(&root.join("images"));
    cfg.train.steps = 3;
    cfg.data.pairs_per_epoch = 8;
    let mut one = cfg.clone();
    one.train.batch_size = 4;
    cfg.train.batch_size = 2;
    let opts = |out: &str| RunOptions { out_dir: root.join(out), resume: false, max_steps: 0, device: Device::Cpu };
    train_with(&one, &opts("one"), Arc::new(SingleProcess::default())).unwrap();
    let groups: Vec<Arc<dyn Collective>> = ThreadGroup::new(2).into_iter().map(|g| Arc::new(g) as Arc<dyn Collective>).collect();
    std::thread::scope(|s| {
        let hs: Vec<_> = groups.iter().enumerate().map(|(r, g)| {
            let (cfg, o) = (&cfg, opts(if r == 0 { "two" } else { "two-rank1" }));
            s.spawn(move || train_with(cfg, &o, g.clone()).unwrap())
        }).collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    let (a, b) = (params(&one, &root.join("one")), params(&cfg, &root.join("two")));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let scale = x.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        let diff = x.iter().zip(y).fold(0f64, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= 1e-9 * scale, "world 2 differs by {diff:e} (scale {scale:e})");
    }
    // Not trivially equal: training moved the parameters away from the initial ones.
    let mut fresh = one.clone();
    fresh.train.steps = 1;
    train_with(&fresh, &opts("fresh"), Arc::new(SingleProcess::default())).unwrap();
    assert_ne!(params(&fresh, &root.join("fresh")), a);
    std::fs::remove_dir_all(&root).unwrap();
}
