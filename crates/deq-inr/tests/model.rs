//! The model in f64: each filter's injection against its formula, the gradients of `f` and of
//! an amortised training step against finite differences, the amortised solve's evaluation
//! count, and the SIREN baseline.

use candle_core::{DType, Device, Tensor, Var};
use deq_core::rng::DeqRng;
use deq_inr::filter::{sample_gamma, FilterKind, Injection};
use deq_inr::model::{zoo_deq, AmortisedGrad, DeqInr, InrModelConfig, SolveMode};
use deq_inr::net::{AmortisedCache, InrNet};
use deq_inr::siren::{siren_params, Siren};

const DEV: Device = Device::Cpu;

fn coords(n: usize, k: usize, seed: u64) -> Tensor {
    DeqRng::new(seed).rand((n, k), -1.0, 1.0, DType::F64, &DEV).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

#[test]
fn injections_follow_their_formulas() {
    for kind in [FilterKind::SirenLike, FilterKind::Fourier, FilterKind::Gabor] {
        let mut rng = DeqRng::new(1);
        let inj = Injection::new(kind, 2, 3, 2, 10.0, 3.0, &mut rng, DType::F64, &DEV).unwrap();
        let x = coords(4, 2, 2);
        let us = inj.forward(&x).unwrap();
        assert_eq!(us.len(), 2);
        let p: std::collections::HashMap<String, Vec<f64>> = inj.named_vars("i").into_iter().map(|(n, v)| (n, vals(v.as_tensor()))).collect();
        let (w, b) = (&p["i.weight"], &p["i.bias"]);
        let xv = vals(&x);
        for (f, u) in us.iter().enumerate() {
            let uv = vals(u);
            for n in 0..4 {
                for j in 0..3 {
                    let r = f * 3 + j;
                    let lin = w[r * 2] * xv[n * 2] + w[r * 2 + 1] * xv[n * 2 + 1] + b[r];
                    let want = match kind {
                        FilterKind::SirenLike => lin,
                        FilterKind::Fourier => lin.sin(),
                        FilterKind::Gabor => {
                            let (mu, g) = (&p["i.mu"], &p["i.gamma"]);
                            let d2 = (xv[n * 2] - mu[r * 2]).powi(2) + (xv[n * 2 + 1] - mu[r * 2 + 1]).powi(2);
                            lin.sin() * (-0.5 * g[r] * d2).exp()
                        }
                    };
                    assert!((uv[n * 3 + j] - want).abs() < 1e-12, "{kind:?} filter {f} point {n} feature {j}: {} vs {want}", uv[n * 3 + j]);
                }
            }
        }
        // Biases are uniform in [-pi, pi]; weights scaled by input_scale / sqrt(filters).
        assert!(b.iter().all(|v| v.abs() <= std::f64::consts::PI));
        if kind != FilterKind::Gabor {
            let bound = 10.0 / 2f64.sqrt() / 2f64.sqrt();
            assert!(w.iter().all(|v| v.abs() <= bound + 1e-12));
        }
    }
}

#[test]
fn gamma_sampler_has_the_right_mean_and_variance() {
    let mut rng = DeqRng::new(3);
    for shape in [0.5, 3.0] {
        let s: Vec<f64> = (0..40_000).map(|_| sample_gamma(shape, &mut rng)).collect();
        let m = s.iter().sum::<f64>() / s.len() as f64;
        let v = s.iter().map(|x| (x - m).powi(2)).sum::<f64>() / s.len() as f64;
        assert!((m - shape).abs() < 0.05 * shape.max(1.0), "mean {m} for shape {shape}");
        assert!((v - shape).abs() < 0.1 * shape.max(1.0), "variance {v} for shape {shape}");
    }
}

fn model(kind: FilterKind, layers: usize, grad: usize) -> DeqInr {
    let cfg = InrModelConfig { filter: kind, layers, width: 4, input_scale: 3.0, gabor_alpha: 3.0, ..Default::default() };
    let mut deq = zoo_deq(30);
    deq.grad = vec![grad];
    DeqInr::new(cfg, 2, 2, deq, &mut DeqRng::new(5), DType::F64, &DEV).unwrap()
}

/// Central differences of `value` against the pruned backward of `loss` for every variable.
fn check(vars: &[(String, Var)], loss: &dyn Fn() -> Tensor, value: &dyn Fn() -> f64, tol: f64, what: &str) {
    check_grads(vars, &deq_core::grad::backward(&loss()).unwrap(), value, tol, what);
}

/// Central differences of `value` against `grads` at three entries of every variable.
fn check_grads(vars: &[(String, Var)], grads: &candle_core::backprop::GradStore, value: &dyn Fn() -> f64, tol: f64, what: &str) {
    for (name, v) in vars {
        let g = vals(grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{what}: no gradient for {name}")));
        let base = vals(v.as_tensor());
        for k in [0, base.len() / 2, base.len() - 1] {
            let at = |s: f64| {
                let mut p = base.clone();
                p[k] += s;
                v.set(&Tensor::from_vec(p, v.as_tensor().shape(), &DEV).unwrap()).unwrap();
                value()
            };
            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
            v.set(&Tensor::from_vec(base.clone(), v.as_tensor().shape(), &DEV).unwrap()).unwrap();
            let err = (g[k] - fd).abs() / fd.abs().max(1e-4);
            assert!(err < tol, "{what}: {name}[{k}] analytic {} vs FD {fd} (rel {err:.1e})", g[k]);
        }
    }
}

#[test]
fn every_filter_differentiates_exactly_through_f_and_an_amortised_step() {
    for kind in [FilterKind::SirenLike, FilterKind::Fourier, FilterKind::Gabor] {
        for layers in [1, 2] {
            let m = model(kind, layers, 3);
            let x = coords(5, 2, 7);
            let z = DeqRng::new(8).randn((5, 4), DType::F64, &DEV).unwrap();
            let c4 = DeqRng::new(9).randn((5, 4), DType::F64, &DEV).unwrap();
            let vars = m.named_vars();
            // f itself (the weight norm recomputed from the current parameters first).
            let f_loss = || {
                m.reset_norms().unwrap();
                (m.f(&z, &m.inputs(&x).unwrap()).unwrap() * &c4).unwrap().sum_all().unwrap()
            };
            let f_vars: Vec<_> = vars.iter().filter(|(n, _)| !n.starts_with("output")).cloned().collect();
            check(&f_vars, &f_loss, &|| f_loss().to_scalar::<f64>().unwrap(), 1e-5, &format!("{kind:?} {layers}L f"));
            // An amortised step from a fixed cached state is an explicit function:
            // y = out(f(f(f(z)))); its phantom gradient is the exact gradient.
            let c2 = DeqRng::new(10).randn((5, 2), DType::F64, &DEV).unwrap();
            let step_loss = || (m.forward(&x, Some(&z), SolveMode::Amortised).unwrap().0 * &c2).unwrap().sum_all().unwrap();
            check(&vars, &step_loss, &|| step_loss().to_scalar::<f64>().unwrap(), 1e-5, &format!("{kind:?} {layers}L step"));
        }
    }
}

#[test]
fn amortised_steps_evaluate_f_exactly_grad_times() {
    let m = model(FilterKind::SirenLike, 1, 3);
    let x = coords(6, 2, 11);
    let before = m.f_evals();
    let (_, z, stats) = m.forward(&x, None, SolveMode::Full).unwrap();
    let full = m.f_evals() - before;
    assert_eq!(full, stats.nfe + 3, "the first step: the solve, then 3 gradient steps");
    for _ in 0..4 {
        let before = m.f_evals();
        let (_, z2, _) = m.forward(&x, Some(&z), SolveMode::Amortised).unwrap();
        assert_eq!(m.f_evals() - before, 3);
        assert_eq!(z2.dims(), &[6, 4]);
    }
    // With solver steps before the gradient steps: exactly that many more.
    let mut rng = DeqRng::new(3);
    let cfg = InrModelConfig { width: 4, input_scale: 3.0, amortised_iters: 2, ..Default::default() };
    let tight = deq_core::DeqConfig { f_tol: 1e-30, ..zoo_deq(30) };
    let m2 = DeqInr::new(cfg, 2, 1, tight, &mut rng, DType::F64, &DEV).unwrap();
    let before = m2.f_evals();
    m2.forward(&x, Some(&z), SolveMode::Amortised).unwrap();
    assert_eq!(m2.f_evals() - before, 2 + 3);
}

#[test]
fn siren_baseline_matches_the_parameter_count_and_differentiates() {
    let deq = model(FilterKind::SirenLike, 1, 3);
    let mut rng = DeqRng::new(12);
    let s = Siren::matching(deq.num_params(), 2, 3, 2, &mut rng, DType::F64, &DEV).unwrap();
    assert!(s.num_params() <= deq.num_params());
    assert!(siren_params(2, s.width() + 1, 3, 2) > deq.num_params(), "the widest that fits");
    assert_eq!(s.num_params(), siren_params(2, s.width(), 3, 2));
    let x = coords(5, 2, 13);
    let c = DeqRng::new(14).randn((5, 2), DType::F64, &DEV).unwrap();
    let loss = || (s.forward(&x).unwrap() * &c).unwrap().sum_all().unwrap();
    check(&s.named_vars(), &loss, &|| loss().to_scalar::<f64>().unwrap(), 1e-5, "siren");
}

#[test]
fn z_map_gain_scales_the_initial_maps_and_nothing_else() {
    let vars = |gain: f64, norm: deq_core::NormType| {
        let cfg = InrModelConfig { width: 4, input_scale: 3.0, z_map_gain: gain, ..Default::default() };
        let deq = deq_core::DeqConfig { norm_type: norm, ..zoo_deq(5) };
        let m = DeqInr::new(cfg, 2, 1, deq, &mut DeqRng::new(8), DType::F64, &DEV).unwrap();
        m.named_vars().into_iter().map(|(k, v)| (k, v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap())).collect::<Vec<_>>()
    };
    // With weight norm the gain goes into g; without a norm, into the weight itself.
    for (norm, scaled) in [(deq_core::NormType::WeightNorm, "z_map.0.weight_g"), (deq_core::NormType::None, "z_map.0.weight_v")] {
        let (one, more) = (vars(1.0, norm), vars(2.5, norm));
        assert!(one.iter().any(|(k, _)| k == scaled), "{scaled} in {:?}", one.iter().map(|(k, _)| k).collect::<Vec<_>>());
        for ((k, a), (_, b)) in one.iter().zip(&more) {
            if k == scaled {
                assert!(a.iter().zip(b).all(|(x, y)| (2.5 * x - y).abs() < 1e-12), "{k} scaled by the gain");
            } else {
                assert_eq!(a, b, "{k} unchanged");
            }
        }
    }
}

/// A contractive siren_like model for the carried-adjoint tests (`A` at half PyTorch's scale).
fn carried_model(layers: usize, grad: usize, amortised_iters: usize) -> InrNet {
    let cfg = InrModelConfig {
        layers,
        width: 4,
        input_scale: 3.0,
        z_map_gain: 0.5,
        amortised_iters,
        amortised_grad: AmortisedGrad::CarriedAdjoint,
        ..Default::default()
    };
    let deq = deq_core::DeqConfig { f_tol: 1e-15, f_max_iter: 400, eval_f_max_iter: 400, grad: vec![grad], tau: if grad == 2 { 0.8 } else { 1.0 }, ..zoo_deq(400) };
    InrNet::Deq(DeqInr::new(cfg, 2, 2, deq, &mut DeqRng::new(21), DType::F64, &DEV).unwrap())
}

#[test]
fn carried_adjoint_steps_converge_to_the_implicit_gradient_and_cost_grad_evaluations() {
    let x = coords(5, 2, 22);
    let c2 = DeqRng::new(23).randn((5, 2), DType::F64, &DEV).unwrap();
    for (layers, grad, iters) in [(1, 1, 0), (2, 2, 1)] {
        let net = carried_model(layers, grad, iters);
        let InrNet::Deq(m) = &net else { unreachable!() };
        // Parameters held still: the state and the carried adjoint converge, and the gradient
        // of each step converges to the implicit gradient of the loss at the exact fixed point.
        let mut cache = AmortisedCache::default();
        let mut grads = None;
        for step in 0..300 {
            let before = m.f_evals();
            let fw = net.train_forward(&x, Some(&mut cache)).unwrap();
            if step > 0 {
                assert_eq!(m.f_evals() - before, iters + grad, "amortised solver steps plus the tracked steps");
                assert!(fw.stats.is_none());
            }
            let loss = (&fw.pred * &c2).unwrap().sum_all().unwrap();
            let g = deq_core::grad::backward(&fw.backward_target(loss).unwrap()).unwrap();
            net.finish_step(&g, Some(&mut cache)).unwrap();
            if step > 0 {
                assert!(cache.carry.adjoint().is_some(), "the adjoint is carried");
            }
            grads = Some(g);
        }
        let grads = grads.unwrap();
        let value = || (m.forward(&x, None, SolveMode::Eval).unwrap().0 * &c2).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        check_grads(&m.named_vars(), &grads, &value, 1e-5, &format!("{layers}L grad {grad}: carried vs FD of the fixed point"));
    }
}
