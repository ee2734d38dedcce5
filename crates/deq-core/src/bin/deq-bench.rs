//! `deq-bench`: the deq-core workloads, timed, one JSON object per line.
//!
//! Workloads match `scripts/bench_torchdeq.py` exactly: batch 64, width 256,
//! `f(z) = tanh(z W^T + x U^T)` with `W` at spectral norm 0.9, f32, the injection recomputed
//! inside `f`. `--write-problem FILE` writes the instance (drawn from `--seed`) once and
//! `--problem FILE` reads it, on both sides, so that the compared problems are identical.
//! `solve/*` solve to tolerance 1e-5 (each solver's own number of evaluations); `solve_iters20/*`
//! run exactly 20 iterations (equal work). `nfe_counted` / `f_calls_counted` count the calls of
//! `f`. Run with `cargo run --release -p deq-core --bin deq-bench`; set the thread count with
//! `RAYON_NUM_THREADS` (default 2, as the reference).

use candle_core::{DType, Device, Tensor, Var, D};
use clap::Parser;
use deq_core::problems::linear_tanh_problem;
use deq_core::rng::DeqRng;
use deq_core::{get_solver, Deq, DeqConfig, SolverOptions, StopMode};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Benchmarks deq-core's solvers and an IFT training step; prints JSON lines")]
struct Args {
    /// Minimum number of timed runs.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Keep running until this many seconds of timed work have passed.
    #[arg(long, default_value_t = 5.0)]
    min_time: f64,
    /// Upper bound on timed runs.
    #[arg(long, default_value_t = 2000)]
    max_runs: usize,
    /// Only run workloads whose name contains this string (repeatable).
    #[arg(long)]
    workload: Vec<String>,
    /// Random seed (of the problem when no `--problem` file is given).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Read the problem instance (W, U, x, head, labels) from this safetensors file, so that
    /// `scripts/bench_torchdeq.py --problem FILE` measures the identical instance.
    #[arg(long)]
    problem: Option<std::path::PathBuf>,
    /// Write the problem instance drawn from `--seed` to this safetensors file and exit.
    #[arg(long)]
    write_problem: Option<std::path::PathBuf>,
}

/// The benchmark's problem: the DEQ layer's weights and input, a 256 -> 10 head and labels.
struct Instance {
    w: Tensor,
    u: Tensor,
    x: Tensor,
    head_w: Tensor,
    head_b: Tensor,
    labels: Tensor,
}

impl Instance {
    /// Drawn from `seed` (W at spectral norm 0.9; the head as PyTorch's `Linear` initialises).
    fn draw(seed: u64) -> anyhow::Result<Self> {
        let p = linear_tanh_problem(64, 256, 0.9, seed, DType::F32)?;
        let mut rng = DeqRng::new(seed + 1);
        let bound = 1.0 / 16.0;
        let head_w = rng.rand((10, 256), -bound, bound, DType::F32, &Device::Cpu)?;
        let head_b = rng.rand(10, -bound, bound, DType::F32, &Device::Cpu)?;
        let labels: Vec<u32> = (0..64).map(|_| (rng.next_u64() % 10) as u32).collect();
        Ok(Self { w: p.w, u: p.u, x: p.x, head_w, head_b, labels: Tensor::from_vec(labels, 64, &Device::Cpu)? })
    }

    fn tensors(&self) -> std::collections::HashMap<String, Tensor> {
        [("w", &self.w), ("u", &self.u), ("x", &self.x), ("head_w", &self.head_w), ("head_b", &self.head_b), ("labels", &self.labels)].into_iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut t = candle_core::safetensors::load(path, &Device::Cpu).with_context(|| format!("reading problem {}", path.display()))?;
        let mut take = |k: &str, shape: &[usize], dtype: DType| -> anyhow::Result<Tensor> {
            let v = t.remove(k).with_context(|| format!("{}: no tensor `{k}`", path.display()))?;
            anyhow::ensure!(v.dims() == shape && v.dtype() == dtype, "{}: `{k}` is {:?} {:?}, expected {shape:?} {dtype:?}", path.display(), v.dims(), v.dtype());
            Ok(v)
        };
        Ok(Self {
            w: take("w", &[256, 256], DType::F32)?,
            u: take("u", &[256, 256], DType::F32)?,
            x: take("x", &[64, 256], DType::F32)?,
            head_w: take("head_w", &[10, 256], DType::F32)?,
            head_b: take("head_b", &[10], DType::F32)?,
            labels: take("labels", &[64], DType::U32)?,
        })
    }
}

