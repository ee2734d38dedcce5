//! The `[deq]` loss options in DEQ-Flow's objective: `n_states` supervised states, each decoded
//! to a full-resolution flow, weighted by `gamma^(n - 1 - i)` (fixed-point correction); the
//! loss and its gradient are exactly that combination of the states' losses. The Jacobian
//! regulariser is refused by the configuration (tested in `training.rs`).

use candle_core::{DType, Device, Tensor};
use deq_core::norm::NormOptions;
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use deq_flow::loss::{l1_loss, loss_mask, sequence_loss};
use deq_flow::model::{deq_layer, DeqFlow, ModelConfig};

fn small() -> ModelConfig {
    ModelConfig { encoder_dims: [4, 4, 5], feature_dim: 6, hidden_dim: 5, context_dim: 4, corr_levels: 2, corr_radius: 1, motion_dims: [6, 5, 4, 3], motion_out: 6, head_dim: 5, mask_dim: 7, ..ModelConfig::b() }
}

#[test]
fn fixed_point_correction_weighs_the_supervised_states() {
    let dev = Device::Cpu;
    let mut rng = DeqRng::new(3);
    let img1 = rng.rand((2, 3, 16, 24), 0.0, 255.0, DType::F64, &dev).unwrap();
    let img2 = rng.rand((2, 3, 16, 24), 0.0, 255.0, DType::F64, &dev).unwrap();
    let gt = (rng.randn((2, 2, 16, 24), DType::F64, &dev).unwrap() * 3.0).unwrap();
    let valid = rng.rand((2, 16, 24), 0.0, 1.0, DType::F64, &dev).unwrap().ge(0.3).unwrap().to_dtype(DType::F64).unwrap();
    for n_states in [1usize, 3] {
        let cfg = DeqConfig { f_solver: "simple_fixed_point_iter".into(), f_max_iter: 3 * n_states, n_states, ..Default::default() };
        let model = DeqFlow::new(&small(), &NormOptions::from_config(&cfg), &mut DeqRng::new(1), DType::F64, &dev).unwrap();
        let deq = deq_layer(&cfg, true, 0).unwrap();
        let flows = model.forward(&img1, &img2, None, &deq, true).unwrap().flows;
        assert_eq!(flows.len(), n_states);
        let mask = loss_mask(&gt, &valid, 400.0).unwrap();
        let each: Vec<Tensor> = flows.iter().map(|f| l1_loss(f, &gt, &mask).unwrap()).collect();
        for gamma in [0.8, 0.5] {
            let loss = sequence_loss(&flows, &gt, &valid, gamma, 400.0).unwrap();
            let want: f64 = each.iter().enumerate().map(|(i, l)| gamma.powi((n_states - 1 - i) as i32) * l.to_scalar::<f64>().unwrap()).sum();
            assert!((loss.to_scalar::<f64>().unwrap() - want).abs() < 1e-12, "n_states {n_states}, gamma {gamma}");
            // The gradient is the same combination of the states' gradients.
            let g = deq_core::grad::backward(&loss).unwrap();
            let per: Vec<_> = each.iter().map(|l| deq_core::grad::backward(l).unwrap()).collect();
            let mut checked = 0;
            for (name, v) in model.named_vars() {
                let Some(total) = g.get(v.as_tensor()) else { continue };
                let mut sum = total.zeros_like().unwrap();
                for (i, p) in per.iter().enumerate() {
                    if let Some(t) = p.get(v.as_tensor()) {
                        sum = (sum + (t * gamma.powi((n_states - 1 - i) as i32)).unwrap()).unwrap();
                    }
                }
                let d = (total - &sum).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                assert!(d < 1e-10, "{name}: {d}");
                checked += 1;
            }
            assert!(checked > 20);
        }
    }
}
