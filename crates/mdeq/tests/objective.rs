//! The `[deq]` options that act on the training loss, in the MDEQ trainer: fixed-point
//! correction over the supervised states and the Jacobian regulariser change the loss and its
//! gradient exactly as they should; an option that could not act is refused by name.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use deq_train::DeqObjective;
use mdeq::config::{RunConfig, MNIST_SMALL};
use mdeq::{Mdeq, ModelConfig};
use mdeq::train::{train, training_loss, RunOptions};

fn model_config() -> ModelConfig {
    ModelConfig { in_channels: 1, num_classes: 3, channels: vec![4, 4], head_channels: vec![2, 2], final_chansize: 6, expansion: 2, groups: 2, downsample_times: 0 }
}

fn deq_config() -> DeqConfig {
    DeqConfig { f_solver: "fixed_point_iter".into(), f_max_iter: 6, f_tol: 0.0, grad: vec![2], ..Default::default() }
}

fn batch() -> (Tensor, Tensor) {
    let x = DeqRng::new(1).randn((3, 1, 8, 8), DType::F64, &Device::Cpu).unwrap();
    (x, Tensor::new(&[0u32, 2, 1], &Device::Cpu).unwrap())
}

fn ce(logits: &Tensor, labels: &Tensor) -> Tensor {
    candle_nn::loss::cross_entropy(logits, labels).unwrap()
}

fn value(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Every variable's gradient in `a` equals `b`'s (absent counts as zero); returns the largest
/// entry of `a`'s gradients over the variables whose name starts with `prefix`.
fn same_grads(vars: &[(String, Var)], a: &GradStore, b: &GradStore, prefix: &str) -> f64 {
    let mut largest = 0f64;
    for (name, v) in vars {
        let get = |g: &GradStore| g.get(v.as_tensor()).map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap()).unwrap_or_else(|| vec![0.0; v.as_tensor().elem_count()]);
        let (ga, gb) = (get(a), get(b));
        for (x, y) in ga.iter().zip(&gb) {
            assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "{name}: {x} against {y}");
        }
        if name.starts_with(prefix) {
            largest = ga.iter().fold(largest, |m, x| m.max(x.abs()));
        }
    }
    largest
}

#[test]
fn fixed_point_correction_weights_every_state() {
    let cfg = DeqConfig { n_states: 2, gamma: 0.7, ..deq_config() };
    let model = Mdeq::new(model_config(), cfg.clone(), &mut DeqRng::new(3), DType::F64, &Device::Cpu).unwrap();
    let objective = DeqObjective::new(&cfg, 0).unwrap();
    let (x, y) = batch();
    let s = training_loss(&model, &objective, &x, &y, 0).unwrap();
    let l = &s.out.state_logits;
    assert_eq!(l.len(), 2, "two supervised states");
    let (first, last) = (ce(&l[0], &y), ce(&l[1], &y));
    assert!((value(&first) - value(&last)).abs() > 1e-6, "the states differ");
    assert_eq!(s.task, value(&last), "train_loss is the fixed point's cross-entropy");
    let by_hand = (first.affine(0.7, 0.0).unwrap() + &last).unwrap();
    assert!((value(&s.loss) - value(&by_hand)).abs() < 1e-12, "{} against {}", value(&s.loss), value(&by_hand));
    // The gradient is that of the weighted sum, and the earlier state's part is not zero.
    let vars = model.named_vars();
    let g = deq_core::grad::backward(&s.loss).unwrap();
    same_grads(&vars, &g, &deq_core::grad::backward(&by_hand).unwrap(), "");
    let diff = (&s.loss - &last).unwrap();
    let g_first = deq_core::grad::backward(&diff).unwrap();
    assert!(same_grads(&vars, &g_first, &deq_core::grad::backward(&first.affine(0.7, 0.0).unwrap()).unwrap(), "f.") > 1e-8);
}

#[test]
fn jacobian_regulariser_is_added_at_the_fixed_point() {
    let cfg = DeqConfig { jac_loss_weight: 0.5, jac_loss_freq: 1.0, ..deq_config() };
    let model = Mdeq::new(model_config(), cfg.clone(), &mut DeqRng::new(3), DType::F64, &Device::Cpu).unwrap();
    let objective = DeqObjective::new(&cfg, 0).unwrap();
    let (x, y) = batch();
    let s = training_loss(&model, &objective, &x, &y, 0).unwrap();
    let jac = s.jac.as_ref().expect("applied on every step with jac_loss_freq 1");
    assert_eq!(jac.weight, 0.5);
    assert!(jac.value > 0.0);
    let task = ce(&s.out.logits, &y);
    assert!((value(&s.loss) - value(&task) - 0.5 * jac.value).abs() < 1e-12);
    // Its gradient is added to the task's and reaches f's parameters only (not the head).
    let vars = model.named_vars();
    let g = deq_core::grad::backward(&s.loss).unwrap();
    let g_jac = deq_core::grad::backward(&(&s.loss - &task).unwrap()).unwrap();
    let g_term = deq_core::grad::backward(&jac.term).unwrap();
    assert!(same_grads(&vars, &g_jac, &g_term, "f.") > 1e-8, "the regulariser moves f");
    assert_eq!(same_grads(&vars, &g_term, &g_term, "head."), 0.0, "not the head");
    let (g_task, total) = (deq_core::grad::backward(&task).unwrap(), &g);
    for (name, v) in &vars {
        let get = |gs: &GradStore| gs.get(v.as_tensor()).map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap()).unwrap_or_else(|| vec![0.0; v.as_tensor().elem_count()]);
        let (a, b, c) = (get(total), get(&g_task), get(&g_jac));
        assert!(a.iter().zip(b.iter().zip(&c)).all(|(t, (p, q))| (t - p - q).abs() <= 1e-12 * (1.0 + t.abs())), "{name}");
    }
    // With the same weights the regulariser's value equals deq-core's estimate of the model's f.
    let z: Vec<Tensor> = s.out.fixed_point.iter().map(|t| t.detach()).collect();
    let again = objective.jacobian(0, &|z: &[Tensor]| model.f(z, &s.out.injection), &z).unwrap().unwrap();
    assert_eq!(again.value, jac.value, "the same draw and probe for the same step");
}

#[test]
fn options_that_could_not_act_are_refused_before_training() {
    let mut cfg = RunConfig::from_toml(MNIST_SMALL, "built-in").unwrap();
    cfg.deq.jac_loss_weight = 1.0;
    let opts = RunOptions { out_dir: std::env::temp_dir().join(format!("mdeq-objective-{}", std::process::id())), resume: false, max_steps: 1, device: Device::Cpu };
    let e = format!("{:#}", train(&cfg, &opts).unwrap_err());
    assert!(e.contains("deq.jac_loss_weight") && e.contains("jac_loss_freq"), "{e}");
    let _ = std::fs::remove_dir_all(&opts.out_dir);
}
