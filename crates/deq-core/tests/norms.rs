//! Weight-norm and spectral-norm invariants and gradients; variational dropout.

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::Conv2dConfig;
use deq_core::dropout::{DropShape, VariationalDropout};
use deq_core::norm::{NormConv2d, NormLinear, NormOptions, NormedWeight};
use deq_core::rng::DeqRng;
use deq_core::NormType;

fn opts(t: NormType) -> NormOptions {
    NormOptions { norm_type: t, ..Default::default() }
}

fn row_norms(w: &Tensor) -> Vec<f64> {
    let out = w.dims()[0];
    w.reshape((out, ())).unwrap().sqr().unwrap().sum(1).unwrap().sqrt().unwrap().to_vec1::<f64>().unwrap()
}

#[test]
fn weight_norm_keeps_the_weight_at_build_and_rows_at_g() {
    let mut rng = DeqRng::new(1);
    let v = rng.randn((5, 7), DType::F64, &Device::Cpu).unwrap();
    let l = NormLinear::from_weights(v.clone(), None, opts(NormType::WeightNorm), &mut rng).unwrap();
    let d = (l.weight().weight() - &v).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(d < 1e-12, "W = v at build");
    // Change g: rows follow it.
    let g = l.weight().scale().unwrap();
    g.set(&Tensor::new(&[[0.5f64], [1.0], [2.0], [0.1], [3.0]], &Device::Cpu).unwrap()).unwrap();
    l.reset().unwrap();
    let n = row_norms(&l.weight().weight());
    for (a, b) in n.iter().zip([0.5, 1.0, 2.0, 0.1, 3.0]) {
        assert!((a - b).abs() < 1e-12);
    }
    // No scale: rows at target norm; clip caps the factor.
    let o = NormOptions { learn_scale: false, target_norm: 0.7, ..opts(NormType::WeightNorm) };
    let l = NormLinear::from_weights(v.clone(), None, o, &mut rng).unwrap();
    assert!(row_norms(&l.weight().weight()).iter().all(|n| (n - 0.7).abs() < 1e-12));
    let o = NormOptions { clip: true, clip_value: 0.01, ..opts(NormType::WeightNorm) };
    let l = NormLinear::from_weights(v.clone(), None, o, &mut rng).unwrap();
    let vn = row_norms(&v);
    for (a, b) in row_norms(&l.weight().weight()).iter().zip(&vn) {
        assert!((a - b * 0.01).abs() < 1e-12, "factor clipped at 0.01");
    }
}

#[test]
fn spectral_norm_matches_the_exact_largest_singular_value() {
    let mut rng = DeqRng::new(2);
    let v = (rng.randn((12, 9), DType::F64, &Device::Cpu).unwrap() * 3.0).unwrap();
    let o = NormOptions { learn_scale: false, target_norm: 0.9, ..opts(NormType::SpectralNorm) };
    let w = NormedWeight::new(Var::from_tensor(&v).unwrap(), o, &mut rng).unwrap();
    // Normalised from the start (TorchDEQ leaves the raw weight until the first reset).
    let s0 = w.exact_sigma().unwrap();
    assert!((s0 - 0.9).abs() < 1e-3, "sigma at build {s0}");
    for _ in 0..200 {
        w.reset().unwrap();
    }
    let s = w.exact_sigma().unwrap();
    assert!((s - 0.9).abs() < 1e-8, "sigma after resets {s}");
    // Conv kernels are normalised as (out, in*k*k) matrices.
    let c = NormConv2d::new(3, 4, 3, Conv2dConfig { padding: 1, ..Default::default() }, true, o, &mut rng, DType::F64, &Device::Cpu).unwrap();
    for _ in 0..200 {
        c.reset().unwrap();
    }
    assert!((c.weight().exact_sigma().unwrap() - 0.9).abs() < 1e-8);
    let y = c.forward(&Tensor::ones((2, 3, 5, 5), DType::F64, &Device::Cpu).unwrap()).unwrap();
    assert_eq!(y.dims(), &[2, 4, 5, 5]);
}

