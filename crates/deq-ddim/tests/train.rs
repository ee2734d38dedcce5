//! Training on the committed MNIST: a resumed run ends bit-identical to an uninterrupted one,
//! and the run folder holds what `sample` and `invert` need.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use deq_ddim::config::{RunConfig, MNIST};
use deq_ddim::invert::{invert, InvertMethod};
use deq_ddim::train::{load_dataset, load_trained, train, RunOptions};

fn tiny() -> RunConfig {
    let mut c = RunConfig::from_toml(MNIST, "mnist.toml").unwrap();
    c.model.ch_mult = vec![1];
    c.model.attn_resolutions = vec![];
    c.model.num_res_blocks = 1;
    c.train.steps = 4;
    c.train.batch_size = 2;
    c.train.checkpoint_every = 2;
    c.train.sample_every = 0;
    c.train.sample_count = 2;
    c.train.log_every = 1;
    c.train.warmup_steps = 2;
    c.sample.steps = 2;
    c.validate().unwrap();
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("deq-ddim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let c = deq_ddim::train::load_checkpoint(dir, &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = c.tensors.iter().map(|(k, t)| (k.clone(), t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn resume_is_bit_identical_and_the_run_can_be_sampled_and_inverted() {
    let cfg = tiny();
    let (a, b) = (tmp("a"), tmp("b"));
    let opts = |out: &Path, resume: bool, max_steps: usize| RunOptions { out_dir: out.to_path_buf(), resume, max_steps, device: Device::Cpu };
    let full = train(&cfg, &opts(&a, false, 0)).unwrap();
    assert_eq!(full.steps, 4);
    train(&cfg, &opts(&b, false, 2)).unwrap();
    let resumed = train(&cfg, &opts(&b, true, 0)).unwrap();
    assert_eq!(resumed.steps, 4);
    let (ta, tb) = (tensors(&a), tensors(&b));
    assert!(ta.iter().any(|(k, _)| k.starts_with("ema.")) && ta.iter().any(|(k, _)| k.starts_with("optim.")));
    assert_eq!(ta.len(), tb.len());
    for ((ka, va), (kb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(ka, kb);
        assert!(va == vb, "{ka} differs after resume");
    }
    assert!(a.join("samples").join("step-0000004.png").exists());
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("train_loss")).count(), 4);

    // Inversion through the trained run reduces the loss with both methods.
    let model = load_trained(&cfg, &a, &Device::Cpu, true).unwrap();
    let sch = cfg.diffusion.schedule().unwrap();
    let test = load_dataset(&cfg, false).unwrap();
    let px: Vec<f32> = test.image(0).iter().map(|&v| v as f32 / 127.5 - 1.0).collect();
    let target = candle_core::Tensor::from_vec(px, (1, 1, 28, 28), &Device::Cpu).unwrap();
    for method in [InvertMethod::Deq, InvertMethod::Chain] {
        let mut ic = cfg.invert.clone();
        (ic.method, ic.steps, ic.iters, ic.lr, ic.smart_init) = (method, 2, 4, 0.05, false);
        ic.deq.max_iter = 4;
        let noise = deq_core::rng::DeqRng::new(1).randn((1, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let r = invert(&model, &sch, &ic, &target, Some(&noise), |_| {}).unwrap();
        let (first, best) = (r.trace[0].loss, r.trace.iter().map(|t| t.loss).fold(f64::INFINITY, f64::min));
        assert!(best < 0.9 * first, "{method:?}: loss {first} -> {best}");
        assert_eq!(r.mse_per_image.len(), 1);
    }
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn bad_data_and_sizes_are_named() {
    let mut c = tiny();
    c.data.root = Some(PathBuf::from("/nonexistent/mnist"));
    let e = load_dataset(&c, true).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/mnist"), "{e}");
    let mut c = tiny();
    c.model.resolution = 32;
    c.model.attn_resolutions = vec![];
    let e = load_dataset(&c, true).unwrap_err().to_string();
    assert!(e.contains("model.resolution"), "{e}");
}

#[test]
fn a_diverging_run_stops_naming_step_and_stage_or_skips_and_counts() {
    let mut cfg = tiny();
    // Adam steps of about 1e20 overflow the f32 loss from the second step.
    cfg.train.lr = 1e20;
    let root = tmp("nan");
    let opts = |out: &str| RunOptions { out_dir: root.join(out), resume: false, max_steps: 0, device: Device::Cpu };
    let e = format!("{:#}", train(&cfg, &opts("stop")).unwrap_err());
    assert!(e.contains("diverged at step 1") && e.contains("stage `loss`") && e.contains("on_nonfinite"), "{e}");
    // Skipped batches pass their step without an update and are counted, in the metrics and in
    // the checkpoint; past `max_skipped` the run stops.
    cfg.train.on_nonfinite = deq_train::faults::OnNonFinite::Skip;
    cfg.train.max_skipped = 10;
    let s = train(&cfg, &opts("skip")).unwrap();
    assert_eq!(s.steps, 4);
    let metrics = std::fs::read_to_string(root.join("skip/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().filter(|l| l.contains("skipped_batches")).last().unwrap()).unwrap();
    let skipped = last["skipped_batches"].as_u64().unwrap();
    assert_eq!(skipped, 3, "{metrics}");
    let c = deq_ddim::train::load_checkpoint(&root.join("skip"), &Device::Cpu).unwrap();
    assert_eq!(c.meta["skipped_batches"].as_u64(), Some(skipped));
    cfg.train.max_skipped = 2;
    let e = format!("{:#}", train(&cfg, &opts("skip-stop")).unwrap_err());
    assert!(e.contains("diverged at step 3") && e.contains("2 batches were skipped already"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The interrupted run of [`sigterm_checkpoints_the_step_and_resume_finishes_the_run`], in a
/// child process of its own (a simulated signal is process-wide): SIGTERM before the first
/// step ends the run after that step with a checkpoint and `Interrupted`.
#[test]
fn sigterm_child() {
    let Some(dir) = deq_train::hostile::child_case() else { return };
    deq_train::signals::simulate(15);
    let e = train(&tiny(), &RunOptions { out_dir: PathBuf::from(&dir), resume: false, max_steps: 0, device: Device::Cpu }).unwrap_err();
    assert!(matches!(&e, deq_train::TrainError::Interrupted { signal: "SIGTERM", step: 1, .. }), "{e}");
    assert_eq!(deq_ddim::train::load_checkpoint(Path::new(&dir), &Device::Cpu).unwrap().step, 1);
}

#[test]
fn sigterm_checkpoints_the_step_and_resume_finishes_the_run() {
    let cfg = tiny();
    let (a, b) = (tmp("sig-a"), tmp("sig-b"));
    let opts = |out: &Path, resume: bool| RunOptions { out_dir: out.to_path_buf(), resume, max_steps: 0, device: Device::Cpu };
    train(&cfg, &opts(&a, false)).unwrap();
    deq_train::hostile::run_in_child("sigterm_child", &b.display().to_string()).unwrap();
    assert_eq!(train(&cfg, &opts(&b, true)).unwrap().steps, 4);
    assert!(tensors(&a) == tensors(&b), "the resumed run ends elsewhere");
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}
