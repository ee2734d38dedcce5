//! Training on a small synthetic stream: the loss falls below the unigram entropy, and a run
//! stopped at a checkpoint and resumed ends bit-identical to an uninterrupted one (parameters,
//! Adam state, the memory, the metrics).

use candle_core::Device;
use deq_lm::config::RunConfig;
use deq_lm::train::{train, Streams, TrainOptions};
use deq_train::Checkpointer;

/// A stream where every token predicts the next one up to noise: t -> (t + 5) mod 13 (one
/// cycle through the whole vocabulary), every seventh token replaced by 12.
fn stream(n: usize, offset: usize) -> Vec<u32> {
    let mut t = offset % 13;
    (0..n)
        .map(|i| {
            t = (t + 5) % 13;
            if (i + offset) % 7 == 0 { 12 } else { t as u32 }
        })
        .collect()
}

fn cfg() -> RunConfig {
    RunConfig::from_toml(
        r#"
[model]
variant = "deq-lm"
n_layer = 1
d_model = 16
d_embed = 16
n_head = 2
d_head = 8
d_inner = 24
dropout = 0.1
adaptive = false
mem_len = 8
init_std = 0.0

[deq]
f_solver = "fixed_point_iter"
f_max_iter = 6
f_tol = 0.0
eval_f_max_iter = 6
grad = [1]
tau = 1.0

[train]
batch_size = 4
tgt_len = 8
max_step = 150
lr = 2e-2
warmup_step = 5
clip = 0.25
eval_interval = 50
eval_batch_size = 2
log_interval = 50
seed = 3
"#,
        "test",
    )
    .unwrap()
}

fn data() -> Streams {
    Streams { train: stream(400, 0), valid: stream(120, 3), test: stream(120, 5), n_token: 13 }
}

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("deq-lm-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn the_loss_falls_and_a_resumed_run_is_bit_identical() {
    let (cfg, data) = (cfg(), data());
    let whole = dir("whole");
    let mut losses = Vec::new();
    let s = train(&cfg, &data, &TrainOptions { out_dir: Some(whole.clone()), ..Default::default() }, |_, l| losses.push(l)).unwrap();
    assert_eq!(s.steps, 150);
    // The unigram entropy of the stream is about ln 13 = 2.56; the model must do much better.
    let v = s.valid.unwrap();
    assert!(v.loss < 1.5 && losses[149] < losses[0] - 0.5, "valid {v:?}, training {:.3} -> {:.3}", losses[0], losses[149]);
    // 100 steps, then resumed to 150 (an epoch has 12 segments: the checkpoint falls inside
    // one, so the memory is carried across it).
    let part = dir("part");
    train(&cfg, &data, &TrainOptions { out_dir: Some(part.clone()), max_steps: 100, ..Default::default() }, |_, _| {}).unwrap();
    let mut resumed_losses = Vec::new();
    train(&cfg, &data, &TrainOptions { out_dir: Some(part.clone()), resume: true, ..Default::default() }, |s, l| resumed_losses.push((s, l))).unwrap();
    assert_eq!(resumed_losses.first().map(|p| p.0), Some(101));
    for (s, l) in &resumed_losses {
        assert_eq!(*l, losses[s - 1], "step {s}");
    }
    let load = |d: &std::path::Path| Checkpointer::load(&d.join("checkpoints/latest.json"), &Device::Cpu).unwrap();
    let (a, b) = (load(&whole), load(&part));
    assert_eq!(a.step, b.step);
    assert!(a.tensors.len() > 20 && a.tensors.contains_key("memory.z"));
    let f64s = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
    for (name, t) in &a.tensors {
        let (x, y) = (f64s(t), f64s(&b.tensors[name]));
        assert_eq!(x, y, "{name}");
    }
    // The same records, up to the clock's figures.
    let metrics = |d: &std::path::Path| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().retain(|k, _| !(k.contains("seconds") || k.contains("minutes") || k.contains("per_s")));
                v
            })
            .collect()
    };
    let (mw, mp) = (metrics(&whole), metrics(&part));
    assert_eq!(mw.len(), 3 + 3, "three training records (log_interval 50) and three evaluations");
    assert_eq!(mw, mp);
    // SIGTERM (in a child process: the simulated signal is process-wide) ends a run after its
    // first step with a checkpoint; the resumed run ends where the whole one did.
    let signalled = dir("sigterm");
    deq_train::hostile::run_in_child("sigterm_child", &signalled.display().to_string()).unwrap();
    train(&cfg, &data, &TrainOptions { out_dir: Some(signalled.clone()), resume: true, ..Default::default() }, |_, _| {}).unwrap();
    let c = load(&signalled);
    assert_eq!(c.step, a.step);
    for (name, t) in &a.tensors {
        assert_eq!(f64s(t), f64s(&c.tensors[name]), "{name} after SIGTERM and resume");
    }
    assert_eq!(metrics(&signalled), mw);
    for d in [whole, part, signalled] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The interrupted run of [`the_loss_falls_and_a_resumed_run_is_bit_identical`], in a child
