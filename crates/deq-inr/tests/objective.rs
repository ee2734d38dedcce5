//! The `[deq]` options that act on the training loss, in the INR fit: fixed-point correction
//! over the supervised states and the Jacobian regulariser change the loss and its gradient as
//! they should; where they could not act (full-batch amortised steps, SIREN) they are refused.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use deq_inr::fit::{fit, training_loss, FitConfig, FitOptions};
use deq_inr::image_io::Image;
use deq_inr::model::{zoo_deq, DeqInr, InrModelConfig};
use deq_inr::net::InrNet;
use deq_inr::task::image_representation;

const DEV: Device = Device::Cpu;

fn net(deq: DeqConfig, dtype: DType) -> InrNet {
    let cfg = InrModelConfig { width: 8, input_scale: 4.0, ..Default::default() };
    InrNet::Deq(DeqInr::new(cfg, 2, 1, deq, &mut DeqRng::new(4), dtype, &DEV).unwrap())
}

fn data() -> (Tensor, Tensor) {
    let mut rng = DeqRng::new(9);
    (rng.rand((20, 2), -1.0, 1.0, DType::F64, &DEV).unwrap(), rng.rand((20, 1), -1.0, 1.0, DType::F64, &DEV).unwrap())
}

fn mse(p: &Tensor, y: &Tensor) -> Tensor {
    (p - y).unwrap().sqr().unwrap().mean_all().unwrap()
}

fn v(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

fn grads_of(vars: &[(String, Var)], g: &GradStore) -> Vec<(String, Vec<f64>)> {
    vars.iter().map(|(n, var)| (n.clone(), g.get(var.as_tensor()).map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap()).unwrap_or_else(|| vec![0.0; var.as_tensor().elem_count()]))).collect()
}

fn assert_close(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)]) {
    for ((name, x), (_, y)) in a.iter().zip(b) {
        assert!(x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs())), "{name}: {x:?} against {y:?}");
    }
}

#[test]
fn fixed_point_correction_on_minibatch_steps() {
    let deq = DeqConfig { n_states: 3, gamma: 0.6, ..zoo_deq(12) };
    let net = net(deq.clone(), DType::F64);
    let objective = net.objective(0, false).unwrap().unwrap();
    let (x, y) = data();
    let fw = net.train_forward(&x, None).unwrap();
    assert_eq!(fw.state_preds.len(), 3);
    let (loss, task) = training_loss(&net, Some(&objective), &fw, &y, 0).unwrap();
    let l: Vec<Tensor> = fw.state_preds.iter().map(|p| mse(p, &y)).collect();
    assert!((v(&l[0]) - v(&l[2])).abs() > 1e-9, "the states differ");
    assert_eq!(task, v(&l[2]));
    let by_hand = ((l[0].affine(0.36, 0.0).unwrap() + l[1].affine(0.6, 0.0).unwrap()).unwrap() + &l[2]).unwrap();
    assert!((v(&loss) - v(&by_hand)).abs() < 1e-13, "{} against {}", v(&loss), v(&by_hand));
    let vars = net.named_vars();
    assert_close(&grads_of(&vars, &deq_core::grad::backward(&loss).unwrap()), &grads_of(&vars, &deq_core::grad::backward(&by_hand).unwrap()));
    // Full-batch (amortised) training cannot supervise states: refused by name, in fit too.
    let e = net.objective(0, true).unwrap_err().to_string();
    assert!(e.contains("deq.n_states") && e.contains("batch_size"), "{e}");
    let image = Image { height: 6, width: 6, channels: 1, data: (0..36).map(|i| (i as f32 * 0.3).sin()).collect() };
    let (tr, te) = image_representation(&image, 0);
    let f32_net = net_f32(deq);
    let e = fit(&f32_net, &tr, &te, &FitConfig { steps: 1, ..Default::default() }, &FitOptions::default()).unwrap_err().to_string();
    assert!(e.contains("deq.n_states"), "{e}");
    assert!(fit(&f32_net, &tr, &te, &FitConfig { steps: 1, batch_size: 10, eval_every: 1, ..Default::default() }, &FitOptions::default()).is_ok());
}

fn net_f32(deq: DeqConfig) -> InrNet {
    net(deq, DType::F32)
}

#[test]
fn jacobian_regulariser_in_every_training_mode() {
    let deq = DeqConfig { jac_loss_weight: 0.25, jac_loss_freq: 1.0, ..zoo_deq(12) };
    let net = net(deq, DType::F64);
    let (x, y) = data();
    let vars = net.named_vars();
    for full in [false, true] {
        let objective = net.objective(0, full).unwrap().unwrap();
        let mut cache = deq_inr::net::AmortisedCache::default();
        // Full batch: the second step is the amortised one (from the cached state).
        for step in 0..if full { 2 } else { 1 } {
            let fw = net.train_forward(&x, if full { Some(&mut cache) } else { None }).unwrap();
            let (loss, task) = training_loss(&net, Some(&objective), &fw, &y, step).unwrap();
            let jac = net.jacobian(&objective, step, &fw).unwrap().expect("frequency 1");
            assert!(jac.value > 0.0 && jac.weight == 0.25);
            assert!((v(&loss) - task - 0.25 * jac.value).abs() < 1e-13, "full {full} step {step}");
            // The gradient gains the regulariser's: f's parameters move, the readout does not.
            let g_total = grads_of(&vars, &deq_core::grad::backward(&loss).unwrap());
            let g_task = grads_of(&vars, &deq_core::grad::backward(&mse(&fw.pred, &y)).unwrap());
            let g_jac = grads_of(&vars, &deq_core::grad::backward(&jac.term).unwrap());
            let sum: Vec<(String, Vec<f64>)> = g_task.iter().zip(&g_jac).map(|((n, a), (_, b))| (n.clone(), a.iter().zip(b).map(|(p, q)| p + q).collect())).collect();
            assert_close(&g_total, &sum);
            for (name, g) in &g_jac {
                let moved = g.iter().any(|x| x.abs() > 1e-10);
                assert_eq!(moved, !name.starts_with("output."), "{name}: {g:?}");
            }
        }
    }
}
