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

/// A tiny f64 MDEQ end to end: stem, `f` (weight-normed convolutions, group norm, fusion),
/// head (batch norm) and the loss. With `f_max_iter = 0` the training forward is `grad` damped
/// steps of `f` with graph from `z0`, an explicit function of the parameters, so central
/// differences are its exact derivative. Every entry of every variable: the pruned backward
/// (`grad::backward`) against candle's backward and against finite differences.
#[test]
fn tiny_f64_mdeq_gradients_match_candle_and_finite_differences() {
    let cfg = ModelConfig { in_channels: 1, num_classes: 3, channels: vec![4, 4], head_channels: vec![2, 2], final_chansize: 6, expansion: 2, groups: 2, downsample_times: 0 };
    let deq = DeqConfig { f_max_iter: 0, grad: vec![2], tau: 0.8, ..Default::default() };
    let dev = Device::Cpu;
    let mut rng = DeqRng::new(21);
    let m = Mdeq::new(cfg, deq, &mut rng, DType::F64, &dev).unwrap();
    // Move every parameter off its initial value: z0 = 0 makes the first group norm see a
    // constant input, whose output is exactly its (zero-initialised) shift, at ReLU's kink.
    for (_, var) in m.named_vars() {
        let noise = (rng.randn(var.shape(), DType::F64, &dev).unwrap() * 0.1).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
    let x = rng.randn((2, 1, 8, 8), DType::F64, &dev).unwrap();
    let labels = Tensor::new(&[0u32, 2], &dev).unwrap();
    let loss = || candle_nn::loss::cross_entropy(&m.forward(&x, true).unwrap().logits, &labels).unwrap();
    let ours = deq_core::grad::backward(&loss()).unwrap();
    let theirs = loss().backward().unwrap();
    let mut checked = 0;
    for (name, var) in m.named_vars() {
        let shape = var.shape().clone();
        let get = |g: &candle_core::backprop::GradStore| match g.get(var.as_tensor()) {
            Some(t) => t.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            None => vec![0.0; shape.elem_count()],
        };
        let (a, b) = (get(&ours), get(&theirs));
        let orig = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let h = 1e-6;
        for i in 0..orig.len() {
            assert!((a[i] - b[i]).abs() <= 1e-9 * (1.0 + b[i].abs()), "{name}[{i}]: pruned {} vs candle {}", a[i], b[i]);
            let at = |d: f64| {
                let mut p = orig.clone();
                p[i] += d;
                var.set(&Tensor::from_vec(p, shape.clone(), &dev).unwrap()).unwrap();
                loss().to_scalar::<f64>().unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(orig.clone(), shape.clone(), &dev).unwrap()).unwrap();
            assert!((fd - a[i]).abs() <= 1e-5 * (1.0 + fd.abs()), "{name}[{i}]: backward {} vs finite differences {fd}", a[i]);
            checked += 1;
        }
    }
    assert_eq!(checked, m.num_params());
}
