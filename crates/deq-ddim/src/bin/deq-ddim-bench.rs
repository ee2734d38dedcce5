//! `deq-ddim-bench`: the time of one UNet forward + backward of the epsilon loss (random
//! timesteps and noise, no optimiser step) for the MNIST and CIFAR-10 configurations, for
//! `scripts/bench_ddim_compare.sh` against `scripts/ddpm_reference.py bench` (the same model in
//! PyTorch).

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Parser;
use deq_core::rng::DeqRng;
use deq_ddim::train::epsilon_loss;
use deq_ddim::unet::{UNet, UNetConfig};

deq_train::fast_allocator!();

#[derive(Parser, Debug)]
#[command(name = "deq-ddim-bench", about = "Times the DDPM UNet's forward + backward")]
struct Args {
    /// `mnist` (configs/deq-ddim/mnist.toml's model) or `cifar10` (the DDIM code's).
    #[arg(long, default_value = "mnist")]
    config: String,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps (after 2 untimed ones).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Only the forward pass (no gradient), as in sampling.
    #[arg(long)]
    forward_only: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    deq_train::runtime::configure_cpu(Some(a.threads));
    let cfg = match a.config.as_str() {
        "mnist" => deq_ddim::config::RunConfig::from_toml(deq_ddim::config::MNIST, "mnist.toml").map_err(anyhow::Error::msg)?.model,
        "cifar10" => UNetConfig::default(),
        other => anyhow::bail!("--config {other}: mnist or cifar10"),
    };
    deq_train::run_on_pool(move || -> Result<()> {
        let dev = Device::Cpu;
        let model = UNet::new(&cfg, &mut DeqRng::new(0), DType::F32, &dev)?;
        let sch = deq_ddim::schedule::DiffusionConfig::default().schedule()?;
        let abar: Vec<f64> = (0..sch.len()).map(|i| sch.alpha_bar(i as i64)).collect();
        let mut rng = DeqRng::new(1);
        let x0 = rng.rand((a.batch, cfg.in_channels, cfg.resolution, cfg.resolution), -1.0, 1.0, DType::F32, &dev)?;
        let mut times = Vec::new();
        for i in 0..a.iters + 2 {
            let start = Instant::now();
            if a.forward_only {
                let t = candle_core::Tensor::full(500f32, a.batch, &dev)?;
                let y = model.forward(&x0, &t)?;
                std::hint::black_box(y.sum_all()?.to_scalar::<f32>()?);
            } else {
                let loss = epsilon_loss(&model, &abar, &x0, &mut rng, true)?;
                let g = loss.backward()?;
                std::hint::black_box(g);
            }
            if i >= 2 {
                times.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        println!("{}", serde_json::json!({"config": a.config, "batch": a.batch, "forward_only": a.forward_only, "params": model.num_params(), "ms_per_step": times[times.len() / 2]}));
        Ok(())
    })
}
