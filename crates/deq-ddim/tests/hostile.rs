//! Damaged target images and configurations: each committed fixture cut at every length and
//! mutated with a fixed seed must read or fail with an error naming the file, never panic.
//! (Checkpoints are deq-train's safetensors reader, checked there.)

use candle_core::Device;
use deq_ddim::grid::read_image;
use deq_train::hostile::{check_configs, check_fixture, FORMAT_FIXTURES};
use std::path::Path;

const MUTATIONS: usize = 2000;

#[test]
fn target_images() {
    for (k, name) in ["image-rgb.png", "image-grey.png", "image.jpg"].iter().enumerate() {
        for channels in [1, 3] {
            let read = |p: &Path| read_image(p, channels, 8, &Device::Cpu);
            check_fixture(&Path::new(FORMAT_FIXTURES).join(name), MUTATIONS, 90 + k as u64 + 10 * channels as u64, read).unwrap();
        }
    }
}

#[test]
fn configurations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/deq-ddim");
    assert!(check_configs::<deq_ddim::config::RunConfig>(&dir, 300).unwrap() >= 2);
}
