//! The model: parameter counts against the zoo's, gradients of the fixed-point function
//! against finite differences (f64), and agreement of the two correlation implementations.

use candle_core::{DType, Device, Tensor, Var};
use deq_core::norm::NormOptions;
use deq_core::rng::DeqRng;
use deq_core::gradcheck::{assert_gradient, max_abs_diff, var_central_differences};
use deq_core::DeqConfig;
use deq_flow::model::corr::{CorrKind, CorrPyramid};
use deq_flow::model::{coords_grid, deq_layer, DeqFlow, ModelConfig};

fn count(cfg: &ModelConfig) -> usize {
    let opts = NormOptions::from_config(&DeqConfig::default());
    DeqFlow::new(cfg, &opts, &mut DeqRng::new(0), DType::F32, &Device::Cpu).unwrap().parameter_count()
}

#[test]
fn parameter_counts_match_the_zoo() {
    // DEQ-Flow-B: 5,242,816 and DEQ-Flow-H (v2 / zoo): 13,394,752 trainable parameters,
    // including the weight-norm scales of the 13 update-block convolutions.
    assert_eq!(count(&ModelConfig::b()), 5_242_816);
    assert_eq!(count(&ModelConfig::h()), 13_394_752);
}

fn small() -> ModelConfig {
    ModelConfig {
        encoder_dims: [4, 4, 5],
        feature_dim: 6,
        hidden_dim: 5,
        context_dim: 4,
        corr_levels: 2,
        corr_radius: 1,
        motion_dims: [6, 5, 4, 3],
        motion_out: 6,
        head_dim: 5,
        mask_dim: 7,
        all_grad: true,
        ..ModelConfig::b()
    }
}

#[test]
fn the_fixed_point_function_has_exact_gradients_f64() {
    // f(h, c) with the correlation lookup inside, weight-normalised convolutions and the
    // detach of c switched off (all_grad): gradients to h, c, the context, the correlation
    // maps and the parameters against central differences.
    let dev = Device::Cpu;
    let cfg = small();
    let opts = NormOptions::from_config(&DeqConfig::default());
    let mut rng = DeqRng::new(3);
    let model = DeqFlow::new(&cfg, &opts, &mut rng, DType::F64, &dev).unwrap();
    let (b, h8, w8) = (2, 4, 3);
    let coords0 = coords_grid(b, h8, w8, DType::F64, &dev).unwrap();
    let f1 = rng.randn((b, 6, h8, w8), DType::F64, &dev).unwrap();
    let f2 = rng.randn((b, 6, h8, w8), DType::F64, &dev).unwrap();
    let pyr = CorrPyramid::new(CorrKind::Volume, &f1, &f2, 2, 1).unwrap();
    let hv = Var::from_tensor(&rng.randn((b, 5, h8, w8), DType::F64, &dev).unwrap()).unwrap();
    let cv = Var::from_tensor(&(&coords0 + (rng.rand((b, 2, h8, w8), -1.5, 1.5, DType::F64, &dev).unwrap().floor().unwrap() + 0.43).unwrap()).unwrap()).unwrap();
    let ctx = Var::from_tensor(&rng.randn((b, 4, h8, w8), DType::F64, &dev).unwrap()).unwrap();
    let lvl = Var::from_tensor(&pyr.tensors()[1]).unwrap();
    let (uh, uc) = (rng.randn((b, 5, h8, w8), DType::F64, &dev).unwrap(), rng.randn((b, 2, h8, w8), DType::F64, &dev).unwrap());
    let loss_t = || -> Tensor {
        let inputs = [ctx.as_tensor().clone(), pyr.tensors()[0].clone(), lvl.as_tensor().clone()];
        let out = model.f(&[hv.as_tensor().clone(), cv.as_tensor().clone()], &inputs, &coords0).unwrap();
        ((&out[0] * &uh).unwrap().sum_all().unwrap() + (&out[1] * &uc).unwrap().sum_all().unwrap()).unwrap()
    };
    // The normalised weights are recomputed from the raw ones on every evaluation.
    let loss = || {
        deq_flow_reset(&model);
        loss_t().to_scalar::<f64>().unwrap()
    };
    deq_flow_reset(&model);
    let grads = loss_t().backward().unwrap();
    let mut checked = 0;
    let named = model.named_vars();
    let mut wanted: Vec<(String, Var)> = vec![("h".into(), hv.clone()), ("c".into(), cv.clone()), ("context".into(), ctx.clone()), ("corr level 1".into(), lvl.clone())];
    for key in ["update_block.encoder.convc1.weight_v", "update_block.encoder.convf1.weight_g", "update_block.gru.convq2.weight_v", "update_block.gru.convz1.bias", "update_block.flow_head.conv2.weight_v"] {
        let v = named.iter().find(|(n, _)| n == key).unwrap_or_else(|| panic!("no variable {key}")).1.clone();
        wanted.push((key.into(), v));
    }
    for (name, var) in &wanted {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let idx: Vec<usize> = (0..g.elem_count()).step_by((g.elem_count() / 6).max(1)).collect();
        assert_gradient(name, g, &var_central_differences(var, &idx, 1e-6, &loss).unwrap(), 1e-6);
        checked += idx.len();
    }
    assert!(checked > 40);
}

