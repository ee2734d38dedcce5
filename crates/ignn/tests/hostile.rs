//! Damaged graph files: every file of the committed Planetoid, GraphSAGE and TU fixtures, cut
//! at every length and mutated 2,000 times with a fixed seed (the rest of its folder intact),
//! must load or fail with an error naming that file, never panic.

use deq_train::hostile::check_reader;
use ignn::planetoid::load_planetoid;
use ignn::ppi::load_graphsage;
use ignn::tu::load_tu;
use std::path::{Path, PathBuf};

const MUTATIONS: usize = 2000;

/// A private copy of a fixture folder (the check rewrites its files).
fn copy(from: &Path, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ignn-hostile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn check_folder<T, E: std::fmt::Display>(dir: &Path, load: impl Fn(&Path) -> Result<T, E>) {
    load(dir).unwrap_or_else(|e| panic!("the fixture itself must load: {e}"));
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for (k, path) in names.iter().enumerate() {
        let good = std::fs::read(path).unwrap();
        let r = check_reader(path, &good, MUTATIONS, 100 + k as u64, |_: &Path| load(dir)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.variants, good.len() + MUTATIONS);
    }
}

#[test]
fn planetoid_files() {
    let dir = copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/formats/planetoid"), "planetoid");
    check_folder(&dir, load_planetoid);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn graphsage_files() {
    let dir = copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ppi-mini"), "ppi");
    check_folder(&dir, |d: &Path| load_graphsage(d, "ppi", true));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn tu_files() {
    let dir = copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tu-mini"), "tu");
    check_folder(&dir, |d: &Path| load_tu(d, "MINI"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn configurations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ignn");
    assert!(deq_train::hostile::check_configs::<ignn::config::RunConfig>(&dir, 300).unwrap() >= 5);
}

/// The child side of `huge_counts_are_refused_under_a_memory_limit` (a no-op in a normal run).
#[test]
fn memory_limited_child() {
    let Some(case) = deq_train::hostile::child_case() else { return };
    let dir = copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/formats/planetoid"), &format!("huge-{case}"));
    let msg = match case.as_str() {
        "nodes" => {
            std::fs::write(dir.join("meta.txt"), "nodes 1099511627776\nfeatures 4\nclasses 2\n").unwrap();
            load_planetoid(&dir).map(|_| ()).unwrap_err().to_string()
        }
        "features" => {
            std::fs::write(dir.join("meta.txt"), "nodes 5\nfeatures 1099511627776\nclasses 2\n").unwrap();
            load_planetoid(&dir).map(|_| ()).unwrap_err().to_string()
        }
        "ppi" => {
            let d = copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ppi-mini"), "huge-ppi");
            deq_train::data::write_npy_f32(&d.join("ppi-feats.npy"), &[0, 1 << 40], &[]).unwrap();
            load_graphsage(&d, "ppi", false).map(|_| ()).unwrap_err().to_string()
        }
        other => panic!("unknown case {other}"),
    };
    assert!(msg.contains("meta.txt") || msg.contains("feats.npy"), "{msg}");
}

#[test]
fn huge_counts_are_refused_under_a_memory_limit() {
    for case in ["nodes", "features", "ppi"] {
        deq_train::hostile::run_under_memory_limit("memory_limited_child", case, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
    }
}
