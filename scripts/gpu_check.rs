//! `deq-gpu-check`: the GPU checks of `scripts/gpu-check.sh`, in one binary that travels to a
//! GPU machine without a Rust toolchain (built with `FEATURES=cuda,nccl CRATES=deq-zoo
//! scripts/build-cuda.sh`).
//!
//! * `deq-gpu-check ops [--device cuda:N]`: every custom op and solver path on the CUDA device
//!   against the same computation on the CPU (forward and backward): deq-core's `tanh`, `sin`
//!   and `transpose_last2`, the Anderson and Broyden histories and the implicit-differentiation
//!   op (a whole DEQ layer's gradient), ignn's sparse product (f32, f64, forward and backward),
//!   deq-inr's fused sine, bf16 where the op takes it, and one MDEQ forward pass. One line per
//!   check; exits 1 if any differs by more than its tolerance.
//! * `deq-gpu-check mdeq-step [mdeq-bench's options]`: `mdeq-bench` (the zoo's CIFAR-small
//!   training step, timed, with the peak GPU memory), so that one binary travels.
//! * `deq-gpu-check nccl [--device cuda:N]`: one rank of a data-parallel job (torchrun's
//!   environment, as `scripts/launch.sh` sets it): all-reduce, broadcast, barrier and the
//!   bucketed gradient mean through NCCL, checked against the values every rank can compute.
//!   `--force-nccl` goes through NCCL even in a world of one (where the job would otherwise
//!   use no collective at all).

use anyhow::{bail, ensure, Result};
use candle_core::{DType, Device, Module, Tensor, Var};
use deq_core::rng::DeqRng;
use deq_train::cli::DeviceArg;
use std::sync::Arc;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("mdeq-step") {
        use clap::Parser;
        let bench = mdeq::bench::BenchArgs::parse_from(std::iter::once("deq-gpu-check mdeq-step".to_string()).chain(args[1..].iter().cloned()));
        return mdeq::bench::run(&bench);
    }
    let device: DeviceArg = match args.iter().position(|a| a == "--device") {
        Some(i) => args.get(i + 1).ok_or_else(|| anyhow::anyhow!("--device needs a value"))?.parse().map_err(anyhow::Error::msg)?,
        None => DeviceArg::CudaLocal,
    };
    let dev = device.open()?;
    if !dev.is_cuda() {
        eprintln!("deq-gpu-check: `--device {device}` is not a CUDA device: comparing the CPU with itself (a check of the harness, not of CUDA)");
    }
    match args.first().map(String::as_str) {
        Some("ops") => ops(&dev),
        Some("nccl") => nccl(&dev, args.iter().any(|a| a == "--force-nccl")),
        _ => bail!("usage: deq-gpu-check ops|nccl [--device cuda:N] | mdeq-step [--device cuda:N --batch B --ift --f-max-iter N]"),
    }
}

/// Largest absolute difference between two tensors, compared in f64 on the CPU.
fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    ensure!(a.dims() == b.dims(), "shapes {:?} and {:?}", a.dims(), b.dims());
    let (a, b) = (a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?, b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?);
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}

struct Report {
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, r: Result<(f64, f64)>) {
        match r {
            Ok((diff, tol)) if diff <= tol => println!("ok    {name:<44} max |cuda - cpu| = {diff:.3e} (tolerance {tol:.0e})"),
            Ok((diff, tol)) => {
                self.failed += 1;
                println!("FAIL  {name:<44} max |cuda - cpu| = {diff:.3e} > {tol:.0e}");
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL  {name:<44} {e:#}");
            }
        }
    }
}

/// Runs `f` on the CPU and on `dev` with the same inputs (drawn on the CPU) and returns the
/// largest difference over its outputs.
fn same(dev: &Device, f: impl Fn(&Device) -> Result<Vec<Tensor>>) -> Result<f64> {
    let (a, b) = (f(&Device::Cpu)?, f(dev)?);
    ensure!(a.len() == b.len(), "{} outputs on the CPU, {} on the GPU", a.len(), b.len());
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(&b) {
        worst = worst.max(max_diff(x, y)?);
    }
    Ok(worst)
}

