//! `deq-inr`: fit (Implicit)^2 representations (and the SIREN baseline) to images, audio and
//! video, and render fitted models.
//! `cargo run --release -p deq-inr -- fit image --config configs/deq-inr/image-siren_like-1L256D.toml`.

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use deq_core::DeqArgs;
use deq_inr::config::RunConfig;
use deq_inr::run::{load_task, render, run_one};
use std::path::PathBuf;

// jemalloc keeps freed pages mapped and reuses them: the 64 MiB activations of a full-image
// step are reallocated every op, and glibc serves allocations that large with fresh mmaps
// (page faults and zeroing on every touch; about a third of a step's time).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options: no separate eagerly-purged arena for large allocations, freed pages kept
/// for 30 s, so that a step's 64 MiB tensors reuse already-mapped memory, and transparent huge
/// pages for the heap (`thp:always`; the kernel's default is `madvise`). Huge pages take a DEQ-INR
/// step from 0.97 s to 0.58 s: with 4 KiB pages a third of the time went to page faults, TLB
/// shootdowns and jemalloc's zeroing of `calloc`ed gradients by purging.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &u8 = &b"oversize_threshold:0,dirty_decay_ms:30000,muzzy_decay_ms:30000,thp:always\0"[0];

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
    /// Fit a signal; writes <out>/<model>/{reconstruction, error map, metrics.jsonl,
    /// checkpoints/, model_f16.safetensors, summary.json} and prints the summaries.
    Fit {
        /// What the signal is (must match data.kind of the config).
        kind: Kind,
        /// Run configuration (TOML: [data], [model], [siren], [fit], [deq]).
        #[arg(long)]
        config: PathBuf,
        /// Override data.path (a file, or a folder of frames for video).
        #[arg(long)]
        input: Option<String>,
        /// Output folder.
        #[arg(long, default_value = "runs/deq-inr")]
        out: PathBuf,
        /// Which network to fit.
        #[arg(long, value_enum, default_value = "deq")]
        model: Which,
        /// Override fit.steps.
        #[arg(long)]
        steps: Option<usize>,
        /// Override fit.max_seconds (training-time budget per model).
        #[arg(long)]
        max_seconds: Option<f64>,
        /// Override fit.seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override siren.layers (sine layers of the baseline; 0: the DEQ's L + 1).
        #[arg(long)]
        siren_layers: Option<usize>,
        /// Set any configuration key, `section.key=value` (repeatable), e.g.
        /// `--set fit.lr=3e-3 --set fit.lr_schedule=cosine --set model.input_scale=128`.
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        sets: Vec<String>,
        /// Continue from the checkpoints in the output folder.
        #[arg(long)]
        resume: bool,
        /// DEQ options with TorchDEQ's flag names.
        #[command(flatten)]
        deq: DeqArgs,
    },
    /// Render a fitted model (a folder written by `fit`, e.g. runs/deq-inr/deq) on its test
    /// grid, or for images on a `--height x --width` grid.
    Render {
        /// The model folder.
        #[arg(long)]
        run: PathBuf,
        /// Output file (.png or .wav) or folder (video).
        #[arg(long)]
        out: PathBuf,
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
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    deq_train::runtime::configure_cpu(Some(2));
    match cli.cmd {
        Cmd::Fit { kind, config, input, out, model, steps, max_seconds, seed, siren_layers, sets, resume, deq } => {
            let mut cfg = RunConfig::load_with(&config, &sets)?;
            let want = format!("{kind:?}").to_lowercase();
            anyhow::ensure!(cfg.data.kind == want, "{}: data.kind is `{}`, but `fit {want}` was asked", config.display(), cfg.data.kind);
            if let Some(i) = input {
                cfg.data.path = i;
            }
            if let Some(s) = steps {
                cfg.fit.steps = s;
            }
            if let Some(m) = max_seconds {
                cfg.fit.max_seconds = m;
            }
            if let Some(s) = seed {
                cfg.fit.seed = s;
            }
            if let Some(l) = siren_layers {
                cfg.siren.layers = l;
            }
            deq.apply(&mut cfg.deq)?;
            let (train, test) = load_task(&cfg)?;
            let kinds: &[&str] = match model {
                Which::Deq => &["deq"],
                Which::Siren => &["siren"],
                Which::Both => &["deq", "siren"],
            };
            for k in kinds {
                let (s, _) = deq_train::run_on_pool(|| run_one(&cfg, k, &train, &test, &out.join(k), resume))?;
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        Cmd::Render { run, out, height, width, f16 } => {
            let size = match (height, width) {
                (None, None) => None,
                (h, w) => Some((h.unwrap_or(0), w.unwrap_or(0))),
            };
            let r = deq_train::run_on_pool(|| render(&run, &out, size, f16))?;
            println!("{}", serde_json::to_string(&r)?);
        }
    }
    Ok(())
}
