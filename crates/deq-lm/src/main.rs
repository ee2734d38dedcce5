//! `deq-lm`: train, evaluate and sample DEQ transformer language models.
//!
//! `cargo run --release -p deq-lm -- train --config configs/deq-lm/ptb-cpu.toml` trains the
//! CPU model on Penn Treebank (`datasets/fetch_ptb.sh` fetches it). Every flag follows the
//! convention of `deq_train::cli` (`--config`, `--set`, TorchDEQ's flags, `--out`, `--resume`,
//! `--seed`, `--threads`, `--device`, `--dry-run`); `RUST_LOG` selects log lines.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use deq_core::rng::DeqRng;
use deq_lm::config::RunConfig;
use deq_lm::data::{load_ids, vocab_for, Corpus, Vocab};
use deq_lm::train::{evaluate, load_trained, train, Streams, TrainOptions};
use deq_train::cli::{init_logging, RunDirArgs, TrainArgs};
use deq_train::plot::PlotArgs;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "deq-lm", version, about = "DEQ transformer language models (the DEQ zoo's deq-lm and deq-seq)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train a model (default: configs/deq-lm/ptb-cpu.toml).
    Train {
        #[command(flatten)]
        args: TrainArgs,
        /// Stop after this many optimiser steps in total (smoke runs; 0: train.max_step).
        #[arg(long, default_value_t = 0)]
        max_steps: usize,
    },
    /// Perplexity of the latest checkpoint of a run; with --mem-lens or --f-max-iters, a table
    /// of perplexity against memory length or forward NFE.
    Eval {
        #[command(flatten)]
        run: RunDirArgs,
        /// Split to score: test or valid.
        #[arg(long, default_value = "test")]
        split: String,
        /// Memory lengths to compare (e.g. `0,35,70,140`); each row uses the configuration's solver.
        #[arg(long, value_delimiter = ',')]
        mem_lens: Vec<usize>,
        /// Evaluation solver budgets to compare (`eval_f_max_iter` values, e.g. `2,4,8,12,20`).
        #[arg(long, value_delimiter = ',')]
        f_max_iters: Vec<usize>,
        /// Score at most this many tokens (whole segments; 0: the whole split).
        #[arg(long, default_value_t = 0)]
        max_tokens: usize,
    },
    /// Sample text after a prompt, the memory carried from token to token.
    Generate {
        #[command(flatten)]
        run: RunDirArgs,
        /// The prompt (words for a word-level vocabulary; a line end is `<eos>`).
        #[arg(long, default_value = "")]
        prompt: String,
        /// Tokens to sample.
        #[arg(long, default_value_t = 50)]
        tokens: usize,
        /// Softmax temperature (0: greedy).
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        /// Sample among the k most likely tokens (0: all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Draw training curves and solver diagnostics of a run folder as PNG files.
    Plot(PlotArgs),
}

deq_train::fast_allocator!();

const DEFAULT_CONFIG: &str = "configs/deq-lm/ptb-cpu.toml";
const DEFAULT_RUN: &str = "runs/deq-lm-ptb-cpu";
const TOKENIZER: &str = "tokenizer.json";

fn run_dir(run: &RunDirArgs) -> PathBuf {
    run.out.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_RUN))
}

/// The corpus of `cfg`, or an error naming the key to set.
fn corpus(cfg: &RunConfig) -> Result<Corpus> {
    let dir = cfg.data.corpus_dir().map_err(anyhow::Error::msg)?;
    Ok(Corpus::open(&dir)?)
}

/// The run's vocabulary: its `tokenizer.json` when it has one (a resumed or finished run),
/// else `data.vocab_file`, else built from the corpus and saved in the run folder.
fn vocabulary(cfg: &RunConfig, corpus: &Corpus, out: &Path) -> Result<Vocab> {
    let saved = out.join(TOKENIZER);
    if saved.is_file() {
        return Ok(Vocab::load(&saved)?);
    }
    let file = (!cfg.data.vocab_file.is_empty()).then(|| PathBuf::from(&cfg.data.vocab_file));
    let vocab = vocab_for(corpus, file.as_deref(), &cfg.data.text_options())?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    vocab.save(&saved)?;
    Ok(vocab)
}