/// `op(x)` and `d sum(op(x) * g) / dx` for inputs drawn from `seed` on the CPU.
fn unary(dev: &Device, dtype: DType, shape: (usize, usize), seed: u64, op: fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Vec<Tensor>> {
    let mut rng = DeqRng::new(seed);
    let x = Var::from_tensor(&rng.randn(shape, DType::F64, &Device::Cpu)?.affine(3.0, 0.0)?.to_dtype(dtype)?.to_device(dev)?)?;
    let y = op(x.as_tensor())?;
    let g = rng.randn(y.shape(), DType::F64, &Device::Cpu)?.to_dtype(dtype)?.to_device(dev)?;
    let grads = (&y * &g)?.sum_all()?.backward()?;
    Ok(vec![y, grads.get(x.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient"))?.clone()])
}

fn ops(dev: &Device) -> Result<()> {
    let mut r = Report { failed: 0 };
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12), (DType::BF16, 3e-2)] {
        r.check(&format!("deq_core::ops::tanh {dtype:?}"), same(dev, |d| unary(d, dtype, (257, 129), 1, deq_core::ops::tanh)).map(|v| (v, tol)));
        r.check(&format!("deq_core::ops::sin {dtype:?}"), same(dev, |d| unary(d, dtype, (257, 129), 2, deq_core::ops::sin)).map(|v| (v, tol * 10.0)));
        r.check(&format!("deq_core::ops::transpose_last2 {dtype:?}"), same(dev, |d| unary(d, dtype, (67, 301), 3, deq_core::ops::transpose_last2)).map(|v| (v, 0.0)));
    }
    for (solver, tol) in [("anderson", 1e-4), ("broyden", 1e-4)] {
        r.check(&format!("DEQ layer, {solver} forward, IFT backward f32"), same(dev, |d| deq_layer(d, solver, DType::F32)).map(|v| (v, tol)));
        r.check(&format!("DEQ layer, {solver} forward, IFT backward f64"), same(dev, |d| deq_layer(d, solver, DType::F64)).map(|v| (v, 1e-9)));
    }
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-11)] {
        r.check(&format!("ignn::spmm (A^T X and its backward) {dtype:?}"), same(dev, |d| spmm(d, dtype)).map(|v| (v, tol)));
        r.check(&format!("deq_inr::kernels::sin_bias_add {dtype:?}"), same(dev, |d| sine(d, dtype)).map(|v| (v, tol)));
    }
    r.check("mdeq forward + phantom backward (MNIST-small, f32)", same(dev, mdeq_step).map(|v| (v, 2e-3)));
    ensure!(r.failed == 0, "{} check(s) failed", r.failed);
    println!("all CUDA paths agree with the CPU");
    Ok(())
}

