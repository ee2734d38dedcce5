//! Damaged flow files, frames and configurations: each committed fixture cut at every length
//! and mutated with a fixed seed must read or fail with an error naming the file, never panic.

use deq_flow::io::{flo, frames::Frame, kitti, pfm, read_flow};
use deq_train::hostile::{check_configs, check_reader};
use std::path::{Path, PathBuf};

const FORMATS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/formats");
const MUTATIONS: usize = 2000;

fn scratch(tag: &str, name: &str) -> (PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("flow-hostile-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(Path::new(FORMATS).join(name)).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, &good).unwrap();
    (p, good)
}

#[test]
fn flow_files() {
    for (k, name) in ["flow.flo", "flow.pfm", "flow-kitti.png"].iter().enumerate() {
        let (p, good) = scratch("flow", name);
        read_flow(&p).unwrap();
        check_reader(&p, &good, MUTATIONS, 40 + k as u64, read_flow).unwrap();
    }
    let (p, good) = scratch("flo", "flow.flo");
    check_reader(&p, &good, MUTATIONS, 44, flo::read).unwrap();
    let (p, good) = scratch("pfm", "flow.pfm");
    check_reader(&p, &good, MUTATIONS, 45, pfm::read).unwrap();
    let (p, good) = scratch("kitti", "flow-kitti.png");
    check_reader(&p, &good, MUTATIONS, 46, kitti::read).unwrap();
}

#[test]
fn frames() {
    for (k, name) in ["image-rgb.png", "image-grey.png", "image.jpg"].iter().enumerate() {
        let (p, good) = scratch("frames", name);
        Frame::read(&p).unwrap();
        check_reader(&p, &good, MUTATIONS, 50 + k as u64, Frame::read).unwrap();
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
    let Some(case) = deq_train::hostile::memory_limited_case() else { return };
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
