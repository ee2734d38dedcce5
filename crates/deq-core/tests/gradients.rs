//! Every gradient path against finite differences and unrolled backpropagation, in f64.

use candle_core::{DType, Device, Tensor, Var};
use deq_core::loss::{fp_correction, jac_reg, jac_reg_states, CorrectionWeight};
use deq_core::rng::DeqRng;
use deq_core::{Core, Deq, DeqConfig};

struct Setup {
    w: Var,
    u: Var,
    x: Tensor,
    c: Tensor,
}

fn setup(b: usize, d: usize, seed: u64) -> Setup {
    let p = deq_core::problems::linear_tanh_problem(b, d, 0.6, seed, DType::F64).unwrap();
    let mut rng = DeqRng::new(seed + 100);
    Setup {
        w: Var::from_tensor(&p.w).unwrap(),
        u: Var::from_tensor(&(p.u * 2.0).unwrap()).unwrap(),
        x: p.x,
        c: rng.randn((b, d), DType::F64, &Device::Cpu).unwrap(),
    }
}

fn f(z: &Tensor, inputs: &[Tensor], w: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
    z.matmul(&w.t()?)?.add(&inputs[0].matmul(&u.t()?)?)?.tanh()
}

fn loss_of(z: &Tensor, c: &Tensor) -> Tensor {
    (z.tanh().unwrap() * c).unwrap().sum_all().unwrap()
}

fn cfg() -> DeqConfig {
    DeqConfig { f_solver: "anderson".into(), f_max_iter: 200, f_tol: 1e-13, b_solver: "anderson".into(), b_max_iter: 200, b_tol: 1e-13, ift: true, ..Default::default() }
}

/// Loss at the exact fixed point for weights (w, u), solved tightly without gradients.
fn loss_at(s: &Setup, w: &Tensor, u: &Tensor) -> f64 {
    let mut deq = Deq::new(cfg()).unwrap();
    deq.set_training(false);
    let z0 = Tensor::zeros(s.c.shape(), DType::F64, &Device::Cpu).unwrap();
    let out = deq.forward1(|z, x| f(z, x, w, u), std::slice::from_ref(&s.x), &z0).unwrap();
    loss_of(out.z(), &s.c).to_scalar::<f64>().unwrap()
}

/// Central finite differences (step 1e-6) of `loss` with respect to every entry of `t`.
fn central_fd(t: &Tensor, loss: impl Fn(&Tensor) -> f64) -> Vec<f64> {
    let v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let h = 1e-6;
    (0..v.len())
        .map(|i| {
            let at = |d: f64| {
                let mut p = v.clone();
                p[i] += d;
                loss(&Tensor::from_vec(p, t.shape(), &Device::Cpu).unwrap())
            };
            (at(h) - at(-h)) / (2.0 * h)
        })
        .collect()
}

fn fd_grad(s: &Setup, which: usize) -> Vec<f64> {
    let (w, u) = (s.w.as_tensor(), s.u.as_tensor());
    if which == 0 {
        central_fd(w, |t| loss_at(s, t, u))
    } else {
        central_fd(u, |t| loss_at(s, w, t))
    }
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den
}