/// A DEQ layer `tanh(W z + U x)` solved with `solver` and differentiated implicitly (Broyden
/// backward): the fixed point and the gradients of W and U.
fn deq_layer(dev: &Device, solver: &str, dtype: DType) -> Result<Vec<Tensor>> {
    use deq_core::norm::{NormLinear, NormOptions};
    let cfg = deq_core::DeqConfig::from_toml_str(&format!("f_solver = '{solver}'\nf_max_iter = 40\nf_tol = 1e-9\nift = true\nb_solver = 'broyden'\nb_max_iter = 40\nb_tol = 1e-9"))?;
    let deq = deq_core::Deq::new(cfg.clone())?;
    let mut rng = DeqRng::new(7);
    let w = NormLinear::new(48, 48, false, NormOptions::from_config(&cfg), &mut rng, dtype, &Device::Cpu)?;
    let wv: Vec<Var> = w.named_vars().into_iter().map(|(_, v)| v).collect();
    // The same parameters on the device.
    let w = NormLinear::new(48, 48, false, NormOptions::from_config(&cfg), &mut DeqRng::new(7), dtype, dev)?;
    for ((_, v), src) in w.named_vars().into_iter().zip(&wv) {
        v.set(&src.as_tensor().to_device(dev)?)?;
    }
    w.reset()?;
    let u = Var::from_tensor(&rng.randn((48, 6), dtype, &Device::Cpu)?.affine(0.5, 0.0)?.to_device(dev)?)?;
    let x = rng.randn((10, 6), dtype, &Device::Cpu)?.to_device(dev)?;
    let z0 = Tensor::zeros((10, 48), dtype, dev)?;
    let out = deq.forward1(|z, inp| deq_core::ops::tanh(&(w.forward(z)? + inp[0].matmul(&u.as_tensor().t()?)?)?), &[x], &z0)?;
    let z = out.last()[0].clone();
    let grads = deq_core::grad::backward(&z.sqr()?.sum_all()?)?;
    let mut res = vec![z];
    for (_, v) in w.named_vars() {
        res.push(grads.get(v.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient for W"))?.clone());
    }
    res.push(grads.get(u.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient for U"))?.clone());
    Ok(res)
}

/// A random sparse matrix (3,000 x 2,000, about 8 entries per row) times a dense (2,000, 33)
/// input, and the input's gradient (the transposed product).
fn spmm(dev: &Device, dtype: DType) -> Result<Vec<Tensor>> {
    use ignn::spmm::{Csr, SpMM};
    let mut rng = DeqRng::new(11);
    let (n_rows, n_cols, nnz) = (3000usize, 2000usize, 24_000usize);
    let rows: Vec<u32> = (0..nnz).map(|_| (rng.next_u64() % n_rows as u64) as u32).collect();
    let cols: Vec<u32> = (0..nnz).map(|_| (rng.next_u64() % n_cols as u64) as u32).collect();
    let vals: Vec<f32> = (0..nnz).map(|_| (rng.next_u64() % 1000) as f32 / 500.0 - 1.0).collect();
    let m = Arc::new(Csr::from_triplets(n_rows, n_cols, &rows, &cols, &vals));
    let mt = Arc::new(Csr::from_triplets(n_cols, n_rows, &cols, &rows, &vals));
    let op = SpMM::new(m, mt);
    let x = Var::from_tensor(&rng.randn((n_cols, 33), dtype, &Device::Cpu)?.to_device(dev)?)?;
    let g = rng.randn((n_rows, 33), dtype, &Device::Cpu)?.to_device(dev)?;
    let y = op.forward(x.as_tensor())?;
    let grads = (&y * &g)?.sum_all()?.backward()?;
    Ok(vec![y, grads.get(x.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient"))?.clone()])
}

/// deq-inr's `sin(a + c + u)` and the gradients of its three inputs.
fn sine(dev: &Device, dtype: DType) -> Result<Vec<Tensor>> {
    let mut rng = DeqRng::new(13);
    let mut var = |shape: &[usize]| -> Result<Var> { Ok(Var::from_tensor(&rng.randn(shape, dtype, &Device::Cpu)?.affine(2.0, 0.0)?.to_device(dev)?)?) };
    let (a, c, u) = (var(&[300, 64])?, var(&[64])?, var(&[300, 64])?);
    let y = deq_inr::kernels::sin_bias_add(a.as_tensor(), c.as_tensor(), u.as_tensor())?;
    let grads = y.sqr()?.sum_all()?.backward()?;
    let mut out = vec![y];
    for v in [&a, &c, &u] {
        out.push(grads.get(v.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient"))?.clone());
    }
    Ok(out)
}

/// One MDEQ-MNIST-small forward pass and phantom-gradient backward: logits and the gradient
/// of every parameter.
fn mdeq_step(dev: &Device) -> Result<Vec<Tensor>> {
    let cfg = mdeq::config::RunConfig::from_toml(mdeq::config::MNIST_SMALL, "built-in")?;
    let model = mdeq::Mdeq::new(cfg.model.clone(), cfg.deq.clone(), &mut DeqRng::new(0), DType::F32, dev)?;
    let x = DeqRng::new(5).randn((8, 1, 28, 28), DType::F32, &Device::Cpu)?;
    let y = Tensor::from_vec((0..8u32).collect::<Vec<_>>(), 8, &Device::Cpu)?.to_device(dev)?;
    let out = model.forward(&x, true)?;
    let loss = candle_nn::loss::cross_entropy(&out.logits, &y)?;
    let grads = deq_core::grad::backward(&loss)?;
    let mut res = vec![out.logits];
    for (_, v) in model.named_vars() {
        if let Some(g) = grads.get(v.as_tensor()) {
            res.push(g.clone());
        }
    }
    Ok(res)
}

/// One rank of an NCCL job: every collective checked against values each rank can compute.
fn nccl(dev: &Device, force: bool) -> Result<()> {
    use deq_train::dist::{all_reduce_mean_bucketed, all_reduce_sum_f64, broadcast_vars, Collective};
    let ctx = deq_train::DistContext::from_env()?;
    let (rank, world) = (ctx.rank, ctx.world_size);
    let c: Arc<dyn Collective> = match dev {
        #[cfg(feature = "nccl")]
        Device::Cuda(d) if force => Arc::new(deq_train::dist::NcclGroup::connect(ctx, d, deq_train::dist::dist_timeout()?)?),
        _ => {
            ensure!(!force, "--force-nccl needs a CUDA device and a build with the nccl feature");
            deq_train::collective_for(ctx, dev)?
        }
    };
    println!("rank {rank} of {world}: {:?} on {dev:?}", c.context());
    let tri = (world * (world + 1) / 2) as f64;
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        let x = (Tensor::ones(1000, dtype, dev)? * (rank as f64 + 1.0))?;
        let s = c.all_reduce_sum(&x)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        ensure!(s.iter().all(|&v| v == tri), "all_reduce {dtype:?}: {} instead of {tri}", s[0]);
    }
    let b = c.broadcast(&Tensor::new(&[rank as f32 + 0.5], dev)?, world - 1)?.to_vec1::<f32>()?;
    ensure!(b == [world as f32 - 0.5], "broadcast from the last rank: {b:?}");
    c.barrier()?;
    let m = all_reduce_sum_f64(&*c, &[1.0, rank as f64])?;
    ensure!(m == [world as f64, (world * (world - 1) / 2) as f64], "metrics: {m:?}");
    // Gradients: rank r's gradient of v is r + 1 everywhere; the mean is (world + 1) / 2.
    let v = Var::zeros((300, 7), DType::F32, dev)?;
    let w = Var::new(&[rank as f32], dev)?;
    let loss = (v.as_tensor().sum_all()? * (rank as f64 + 1.0))?;
    let mut g = loss.backward()?;
    all_reduce_mean_bucketed(&*c, &mut g, &[v.clone(), w.clone()], 1000)?;
    c.barrier()?;
    let gv = g.get(v.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient"))?.flatten_all()?.to_vec1::<f32>()?;
    ensure!(gv.iter().all(|&x| (x - (world as f32 + 1.0) / 2.0).abs() < 1e-6), "gradient mean {}", gv[0]);
    broadcast_vars(&*c, std::slice::from_ref(&w))?;
    ensure!(w.as_tensor().to_vec1::<f32>()? == [0.0], "initial parameters are rank 0's");
    println!("rank {rank}: all-reduce (f32, f64, bf16), broadcast, barrier, metrics and bucketed gradient mean agree (NCCL on CUDA with the nccl feature, else TCP)");
    Ok(())
}
