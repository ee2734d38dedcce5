//! `deq-inr-bench`: time of one amortised DEQ-INR training step (siren_like, a full
//! `size x size` grid as one batch, no solver iterations, 3 phantom-gradient steps, MSE, Adam),
//! the workload of `scripts/bench_inr_torch.py`; `scripts/bench_inr_compare.sh` runs both.
//! `--carried --grad 1` times the carried-adjoint step instead. `--write-instance` /
//! `--instance` share the coordinates, targets and initial weights with the PyTorch twin.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use deq_core::rng::DeqRng;
use deq_inr::model::{zoo_deq, AmortisedGrad, DeqInr, InrModelConfig};
use deq_inr::net::{AmortisedCache, InrNet};
use deq_train::{Adam, Optimizer};
use std::time::Instant;

// The same allocator and options as the `deq-inr` binary.
deq_train::fast_allocator!();

#[derive(Parser, Debug)]
#[command(name = "deq-inr-bench", about = "DEQ-INR amortised training-step time")]
struct Args {
    /// Width D.
    #[arg(long, default_value_t = 256)]
    width: usize,
    /// Layers L inside f.
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Grid side.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Tracked steps per training step.
    #[arg(long, default_value_t = 3)]
    grad: usize,
    /// Carried-adjoint gradient instead of the phantom gradient.
    #[arg(long)]
    carried: bool,
    /// Write the instance (coordinates, targets and the model's initial weights) to this
    /// safetensors file and exit: `scripts/bench_inr_torch.py --instance` reads it, so that
    /// both sides train the identical problem.
    #[arg(long)]
    write_instance: Option<std::path::PathBuf>,
    /// Read the coordinates and targets from an instance file (the initial weights are checked
    /// equal to the file's).
    #[arg(long)]
    instance: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    deq_train::runtime::configure_cpu(Some(a.threads));
    let dev = Device::Cpu;
    let coords = deq_inr::task::image_coords(a.size, a.size, 0, 0, 1);
    let target: Vec<f32> = coords.chunks(2).map(|p| (3.0 * p[0]).sin() * (2.0 * p[1]).cos()).collect();
    let n = a.size * a.size;
    let mut x = Tensor::from_vec(coords, (n, 2), &dev)?;
    let mut y = Tensor::from_vec(target, (n, 1), &dev)?;
    let amortised_grad = if a.carried { AmortisedGrad::CarriedAdjoint } else { AmortisedGrad::Phantom };
    let cfg = InrModelConfig { layers: a.layers, width: a.width, amortised_grad, ..Default::default() };
    let deq = deq_core::DeqConfig { grad: vec![a.grad], ..zoo_deq(100) };
    let net = InrNet::Deq(DeqInr::new(cfg, 2, 1, deq, &mut DeqRng::new(0), DType::F32, &dev)?);
    if let Some(path) = &a.write_instance {
        deq_train::bench_instance::save(path, &net.named_vars(), vec![("x", x), ("y", y)])?;
        return Ok(());
    }
    if let Some(path) = &a.instance {
        let mut t = deq_train::bench_instance::load(path, &net.named_vars())?;
        x = deq_train::bench_instance::take(&mut t, "x", path)?;
        y = deq_train::bench_instance::take(&mut t, "y", path)?;
        anyhow::ensure!(x.dims() == [n, 2] && y.dims() == [n, 1], "{}: not a {}x{} grid", path.display(), a.size, a.size);
    }
    let mut opt = Adam::new(net.named_vars(), 1e-3, (0.9, 0.999), 1e-8, 0.0, false)?;
    let mut first_loss = f32::NAN;
    let times = deq_train::run_on_pool(|| -> Result<Vec<f64>> {
        let mut cache = AmortisedCache::default();
        let mut times = Vec::new();
        for i in 0..a.steps + 2 {
            let t0 = Instant::now();
            let fw = net.train_forward(&x, Some(&mut cache))?;
            let loss = (&fw.pred - &y)?.sqr()?.mean_all()?;
            if i == 0 {
                first_loss = loss.to_scalar::<f32>()?;
            }
            let grads = deq_core::grad::backward(&fw.backward_target(loss)?)?;
            net.finish_step(&grads, Some(&mut cache))?;
            opt.step(&grads)?;
            if i >= 2 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(times)
    })?;
    let mut s = times.clone();
    s.sort_by(|p, q| p.total_cmp(q));
    println!(
        "{}",
        serde_json::json!({"impl": "deq-zoo-rs", "workload": format!("inr/siren_like-{}L{}D/{}x{}/amortised_step{}", a.layers, a.width, a.size, a.size, if a.carried { format!("/carried_grad{}", a.grad) } else if a.grad != 3 { format!("/grad{}", a.grad) } else { String::new() }),
            "median_s": s[s.len() / 2], "min_s": s[0], "steps": s.len(), "threads": a.threads, "first_loss": first_loss, "instance": a.instance})
    );
    Ok(())
}
