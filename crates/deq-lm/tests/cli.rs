//! The `deq-lm` binary end to end on a small folder of text: train (the vocabulary and token
//! streams cached next to the data, the tokenizer saved in the run), refuse to overwrite a
//! run, resume, evaluate with a table over memory lengths and solver budgets, and generate
//! reproducibly from a seed; a BPE run on the same text.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("deq-lm-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn deq_lm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deq-lm")).args(args).env("RUST_LOG", "warn").env_remove("DEQ_DATA_DIR").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

const CONFIG: &str = r#"
[model]
n_layer = 1
d_model = 16
d_embed = 16
n_head = 2
d_head = 8
d_inner = 24
dropout = 0.1
adaptive = false
mem_len = 8

[deq]
f_solver = "fixed_point_iter"
f_max_iter = 0
eval_f_max_iter = 4
grad = [3]

[train]
batch_size = 4
tgt_len = 8
max_step = 6
lr = 1e-2
warmup_step = 2
eval_interval = 3
eval_batch_size = 2
log_interval = 3
"#;

fn corpus(dir: &Path) {
    let lines: String = (0..300).map(|i| format!("the {} sat on the {} number {}\n", ["cat", "dog", "bird"][i % 3], ["mat", "log"][i % 2], i % 5)).collect();
    std::fs::write(dir.join("a.txt"), lines).unwrap();
}

#[test]
fn train_resume_eval_and_generate() {
    let (data, run) = (tmp("data"), tmp("run"));
    corpus(&data);
    let cfg = run.join("tiny.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let (cfg_s, run_s, data_set) = (cfg.display().to_string(), run.join("out").display().to_string(), format!("data.dir={}", data.display()));
    let train = |extra: &[&str]| {
        let mut a = vec!["train", "--config", &cfg_s, "--out", &run_s, "--set", &data_set, "--threads", "1"];
        a.extend_from_slice(extra);
        deq_lm(&a)
    };
    let (ok, stdout, stderr) = train(&["--max-steps", "3"]);
    assert!(ok, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["steps"], 3);
    assert!(run.join("out/tokenizer.json").is_file() && run.join("out/config.toml").is_file());
    let cached: Vec<String> = std::fs::read_dir(data.join("deq-lm-cache")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(cached.iter().filter(|n| n.ends_with(".ids")).count(), 3, "{cached:?}");
    // A second run into the same folder is refused; --resume continues to max_step.
    let (ok, _, stderr) = train(&[]);
    assert!(!ok && stderr.contains("already holds a run") && stderr.contains("--resume"), "{stderr}");
    let (ok, stdout, stderr) = train(&["--resume"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"steps\":6"), "{stdout}");
    let metrics = std::fs::read_to_string(run.join("out/metrics.jsonl")).unwrap();
    assert!(metrics.contains("train_state_rel_residual") && metrics.contains("test_ppl") && metrics.contains("tokens_per_s"), "{metrics}");
    // The table: one row per memory length and per solver budget.
    let (ok, stdout, stderr) = deq_lm(&["eval", "--out", &run_s, "--mem-lens", "0,8,16", "--f-max-iters", "1,4", "--threads", "1"]);
    assert!(ok, "{stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows.iter().map(|r| r["mem_len"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 8, 16, 8, 8]);
    assert_eq!((rows[3]["nfe"].as_f64().unwrap(), rows[3]["eval_f_max_iter"].as_u64().unwrap()), (1.0, 1));
    assert!(rows.iter().all(|r| r["ppl"].as_f64().unwrap().is_finite()));
    assert_ne!(rows[0]["ppl"], rows[1]["ppl"], "the memory is read");
    assert!(stderr.contains("| mem_len | eval_f_max_iter |"), "{stderr}");
    // Generation is reproducible from its seed and continues the prompt.
    let gen = |seed: &str| deq_lm(&["generate", "--out", &run_s, "--prompt", "the cat sat", "--tokens", "12", "--seed", seed, "--top-k", "5", "--threads", "1"]);
    let (a, b) = (gen("1"), gen("1"));
    assert!(a.0, "{}", a.2);
    assert_eq!(a.1, b.1);
    assert!(a.1.starts_with("the cat sat"), "{}", a.1);
    assert!(a.1.split_whitespace().count() >= 3 + 6, "{}", a.1);
    let (ok, _, stderr) = deq_lm(&["generate", "--out", &run_s, "--temperature=-1"]);
    assert!(!ok && stderr.contains("--temperature"), "{stderr}");
    // Unknown keys and a missing corpus are named.
    let (ok, _, stderr) = deq_lm(&["train", "--config", &cfg_s, "--set", "train.lr_max=1", "--dry-run"]);
    assert!(!ok && stderr.contains("lr_max"), "{stderr}");
    let (ok, _, stderr) = deq_lm(&["train", "--config", &cfg_s, "--set", "data.dir=/no/such/corpus", "--dry-run"]);
    assert!(!ok && stderr.contains("/no/such/corpus"), "{stderr}");
    // A byte-level BPE run on the same text.
    let bpe_run = run.join("bpe").display().to_string();
    let (ok, _, stderr) = deq_lm(&["train", "--config", &cfg_s, "--out", &bpe_run, "--set", &data_set, "--set", "data.tokenizer=bpe", "--set", "data.bpe_vocab=300", "--max-steps", "2", "--threads", "1"]);
    assert!(ok, "{stderr}");
    let tok = std::fs::read_to_string(run.join("bpe/tokenizer.json")).unwrap();
    assert!(tok.contains("\"BPE\"") && tok.contains("ByteLevel"), "a BPE tokenizer.json");
    for d in [data, run] {
        let _ = std::fs::remove_dir_all(d);
    }
}
