//! Damaged audio, images and configurations: each committed fixture cut at every length and
//! mutated with a fixed seed must read or fail with an error naming the file, never panic.

use deq_inr::image_io::Image;
use deq_inr::wav::Audio;
use deq_train::hostile::{check_configs, check_fixture, FORMAT_FIXTURES};
use std::path::Path;

const MUTATIONS: usize = 2000;

fn each(names: &[&str], seed: u64, read: impl Fn(&Path) -> Result<(), String>) {
    for (k, name) in names.iter().enumerate() {
        check_fixture(&Path::new(FORMAT_FIXTURES).join(name), MUTATIONS, seed + k as u64, &read).unwrap();
    }
}

#[test]
fn wav_files() {
    each(&["audio-pcm16.wav", "audio-float32.wav"], 60, |p| Audio::read(p).map(|_| ()).map_err(|e| e.to_string()));
}

#[test]
fn image_files() {
    each(&["image-rgb.png", "image-grey.png", "image.jpg"], 70, |p| Image::read(p).map(|_| ()).map_err(|e| e.to_string()));
}

#[test]
fn configurations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/deq-inr");
    assert!(check_configs::<deq_inr::config::RunConfig>(&dir, 100).unwrap() >= 10);
}

/// The child side of `huge_sizes_are_refused_under_a_memory_limit` (a no-op in a normal run).
#[test]
fn memory_limited_child() {
    let Some(case) = deq_train::hostile::child_case() else { return };
    assert_eq!(case, "wav");
    let dir = std::env::temp_dir().join(format!("inr-hostile-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = std::fs::read(Path::new(FORMAT_FIXTURES).join("audio-pcm16.wav")).unwrap();
    // The data chunk's size field (after RIFF header 12 + fmt chunk 24 + "data").
    b[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    let p = dir.join("huge.wav");
    std::fs::write(&p, b).unwrap();
    let msg = Audio::read(&p).map(|_| ()).unwrap_err().to_string();
    assert!(msg.contains("huge.wav"), "{msg}");
}

#[test]
fn huge_sizes_are_refused_under_a_memory_limit() {
    deq_train::hostile::run_under_memory_limit("memory_limited_child", "wav", 1 << 20).unwrap_or_else(|e| panic!("{e}"));
}
