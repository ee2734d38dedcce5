//! End-to-end behaviour of the trainer on a small MNIST slice: the loss falls, checkpoints
//! round-trip and resume, configs reject unknown keys, a diverging run stops with a clear error.

use candle_core::Device;
use mdeq::config::{RunConfig, MNIST_SMALL};
use mdeq::train::{load_trained, train, RunOptions};

mod common;

fn tiny(out: &str) -> (RunConfig, RunOptions) {
    let cfg = common::tiny_config();
    let dir = std::env::temp_dir().join(format!("mdeq-test-{out}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    (cfg, RunOptions { out_dir: dir, resume: false, max_steps: 0, device: Device::Cpu })
}

fn metrics(opts: &RunOptions) -> Vec<serde_json::Value> {
    std::fs::read_to_string(opts.out_dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_few_steps_lower_the_loss_and_runs_are_reproducible() {
    let (cfg, opts) = tiny("loss");
    train(&cfg, &opts).unwrap();
    let m = metrics(&opts);
    assert_eq!(m.len(), 2);
    let (l1, l2) = (m[0]["train_loss"].as_f64().unwrap(), m[1]["train_loss"].as_f64().unwrap());
    assert!(l2 < l1 && l1 < 2.35, "training loss should fall: {l1} -> {l2}");
    assert!(m[1]["train_mean_nfe"].as_f64().unwrap() >= 1.0);
    // Solver statistics per evaluation: training and test solves, and the probe's trace.
    for r in &m {
        assert_eq!(r["train_fwd_nfe_max"], 3.0, "f_max_iter 3: {r}");
        assert_eq!(r["test_fwd_nfe_mean"], 3.0);
        let (mean, max) = (r["test_fwd_rel_residual_mean"].as_f64().unwrap(), r["test_fwd_rel_residual_max"].as_f64().unwrap());
        assert!(mean > 0.0 && mean <= max, "{mean} {max}");
        assert_eq!(r["probe_rel_trace"].as_array().unwrap().len(), 3, "one residual per solver step of the probe batch");
        assert!(r.get("train_bwd_nfe_mean").is_none(), "phantom gradients: no adjoint solves");
    }
    let plots = deq_train::plot::plot_run(&opts.out_dir, None).unwrap();
    assert_eq!(plots.len(), 3, "{plots:?}");
    // Same seed, same run.
    let (cfg2, opts2) = tiny("loss-again");
    train(&cfg2, &opts2).unwrap();
    assert_eq!(metrics(&opts2)[1]["train_loss"], m[1]["train_loss"]);
    let _ = std::fs::remove_dir_all(&opts.out_dir);
    let _ = std::fs::remove_dir_all(&opts2.out_dir);
}

#[test]
fn checkpoints_round_trip_and_resume_continues_exactly() {
    // Reference: two epochs in one go (10 steps each).
    let (cfg, full) = tiny("full");
    train(&cfg, &full).unwrap();
    // The same run stopped after the first epoch...
    let (cfg, part) = tiny("resume");
    let first = train(&cfg, &RunOptions { max_steps: 10, ..part.clone() }).unwrap();
    assert_eq!(metrics(&part).len(), 1);
    // ...whose checkpoint evaluates like the live model...
    let model = load_trained(&cfg, &part.out_dir, &Device::Cpu).unwrap();
    let split = std::sync::Arc::new(mdeq::train::load_split(&cfg, false).unwrap());
    let loader = mdeq::train::make_loader(&cfg, split, false, Default::default()).unwrap();
    let loaded = mdeq::train::evaluate(&model, &loader, false).unwrap();
    assert_eq!(loaded.accuracy, first.test.accuracy);
    assert_eq!(loaded.loss, first.test.loss);
    // ...and, resumed, finishes exactly as the uninterrupted run (weights, optimiser momentum,
    // batch-norm statistics, schedule position and data order all restored).
    train(&cfg, &RunOptions { resume: true, ..part.clone() }).unwrap();
    let (a, b) = (metrics(&full), metrics(&part));
    assert_eq!(b.len(), 2, "the resumed run appends its epoch");
    for key in ["step", "train_loss", "test_acc", "test_loss"] {
        assert_eq!(b[1][key], a[1][key], "{key} after resuming");
    }
    let _ = std::fs::remove_dir_all(&full.out_dir);
    let _ = std::fs::remove_dir_all(&part.out_dir);
}

#[test]
fn unknown_config_keys_are_rejected_with_their_name() {
    let bad = MNIST_SMALL.replace("[train]", "[train]\nlearning_rate = 0.1");
    let e = RunConfig::from_toml(&bad, "bad.toml").unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("learning_rate"), "{e}");
    let bad = MNIST_SMALL.replace("[deq]", "[deq]\nf_sovler = 'anderson'");
    let e = RunConfig::from_toml(&bad, "bad.toml").unwrap_err().to_string();
    assert!(e.contains("f_sovler"), "{e}");
    let bad = MNIST_SMALL.replace("optimizer = \"sgd\"", "optimizer = \"lion\"");
    let e = RunConfig::from_toml(&bad, "bad.toml").unwrap_err().to_string();
    assert!(e.contains("train.optimizer"), "{e}");
}

#[test]
fn a_diverging_run_stops_with_a_clear_message() {
    let (mut cfg, opts) = tiny("nan");
    cfg.train.lr = 1e12;
    cfg.train.schedule = "constant".into();
    let e = format!("{:#}", train(&cfg, &opts).unwrap_err());
    assert!(e.contains("diverged at step") && e.contains("stage `") && (e.contains("NaN") || e.contains("inf")), "{e}");
    assert!(e.contains("on_nonfinite"), "the message names the option that skips such batches: {e}");
    let _ = std::fs::remove_dir_all(&opts.out_dir);
    // With `skip`, faulty batches are dropped and counted until more than `max_skipped`.
    let (mut cfg, opts) = tiny("nan-skip");
    cfg.train.lr = 1e12;
    cfg.train.schedule = "constant".into();
    cfg.train.on_nonfinite = deq_train::faults::OnNonFinite::Skip;
    cfg.train.max_skipped = 3;
    let e = format!("{:#}", train(&cfg, &opts).unwrap_err());
    assert!(e.contains("3 batches were skipped already"), "{e}");
    let _ = std::fs::remove_dir_all(&opts.out_dir);
}

#[test]
fn missing_dataset_names_the_folder() {
    let (mut cfg, opts) = tiny("missing");
    cfg.data.dir = "/nonexistent/mnist".into();
    let e = format!("{:#}", train(&cfg, &opts).unwrap_err());
    assert!(e.contains("/nonexistent/mnist"), "{e}");
}

#[test]
fn predict_gives_probabilities_for_png_files() {
    let (cfg, opts) = tiny("predict");
    train(&cfg, &RunOptions { max_steps: 5, ..opts.clone() }).unwrap();
    let model = load_trained(&cfg, &opts.out_dir, &Device::Cpu).unwrap();
    // Two MNIST test digits written as PNG files (one grey, one RGB).
    let ds = mdeq::train::load_split(&cfg, false).unwrap();
    let grey = opts.out_dir.join("digit0.png");
    let rgb = opts.out_dir.join("digit1.png");
    image::GrayImage::from_raw(28, 28, ds.image(0).to_vec()).unwrap().save(&grey).unwrap();
    let px: Vec<u8> = ds.image(1).iter().flat_map(|&v| [v, v, v]).collect();
    image::RgbImage::from_raw(28, 28, px).unwrap().save(&rgb).unwrap();
    let probs = mdeq::train::predict(&cfg, &model, &[grey.clone(), rgb], (28, 28)).unwrap();
    assert_eq!(probs.len(), 2);
    for p in &probs {
        assert_eq!(p.len(), 10);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
    // The same image through the test loader gives the same probabilities.
    let loader = mdeq::train::make_loader(&cfg, std::sync::Arc::new(ds), false, Default::default()).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    let direct = model.forward(&batch.images.narrow(0, 0, 1).unwrap(), false).unwrap();
    let direct = deq_train::metrics::softmax_probs(&direct.logits).unwrap();
    for (a, b) in direct[0].iter().zip(&probs[0]) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    // A file that is not an image is an error naming it.
    let bad = opts.out_dir.join("not-an-image.png");
    std::fs::write(&bad, b"nope").unwrap();
    let e = format!("{:#}", mdeq::train::predict(&cfg, &model, &[bad], (28, 28)).unwrap_err());
    assert!(e.contains("not-an-image.png"), "{e}");
    let _ = std::fs::remove_dir_all(&opts.out_dir);
}
