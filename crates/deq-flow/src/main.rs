//! `deq-flow`: train, evaluate and run DEQ-Flow.
//!
//! `cargo run --release -p deq-flow -- train` trains the CPU configuration
//! (`configs/deq-flow/synthetic-tiny.toml`) on pairs generated from the committed photographs;
//! `eval` scores a run on Sintel, KITTI, Chairs or a folder of pairs; `infer` writes the flow of
//! two frames as `.flo` and a colour-wheel PNG. Every flag follows `deq_train::cli` (`--config`,
//! `--set`, TorchDEQ's flags, `--out`, `--resume`, `--seed`, `--threads`, `--device`,
//! `--dry-run`); `RUST_LOG` selects log lines.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use deq_flow::config::{RunConfig, SYNTHETIC_TINY};
use deq_flow::eval::{self, markdown};
use deq_flow::infer::{predict, warm_start, PadMode, Padder};
use deq_flow::io::frames::{write_rgb_png, Frame};
use deq_flow::io::{flo, read_flow, viz};
use deq_flow::train::{eval_deq, load_textures, load_trained, train, RunOptions};
use deq_train::cli::{init_logging, RunDirArgs, TrainArgs};
use deq_train::plot::PlotArgs;

#[derive(Parser, Debug)]
#[command(name = "deq-flow", version, about = "DEQ-Flow: deep equilibrium optical flow")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DatasetArg {
    /// MPI-Sintel training, clean and final passes.
    Sintel,
    /// KITTI-2015 training.
    Kitti,
    /// FlyingChairs validation split.
    Chairs,
    /// A folder of pairs (`--root`; see datasets/README.md for the layout).
    Folder,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train a model (default: configs/deq-flow/synthetic-tiny.toml, a small model on generated pairs).
    Train {
        #[command(flatten)]
        args: TrainArgs,
        /// Stop after this many optimiser steps in total (smoke runs; 0: the configured number).
        #[arg(long, default_value_t = 0)]
        max_steps: usize,
    },
    /// Evaluate the latest checkpoint of a run: per-pair table, EPE, 1/3/5-px, F1-all, NFE.
    Eval {
        #[command(flatten)]
        run: RunDirArgs,
        /// The dataset (default: the run's `eval.datasets`).
        #[arg(long, value_enum)]
        dataset: Option<DatasetArg>,
        /// Where the dataset is (default: `$DEQ_DATA_DIR/<name>`, then `datasets/<name>`).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// At most this many pairs (0: all).
        #[arg(long, default_value_t = 0)]
        max_pairs: usize,
        /// Also write the report as JSON here.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write one picture per pair into this folder: first frame, ground truth and
        /// prediction side by side, both flows on the colour wheel at the truth's scale.
        #[arg(long, value_name = "DIR")]
        pictures: Option<PathBuf>,
    },
    /// The flow from one frame to another: a `.flo` file and optionally a colour-wheel PNG.
    Infer {
        #[command(flatten)]
        run: RunDirArgs,
        /// First frame (PNG or JPEG, any size).
        frame1: PathBuf,
        /// Second frame (same size).
        frame2: PathBuf,
        /// The `.flo` file to write.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Also write the flow as a Middlebury colour-wheel PNG.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
        /// Padding to a multiple of 8.
        #[arg(long, value_enum, default_value = "sintel")]
        pad: PadArg,
        /// Warm start from the flow of the previous pair of a sequence (`.flo`, `.pfm` or KITTI
        /// PNG, the frames' size), forward-interpolated at 1/8 resolution as RAFT does.
        #[arg(long, value_name = "FILE")]
        init: Option<PathBuf>,
    },
    /// Write generated training pairs (frames, `.flo` ground truth, flow pictures) to a folder.
    Generate {
        #[command(flatten)]
        args: TrainArgs,
        /// How many pairs.
        #[arg(long, default_value_t = 4)]
        count: usize,
    },
    /// Draw training curves and solver diagnostics of a run folder as PNG files.
    Plot(PlotArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PadArg {
    Sintel,
    Kitti,
}

const DEFAULT_CONFIG: &str = "configs/deq-flow/synthetic-tiny.toml";
const DEFAULT_RUN: &str = "runs/deq-flow-synthetic-tiny";

fn run_dir(run: &RunDirArgs) -> PathBuf {
    run.out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_RUN))
}

