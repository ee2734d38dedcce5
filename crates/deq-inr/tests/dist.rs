//! Data parallelism in the INR fit: a world-2 fit (ranks as threads of a [`ThreadGroup`],
//! minibatch B each) ends where a world-1 fit with minibatch 2B ends, in f64 to rounding; a
//! full-batch fit refuses more than one rank.

use candle_core::{DType, Device};
use deq_core::rng::DeqRng;
use deq_inr::fit::{fit_with, FitConfig, FitOptions, FitResult};
use deq_inr::image_io::Image;
use deq_inr::model::{zoo_deq, DeqInr, InrModelConfig};
use deq_inr::net::InrNet;
use deq_inr::task::image_representation;
use deq_train::{Collective, SingleProcess, ThreadGroup};

fn net() -> InrNet {
    let cfg = InrModelConfig { width: 16, input_scale: 12.0, ..Default::default() };
    InrNet::Deq(DeqInr::new(cfg, 2, 1, zoo_deq(8), &mut DeqRng::new(3), DType::F64, &Device::Cpu).unwrap())
}

fn image() -> Image {
    Image { height: 16, width: 16, channels: 1, data: (0..256).map(|i| ((i % 16) as f32 * 0.4).sin() * ((i / 16) as f32 * 0.3).cos()).collect() }
}

fn params(n: &InrNet) -> Vec<f64> {
    n.named_vars().iter().flat_map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap()).collect()
}

fn run(batch: usize, group: &dyn Collective) -> (FitResult, Vec<f64>) {
    run_with(6, batch, group, &FitOptions::default())
}

fn run_with(steps: usize, batch: usize, group: &dyn Collective, opts: &FitOptions) -> (FitResult, Vec<f64>) {
    let (train, test) = image_representation(&image(), 0);
    let n = net();
    let cfg = FitConfig { steps, lr: 5e-3, batch_size: batch, eval_every: 3, clip_value: 0.5, ..Default::default() };
    let r = fit_with(&n, &train, &test, &cfg, opts, group).unwrap();
    let p = params(&n);
    (r, p)
}

/// A fit checkpointed by one process and resumed by two ranks ends where the uninterrupted
/// one-process fit ends (resume works across world sizes).
#[test]
fn a_one_process_checkpoint_resumes_on_two_ranks() {
    let (_, whole) = run(40, &SingleProcess::default());
    let dir = std::env::temp_dir().join(format!("deq-inr-dist-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    run_with(3, 40, &SingleProcess::default(), &FitOptions { out_dir: Some(dir.clone()), ..Default::default() });
    let ranks: Vec<Vec<f64>> = std::thread::scope(|s| {
        let hs: Vec<_> = ThreadGroup::new(2)
            .into_iter()
            .map(|g| {
                let opts = FitOptions { out_dir: Some(dir.clone()), resume: true, ..Default::default() };
                s.spawn(move || run_with(6, 20, &g, &opts).1)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let halfway = run_with(3, 40, &SingleProcess::default(), &FitOptions::default()).1;
    assert!(halfway.iter().zip(&whole).any(|(a, b)| (a - b).abs() > 1e-6), "the second half moves the parameters");
    for p in ranks {
        let diff = whole.iter().zip(&p).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-12, "resumed on two ranks: parameters differ by {diff:e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn world_two_fit_with_minibatch_b_equals_world_one_with_2b() {
    let (r1, p1) = run(40, &SingleProcess::default());
    let ranks: Vec<(FitResult, Vec<f64>)> = std::thread::scope(|s| {
        let hs: Vec<_> = ThreadGroup::new(2).into_iter().map(|g| s.spawn(move || run(20, &g))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let moved = p1.iter().zip(&params(&net())).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(moved > 1e-4, "the fit moved the parameters ({moved:e})");
    for (r2, p2) in &ranks {
        let diff = p1.iter().zip(p2).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-12, "parameters differ by {diff:e}");
        assert_eq!(r1.curve.len(), r2.curve.len());
        for (a, b) in r1.curve.iter().zip(&r2.curve) {
            assert!((a.train_loss - b.train_loss).abs() <= 1e-12 * a.train_loss.abs(), "{} against {}", a.train_loss, b.train_loss);
            assert_eq!(a.step, b.step);
        }
    }
    // Full batch with two ranks is refused by name.
    let errs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = ThreadGroup::new(2)
            .into_iter()
            .map(|g| {
                s.spawn(move || {
                    let (train, test) = image_representation(&image(), 0);
                    fit_with(&net(), &train, &test, &FitConfig { steps: 1, ..Default::default() }, &FitOptions::default(), &g).unwrap_err().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(errs.iter().all(|e| e.contains("fit.batch_size")), "{errs:?}");
}
