//! Damaged target images and configurations: each committed fixture cut at every length and
//! mutated with a fixed seed must read or fail with an error naming the file, never panic.
//! (Checkpoints are deq-train's safetensors reader, checked there.)

use candle_core::Device;
use deq_ddim::grid::read_image;
use deq_train::hostile::{check_configs, check_reader};
use std::path::Path;

const FORMATS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/formats");
const MUTATIONS: usize = 2000;

#[test]
fn target_images() {
    let dir = std::env::temp_dir().join(format!("ddim-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (k, name) in ["image-rgb.png", "image-grey.png", "image.jpg"].iter().enumerate() {
        let good = std::fs::read(Path::new(FORMATS).join(name)).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, &good).unwrap();
        for channels in [1, 3] {
            let read = |p: &Path| read_image(p, channels, 8, &Device::Cpu);
            read(&p).unwrap();
            check_reader(&p, &good, MUTATIONS, 90 + k as u64 + 10 * channels as u64, read).unwrap();
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn configurations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/deq-ddim");
    assert!(check_configs::<deq_ddim::config::RunConfig>(&dir, 300).unwrap() >= 2);
}