fn grad_vec(g: &candle_core::backprop::GradStore, v: &Var) -> Vec<f64> {
    g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

#[test]
fn implicit_gradient_matches_finite_differences_and_unrolled_backprop() {
    let s = setup(3, 5, 1);
    let deq = Deq::new(cfg()).unwrap();
    let z0 = Tensor::zeros(s.c.shape(), DType::F64, &Device::Cpu).unwrap();
    let out = deq
        .forward1(|z, x| f(z, x, s.w.as_tensor(), s.u.as_tensor()), std::slice::from_ref(&s.x), &z0)
        .unwrap();
    assert_eq!(out.states.len(), 1);
    let grads = loss_of(out.z(), &s.c).backward().unwrap();
    let (gw, gu) = (grad_vec(&grads, &s.w), grad_vec(&grads, &s.u));
    let bstats = out.backward_stats.get();
    assert_eq!(bstats.len(), 1, "one adjoint solve ran");
    assert!(bstats[0].max_lowest() < 1e-12);

    let (fw, fu) = (fd_grad(&s, 0), fd_grad(&s, 1));
    assert!(rel_err(&gw, &fw) < 1e-6, "W: ift vs fd {}", rel_err(&gw, &fw));
    assert!(rel_err(&gu, &fu) < 1e-6, "U: ift vs fd {}", rel_err(&gu, &fu));

    // Long unrolled backprop through 150 plain iterations (0.6^150 ~ 1e-33).
    let mut z = z0.clone();
    for _ in 0..150 {
        z = f(&z, std::slice::from_ref(&s.x), s.w.as_tensor(), s.u.as_tensor()).unwrap();
    }
    let g2 = loss_of(&z, &s.c).backward().unwrap();
    let (uw, uu) = (grad_vec(&g2, &s.w), grad_vec(&g2, &s.u));
    assert!(rel_err(&gw, &uw) < 1e-6, "W: ift vs unrolled {}", rel_err(&gw, &uw));
    assert!(rel_err(&gu, &uu) < 1e-6, "U: ift vs unrolled {}", rel_err(&gu, &uu));
}

#[test]
fn every_backward_solver_gives_the_same_implicit_gradient() {
    let s = setup(2, 4, 2);
    let z0 = Tensor::zeros(s.c.shape(), DType::F64, &Device::Cpu).unwrap();
    let mut reference: Option<Vec<f64>> = None;
    for b in ["fixed_point_iter", "simple_fixed_point_iter", "anderson", "broyden"] {
        let c = DeqConfig { b_solver: b.into(), b_max_iter: 120, ..cfg() };
        let deq = Deq::new(c).unwrap();
        let out = deq
            .forward1(|z, x| f(z, x, s.w.as_tensor(), s.u.as_tensor()), std::slice::from_ref(&s.x), &z0)
            .unwrap();
        let g = grad_vec(&loss_of(out.z(), &s.c).backward().unwrap(), &s.w);
        match &reference {
            None => reference = Some(g),
            Some(r) => assert!(rel_err(&g, r) < 1e-8, "{b}: {}", rel_err(&g, r)),
        }
    }
}

#[test]
fn phantom_gradient_equals_backprop_through_damped_steps() {
    let s = setup(3, 5, 3);
    let c = DeqConfig { f_solver: "broyden".into(), f_max_iter: 100, f_tol: 1e-12, grad: vec![5], tau: 0.5, ..Default::default() };
    let deq = Deq::new(c).unwrap();
    let z0 = Tensor::zeros(s.c.shape(), DType::F64, &Device::Cpu).unwrap();
    let out = deq
        .forward1(|z, x| f(z, x, s.w.as_tensor(), s.u.as_tensor()), std::slice::from_ref(&s.x), &z0)
        .unwrap();
    let g = loss_of(out.z(), &s.c).backward().unwrap();
    // Manual: the solver's fixed point, detached, then 5 damped steps with tracking.
    let mut eval = Deq::new(DeqConfig { f_solver: "broyden".into(), f_max_iter: 100, f_tol: 1e-12, ..Default::default() }).unwrap();
    eval.set_training(false);
    let zs = eval
        .forward1(|z, x| f(z, x, s.w.as_tensor(), s.u.as_tensor()), std::slice::from_ref(&s.x), &z0)
        .unwrap();
    let mut z = zs.z().detach();
    for _ in 0..5 {
        let fz = f(&z, std::slice::from_ref(&s.x), s.w.as_tensor(), s.u.as_tensor()).unwrap();
        z = ((fz * 0.5).unwrap() + (z * 0.5).unwrap()).unwrap();
    }
    let g2 = loss_of(&z, &s.c).backward().unwrap();
    let e = rel_err(&grad_vec(&g, &s.w), &grad_vec(&g2, &s.w));
    assert!(e < 1e-10, "phantom vs manual unroll {e}");
    // And it is only an approximation of the implicit gradient (not equal).
    let fw = fd_grad(&s, 0);
    assert!(rel_err(&grad_vec(&g, &s.w), &fw) > 1e-4);
}

#[test]
fn zero_solver_iterations_warm_start_takes_only_the_gradient_steps() {
    // f_max_iter = 0 (an amortised step from a cached state): the state is z0 followed by the
    // phantom steps, and f is evaluated exactly `grad` times; gradients equal backprop through
    // those steps from the detached z0.
    let s = setup(2, 4, 7);
    let deq = Deq::new(DeqConfig { f_solver: "fixed_point_iter".into(), f_max_iter: 0, grad: vec![3], tau: 1.0, ..Default::default() }).unwrap();
    let z0 = s.c.affine(0.1, 0.0).unwrap();
    let calls = std::cell::Cell::new(0usize);
    let out = deq
        .forward1(
            |z, x| {
                calls.set(calls.get() + 1);
                f(z, x, s.w.as_tensor(), s.u.as_tensor())
            },
            std::slice::from_ref(&s.x),
            &z0,
        )
        .unwrap();
    assert_eq!(calls.get(), 3, "f evaluations of an amortised step");
    let g = loss_of(out.z(), &s.c).backward().unwrap();
    let mut z = z0.clone();
    for _ in 0..3 {
        z = f(&z, std::slice::from_ref(&s.x), s.w.as_tensor(), s.u.as_tensor()).unwrap();
    }
    let g2 = loss_of(&z, &s.c).backward().unwrap();
    assert!(rel_err(&grad_vec(&g, &s.w), &grad_vec(&g2, &s.w)) < 1e-12);
    let d = (out.z() - &z).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(d < 1e-14, "{d}");
}

#[test]
fn jacobian_regulariser_gradient_matches_finite_differences() {
    let s = setup(2, 4, 4);
    let z = s.c.affine(0.3, 0.0).unwrap();
    let value = |w: &Tensor, u: &Tensor, seed: u64| -> (Tensor, f64) {
        let mut rng = DeqRng::new(seed);
        let r = jac_reg(&|z: &Tensor| f(z, std::slice::from_ref(&s.x), w, u), &z, 2, &mut rng).unwrap();
        let v = r.to_scalar::<f64>().unwrap();
        (r, v)
    };
    let (r, _) = value(s.w.as_tensor(), s.u.as_tensor(), 9);
    let g = r.backward().unwrap();
    let gw = grad_vec(&g, &s.w);
    let gu = grad_vec(&g, &s.u);
    for (which, got) in [(0usize, gw), (1, gu)] {
        let fd = if which == 0 {
            central_fd(s.w.as_tensor(), |t| value(t, s.u.as_tensor(), 9).1)
        } else {
            central_fd(s.u.as_tensor(), |t| value(s.w.as_tensor(), t, 9).1)
        };
        let e = rel_err(&got, &fd);
        assert!(e < 1e-6, "jac_reg gradient {which}: rel err {e}");
    }
}

#[test]
fn jacobian_regulariser_of_a_two_tensor_state() {
    // State [a (2, 4), b (2, 4)] with f = [tanh(a W^T + b U^T), tanh(b W^T + x U^T)].
    let s = setup(2, 4, 5);
    let (a, b) = (s.c.affine(0.3, 0.0).unwrap(), s.c.affine(-0.2, 0.1).unwrap());
    let pair = |z: &[Tensor], w: &Tensor, u: &Tensor| -> candle_core::Result<Vec<Tensor>> {
        Ok(vec![(z[0].matmul(&w.t()?)? + z[1].matmul(&u.t()?)?)?.tanh()?, (z[1].matmul(&w.t()?)? + s.x.matmul(&u.t()?)?)?.tanh()?])
    };
    let value = |w: &Tensor, u: &Tensor| -> (Tensor, f64) {
        let r = jac_reg_states(&|z: &[Tensor]| pair(z, w, u), &[a.clone(), b.clone()], 2, &mut DeqRng::new(3)).unwrap();
        let v = r.to_scalar::<f64>().unwrap();
        (r, v)
    };
    // The value is jac_reg of the same map on the flattened state, with the same probes.
    let flat = Tensor::cat(&[a.flatten_all().unwrap(), b.flatten_all().unwrap()], 0).unwrap();
    let by_hand = jac_reg(
        &|v: &Tensor| {
            let z = [v.narrow(0, 0, 8)?.reshape((2, 4))?, v.narrow(0, 8, 8)?.reshape((2, 4))?];
            let o = pair(&z, s.w.as_tensor(), s.u.as_tensor())?;
            Tensor::cat(&[o[0].flatten_all()?, o[1].flatten_all()?], 0)
        },
        &flat,
        2,
        &mut DeqRng::new(3),
    )
    .unwrap()
    .to_scalar::<f64>()
    .unwrap();
    let (r, v) = value(s.w.as_tensor(), s.u.as_tensor());
    assert!((v - by_hand).abs() < 1e-14 * by_hand.abs() && v > 0.0, "{v} vs {by_hand}");
    let g = r.backward().unwrap();
    let fd_w = central_fd(s.w.as_tensor(), |t| value(t, s.u.as_tensor()).1);
    let fd_u = central_fd(s.u.as_tensor(), |t| value(s.w.as_tensor(), t).1);
    assert!(rel_err(&grad_vec(&g, &s.w), &fd_w) < 1e-6 && rel_err(&grad_vec(&g, &s.u), &fd_u) < 1e-6);
    // A map that changes the state's shapes is an error, not a wrong estimate.
    let e = jac_reg_states(&|z: &[Tensor]| Ok(vec![z[0].clone()]), &[a.clone(), b.clone()], 1, &mut DeqRng::new(3));
    assert!(e.is_err());
}

#[test]
fn jacobian_regulariser_value_is_the_hutchinson_estimate() {
    // f(z) = z A^T: J = A, E||v^T A||^2 = ||A||_F^2; with many probes the estimate is close.
    let dev = Device::Cpu;
    let a = Tensor::new(&[[0.5f64, -0.2], [0.1, 0.3]], &dev).unwrap();
    let z = Tensor::zeros((1, 2), DType::F64, &dev).unwrap();
    let mut rng = DeqRng::new(1);
    let r = jac_reg(&|z: &Tensor| z.matmul(&a.t()?), &z, 4000, &mut rng).unwrap().to_scalar::<f64>().unwrap();
    let fro2 = 0.25 + 0.04 + 0.01 + 0.09;
    assert!((r - fro2 / 2.0).abs() < 0.02, "{r} vs {}", fro2 / 2.0);
}

#[test]
fn fp_correction_weights() {
    let dev = Device::Cpu;
    let losses: Vec<Tensor> = [1.0f64, 2.0, 4.0].iter().map(|&v| Tensor::new(v, &dev).unwrap()).collect();
    let l = fp_correction(&losses, CorrectionWeight::Exp { gamma: 0.8 }).unwrap().to_scalar::<f64>().unwrap();
    assert!((l - (0.64 + 1.6 + 4.0)).abs() < 1e-12);
    let l = fp_correction(&losses, CorrectionWeight::Linear { gamma: 0.9, bias: 0.0 }).unwrap().to_scalar::<f64>().unwrap();
    assert!((l - ((1.0 - 0.6) * 1.0 + (1.0 - 0.3) * 2.0 + 4.0)).abs() < 1e-12);
    let l = fp_correction(&losses, CorrectionWeight::Const { c: 2.0 }).unwrap().to_scalar::<f64>().unwrap();
    assert!((l - 14.0).abs() < 1e-12);
}

#[test]
fn multi_tensor_state_implicit_gradient_matches_finite_differences() {
    // Two coupled states of different shapes: a (b, 2, 3) and c (b, 4).
    let dev = Device::Cpu;
    let mut rng = DeqRng::new(5);
    let b = 2;
    let w = Var::from_tensor(&(rng.randn((10, 10), DType::F64, &dev).unwrap() * 0.15).unwrap()).unwrap();
    let x = rng.randn((b, 10), DType::F64, &dev).unwrap();
    let cvec = rng.randn((b, 10), DType::F64, &dev).unwrap();
    let fm = |z: &[Tensor], inp: &[Tensor], w: &Tensor| -> candle_core::Result<Vec<Tensor>> {
        let flat = Tensor::cat(&[z[0].reshape((b, 6))?, z[1].clone()], 1)?;
        let out = flat.matmul(&w.t()?)?.add(&inp[0])?.tanh()?;
        Ok(vec![out.narrow(1, 0, 6)?.reshape((b, 2, 3))?, out.narrow(1, 6, 4)?])
    };
    let z0 = vec![Tensor::zeros((b, 2, 3), DType::F64, &dev).unwrap(), Tensor::zeros((b, 4), DType::F64, &dev).unwrap()];
    let loss = |st: &[Tensor]| -> Tensor {
        let flat = Tensor::cat(&[st[0].reshape((b, 6)).unwrap(), st[1].clone()], 1).unwrap();
        (flat.sqr().unwrap() * &cvec).unwrap().sum_all().unwrap()
    };
    let deq = Deq::new(cfg()).unwrap();
    let out = deq.forward(|z, i| fm(z, i, w.as_tensor()), std::slice::from_ref(&x), &z0).unwrap();
    assert_eq!(out.last()[0].dims(), &[b, 2, 3]);
    assert_eq!(out.last()[1].dims(), &[b, 4]);
    let g = grad_vec(&loss(out.last()).backward().unwrap(), &w);
    let mut eval = Deq::new(cfg()).unwrap();
    eval.set_training(false);
    let fd = central_fd(w.as_tensor(), |t| {
        let o = eval.forward(|z, inp| fm(z, inp, t), std::slice::from_ref(&x), &z0).unwrap();
        loss(o.last()).to_scalar::<f64>().unwrap()
    });
    assert!(rel_err(&g, &fd) < 1e-6, "{}", rel_err(&g, &fd));
}

#[test]
fn indexing_core_keeps_ift_and_all_states_when_the_solver_stops_early() {
    let s = setup(2, 4, 6);
    let z0 = Tensor::zeros(s.c.shape(), DType::F64, &Device::Cpu).unwrap();
    // Converges in far fewer than 200 steps: TorchDEQ would drop the IFT state here.
    let c = DeqConfig { core: Core::Indexing, n_states: 4, f_max_iter: 200, f_tol: 1e-10, ..cfg() };
    let deq = Deq::new(c).unwrap();
    let out = deq.forward1(|z, x| f(z, x, s.w.as_tensor(), s.u.as_tensor()), std::slice::from_ref(&s.x), &z0).unwrap();
    assert_eq!(out.states.len(), 4);
    assert!(out.stats.nfe < 100);
    let g = grad_vec(&loss_of(&out.states[3][0], &s.c).backward().unwrap(), &s.w);
    assert_eq!(out.backward_stats.get().len(), 1, "the last state went through IFT");
    let fw = fd_grad(&s, 0);
    assert!(rel_err(&g, &fw) < 1e-6);
}

#[test]
fn sliced_core_chains_statistics_and_phantom_states() {
    let s = setup(2, 4, 7);
    let z0 = Tensor::zeros(s.c.shape(), DType::F64, &Device::Cpu).unwrap();
    let c = DeqConfig { f_solver: "fixed_point_iter".into(), f_max_iter: 30, f_tol: 0.0, n_states: 3, grad: vec![2], ift: false, ..Default::default() };
    let deq = Deq::new(c).unwrap();
    let out = deq.forward1(|z, x| f(z, x, s.w.as_tensor(), s.u.as_tensor()), std::slice::from_ref(&s.x), &z0).unwrap();
    assert_eq!(out.states.len(), 3);
    assert_eq!(out.stats.nfe, 30, "all three slices are counted");
    assert_eq!(out.stats.abs_trace.len(), 30);
    // sup_gap: k = 4, gap 2 -> states after steps 2 and 4.
    let c = DeqConfig { grad: vec![4], sup_gap: 2, f_max_iter: 10, ..Default::default() };
    let out = Deq::new(c).unwrap().forward1(|z, x| f(z, x, s.w.as_tensor(), s.u.as_tensor()), std::slice::from_ref(&s.x), &z0).unwrap();
    assert_eq!(out.states.len(), 2);
}

#[test]
fn ift_layer_called_twice_before_backward() {
    // TorchDEQ's hook IFT recurses forever here; two independent ops must simply add up.
    let s = setup(2, 4, 8);
    let z0 = Tensor::zeros(s.c.shape(), DType::F64, &Device::Cpu).unwrap();
    let deq = Deq::new(DeqConfig { hook_ift: true, ift: false, ..cfg() }).unwrap();
    let run = || deq.forward1(|z, x| f(z, x, s.w.as_tensor(), s.u.as_tensor()), std::slice::from_ref(&s.x), &z0).unwrap();
    let (a, b) = (run(), run());
    let l = (loss_of(a.z(), &s.c) + loss_of(b.z(), &s.c)).unwrap();
    let g = grad_vec(&l.backward().unwrap(), &s.w);
    let single = grad_vec(&loss_of(run().z(), &s.c).backward().unwrap(), &s.w);
    let twice: Vec<f64> = single.iter().map(|v| 2.0 * v).collect();
    assert!(rel_err(&g, &twice) < 1e-10);
    // And each is the implicit gradient (with `ift: false` and `hook_ift` ignored, it would be
    // the one-step phantom gradient, 20% off here).
    let fd = fd_grad(&s, 0);
    assert!(rel_err(&single, &fd) < 1e-6, "hook IFT gradient against finite differences: {}", rel_err(&single, &fd));
}

#[test]
fn eval_mode_budget_and_differentiable_eval() {
    let s = setup(2, 4, 9);
    let z0 = Tensor::zeros(s.c.shape(), DType::F64, &Device::Cpu).unwrap();
    let mut deq = Deq::new(DeqConfig { f_max_iter: 10, eval_factor: 2.0, f_tol: 0.0, ..Default::default() }).unwrap();
    deq.set_training(false);
    let out = deq.forward1(|z, x| f(z, x, s.w.as_tensor(), s.u.as_tensor()), std::slice::from_ref(&s.x), &z0).unwrap();
    assert_eq!(out.stats.nfe, 20);
    assert!(loss_of(out.z(), &s.c).backward().unwrap().get(s.w.as_tensor()).is_none(), "no gradient in eval");
    let mut deq = Deq::new(DeqConfig { differentiable_eval: true, sradius_mode: true, ..cfg() }).unwrap();
    deq.set_training(false);
    let out = deq.forward1(|z, x| f(z, x, s.w.as_tensor(), s.u.as_tensor()), std::slice::from_ref(&s.x), &z0).unwrap();
    let g = grad_vec(&loss_of(out.z(), &s.c).backward().unwrap(), &s.w);
    assert!(rel_err(&g, &fd_grad(&s, 0)) < 1e-6);
    // The exact spectral radius of each sample's Jacobian diag(1 - z*^2) W at the fixed point.
    let sr = out.stats.sradius.clone().unwrap();
    let (zs, w) = (out.z().to_vec2::<f64>().unwrap(), s.w.as_tensor().to_vec2::<f64>().unwrap());
    for (b, z) in zs.iter().enumerate() {
        let jac: Vec<Vec<f64>> = (0..w.len()).map(|i| w[i].iter().map(|wij| (1.0 - z[i] * z[i]) * wij).collect()).collect();
        let exact = spectral_radius(&jac);
        // 100 power iterations with |lambda_2 / lambda_1| = 0.92 (sample 0) leave ~1e-4.
        assert!((sr[b] - exact).abs() < 1e-3 * exact, "sample {b}: power method {} against the exact {exact}", sr[b]);
    }
}

/// The spectral radius of a square matrix by Gelfand's formula `lim ||A^k||^(1/k)` at
/// `k = 2^60`, by repeated squaring with renormalisation (exact to rounding for the small,
/// well-conditioned matrices of these tests).
fn spectral_radius(a: &[Vec<f64>]) -> f64 {
    let n = a.len();
    let (mut m, mut log_scale, mut k) = (a.to_vec(), 0f64, 1f64);
    for _ in 0..60 {
        let sq: Vec<Vec<f64>> = m.iter().map(|row| (0..n).map(|j| row.iter().zip(&m).map(|(a, r)| a * r[j]).sum()).collect()).collect();
        let norm = sq.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        m = sq.into_iter().map(|r| r.into_iter().map(|x| x / norm).collect()).collect();
        log_scale = 2.0 * log_scale + norm.ln();
        k *= 2.0;
    }
    (log_scale / k).exp()
}

#[test]
fn wrong_output_shape_is_a_shape_error() {
    let s = setup(2, 4, 10);
    let z0 = Tensor::zeros(s.c.shape(), DType::F64, &Device::Cpu).unwrap();
    let deq = Deq::new(cfg()).unwrap();
    let r = deq.forward1(|z, _| z.narrow(1, 0, 3), &[], &z0);
    assert!(matches!(r, Err(deq_core::DeqError::Shape { .. })), "{r:?}");
}

/// The carried-adjoint recursion with the parameters held still: `steps` rounds of `k` tracked
/// steps from the previous state, each backward adding the carried adjoint at the last state.
fn carried_gradient(s: &Setup, k: usize, tau: f64, steps: usize) -> (Vec<f64>, Vec<f64>) {
    use deq_core::grad::{backward, AdjointCarry};
    let inputs = std::slice::from_ref(&s.x);
    let mut carry = AdjointCarry::new(None);
    let mut z = Tensor::zeros(s.c.shape(), DType::F64, &Device::Cpu).unwrap();
    let mut last = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let zk = carry.unroll(&mut |z: &Tensor| f(z, inputs, s.w.as_tensor(), s.u.as_tensor()), &z, k, tau).unwrap();
        let mut loss = loss_of(&zk, &s.c);
        if let Some(t) = carry.seed(&zk).unwrap() {
            loss = (loss + t).unwrap();
        }
        let grads = backward(&loss).unwrap();
        carry.update(&grads).unwrap();
        assert!(carry.adjoint().is_some(), "the leaf received a gradient");
        last = (grad_vec(&grads, &s.w), grad_vec(&grads, &s.u));
        z = zk.detach();
    }
    last
}

