//! Damaged flow files, frames and configurations: each committed fixture cut at every length
//! and mutated with a fixed seed must read or fail with an error naming the file, never panic.

use deq_flow::io::{flo, frames::Frame, kitti, pfm, read_flow};
use deq_train::hostile::{check_configs, check_fixture, FORMAT_FIXTURES};
use std::path::Path;

const MUTATIONS: usize = 2000;

fn check<T, E: std::fmt::Display>(name: &str, seed: u64, read: impl Fn(&Path) -> Result<T, E>) {
    check_fixture(&Path::new(FORMAT_FIXTURES).join(name), MUTATIONS, seed, read).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn flow_files() {
    for (k, name) in ["flow.flo", "flow.pfm", "flow-kitti.png"].iter().enumerate() {
        check(name, 40 + k as u64, read_flow);
    }
    check("flow.flo", 44, flo::read);
    check("flow.pfm", 45, pfm::read);
    check("flow-kitti.png", 46, kitti::read);
}

#[test]
fn frames() {
    for (k, name) in ["image-rgb.png", "image-grey.png", "image.jpg"].iter().enumerate() {
        check(name, 50 + k as u64, Frame::read);
    }
}

#[test]
fn configurations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/deq-flow");
    assert!(check_configs::<deq_flow::config::RunConfig>(&dir, 300).unwrap() >= 5);
}

/// The child side of `huge_sizes_are_refused_under_a_memory_limit` (a no-op in a normal run).
#[test]
fn memory_limited_child() {
    let Some(case) = deq_train::hostile::child_case() else { return };
    let dir = std::env::temp_dir().join(format!("flow-hostile-huge-{case}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let side = (1u32 << 20) as i32;
    let (name, bytes) = match case.as_str() {
        "flo" => ("huge.flo", [b"PIEH".to_vec(), side.to_le_bytes().to_vec(), side.to_le_bytes().to_vec(), vec![0; 64]].concat()),
        "pfm" => ("huge.pfm", [format!("PF\n{side} {side}\n-1.0\n").into_bytes(), vec![0; 64]].concat()),
        other => panic!("unknown case {other}"),
    };
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    let msg = read_flow(&p).map(|_| ()).unwrap_err().to_string();
    assert!(msg.contains(name), "{msg}");
}

#[test]
fn huge_sizes_are_refused_under_a_memory_limit() {
    for case in ["flo", "pfm"] {
        deq_train::hostile::run_under_memory_limit("memory_limited_child", case, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
    }
}
