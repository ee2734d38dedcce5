//! `deq-inr`: fit (Implicit)^2 representations (and the SIREN baseline) to images, audio and
//! video, and render fitted models.
//! `cargo run --release -p deq-inr -- fit image --config configs/deq-inr/image-siren_like-1L256D.toml`.
//! Every flag follows the convention of `deq_train::cli`.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use deq_inr::config::RunConfig;
use deq_inr::run::{load_task, render, run_one, saved_kind};
use deq_train::cli::{init_logging, RunDirArgs, TrainArgs};
use deq_train::plot::PlotArgs;
use std::path::PathBuf;

// jemalloc with transparent huge pages (see deq_train::memory): a DEQ-INR step's 64 MiB
// activations reuse mapped memory; huge pages took a step from 0.97 s to 0.58 s.
deq_train::fast_allocator!();

#[derive(Parser, Debug)]
#[command(name = "deq-inr", version, about = "(Implicit)^2: deep equilibrium implicit neural representations")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Kind {
    Image,
    Audio,
    Video,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Which {
    /// The DEQ-INR.
    Deq,
    /// The explicit SIREN baseline (same parameter count).
    Siren,
    /// Both, one after the other, with the same budget.
    Both,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Fit a signal; writes <out>/<model>/{config.toml, reconstruction, error map,
    /// metrics.jsonl, checkpoints/, model_f16.safetensors, summary.json} and prints the
    /// summaries. The signal is `data.path` (`--set data.path=images/astronaut.png`); budgets
    /// are `fit.steps` and `fit.max_seconds`.
    Fit {
        /// What the signal is (must match data.kind of the config).
        kind: Kind,
        #[command(flatten)]
        args: TrainArgs,
        /// Which network(s) to fit: the DEQ, the SIREN baseline of equal size, or both.
        #[arg(long, value_enum, default_value = "deq")]
        model: Which,
    },
    /// Render a fitted model (a model folder written by `fit`, e.g. runs/deq-inr/deq) with its
    /// saved configuration, on its test grid or for images on a `--height x --width` grid.
    Render {
        #[command(flatten)]
        run: RunDirArgs,
        /// Output file (.png or .wav) or folder (video).
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
        /// Image height (default: the test grid's).
        #[arg(long)]
        height: Option<usize>,
        /// Image width (default: the test grid's).
        #[arg(long)]
        width: Option<usize>,
        /// Use the f16 model file instead of the last checkpoint.
        #[arg(long)]
        f16: bool,
    },
    /// Draw training curves and solver diagnostics of a run folder as PNG files.
    Plot(PlotArgs),
}

const DEFAULT_OUT: &str = "runs/deq-inr";

fn main() -> std::process::ExitCode {
    deq_train::signals::exit_status(run())
}

fn run() -> Result<()> {
    init_logging();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Fit { kind, args, model } => {
            // SIGINT/SIGTERM: checkpoint, then exit 75 (continue with --resume).
            deq_train::signals::install()?;
            let loaded = args.config.load::<RunConfig>(None, None, args.seed)?;
            let (source, cfg) = (loaded.source(), loaded.config);
            let want = format!("{kind:?}").to_lowercase();
            anyhow::ensure!(cfg.data.kind == want, "{source}: data.kind is `{}`, but `fit {want}` was asked", cfg.data.kind);
            let out = args.out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_OUT));
            let device = args.runtime.device.open()?;
            // The [deq] options that act on the loss: refused where they could not act.
            let objective = deq_train::DeqObjective::new(&cfg.deq, cfg.fit.seed)?;
            if model == Which::Siren {
                objective.refuse("by the SIREN baseline, which is not a DEQ (fit --model deq or both)")?;
            }
            if cfg.fit.batch_size == 0 {
                objective.refuse_correction("with full-batch training (its steps refine the cached state instead of solving): set fit.batch_size to train on minibatches")?;
            }
            if args.dry_run {
                return Ok(deq_train::cli::print_dry_run(&source, &out, &cfg.data_path()?.display().to_string(), &cfg)?);
            }
            let threads = args.runtime.configure(0);
            tracing::info!(threads, "fitting into {}", out.display());
            let (train, test) = load_task(&cfg)?;
            let kinds: &[&str] = match model {
                Which::Deq => &["deq"],
                Which::Siren => &["siren"],
                Which::Both => &["deq", "siren"],
            };
            for k in kinds {
                let (s, _) = deq_train::run_on_pool(|| run_one(&cfg, k, &train, &test, &out.join(k), args.resume, &device))?;
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        Cmd::Render { run, file, height, width, f16 } => {
            let dir = run.out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_OUT).join("deq"));
            let saved = run.config.load_saved::<RunConfig>(&dir)?;
            let (source, cfg) = (saved.source(), saved.config);
            let kind = saved_kind(&dir)?;
            let device = run.runtime.device.open()?;
            let size = match (height, width) {
                (None, None) => None,
                (h, w) => Some((h.unwrap_or(0), w.unwrap_or(0))),
            };
            let model_file = if f16 { dir.join("model_f16.safetensors") } else { dir.join("checkpoints").join("latest.json") };
            anyhow::ensure!(model_file.exists(), "{}: not found (is --out a model folder written by `fit`?)", model_file.display());
            if run.dry_run {
                eprintln!("model: {kind} ({})", model_file.display());
                return Ok(deq_train::cli::print_dry_run(&source, &dir, &cfg.data_path()?.display().to_string(), &cfg)?);
            }
            run.runtime.configure(0);
            let r = deq_train::run_on_pool(|| render(&cfg, &kind, &dir, &file, size, f16, &device))?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::Plot(p) => deq_train::plot::run(&p, DEFAULT_OUT)?,
    }
    Ok(())
}