#[test]
fn carried_adjoint_gradient_converges_to_the_implicit_gradient() {
    let s = setup(3, 5, 4);
    let (fw, fu) = (fd_grad(&s, 0), fd_grad(&s, 1));
    for (k, tau) in [(1, 1.0), (2, 0.7), (3, 1.0)] {
        let (gw, gu) = carried_gradient(&s, k, tau, 400 / k);
        assert!(rel_err(&gw, &fw) < 1e-6, "k={k} tau={tau}: W carried vs fd {}", rel_err(&gw, &fw));
        assert!(rel_err(&gu, &fu) < 1e-6, "k={k} tau={tau}: U carried vs fd {}", rel_err(&gu, &fu));
    }
    // Without the carry, one step is the Jacobian-free gradient: visibly biased here.
    let (gw1, _) = carried_gradient(&s, 1, 1.0, 1);
    assert!(rel_err(&gw1, &fw) > 1e-2, "the first step (no carry yet) is the biased JFB gradient");
}

#[test]
fn carried_adjoint_update_without_unroll_is_an_error() {
    let mut carry = deq_core::grad::AdjointCarry::new(None);
    let grads = candle_core::backprop::GradStore::default();
    assert!(carry.update(&grads).is_err());
    let z = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
    assert!(carry.unroll(&mut |z: &Tensor| Ok(z.clone()), &z, 0, 1.0).is_err());
    assert!(!carry.is_pending());
    carry.unroll(&mut |z: &Tensor| Ok(z.clone()), &z, 1, 1.0).unwrap();
    assert!(carry.is_pending(), "an unroll awaits its update");
    carry.update(&grads).unwrap();
    assert!(!carry.is_pending() && carry.adjoint().is_none(), "no gradient reached the leaf: zero adjoint");
}

