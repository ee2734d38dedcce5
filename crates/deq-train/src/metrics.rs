//! Metrics as JSON lines, and evaluation helpers.

use crate::error::{Result, TrainError};
use candle_core::{DType, Tensor, D};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends one JSON object per line to a file (appending, so a resumed run continues it).
#[derive(Debug)]
pub struct MetricsWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsWriter {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { path, file })
    }

    /// Writes one record and flushes it.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let line = serde_json::to_string(record).expect("JSON values serialise");
        writeln!(self.file, "{line}").and_then(|_| self.file.flush()).map_err(|e| TrainError::io(&self.path, e))
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Number of rows of `logits` (`(batch, classes)`) whose label is among the `k` largest logits.
pub fn topk_correct(logits: &Tensor, labels: &Tensor, k: usize) -> Result<usize> {
    let logits = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let labels = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let mut correct = 0;
    for (row, &y) in logits.iter().zip(&labels) {
        let target = row.get(y as usize).copied().unwrap_or(f32::NEG_INFINITY);
        // Rank = number of logits strictly larger than the label's (ties count in its favour).
        let rank = row.iter().filter(|&&v| v > target).count();
        if rank < k && target.is_finite() {
            correct += 1;
        }
    }
    Ok(correct)
}

/// Top-1 accuracy of a batch, in [0, 1].
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let n = logits.dim(0)?;
    Ok(topk_correct(logits, labels, 1)? as f64 / n.max(1) as f64)
}

/// Micro-averaged F1 of multi-label predictions `logits > 0` against 0/1 `targets`, both
/// `(rows, labels)` row-major, over the rows in `ids` (all rows if `None`); 0 when there are no
/// positives at all (as scikit-learn with `zero_division=0`).
pub fn micro_f1(logits: &[f32], targets: &[f32], labels: usize, ids: Option<&[u32]>) -> f64 {
    let (mut tp, mut fp, mut fnn) = (0usize, 0usize, 0usize);
    let mut count = |r: usize| {
        for j in 0..labels {
            let (p, t) = (logits[r * labels + j] > 0.0, targets[r * labels + j] > 0.5);
            match (p, t) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fnn += 1,
                _ => {}
            }
        }
    };
    match ids {
        Some(ids) => ids.iter().for_each(|&r| count(r as usize)),
        None => (0..logits.len() / labels.max(1)).for_each(&mut count),
    }
    if tp == 0 {
        return 0.0;
    }
    2.0 * tp as f64 / (2 * tp + fp + fnn) as f64
}

/// Softmax probabilities of a `(batch, classes)` tensor (computed stably, in f32).
pub fn softmax_probs(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let l = logits.to_dtype(DType::F32)?;
    let m = l.max_keepdim(D::Minus1)?;
    let e = l.broadcast_sub(&m)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    Ok(p.to_vec2::<f32>()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn micro_f1_by_hand() {
        // rows: pred [1,0,1] true [1,1,0]; pred [0,0,1] true [0,0,1] -> tp 2, fp 1, fn 1.
        let logits = [2.0, -1.0, 0.5, -3.0, -0.1, 4.0];
        let targets = [1.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        assert!((super::micro_f1(&logits, &targets, 3, None) - 4.0 / 6.0).abs() < 1e-12);
        assert!((super::micro_f1(&logits, &targets, 3, Some(&[1])) - 1.0).abs() < 1e-12);
        assert_eq!(super::micro_f1(&[-1.0; 6], &targets, 3, None), 0.0);
    }

    use super::*;
    use candle_core::Device;

    #[test]
    fn topk_and_jsonl() {
        let logits = Tensor::new(&[[0.1f32, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[1u32, 2, 0], &Device::Cpu).unwrap();
        assert_eq!(topk_correct(&logits, &labels, 1).unwrap(), 1);
        assert_eq!(topk_correct(&logits, &labels, 2).unwrap(), 2);
        assert_eq!(topk_correct(&logits, &labels, 3).unwrap(), 3);
        let p = softmax_probs(&logits).unwrap();
        assert!((p[0].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let path = std::env::temp_dir().join(format!("deq-train-metrics-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut w = MetricsWriter::open(&path).unwrap();
        w.write(&serde_json::json!({"epoch": 1, "loss": 0.5})).unwrap();
        w.write(&serde_json::json!({"epoch": 2, "loss": 0.25})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["loss"], 0.25);
        let _ = std::fs::remove_file(&path);
    }
}