fn deq_flow_reset(model: &DeqFlow) {
    // A forward pass recomputes the normalised weights; for `f` alone do it explicitly.
    model.reset_norms().unwrap();
}

#[test]
fn volume_and_feature_correlation_give_the_same_model_output() {
    let dev = Device::Cpu;
    let mut rng = DeqRng::new(9);
    let img1 = rng.rand((2, 3, 32, 24), 0.0, 255.0, DType::F64, &dev).unwrap();
    let img2 = rng.rand((2, 3, 32, 24), 0.0, 255.0, DType::F64, &dev).unwrap();
    let deq_cfg = DeqConfig { f_solver: "simple_fixed_point_iter".into(), f_max_iter: 3, n_states: 3, ..Default::default() };
    let deq = deq_layer(&deq_cfg, true, 0).unwrap();
    let opts = NormOptions::from_config(&deq_cfg);
    let mut outs = Vec::new();
    for corr in [CorrKind::Volume, CorrKind::Features] {
        let cfg = ModelConfig { corr, ..small() };
        let model = DeqFlow::new(&cfg, &opts, &mut DeqRng::new(1), DType::F64, &dev).unwrap();
        let out = model.forward(&img1, &img2, None, &deq, true).unwrap();
        assert_eq!(out.flows.len(), 3);
        assert_eq!(out.flows[2].dims(), &[2, 2, 32, 24]);
        let loss = out.flows.iter().map(|f| f.sqr().unwrap().sum_all().unwrap()).reduce(|a, b| (a + b).unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<Tensor> = model.named_vars().iter().map(|(_, v)| grads.get(v.as_tensor()).map(|t| t.clone()).unwrap_or_else(|| v.as_tensor().zeros_like().unwrap())).collect();
        outs.push((out.flows, g));
    }
    for (a, b) in outs[0].0.iter().zip(&outs[1].0) {
        assert!(max_abs_diff(a, b).unwrap() < 1e-9);
    }
    for (a, b) in outs[0].1.iter().zip(&outs[1].1) {
        assert!(max_abs_diff(a, b).unwrap() < 1e-8 * (1.0 + a.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()));
    }
}

#[test]
fn f32_forward_matches_f64_and_bad_frames_are_errors() {
    let dev = Device::Cpu;
    let mut rng = DeqRng::new(2);
    let img1 = rng.rand((1, 3, 24, 32), 0.0, 255.0, DType::F64, &dev).unwrap();
    let img2 = rng.rand((1, 3, 24, 32), 0.0, 255.0, DType::F64, &dev).unwrap();
    let deq_cfg = DeqConfig { f_solver: "anderson".into(), f_max_iter: 6, ..Default::default() };
    let deq = deq_layer(&deq_cfg, false, 0).unwrap();
    let opts = NormOptions::from_config(&deq_cfg);
    let m64 = DeqFlow::new(&small(), &opts, &mut DeqRng::new(4), DType::F64, &dev).unwrap();
    let m32 = DeqFlow::new(&small(), &opts, &mut DeqRng::new(4), DType::F32, &dev).unwrap();
    let a = m64.forward(&img1, &img2, None, &deq, false).unwrap();
    let b = m32.forward(&img1.to_dtype(DType::F32).unwrap(), &img2.to_dtype(DType::F32).unwrap(), None, &deq, false).unwrap();
    assert_eq!(a.flows.len(), 1);
    let scale = a.flows[0].abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(max_abs_diff(&a.flows[0], &b.flows[0]).unwrap() < 1e-3 * (1.0 + scale));
    assert!(m64.forward(&img1.narrow(2, 0, 20).unwrap(), &img2.narrow(2, 0, 20).unwrap(), None, &deq, false).unwrap_err().to_string().contains("multiple of 8"));
    assert!(m64.forward(&img1, &img2.narrow(3, 0, 24).unwrap(), None, &deq, false).is_err());
    // Two pyramid levels need at least 2x2 features (16x16 frames): 8x8 frames are refused.
    assert!(m64.forward(&img1.narrow(2, 0, 8).unwrap().narrow(3, 0, 8).unwrap(), &img2.narrow(2, 0, 8).unwrap().narrow(3, 0, 8).unwrap(), None, &deq, false).unwrap_err().to_string().contains("pyramid levels"));
}