fn dry_run(cfg: &RunConfig, source: &str, out: &Path) -> Result<()> {
    let data = match cfg.data.train {
        deq_flow::config::TrainData::Synthetic => format!("generated pairs from {}", cfg.data.images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")),
        other => format!("{other:?}"),
    };
    Ok(deq_train::cli::print_dry_run(source, out, &data, cfg)?)
}

fn check_run(dir: &Path) -> Result<()> {
    anyhow::ensure!(dir.join("checkpoints").join("latest.json").exists(), "{}: no checkpoints/latest.json (train a run first)", dir.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    deq_train::signals::exit_status(run())
}

fn run() -> Result<()> {
    init_logging();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Train { args, max_steps } => {
            // SIGINT/SIGTERM: checkpoint, then exit 75 (continue with --resume).
            deq_train::signals::install()?;
            let loaded = args.config.load::<RunConfig>(Some(DEFAULT_CONFIG), Some(SYNTHETIC_TINY), args.seed)?;
            let (source, out) = (loaded.source(), args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("deq-flow-{}", loaded.name))));
            let cfg = loaded.config;
            let device = args.runtime.device.open()?;
            anyhow::ensure!(device.is_cpu(), "deq-flow's correlation lookup has CPU kernels only in this release; `--device {:?}` cannot be honoured, use `--device cpu`", args.runtime.device);
            if args.dry_run {
                return dry_run(&cfg, &source, &out);
            }
            let threads = args.runtime.configure(cfg.train.threads);
            tracing::info!(threads, "training into {}", out.display());
            deq_train::run_on_pool(move || -> Result<()> {
                let s = train(&cfg, &RunOptions { out_dir: out.clone(), resume: args.resume, max_steps, device })?;
                let evals: serde_json::Map<String, serde_json::Value> = s.eval.iter().map(|r| (r.name.clone(), serde_json::json!({"epe": r.epe, "1px": r.px[0], "f1": r.f1, "nfe": r.nfe}))).collect();
                println!("{}", serde_json::json!({"steps": s.steps, "seconds": s.seconds, "params": s.params, "eval": evals, "out": out.display().to_string()}));
                Ok(())
            })
        }
        Cmd::Eval { run, dataset, root, max_pairs, json, pictures } => {
            let dir = run_dir(&run);
            let saved = run.config.load_saved::<RunConfig>(&dir)?;
            let (source, mut cfg) = (saved.source(), saved.config);
            let device = run.runtime.device.open()?;
            anyhow::ensure!(device.is_cpu(), "deq-flow runs on the CPU only in this release; use `--device cpu`");
            let names: Vec<String> = match dataset {
                None => eval::expand(&cfg.eval.datasets),
                Some(DatasetArg::Sintel) => vec!["sintel-clean".into(), "sintel-final".into()],
                Some(DatasetArg::Kitti) => vec!["kitti".into()],
                Some(DatasetArg::Chairs) => vec!["chairs".into()],
                Some(DatasetArg::Folder) => {
                    let r = root.clone().context("--dataset folder needs --root DIR")?;
                    vec![format!("folder:{}", r.display())]
                }
            };
            if max_pairs > 0 {
                cfg.eval.max_pairs = max_pairs;
            }
            let root = if matches!(dataset, Some(DatasetArg::Folder)) { None } else { root };
            if run.dry_run {
                check_run(&dir)?;
                for n in &names {
                    eval::dataset(n, root.as_deref(), cfg.eval.pad)?;
                }
                return dry_run(&cfg, &source, &dir);
            }
            run.runtime.configure(cfg.train.threads);
            deq_train::run_on_pool(move || -> Result<()> {
                let model = load_trained(&cfg, &dir, &device).with_context(|| format!("loading the run in {}", dir.display()))?;
                let deq = eval_deq(&cfg)?;
                let mut reports = Vec::new();
                for n in &names {
                    let (mut specs, pad, sparse) = eval::dataset(n, root.as_deref(), cfg.eval.pad)?;
                    if cfg.eval.max_pairs > 0 {
                        specs.truncate(cfg.eval.max_pairs);
                    }
                    let r = eval::evaluate(&model, &deq, n, &specs, pad, sparse, &device, true, pictures.as_deref())?;
                    eprintln!("{}", markdown(&r));
                    println!("{}", serde_json::json!({"dataset": r.name, "epe": r.epe, "epe_pair_mean": r.epe_pair_mean, "1px": r.px[0], "3px": r.px[1], "5px": r.px[2], "f1": r.f1, "nfe": r.nfe, "rel_residual": r.rel_residual, "seconds": r.seconds, "pairs": r.pairs.len()}));
                    reports.push(r);
                }
                if let Some(p) = json {
                    std::fs::write(&p, serde_json::to_string_pretty(&reports)?).with_context(|| format!("writing {}", p.display()))?;
                }
                Ok(())
            })
        }
        Cmd::Infer { run, frame1, frame2, output, png, pad, init } => {
            let dir = run_dir(&run);
            let saved = run.config.load_saved::<RunConfig>(&dir)?;
            let (source, cfg) = (saved.source(), saved.config);
            let device = run.runtime.device.open()?;
            anyhow::ensure!(device.is_cpu(), "deq-flow runs on the CPU only in this release; use `--device cpu`");
            let a = Frame::read(&frame1)?;
            let b = Frame::read(&frame2)?;
            let init = match &init {
                Some(p) => {
                    let f = read_flow(p)?;
                    anyhow::ensure!((f.height, f.width) == (a.height, a.width), "{}: a {}x{} flow cannot warm-start {}x{} frames", p.display(), f.height, f.width, a.height, a.width);
                    Some(f)
                }
                None => None,
            };
            if run.dry_run {
                check_run(&dir)?;
                return dry_run(&cfg, &source, &dir);
            }
            run.runtime.configure(cfg.train.threads);
            deq_train::run_on_pool(move || -> Result<()> {
                let model = load_trained(&cfg, &dir, &device).with_context(|| format!("loading the run in {}", dir.display()))?;
                let deq = eval_deq(&cfg)?;
                let mode = match pad {
                    PadArg::Sintel => PadMode::Sintel,
                    PadArg::Kitti => PadMode::Kitti,
                };
                let flow_init = match &init {
                    Some(f) => Some(warm_start(f, &Padder::new(a.height, a.width, mode), &device)?),
                    None => None,
                };
                let p = predict(&model, &deq, &a, &b, mode, flow_init.as_ref(), &device)?;
                flo::write(&output, &p.flow)?;
                if let Some(png) = &png {
                    write_rgb_png(png, p.flow.width, p.flow.height, &viz::flow_to_rgb(&p.flow, None))?;
                }
                println!("{}", serde_json::json!({"flo": output.display().to_string(), "png": png.map(|p| p.display().to_string()), "height": p.flow.height, "width": p.flow.width, "max_flow": p.flow.max_magnitude(), "nfe": p.nfe, "rel_residual": p.rel_residual}));
                Ok(())
            })
        }
        Cmd::Generate { args, count } => {
            let loaded = args.config.load::<RunConfig>(Some(DEFAULT_CONFIG), Some(SYNTHETIC_TINY), args.seed)?;
            let source = loaded.source();
            let cfg = loaded.config;
            let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs/deq-flow-generated"));
            if args.dry_run {
                return dry_run(&cfg, &source, &out);
            }
            args.runtime.configure(cfg.train.threads);
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let generator = deq_flow::data::synth::Generator::new(load_textures(&cfg.data.images)?, cfg.data.synthetic.clone()).map_err(anyhow::Error::msg)?;
            for i in 0..count {
                let seed = deq_train::data::sample_rng(cfg.train.seed, 0, i).next_u64();
                let p = generator.pair(seed);
                let (h, w) = (p.flow.height, p.flow.width);
                let bytes = |v: &[f32]| v.iter().map(|x| x.round().clamp(0.0, 255.0) as u8).collect::<Vec<u8>>();
                write_rgb_png(&out.join(format!("{i:04}_img1.png")), w, h, &bytes(&p.img1))?;
                write_rgb_png(&out.join(format!("{i:04}_img2.png")), w, h, &bytes(&p.img2))?;
                flo::write(&out.join(format!("{i:04}_flow.flo")), &p.flow)?;
                write_rgb_png(&out.join(format!("{i:04}_flow.png")), w, h, &viz::flow_to_rgb(&p.flow, None))?;
                let occ: Vec<u8> = p.occluded.iter().flat_map(|&o| [(o * 255.0) as u8; 3]).collect();
                write_rgb_png(&out.join(format!("{i:04}_occlusion.png")), w, h, &occ)?;
            }
            println!("{}", serde_json::json!({"pairs": count, "out": out.display().to_string()}));
            Ok(())
        }
        Cmd::Plot(p) => Ok(deq_train::plot::run(&p, DEFAULT_RUN)?),
    }
}
