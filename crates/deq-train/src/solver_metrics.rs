//! Solver statistics for the metrics file: what every trainer records per evaluation.
//!
//! [`SolverMetrics`] gathers the forward solves (and, in training, the adjoint solves of the
//! implicit backward) of an epoch or an evaluation, and [`SolverMetrics::record`] writes their
//! mean and max NFE, relative residual and spectral radius under fixed key names
//! (`<prefix>_fwd_nfe_mean`, `<prefix>_fwd_rel_residual_max`, `<prefix>_bwd_nfe_mean`,
//! `<prefix>_sradius_mean`, ...), which `plot` draws. [`probe_trace`] is the residual trace of
//! one fixed probe batch (`probe_rel_trace`: mean relative residual after each solver step).

use deq_core::SolverStats;
use serde_json::{Map, Value};

/// Accumulated solver statistics of several solves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SolverMetrics {
    fwd_nfe: Vec<f64>,
    fwd_rel: Vec<f64>,
    bwd_nfe: Vec<f64>,
    bwd_rel: Vec<f64>,
    sradius: Vec<f64>,
}

fn mean_max(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    Some((v.iter().sum::<f64>() / v.len() as f64, v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)))
}

impl SolverMetrics {
    /// The accumulated values as `f64` tensors named `prefix` + field (for a checkpoint taken
    /// within an epoch; [`SolverMetrics::from_tensors`] restores them bit for bit).
    pub fn to_tensors(&self, prefix: &str) -> candle_core::Result<Vec<(String, candle_core::Tensor)>> {
        self.fields()
            .into_iter()
            .map(|(name, v)| Ok((format!("{prefix}{name}"), candle_core::Tensor::from_vec(v.clone(), v.len(), &candle_core::Device::Cpu)?)))
            .collect()
    }

    /// Restores what [`SolverMetrics::to_tensors`] wrote; a missing tensor is an error naming it.
    pub fn from_tensors(tensors: &std::collections::HashMap<String, candle_core::Tensor>, prefix: &str) -> crate::Result<Self> {
        let mut m = Self::default();
        let names: Vec<&str> = m.fields().into_iter().map(|(n, _)| n).collect();
        let mut values = Vec::with_capacity(names.len());
        for name in names {
            let key = format!("{prefix}{name}");
            let t = tensors.get(&key).ok_or_else(|| crate::TrainError::Config { key: key.clone(), message: "missing from the checkpoint".into() })?;
            values.push(t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?);
        }
        let mut it = values.into_iter();
        for slot in [&mut m.fwd_nfe, &mut m.fwd_rel, &mut m.bwd_nfe, &mut m.bwd_rel, &mut m.sradius] {
            *slot = it.next().unwrap_or_default();
        }
        Ok(m)
    }

