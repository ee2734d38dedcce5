//! Shapes of every block and parameter counts against the zoo's architecture.

use candle_core::{DType, Device, Tensor};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use mdeq::{Mdeq, ModelConfig};

fn cifar_small() -> ModelConfig {
    ModelConfig { in_channels: 3, num_classes: 10, channels: vec![24, 24], head_channels: vec![8, 16], final_chansize: 200, expansion: 5, groups: 8, downsample_times: 0 }
}

#[test]
fn parameter_count_matches_the_zoo_cifar_small_model() {
    let m = Mdeq::new(cifar_small(), DeqConfig::default(), &mut DeqRng::new(0), DType::F32, &Device::Cpu).unwrap();
    // stem 5,928 + f 111,840 + head 41,266 (computed from the zoo's model definition).
    assert_eq!(m.num_params(), 159_034);
}

#[test]
fn shapes_of_every_stage() {
    let cfg = ModelConfig { in_channels: 1, num_classes: 10, channels: vec![8, 16, 16], head_channels: vec![2, 4, 4], final_chansize: 12, expansion: 2, groups: 4, downsample_times: 1 };
    let m = Mdeq::new(cfg, DeqConfig { f_max_iter: 3, ..Default::default() }, &mut DeqRng::new(1), DType::F32, &Device::Cpu).unwrap();
    let x = DeqRng::new(2).randn((2, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
    let u = m.inject(&x, true).unwrap();
    assert_eq!(u.dims(), &[2, 8, 14, 14]);
    let z0 = m.z0(&u).unwrap();
    let dims: Vec<_> = z0.iter().map(|t| t.dims().to_vec()).collect();
    assert_eq!(dims, vec![vec![2, 8, 14, 14], vec![2, 16, 7, 7], vec![2, 16, 4, 4]]);
    let fz = m.f(&z0, &u).unwrap();
    for (a, b) in fz.iter().zip(&z0) {
        assert_eq!(a.dims(), b.dims(), "f keeps every branch's shape");
    }
    let out = m.forward(&x, true).unwrap();
    assert_eq!(out.logits.dims(), &[2, 10]);
    assert!(out.stats.nfe >= 1);
    let out = m.forward(&x, false).unwrap();
    assert_eq!(out.logits.dims(), &[2, 10]);
    let _ = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
}

#[test]
fn invalid_architectures_are_rejected() {
    let mut cfg = cifar_small();
    cfg.groups = 7;
    let e = Mdeq::new(cfg, DeqConfig::default(), &mut DeqRng::new(0), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("groups"), "{e}");
    let mut cfg = cifar_small();
    cfg.head_channels = vec![8];
    let e = Mdeq::new(cfg, DeqConfig::default(), &mut DeqRng::new(0), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("head_channels"), "{e}");
}

#[test]
fn every_shipped_config_parses_and_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/mdeq");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            mdeq::RunConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    assert_eq!(names, ["cifar-large", "cifar-small", "imagenet", "mnist-small"]);
    // The CIFAR-small file is the zoo's small model.
    let small = mdeq::RunConfig::from_file(std::path::Path::new(&format!("{dir}/cifar-small.toml"))).unwrap();
    let m = Mdeq::new(small.model, small.deq, &mut DeqRng::new(0), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.num_params(), 159_034);
}
