//! The training-step benchmark behind `deq-lm-bench`: one step of a configuration (forward
//! over a segment after a full memory, loss, backward, clipping, Adam) on random tokens,
//! timed, printed as one JSON line in the format of `scripts/bench_lm_torch.py`; with
//! `--breakdown` the forward, the loss and the backward are timed apart, and with
//! `--f-max-iter`/`--ift` or `--unrolled` the peak heap of a step shows how memory grows (or
//! does not) with depth.

use crate::config::RunConfig;
use crate::train::build_model;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use deq_core::rng::DeqRng;
use deq_train::{Adam, Optimizer};
use std::time::Instant;

/// The benchmark's options (`deq-lm-bench --help`).
#[derive(Parser, Debug)]
#[command(about = "Times deq-lm training steps (configs/deq-lm/ptb-cpu.toml by default)")]
pub struct BenchArgs {
    /// Configuration.
    #[arg(long, default_value = "configs/deq-lm/ptb-cpu.toml")]
    pub config: std::path::PathBuf,
    /// Override a key (`section.key=value`, repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Vocabulary size of the random tokens (PTB's by default).
    #[arg(long, default_value_t = 10_000)]
    pub vocab: usize,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Minimum timed steps.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Untimed warm-up steps (the memory fills up during them).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Keep timing until this many seconds have passed.
    #[arg(long, default_value_t = 10.0)]
    pub min_time: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Time forward, loss and backward separately.
    #[arg(long)]
    pub breakdown: bool,
    /// Solve the forward for this many iterations (tolerance 0) and, with `--ift`,
    /// differentiate implicitly with as many backward iterations.
    #[arg(long)]
    pub f_max_iter: Option<usize>,
    /// Implicit differentiation.
    #[arg(long)]
    pub ift: bool,
    /// The explicit model of that depth instead: `f` applied `--unrolled` times from zero with
    /// backpropagation through every application.
    #[arg(long)]
    pub unrolled: Option<usize>,
}

fn config(args: &BenchArgs) -> Result<RunConfig> {
    let overrides = args.sets.iter().map(|s| deq_train::cli::Override::parse(s)).collect::<Result<Vec<_>, _>>()?;
    let mut cfg: RunConfig = deq_train::cli::load_with_overrides(&args.config, &overrides)?;
    if let Some(n) = args.f_max_iter {
        (cfg.deq.f_max_iter, cfg.deq.f_tol, cfg.deq.f_solver) = (n, 0.0, "fixed_point_iter".into());
        if args.ift {
            (cfg.deq.ift, cfg.deq.b_max_iter, cfg.deq.b_tol, cfg.deq.b_solver) = (true, n, 0.0, "fixed_point_iter".into());
        }
    }
    if let Some(k) = args.unrolled {
        (cfg.deq.f_max_iter, cfg.deq.ift, cfg.deq.grad) = (0, false, vec![k]);
    }
    cfg.check().map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

/// Runs the benchmark and prints its JSON line.
pub fn run(args: &BenchArgs) -> Result<()> {
    let cfg = config(args)?;
    let dev = Device::Cpu;
    let t = &cfg.train;
    let model = build_model(&cfg, args.vocab, &dev)?;
    let params: usize = model.named_vars().iter().map(|(_, v)| v.elem_count()).sum();
    let named = model.named_vars();
    let vars: Vec<_> = named.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Adam::new(named, t.lr, (0.9, 0.999), 1e-8, 0.0, false)?;
    let mut rng = DeqRng::new(args.seed);
    let n = t.batch_size * (t.tgt_len + 1);
    let ids: Vec<u32> = (0..n).map(|_| (rng.next_u64() % args.vocab as u64) as u32).collect();
    let all = Tensor::from_vec(ids, (t.batch_size, t.tgt_len + 1), &dev)?;
    let (x, y) = (all.narrow(1, 0, t.tgt_len)?.contiguous()?, all.narrow(1, 1, t.tgt_len)?.contiguous()?);
    let mut mem = model.empty_memory(t.batch_size)?;
    let mut first_loss = None;
    let mut nfe = Vec::new();
    let mut parts = [Vec::new(), Vec::new(), Vec::new()];
    let mut step_no = 0usize;
    let mut step = |timed: bool| -> Result<()> {
        let t0 = Instant::now();
        let out = model.forward_seeded(&x, &mem, true, step_no as u64)?;
        let t1 = Instant::now();
        let loss = model.loss(out.hidden.last().expect("a state"), &y)?;
        if args.breakdown {
            loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        }
        let t2 = Instant::now();
        let mut grads = deq_core::grad::backward(&loss)?;
        let t3 = Instant::now();
        if t.clip > 0.0 {
            deq_train::clip_grad_norm(&mut grads, &vars, t.clip)?;
        }
        opt.step(&grads)?;
        if first_loss.is_none() {
            first_loss = Some(loss.to_scalar::<f32>()?);
        }
        if timed {
            parts[0].push((t1 - t0).as_secs_f64());
            parts[1].push((t2 - t1).as_secs_f64());
            parts[2].push((t3 - t2).as_secs_f64());
        }
        nfe.push(out.stats.nfe as f64);
        mem = out.memory;
        step_no += 1;
        Ok(())
    };
    for _ in 0..args.warmup {
        step(false)?;
    }
    let (r, peak_heap) = deq_train::memory::peak_during(|| step(false));
    r?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < args.runs || start.elapsed().as_secs_f64() < args.min_time {
        let t0 = Instant::now();
        step(true)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let variant = match (args.unrolled, args.ift, args.f_max_iter) {
        (Some(k), _, _) => format!("unrolled{k}"),
        (None, true, Some(n)) => format!("ift{n}"),
        (None, false, Some(n)) => format!("solve{n}"),
        _ => "config".into(),
    };
    let mut rec = serde_json::json!({
        "workload": format!("deq-lm/{}/train_step", args.config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()),
        "impl": "deq-zoo-rs", "variant": variant, "median_s": median(&mut times), "runs": times.len(), "threads": args.threads,
        "params": params, "first_loss": first_loss, "nfe": nfe.iter().sum::<f64>() / nfe.len().max(1) as f64,
        "peak_step_heap_mb": peak_heap as f64 / (1 << 20) as f64, "peak_rss_mb": deq_train::memory::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64),
        "batch": t.batch_size, "tgt_len": t.tgt_len, "mem_len": cfg.model.mem_len,
    });
    if args.breakdown {
        rec["forward_s"] = serde_json::json!(median(&mut parts[0]));
        rec["loss_s"] = serde_json::json!(median(&mut parts[1]));
        rec["backward_s"] = serde_json::json!(median(&mut parts[2]));
    }
    println!("{rec}");
    Ok(())
}