fn time_runs(args: &Args, mut step: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    for _ in 0..3 {
        step()?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < args.max_runs && (times.len() < args.runs || start.elapsed().as_secs_f64() < args.min_time) {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn report(workload: &str, mut times: Vec<f64>, extra: serde_json::Value) {
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    let mut obj = serde_json::json!({
        "workload": workload,
        "impl": "deq-core",
        "median_s": median,
        "min_s": times[0],
        "n_runs": times.len(),
        "threads": std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(2),
    });
    // Which reverse pass the build uses (the cargo feature `pruned-vjp`).
    obj["vjp"] = serde_json::json!(if deq_core::grad::PRUNED { "pruned" } else { "full" });
    if let (Some(o), Some(e)) = (obj.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    println!("{obj}");
}

fn main() -> anyhow::Result<()> {
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        std::env::set_var("RAYON_NUM_THREADS", "2");
    }
    // candle's CPU matmul splits work with rayon. Called from a thread outside the pool, every
    // product parks the caller and wakes the workers (three context switches per product);
    // running the loop on a pool thread lets the caller take part in its own products, as the
    // main thread does in PyTorch's OpenMP regions.
    let mut result = None;
    rayon::scope(|_| result = Some(run()));
    result.expect("the benchmark ran")
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.write_problem {
        candle_core::safetensors::save(&Instance::draw(args.seed)?.tensors(), path)?;
        return Ok(());
    }
    let p = match &args.problem {
        Some(path) => Instance::load(path)?,
        None => Instance::draw(args.seed)?,
    };
    let problem = args.problem.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| format!("seed {}", args.seed));
    let wanted = |name: &str| args.workload.is_empty() || args.workload.iter().any(|w| name.contains(w.as_str()));
    // Weights are stored transposed and contiguous (what a Linear layer caches once per step);
    // the injection x U^T is still recomputed inside f, as in the reference script.
    let (wt, ut) = (deq_core::ops::transpose_last2(&p.w)?, deq_core::ops::transpose_last2(&p.u)?);
    let calls = std::cell::Cell::new(0usize);
    let f = |z: &Tensor| -> candle_core::Result<Tensor> {
        calls.set(calls.get() + 1);
        deq_core::ops::tanh(&z.matmul(&wt)?.add(&p.x.matmul(&ut)?)?)
    };

    // `solve/*`: to tolerance 1e-5 (each solver's own amount of work); `solve_iters20/*`: exactly
    // 20 iterations (tolerance 0), the same work for both implementations.
    for (prefix, max_iter, tol) in [("solve", 50, 1e-5), ("solve_iters20", 20, 0.0)] {
        for name in ["fixed_point_iter", "anderson", "broyden"] {
            let workload = format!("{prefix}/{name}");
            if !wanted(&workload) {
                continue;
            }
            let solver = get_solver(name)?;
            let opts = SolverOptions { max_iter, tol, stop_mode: StopMode::Abs, ..Default::default() };
            let z0 = Tensor::zeros((64, 256), DType::F32, &Device::Cpu)?;
            let mut last = None;
            let times = time_runs(&args, || {
                let mut ff = |z: &Tensor| f(z);
                calls.set(0);
                last = Some(solver.solve(&mut ff, &z0, &opts)?);
                Ok(())
            })?;
            let counted = calls.get();
            let sol = last.expect("ran");
            let fz = f(&sol.z)?;
            let res = (fz - &sol.z)?.sqr()?.sum(1)?.sqrt()?.max(0)?.to_scalar::<f32>()?;
            report(
                &workload,
                times,
                serde_json::json!({"nfe": sol.stats.nfe, "nfe_counted": counted, "residual_abs_max": res, "solver_abs_lowest_max": sol.stats.max_lowest(), "max_iter": max_iter, "tol": tol, "problem": problem}),
            );
        }
    }

    let workload = "train_step/ift_anderson30_fp30";
    if wanted(workload) {
        let w = Var::from_tensor(&p.w)?;
        let u = Var::from_tensor(&p.u)?;
        let head_w = Var::from_tensor(&p.head_w)?;
        let head_b = Var::from_tensor(&p.head_b)?;
        let cfg = DeqConfig { f_solver: "anderson".into(), f_max_iter: 30, b_solver: "fixed_point_iter".into(), b_max_iter: 30, ift: true, ..Default::default() };
        let deq = Deq::new(cfg)?;
        let z0 = Tensor::zeros((64, 256), DType::F32, &Device::Cpu)?;
        let mut info = (0usize, 0usize, 0f32, 0usize);
        let times = time_runs(&args, || {
            let (wt, ut) = (deq_core::ops::transpose_last2(w.as_tensor())?, deq_core::ops::transpose_last2(u.as_tensor())?);
            calls.set(0);
            let out = deq.forward1(
                |z, x| {
                    calls.set(calls.get() + 1);
                    deq_core::ops::tanh(&z.matmul(&wt)?.add(&x[0].matmul(&ut)?)?)
                },
                std::slice::from_ref(&p.x),
                &z0,
            )?;
            let logits = out.z().matmul(&head_w.as_tensor().t()?)?.broadcast_add(head_b.as_tensor())?;
            let loss = candle_nn::loss::cross_entropy(&logits, &p.labels)?;
            let grads = deq_core::grad::backward(&loss)?;
            let _gw = grads.get(w.as_tensor()).map(|g| g.detach());
            let b = out.backward_stats.get();
            info = (out.stats.nfe, b.first().map(|s| s.nfe).unwrap_or(0), loss.to_scalar::<f32>()?, calls.get());
            let _ = logits.max(D::Minus1)?;
            Ok(())
        })?;
        report(workload, times, serde_json::json!({"nfe": info.0, "f_calls_counted": info.3, "b_nfe": info.1, "loss": info.2, "includes_optimizer_step": false, "problem": problem}));
    }
    Ok(())
}
