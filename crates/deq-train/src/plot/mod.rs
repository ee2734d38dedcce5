//! The `plot` subcommand every binary exposes: PNG figures of a run folder, drawn from its
//! `metrics.jsonl` without Python.
//!
//! * `training.png`: losses and scores (accuracy, F1, PSNR, EPE) and the learning rate against
//!   the training step (or epoch);
//! * `training_time.png`: losses and scores against wall-clock seconds;
//! * `convergence.png`: the relative residual of a fixed probe batch against the solver step,
//!   one line per evaluation coloured from blue (early) to red (late); forward and backward NFE,
//!   final relative residuals and the spectral radius over training.
//!
//! A run folder without its own `metrics.jsonl` is searched one level down (`deq-inr`'s
//! `deq/` and `siren/`, `ignn`'s `fold-<k>/`), and each one found gets its own figures.
//!
//! ```no_run
//! let written = deq_train::plot::plot_run(std::path::Path::new("runs/mdeq-mnist-small"), None)?;
//! for p in written {
//!     println!("{}", p.display());
//! }
//! # Ok::<(), deq_train::TrainError>(())
//! ```

mod chart;
mod series;

pub use chart::{draw, Line, Panel};
pub use series::{Records, PROBE_KEY, PROGRESS_KEYS, TIME_KEYS};

use crate::error::{Result, TrainError};
use std::path::{Path, PathBuf};

/// Flags of `plot`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PlotArgs {
    /// The run folder (holding metrics.jsonl, or folders that do).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Folder for the PNG files (default: <run folder>/plots).
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
}

/// Runs `plot` for a binary whose default run folder is `default_run`; prints the files written.
pub fn run(args: &PlotArgs, default_run: &str) -> Result<()> {
    let dir = args.out.clone().unwrap_or_else(|| PathBuf::from(default_run));
    for p in plot_run(&dir, args.to.as_deref())? {
        println!("{}", p.display());
    }
    Ok(())
}

/// Which metrics a panel shows, by key.
fn is_loss(k: &str) -> bool {
    k.ends_with("loss")
}
fn is_score(k: &str) -> bool {
    ["acc", "f1", "psnr", "epe", "score"].iter().any(|s| k.contains(s))
}
fn is_nfe(k: &str) -> bool {
    k.contains("nfe") || k.contains("solver_steps")
}
fn is_residual(k: &str) -> bool {
    k.contains("residual")
}
fn is_sradius(k: &str) -> bool {
    k.contains("sradius")
}

fn panel(records: &Records, title: &str, x_key: &str, y_label: &str, log_y: bool, keys: &[String]) -> Panel {
    let lines = keys.iter().map(|k| Line { name: k.clone(), points: records.series(x_key, k), shade: None }).collect();
    Panel { title: title.into(), x_label: x_key.into(), y_label: y_label.into(), log_y, lines }
}

/// Like [`panel`], on a log scale when every value is positive and they span more than two
/// decades (a regression loss falling from 1e-1 to 1e-5).
fn auto_log_panel(records: &Records, title: &str, x_key: &str, y_label: &str, keys: &[String]) -> Panel {
    let mut p = panel(records, title, x_key, y_label, false, keys);
    let ys: Vec<f64> = p.lines.iter().flat_map(|l| l.points.iter().map(|q| q.1)).collect();
    let (lo, hi) = ys.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &y| (a.min(y), b.max(y)));
    p.log_y = !ys.is_empty() && lo > 0.0 && hi / lo > 100.0;
    p
}

