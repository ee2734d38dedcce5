//! The `[deq]` options that act on the training loss, in the IGNN trainers: fixed-point
//! correction over the last implicit layer's supervised states and every implicit layer's
//! Jacobian regulariser change the loss and its gradient as they should; the GCN baseline,
//! which is not a DEQ, refuses them by name.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use deq_train::DeqObjective;
use ignn::graph::Graph;
use ignn::graph_model::GraphClassifier;
use ignn::model::NodeModel;
use ignn::train::{objective_loss, train_nodes, Labels, NodeTask, NodeTrainConfig, RunOptions};

const DEV: Device = Device::Cpu;

fn graph(n: usize, seed: u64) -> Graph {
    let mut rng = DeqRng::new(seed);
    let edges: Vec<(u32, u32)> = (0..3 * n).map(|_| ((rng.next_u64() % n as u64) as u32, (rng.next_u64() % n as u64) as u32)).collect();
    Graph::from_edges(n, &edges).unwrap().symmetrized().aug_normalized()
}

fn deq(extra: DeqConfig) -> DeqConfig {
    DeqConfig { norm_type: deq_core::NormType::None, f_solver: "fixed_point_iter".into(), f_max_iter: 8, f_tol: 0.0, ift: false, grad: vec![2], ..extra }
}

fn ce(l: &Tensor, y: &Tensor) -> Tensor {
    candle_nn::loss::cross_entropy(l, y).unwrap()
}

fn v(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

fn grads(vars: &[(String, Var)], g: &GradStore) -> Vec<(String, Vec<f64>)> {
    vars.iter().map(|(n, x)| (n.clone(), g.get(x.as_tensor()).map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap()).unwrap_or_else(|| vec![0.0; x.as_tensor().elem_count()]))).collect()
}

fn assert_close(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)]) {
    for ((name, x), (_, y)) in a.iter().zip(b) {
        assert!(x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs())), "{name}: {x:?} against {y:?}");
    }
}

#[test]
fn node_model_fixed_point_correction() {
    let g = graph(12, 1);
    let lam = g.lambda_pf(10_000) + 1e-5;
    let a = g.tensors(DType::F64, &DEV).unwrap();
    let cfg = deq(DeqConfig { n_states: 2, gamma: 0.5, ..Default::default() });
    let objective = DeqObjective::new(&cfg, 0).unwrap();
    let mut rng = DeqRng::new(2);
    let model = NodeModel::ignn(3, 5, 2, 0.9, 0.0, true, cfg, &mut rng, DType::F64, &DEV).unwrap();
    let u = rng.randn((12, 3), DType::F64, &DEV).unwrap();
    let y = Tensor::from_vec((0..12u32).map(|i| i % 2).collect::<Vec<_>>(), 12, &DEV).unwrap();
    let (logits, solves) = model.forward_train(&u, &a, lam, &mut rng, &objective, 0).unwrap();
    assert_eq!(logits.len(), 2);
    let l: Vec<Tensor> = logits.iter().map(|x| ce(x, &y)).collect();
    assert!((v(&l[0]) - v(&l[1])).abs() > 1e-9, "the states differ");
    let (loss, task) = objective_loss(&objective, &l, &solves).unwrap();
    assert_eq!(task, v(&l[1]));
    let by_hand = (l[0].affine(0.5, 0.0).unwrap() + &l[1]).unwrap();
    assert!((v(&loss) - v(&by_hand)).abs() < 1e-13);
    let vars = model.named_vars();
    assert_close(&grads(&vars, &deq_core::grad::backward(&loss).unwrap()), &grads(&vars, &deq_core::grad::backward(&by_hand).unwrap()));
    let first = grads(&vars, &deq_core::grad::backward(&l[0]).unwrap());
    assert!(first.iter().any(|(_, g)| g.iter().any(|x| x.abs() > 1e-8)), "the earlier state has a gradient of its own");
}

