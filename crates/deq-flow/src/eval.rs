//! Evaluation on the standard validation sets and on any folder of pairs: per-pair and pooled
//! end-point error, 1/3/5-pixel accuracies, KITTI's F1-all, forward NFE and residual, time.
//!
//! Conventions follow RAFT's and DEQ-Flow's evaluation: on Sintel, Chairs and folders of dense
//! ground truth every pixel counts and the EPE is pooled over all pixels of all pairs (the mean
//! over the pairs is reported too); on KITTI only valid pixels count, the EPE is the mean of the
//! per-image means and F1-all is pooled. Where a pair has an invalid mask (Sintel), the EPE
//! without those pixels is reported as well.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use deq_core::Deq;
use serde::Serialize;

use crate::data::datasets::{self, load_pair, PairSpec, Split};
use crate::error::{FlowError, Result};
use crate::flow::Flow;
use crate::infer::{predict, PadMode};
use crate::io::frames::{write_rgb_png, Frame};
use crate::io::viz::flow_to_rgb;
use crate::loss::FlowErrors;
use crate::model::DeqFlow;

/// One evaluated pair.
#[derive(Debug, Clone, Serialize)]
pub struct PairResult {
    /// The pair's name.
    pub name: String,
    /// End-point error over the counted pixels.
    pub epe: f64,
    /// EPE without the pair's invalid (excluded) pixels, when it has a mask.
    pub epe_without_excluded: Option<f64>,
    /// Shares of counted pixels within 1, 3, 5 pixels.
    pub px: [f64; 3],
    /// KITTI F1-all of the pair, percent.
    pub f1: f64,
    /// Forward solver steps.
    pub nfe: usize,
    /// Final relative residual.
    pub rel_residual: f64,
    /// Seconds for the prediction.
    pub seconds: f64,
    /// Counted pixels.
    pub pixels: f64,
}

/// A dataset's results.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    /// Dataset name (`sintel-clean`, `kitti`, `folder:flow`, …).
    pub name: String,
    /// Per-pair rows.
    pub pairs: Vec<PairResult>,
    /// The dataset's EPE (pooled over pixels; KITTI: mean of per-image means).
    pub epe: f64,
    /// Mean of the per-pair EPEs.
    pub epe_pair_mean: f64,
    /// Pooled 1/3/5-pixel accuracies.
    pub px: [f64; 3],
    /// Pooled F1-all, percent.
    pub f1: f64,
    /// Mean forward NFE.
    pub nfe: f64,
    /// Mean final relative residual.
    pub rel_residual: f64,
    /// Total prediction seconds.
    pub seconds: f64,
}

/// The pairs, padding mode and whether sparse rules apply, for a dataset name: `sintel-clean`,
/// `sintel-final`, `kitti`, `chairs`, or `folder:<path>` (a relative path is looked up under
/// `$DEQ_DATA_DIR`, then `datasets/`). `root` overrides where the dataset lives.
pub fn dataset(name: &str, root: Option<&Path>, pad: PadMode) -> Result<(Vec<PairSpec>, PadMode, bool)> {
    let find = |default: &str| -> Result<PathBuf> {
        match root {
            Some(r) => Ok(r.to_path_buf()),
            None => deq_train::data::find_dataset_dir(default).ok_or_else(|| FlowError::config("eval.datasets", format!("{name}: no dataset folder {default} under $DEQ_DATA_DIR or datasets/ (see datasets/README.md)"))),
        }
    };
    Ok(match name {
        "sintel-clean" | "sintel-final" => (datasets::sintel(&find("Sintel")?, "training", &name[7..])?, pad, false),
        "kitti" => (datasets::kitti(&find("KITTI")?, "training")?, PadMode::Kitti, true),
        "chairs" => (datasets::flying_chairs(&find("FlyingChairs_release")?, Split::Validation)?, pad, false),
        other => match other.strip_prefix("folder:") {
            Some(p) => {
                let dir = match root {
                    Some(r) => r.to_path_buf(),
                    None if Path::new(p).is_absolute() || Path::new(p).is_dir() => PathBuf::from(p),
                    None => find(p)?,
                };
                let specs = datasets::folder(&dir)?;
                let sparse = specs.iter().any(|s| s.sparse);
                (specs, pad, sparse)
            }
            None => return Err(FlowError::config("eval.datasets", format!("{other:?} is not sintel-clean, sintel-final, kitti, chairs or folder:<path>"))),
        },
    })
}

/// Expands the configured names (`sintel` is both passes).
pub fn expand(names: &[String]) -> Vec<String> {
    names.iter().flat_map(|n| if n == "sintel" { vec!["sintel-clean".to_string(), "sintel-final".to_string()] } else { vec![n.clone()] }).collect()
}

