//! The Rust UNet and samplers against the PyTorch reference written from the DDIM code
//! (`scripts/ddpm_reference.py fixture`): a random small UNet saved in the DDIM training
//! runner's checkpoint layout, converted by `scripts/convert_ddpm_checkpoint.py`, and its
//! outputs (noise predictions, DDIM with eta 0 and 0.5, DDPM, a quadratic step sequence)
//! computed in f64 with pre-drawn noise.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use deq_ddim::sampler::sequential::{ddim, ddpm};
use deq_ddim::sampler::trajectory::{deq, DeqSampleConfig};
use deq_ddim::sampler::{StepNoise, Steps};
use deq_ddim::schedule::{timesteps, DiffusionConfig, SkipType};
use deq_ddim::unet::{UNet, UNetConfig};
use deq_core::rng::DeqRng;
use deq_core::solver::StopMode;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ddpm-small")
}

fn model(dtype: DType) -> UNet {
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir().join("config.json")).unwrap()).unwrap();
    let ucfg: UNetConfig = serde_json::from_value(cfg["model"].clone()).unwrap();
    let m = UNet::new(&ucfg, &mut DeqRng::new(0), dtype, &Device::Cpu).unwrap();
    let w = candle_core::safetensors::load(dir().join("model.safetensors"), &Device::Cpu).unwrap();
    m.load(&w, "model.safetensors").unwrap();
    m
}

fn cases(dtype: DType) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("cases.safetensors"), &Device::Cpu).unwrap().into_iter().map(|(k, v)| (k, v.to_dtype(dtype).unwrap())).collect()
}

/// Largest absolute difference divided by (1 + largest magnitude of the expected values).
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let m = b.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    d / (1.0 + m)
}

#[test]
fn noise_predictions_equal_the_reference() {
    for (dtype, key, tol) in [(DType::F64, "eps", 1e-6), (DType::F32, "eps_f32", 1e-5), (DType::F32, "eps", 1e-4)] {
        let c = cases(dtype);
        let m = model(dtype);
        let out = m.forward(&c["x"], &c["t"]).unwrap();
        let d = rel_diff(&out, &c[key]);
        assert!(d < tol, "{dtype:?} vs {key}: {d}");
    }
}

#[test]
fn samplers_equal_the_reference() {
    let sch = DiffusionConfig::default().schedule().unwrap();
    let uniform = Steps::new(&sch, &timesteps(1000, 10, SkipType::Uniform).unwrap());
    let quad = Steps::new(&sch, &timesteps(1000, 10, SkipType::Quad).unwrap());
    for (dtype, tol) in [(DType::F64, 1e-6), (DType::F32, 1e-4)] {
        let c = cases(dtype);
        let m = model(dtype);
        let x_t = &c["xT"];
        let (a, _) = ddim(&m, &uniform, x_t, 0.0, None).unwrap();
        assert!(rel_diff(&a, &c["ddim_eta0"]) < tol, "ddim eta 0 {dtype:?}: {}", rel_diff(&a, &c["ddim_eta0"]));
        let (b, _) = ddim(&m, &uniform, x_t, 0.5, Some(&StepNoise(c["ddim_noise"].clone()))).unwrap();
        assert!(rel_diff(&b, &c["ddim_eta05"]) < tol, "ddim eta 0.5 {dtype:?}: {}", rel_diff(&b, &c["ddim_eta05"]));
        let (p, _) = ddpm(&m, &uniform, x_t, &StepNoise(c["ddpm_noise"].clone())).unwrap();
        assert!(rel_diff(&p, &c["ddpm"]) < tol, "ddpm {dtype:?}: {}", rel_diff(&p, &c["ddpm"]));
        let (q, _) = ddim(&m, &quad, x_t, 0.0, None).unwrap();
        assert!(rel_diff(&q, &c["ddim_quad"]) < tol, "quad {dtype:?}: {}", rel_diff(&q, &c["ddim_quad"]));
        // DEQ sampling reaches the same images (stochastic too, with the same noise).
        let cfg = DeqSampleConfig { tol: 1e-9, max_iter: 10, stop_mode: StopMode::Rel, ..Default::default() };
        let s = deq(&m, &uniform, x_t, 0.0, None, &cfg, None).unwrap();
        assert!(rel_diff(&s.images, &c["ddim_eta0"]) < tol * 10.0, "deq {dtype:?}: {} in {} rounds", rel_diff(&s.images, &c["ddim_eta0"]), s.stats.rounds);
        let s = deq(&m, &uniform, x_t, 0.5, Some(&StepNoise(c["ddim_noise"].clone())), &cfg, None).unwrap();
        assert!(rel_diff(&s.images, &c["ddim_eta05"]) < tol * 10.0, "deq eta 0.5 {dtype:?}: {}", rel_diff(&s.images, &c["ddim_eta05"]));
    }
}
