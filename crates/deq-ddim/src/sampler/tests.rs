use super::sequential::{ddim, ddim_encode, ddim_trajectory, ddpm};
use super::trajectory::{deq, DeqInit, DeqSampleConfig, TrajectoryMap};
use super::*;
use crate::schedule::{timesteps, DiffusionConfig, SkipType};
use crate::unet::{UNet, UNetConfig};
use candle_core::{DType, Device, IndexOp, Tensor, Var};
use deq_core::gradcheck::{assert_gradient, central_differences, max_abs_diff};
use deq_core::solver::StopMode;

pub(crate) fn small_unet(dtype: DType) -> UNet {
    let cfg = UNetConfig { in_channels: 1, out_ch: 1, ch: 32, ch_mult: vec![1, 2], num_res_blocks: 1, attn_resolutions: vec![4], dropout: 0.0, resolution: 8, resamp_with_conv: true, norm_groups: 32 };
    UNet::new(&cfg, &mut DeqRng::new(11), dtype, &Device::Cpu).unwrap()
}

fn setup(steps: usize, skip: SkipType) -> Steps {
    let sch = DiffusionConfig::default().schedule().unwrap();
    Steps::new(&sch, &timesteps(1000, steps, skip).unwrap())
}

#[test]
fn steps_run_from_the_largest_timestep_to_minus_one() {
    let s = setup(10, SkipType::Uniform);
    let sch = DiffusionConfig::default().schedule().unwrap();
    assert_eq!(s.t, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]);
    assert_eq!(s.a_t[0], sch.alpha_bar(900));
    assert_eq!(s.a_next[0], sch.alpha_bar(800));
    assert_eq!(s.a_next[9], 1.0);
    assert_eq!(s.sigma(9, 1.0), 0.0);
    let (at, an) = (sch.alpha_bar(900), sch.alpha_bar(800));
    assert!((s.sigma(0, 0.5) - 0.5 * ((1.0 - at / an) * (1.0 - an) / (1.0 - at)).sqrt()).abs() < 1e-15);
}

#[test]
fn the_sequential_trajectory_is_the_fixed_point_of_the_map() {
    let m = small_unet(DType::F64);
    let steps = setup(6, SkipType::Quad);
    let mut rng = DeqRng::new(2);
    let x_t = rng.randn((2, 1, 8, 8), DType::F64, &Device::Cpu).unwrap();
    for eta in [0.0, 0.7] {
        let noise = StepNoise::draw(&mut rng, steps.len(), (2, 1, 8, 8), DType::F64, &Device::Cpu).unwrap();
        let (traj, _) = ddim_trajectory(&m, &steps, &x_t, eta, Some(&noise)).unwrap();
        let (x0, _) = ddim(&m, &steps, &x_t, eta, Some(&noise)).unwrap();
        let map = TrajectoryMap::new(&m, &steps, &x_t, eta, Some(&noise)).unwrap();
        let z = map.state_of(&traj).unwrap();
        let fz = map.apply(&z).unwrap();
        assert!(max_abs_diff(&fz, &z).unwrap() < 1e-10, "eta {eta}");
        assert!(max_abs_diff(&map.images(&z).unwrap(), &x0).unwrap() < 1e-12);
        // Away from the fixed point the map is not the identity.
        let off = map.apply(&map.initial_state().unwrap()).unwrap();
        assert!(max_abs_diff(&off, &z).unwrap() > 1e-2);
        // T plain iterations from any start reach it exactly (the map is lower triangular).
        let cfg = DeqSampleConfig { solver: "simple_fixed_point_iter".into(), max_iter: steps.len(), tol: 1e-300, stop_mode: StopMode::Abs, ..Default::default() };
        let s = deq(&m, &steps, &x_t, eta, Some(&noise), &cfg, None).unwrap();
        assert!(max_abs_diff(&s.images, &x0).unwrap() < 1e-10, "eta {eta}");
    }
}

