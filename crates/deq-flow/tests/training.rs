//! The trainer: reproducible runs, bit-identical resume, evaluation on a folder of pairs,
//! configuration errors that name the key or the file.

mod common;

use std::path::Path;

use candle_core::Device;
use common::{params, textures, tiny, tmp};
use deq_flow::config::{RunConfig, SYNTHETIC_TINY};
use deq_flow::train::{train, RunOptions};

fn lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn runs_are_reproducible_and_resume_continues_exactly() {
    let root = tmp("resume");
    textures(&root.join("images"));
    let cfg = tiny(&root.join("images"));
    let opts = |out: &str, resume: bool, max_steps: usize| RunOptions { out_dir: root.join(out), resume, max_steps, device: Device::Cpu };
    let a = train(&cfg, &opts("a", false, 0)).unwrap();
    assert_eq!(a.steps, 5);
    // Stopped after 3 steps (crossing an epoch: 6 pairs / batch 2 = 3 steps per epoch), then
    // resumed to 5.
    train(&cfg, &opts("b", false, 3)).unwrap();
    train(&cfg, &opts("b", true, 0)).unwrap();
    assert_eq!(params(&cfg, &root.join("a")), params(&cfg, &root.join("b")));
    let (la, lb) = (lines(&root.join("a")), lines(&root.join("b")));
    assert_eq!(la.len(), 5);
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x["train_loss"], y["train_loss"], "step {}", x["step"]);
        assert_eq!(x["lr"], y["lr"]);
    }
    assert!(la.iter().all(|r| r["train_loss"].as_f64().unwrap().is_finite() && r["train_fwd_nfe_mean"].as_f64().unwrap() > 0.0));
    // A different seed trains differently.
    let mut other = cfg.clone();
    other.train.seed = 7;
    train(&other, &opts("c", false, 2)).unwrap();
    assert_ne!(lines(&root.join("c"))[0]["train_loss"], la[0]["train_loss"]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn evaluation_on_a_folder_of_pairs_reports_every_pair() {
    let root = tmp("eval");
    textures(&root.join("images"));
    let mut cfg = tiny(&root.join("images"));
    // Two generated pairs written in the folder layout, evaluated after two steps.
    let gen = deq_flow::data::synth::Generator::new(deq_flow::train::load_textures(&cfg.data.images).unwrap(), cfg.data.synthetic.clone()).unwrap();
    for (i, name) in ["p0", "p1"].iter().enumerate() {
        let p = gen.pair(i as u64);
        let d = root.join("pairs").join(name);
        std::fs::create_dir_all(&d).unwrap();
        let (h, w) = (p.flow.height, p.flow.width);
        let bytes = |v: &[f32]| v.iter().map(|x| x.round() as u8).collect::<Vec<_>>();
        deq_flow::io::frames::write_rgb_png(&d.join("frame1.png"), w, h, &bytes(&p.img1)).unwrap();
        deq_flow::io::frames::write_rgb_png(&d.join("frame2.png"), w, h, &bytes(&p.img2)).unwrap();
        deq_flow::io::flo::write(&d.join("flow.flo"), &p.flow).unwrap();
    }
    cfg.eval.datasets = vec![format!("folder:{}", root.join("pairs").display())];
    let s = train(&cfg, &RunOptions { out_dir: root.join("run"), resume: false, max_steps: 2, device: Device::Cpu }).unwrap();
    assert_eq!(s.eval.len(), 1);
    let r = &s.eval[0];
    assert_eq!(r.pairs.len(), 2);
    assert_eq!(r.pairs[0].name, "p0");
    assert!(r.epe.is_finite() && r.epe > 0.0 && r.nfe > 0.0);
    // Pooled EPE over equal-sized pairs is the mean of the pairs'.
    assert!((r.epe - r.epe_pair_mean).abs() < 1e-9);
    let last = lines(&root.join("run")).pop().unwrap();
    assert!(last.as_object().unwrap().keys().any(|k| k.starts_with("eval_folder_") && k.ends_with("_epe")), "{last}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn configuration_errors_name_the_key_or_the_file() {
    let bad = SYNTHETIC_TINY.replace("[train]", "[train]\nlearning_rate = 1.0");
    assert!(RunConfig::from_toml(&bad, "x").unwrap_err().contains("learning_rate"));
    let bad = SYNTHETIC_TINY.replace("crop = [192, 256]", "crop = [190, 256]");
    assert!(RunConfig::from_toml(&bad, "x").unwrap_err().contains("data.augment.crop"));
    let bad = SYNTHETIC_TINY.replace("datasets = [\"folder:flow\"]", "datasets = [\"middlebury\"]");
    assert!(RunConfig::from_toml(&bad, "x").unwrap_err().contains("eval.datasets"));
    let bad = SYNTHETIC_TINY.replace("[deq]", "[deq]\njac_loss_weight = 1.0\njac_loss_freq = 1.0");
    assert!(RunConfig::from_toml(&bad, "x").unwrap_err().contains("jac_loss_weight"));
    let root = tmp("missing");
    let mut cfg = tiny(&root.join("nope"));
    cfg.data.images = vec![root.join("nope")];
    let err = train(&cfg, &RunOptions { out_dir: root.join("run"), resume: false, max_steps: 1, device: Device::Cpu }).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn every_shipped_config_parses_and_the_zoo_sizes_have_the_zoo_counts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/deq-flow");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let cfg = RunConfig::from_toml(&std::fs::read_to_string(&p).unwrap(), &p.display().to_string()).unwrap();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if name.ends_with("-B") {
            assert_eq!(cfg.model, deq_flow::ModelConfig { all_grad: cfg.model.all_grad, ..deq_flow::ModelConfig::b() }, "{name}");
        }
        if name.ends_with("-H") {
            assert_eq!(cfg.model, deq_flow::ModelConfig { all_grad: cfg.model.all_grad, ..deq_flow::ModelConfig::h() }, "{name}");
        }
        n += 1;
    }
    assert!(n >= 5);
}