fn fd_check(t: NormType) {
    let mut rng = DeqRng::new(3);
    let dev = Device::Cpu;
    let v0 = rng.randn((4, 3), DType::F64, &dev).unwrap();
    let x = rng.randn((2, 3), DType::F64, &dev).unwrap();
    let c = rng.randn((2, 4), DType::F64, &dev).unwrap();
    let l = NormLinear::from_weights(v0.clone(), None, opts(t), &mut rng).unwrap();
    let loss = |l: &NormLinear| (l.forward(&x).unwrap() * &c).unwrap().sum_all().unwrap();
    let g = loss(&l).backward().unwrap();
    let gv = g.get(l.weight().raw().as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let vv = v0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let h = 1e-6;
    for i in 0..vv.len() {
        let at = |d: f64| {
            let mut p = vv.clone();
            p[i] += d;
            l.weight().raw().set(&Tensor::from_vec(p, (4, 3), &dev).unwrap()).unwrap();
            // Recompute without further power iterations changing u (spectral: u is converged).
            l.reset().unwrap();
            loss(&l).to_scalar::<f64>().unwrap()
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!((fd - gv[i]).abs() < 1e-5 * (1.0 + fd.abs()), "{t:?} entry {i}: fd {fd} vs {}", gv[i]);
    }
}

#[test]
fn weight_norm_gradient_matches_finite_differences() {
    fd_check(NormType::WeightNorm);
}

#[test]
fn spectral_norm_gradient_matches_finite_differences() {
    fd_check(NormType::SpectralNorm);
}

#[test]
fn variational_dropout_reuses_its_mask_until_reset() {
    let dev = Device::Cpu;
    let x = Tensor::ones((4, 8, 3, 3), DType::F32, &dev).unwrap();
    let d = VariationalDropout::new(0.5, DropShape::Channel, 7).unwrap();
    let a = d.forward(&x, true).unwrap().to_vec3::<f32>().ok();
    let a1 = d.forward(&x, true).unwrap();
    let a2 = d.forward(&x, true).unwrap();
    assert_eq!(a1.flatten_all().unwrap().to_vec1::<f32>().unwrap(), a2.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let _ = a;
    // Channel masks are constant over the spatial dims and take values {0, 2}.
    let v = a1.to_dtype(DType::F64).unwrap();
    let per = v.max_keepdim(3).unwrap().max_keepdim(2).unwrap();
    let min = v.min_keepdim(3).unwrap().min_keepdim(2).unwrap();
    assert_eq!(per.flatten_all().unwrap().to_vec1::<f64>().unwrap(), min.flatten_all().unwrap().to_vec1::<f64>().unwrap());
    assert!(v.flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().all(|&e| e == 0.0 || e == 2.0));
    d.reset();
    let b = d.forward(&x, true).unwrap();
    assert_ne!(b.flatten_all().unwrap().to_vec1::<f32>().unwrap(), a1.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    // Eval is the identity; same seed, same masks.
    assert_eq!(d.forward(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 288]);
    let e = VariationalDropout::new(0.5, DropShape::Channel, 7).unwrap();
    assert_eq!(e.forward(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), a1.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    assert!(VariationalDropout::new(1.0, DropShape::Full, 0).is_err());
}

/// Finite differences for every variable of the reparameterisation (the direction `v` and the
/// scale `g`, one per output row), with the factor clipped on some rows when `clip` is given.
/// `factors` sets `g` so that the factor of each row (`g / ||v_row||` for weight norm,
/// `g / sigma(v)` for spectral norm) has that value.
fn fd_check_all_vars(t: NormType, clip: Option<f64>, factors: &[f64]) {
    let mut rng = DeqRng::new(4);
    let dev = Device::Cpu;
    let v0 = rng.randn((4, 3), DType::F64, &dev).unwrap();
    let x = rng.randn((2, 3), DType::F64, &dev).unwrap();
    let c = rng.randn((2, 4), DType::F64, &dev).unwrap();
    let o = NormOptions { clip: clip.is_some(), clip_value: clip.unwrap_or(1.0), ..opts(t) };
    let l = NormLinear::from_weights(v0.clone(), None, o, &mut rng).unwrap();
    for _ in 0..50 {
        l.reset().unwrap(); // spectral norm: converge u, so that resets below leave sigma fixed
    }
    let g = l.weight().scale().expect("a learned scale").clone();
    // g = factor * (row norm | sigma of v).
    let denom: Vec<f64> = match t {
        NormType::WeightNorm => row_norms(&v0),
        _ => {
            let w0 = NormedWeight::new(Var::from_tensor(&v0).unwrap(), NormOptions { learn_scale: false, target_norm: 1.0, ..opts(t) }, &mut DeqRng::new(9)).unwrap();
            for _ in 0..200 {
                w0.reset().unwrap();
            }
            // sigma(v) = 1 / (the factor that brings it to norm 1): read it off the weights.
            let (a, b) = (w0.weight().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap(), v0.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap());
            vec![b / a; 4]
        }
    };
    let gvals: Vec<f64> = factors.iter().zip(&denom).map(|(f, d)| f * d).collect();
    g.set(&Tensor::from_vec(gvals, g.shape(), &dev).unwrap()).unwrap();
    l.reset().unwrap();
    // The factors are as asked, clipped where they exceed the bound.
    let (wn, vn) = (row_norms(&l.weight().weight()), row_norms(&v0));
    for i in 0..4 {
        let want = clip.map_or(factors[i], |cv| factors[i].min(cv));
        assert!((wn[i] / vn[i] - want).abs() < 1e-6, "{t:?} row {i}: factor {} vs {want}", wn[i] / vn[i]);
    }
    let loss = |l: &NormLinear| (l.forward(&x).unwrap() * &c).unwrap().sum_all().unwrap();
    let grads = loss(&l).backward().unwrap();
    for (name, var) in l.weight().named_vars() {
        let shape = var.shape().clone();
        let got: Vec<f64> = match grads.get(var.as_tensor()) {
            Some(t) => t.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            None => vec![0.0; shape.elem_count()],
        };
        let orig = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let h = 1e-6;
        for i in 0..orig.len() {
            let at = |d: f64| {
                let mut p = orig.clone();
                p[i] += d;
                var.set(&Tensor::from_vec(p, shape.clone(), &dev).unwrap()).unwrap();
                l.reset().unwrap();
                loss(&l).to_scalar::<f64>().unwrap()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!((fd - got[i]).abs() < 1e-5 * (1.0 + fd.abs()), "{t:?} clip {clip:?} {name}[{i}]: fd {fd} vs {}", got[i]);
        }
        var.set(&Tensor::from_vec(orig, shape.clone(), &dev).unwrap()).unwrap();
        l.reset().unwrap();
    }
}

#[test]
fn norm_scale_and_clipped_factors_match_finite_differences() {
    // Weight norm: g itself, then rows 2 and 4 clipped (factor 1.5 and 2.0 against 1.0).
    fd_check_all_vars(NormType::WeightNorm, None, &[0.5, 1.5, 0.8, 2.0]);
    fd_check_all_vars(NormType::WeightNorm, Some(1.0), &[0.5, 1.5, 0.8, 2.0]);
    // Spectral norm: the scale, unclipped, then rows 2 and 4 clipped (1.3 and 1.1 against 0.9).
    fd_check_all_vars(NormType::SpectralNorm, None, &[0.7, 1.3, 0.5, 1.1]);
    fd_check_all_vars(NormType::SpectralNorm, Some(0.9), &[0.7, 1.3, 0.5, 1.1]);
}
