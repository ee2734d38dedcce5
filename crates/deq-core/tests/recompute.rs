//! Recomputation gives the same gradients as the tracked forward, for implicit differentiation
//! and for the phantom gradient, in f64.

use candle_core::{DType, Device, Tensor, Var};
use deq_core::rng::DeqRng;
use deq_core::{Deq, DeqConfig, DeqError};

struct Net {
    w: Var,
    u: Var,
    v: Var,
    xin: Tensor,
    c: Tensor,
}

fn net() -> Net {
    let p = deq_core::problems::linear_tanh_problem(3, 6, 0.7, 11, DType::F64).unwrap();
    let mut rng = DeqRng::new(12);
    Net {
        w: Var::from_tensor(&p.w).unwrap(),
        u: Var::from_tensor(&p.u).unwrap(),
        // The DEQ's input is itself computed (x = xin V^T), so gradients must reach V too.
        v: Var::from_tensor(&rng.randn((6, 4), DType::F64, &Device::Cpu).unwrap()).unwrap(),
        xin: rng.randn((3, 4), DType::F64, &Device::Cpu).unwrap(),
        c: rng.randn((3, 6), DType::F64, &Device::Cpu).unwrap(),
    }
}

/// Gradients of `sum(c * tanh(z*))` for W, U, V, with the standard forward or with recomputation.
fn grads(cfg: &DeqConfig, recompute: bool) -> Vec<Tensor> {
    let n = net();
    let deq = Deq::new(cfg.clone()).unwrap();
    let f = |z: &[Tensor], x: &[Tensor]| -> candle_core::Result<Vec<Tensor>> {
        Ok(vec![z[0].matmul(&n.w.as_tensor().t()?)?.add(&x[0].matmul(&n.u.as_tensor().t()?)?)?.tanh()?])
    };
    let x = n.xin.matmul(&n.v.as_tensor().t().unwrap()).unwrap();
    let z0 = Tensor::zeros((3, 6), DType::F64, &Device::Cpu).unwrap();
    let loss = |z: &Tensor| (z.tanh().unwrap() * &n.c).unwrap().sum_all().unwrap();
    let store = if recompute {
        let out = deq.forward_recompute(f, std::slice::from_ref(&x), std::slice::from_ref(&z0)).unwrap();
        #[cfg(feature = "pruned-vjp")]
        assert!(out.z[0].as_tensor().op().is_none(), "no graph is kept");
        let mut g = loss(out.z[0].as_tensor()).backward().unwrap();
        let report = deq.backward_recompute(f, std::slice::from_ref(&x), &out, &mut g).unwrap();
        assert!(!report.skipped);
        assert_eq!(report.adjoint.is_some(), cfg.ift);
        g
    } else {
        let out = deq.forward(f, std::slice::from_ref(&x), std::slice::from_ref(&z0)).unwrap();
        loss(out.z()).backward().unwrap()
    };
    [&n.w, &n.u, &n.v].iter().map(|v| store.get(v.as_tensor()).expect("gradient").clone()).collect()
}

fn assert_close(a: &[Tensor], b: &[Tensor], tol: f64) {
    for (x, y) in a.iter().zip(b) {
        let e = (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        let s = y.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(e <= tol * s, "relative error {:.2e}", e / s);
    }
}

#[test]
fn implicit_differentiation_with_recomputation_matches() {
    let cfg = DeqConfig { f_solver: "anderson".into(), f_max_iter: 100, f_tol: 1e-12, b_solver: "anderson".into(), b_max_iter: 100, b_tol: 1e-12, ift: true, ..Default::default() };
    assert_close(&grads(&cfg, true), &grads(&cfg, false), 1e-9);
}

#[test]
fn phantom_gradient_with_recomputation_matches() {
    let cfg = DeqConfig { f_max_iter: 60, f_tol: 1e-12, ift: false, grad: vec![5], tau: 0.7, ..Default::default() };
    assert_close(&grads(&cfg, true), &grads(&cfg, false), 1e-12);
}

#[test]
fn recomputation_rejects_fixed_point_correction() {
    let deq = Deq::new(DeqConfig { n_states: 2, ..Default::default() }).unwrap();
    let z0 = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
    let err = deq.forward_recompute(|z: &[Tensor], _x: &[Tensor]| Ok(z.to_vec()), &[], &[z0]).unwrap_err();
    assert!(matches!(&err, DeqError::Config { key, .. } if key == "n_states"), "{err}");
}