fn streams(cfg: &RunConfig, corpus: &Corpus, vocab: &Vocab) -> Result<Streams> {
    let [train, valid, test] = load_ids(corpus, vocab, cfg.data.cache)?;
    Ok(Streams { train, valid, test, n_token: vocab.len() })
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
            let loaded = args.config.load::<RunConfig>(Some(DEFAULT_CONFIG), None, args.seed)?;
            let (source, out) = (loaded.source(), args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("deq-lm-{}", loaded.name))));
            let cfg = loaded.config;
            let device = args.runtime.device.open()?;
            let corpus = corpus(&cfg)?;
            deq_train::DeqObjective::new(&cfg.deq, cfg.train.seed)?;
            if args.dry_run {
                return Ok(deq_train::cli::print_dry_run(&source, &out, &corpus.dir().display().to_string(), &cfg)?);
            }
            let threads = args.runtime.configure(cfg.train.threads);
            tracing::info!(threads, "training into {}", out.display());
            if !args.resume && out.join("checkpoints").join("latest.json").exists() {
                anyhow::bail!("{} already holds a run: pass --resume to continue it or choose another --out", out.display());
            }
            let vocab = vocabulary(&cfg, &corpus, &out)?;
            deq_train::cli::save_config(&out, &cfg)?;
            let data = streams(&cfg, &corpus, &vocab)?;
            tracing::info!(vocab = vocab.len(), train = data.train.len(), valid = data.valid.len(), test = data.test.len(), "corpus {}", corpus.dir().display());
            deq_train::run_on_pool(move || -> Result<()> {
                let opts = TrainOptions { out_dir: Some(out.clone()), resume: args.resume, max_steps, device, progress: true };
                let s = train(&cfg, &data, &opts, |_, _| {})?;
                let v = s.valid;
                println!(
                    "{}",
                    serde_json::json!({"steps": s.steps, "params": s.params, "train_loss": s.train_loss, "valid_ppl": v.map(|v| v.ppl),
                        "valid_nfe": v.map(|v| v.nfe), "train_seconds": s.train_seconds, "out": out.display().to_string()})
                );
                Ok(())
            })
        }
        Cmd::Eval { run, split, mem_lens, f_max_iters, max_tokens } => {
            let dir = run_dir(&run);
            let saved = run.config.load_saved::<RunConfig>(&dir)?;
            let (source, cfg) = (saved.source(), saved.config);
            let device = run.runtime.device.open()?;
            anyhow::ensure!(split == "test" || split == "valid", "--split: `{split}` is not test or valid");
            let corpus = corpus(&cfg)?;
            anyhow::ensure!(dir.join(TOKENIZER).is_file(), "{}: no {TOKENIZER} (not a deq-lm run folder?)", dir.display());
            if run.dry_run {
                anyhow::ensure!(dir.join("checkpoints").join("latest.json").exists(), "{}: no checkpoints/latest.json", dir.display());
                return Ok(deq_train::cli::print_dry_run(&source, &dir, &corpus.dir().display().to_string(), &cfg)?);
            }
            run.runtime.configure(cfg.train.threads);
            let vocab = Vocab::load(&dir.join(TOKENIZER))?;
            let data = streams(&cfg, &corpus, &vocab)?;
            deq_train::run_on_pool(move || -> Result<()> {
                let (mut model, step) = load_trained(&cfg, vocab.len(), &dir, &device)?;
                let ids = if split == "test" { &data.test } else { &data.valid };
                let t = &cfg.train;
                let base_mem = model.mem_len();
                let row = |model: &deq_lm::model::DeqTransformerLm, mem: usize, iters: usize| -> Result<serde_json::Value> {
                    let r = evaluate(model, ids, t.eval_batch_size, t.tgt_len, max_tokens, &device)?;
                    let v = serde_json::json!({"split": split, "step": step, "mem_len": mem, "eval_f_max_iter": iters, "ppl": r.ppl, "loss": r.loss,
                        "nfe": r.nfe, "rel_residual": r.rel_residual, "tokens": r.tokens, "seconds": r.seconds});
                    println!("{v}");
                    Ok(v)
                };
                let iters = cfg.deq.eval_f_max_iter;
                if mem_lens.is_empty() && f_max_iters.is_empty() {
                    row(&model, base_mem, iters)?;
                    return Ok(());
                }
                let mut rows = Vec::new();
                for &m in &mem_lens {
                    model.set_mem_len(m);
                    rows.push(row(&model, m, iters)?);
                }
                model.set_mem_len(base_mem);
                for &k in &f_max_iters {
                    let deq = deq_core::DeqConfig { eval_f_max_iter: k, ..cfg.deq.clone() };
                    model.set_eval_solver(&deq)?;
                    rows.push(row(&model, base_mem, k)?);
                }
                eprintln!("| mem_len | eval_f_max_iter | forward NFE | rel. residual | {split} ppl |\n|---|---|---|---|---|");
                for r in rows {
                    eprintln!("| {} | {} | {:.1} | {:.2e} | {:.2} |", r["mem_len"], r["eval_f_max_iter"], r["nfe"].as_f64().unwrap_or(f64::NAN), r["rel_residual"].as_f64().unwrap_or(f64::NAN), r["ppl"].as_f64().unwrap_or(f64::NAN));
                }
                Ok(())
            })
        }
        Cmd::Generate { run, prompt, tokens, temperature, top_k, seed } => {
            let dir = run_dir(&run);
            let saved = run.config.load_saved::<RunConfig>(&dir)?;
            let (source, cfg) = (saved.source(), saved.config);
            let device = run.runtime.device.open()?;
            anyhow::ensure!(temperature >= 0.0 && temperature.is_finite(), "--temperature: {temperature} is not >= 0");
            anyhow::ensure!(dir.join(TOKENIZER).is_file(), "{}: no {TOKENIZER} (not a deq-lm run folder?)", dir.display());
            if run.dry_run {
                anyhow::ensure!(dir.join("checkpoints").join("latest.json").exists(), "{}: no checkpoints/latest.json", dir.display());
                return Ok(deq_train::cli::print_dry_run(&source, &dir, "-", &cfg)?);
            }
            run.runtime.configure(cfg.train.threads);
            let vocab = Vocab::load(&dir.join(TOKENIZER))?;
            deq_train::run_on_pool(move || -> Result<()> {
                let (model, _) = load_trained(&cfg, vocab.len(), &dir, &device)?;
                let lines: Vec<String> = prompt.split('\n').map(str::to_string).collect();
                let mut ids = vocab.encode_lines(&lines)?;
                ids.pop(); // the prompt continues its last line
                if ids.is_empty() {
                    ids.push(vocab.eos());
                }
                let sampled = deq_lm::generate::sample(&model, &ids, tokens, temperature, top_k, &mut DeqRng::new(seed), cfg.train.tgt_len, &device)?;
                let mut all = ids.clone();
                all.extend(&sampled);
                println!("{}", vocab.decode_text(&all)?);
                Ok(())
            })
        }
        Cmd::Plot(p) => Ok(deq_train::plot::run(&p, DEFAULT_RUN)?),
    }
}