#[test]
fn every_implicit_layer_is_regularised() {
    let g = graph(10, 3);
    let lam = g.lambda_pf(10_000) + 1e-5;
    let a = g.tensors(DType::F64, &DEV).unwrap();
    let cfg = deq(DeqConfig { jac_loss_weight: 0.3, jac_loss_freq: 1.0, ..Default::default() });
    let objective = DeqObjective::new(&cfg, 4).unwrap();
    let mut rng = DeqRng::new(5);
    // The zoo's 5-layer PPI model (p -> 4h -> 2h -> 2h -> h -> classes) and a 2-layer graph classifier.
    let stacked = NodeModel::stacked(3, 2, 2, 0.9, true, cfg.clone(), &mut rng, DType::F64, &DEV).unwrap();
    let u = rng.randn((10, 3), DType::F64, &DEV).unwrap();
    let (logits, solves) = stacked.forward_train(&u, &a, lam, &mut rng, &objective, 7).unwrap();
    assert_eq!((logits.len(), solves.jac.len()), (1, 5), "one term per implicit layer");
    let y = Tensor::from_vec((0..10u32).map(|i| i % 2).collect::<Vec<_>>(), 10, &DEV).unwrap();
    let task = ce(&logits[0], &y);
    let (loss, _) = objective_loss(&objective, std::slice::from_ref(&task), &solves).unwrap();
    let reg: f64 = solves.jac.iter().map(|j| j.weight * j.value).sum();
    assert!(solves.jac.iter().all(|j| j.value > 0.0 && j.weight == 0.3));
    assert!((v(&loss) - v(&task) - reg).abs() < 1e-13);
    let vars = stacked.named_vars();
    let g_jac = grads(&vars, &deq_core::grad::backward(&solves.jac_term().unwrap().unwrap()).unwrap());
    for (name, gr) in &g_jac {
        // Every layer's W moves; the last skip map acts after the last implicit layer only.
        let moved = gr.iter().any(|x| x.abs() > 1e-10);
        if name.starts_with("ignn.") && name.ends_with(".w") {
            assert!(moved, "{name}");
        }
        if name.starts_with("proj.4.") {
            assert!(!moved, "{name}");
        }
    }
    assert_eq!(g_jac.iter().filter(|(n, _)| n.starts_with("ignn.") && n.ends_with(".w")).count(), 5);
    let gc = GraphClassifier::new(3, 4, 2, 2, 0.9, 0.0, true, cfg, &mut rng, DType::F64, &DEV).unwrap();
    let graph_of = Tensor::from_vec((0..10u32).map(|i| i / 5).collect::<Vec<_>>(), 10, &DEV).unwrap();
    let (gl, gs) = gc.forward_train(&u, &a, lam, &graph_of, 2, &mut rng, &objective, 0).unwrap();
    assert_eq!((gl.len(), gs.jac.len()), (1, 2));
}

#[test]
fn the_gcn_baseline_refuses_deq_loss_options() {
    let g = graph(8, 6);
    let task = NodeTask {
        graph: g,
        features: (0..8 * 3).map(|i| (i as f32 * 0.37).sin()).collect(),
        feature_dim: 3,
        labels: Labels::Single((0..8).map(|i| i % 2).collect()),
        classes: 2,
        split: ((0..4).collect(), (4..6).collect(), (6..8).collect()),
    };
    let cfg = NodeTrainConfig { model: "gcn".into(), hidden: 4, epochs: 1, ..Default::default() };
    let with = DeqConfig { n_states: 2, ..Default::default() };
    let e = train_nodes(&task, &cfg, &with, &RunOptions::default(), |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("deq.n_states") && e.contains("gcn"), "{e}");
    assert!(train_nodes(&task, &cfg, &DeqConfig::default(), &RunOptions::default(), |_, _, _| {}).is_ok());
    // The implicit model takes them.
    let ignn = NodeTrainConfig { model: "ignn".into(), ..cfg };
    assert!(train_nodes(&task, &ignn, &DeqConfig { n_states: 2, jac_loss_weight: 0.1, jac_loss_freq: 1.0, ..Default::default() }, &RunOptions::default(), |_, _, _| {}).is_ok());
}