    fn fields(&self) -> [(&'static str, &Vec<f64>); 5] {
        [("fwd_nfe", &self.fwd_nfe), ("fwd_rel", &self.fwd_rel), ("bwd_nfe", &self.bwd_nfe), ("bwd_rel", &self.bwd_rel), ("sradius", &self.sradius)]
    }

    /// Adds a forward solve: its NFE, each sample's lowest relative residual, and the spectral
    /// radius per sample when it was estimated (`sradius_mode`).
    pub fn add_forward(&mut self, s: &SolverStats) {
        self.fwd_nfe.push(s.nfe as f64);
        self.fwd_rel.extend(s.rel_lowest.iter().copied());
        if let Some(r) = &s.sradius {
            self.sradius.extend(r.iter().copied());
        }
    }

    /// Adds the adjoint solves of an implicit backward pass (`DeqOutput::backward_stats`).
    pub fn add_backward(&mut self, solves: &[SolverStats]) {
        for s in solves {
            self.bwd_nfe.push(s.nfe as f64);
            self.bwd_rel.extend(s.rel_lowest.iter().copied());
        }
    }

    /// Number of forward solves added.
    pub fn forward_solves(&self) -> usize {
        self.fwd_nfe.len()
    }

    /// The statistics as JSON fields named `<prefix>_<what>_<mean|max>`; groups without data
    /// (no backward solves with phantom gradients, no spectral radius) are left out.
    pub fn record(&self, prefix: &str) -> Map<String, Value> {
        let mut m = Map::new();
        for (what, v) in [("fwd_nfe", &self.fwd_nfe), ("fwd_rel_residual", &self.fwd_rel), ("bwd_nfe", &self.bwd_nfe), ("bwd_rel_residual", &self.bwd_rel), ("sradius", &self.sradius)] {
            if let Some((mean, max)) = mean_max(v) {
                m.insert(format!("{prefix}_{what}_mean"), Value::from(mean));
                m.insert(format!("{prefix}_{what}_max"), Value::from(max));
            }
        }
        m
    }

    /// Adds [`SolverMetrics::record`] to a JSON object.
    pub fn extend_record(&self, prefix: &str, record: &mut Value) {
        if let Value::Object(o) = record {
            o.extend(self.record(prefix));
        }
    }
}

/// The residual trace of a probe solve: the mean over samples of the relative residual after
/// each solver step (non-finite entries are skipped in the mean).
pub fn probe_trace(s: &SolverStats) -> Vec<f64> {
    s.rel_trace
        .iter()
        .map(|step| {
            let finite: Vec<f64> = step.iter().copied().filter(|v| v.is_finite()).collect();
            if finite.is_empty() {
                f64::NAN
            } else {
                finite.iter().sum::<f64>() / finite.len() as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(nfe: usize, rel: &[f64], trace: Vec<Vec<f64>>, sradius: Option<Vec<f64>>) -> SolverStats {
        SolverStats { nfe, rel_lowest: rel.to_vec(), rel_trace: trace, sradius, ..Default::default() }
    }

    #[test]
    fn records_mean_and_max_and_leave_out_missing_groups() {
        let mut m = SolverMetrics::default();
        m.add_forward(&stats(4, &[0.1, 0.3], vec![], None));
        m.add_forward(&stats(8, &[0.2, 0.2], vec![], Some(vec![0.5, 0.9])));
        let r = m.record("test");
        assert_eq!(r["test_fwd_nfe_mean"], 6.0);
        assert_eq!(r["test_fwd_nfe_max"], 8.0);
        assert!((r["test_fwd_rel_residual_mean"].as_f64().unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(r["test_fwd_rel_residual_max"], 0.3);
        assert_eq!((r["test_sradius_mean"].as_f64().unwrap(), r["test_sradius_max"].as_f64().unwrap()), (0.7, 0.9));
        assert!(!r.contains_key("test_bwd_nfe_mean"), "no backward solves were added");
        m.add_backward(&[stats(12, &[1e-4, 3e-4], vec![], None), stats(20, &[2e-4], vec![], None)]);
        let r = m.record("train");
        assert_eq!((r["train_bwd_nfe_mean"].as_f64().unwrap(), r["train_bwd_nfe_max"].as_f64().unwrap()), (16.0, 20.0));
        assert_eq!(r["train_bwd_rel_residual_max"], 3e-4);
        assert_eq!(m.forward_solves(), 2);
        assert!(SolverMetrics::default().record("x").is_empty());
        // extend_record adds the same fields to an existing record and keeps its own.
        let mut rec = serde_json::json!({"epoch": 3});
        m.extend_record("test", &mut rec);
        assert_eq!(rec["epoch"], 3);
        assert_eq!(rec["test_bwd_nfe_max"], 20.0);
        assert_eq!(rec.as_object().unwrap().len(), 1 + m.record("test").len());
    }

    #[test]
    fn probe_trace_averages_samples_per_step() {
        let s = stats(3, &[0.0], vec![vec![1.0, 3.0], vec![0.5, f64::NAN], vec![f64::INFINITY, f64::NAN]], None);
        let t = probe_trace(&s);
        assert_eq!(t[..2], [2.0, 0.5]);
        assert!(t[2].is_nan());
    }
}