#[test]
fn a_diverging_adjoint_solve_is_an_error_not_a_wrong_gradient() {
    // f(z) = a z + x: Broyden finds the fixed point z* = x / (1 - a) for any a != 1, while plain
    // iteration on the adjoint y = a y + g converges only for |a| < 1.
    let x = Tensor::new(&[[1.0f64, -2.0, 0.5], [0.3, 0.7, -1.1]], &Device::Cpu).unwrap();
    let z0 = x.zeros_like().unwrap();
    for (a, diverges) in [(0.5, false), (1.8, true)] {
        let av = Var::new(a, &Device::Cpu).unwrap();
        let c = DeqConfig { f_solver: "broyden".into(), f_max_iter: 30, f_tol: 1e-12, b_solver: "fixed_point_iter".into(), b_max_iter: 60, b_tol: 1e-12, ift: true, ..Default::default() };
        let deq = Deq::new(c).unwrap();
        let out = deq.forward1(|z, x| z.broadcast_mul(av.as_tensor())?.add(&x[0]), std::slice::from_ref(&x), &z0).unwrap();
        let r = out.z().sum_all().unwrap().backward();
        if diverges {
            let e = r.err().expect("a diverging adjoint solve must fail").to_string();
            assert!(e.contains("diverging adjoint") && e.contains("nfe 60") && e.contains("samples [0, 1]"), "{e}");
        } else {
            // d/da of sum(x / (1 - a)) = sum(x) / (1 - a)^2.
            let g = r.unwrap().get(av.as_tensor()).unwrap().to_scalar::<f64>().unwrap();
            let want = x.sum_all().unwrap().to_scalar::<f64>().unwrap() / (1.0 - a) / (1.0 - a);
            assert!((g - want).abs() < 1e-8 * want.abs().max(1.0), "{g} vs {want}");
        }
    }
}
