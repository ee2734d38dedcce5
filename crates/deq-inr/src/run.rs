//! One complete fit as the binary runs it: load the signal, build the network, fit, write the
//! reconstruction, the error map, the f16 model and a summary.

use crate::compress;
use crate::config::RunConfig;
use crate::error::{InrError, Result};
use crate::fit::{fit, FitOptions, FitResult};
use crate::image_io::Image;
use crate::model::DeqInr;
use crate::net::InrNet;
use crate::siren::Siren;
use crate::task::{self, Layout, Samples};
use crate::wav::Audio;
use candle_core::{DType, Device};
use deq_core::rng::DeqRng;
use serde::Serialize;
use std::path::Path;

/// Loads the training and test samples of `cfg.data`.
pub fn load_task(cfg: &RunConfig) -> Result<(Samples, Samples)> {
    let path = cfg.data_path()?;
    match cfg.data.kind.as_str() {
        "image" => {
            let img = Image::read(&path)?;
            match cfg.data.task.as_str() {
                "representation" => Ok(task::image_representation(&img, cfg.data.size)),
                "generalization" => {
                    let img = if cfg.data.size > 0 { img.resized(cfg.data.size, cfg.data.size) } else { img };
                    Ok(task::image_generalization(&img))
                }
                other => Err(InrError::Config { key: "data.task".into(), message: format!("`{other}` is not representation or generalization") }),
            }
        }
        "audio" => task::audio_task(&Audio::read(&path)?, &path),
        "video" => task::video_task(&path, cfg.data.max_frames),
        other => Err(InrError::Config { key: "data.kind".into(), message: format!("`{other}` is not image, audio or video") }),
    }
}

/// Builds the DEQ-INR of `cfg` for `layout` on `dev`.
pub fn build_deq(cfg: &RunConfig, layout: &Layout, dev: &Device) -> Result<DeqInr> {
    let mut rng = DeqRng::new(cfg.fit.seed);
    DeqInr::new(cfg.model.clone(), layout.coord_dim(), layout.channels(), cfg.deq.clone(), &mut rng, DType::F32, dev)
}

/// Builds the network `kind` (`deq` or `siren`, the latter with the DEQ's parameter count)
/// on `dev`.
pub fn build_net(cfg: &RunConfig, layout: &Layout, kind: &str, dev: &Device) -> Result<InrNet> {
    let deq = build_deq(cfg, layout, dev)?;
    match kind {
        "deq" => Ok(InrNet::Deq(deq)),
        "siren" => {
            let layers = if cfg.siren.layers == 0 { cfg.model.layers.max(1) + 1 } else { cfg.siren.layers };
            let mut rng = DeqRng::new(cfg.fit.seed ^ 0x51_4E);
            let mut s = Siren::matching(deq.num_params(), layout.coord_dim(), layers, layout.channels(), &mut rng, DType::F32, dev)?;
            if cfg.siren.omega_first != 30.0 || cfg.siren.omega != 30.0 {
                let mut rng = DeqRng::new(cfg.fit.seed ^ 0x51_4E);
                s = Siren::new(layout.coord_dim(), s.width(), layers, layout.channels(), cfg.siren.omega_first, cfg.siren.omega, &mut rng, DType::F32, dev)?;
            }
            Ok(InrNet::Siren(s))
        }
        other => Err(InrError::Config { key: "--model".into(), message: format!("`{other}` is not deq or siren") }),
    }
}

/// What a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `deq` or `siren`.
    pub model: String,
    /// Trainable parameters.
    pub params: usize,
    /// Steps done.
    pub steps: usize,
    /// Training seconds (evaluation excluded).
    pub train_seconds: f64,
    /// Final PSNR on the training samples.
    pub train_psnr: f64,
    /// Final PSNR on the test samples.
    pub test_psnr: f64,
    /// Evaluations of `f` per training step after the first (DEQ).
    pub f_evals_per_step: f64,
    /// Size of the f16 model file.
    pub f16_bytes: u64,
    /// Bits per sample (pixel, audio sample, video pixel) of the f16 model file.
    pub bits_per_sample: f64,
    /// Test PSNR with the parameters rounded to f16.
    pub test_psnr_f16: f64,
    /// Per-frame test PSNR (video).
    pub frame_psnr: Vec<f64>,
}

/// Writes the reconstruction of `test` (PNG + error map, WAV, or frames) into `dir`.
pub fn write_outputs(dir: &Path, test: &Samples, pred: &[f32]) -> Result<()> {
    match &test.layout {
        Layout::Image { .. } => {
            let img = task::to_image(pred, &test.layout).expect("image layout");
            img.write_png(&dir.join("reconstruction.png"))?;
            let target = task::to_image(&test.targets, &test.layout).expect("image layout");
            img.error_map(&target, 10.0).write_png(&dir.join("error.png"))?;
        }
        Layout::Audio { .. } => {
            task::to_audio(pred, &test.layout).expect("audio layout").write(&dir.join("reconstruction.wav"), true)?;
            let err: Vec<f32> = pred.iter().zip(&test.targets).map(|(a, b)| a - b).collect();
            task::to_audio(&err, &test.layout).expect("audio layout").write(&dir.join("error.wav"), true)?;
        }
        Layout::Video { frames, .. } => {
            let fd = dir.join("frames");
            std::fs::create_dir_all(&fd).map_err(|e| InrError::io(&fd, e))?;
            for f in 0..*frames {
                task::video_frame(pred, &test.layout, f).expect("video layout").write_png(&fd.join(format!("{f:04}.png")))?;
            }
        }
    }
    Ok(())
}