#[test]
fn a_diverging_run_stops_naming_step_and_stage_or_skips_and_counts() {
    let root = tmp("nan");
    textures(&root.join("images"));
    let mut cfg = tiny(&root.join("images"));
    // Steps of 1e20 overflow f32 activations from the second step.
    cfg.train.lr = 1e20;
    cfg.train.dtype = "f32".into();
    let opts = |out: &str| RunOptions { out_dir: root.join(out), resume: false, max_steps: 0, device: Device::Cpu };
    let e = format!("{:#}", train(&cfg, &opts("stop")).unwrap_err());
    assert!(e.contains("diverged at step") && e.contains("stage `") && e.contains("on_nonfinite"), "{e}");
    // Skipped batches pass their step without an update and are counted, in the metrics and
    // in the checkpoint; past `max_skipped` the run stops.
    cfg.train.on_nonfinite = deq_train::faults::OnNonFinite::Skip;
    cfg.train.max_skipped = 10;
    let s = train(&cfg, &opts("skip")).unwrap();
    assert_eq!(s.steps, 5);
    let skipped = lines(&root.join("skip")).last().unwrap()["skipped_batches"].as_u64().unwrap();
    assert!(skipped >= 1, "{skipped}");
    let c = deq_train::Checkpointer::load(&root.join("skip/checkpoints/latest.json"), &Device::Cpu).unwrap();
    assert_eq!(c.meta["skipped_batches"].as_u64(), Some(skipped));
    cfg.train.max_skipped = skipped as usize - 1;
    let e = format!("{:#}", train(&cfg, &opts("skip-stop")).unwrap_err());
    assert!(e.contains(&format!("{} batches were skipped already", skipped - 1)), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The interrupted run of [`sigterm_checkpoints_the_step_and_resume_finishes_the_run`], in a
/// child process of its own (a simulated signal is process-wide): SIGTERM before the first
/// step ends the run after that step with a checkpoint and `Interrupted`.
#[test]
fn sigterm_child() {
    let Some(root) = deq_train::hostile::child_case() else { return };
    let root = Path::new(&root);
    deq_train::signals::simulate(15);
    let e = train(&tiny(&root.join("images")), &RunOptions { out_dir: root.join("b"), resume: false, max_steps: 0, device: Device::Cpu }).unwrap_err();
    assert!(matches!(&e, deq_train::TrainError::Interrupted { signal: "SIGTERM", step: 1, .. }), "{e}");
    assert_eq!(deq_train::Checkpointer::load(&root.join("b/checkpoints/latest.json"), &Device::Cpu).unwrap().step, 1);
}

#[test]
fn sigterm_checkpoints_the_step_and_resume_finishes_the_run() {
    let root = tmp("sigterm");
    textures(&root.join("images"));
    let cfg = tiny(&root.join("images"));
    let opts = |out: &str, resume: bool| RunOptions { out_dir: root.join(out), resume, max_steps: 0, device: Device::Cpu };
    train(&cfg, &opts("a", false)).unwrap();
    deq_train::hostile::run_in_child("sigterm_child", &root.display().to_string()).unwrap();
    assert_eq!(train(&cfg, &opts("b", true)).unwrap().steps, 5);
    assert_eq!(params(&cfg, &root.join("a")), params(&cfg, &root.join("b")));
    let (la, lb) = (lines(&root.join("a")), lines(&root.join("b")));
    assert_eq!(la.iter().map(|r| &r["train_loss"]).collect::<Vec<_>>(), lb.iter().map(|r| &r["train_loss"]).collect::<Vec<_>>());
    std::fs::remove_dir_all(&root).unwrap();
}