#[test]
fn the_f32_map_is_the_f64_map_rounded_once() {
    // From t = 980 the cumulative sum and the x_T term are ~140 times larger than the states
    // they cancel to: the map adds them in f64 and rounds its output once, so the f32 map's
    // output is the f64 map's (same noise predictions) to half an f32 ulp, element by element.
    let steps = setup(50, SkipType::Uniform);
    let mut rng = DeqRng::new(5);
    let x_t = rng.randn((2, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let m = small_unet(DType::F32);
    let map = TrajectoryMap::new(&m, &steps, &x_t, 0.0, None).unwrap();
    let map64 = TrajectoryMap::new(&m, &steps, &x_t.to_dtype(DType::F64).unwrap(), 0.0, None).unwrap();
    // Noise predictions of the model's size (unit variance), so the states stay near 1.
    let e = rng.randn((2, 50, 64), DType::F32, &Device::Cpu).unwrap();
    let o32 = map.outputs(&e).unwrap().flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let o64 = map64.outputs(&e.to_dtype(DType::F64).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let worst = o32.iter().zip(&o64).map(|(a, b)| (a - b).abs() / b.abs().max(1e-30)).fold(0.0, f64::max);
    assert!(worst <= f32::EPSILON as f64 / 2.0, "largest relative difference {worst:e}");
    assert!(o64.iter().all(|v| v.is_finite()) && o64.iter().any(|v| v.abs() > 0.1));
}

#[test]
fn anderson_reaches_the_sequential_images_in_fewer_rounds() {
    let m = small_unet(DType::F32);
    let steps = setup(20, SkipType::Uniform);
    let mut rng = DeqRng::new(3);
    let x_t = rng.randn((3, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let (x0, seq) = ddim(&m, &steps, &x_t, 0.0, None).unwrap();
    let cfg = DeqSampleConfig { tol: 1e-5, max_iter: 19, max_batch: 16, ..Default::default() };
    let s = deq(&m, &steps, &x_t, 0.0, None, &cfg, None).unwrap();
    let d = max_abs_diff(&s.images, &x0).unwrap();
    assert!(d < 1e-3, "max |DEQ - DDIM| = {d}");
    assert!(s.stats.rounds < seq.rounds, "{} rounds", s.stats.rounds);
    assert_eq!(s.stats.model_evals, s.stats.rounds * 3 * 20);
    assert_eq!(s.stats.residual_trace.len(), s.stats.rounds);
    // A warm start at the answer converges at once.
    let w = deq(&m, &steps, &x_t, 0.0, None, &cfg, Some(&s.trajectory)).unwrap();
    assert!(w.stats.rounds <= 2, "{}", w.stats.rounds);
}

#[test]
fn keep_prefix_takes_the_plain_update_up_to_the_first_unconverged_step() {
    let m = small_unet(DType::F64);
    let steps = setup(10, SkipType::Uniform);
    let n = steps.len();
    let mut rng = DeqRng::new(21);
    let x_t = rng.randn((2, 1, 8, 8), DType::F64, &Device::Cpu).unwrap();
    let (traj, _) = ddim_trajectory(&m, &steps, &x_t, 0.0, None).unwrap();
    let map = TrajectoryMap::new(&m, &steps, &x_t, 0.0, None).unwrap();
    // Image 0: steps 0..3 exact but step 2 off by 1e-4 of itself, steps 3.. random.
    // Image 1: every step random (only step 0, which depends on x_T alone, can be trusted).
    let per_step = |f: &dyn Fn(usize, usize) -> f64| {
        let v: Vec<f64> = (0..2 * n).map(|i| f(i / n, i % n)).collect();
        Tensor::from_vec(v, (2, n, 1, 1, 1), &Device::Cpu).unwrap()
    };
    let keep = per_step(&|b, k| if b == 0 && k < 3 { 1.0 } else { 0.0 });
    let garbage = rng.randn(traj.shape(), DType::F64, &Device::Cpu).unwrap();
    let z = (traj.broadcast_mul(&keep).unwrap() + garbage.broadcast_mul(&keep.affine(-1.0, 1.0).unwrap()).unwrap()).unwrap();
    let z = z.broadcast_mul(&per_step(&|b, k| if b == 0 && k == 2 { 1.0 + 1e-4 } else { 1.0 })).unwrap();
    let z = map.state_of(&z).unwrap();
    let fz = map.apply(&z).unwrap();
    let proposal = map.state_of(&rng.randn(traj.shape(), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let (fzt, pt) = (map.trajectory(&fz).unwrap(), map.trajectory(&proposal).unwrap());
    // Step 2's residual is 1e-4 relative and larger in absolute terms: a tolerance between the
    // two stops the prefix there in abs mode and lets it run on to the random step 3 in rel mode.
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f64>().unwrap();
    let abs = norm(&(&fzt - map.trajectory(&z).unwrap()).unwrap().i((0, 2)).unwrap());
    let rel = abs / norm(&fzt.i((0, 2)).unwrap());
    assert!(abs > 4.0 * rel, "abs {abs}, rel {rel}");
    for (mode, last_plain) in [(StopMode::Abs, 2), (StopMode::Rel, 3)] {
        let out = map.trajectory(&map.keep_prefix(&proposal, &z, &fz, 2.0 * rel, mode).unwrap()).unwrap();
        for b in 0..2 {
            for k in 0..n {
                let plain = k == 0 || (b == 0 && k <= last_plain);
                let want = if plain { &fzt } else { &pt };
                let d = max_abs_diff(&out.i((b, k)).unwrap(), &want.i((b, k)).unwrap()).unwrap();
                assert!(d == 0.0, "{mode:?} image {b} step {k}: {d}");
            }
        }
    }
}

#[test]
fn anderson_with_the_prefix_kept_never_needs_more_than_plain_iteration() {
    // A heavily regularised Anderson (lam 1e3: it nearly averages its history) crawls; with
    // the prefix kept it reaches the sequential images exactly in T + 1 rounds, as plain
    // iteration does.
    let m = small_unet(DType::F64);
    let steps = setup(8, SkipType::Uniform);
    let x_t = DeqRng::new(22).randn((2, 1, 8, 8), DType::F64, &Device::Cpu).unwrap();
    let (x0, _) = ddim(&m, &steps, &x_t, 0.0, None).unwrap();
    for picard_prefix in [true, false] {
        let cfg = DeqSampleConfig { tol: 1e-12, stop_mode: StopMode::Abs, max_iter: steps.len() + 1, lam: 1e3, picard_prefix, ..Default::default() };
        let s = deq(&m, &steps, &x_t, 0.0, None, &cfg, None).unwrap();
        let d = max_abs_diff(&s.images, &x0).unwrap();
        if picard_prefix {
            assert!(s.stats.residual < 1e-12 && d < 1e-12, "residual {} difference {d} in {} rounds", s.stats.residual, s.stats.rounds);
        } else {
            assert!(d > 1e-6, "without the prefix: difference {d}");
        }
    }
    let broyden = DeqSampleConfig { solver: "broyden".into(), ..Default::default() };
    assert!(broyden.validate("sample.deq").unwrap_err().contains("picard_prefix"));
    assert!(DeqSampleConfig { picard_prefix: false, ..broyden }.validate("sample.deq").is_ok());
}

#[test]
fn the_first_prediction_start_is_ddim_with_the_noise_prediction_frozen() {
    let m = small_unet(DType::F64);
    let steps = setup(7, SkipType::Quad);
    let x_t = DeqRng::new(23).randn((2, 1, 8, 8), DType::F64, &Device::Cpu).unwrap();
    let map = TrajectoryMap::new(&m, &steps, &x_t, 0.0, None).unwrap();
    let z = map.trajectory(&map.first_prediction_state().unwrap()).unwrap();
    let eps0 = m.predict(&x_t, &steps.t_tensor(0, 2, DType::F64, &Device::Cpu).unwrap()).unwrap();
    let a0 = steps.a_t[0];
    let x0 = ((&x_t - eps0.affine((1.0 - a0).sqrt(), 0.0).unwrap()).unwrap() / a0.sqrt()).unwrap();
    for k in 0..steps.len() {
        let a = steps.a_next[k];
        let want = (x0.affine(a.sqrt(), 0.0).unwrap() + eps0.affine((1.0 - a).sqrt(), 0.0).unwrap()).unwrap();
        let d = max_abs_diff(&z.i((.., k)).unwrap(), &want).unwrap();
        assert!(d < 1e-10, "step {k}: {d}");
    }
    // Step 0 is exact; a solve from there reaches the sequential images, counting the start as a round.
    let (seq, _) = ddim(&m, &steps, &x_t, 0.0, None).unwrap();
    let (traj, _) = ddim_trajectory(&m, &steps, &x_t, 0.0, None).unwrap();
    assert!(max_abs_diff(&z.i((.., 0)).unwrap(), &traj.i((.., 0)).unwrap()).unwrap() < 1e-12);
    let cfg = DeqSampleConfig { tol: 1e-12, stop_mode: StopMode::Abs, max_iter: steps.len() + 1, init: DeqInit::FirstPrediction, ..Default::default() };
    let s = deq(&m, &steps, &x_t, 0.0, None, &cfg, None).unwrap();
    assert!(max_abs_diff(&s.images, &seq).unwrap() < 1e-10);
    assert_eq!(s.stats.rounds, s.stats.residual_trace.len() + 1);
    assert_eq!(s.stats.model_evals, (s.stats.residual_trace.len() * steps.len() + 1) * 2);
}

#[test]
fn samplers_keep_no_autograd_graph_unless_asked() {
    // The UNet's weights are variables: without detaching, every step would keep its
    // activations alive (a 64-image, 50-step DDIM run grew past 24 GB this way).
    let m = small_unet(DType::F32);
    let steps = setup(3, SkipType::Uniform);
    let x_t = DeqRng::new(6).randn((1, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(ddim(&m, &steps, &x_t, 0.0, None).unwrap().0.op().is_none());
    let noise = StepNoise::draw(&mut DeqRng::new(7), steps.len(), (1, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(ddpm(&m, &steps, &x_t, &noise).unwrap().0.op().is_none());
    let map = TrajectoryMap::new(&m, &steps, &x_t, 0.0, None).unwrap();
    assert!(map.apply(&map.initial_state().unwrap()).unwrap().op().is_none());
    let sch = DiffusionConfig::default().schedule().unwrap();
    assert!(ddim_encode(&m, &sch, &[0, 10, 20], &x_t).unwrap().op().is_none());
    let xv = Var::from_tensor(&x_t).unwrap();
    let (y, _) = super::sequential::ddim_differentiable(&m, &steps, xv.as_tensor(), 0.0, None).unwrap();
    assert!(y.sum_all().unwrap().backward().unwrap().get(&xv).is_some());
}

#[test]
fn chunked_model_calls_equal_one_call() {
    let m = small_unet(DType::F64);
    let mut rng = DeqRng::new(4);
    let x = rng.randn((7, 1, 8, 8), DType::F64, &Device::Cpu).unwrap();
    let t = Tensor::new(&[1f64, 50., 100., 200., 300., 400., 999.], &Device::Cpu).unwrap();
    let a = m.predict(&x, &t).unwrap();
    let b = Chunked { model: &m, max_batch: 3 }.predict(&x, &t).unwrap();
    assert!(max_abs_diff(&a, &b).unwrap() < 1e-12);
    // Detached chunk by chunk: the same values, and no graph back to the weights.
    let xv = candle_core::Var::from_tensor(&x).unwrap();
    let c = Chunked { model: &m, max_batch: 3 }.predict_detached(xv.as_tensor(), &t).unwrap();
    assert!(max_abs_diff(&a, &c).unwrap() < 1e-12);
    assert!(c.sum_all().unwrap().backward().unwrap().get(&xv).is_none());
    let d = Chunked { model: &m, max_batch: 3 }.predict(xv.as_tensor(), &t).unwrap();
    assert!(d.sum_all().unwrap().backward().unwrap().get(&xv).is_some(), "predict keeps the graph");
}

#[test]
fn phantom_output_gradient_matches_finite_differences() {
    let m = small_unet(DType::F64);
    let steps = setup(4, SkipType::Uniform);
    let mut rng = DeqRng::new(5);
    let x_t = rng.randn((2, 1, 8, 8), DType::F64, &Device::Cpu).unwrap();
    let noise = StepNoise::draw(&mut rng, 4, (2, 1, 8, 8), DType::F64, &Device::Cpu).unwrap();
    let map = TrajectoryMap::new(&m, &steps, &x_t, 0.3, Some(&noise)).unwrap();
    let z = map.initial_state().unwrap().affine(0.9, 0.0).unwrap();
    let up = rng.randn((2, 1, 8, 8), DType::F64, &Device::Cpu).unwrap();
    // The last row of f(z) equals last_output.
    let full = map.images(&map.apply(&z).unwrap()).unwrap();
    assert!(max_abs_diff(&full, &map.last_output(&z, &x_t).unwrap()).unwrap() < 1e-12);
    let xv = Var::from_tensor(&x_t).unwrap();
    let g = map.last_output(&z, xv.as_tensor()).unwrap().mul(&up).unwrap().sum_all().unwrap().backward().unwrap();
    let fd = central_differences(&x_t, 1e-5, 7, &|x| map.last_output(&z, x).unwrap().mul(&up).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()).unwrap();
    assert_gradient("x_T", g.get(&xv).unwrap(), &fd, 1e-6);
}

#[test]
fn ddpm_and_encoding_follow_their_formulas() {
    // With a model that predicts zero noise, DDPM is the posterior mean of x0 = clip(x/sqrt(a))
    // plus scaled noise, and the encoding scales by sqrt(a_j / a_i).
    struct Zero;
    impl NoiseModel for Zero {
        fn predict(&self, x: &Tensor, _t: &Tensor) -> candle_core::Result<Tensor> {
            x.zeros_like()
        }
    }
    let steps = setup(2, SkipType::Uniform);
    let sch = DiffusionConfig::default().schedule().unwrap();
    let x = Tensor::new(&[[[[0.2f64, -3.0]]]], &Device::Cpu).unwrap();
    let noise = StepNoise(Tensor::new(&[1.0f64, 2.0, 5.0, 5.0], &Device::Cpu).unwrap().reshape((2, 1, 1, 1, 2)).unwrap());
    let (y, _) = ddpm(&Zero, &steps, &x, &noise).unwrap();
    let mut want = [0.2f64, -3.0];
    for (k, z) in [(0, [1.0, 2.0]), (1, [5.0, 5.0])] {
        let (at, an) = (steps.a_t[k], steps.a_next[k]);
        let beta = 1.0 - at / an;
        for (v, zi) in want.iter_mut().zip(z) {
            let x0 = (*v / at.sqrt()).clamp(-1.0, 1.0);
            let mean = (an.sqrt() * beta * x0 + (1.0 - beta).sqrt() * (1.0 - an) * *v) / (1.0 - at);
            *v = if steps.t[k] == 0 { mean } else { mean + beta.sqrt() * zi };
        }
    }
    let got = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!((got[0] - want[0]).abs() < 1e-12 && (got[1] - want[1]).abs() < 1e-12, "{got:?} {want:?}");
    let e = ddim_encode(&Zero, &sch, &[0, 500], &x).unwrap();
    let r = (sch.alpha_bar(500) / sch.alpha_bar(0)).sqrt();
    assert!(max_abs_diff(&e, &x.affine(r, 0.0).unwrap()).unwrap() < 1e-12);
}

#[test]
fn solver_options_carry_every_setting() {
    use deq_core::solver::StopMode;
    for (mode, m) in [(StopMode::Abs, 3), (StopMode::Rel, 7)] {
        let cfg = DeqSampleConfig { max_iter: 9, tol: 2e-4, stop_mode: mode, m, lam: 5e-3, ..Default::default() };
        let o = cfg.solver_options();
        assert_eq!((o.max_iter, o.tol, o.stop_mode, o.m, o.lam), (9, 2e-4, mode, m, 5e-3));
    }
}
