//! The README is a contract: every `cargo run` command in `README.md` and
//! `datasets/README.md` must resolve to a binary and be accepted by it.
//!
//! Each command runs through `cargo run` (the dev profile, so the binaries that
//! `cargo test --workspace` built are reused; `--release` is dropped) from a sandbox folder
//! that links the repository's `configs/`, `datasets/` and `scripts/`, so relative paths
//! resolve as on a fresh clone and run folders land in the sandbox:
//!
//! * `train` / `fit`: with `--dry-run`, which validates the configuration (unknown keys are
//!   errors) and the data paths and prints the run folder;
//! * `eval` / `predict` / `render` / `plot` / `sample` / `invert` / `compare`: they need a finished run, so the last documented
//!   command that writes that run folder first runs for real with a smoke setting, then the
//!   command runs with `--dry-run` (`plot` runs for real);
//! * anything else (the benchmark binaries): with `--help`.
//!
//! The quick-start command runs for real with a smoke setting (2 steps on the committed MNIST).
//! `DEQ_DATA_DIR` points at a sandbox folder laid out as the fetch scripts lay out their data,
//! with tiny stand-ins (the repository's reader fixtures), so documented commands on
//! downloadable data are checked too. A scratch copy of the README with a broken command must
//! fail the same check.

use deq_zoo_tests::{doc_commands, parse_cargo_run, CargoRun, DocCommand};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where commands run: links to the repository's inputs, and a data folder for `DEQ_DATA_DIR`.
struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("deq-zoo-readme-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for d in ["configs", "datasets", "scripts"] {
            std::os::unix::fs::symlink(repo().join(d), dir.join(d)).unwrap();
        }
        let data = dir.join("data");
        // What datasets/fetch_inr.sh writes: inr/audio/*.wav (float WAV) and inr/video/carphone/*.png.
        std::fs::create_dir_all(data.join("inr/audio")).unwrap();
        for name in ["gt_bach.wav", "gt_counting.wav"] {
            std::fs::write(data.join("inr/audio").join(name), float_wav(&(0..2000).map(|i| (i as f32 * 0.05).sin() * 0.5).collect::<Vec<_>>())).unwrap();
        }
        let frames = data.join("inr/video/carphone");
        std::fs::create_dir_all(&frames).unwrap();
        for f in 0..3u8 {
            image::RgbImage::from_fn(12, 10, |x, y| image::Rgb([x as u8 * 20, y as u8 * 25, f * 60])).save(frames.join(format!("{f:04}.png"))).unwrap();
        }
        // What datasets/fetch_flow.sh writes, in miniature: one pair with its .flo truth.
        let pair = data.join("flow/pair");
        std::fs::create_dir_all(&pair).unwrap();
        for f in 0..2u8 {
            image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([(x as u8).wrapping_mul(5).wrapping_add(f * 3), y as u8 * 7, 90])).save(pair.join(format!("frame{f}.png"))).unwrap();
        }
        let mut flo = b"PIEH".to_vec();
        flo.extend(48i32.to_le_bytes());
        flo.extend(32i32.to_le_bytes());
        flo.extend((0..48 * 32 * 2).flat_map(|i| (if i % 2 == 0 { 0.6f32 } else { 0.0 }).to_le_bytes()));
        std::fs::write(pair.join("flow.flo"), flo).unwrap();
        // What datasets/fetch_ppi.sh and fetch_tu.sh write, from the readers' fixtures.
        let fixtures = repo().join("crates/ignn/tests/fixtures");
        std::fs::create_dir_all(data.join("ppi")).unwrap();
        for e in std::fs::read_dir(fixtures.join("ppi-mini")).unwrap().flatten() {
            std::fs::copy(e.path(), data.join("ppi").join(e.file_name())).unwrap();
        }
        std::fs::create_dir_all(data.join("MUTAG")).unwrap();
        for e in std::fs::read_dir(fixtures.join("tu-mini")).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().replace("MINI_", "MUTAG_");
            std::fs::copy(e.path(), data.join("MUTAG").join(name)).unwrap();
        }
        // What datasets/fetch_text.sh writes: ptb/ptb.{train,valid,test}.txt and
        // wikitext-103/wiki.{train,valid,test}.tokens (a generated stand-in text).
        std::fs::create_dir_all(data.join("ptb")).unwrap();
        for (split, lines) in [("train", 120), ("valid", 30), ("test", 30)] {
            let text: String = (0..lines).map(|i| format!("the {} of {} is N <unk> and {}\n", ["cat", "dog", "price", "market"][i % 4], i % 7, ["up", "down"][i % 2])).collect();
            std::fs::write(data.join("ptb").join(format!("ptb.{split}.txt")), &text).unwrap();
            std::fs::create_dir_all(data.join("wikitext-103")).unwrap();
            std::fs::write(data.join("wikitext-103").join(format!("wiki.{split}.tokens")), &text).unwrap();
        }
        Self { dir }
    }
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A mono 32-bit float WAV (format tag 3), as SIREN's audio files are.
fn float_wav(samples: &[f32]) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut w = Vec::new();
    w.extend(b"RIFF");
    w.extend((36 + data.len() as u32).to_le_bytes());
    w.extend(b"WAVEfmt ");
    w.extend(16u32.to_le_bytes());
    w.extend(3u16.to_le_bytes());
    w.extend(1u16.to_le_bytes());
    w.extend(44100u32.to_le_bytes());
    w.extend((44100u32 * 4).to_le_bytes());
    w.extend(4u16.to_le_bytes());
    w.extend(32u16.to_le_bytes());
    w.extend(b"data");
    w.extend((data.len() as u32).to_le_bytes());
    w.extend(data);
    w
}

