//! Crash safety of the trainer binary on a small MNIST slice: runs killed at random moments
//! and inside checkpoint writes (SIGKILL, and aborts at deq-train's checkpoint failpoints)
//! resume to exactly the parameters of an uninterrupted run, and no checkpoint is ever
//! unreadable; SIGTERM finishes the step, checkpoints and exits with code 75; a second run on
//! the same folder is refused; a checkpoint write that fails (a full disk) stops the run with
//! the previous checkpoint intact.

use candle_core::Device;
use deq_core::rng::DeqRng;
use deq_train::Checkpointer;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_mdeq");

/// A tiny run: 10 steps per epoch, 2 epochs, a checkpoint after every step.
fn setup(tag: &str) -> (PathBuf, PathBuf) {
    let mut cfg = common::tiny_config();
    cfg.train.checkpoint_every = 1;
    cfg.train.keep_checkpoints = 2;
    let dir = std::env::temp_dir().join(format!("mdeq-crash-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tiny.toml");
    std::fs::write(&config, cfg.to_toml()).unwrap();
    (config, dir.join("run"))
}

fn command(config: &Path, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(BIN);
    c.args(["train", "--config"]).arg(config).arg("--out").arg(out).args(["--threads", "1"]);
    if resume {
        c.arg("--resume");
    }
    c.env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn run(config: &Path, out: &Path, resume: bool, failpoint: Option<&str>) -> Output {
    let mut c = command(config, out, resume);
    if let Some(f) = failpoint {
        c.env(deq_train::checkpoint::FAILPOINT_VAR, f);
    }
    c.output().unwrap()
}

fn latest(out: &Path) -> PathBuf {
    out.join("checkpoints").join("latest.json")
}

/// The latest checkpoint must always load; returns its step (0 before the first).
fn check_loadable(out: &Path) -> usize {
    if !latest(out).exists() {
        return 0;
    }
    Checkpointer::load(&latest(out), &Device::Cpu).unwrap_or_else(|e| panic!("corrupt checkpoint after a crash: {e}")).step
}

/// Every tensor of the final checkpoint, as bytes.
fn final_state(out: &Path) -> Vec<(String, Vec<u8>)> {
    let c = Checkpointer::load(&latest(out), &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = c
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    v.sort();
    v
}

/// The last metrics record of every epoch (a crash between a record and its checkpoint repeats
/// the epoch, and so its record), without wall-clock fields.
fn epoch_records(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let mut by_epoch = std::collections::BTreeMap::new();
    for l in text.lines() {
        let mut r: serde_json::Value = serde_json::from_str(l).unwrap();
        for k in ["epoch_train_seconds", "elapsed_seconds"] {
            r.as_object_mut().unwrap().remove(k);
        }
        by_epoch.insert(r["epoch"].as_u64().unwrap(), r);
    }
    by_epoch.into_values().collect()
}

fn wait_for(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(t.elapsed() < limit, "the run did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killed_runs_resume_to_the_parameters_of_an_uninterrupted_run() {
    let (config, reference) = setup("reference");
    let o = run(&config, &reference, false, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = final_state(&reference);
    let want_records = epoch_records(&reference);
    assert_eq!(want_records.len(), 2);

    let (config, out) = setup("killed");
    // Aborts inside checkpoint writes: a tensor file written but not renamed, a tensor file
    // without its sidecar, a sidecar written but not renamed.
    for (k, point) in ["tensors-tmp:3", "tensors:2", "sidecar-tmp:2"].iter().enumerate() {
        let o = run(&config, &out, k > 0, Some(point));
        assert!(!o.status.success(), "{point}: the failpoint must stop the run");
        assert!(String::from_utf8_lossy(&o.stderr).contains("aborting at"), "{}", String::from_utf8_lossy(&o.stderr));
        check_loadable(&out);
    }
    // SIGKILL at seeded random moments, each followed by a check and a resume.
    let mut rng = DeqRng::new(19);
    for _ in 0..4 {
        let before = check_loadable(&out);
        let mut child = command(&config, &out, true).spawn().unwrap();
        // Let it take at least one more checkpoint before the kill, then a random delay.
        wait_until(Duration::from_secs(120), "a checkpoint", || check_loadable(&out) > before || child.try_wait().unwrap().is_some());
        std::thread::sleep(Duration::from_millis((rng.uniform() * 400.0) as u64));
        let _ = child.kill();
        let _ = child.wait();
        check_loadable(&out);
    }
    let o = run(&config, &out, true, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(final_state(&out) == want, "the resumed run's parameters differ from the uninterrupted run's");
    assert_eq!(epoch_records(&out), want_records);
    assert!(!out.join(deq_train::run_lock::LOCK_FILE).exists(), "the lock is released at the end");
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
    let _ = std::fs::remove_dir_all(reference.parent().unwrap());
}

#[test]
fn sigterm_checkpoints_exits_75_and_the_run_resumes() {
    let (config, out) = setup("sigterm");
    let mut child = command(&config, &out, false).spawn().unwrap();
    wait_until(Duration::from_secs(120), "the first checkpoint", || check_loadable(&out) >= 2);
    // While it runs, a second run on the same folder is refused.
    let second = run(&config, &out, true, None);
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by pid") && err.contains(&child.id().to_string()), "{err}");
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let status = wait_for(&mut child, Duration::from_secs(120));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(deq_train::signals::EXIT_INTERRUPTED), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM") && stderr.contains("--resume"), "{stderr}");
    let stopped_at = check_loadable(&out);
    assert!(stopped_at >= 2 && stopped_at < 20, "checkpoint of the step it stopped after: {stopped_at}");
    let o = run(&config, &out, true, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(check_loadable(&out), 20);
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

#[test]
fn a_failing_checkpoint_write_stops_the_run_and_keeps_the_previous_checkpoint() {
    if !Path::new("/dev/full").exists() {
        eprintln!("no /dev/full on this system: skipped");
        return;
    }
    let (config, out) = setup("disk-full");
    // The temporary file of step 3's tensors is a link to /dev/full: writing it fails with
    // ENOSPC, as on a full disk.
    let ck = out.join("checkpoints");
    std::fs::create_dir_all(&ck).unwrap();
    std::os::unix::fs::symlink("/dev/full", ck.join("step-00000003.safetensors.tmp")).unwrap();
    let o = run(&config, &out, false, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("step-00000003.safetensors.tmp") && err.to_lowercase().contains("no space"), "{err}");
    assert_eq!(check_loadable(&out), 2, "the checkpoint before the failed write stays loadable");
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}
