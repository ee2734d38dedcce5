//! IGNN invariants: the projection bound, a unique fixed point, sparse = dense aggregation,
//! and the implicit gradient against finite differences (f64).

use candle_core::{DType, Device, Tensor, Var};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use ignn::projection::inf_norm;
use ignn::{aggregate, Graph, ImplicitGraph};

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
    let got = aggregate(&x, &a).unwrap().to_vec2::<f64>().unwrap();
    let ad = dense(&g);
    let xv = x.to_vec2::<f64>().unwrap();
    for j in 0..30 {
        for c in 0..5 {
            let want: f64 = (0..30).map(|i| ad[i * 30 + j] * xv[i][c]).sum();
            assert!((got[j][c] - want).abs() < 1e-9, "({j},{c}): {} vs {want}", got[j][c]);
        }
    }
}

fn cfg() -> DeqConfig {
    DeqConfig { f_solver: "fixed_point_iter".into(), f_max_iter: 500, f_tol: 1e-12, b_solver: "fixed_point_iter".into(), b_max_iter: 500, b_tol: 1e-12, ift: true, ..Default::default() }
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
    let (x, stats) = layer.forward(&u, &a, lam, false).unwrap();
    let w = layer.w().as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!(inf_norm(&w, 6) <= 0.9 / lam + 1e-9, "||W||_inf = {} > {}", inf_norm(&w, 6), 0.9 / lam);
    assert!(stats.max_lowest() < 1e-10, "solver residual {}", stats.max_lowest());
    // Iterating f from a different start reaches the same point (contraction).
    let b = layer.injection(&u, &a).unwrap();
    let mut z = rng.randn((25, 6), DType::F64, &Device::Cpu).unwrap().affine(10.0, 0.0).unwrap();
    for _ in 0..600 {
        z = layer.f(&z, &b, &a).unwrap();
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
    layer.project(lam).unwrap();
    let u = rng.randn((12, 3), DType::F64, &Device::Cpu).unwrap();
    let c = rng.randn((12, 4), DType::F64, &Device::Cpu).unwrap();
    let loss_of = |layer: &ImplicitGraph| -> Tensor {
        let (x, _) = layer.forward(&u, &a, lam, true).unwrap();
        (x * &c).unwrap().sum_all().unwrap()
    };
    let grads = deq_core::grad::backward(&loss_of(&layer)).unwrap();
    let mut vars = Vec::new();
    layer.vars("l", &mut vars);
    for (name, v) in vars {
        let g_ift = grads.get(v.as_tensor()).expect("gradient").flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for k in [0, base.len() / 2, base.len() - 1] {
            let at = |s: f64| {
                let mut p = base.clone();
                p[k] += s;
                v.set(&Tensor::from_vec(p, v.as_tensor().shape(), &Device::Cpu).unwrap()).unwrap();
                // No projection during the perturbation: W stays inside the ball (kappa 0.8 < 0.9 margin).
                let (x, _) = layer.forward(&u, &a, 0.0, false).unwrap();
                (x * &c).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
            };
            let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
            v.set(&Tensor::from_vec(base.clone(), v.as_tensor().shape(), &Device::Cpu).unwrap()).unwrap();
            let err = (g_ift[k] - fd).abs() / fd.abs().max(1e-8);
            assert!(err < 1e-5, "{name}[{k}]: IFT {} vs FD {fd} (rel {err:.1e})", g_ift[k]);
        }
    }
    let _ = Var::new(&[0f64], &Device::Cpu);
}