/// The first positional argument: the subcommand.
fn subcommand(args: &[String]) -> Option<&str> {
    args.iter().find(|a| !a.starts_with('-')).map(String::as_str)
}

fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// Settings that make a training command finish in seconds, per package.
fn smoke_settings(package: &str) -> Vec<String> {
    let s: &[&str] = match package {
        "mdeq" => &["--max-steps", "2", "--set", "train.epochs=1", "--set", "train.test_limit=64", "--set", "train.eval_batch_size=64"],
        "ignn" => &["--set", "train.epochs=2", "--set", "train.eval_every=1"],
        "deq-inr" => &["--set", "fit.steps=2", "--set", "fit.eval_every=1", "--set", "data.size=16", "--set", "data.max_frames=2"],
        "deq-lm" => &[
            "--max-steps", "2", "--set", "model.d_model=16", "--set", "model.d_embed=16", "--set", "model.n_head=2", "--set", "model.d_head=8",
            "--set", "model.d_inner=24", "--set", "model.mem_len=8", "--set", "train.batch_size=4", "--set", "train.tgt_len=8", "--set", "train.eval_batch_size=2",
        ],
        "deq-flow" => &[
            "--max-steps", "2", "--set", "model.encoder_dims=[8, 8, 8]", "--set", "model.feature_dim=8", "--set", "model.hidden_dim=6", "--set", "model.context_dim=4",
            "--set", "model.corr_levels=2", "--set", "model.corr_radius=2", "--set", "model.motion_dims=[8, 6, 6, 4]", "--set", "model.motion_out=6", "--set", "model.head_dim=6",
            "--set", "model.mask_dim=8", "--set", "deq.f_max_iter=2", "--set", "deq.n_states=1", "--set", "data.synthetic.height=40", "--set", "data.synthetic.width=56",
            "--set", "data.augment.crop=[32, 48]", "--set", "data.pairs_per_epoch=4", "--set", "train.batch_size=2",
        ],
        "deq-ddim" => &[
            "--max-steps", "2", "--set", "model.ch_mult=[1]", "--set", "model.attn_resolutions=[]", "--set", "train.batch_size=2", "--set", "train.sample_count=2",
            "--set", "sample.steps=2",
        ],
        _ => &[],
    };
    s.iter().map(|s| s.to_string()).collect()
}

struct Outcome {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn cargo_run(sb: &Sandbox, run: &CargoRun, args: &[String]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&sb.dir).args(["run", "-q", "--manifest-path"]).arg(repo().join("Cargo.toml"));
    if let Some(p) = &run.package {
        cmd.args(["-p", p]);
    }
    if let Some(b) = &run.bin {
        cmd.args(["--bin", b]);
    }
    for f in &run.features {
        cmd.args(["--features", f]);
    }
    if run.no_default_features {
        cmd.arg("--no-default-features");
    }
    cmd.arg("--").args(args);
    cmd.env("DEQ_DATA_DIR", sb.data()).env("RUST_LOG", "warn").env("RAYON_NUM_THREADS", "2");
    let out = cmd.output().expect("cargo runs");
    Outcome { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).into(), stderr: String::from_utf8_lossy(&out.stderr).into() }
}

