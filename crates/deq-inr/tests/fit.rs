//! The fitting loop: the loss falls and the amortised DEQ evaluates `f` 3 times a step, a
//! resumed fit ends bit-identical to an uninterrupted one, minibatch fits solve from zeros,
//! and the f16 model file reloads to the quantised model.

use candle_core::{DType, Device};
use deq_core::rng::DeqRng;
use deq_inr::fit::{fit, FitConfig, FitOptions};
use deq_inr::image_io::Image;
use deq_inr::model::{zoo_deq, AmortisedGrad, DeqInr, InrModelConfig};
use deq_inr::net::InrNet;
use deq_inr::siren::Siren;
use deq_inr::task::image_representation;

fn image() -> Image {
    let data = (0..24 * 24).map(|i| ((i % 24) as f32 / 23.0 * 3.0).sin().abs() * ((i / 24) as f32 / 23.0)).collect();
    Image { height: 24, width: 24, channels: 1, data }
}

fn deq_net(seed: u64) -> InrNet {
    deq_net_with(seed, AmortisedGrad::Phantom, 3)
}

/// The test DEQ with `grad` tracked steps differentiated by `mode`.
fn deq_net_with(seed: u64, mode: AmortisedGrad, grad: usize) -> InrNet {
    let cfg = InrModelConfig { width: 32, input_scale: 24.0, amortised_grad: mode, ..Default::default() };
    let deq = deq_core::DeqConfig { grad: vec![grad], ..zoo_deq(30) };
    InrNet::Deq(DeqInr::new(cfg, 2, 1, deq, &mut DeqRng::new(seed), DType::F32, &Device::Cpu).unwrap())
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("deq-inr-fit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn deq_and_siren_fits_improve_and_the_deq_step_costs_three_evaluations() {
    let (train, test) = image_representation(&image(), 0);
    let cfg = FitConfig { steps: 60, lr: 2e-3, eval_every: 20, ..Default::default() };
    let net = deq_net(0);
    let r = fit(&net, &train, &test, &cfg, &FitOptions::default()).unwrap();
    assert_eq!(r.curve.len(), 3);
    assert!(r.curve[2].train_loss < r.curve[0].train_loss, "{:?}", r.curve);
    assert!(r.last().test_psnr > r.curve[0].test_psnr, "{:?}", r.curve);
    assert_eq!(r.f_evals_per_step, 3.0);
    // The carried adjoint: one evaluation a step (grad 1) and the loss still falls.
    let carried = deq_net_with(0, AmortisedGrad::CarriedAdjoint, 1);
    let rc = fit(&carried, &train, &test, &cfg, &FitOptions::default()).unwrap();
    assert_eq!(rc.f_evals_per_step, 1.0);
    assert!(rc.curve[2].train_loss < rc.curve[0].train_loss, "{:?}", rc.curve);
    assert!(rc.last().test_psnr > rc.curve[0].test_psnr, "{:?}", rc.curve);
    let InrNet::Deq(m) = &net else { unreachable!() };
    let s = InrNet::Siren(Siren::matching(m.num_params(), 2, 3, 1, &mut DeqRng::new(1), DType::F32, &Device::Cpu).unwrap());
    let rs = fit(&s, &train, &test, &cfg, &FitOptions::default()).unwrap();
    assert!(rs.curve[2].train_loss < rs.curve[0].train_loss);
    assert!(rs.params <= r.params);
}

#[test]
fn resumed_fit_is_bit_identical() {
    for grad in [AmortisedGrad::Phantom, AmortisedGrad::CarriedAdjoint] {
        resumed_fit_is_bit_identical_with(grad);
    }
}

fn resumed_fit_is_bit_identical_with(grad: AmortisedGrad) {
    let (train, test) = image_representation(&image(), 0);
    let cfg = |steps| FitConfig { steps, lr: 2e-3, eval_every: 5, ..Default::default() };
    let (a, b) = (tmp(&format!("a{grad:?}")), tmp(&format!("b{grad:?}")));
    let net = || deq_net_with(3, grad, 3);
    let full = fit(&net(), &train, &test, &cfg(20), &FitOptions { out_dir: Some(a.clone()), ..Default::default() }).unwrap();
    fit(&net(), &train, &test, &cfg(10), &FitOptions { out_dir: Some(b.clone()), ..Default::default() }).unwrap();
    let resumed = fit(&net(), &train, &test, &cfg(20), &FitOptions { out_dir: Some(b.clone()), resume: true, ..Default::default() }).unwrap();
    assert_eq!(full.test_pred, resumed.test_pred, "same final model");
    let (fl, rl) = (full.last(), resumed.last());
    assert_eq!((fl.step, fl.train_psnr, fl.train_loss), (rl.step, rl.train_psnr, rl.train_loss));
    assert_eq!(resumed.curve.len(), 4, "curve continues from the checkpoint");
    let text = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 4);
    // Each evaluation records its solves and the probe chunk's residual trace.
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(last["test_fwd_nfe_max"].as_f64().unwrap() >= 1.0 && last["test_fwd_rel_residual_mean"].is_number(), "{last}");
    assert!(!last["probe_rel_trace"].as_array().unwrap().is_empty());
    assert_eq!(deq_train::plot::plot_run(&b, None).unwrap().len(), 3);
    // SIGTERM (in a child process: the simulated signal is process-wide) ends a fit after its
    // first step, evaluated and checkpointed; the resumed fit ends with the whole one's model.
    let c = tmp(&format!("sigterm{grad:?}"));
    deq_train::hostile::run_in_child("sigterm_child", &format!("{grad:?} {}", c.display())).unwrap();
    let after = fit(&net(), &train, &test, &cfg(20), &FitOptions { out_dir: Some(c.clone()), resume: true, ..Default::default() }).unwrap();
    assert_eq!(full.test_pred, after.test_pred, "same final model after SIGTERM and resume");
    assert_eq!(after.curve.first().map(|p| p.step), Some(1), "the stopped fit's evaluation is kept");
    for d in [a, b, c] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The interrupted fit of [`resumed_fit_is_bit_identical`], in a child process of its own:
/// SIGTERM before the first step ends the fit after that step with `Interrupted`.
#[test]
fn sigterm_child() {
    let Some(case) = deq_train::hostile::child_case() else { return };
    let (grad, dir) = case.split_once(' ').unwrap();
    let grad = if grad == "Phantom" { AmortisedGrad::Phantom } else { AmortisedGrad::CarriedAdjoint };
    let (train, test) = image_representation(&image(), 0);
    deq_train::signals::simulate(15);
    let cfg = FitConfig { steps: 20, lr: 2e-3, eval_every: 5, ..Default::default() };
    let e = fit(&deq_net_with(3, grad, 3), &train, &test, &cfg, &FitOptions { out_dir: Some(dir.into()), ..Default::default() }).unwrap_err();
    assert!(format!("{e:#}").contains("stopped by SIGTERM after step 1"), "{e:#}");
}

#[test]
fn minibatch_fit_solves_from_zeros_and_clips() {
    let (train, test) = image_representation(&image(), 0);
    let net = deq_net(4);
    // Clipping every gradient entry to |g| <= c, far below Adam's eps (1e-8), caps each Adam
    // update at lr * c / (c + eps) (~lr / 11) per step: without clipping most entries would
    // move by ~lr per step.
    let (clip, lr, steps) = (1e-9, 1e-3, 4);
    let cfg = FitConfig { steps, lr, batch_size: 100, clip_value: clip, eval_every: 4, ..Default::default() };
    let before: Vec<Vec<f32>> = net.named_vars().iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect();
    let r = fit(&net, &train, &test, &cfg, &FitOptions::default()).unwrap();
    let moved = net
        .named_vars()
        .iter()
        .zip(&before)
        .flat_map(|((_, v), b)| {
            let now = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            now.iter().zip(b).map(|(a, b)| (a - b).abs() as f64).collect::<Vec<_>>()
        })
        .fold(0f64, f64::max);
    let bound = steps as f64 * lr * clip / (clip + 1e-8);
    assert!(moved <= 1.01 * bound && moved > 0.5 * bound, "largest parameter change {moved:e} against the clipped bound {bound:e}");
    // Every step solves (no cache): more than the 3 gradient evaluations.
    assert!(r.f_evals_per_step > 3.0, "{}", r.f_evals_per_step);
}

#[test]
fn f16_model_reloads_to_the_quantised_model() {
    let (train, test) = image_representation(&image(), 0);
    let net = deq_net(5);
    fit(&net, &train, &test, &FitConfig { steps: 10, eval_every: 10, ..Default::default() }, &FitOptions::default()).unwrap();
    let d = tmp("f16");
    std::fs::create_dir_all(&d).unwrap();
    let bytes = deq_inr::compress::save_f16(&net, &d.join("m.safetensors")).unwrap();
    assert!(bytes as usize >= 2 * net.num_params() && (bytes as usize) < 2 * net.num_params() + 4096, "{bytes} bytes for {} params", net.num_params());
    let x = test.coords_tensor(&Device::Cpu).unwrap();
    let saved = deq_inr::compress::quantize_f16(&net).unwrap();
    // The phase parameters stay exact (f32); the other parameters are rounded to f16.
    for ((k, v), orig) in net.named_vars().into_iter().zip(&saved) {
        let (now, was) = (v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), orig.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        if net.phase_params().contains(&k.as_str()) {
            assert_eq!(now, was, "{k} is kept in f32");
        } else {
            assert!(now.iter().zip(&was).all(|(a, b)| *a == half::f16::from_f32(*b).to_f32()), "{k} is rounded to f16");
        }
    }
    let (q, _) = net.predict(&x, 0).unwrap();
    // Both networks name phase parameters that exist.
    let siren = InrNet::Siren(Siren::matching(500, 2, 2, 1, &mut DeqRng::new(1), DType::F32, &Device::Cpu).unwrap());
    for n in [&net, &siren] {
        let names: Vec<String> = n.named_vars().into_iter().map(|(k, _)| k).collect();
        assert!(n.phase_params().iter().all(|p| names.iter().any(|k| k == p)), "{:?} in {names:?}", n.phase_params());
    }
    deq_inr::compress::restore(&net, &saved).unwrap();
    let other = deq_net(99);
    deq_inr::compress::load(&other, &d.join("m.safetensors")).unwrap();
    let (o, _) = other.predict(&x, 0).unwrap();
    assert_eq!(q, o, "the f16 file reloads to the quantised parameters");
    assert!((deq_inr::compress::bits_per_sample(1000, 8000) - 1.0).abs() < 1e-12);
    // A file with a missing tensor is named.
    let small = InrNet::Deq(DeqInr::new(InrModelConfig { width: 8, ..Default::default() }, 2, 1, zoo_deq(5), &mut DeqRng::new(0), DType::F32, &Device::Cpu).unwrap());
    let e = deq_inr::compress::load(&small, &d.join("m.safetensors")).unwrap_err().to_string();
    assert!(e.contains("m.safetensors") && e.contains("shape"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_run_folder_renders_at_its_psnr_and_at_other_sizes() {
    // A complete run as the binary does it, on a 24 x 24 PNG, then `render`.
    let d = tmp("run");
    std::fs::create_dir_all(&d).unwrap();
    image().write_png(&d.join("img.png")).unwrap();
    let mut cfg = deq_inr::config::RunConfig::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/deq-inr/image-siren_like-1L256D.toml")).unwrap();
    cfg.data.path = d.join("img.png").display().to_string();
    cfg.data.size = 0;
    cfg.model.width = 16;
    cfg.model.input_scale = 24.0;
    cfg.fit = FitConfig { steps: 8, eval_every: 8, ..Default::default() };
    cfg.deq.f_max_iter = 20;
    let (train, test) = deq_inr::run::load_task(&cfg).unwrap();
    let (s, _) = deq_inr::run::run_one(&cfg, "deq", &train, &test, &d.join("deq"), false, &Device::Cpu).unwrap();
    for f in ["reconstruction.png", "error.png", "model_f16.safetensors", "summary.json", "metrics.jsonl", "config.toml"] {
        assert!(d.join("deq").join(f).exists(), "{f}");
    }
    // Rendering reads the run's saved configuration and model kind.
    let saved = deq_inr::config::RunConfig::load(&d.join("deq").join("config.toml")).unwrap();
    assert_eq!(saved, cfg);
    let kind = deq_inr::run::saved_kind(&d.join("deq")).unwrap();
    assert_eq!(kind, "deq");
    let r = deq_inr::run::render(&saved, &kind, &d.join("deq"), &d.join("again.png"), None, false, &Device::Cpu).unwrap();
    assert!((r.psnr.unwrap() - s.test_psnr).abs() < 1e-9, "{:?} vs {}", r.psnr, s.test_psnr);
    let r16 = deq_inr::run::render(&saved, &kind, &d.join("deq"), &d.join("f16.png"), None, true, &Device::Cpu).unwrap();
    assert!((r16.psnr.unwrap() - s.test_psnr_f16).abs() < 1e-9);
    let big = deq_inr::run::render(&saved, &kind, &d.join("deq"), &d.join("big.png"), Some((48, 48)), false, &Device::Cpu).unwrap();
    assert!(big.psnr.is_none());
    let img = Image::read(&d.join("big.png")).unwrap();
    assert_eq!((img.height, img.width), (48, 48));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_diverging_fit_stops_naming_step_and_stage_or_skips_and_counts() {
    let (train, test) = image_representation(&image(), 0);
    let mut cfg = FitConfig { steps: 12, lr: 1e12, eval_every: 6, ..Default::default() };
    let e = fit(&deq_net(0), &train, &test, &cfg, &FitOptions::default()).unwrap_err().to_string();
    assert!(e.contains("diverged at step") && e.contains("stage `") && e.contains("on_nonfinite"), "{e}");
    cfg.on_nonfinite = deq_train::faults::OnNonFinite::Skip;
    cfg.max_skipped = 2;
    let e = fit(&deq_net(0), &train, &test, &cfg, &FitOptions::default()).unwrap_err().to_string();
    assert!(e.contains("2 batches were skipped already"), "{e}");
}