/// Fits `kind` on `dev` and writes everything under `dir`.
pub fn run_one(cfg: &RunConfig, kind: &str, train: &Samples, test: &Samples, dir: &Path, resume: bool, dev: &Device) -> Result<(Summary, FitResult)> {
    std::fs::create_dir_all(dir).map_err(|e| InrError::io(dir, e))?;
    let cfg_path = dir.join("config.toml");
    std::fs::write(&cfg_path, format!("# model = \"{kind}\"\n{}", cfg.to_toml())).map_err(|e| InrError::io(&cfg_path, e))?;
    let net = build_net(cfg, &train.layout, kind, dev)?;
    tracing::info!(model = kind, params = net.num_params(), samples = train.len(), "fitting");
    let r = fit(&net, train, test, &cfg.fit, &FitOptions { out_dir: Some(dir.to_path_buf()), resume, progress: true })?;
    write_outputs(dir, test, &r.test_pred)?;
    let bytes = compress::save_f16(&net, &dir.join("model_f16.safetensors"))?;
    let saved = compress::quantize_f16(&net)?;
    let (pred16, _) = net.predict(&test.coords_tensor(dev)?, cfg.fit.eval_chunk)?;
    compress::restore(&net, &saved)?;
    let last = r.last();
    let s = Summary {
        model: kind.into(),
        params: r.params,
        steps: last.step,
        train_seconds: last.train_seconds,
        train_psnr: last.train_psnr,
        test_psnr: last.test_psnr,
        f_evals_per_step: r.f_evals_per_step,
        f16_bytes: bytes,
        bits_per_sample: compress::bits_per_sample(bytes, test.len()),
        test_psnr_f16: test.psnr(&pred16),
        frame_psnr: test.frame_psnr(&r.test_pred),
    };
    let sp = dir.join("summary.json");
    std::fs::write(&sp, serde_json::to_string_pretty(&s).unwrap_or_default()).map_err(|e| InrError::io(&sp, e))?;
    Ok((s, r))
}

/// What `render` produced.
#[derive(Debug, Clone, Serialize)]
pub struct Rendered {
    /// The output file or folder.
    pub out: std::path::PathBuf,
    /// `deq` or `siren`.
    pub model: String,
    /// PSNR against the test samples (only when rendered on the test grid).
    pub psnr: Option<f64>,
}

/// The network kind (`deq` or `siren`) a model folder written by [`run_one`] holds, from the
/// first line of its `config.toml`.
pub fn saved_kind(run: &Path) -> Result<String> {
    let cfg_path = run.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| InrError::io(&cfg_path, e))?;
    Ok(text.lines().next().and_then(|l| l.strip_prefix("# model = \"")).and_then(|l| l.strip_suffix('"')).unwrap_or("deq").to_string())
}

/// Renders the `kind` model of `cfg` saved in `run` (a folder written by [`run_one`]; `cfg` is
/// normally its saved `config.toml`): its last checkpoint, or the f16 file with `f16`, on the
/// test grid, or for images on a `(height, width)` grid (0 keeps that side) into `out` (`.png`,
/// `.wav`, or a folder of frames for video).
pub fn render(cfg: &RunConfig, kind: &str, run: &Path, out: &Path, size: Option<(usize, usize)>, f16: bool, dev: &Device) -> Result<Rendered> {
    let kind = kind.to_string();
    let (_, mut test) = load_task(cfg)?;
    let net = build_net(cfg, &test.layout, &kind, dev)?;
    if f16 {
        compress::load(&net, &run.join("model_f16.safetensors"))?;
    } else {
        let ck = deq_train::Checkpointer::load(&run.join("checkpoints").join("latest.json"), dev)?;
        deq_train::load_vars(&net.named_vars(), &ck, "model.")?;
    }
    let mut on_test_grid = true;
    if let (Layout::Image { height: h0, width: w0, channels }, Some((h, w))) = (test.layout.clone(), size) {
        let (h, w) = (if h == 0 { h0 } else { h }, if w == 0 { w0 } else { w });
        if (h, w) != (h0, w0) {
            on_test_grid = false;
            test = Samples { coords: task::image_coords(h, w, 0, 0, 1), targets: vec![0.0; h * w * channels], layout: Layout::Image { height: h, width: w, channels } };
        }
    }
    let (pred, _) = net.predict(&test.coords_tensor(dev)?, cfg.fit.eval_chunk)?;
    match &test.layout {
        Layout::Image { .. } => task::to_image(&pred, &test.layout).expect("image layout").write_png(out)?,
        Layout::Audio { .. } => task::to_audio(&pred, &test.layout).expect("audio layout").write(out, true)?,
        Layout::Video { .. } => {
            std::fs::create_dir_all(out).map_err(|e| InrError::io(out, e))?;
            write_outputs(out, &test, &pred)?;
        }
    }
    Ok(Rendered { out: out.to_path_buf(), model: kind, psnr: on_test_grid.then(|| test.psnr(&pred)) })
}
