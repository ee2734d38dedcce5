//! Reading a run's `metrics.jsonl` into named series.

use crate::error::{Result, TrainError};
use serde_json::Value;
use std::path::Path;

/// The records of one metrics file, in order.
#[derive(Debug, Clone, Default)]
pub struct Records(pub Vec<serde_json::Map<String, Value>>);

/// Keys tried, in order, for the training-progress axis.
pub const PROGRESS_KEYS: [&str; 2] = ["step", "epoch"];
/// Keys tried, in order, for the wall-clock axis.
pub const TIME_KEYS: [&str; 2] = ["elapsed_seconds", "train_seconds"];
/// Key of the probe batch's residual trace (see [`crate::solver_metrics::probe_trace`]).
pub const PROBE_KEY: &str = "probe_rel_trace";

impl Records {
    /// Reads a JSON-lines file; a line that is not a JSON object is an error naming the file
    /// and the line.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(o)) => out.push(o),
                Ok(_) => return Err(TrainError::format(path, format!("line {}: not a JSON object", i + 1))),
                Err(e) => return Err(TrainError::format(path, format!("line {}: {e}", i + 1))),
            }
        }
        Ok(Self(out))
    }

    /// The first of `keys` that some record holds as a number.
    pub fn axis(&self, keys: &[&'static str]) -> Option<&'static str> {
        keys.iter().copied().find(|k| self.0.iter().any(|r| r.get(*k).is_some_and(Value::is_number)))
    }

    /// Every numeric key, in order of first appearance.
    pub fn numeric_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for r in &self.0 {
            for (k, v) in r {
                if v.is_number() && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        keys
    }

    /// `(x, y)` points of `key` against `x_key`, over the records that hold both as finite numbers.
    pub fn series(&self, x_key: &str, key: &str) -> Vec<(f64, f64)> {
        self.0
            .iter()
            .filter_map(|r| Some((r.get(x_key)?.as_f64()?, r.get(key)?.as_f64()?)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    }

    /// The probe residual traces, with the progress value of their record.
    pub fn probe_traces(&self, x_key: &str) -> Vec<(f64, Vec<f64>)> {
        self.0
            .iter()
            .filter_map(|r| {
                let trace: Vec<f64> = r.get(PROBE_KEY)?.as_array()?.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect();
                Some((r.get(x_key).and_then(Value::as_f64).unwrap_or(0.0), trace))
            })
            .filter(|(_, t)| !t.is_empty())
            .collect()
    }
}
