//! `deq-flow-bench`: the median time of one DEQ-Flow training step (forward with the supervised
//! states, fixed-point correction loss, backward, clipping, AdamW) on a random batch, for
//! `scripts/bench_flow_compare.sh` against `scripts/bench_flow_torch.py`.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use deq_core::rng::DeqRng;
use deq_flow::config::RunConfig;
use deq_flow::loss::sequence_loss;
use deq_flow::model::deq_layer;
use deq_flow::train::build_model;
use deq_train::cli::parse_with_overrides;
use deq_train::cli::Override;
use deq_train::{clip_grad_norm, Adam, Optimizer};

#[derive(Parser, Debug)]
#[command(name = "deq-flow-bench", about = "Times DEQ-Flow's training step")]
struct Args {
    /// The configuration whose `[model]` and `[deq]` tables define the model.
    #[arg(long, default_value = "configs/deq-flow/synthetic-tiny.toml")]
    config: std::path::PathBuf,
    /// `TABLE.KEY=VALUE` overrides.
    #[arg(long = "set")]
    sets: Vec<String>,
    /// Pairs per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Frame height (default: the configured crop).
    #[arg(long, default_value_t = 0)]
    height: usize,
    /// Frame width (default: the configured crop).
    #[arg(long, default_value_t = 0)]
    width: usize,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// At least this many timed steps.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// And at least this many seconds.
    #[arg(long, default_value_t = 10.0)]
    min_time: f64,
    /// A label for the output line.
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    deq_train::runtime::configure_cpu(Some(args.threads));
    deq_train::run_on_pool(move || -> Result<()> {
        let text = std::fs::read_to_string(&args.config)?;
        let sets = args.sets.iter().map(|s| Override::parse(s)).collect::<Result<Vec<_>, _>>()?;
        let mut cfg: RunConfig = parse_with_overrides(&text, &args.config.display().to_string(), &sets)?;
        cfg.train.dtype = "f32".into();
        cfg.validate().map_err(anyhow::Error::msg)?;
        let (h, w) = (if args.height > 0 { args.height } else { cfg.data.augment.crop[0] }, if args.width > 0 { args.width } else { cfg.data.augment.crop[1] });
        let dev = Device::Cpu;
        let model = build_model(&cfg, &dev)?;
        let deq = deq_layer(&cfg.deq, true, 0)?;
        let mut opt = Adam::new(model.named_vars(), cfg.train.lr, (0.9, 0.999), 1e-8, cfg.train.weight_decay, true)?;
        let vars: Vec<_> = model.named_vars().into_iter().map(|(_, v)| v).collect();
        let mut rng = DeqRng::new(0);
        let b = args.batch;
        let img1 = rng.rand((b, 3, h, w), 0.0, 255.0, DType::F32, &dev)?;
        let img2 = rng.rand((b, 3, h, w), 0.0, 255.0, DType::F32, &dev)?;
        let gt = (rng.randn((b, 2, h, w), DType::F32, &dev)? * 5.0)?;
        let valid = Tensor::ones((b, h, w), DType::F32, &dev)?;
        let mut nfe = 0;
        let mut step = || -> Result<f64> {
            let out = model.forward(&img1, &img2, None, &deq, true)?;
            nfe = out.stats.nfe;
            let loss = sequence_loss(&out.flows, &gt, &valid, cfg.deq.gamma, cfg.train.max_flow)?;
            let mut grads = deq_core::grad::backward(&loss)?;
            clip_grad_norm(&mut grads, &vars, cfg.train.clip)?;
            opt.step(&grads)?;
            Ok(loss.to_scalar::<f32>()? as f64)
        };
        let first = step()?;
        let mut times = Vec::new();
        let end = Instant::now() + std::time::Duration::from_secs_f64(args.min_time);
        while times.len() < args.runs || Instant::now() < end {
            let t = Instant::now();
            step()?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = if times.len() % 2 == 1 { times[times.len() / 2] } else { 0.5 * (times[times.len() / 2 - 1] + times[times.len() / 2]) };
        println!("{}", serde_json::json!({"impl": "rust", "label": args.label, "batch": b, "height": h, "width": w, "median_s": median, "runs": times.len(), "params": model.parameter_count(), "first_loss": first, "nfe": nfe}));
        Ok(())
    })
}