/// Evaluates `model` (with an evaluation-mode `deq`) on `specs`; `sparse` selects KITTI's rules.
/// With `pictures`, each pair's [`picture`] is written there as `<pair name>.png` (`/` as `_`).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(model: &DeqFlow, deq: &Deq, name: &str, specs: &[PairSpec], pad: PadMode, sparse: bool, device: &Device, progress: bool, pictures: Option<&Path>) -> Result<DatasetReport> {
    let mut total = FlowErrors::default();
    let mut pairs = Vec::new();
    if let Some(dir) = pictures {
        std::fs::create_dir_all(dir).map_err(|e| FlowError::io(dir, e))?;
    }
    let mut bar = deq_train::Progress::new(format!("eval {name}"), specs.len(), progress);
    for spec in specs {
        let pair = load_pair(spec)?;
        let Some(gt) = &pair.flow else {
            return Err(FlowError::format(&spec.img1, "no ground truth for this pair"));
        };
        let t = Instant::now();
        let pred = predict(model, deq, &pair.img1, &pair.img2, pad, None, device)?;
        let seconds = t.elapsed().as_secs_f64();
        let (h, w) = (gt.height, gt.width);
        let p = pred.flow.to_tensor(&Device::Cpu)?.to_dtype(DType::F64)?;
        let g = gt.to_tensor(&Device::Cpu)?.to_dtype(DType::F64)?;
        let counted: Vec<f32> = if sparse { gt.validity() } else { vec![1.0; h * w] };
        let mask = Tensor::from_vec(counted, (h, w), &Device::Cpu)?;
        let e = FlowErrors::of(&p, &g, &mask)?;
        let epe_without_excluded = match &pair.excluded {
            Some(ex) => {
                let keep: Vec<f32> = ex.iter().map(|v| 1.0 - v).collect();
                Some(FlowErrors::of(&p, &g, &Tensor::from_vec(keep, (h, w), &Device::Cpu)?)?.epe())
            }
            None => None,
        };
        total.add(&e);
        if let Some(dir) = pictures {
            let (w, h, rgb) = picture(&pair.img1, gt, &pred.flow);
            write_rgb_png(&dir.join(format!("{}.png", spec.name.replace(['/', '\\'], "_"))), w, h, &rgb)?;
        }
        pairs.push(PairResult { name: spec.name.clone(), epe: e.epe(), epe_without_excluded, px: e.accuracies(), f1: e.f1_all(), nfe: pred.nfe, rel_residual: pred.rel_residual, seconds, pixels: e.count });
        bar.inc(1, &format!("epe {:.3}", total.epe()));
    }
    let n = pairs.len().max(1) as f64;
    let epe_pair_mean = pairs.iter().map(|p| p.epe).sum::<f64>() / n;
    Ok(DatasetReport {
        name: name.to_string(),
        epe: if sparse { epe_pair_mean } else { total.epe() },
        epe_pair_mean,
        px: total.accuracies(),
        f1: total.f1_all(),
        nfe: pairs.iter().map(|p| p.nfe as f64).sum::<f64>() / n,
        rel_residual: pairs.iter().map(|p| p.rel_residual).sum::<f64>() / n,
        seconds: pairs.iter().map(|p| p.seconds).sum(),
        pairs,
    })
}

/// A side-by-side picture of a pair: the first frame, the ground truth and the prediction, both
/// flows on the Middlebury colour wheel normalised by the ground truth's largest valid magnitude
/// (so that colours compare), pixels without ground truth black in the middle panel. Returns
/// `(width, height, rgb)`.
pub fn picture(frame: &Frame, truth: &Flow, pred: &Flow) -> (usize, usize, Vec<u8>) {
    let (h, w) = (frame.height, frame.width);
    let scale = truth.max_magnitude();
    let panels = [frame.rgb.clone(), flow_to_rgb(truth, Some(scale)), flow_to_rgb(pred, Some(scale))];
    let mut out = Vec::with_capacity(3 * w * 3 * h);
    for y in 0..h {
        for p in &panels {
            out.extend_from_slice(&p[3 * y * w..3 * (y + 1) * w]);
        }
    }
    (3 * w, h, out)
}

/// The markdown table of a report: one row per pair and the dataset's row.
pub fn markdown(r: &DatasetReport) -> String {
    let mut s = String::from("| pair | EPE | EPE w/o invalid | 1px | 3px | 5px | NFE | rel. residual | seconds |\n|---|---|---|---|---|---|---|---|---|\n");
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    for p in &r.pairs {
        s += &format!("| {} | {:.3} | {} | {:.3} | {:.3} | {:.3} | {} | {:.2e} | {:.2} |\n", p.name, p.epe, opt(p.epe_without_excluded), p.px[0], p.px[1], p.px[2], p.nfe, p.rel_residual, p.seconds);
    }
    s += &format!("| **{}** (pooled EPE; pair mean {:.3}) | **{:.3}** | | {:.3} | {:.3} | {:.3} | {:.1} | {:.2e} | {:.2} |\n", r.name, r.epe_pair_mean, r.epe, r.px[0], r.px[1], r.px[2], r.nfe, r.rel_residual, r.seconds);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_put_frame_truth_and_prediction_side_by_side_at_one_scale() {
        let frame = Frame { height: 2, width: 3, rgb: (0..18).collect() };
        let mut truth = Flow::zeros(2, 3);
        truth.uv[0] = 4.0; // pixel (0, 0) moves 4 px right: the largest magnitude
        truth.valid = Some(vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        let mut pred = Flow::zeros(2, 3);
        pred.uv[0] = 2.0; // half the truth's motion: a paler red at the same scale
        let (w, h, rgb) = picture(&frame, &truth, &pred);
        assert_eq!((w, h, rgb.len()), (9, 2, 54));
        let px = |x: usize, y: usize| &rgb[3 * (y * w + x)..3 * (y * w + x) + 3];
        assert_eq!(px(0, 0), &[0, 1, 2]);
        assert_eq!(px(2, 1), &[15, 16, 17]);
        assert_eq!(px(5, 1), &[0, 0, 0], "no ground truth: black");
        assert_eq!(px(4, 0), &[255, 255, 255], "zero flow: white");
        let (full, half) = (px(3, 0), px(6, 0));
        assert!(full[0] >= half[0] && full[1] < half[1] && full[2] < half[2], "{full:?} {half:?}");
        assert_eq!(px(8, 1), &[255, 255, 255], "the prediction has no invalid pixels");
    }
}