/// Checks every command of `docs` (`(file name, text)`); returns one message per failure.
fn check_docs(docs: &[(&str, &str)], sb: &Sandbox) -> Vec<String> {
    let mut failures = Vec::new();
    let mut commands: Vec<DocCommand> = Vec::new();
    for (file, text) in docs {
        match doc_commands(text, file) {
            Ok(c) => commands.extend(c),
            Err(e) => failures.push(format!("{file}: {e}")),
        }
    }
    // Training commands seen so far: (index, run folder) and whether each already ran for real.
    let mut producers: Vec<(usize, String)> = Vec::new();
    let mut ran: HashMap<usize, bool> = HashMap::new();
    let fail = |c: &DocCommand, why: String, o: Option<&Outcome>| {
        let detail = o.map(|o| format!("\n  stderr: {}", o.stderr.trim().lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n          "))).unwrap_or_default();
        format!("{} `{c}`: {why}{detail}", c.origin)
    };
    for (i, c) in commands.iter().enumerate() {
        let run = match parse_cargo_run(&c.argv) {
            Ok(r) => r,
            Err(e) => {
                failures.push(fail(c, e, None));
                continue;
            }
        };
        let package = run.package.clone().unwrap_or_default();
        match subcommand(&run.args) {
            Some("train" | "fit") => {
                let mut args = run.args.clone();
                args.push("--dry-run".into());
                let o = cargo_run(sb, &run, &args);
                if !o.ok {
                    failures.push(fail(c, "the dry run failed".into(), Some(&o)));
                    continue;
                }
                match o.stderr.lines().find_map(|l| l.strip_prefix("run folder: ")) {
                    Some(f) => producers.push((i, f.trim().to_string())),
                    None => failures.push(fail(c, "the dry run did not print its run folder".into(), Some(&o))),
                }
                let quick_start = package == "mdeq" && run.args == ["train"];
                if quick_start {
                    let mut args = run.args.clone();
                    args.extend(smoke_settings(&package));
                    let o = cargo_run(sb, &run, &args);
                    if !o.ok || !o.stdout.contains("test_acc") {
                        failures.push(fail(c, "the quick start did not run (2 smoke steps)".into(), Some(&o)));
                    }
                    ran.insert(i, o.ok);
                }
            }
            Some(sub @ ("eval" | "predict" | "render" | "plot" | "sample" | "invert" | "compare")) => {
                let Some(folder) = flag_value(&run.args, "--out") else {
                    failures.push(fail(c, "commands that use a run must name it with --out".into(), None));
                    continue;
                };
                let folder = folder.trim_end_matches('/').to_string();
                let producer = producers.iter().rev().find(|(_, f)| folder == *f || folder.starts_with(&format!("{f}/")));
                let Some(&(pi, _)) = producer else {
                    failures.push(fail(c, format!("no documented training command before it writes `{folder}`"), None));
                    continue;
                };
                if !ran.contains_key(&pi) {
                    let p = &commands[pi];
                    let prun = parse_cargo_run(&p.argv).unwrap();
                    let mut args = prun.args.clone();
                    args.extend(smoke_settings(prun.package.as_deref().unwrap_or_default()));
                    let o = cargo_run(sb, &prun, &args);
                    if !o.ok {
                        failures.push(fail(p, "the smoke run (for a later command that uses its run) failed".into(), Some(&o)));
                    }
                    ran.insert(pi, o.ok);
                }
                if !ran[&pi] {
                    continue;
                }
                let mut args = run.args.clone();
                if sub != "plot" {
                    args.push("--dry-run".into());
                }
                let o = cargo_run(sb, &run, &args);
                if !o.ok {
                    failures.push(fail(c, format!("`{sub}` failed on the run written by {}", commands[pi].origin), Some(&o)));
                }
            }
            _ => {
                let mut args = run.args.clone();
                args.push("--help".into());
                let o = cargo_run(sb, &run, &args);
                if !o.ok {
                    failures.push(fail(c, "not accepted (arguments + --help)".into(), Some(&o)));
                }
            }
        }
    }
    failures
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn readme_commands_work() {
    let readme = read("README.md");
    let datasets = read("datasets/README.md");
    let commands = doc_commands(&readme, "README.md").unwrap();
    assert!(commands.len() >= 10, "only {} commands found in README.md", commands.len());
    assert!(
        commands.iter().any(|c| c.argv.join(" ") == "cargo run --release -p mdeq -- train"),
        "the quick start `cargo run --release -p mdeq -- train` is not in README.md"
    );
    // The second quick-start command is what CI runs.
    assert!(readme.contains("cargo test --workspace") && read(".ci/run").contains("cargo test --workspace"));
    // The docs speak to someone with only the repository and the internet.
    for (file, text) in [("README.md", &readme), ("datasets/README.md", &datasets)] {
        assert!(!text.contains("../shared"), "{file} names a development path (../shared)");
    }
    let sb = Sandbox::new("docs");
    let failures = check_docs(&[("README.md", &readme), ("datasets/README.md", &datasets)], &sb);
    assert!(failures.is_empty(), "{} documented command(s) fail:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_broken_command_fails_the_check() {
    // A scratch README in which each kind of check meets a broken command.
    let scratch = "```sh\n\
        cargo run --release -p mdeq -- trian\n\
        cargo run --release -p mdeq -- train --set train.learning_rate=0.1\n\
        cargo run --release -p ignn -- train --config configs/ignn/no-such.toml\n\
        cargo run --release -p deq-core -- --frobnicate\n\
        cargo run --release -p deq-inr -- render --out runs/nowhere --file x.png\n\
        cargo run --release -p mdeq -- eval\n\
        ```\n";
    let sb = Sandbox::new("broken");
    let failures = check_docs(&[("SCRATCH.md", scratch)], &sb);
    let lines: Vec<&str> = failures.iter().map(|f| f.lines().next().unwrap_or("")).collect();
    assert_eq!(failures.len(), 6, "{failures:#?}");
    for (k, want) in ["SCRATCH.md:2", "SCRATCH.md:3", "SCRATCH.md:4", "SCRATCH.md:5", "SCRATCH.md:6", "SCRATCH.md:7"].iter().enumerate() {
        assert!(lines[k].starts_with(want), "{}", lines[k]);
    }
    assert!(failures[1].contains("learning_rate"), "the error names the unknown key: {}", failures[1]);
    assert!(failures[3].contains("could not determine which binary") || failures[3].contains("not accepted"), "{}", failures[3]);
}