/// process of its own: SIGTERM before the first step ends the run after that step with a
/// checkpoint and `Interrupted`.
#[test]
fn sigterm_child() {
    let Some(out) = deq_train::hostile::child_case() else { return };
    deq_train::signals::simulate(15);
    let e = train(&cfg(), &data(), &TrainOptions { out_dir: Some(out.clone().into()), ..Default::default() }, |_, _| {}).unwrap_err();
    assert!(format!("{e:#}").contains("SIGTERM") && format!("{e:#}").contains("step 1"), "{e:#}");
    assert_eq!(Checkpointer::load(&std::path::Path::new(&out).join("checkpoints/latest.json"), &Device::Cpu).unwrap().step, 1);
}

#[test]
fn evaluation_may_use_a_longer_memory_and_resume_needs_a_folder() {
    let mut c = cfg();
    c.train.max_step = 60;
    let short = train(&c, &data(), &TrainOptions::default(), |_, _| {}).unwrap().valid.unwrap();
    c.train.eval_mem_len = 32;
    let long = train(&c, &data(), &TrainOptions::default(), |_, _| {}).unwrap().valid.unwrap();
    assert_eq!(short.tokens, long.tokens);
    assert_ne!(short.loss, long.loss, "a memory of 32 positions reads further back than one of 8");
    let e = train(&cfg(), &data(), &TrainOptions { resume: true, ..Default::default() }, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("--resume needs an output folder"), "{e}");
}

#[test]
fn a_diverging_run_stops_naming_step_and_stage_or_skips_and_counts() {
    let mut c = cfg();
    c.train.max_step = 12;
    c.train.lr = 1e12;
    let e = train(&c, &data(), &TrainOptions::default(), |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("diverged at step") && e.contains("stage `") && e.contains("on_nonfinite"), "{e}");
    c.train.on_nonfinite = deq_train::faults::OnNonFinite::Skip;
    c.train.max_skipped = 3;
    let e = train(&c, &data(), &TrainOptions::default(), |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("3 batches were skipped already"), "{e}");
    // Within the limit the run ends, its checkpoint counting the skipped segments.
    c.train.max_skipped = 12;
    let out = dir("skip");
    let mut seen = Vec::new();
    let s = train(&c, &data(), &TrainOptions { out_dir: Some(out.clone()), ..Default::default() }, |s, _| seen.push(s)).unwrap();
    assert_eq!(s.steps, 12);
    let ck = Checkpointer::load(&out.join("checkpoints/latest.json"), &Device::Cpu).unwrap();
    let skipped = ck.meta["skipped_batches"].as_u64().unwrap() as usize;
    assert!(skipped >= 1 && seen.len() + skipped == 12, "{skipped} skipped, {seen:?} trained");
    let _ = std::fs::remove_dir_all(out);
}
