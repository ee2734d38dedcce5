//! Damaged corpus lines, tokenizer files, token caches and configurations: each committed
//! fixture cut at every length and mutated with a fixed seed must read or fail with an error
//! naming the file, never panic.

use deq_lm::data::cache::read_ids;
use deq_lm::data::{read_lines, Vocab};
use deq_train::hostile::{check_configs, check_fixture, FORMAT_FIXTURES};
use std::path::Path;

const MUTATIONS: usize = 2000;
/// The fingerprint written into `tokens.ids` by scripts/make_format_fixtures.py.
const FINGERPRINT: u64 = 0x1234_5678_9abc_def0;

fn each(name: &str, seed: u64, read: impl Fn(&Path) -> Result<(), String>) {
    check_fixture(&Path::new(FORMAT_FIXTURES).join(name), MUTATIONS, seed, read).unwrap();
}

#[test]
fn corpus_tokenizer_and_cache() {
    each("corpus.txt", 80, |p| read_lines(p).map(|_| ()).map_err(|e| e.to_string()));
    each("tokenizer.json", 81, |p| Vocab::load(p).map(|_| ()).map_err(|e| e.to_string()));
    each("tokens.ids", 82, |p| {
        let ids = read_ids(p, FINGERPRINT).map_err(|e| e.to_string())?;
        assert!(ids.is_none() || ids.is_some_and(|v| !v.is_empty() || std::fs::metadata(p).unwrap().len() == 32));
        Ok(())
    });
}

#[test]
fn configurations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/deq-lm");
    assert!(check_configs::<deq_lm::config::RunConfig>(&dir, 300).unwrap() >= 4);
}

/// The child side of `huge_counts_are_refused_under_a_memory_limit` (a no-op in a normal run).
#[test]
fn memory_limited_child() {
    let Some(case) = deq_train::hostile::child_case() else { return };
    assert_eq!(case, "ids");
    let dir = std::env::temp_dir().join(format!("lm-hostile-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = std::fs::read(Path::new(FORMAT_FIXTURES).join("tokens.ids")).unwrap();
    b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let p = dir.join("huge.ids");
    std::fs::write(&p, b).unwrap();
    let msg = read_ids(&p, FINGERPRINT).map(|_| ()).unwrap_err().to_string();
    assert!(msg.contains("huge.ids"), "{msg}");
}

#[test]
fn huge_counts_are_refused_under_a_memory_limit() {
    deq_train::hostile::run_under_memory_limit("memory_limited_child", "ids", 1 << 20).unwrap_or_else(|e| panic!("{e}"));
}
