//! IGNN invariants: the projection bound, a unique fixed point, sparse = dense aggregation,
//! and the implicit gradient against finite differences (f64).

use candle_core::{DType, Device, Tensor, Var};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use ignn::projection::inf_norm;
use ignn::{aggregate, aggregate_indexed, Graph, ImplicitGraph};

fn random_graph(n: usize, e: usize, seed: u64) -> Graph {
    let mut rng = DeqRng::new(seed);
    let edges: Vec<(u32, u32)> = (0..e).map(|_| ((rng.next_u64() % n as u64) as u32, (rng.next_u64() % n as u64) as u32)).collect();
    let mut g = Graph::from_edges(n, &edges).unwrap();
    g.weight = (0..e).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
    g
}

fn dense(g: &Graph) -> Vec<f64> {
    let mut a = vec![0f64; g.n * g.n];
    for k in 0..g.num_edges() {
        a[g.src[k] as usize * g.n + g.dst[k] as usize] += g.weight[k] as f64;
    }
    a
}

#[test]
fn sparse_aggregation_equals_the_dense_product() {
    let g = random_graph(30, 120, 1);
    let a = g.tensors(DType::F64, &Device::Cpu).unwrap();
    let x = DeqRng::new(2).randn((30, 5), DType::F64, &Device::Cpu).unwrap();
    let ad = dense(&g);
    let xv = x.to_vec2::<f64>().unwrap();
    for (path, got) in [("csr", aggregate(&x, &a).unwrap()), ("indexed", aggregate_indexed(&x, &a).unwrap())] {
        let got = got.to_vec2::<f64>().unwrap();
        for j in 0..30 {
            for c in 0..5 {
                let want: f64 = (0..30).map(|i| ad[i * 30 + j] * xv[i][c]).sum();
                assert!((got[j][c] - want).abs() < 1e-9, "{path} ({j},{c}): {} vs {want}", got[j][c]);
            }
        }
    }
    // A strided (transposed) input goes through the kernel too.
    let xt = DeqRng::new(3).randn((5, 30), DType::F64, &Device::Cpu).unwrap().t().unwrap();
    let d = (aggregate(&xt, &a).unwrap() - aggregate_indexed(&xt, &a).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(d < 1e-12, "{d}");
}

#[test]
fn sparse_kernel_gradients_match_finite_differences_and_second_order() {
    // d/dx sum(c * A^T x) = A c, by the kernel's backward (the transposed kernel), against
    // finite differences; and the backward of the backward (second order) against A^T.
    let g = random_graph(20, 70, 21);
    let a = g.tensors(DType::F64, &Device::Cpu).unwrap();
    let mut rng = DeqRng::new(22);
    let x = Var::from_tensor(&rng.randn((20, 3), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let c = rng.randn((20, 3), DType::F64, &Device::Cpu).unwrap();
    let loss = |x: &Tensor| (aggregate(x, &a).unwrap() * &c).unwrap().sum_all().unwrap();
    let grad = loss(x.as_tensor()).backward().unwrap().get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base = x.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for k in [0, 17, 31, 59] {
        let at = |s: f64| {
            let mut p = base.clone();
            p[k] += s;
            loss(&Tensor::from_vec(p, (20, 3), &Device::Cpu).unwrap()).to_scalar::<f64>().unwrap()
        };
        let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
        assert!((grad[k] - fd).abs() < 1e-8, "x[{k}]: {} vs {fd}", grad[k]);
    }
    // Second order: v -> backward of <A^T x, c> w.r.t. x gives A c; differentiate <A v, d> in v.
    let v = Var::from_tensor(&rng.randn((20, 3), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let d = rng.randn((20, 3), DType::F64, &Device::Cpu).unwrap();
    let op = a.spmm.clone().unwrap().transposed();
    let gv = (op.forward(v.as_tensor()).unwrap() * &d).unwrap().sum_all().unwrap().backward().unwrap().get(v.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
    let want = aggregate_indexed(&d, &a).unwrap().to_vec2::<f64>().unwrap();
    for i in 0..20 {
        for j in 0..3 {
            assert!((gv[i][j] - want[i][j]).abs() < 1e-12);
        }
    }
}

fn cfg() -> DeqConfig {
    DeqConfig { norm_type: deq_core::NormType::None, f_solver: "fixed_point_iter".into(), f_max_iter: 500, f_tol: 1e-12, b_solver: "fixed_point_iter".into(), b_max_iter: 500, b_tol: 1e-12, ift: true, ..Default::default() }
}

#[test]
fn projection_bounds_w_and_the_fixed_point_is_unique() {
    let g = random_graph(25, 100, 3).symmetrized().aug_normalized();
    let lam = g.lambda_pf(10_000);
    let a = g.tensors(DType::F64, &Device::Cpu).unwrap();
    let mut rng = DeqRng::new(4);
    let layer = ImplicitGraph::new(4, 6, true, 0.9, cfg(), &mut rng, DType::F64, &Device::Cpu).unwrap();
    // Blow W up; the forward pass must project it back.
    layer.w().set(&(layer.w().as_tensor() * 50.0).unwrap()).unwrap();
    let u = rng.randn((25, 4), DType::F64, &Device::Cpu).unwrap();
    let (x, stats, _) = layer.forward(&u, &a, lam, false).unwrap();
    let w = layer.w().as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!(inf_norm(&w, 6) <= 0.9 / lam + 1e-9, "||W||_inf = {} > {}", inf_norm(&w, 6), 0.9 / lam);
    assert!(stats.max_lowest() < 1e-10, "solver residual {}", stats.max_lowest());
    // Iterating f from a different start reaches the same point (contraction).
    let b = layer.injection(&u, &a).unwrap();
    let w = layer.prepare(lam).unwrap();
    let mut z = rng.randn((25, 6), DType::F64, &Device::Cpu).unwrap().affine(10.0, 0.0).unwrap();
    for _ in 0..600 {
        z = layer.f(&w, &z, &b, &a).unwrap();
    }
    let diff = (z - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(diff < 1e-9, "two starts reach different points: {diff}");
}

#[test]
fn implicit_gradient_matches_finite_differences() {
    let g = random_graph(12, 40, 5).aug_normalized(); // directed: checks A vs A^T in the gradient
    let lam = g.lambda_pf(10_000) + 1e-5;
    let a = g.tensors(DType::F64, &Device::Cpu).unwrap();
    let mut rng = DeqRng::new(6);
    let layer = ImplicitGraph::new(3, 4, true, 0.8, cfg(), &mut rng, DType::F64, &Device::Cpu).unwrap();
    layer.prepare(lam).unwrap();
    let u = rng.randn((12, 3), DType::F64, &Device::Cpu).unwrap();
    let c = rng.randn((12, 4), DType::F64, &Device::Cpu).unwrap();
    let loss_of = |layer: &ImplicitGraph| -> Tensor {
        let (x, _, _) = layer.forward(&u, &a, lam, true).unwrap();
        (x * &c).unwrap().sum_all().unwrap()
    };
    let mut vars = Vec::new();
    layer.vars("l", &mut vars);
    // No projection during the perturbation (lambda 0): W stays inside the ball (kappa 0.8).
    check_against_fd(&vars, &|| loss_of(&layer), &|| {
        let (x, _, _) = layer.forward(&u, &a, 0.0, false).unwrap();
        (x * &c).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    }, 1e-5);
    let _ = Var::new(&[0f64], &Device::Cpu);
}

/// Checks the pruned-backward gradient of `loss()` w.r.t. every variable against central
/// differences of `value()` at three entries per variable.
fn check_against_fd(vars: &[(String, Var)], loss: &dyn Fn() -> Tensor, value: &dyn Fn() -> f64, tol: f64) {
    let grads = deq_core::grad::backward(&loss()).unwrap();
    for (name, v) in vars {
        let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")).flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for k in [0, base.len() / 2, base.len() - 1] {
            let at = |s: f64| {
                let mut p = base.clone();
                p[k] += s;
                v.set(&Tensor::from_vec(p, v.as_tensor().shape(), &Device::Cpu).unwrap()).unwrap();
                value()
            };
            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
            v.set(&Tensor::from_vec(base.clone(), v.as_tensor().shape(), &Device::Cpu).unwrap()).unwrap();
            let err = (g[k] - fd).abs() / fd.abs().max(1e-6);
            assert!(err < tol, "{name}[{k}]: analytic {} vs FD {fd} (rel {err:.1e})", g[k]);
        }
    }
}

#[test]
fn spectral_norm_layer_gradient_matches_finite_differences() {
    // The zoo's PPI layer: spectral norm with clipping on W, Omega_1, Omega_2, raw adjacency.
    // Raw symmetric adjacency scaled to spectral radius 0.5: with sigma(W) = g = 1 the map is
    // a contraction without the projection (kappa 0), so finite differences are exact.
    let mut g = random_graph(10, 30, 7).symmetrized();
    let lam = g.lambda_pf(10_000);
    g.weight.iter_mut().for_each(|w| *w *= (0.5 / lam) as f32);
    let a = g.tensors(DType::F64, &Device::Cpu).unwrap();
    let mut rng = DeqRng::new(8);
    // Clip value above the factor g / sigma(v), away from the clamp's kink.
    let deq = DeqConfig { norm_type: deq_core::NormType::SpectralNorm, norm_clip: true, norm_clip_value: 50.0, sn_n_power_iters: 50, ..cfg() };
    let layer = ImplicitGraph::new(3, 4, true, 0.0, deq, &mut rng, DType::F64, &Device::Cpu).unwrap();
    let u = rng.randn((10, 3), DType::F64, &Device::Cpu).unwrap();
    let c = rng.randn((10, 4), DType::F64, &Device::Cpu).unwrap();
    let mut vars = Vec::new();
    layer.vars("l", &mut vars);
    assert!(vars.iter().any(|(n, _)| n == "l.w.weight_v") && vars.iter().any(|(n, _)| n == "l.omega2.weight_g"), "{:?}", vars.iter().map(|v| &v.0).collect::<Vec<_>>());
    let loss = || {
        let (x, _, _) = layer.forward(&u, &a, 0.0, true).unwrap();
        (x * &c).unwrap().sum_all().unwrap()
    };
    let value = || {
        let (x, _, _) = layer.forward(&u, &a, 0.0, false).unwrap();
        (x * &c).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    check_against_fd(&vars, &loss, &value, 1e-4);
}

#[test]
fn straight_through_projection_keeps_the_bound_on_the_normalised_weight() {
    let g = random_graph(20, 80, 9).symmetrized();
    let lam = g.lambda_pf(10_000) + 1e-5;
    let mut rng = DeqRng::new(10);
    let deq = DeqConfig { norm_type: deq_core::NormType::SpectralNorm, norm_clip: true, norm_clip_value: 5.0, norm_target_norm: 5.0, ..cfg() };
    let layer = ImplicitGraph::new(3, 8, true, 0.98, deq, &mut rng, DType::F64, &Device::Cpu).unwrap();
    let w = layer.prepare(lam).unwrap();
    let wn = layer.w_normalized().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!(inf_norm(&wn, 8) > 0.98 / lam, "the test needs a normalised W outside the ball");
    let wp = w.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!(inf_norm(&wp, 8) <= 0.98 / lam + 1e-9);
    // Gradient passes straight through: d sum(P(W) * M) / dW_normalised = M.
    let m = rng.randn((8, 8), DType::F64, &Device::Cpu).unwrap();
    let loss = (w * &m).unwrap().sum_all().unwrap();
    let grads = deq_core::grad::backward(&loss).unwrap();
    // So every parameter's gradient is that of sum(W_normalised * M), the projection skipped.
    let unprojected = deq_core::grad::backward(&(layer.w_normalized() * &m).unwrap().sum_all().unwrap()).unwrap();
    let mut vars = Vec::new();
    layer.vars("l", &mut vars);
    let mut compared = 0;
    for (name, v) in &vars {
        let Some(want) = unprojected.get(v.as_tensor()) else { continue };
        let got = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name} gets no gradient"));
        let (got, want) = (got.flatten_all().unwrap().to_vec1::<f64>().unwrap(), want.flatten_all().unwrap().to_vec1::<f64>().unwrap());
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-12 * (1.0 + b.abs())), "{name}: {got:?} against {want:?}");
        compared += 1;
    }
    assert!(compared >= 1, "W has parameters");
}

#[test]
fn stacked_model_gradient_matches_finite_differences() {
    let g = random_graph(9, 30, 11).symmetrized().aug_normalized();
    let lam = g.lambda_pf(10_000) + 1e-5;
    let a = g.tensors(DType::F64, &Device::Cpu).unwrap();
    let mut rng = DeqRng::new(12);
    let model = ignn::model::NodeModel::stacked(3, 1, 2, 0.8, true, cfg(), &mut rng, DType::F64, &Device::Cpu).unwrap();
    let u = rng.randn((9, 3), DType::F64, &Device::Cpu).unwrap();
    let t = Tensor::new(&[[1f64, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]], &Device::Cpu).unwrap();
    let _ = model.forward(&u, &a, lam, None).unwrap(); // projects every W into its ball
    let vars = model.named_vars();
    assert_eq!(vars.len(), 5 * 5);
    let loss = || deq_train::bce_with_logits(&model.forward(&u, &a, lam, Some(&mut DeqRng::new(0))).unwrap().0, &t).unwrap();
    let value = || deq_train::bce_with_logits(&model.forward(&u, &a, 0.0, None).unwrap().0, &t).unwrap().to_scalar::<f64>().unwrap();
    check_against_fd(&vars, &loss, &value, 1e-5);
}

#[test]
fn graph_classifier_gradient_matches_finite_differences() {
    let gs = [random_graph(5, 12, 13).symmetrized(), random_graph(4, 8, 14).symmetrized(), random_graph(6, 14, 15).symmetrized()];
    let (union, owner) = Graph::disjoint_union(&gs.iter().collect::<Vec<_>>());
    let norm = union.aug_normalized();
    let lam = norm.lambda_pf(10_000) + 1e-5;
    let a = norm.tensors(DType::F64, &Device::Cpu).unwrap();
    let mut rng = DeqRng::new(16);
    // Dropout 0 so training and evaluation forwards are the same function.
    let model = ignn::graph_model::GraphClassifier::new(3, 4, 2, 2, 0.8, 0.0, true, cfg(), &mut rng, DType::F64, &Device::Cpu).unwrap();
    let u = rng.randn((union.n, 3), DType::F64, &Device::Cpu).unwrap();
    let owner = Tensor::from_vec(owner, union.n, &Device::Cpu).unwrap();
    let y = Tensor::new(&[1u32, 0, 1], &Device::Cpu).unwrap();
    let _ = model.forward(&u, &a, lam, &owner, 3, None).unwrap();
    let vars = model.named_vars();
    let loss = || candle_nn::loss::cross_entropy(&model.forward(&u, &a, lam, &owner, 3, Some(&mut DeqRng::new(0))).unwrap().0, &y).unwrap();
    let value = || candle_nn::loss::cross_entropy(&model.forward(&u, &a, 0.0, &owner, 3, None).unwrap().0, &y).unwrap().to_scalar::<f64>().unwrap();
    check_against_fd(&vars, &loss, &value, 1e-5);
}

/// The compressed-row kernel on a graph large enough for several parallel row chunks (5,000
/// nodes, 25,000 entries, 16 features: ~8 tasks), forward and backward, in f32 and f64, against
/// a plain loop over the entries in f64.
#[test]
fn spmm_parallel_chunks_match_a_reference_product_forward_and_backward() {
    use ignn::spmm::{Csr, SpMM};
    use std::sync::Arc;
    let (n, e, m) = (5000usize, 25_000usize, 16usize);
    let mut rng = DeqRng::new(11);
    let rows: Vec<u32> = (0..e).map(|_| (rng.next_u64() % n as u64) as u32).collect();
    let cols: Vec<u32> = (0..e).map(|_| (rng.next_u64() % n as u64) as u32).collect();
    let vals: Vec<f32> = (0..e).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
    let op = SpMM::new(Arc::new(Csr::from_triplets(n, n, &rows, &cols, &vals)), Arc::new(Csr::from_triplets(n, n, &cols, &rows, &vals)));
    let dev = Device::Cpu;
    let x = rng.randn((n, m), DType::F64, &dev).unwrap().to_dtype(DType::F32).unwrap();
    let c = rng.randn((n, m), DType::F64, &dev).unwrap().to_dtype(DType::F32).unwrap();
    let (xv, cv) = (x.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap(), c.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap());
    // Reference: out = M x, and the gradient of sum(out * c) with respect to x is M^T c.
    let (mut want_y, mut want_g) = (vec![0f64; n * m], vec![0f64; n * m]);
    for k in 0..e {
        let (r, col, w) = (rows[k] as usize, cols[k] as usize, vals[k] as f64);
        for j in 0..m {
            want_y[r * m + j] += w * xv[col * m + j];
            want_g[col * m + j] += w * cv[r * m + j];
        }
    }
    for (dt, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let xv = Var::from_tensor(&x.to_dtype(dt).unwrap()).unwrap();
        let y = op.forward(xv.as_tensor()).unwrap();
        let g = (&y * c.to_dtype(dt).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let got_y = y.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let got_g = g.get(xv.as_tensor()).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let worst = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0, f64::max);
        assert!(worst(&got_y, &want_y) < tol, "{dt:?} forward: {}", worst(&got_y, &want_y));
        assert!(worst(&got_g, &want_g) < tol, "{dt:?} backward: {}", worst(&got_g, &want_g));
    }
}
