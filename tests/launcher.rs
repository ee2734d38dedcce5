//! `scripts/launch.sh`, the torchrun-style launcher: it starts one process per rank with
//! torchrun's environment, prefixes or splits their logs, stops every rank when one fails and
//! returns its exit code, and forwards SIGTERM. The ranks here are small shell programs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/launch.sh")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(launcher()).args(args).output().expect("bash runs the launcher");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_rank_gets_torchruns_environment() {
    let (code, out, _) = run(&["--nproc-per-node", "3", "--nnodes", "2", "--node-rank", "1", "--master-addr", "node0", "--master-port", "29400", "--", "sh", "-c", "echo env $RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT"]);
    assert_eq!(code, 0, "{out}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["[rank 3] env 3 0 6 3 node0 29400", "[rank 4] env 4 1 6 3 node0 29400", "[rank 5] env 5 2 6 3 node0 29400"]);
    // Split logs instead of prefixes.
    let dir = std::env::temp_dir().join(format!("launch-logs-{}", std::process::id()));
    let (code, out, _) = run(&["--nproc-per-node", "2", "--log-dir", dir.to_str().unwrap(), "--", "sh", "-c", "echo rank $RANK"]);
    assert_eq!((code, out.as_str()), (0, ""));
    for r in 0..2 {
        assert_eq!(std::fs::read_to_string(dir.join(format!("rank_{r}.log"))).unwrap(), format!("rank {r}\n"));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_failing_rank_stops_the_others_and_its_code_is_returned() {
    let t = Instant::now();
    let (code, _, err) = run(&["--nproc-per-node", "3", "--", "sh", "-c", "if [ $RANK = 2 ]; then sleep 0.2; exit 7; fi; exec sleep 60"]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("rank 2 exited with code 7"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20), "the sleeping ranks were stopped ({:?})", t.elapsed());
}

#[test]
fn sigterm_is_forwarded_to_every_rank() {
    let child = Command::new(launcher())
        .args(["--nproc-per-node", "2", "--", "sh", "-c", "trap 'echo stopped $RANK; kill $!; exit 3' TERM; sleep 60 & wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[rank 0] stopped 0") && stdout.contains("[rank 1] stopped 1"), "{stdout}");
}

#[test]
fn bad_arguments_are_refused_by_name() {
    for (args, msg) in [
        (vec!["--nnodes", "2", "--node-rank", "2", "--", "true"], "--node-rank 2 is outside --nnodes 2"),
        (vec!["--nproc-per-node", "x", "--", "true"], "--nproc-per-node must be a non-negative integer"),
        (vec!["--bogus", "1", "--", "true"], "unknown option --bogus"),
        (vec!["--nproc-per-node", "2"], "no command given"),
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
}
