//! Learning-rate schedules, evaluated per optimiser step.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule. `lr_at(base, step)` gives the rate for optimiser step `step`
/// (0-based), `base` being the configured (peak) learning rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Linear warm-up from `base / warmup_steps` to `base`, then a cosine decay to `min_lr` at
    /// `total_steps` (the DEQ zoo's default).
    Cosine {
        /// Steps of linear warm-up.
        #[serde(default)]
        warmup_steps: usize,
        /// Length of the whole schedule.
        total_steps: usize,
        /// Final learning rate.
        #[serde(default)]
        min_lr: f64,
    },
    /// `base * gamma^(step / step_size)`.
    Step {
        /// Steps between decays.
        step_size: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// One-cycle with linear annealing (`torch.optim.lr_scheduler.OneCycleLR`, `anneal_strategy
    /// = "linear"`, two phases): from `base / div_factor` up to `base` over `pct_start` of the
    /// steps, then down to `base / div_factor / final_div_factor`.
    OneCycle {
        /// Length of the whole schedule.
        total_steps: usize,
        /// Fraction of the steps spent increasing.
        #[serde(default = "default_pct_start")]
        pct_start: f64,
        /// Initial rate = base / div_factor.
        #[serde(default = "default_div")]
        div_factor: f64,
        /// Final rate = initial / final_div_factor.
        #[serde(default = "default_final_div")]
        final_div_factor: f64,
    },
}

fn default_pct_start() -> f64 {
    0.3
}
fn default_div() -> f64 {
    25.0
}
fn default_final_div() -> f64 {
    1e4
}

/// Cosine decay from `base` at `progress = 0` to `min_lr` at `progress = 1` (clamped), the
/// decay of [`Schedule::Cosine`]; trainers whose progress is not a step count (a time budget)
/// call it directly.
pub fn cosine_decay(base: f64, min_lr: f64, progress: f64) -> f64 {
    min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * progress.clamp(0.0, 1.0)).cos())
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Constant
    }
}

impl Schedule {
    /// The learning rate at optimiser step `step` (0-based).
    pub fn lr_at(&self, base: f64, step: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Cosine { warmup_steps, total_steps, min_lr } => {
                if step < warmup_steps {
                    return base * (step + 1) as f64 / warmup_steps as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
                let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                cosine_decay(base, min_lr, progress)
            }
            Schedule::Step { step_size, gamma } => base * gamma.powi((step / step_size.max(1)) as i32),
            Schedule::OneCycle { total_steps, pct_start, div_factor, final_div_factor } => {
                let initial = base / div_factor;
                let min = initial / final_div_factor;
                let up_end = (pct_start * total_steps as f64 - 1.0).max(1.0);
                let down_end = (total_steps as f64 - 1.0).max(up_end + 1.0);
                let s = step as f64;
                if s <= up_end {
                    initial + (base - initial) * s / up_end
                } else {
                    let pct = ((s - up_end) / (down_end - up_end)).min(1.0);
                    base + (min - base) * pct
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_with_warmup() {
        let s = Schedule::Cosine { warmup_steps: 10, total_steps: 110, min_lr: 0.0 };
        assert!((s.lr_at(0.1, 0) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(0.1, 9) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(0.1, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(0.1, 60) - 0.05).abs() < 1e-12);
        assert!(s.lr_at(0.1, 110).abs() < 1e-12);
        assert!(s.lr_at(0.1, 500).abs() < 1e-12);
    }

    #[test]
    fn step_and_one_cycle() {
        let s = Schedule::Step { step_size: 10, gamma: 0.5 };
        assert_eq!(s.lr_at(1.0, 9), 1.0);
        assert_eq!(s.lr_at(1.0, 25), 0.25);
        let o = Schedule::OneCycle { total_steps: 101, pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 };
        assert!((o.lr_at(1.0, 0) - 0.04).abs() < 1e-12);
        let peak = (0..101).map(|i| o.lr_at(1.0, i)).fold(0.0f64, f64::max);
        assert!((peak - 1.0).abs() < 1e-2, "peak {peak}");
        assert!((o.lr_at(1.0, 100) - 0.04 / 1e4).abs() < 1e-12);
    }

    #[test]
    fn deserialises_by_kind_and_rejects_unknown_keys() {
        let ok: Schedule = serde_json::from_value(serde_json::json!({"kind": "cosine", "warmup_steps": 5, "total_steps": 50})).unwrap();
        assert_eq!(ok, Schedule::Cosine { warmup_steps: 5, total_steps: 50, min_lr: 0.0 });
        let bad = serde_json::from_value::<Schedule>(serde_json::json!({"kind": "cosine", "total_steps": 5, "warmup": 1}));
        assert!(bad.unwrap_err().to_string().contains("warmup"));
    }
}