/// The metrics files of a run folder: its own, else those one level down (sorted).
fn metrics_files(run: &Path) -> Result<Vec<(String, PathBuf)>> {
    let own = run.join("metrics.jsonl");
    if own.is_file() {
        return Ok(vec![(String::new(), own)]);
    }
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(run) {
        for e in entries.flatten() {
            let m = e.path().join("metrics.jsonl");
            if m.is_file() {
                found.push((e.file_name().to_string_lossy().into_owned(), m));
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(TrainError::format(run, "no metrics.jsonl here or in the folders below: is this a run folder?"));
    }
    Ok(found)
}

/// Draws the figures of the run in `run` into `to` (default `run/plots`) and returns the files
/// written.
pub fn plot_run(run: &Path, to: Option<&Path>) -> Result<Vec<PathBuf>> {
    let files = metrics_files(run)?;
    let to = to.map(Path::to_path_buf).unwrap_or_else(|| run.join("plots"));
    std::fs::create_dir_all(&to).map_err(|e| TrainError::io(&to, e))?;
    let mut written = Vec::new();
    for (sub, file) in files {
        let records = Records::read(&file)?;
        if records.0.is_empty() {
            return Err(TrainError::format(&file, "no records yet"));
        }
        let name = |base: &str| to.join(if sub.is_empty() { format!("{base}.png") } else { format!("{sub}-{base}.png") });
        let label = if sub.is_empty() { run.display().to_string() } else { run.join(&sub).display().to_string() };
        let keys = records.numeric_keys();
        let axes: Vec<&str> = PROGRESS_KEYS.iter().chain(TIME_KEYS.iter()).copied().collect();
        let pick = |f: fn(&str) -> bool| -> Vec<String> { keys.iter().filter(|k| f(k) && !axes.contains(&k.as_str())).cloned().collect() };
        let (losses, scores) = (pick(is_loss), pick(is_score));
        let lr: Vec<String> = keys.iter().filter(|k| k.as_str() == "lr").cloned().collect();

        if let Some(x) = records.axis(&PROGRESS_KEYS) {
            let panels = [
                auto_log_panel(&records, "loss", x, "loss", &losses),
                panel(&records, "scores", x, "score", false, &scores),
                panel(&records, "learning rate", x, "lr", false, &lr),
            ];
            let p = name("training");
            if draw(&p, &format!("training: {label}"), &panels)? {
                written.push(p);
            }
        }
        if let Some(t) = records.axis(&TIME_KEYS) {
            let panels = [auto_log_panel(&records, "loss", t, "loss", &losses), panel(&records, "scores", t, "score", false, &scores)];
            let p = name("training_time");
            if draw(&p, &format!("training against wall clock: {label}"), &panels)? {
                written.push(p);
            }
        }
        let x = records.axis(&PROGRESS_KEYS).unwrap_or("step");
        let traces = records.probe_traces(x);
        let n = traces.len().max(2) - 1;
        let probe = Panel {
            title: "probe batch: residual per solver step".into(),
            x_label: "solver step".into(),
            y_label: "relative residual".into(),
            log_y: true,
            lines: traces
                .iter()
                .enumerate()
                .map(|(i, (at, t))| Line {
                    name: format!("{x} {at}"),
                    points: t.iter().enumerate().map(|(s, &r)| ((s + 1) as f64, r)).collect(),
                    shade: Some(i as f64 / n as f64),
                })
                .collect(),
        };
        let panels = [
            probe,
            panel(&records, "NFE over training", x, "NFE", false, &pick(is_nfe)),
            panel(&records, "final relative residual", x, "relative residual", true, &pick(is_residual)),
            panel(&records, "spectral radius", x, "spectral radius", false, &pick(is_sradius)),
        ];
        let p = name("convergence");
        if draw(&p, &format!("solver convergence: {label}"), &panels)? {
            written.push(p);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_a_fixture_run_and_errors_naming_the_folder() {
        let dir = std::env::temp_dir().join(format!("deq-train-plot-{}", std::process::id()));
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let mut lines = String::new();
        for e in 1..=4 {
            let trace: Vec<f64> = (0..10).map(|s| 0.5f64.powi(s + e)).collect();
            let r = serde_json::json!({"epoch": e, "step": 100 * e, "lr": 0.1 / e as f64, "train_loss": 1.0 / e as f64, "test_acc": 0.9 + 0.01 * e as f64,
                "elapsed_seconds": 10.0 * e as f64, "train_fwd_nfe_mean": 6.0, "test_fwd_nfe_max": 12.0, "test_fwd_rel_residual_mean": 1e-3 / e as f64,
                "probe_rel_trace": trace});
            lines.push_str(&format!("{r}\n"));
        }
        std::fs::write(run.join("metrics.jsonl"), lines).unwrap();
        let written = plot_run(&run, None).unwrap();
        let names: Vec<String> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["training.png", "training_time.png", "convergence.png"]);
        for p in &written {
            let img = image::open(p).unwrap().to_rgb8();
            assert!(img.width() >= 640 && img.height() >= 400);
            // Not a blank canvas: some pixels are coloured lines (not white, not grey).
            let coloured = img.pixels().filter(|px| {
                let [r, g, b] = px.0;
                r.max(g).max(b) - r.min(g).min(b) > 60
            });
            assert!(coloured.count() > 200, "{} looks empty", p.display());
        }

        // Folders below (deq-inr's deq/ and siren/) each get figures with their name.
        let multi = dir.join("multi");
        for sub in ["deq", "siren"] {
            std::fs::create_dir_all(multi.join(sub)).unwrap();
            std::fs::write(multi.join(sub).join("metrics.jsonl"), "{\"step\": 1, \"test_psnr\": 20.0, \"train_seconds\": 1.0}\n{\"step\": 2, \"test_psnr\": 25.0, \"train_seconds\": 2.0}\n").unwrap();
        }
        let written = plot_run(&multi, Some(&dir.join("pngs"))).unwrap();
        let names: Vec<String> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["deq-training.png", "deq-training_time.png", "siren-training.png", "siren-training_time.png"]);

        let e = plot_run(&dir.join("nothing"), None).unwrap_err().to_string();
        assert!(e.contains("nothing") && e.contains("metrics.jsonl"), "{e}");
        std::fs::write(run.join("metrics.jsonl"), "{\"step\": 1}\nnot json\n").unwrap();
        let e = plot_run(&run, None).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
