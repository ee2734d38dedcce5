//! The pruned vector-Jacobian product against candle's full backward and finite differences,
//! in f64, over every op family a DEQ function uses (cargo feature `pruned-vjp`).
#![cfg(feature = "pruned-vjp")]

use candle_core::{DType, Device, Tensor, Var, D};
use deq_core::grad::{full_vjp, Vjp, VjpPlan};
use deq_core::rng::DeqRng;

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-12);
    diff / scale
}

/// `v^T out(z)` differentiated by central differences along every coordinate of `z`.
fn fd_vjp(f: &dyn Fn(&Tensor) -> Tensor, z: &Tensor, v: &Tensor) -> Tensor {
    let flat = z.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let h = 1e-6;
    let g: Vec<f64> = (0..flat.len())
        .map(|i| {
            let at = |s: f64| {
                let mut x = flat.clone();
                x[i] += s;
                let zt = Tensor::from_vec(x, z.shape(), z.device()).unwrap();
                (f(&zt) * v).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
            };
            (at(h) - at(-h)) / (2.0 * h)
        })
        .collect();
    Tensor::from_vec(g, z.shape(), z.device()).unwrap()
}

/// Checks plan == candle's backward == finite differences for `f` at a random point.
fn check(name: &str, shape: &[usize], f: &dyn Fn(&Tensor) -> Tensor, against_candle: bool) {
    let mut rng = DeqRng::new(7);
    let z = rng.randn(shape, DType::F64, &Device::Cpu).unwrap();
    let zv = Var::from_tensor(&z).unwrap();
    let out = f(zv.as_tensor());
    let v = rng.randn(out.shape(), DType::F64, &Device::Cpu).unwrap();
    let plan = VjpPlan::new(std::slice::from_ref(&out), std::slice::from_ref(zv.as_tensor()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let ours = plan.apply(std::slice::from_ref(&v)).unwrap().remove(0);
    let fd = fd_vjp(f, &z, &v);
    let e_fd = max_rel(&ours, &fd);
    assert!(e_fd < 1e-6, "{name}: pruned vjp vs finite differences rel err {e_fd:.2e}");
    if against_candle {
        let full = full_vjp(&out, &zv, &v).unwrap();
        let e = max_rel(&ours, &full);
        assert!(e < 1e-12, "{name}: pruned vjp vs candle backward rel err {e:.2e}");
    }
}

fn param(rng: &mut DeqRng, shape: &[usize]) -> Var {
    Var::from_tensor(&(rng.randn(shape, DType::F64, &Device::Cpu).unwrap() * 0.5).unwrap()).unwrap()
}

#[test]
fn elementwise_and_shape_ops() {
    let mut rng = DeqRng::new(1);
    let w = param(&mut rng, &[6, 6]);
    let b = param(&mut rng, &[6]);
    let f = |z: &Tensor| -> Tensor {
        let lin = z.matmul(&w.as_tensor().t().unwrap()).unwrap().broadcast_add(b.as_tensor()).unwrap();
        let a = lin.tanh().unwrap();
        let pos = (z.sqr().unwrap() + 0.5).unwrap();
        let parts = [
            a.clone(),
            (z.exp().unwrap().sin().unwrap() * z.cos().unwrap()).unwrap(),
            pos.sqrt().unwrap().log().unwrap(),
            (z / &pos).unwrap().recip().unwrap().affine(0.1, 0.0).unwrap(),
            (z - a.neg().unwrap()).unwrap().relu().unwrap(),
            z.elu(0.7).unwrap(),
            z.silu().unwrap(),
            z.gelu().unwrap(),
            pos.powf(1.5).unwrap(),
            z.maximum(&a).unwrap(),
            z.minimum(&a).unwrap(),
            z.broadcast_mul(&z.sum_keepdim(1).unwrap()).unwrap(),
            z.broadcast_sub(&z.max_keepdim(1).unwrap()).unwrap(),
            z.reshape((2, 2, 6)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape((4, 6)).unwrap(),
            z.narrow(1, 1, 3).unwrap().pad_with_zeros(1, 1, 2).unwrap(),
            z.ge(&a).unwrap().where_cond(z, &a).unwrap(),
            z.abs().unwrap(),
            deq_core::ops::tanh(z).unwrap(),
            z.to_dtype(DType::F32).unwrap().to_dtype(DType::F64).unwrap().affine(0.0, 1.0).unwrap(),
        ];
        Tensor::cat(&parts, 1).unwrap()
    };
    check("elementwise", &[4, 6], &f, true);
    let g = |z: &Tensor| -> Tensor {
        let e = z.exp().unwrap();
        let sm = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        let perm = z.reshape((2, 2, 6)).unwrap().permute((2, 0, 1)).unwrap().flatten_all().unwrap();
        Tensor::cat(&[sm.flatten_all().unwrap(), perm, z.mean(0).unwrap(), z.min(1).unwrap()], 0).unwrap()
    };
    check("softmax/permute/reduce", &[4, 6], &g, true);
}

#[test]
fn indexing_ops_and_scatter_fixes() {
    let dev = Device::Cpu;
    let idx = Tensor::new(&[2u32, 0, 2, 1], &dev).unwrap();
    let gidx = Tensor::new(&[[0u32, 2], [1, 1], [2, 0], [0, 0]], &dev).unwrap();
    let f = |z: &Tensor| -> Tensor {
        let sel = z.index_select(&idx, 0).unwrap();
        let added = Tensor::zeros((3, 3), DType::F64, &dev).unwrap().index_add(&idx, &z.narrow(1, 0, 3).unwrap(), 0).unwrap();
        let gath = z.gather(&gidx, 1).unwrap();
        Tensor::cat(&[sel.flatten_all().unwrap(), added.flatten_all().unwrap(), gath.flatten_all().unwrap()], 0).unwrap()
    };
    check("index_select/index_add/gather", &[4, 3], &f, true);
    // Destination and source of the scatters, both depending on z.
    let dst_src = |z: &Tensor| (z.narrow(0, 0, 3).unwrap().sqr().unwrap(), z.narrow(0, 1, 2).unwrap().tanh().unwrap());
    // scatter_add: the destination's gradient passes through unchanged. candle's backward masks
    // it, so this one is checked against finite differences only.
    let sidx = Tensor::new(&[[0u32, 1, 0], [2, 2, 1]], &dev).unwrap();
    let h = |z: &Tensor| -> Tensor {
        let (dst, src) = dst_src(z);
        dst.scatter_add(&sidx, &src, 0).unwrap()
    };
    check("scatter_add", &[3, 3], &h, false);
    // scatter: the destination's overwritten entries get no gradient, the source's do (a fixed
    // rule too: finite differences only).
    let sidx = Tensor::new(&[[0u32, 1, 2], [2, 0, 1]], &dev).unwrap();
    let s = |z: &Tensor| -> Tensor {
        let (dst, src) = dst_src(z);
        dst.scatter(&sidx, &src, 0).unwrap()
    };
    check("scatter", &[3, 3], &s, false);
}

#[test]
fn convolution_pooling_and_upsampling() {
    let mut rng = DeqRng::new(2);
    let k1 = param(&mut rng, &[4, 3, 3, 3]);
    let k2 = param(&mut rng, &[4, 3, 3, 3]);
    let kg = param(&mut rng, &[2, 2, 3, 3]);
    let kt = param(&mut rng, &[4, 2, 2, 2]);
    let a = |z: &Tensor| z.conv2d(k1.as_tensor(), 1, 1, 1, 1).unwrap().tanh().unwrap();
    check("conv2d", &[2, 3, 6, 6], &|z| a(z), true);
    check("strided conv2d + nearest upsample", &[2, 3, 6, 6], &|z| z.conv2d(k2.as_tensor(), 1, 2, 1, 1).unwrap().upsample_nearest2d(6, 6).unwrap(), true);
    check("avg pool", &[2, 3, 6, 6], &|z| a(z).avg_pool2d(2).unwrap(), true);
    // candle's own max-pool backward is off by the window size: finite differences only.
    check("max pool", &[2, 3, 6, 6], &|z| a(z).max_pool2d(2).unwrap(), false);
    check("conv transpose", &[2, 3, 6, 6], &|z| a(z).avg_pool2d(2).unwrap().conv_transpose2d(kt.as_tensor(), 0, 0, 2, 1).unwrap(), true);
    check("grouped conv", &[2, 3, 6, 6], &|z| a(z).conv2d(kg.as_tensor(), 1, 1, 1, 2).unwrap(), true);
}

#[test]
fn plan_skips_parameter_paths_and_falls_back_when_needed() {
    let mut rng = DeqRng::new(3);
    let w = param(&mut rng, &[8, 8]);
    let x = rng.randn((5, 8), DType::F64, &Device::Cpu).unwrap();
    let z = Var::from_tensor(&rng.randn((5, 8), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let out = (z.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap() + x.matmul(&w.as_tensor().t().unwrap()).unwrap()).unwrap().tanh().unwrap();
    let plan = VjpPlan::new(std::slice::from_ref(&out), std::slice::from_ref(z.as_tensor())).unwrap();
    // tanh, add, matmul on z's side: the injection and the transposes of w are not visited.
    assert_eq!(plan.len(), 3, "nodes on the z path");
    assert!(Vjp::new(&out, &z).is_pruned());
    // Bilinear upsampling has no backward rule: the plan refuses and Vjp falls back to candle,
    // which then reports its own error.
    let img = Var::from_tensor(&rng.randn((1, 1, 2, 2), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let up = img.as_tensor().upsample_bilinear2d(4, 4, false).unwrap();
    assert!(VjpPlan::new(std::slice::from_ref(&up), std::slice::from_ref(img.as_tensor())).is_err());
    assert!(!Vjp::new(&up, &img).is_pruned());
    // An output that does not depend on z gives a zero product.
    let c = x.tanh().unwrap();
    let plan = VjpPlan::new(std::slice::from_ref(&c), std::slice::from_ref(z.as_tensor())).unwrap();
    assert!(plan.is_empty());
    let g = plan.apply(&[c.ones_like().unwrap()]).unwrap().remove(0);
    assert_eq!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap(), 0.0);
}

#[test]
fn pruned_backward_matches_candle_through_a_deq_step() {
    use deq_core::{Deq, DeqConfig};
    let mut rng = DeqRng::new(5);
    let p = deq_core::problems::linear_tanh_problem(4, 8, 0.6, 5, DType::F64).unwrap();
    let (w, u) = (Var::from_tensor(&p.w).unwrap(), Var::from_tensor(&p.u).unwrap());
    let head = param(&mut rng, &[3, 8]);
    let labels = Tensor::new(&[0u32, 2, 1, 2], &Device::Cpu).unwrap();
    let cfg = DeqConfig { f_solver: "anderson".into(), f_max_iter: 60, f_tol: 1e-12, b_max_iter: 200, b_tol: 1e-12, ift: true, ..Default::default() };
    let deq = Deq::new(cfg).unwrap();
    let loss = || {
        let out = deq
            .forward1(
                |z, x| deq_core::ops::tanh(&(z.matmul(&w.as_tensor().t()?)? + x[0].matmul(&u.as_tensor().t()?)?)?),
                std::slice::from_ref(&p.x),
                &Tensor::zeros((4, 8), DType::F64, &Device::Cpu).unwrap(),
            )
            .unwrap();
        let logits = out.z().matmul(&head.as_tensor().t().unwrap()).unwrap();
        candle_nn::loss::cross_entropy(&logits, &labels).unwrap()
    };
    let ours = deq_core::grad::backward(&loss()).unwrap();
    let theirs = loss().backward().unwrap();
    for v in [&w, &u, &head] {
        let (a, b) = (ours.get(v.as_tensor()).unwrap(), theirs.get(v.as_tensor()).unwrap());
        let e = max_rel(a, b);
        assert!(e < 1e-10, "pruned backward vs candle: {e:.2e}");
    }
}

/// A bias gradient over >= 1024 rows is a product with a ones row on the GEMM kernels (every
/// IGNN and INR bias takes this path): exact column sums in f64, to f32 accumulation error in f32.
#[test]
fn large_batch_bias_gradient_gemm_path_sums_the_rows() {
    let dev = Device::Cpu;
    let mut rng = DeqRng::new(3);
    for (dt, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for rows in [2048usize, 1500] {
            let x = rng.randn((rows, 3), dt, &dev).unwrap();
            let c = rng.randn((rows, 3), dt, &dev).unwrap();
            let b = Var::from_tensor(&rng.randn(3, dt, &dev).unwrap()).unwrap();
            let loss = (x.broadcast_add(b.as_tensor()).unwrap() * &c).unwrap().sum_all().unwrap();
            let g = deq_core::grad::backward(&loss).unwrap();
            let got = g.get(b.as_tensor()).unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            let want = c.to_dtype(DType::F64).unwrap().sum(0).unwrap().to_vec1::<f64>().unwrap();
            let scale = c.to_dtype(DType::F64).unwrap().abs().unwrap().sum(0).unwrap().to_vec1::<f64>().unwrap();
            for k in 0..3 {
                assert!((got[k] - want[k]).abs() <= tol * scale[k], "{dt:?} rows={rows} column {k}: {} vs {}", got[k], want[k]);
            }
            // The same as candle's own backward.
            let theirs = loss.backward().unwrap().get(b.as_tensor()).unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            for k in 0..3 {
                assert!((got[k] - theirs[k]).abs() <= tol * scale[k]);
            }
        }
    }
}

/// The remaining rules: conv1d (input and kernel), nearest upsampling in 1-d and 2-d, slice-scatter, erf and the
/// erf-GELU, and the kernel side of conv2d (plain, strided, grouped).
#[test]
fn conv1d_upsampling_slice_scatter_erf_and_conv_kernels() {
    let dev = Device::Cpu;
    let mut rng = DeqRng::new(5);
    // conv1d, input side and kernel side.
    let k1 = param(&mut rng, &[4, 3, 3]);
    check("conv1d", &[2, 3, 9], &|z| z.conv1d(k1.as_tensor(), 1, 1, 1, 1).unwrap().tanh().unwrap(), true);
    // Without padding candle's own backward (its conv_transpose1d col2im path) is wrong for the
    // second batch entry here, so this one is checked against finite differences only.
    check("strided conv1d", &[2, 3, 9], &|z| z.conv1d(k1.as_tensor(), 0, 2, 1, 1).unwrap(), false);
    let x1 = rng.randn((2, 3, 9), DType::F64, &dev).unwrap();
    // candle's conv1d silently ignores a non-contiguous kernel's strides, and its own kernel
    // gradient passes one: finite differences only.
    check("conv1d kernel", &[4, 3, 3], &|k| x1.conv1d(k, 1, 1, 1, 1).unwrap().tanh().unwrap(), false);
    // Nearest upsampling by integer factors (1-d and 2-d).
    check("upsample nearest 1d", &[2, 3, 4], &|z| z.tanh().unwrap().upsample_nearest1d(12).unwrap(), true);
    check("upsample nearest 2d", &[2, 2, 3, 4], &|z| z.sin().unwrap().upsample_nearest2d(6, 8).unwrap(), true);
    // slice_scatter0: both the destination and the slice written into it.
    let ss = |z: &Tensor| -> Tensor {
        let dst = z.sqr().unwrap();
        let src = z.narrow(0, 1, 2).unwrap().tanh().unwrap();
        dst.slice_scatter0(&src, 1).unwrap()
    };
    check("slice_scatter0", &[4, 3], &ss, true);
    check("erf and gelu_erf", &[3, 5], &|z| Tensor::cat(&[z.erf().unwrap(), z.gelu_erf().unwrap()], 1).unwrap(), true);
    // The kernel side of conv2d (the MDEQ weight gradients).
    let x2 = rng.randn((2, 4, 6, 6), DType::F64, &dev).unwrap();
    check("conv2d kernel", &[3, 4, 3, 3], &|k| x2.conv2d(k, 1, 1, 1, 1).unwrap().tanh().unwrap(), true);
    check("strided conv2d kernel", &[3, 4, 3, 3], &|k| x2.conv2d(k, 1, 2, 1, 1).unwrap(), true);
    check("grouped conv2d kernel", &[4, 2, 3, 3], &|k| x2.conv2d(k, 1, 1, 1, 2).unwrap().sin().unwrap(), true);
}
