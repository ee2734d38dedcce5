//! The MDEQ training-step benchmark behind `mdeq-bench` (and the GPU check's `mdeq-step`):
//! one step of the zoo's CIFAR-small model (forward solve, phantom-gradient or implicit
//! backward, SGD update) on random CIFAR-shaped data, timed, printed as one JSON line in the
//! format of `scripts/bench_mdeq_torch.py`.

use crate::config::RunConfig;
use crate::Mdeq;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use deq_core::rng::DeqRng;
use deq_train::{Optimizer, Sgd};
use std::time::Instant;

/// The benchmark's options (`mdeq-bench --help`).
#[derive(Parser, Debug)]
#[command(about = "Times MDEQ training steps (CIFAR-small at batch 32 by default)")]
pub struct BenchArgs {
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Minimum timed steps.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Keep timing until this many seconds have passed.
    #[arg(long, default_value_t = 5.0)]
    pub min_time: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the instance (the batch, its labels and the model's initial weights, drawn from
    /// `--seed`) to this safetensors file and exit: `scripts/bench_mdeq_torch.py --instance`
    /// reads it, so that both sides train the identical problem.
    #[arg(long)]
    pub write_instance: Option<std::path::PathBuf>,
    /// Read the batch and labels from an instance file (the initial weights, drawn from
    /// `--seed`, are checked equal to the file's).
    #[arg(long)]
    pub instance: Option<std::path::PathBuf>,
    /// Device: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: deq_train::cli::DeviceArg,
    /// Implicit differentiation (IFT, backward solve) instead of the config's phantom gradient.
    #[arg(long)]
    pub ift: bool,
    /// Forward solver iterations (the config's 22 by default); with `--ift` also the backward
    /// solve's, to show that memory does not grow with them.
    #[arg(long)]
    pub f_max_iter: Option<usize>,
}

const CIFAR_SMALL: &str = include_str!("../../../configs/mdeq/cifar-small.toml");

/// Runs the benchmark and prints its JSON line.
pub fn run(args: &BenchArgs) -> Result<()> {
    let mut cfg = RunConfig::from_toml(CIFAR_SMALL, "configs/mdeq/cifar-small.toml")?;
    if args.ift {
        cfg.deq.ift = true;
    }
    if let Some(n) = args.f_max_iter {
        cfg.deq.f_max_iter = n;
        cfg.deq.b_max_iter = n;
        // A fixed number of iterations: the memory comparison needs the solver to run them all.
        cfg.deq.f_tol = 0.0;
        cfg.deq.b_tol = 0.0;
    }
    let dev = args.device.open()?;
    let instance_dev = Device::Cpu;
    let mut rng = DeqRng::new(args.seed);
    let model = Mdeq::new(cfg.model.clone(), cfg.deq.clone(), &mut rng, DType::F32, &dev)?;
    let mut opt = Sgd::new(model.named_vars(), cfg.train.lr, cfg.train.momentum, false, cfg.train.weight_decay)?;
    let mut x = rng.randn((args.batch, 3, 32, 32), DType::F32, &instance_dev)?;
    let mut labels = Tensor::from_vec((0..args.batch).map(|_| (rng.next_u64() % 10) as u32).collect::<Vec<_>>(), args.batch, &instance_dev)?;
    if let Some(path) = &args.write_instance {
        deq_train::bench_instance::save(path, &model.named_vars(), vec![("x", x), ("labels", labels)])?;
        return Ok(());
    }
    if let Some(path) = &args.instance {
        let mut t = deq_train::bench_instance::load(path, &model.named_vars())?;
        x = deq_train::bench_instance::take(&mut t, "x", path)?;
        labels = deq_train::bench_instance::take(&mut t, "labels", path)?;
        anyhow::ensure!(x.dims() == [args.batch, 3, 32, 32] && labels.dims() == [args.batch], "{}: the batch is not {} CIFAR images", path.display(), args.batch);
    }
    let (x, labels) = (x.to_device(&dev)?, labels.to_device(&dev)?);
    let mut nfe = Vec::new();
    let mut first_loss = None;
    let mut step = || -> Result<()> {
        let out = model.forward(&x, true)?;
        let loss = candle_nn::loss::cross_entropy(&out.logits, &labels)?;
        if first_loss.is_none() {
            first_loss = Some(loss.to_scalar::<f32>()?);
        }
        let grads = deq_core::grad::backward(&loss)?;
        opt.step(&grads)?;
        nfe.push(out.stats.nfe as f64);
        dev.synchronize()?;
        Ok(())
    };
    for _ in 0..args.warmup {
        step()?;
    }
    let peak_mb = peak_step_memory_mb(&dev, &mut step)?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < args.runs || start.elapsed().as_secs_f64() < args.min_time {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean_nfe = nfe.iter().sum::<f64>() / nfe.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "workload": format!("mdeq/cifar-small/train_step_b{}", args.batch), "impl": "deq-zoo-rs",
            "median_s": times[times.len() / 2], "min_s": times[0], "n_runs": times.len(), "threads": args.threads,
            "params": model.num_params(), "nfe": mean_nfe, "first_loss": first_loss, "instance": args.instance,
            "device": args.device.to_string(), "ift": cfg.deq.ift, "f_max_iter": cfg.deq.f_max_iter, "peak_gpu_mb": peak_mb,
        })
    );
    Ok(())
}

/// The peak GPU memory of one more step, in MiB (None on the CPU).
fn peak_step_memory_mb(dev: &Device, step: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        deq_train::gpu_memory::reset_peak(dev)?;
        step()?;
        return Ok(Some(deq_train::gpu_memory::peak_bytes(dev)? as f64 / (1 << 20) as f64));
    }
    let _ = (dev, step);
    Ok(None)
}
