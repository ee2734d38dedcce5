//! Noise schedules and timestep sub-sequences (ermongroup/ddim's `get_beta_schedule`,
//! `compute_alpha` and `skip_type`, plus the cosine schedule of improved-diffusion).
//!
//! Betas are computed in f64. `alpha_bar(t)` is the cumulative product of `1 - beta` up to and
//! including step `t`, with `alpha_bar(-1) = 1` (the DDIM code prepends a zero beta), so the
//! last DDIM step (to timestep -1) returns the predicted clean image.

use serde::{Deserialize, Serialize};

use crate::error::{DdimError, Result};

/// How the betas grow over the diffusion steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)` (DDPM's and DDIM's schedule).
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end), T)^2`.
    Quad,
    /// `beta_end` at every step.
    Const,
    /// `1 / linspace(T, 1, T)`: `1/T, 1/(T-1), ..., 1`.
    Jsd,
    /// `sigmoid(linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start`.
    Sigmoid,
    /// Nichol & Dhariwal's cosine schedule: `alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2`
    /// at `s = t / T`, `beta_t = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), 0.999)`
    /// (`beta_start` and `beta_end` are not used).
    Cosine,
}

/// The `[diffusion]` table: the forward process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    /// The beta schedule.
    pub beta_schedule: BetaSchedule,
    /// First beta (linear, quad, sigmoid).
    pub beta_start: f64,
    /// Last beta (linear, quad, const, sigmoid).
    pub beta_end: f64,
    /// Number of diffusion steps `T` of training (timesteps `0..T`).
    pub num_diffusion_timesteps: usize,
}

impl Default for DiffusionConfig {
    /// DDPM's and DDIM's: linear from 1e-4 to 0.02 over 1000 steps.
    fn default() -> Self {
        Self { beta_schedule: BetaSchedule::Linear, beta_start: 1e-4, beta_end: 0.02, num_diffusion_timesteps: 1000 }
    }
}

impl DiffusionConfig {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_diffusion_timesteps < 2 || self.num_diffusion_timesteps > 100_000 {
            return Err(format!("diffusion.num_diffusion_timesteps = {} must be in 2..=100000", self.num_diffusion_timesteps));
        }
        if self.beta_schedule != BetaSchedule::Cosine && self.beta_schedule != BetaSchedule::Jsd {
            let ok = |b: f64| b > 0.0 && b < 1.0;
            if !ok(self.beta_end) || (self.beta_schedule != BetaSchedule::Const && (!ok(self.beta_start) || self.beta_start > self.beta_end)) {
                return Err(format!("diffusion.beta_start = {} and beta_end = {} must satisfy 0 < start <= end < 1", self.beta_start, self.beta_end));
            }
        }
        Ok(())
    }

    /// The schedule.
    pub fn schedule(&self) -> Result<NoiseSchedule> {
        self.validate().map_err(|e| DdimError::config("diffusion", e))?;
        Ok(NoiseSchedule::new(betas(self.beta_schedule, self.beta_start, self.beta_end, self.num_diffusion_timesteps)))
    }
}

/// `n` evenly spaced values from `a` to `b` inclusive (NumPy's `linspace`: `a + i * step`, the
/// last value exactly `b`).
fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f64;
    (0..n).map(|i| if i + 1 == n { b } else { a + i as f64 * step }).collect()
}

/// The `T = steps` betas of `kind`.
pub fn betas(kind: BetaSchedule, beta_start: f64, beta_end: f64, steps: usize) -> Vec<f64> {
    match kind {
        BetaSchedule::Linear => linspace(beta_start, beta_end, steps),
        BetaSchedule::Quad => linspace(beta_start.sqrt(), beta_end.sqrt(), steps).into_iter().map(|b| b * b).collect(),
        BetaSchedule::Const => vec![beta_end; steps],
        BetaSchedule::Jsd => linspace(steps as f64, 1.0, steps).into_iter().map(|v| 1.0 / v).collect(),
        BetaSchedule::Sigmoid => linspace(-6.0, 6.0, steps).into_iter().map(|v| 1.0 / (1.0 + (-v).exp()) * (beta_end - beta_start) + beta_start).collect(),
        BetaSchedule::Cosine => {
            let abar = |s: f64| ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
            (0..steps).map(|i| (1.0 - abar((i + 1) as f64 / steps as f64) / abar(i as f64 / steps as f64)).min(0.999)).collect()
        }
    }
}

/// A schedule's betas and cumulative products.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alpha_bar: Vec<f64>,
}

impl NoiseSchedule {
    /// From betas in `(0, 1]`.
    pub fn new(betas: Vec<f64>) -> Self {
        let mut acc = 1.0;
        let alpha_bar = betas.iter().map(|b| {
            acc *= 1.0 - b;
            acc
        }).collect();
        Self { betas, alpha_bar }
    }

    /// Number of diffusion steps `T`.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Whether the schedule has no steps.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// The betas.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// `alpha_bar(t) = prod_{s <= t} (1 - beta_s)` for `t` in `0..T`, and 1 at `t = -1`.
    ///
    /// # Panics
    /// If `t < -1` or `t >= T`.
    pub fn alpha_bar(&self, t: i64) -> f64 {
        if t == -1 {
            1.0
        } else {
            self.alpha_bar[usize::try_from(t).expect("timestep >= -1")]
        }
    }
}

/// How the sampling timesteps are spread over `0..T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SkipType {
    /// `range(0, T, T / steps)` (may give a few more than `steps` when `steps` does not divide
    /// `T`, as the DDIM code does).
    Uniform,
    /// `int(linspace(0, sqrt(0.8 T), steps)^2)`, denser near 0. The DDIM code keeps repeats
    /// created by the truncation (96 distinct of 100 at `T = 1000`); they are identity steps that
    /// still cost a model evaluation each, so they are dropped here.
    Quad,
}

/// The ascending timesteps of a `steps`-step sampler over a `T = num_timesteps` schedule.
pub fn timesteps(num_timesteps: usize, steps: usize, skip: SkipType) -> Result<Vec<usize>> {
    if steps == 0 || steps > num_timesteps {
        return Err(DdimError::config("sample.steps", format!("{steps} steps: must be in 1..={num_timesteps} (the schedule's length)")));
    }
    Ok(match skip {
        SkipType::Uniform => (0..num_timesteps).step_by(num_timesteps / steps).collect(),
        SkipType::Quad => {
            let mut seq: Vec<usize> = linspace(0.0, (num_timesteps as f64 * 0.8).sqrt(), steps).into_iter().map(|s| (s * s) as usize).collect();
            seq.dedup();
            seq
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_matches_ddpm() {
        let s = DiffusionConfig::default().schedule().unwrap();
        assert_eq!(s.len(), 1000);
        assert_eq!(s.betas()[0], 1e-4);
        assert_eq!(s.betas()[999], 0.02);
        assert!((s.betas()[500] - (1e-4 + 500.0 * (0.02 - 1e-4) / 999.0)).abs() < 1e-15);
        // DDPM's alpha_bar at the last step: ~4.04e-5.
        assert!((s.alpha_bar(999) - 4.0358e-5).abs() < 1e-8, "{}", s.alpha_bar(999));
        assert_eq!(s.alpha_bar(-1), 1.0);
        assert!((s.alpha_bar(0) - (1.0 - 1e-4)).abs() < 1e-15);
        assert!((s.alpha_bar(1) - (1.0 - 1e-4) * (1.0 - s.betas()[1])).abs() < 1e-15);
    }

    #[test]
    fn other_schedules() {
        let q = betas(BetaSchedule::Quad, 1e-4, 0.02, 5);
        assert!((q[0] - 1e-4).abs() < 1e-16 && (q[4] - 0.02).abs() < 1e-15);
        assert!((q[2] - ((0.01f64 + 0.02f64.sqrt()) / 2.0).powi(2)).abs() < 1e-15);
        assert_eq!(betas(BetaSchedule::Const, 1e-4, 0.02, 3), vec![0.02; 3]);
        assert_eq!(betas(BetaSchedule::Jsd, 0.0, 0.0, 4), vec![0.25, 1.0 / 3.0, 0.5, 1.0]);
        let sg = betas(BetaSchedule::Sigmoid, 1e-4, 0.02, 3);
        assert!((sg[1] - (0.5 * (0.02 - 1e-4) + 1e-4)).abs() < 1e-15);
        assert!((sg[0] - (1.0 / (1.0 + 6f64.exp()) * (0.02 - 1e-4) + 1e-4)).abs() < 1e-15);
        let c = betas(BetaSchedule::Cosine, 0.0, 0.0, 1000);
        let abar = |s: f64| ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
        let sch = NoiseSchedule::new(c.clone());
        // Without the clip, alpha_bar(t) = abar((t+1)/T) / abar(0).
        assert!((sch.alpha_bar(499) - abar(0.5) / abar(0.0)).abs() < 1e-12);
        assert_eq!(c[999], 0.999);
        assert!(c.iter().all(|&b| b > 0.0 && b <= 0.999) && c.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn timestep_sequences_follow_the_ddim_code() {
        assert_eq!(timesteps(1000, 10, SkipType::Uniform).unwrap(), (0..1000).step_by(100).collect::<Vec<_>>());
        assert_eq!(timesteps(1000, 3, SkipType::Uniform).unwrap(), vec![0, 333, 666, 999]);
        let q = timesteps(1000, 100, SkipType::Quad).unwrap();
        assert_eq!(q.len(), 96);
        assert_eq!(*q.last().unwrap(), 800);
        assert!(q.windows(2).all(|w| w[0] < w[1]));
        // int((i * sqrt(800) / 9)^2) for i = 0..10.
        assert_eq!(timesteps(1000, 10, SkipType::Quad).unwrap(), vec![0, 9, 39, 88, 158, 246, 355, 483, 632, 800]);
        assert!(timesteps(1000, 0, SkipType::Uniform).is_err());
        assert!(timesteps(10, 11, SkipType::Quad).is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut d = DiffusionConfig { beta_start: 0.1, beta_end: 0.01, ..Default::default() };
        assert!(d.validate().unwrap_err().contains("beta_start"));
        d = DiffusionConfig { num_diffusion_timesteps: 1, ..Default::default() };
        assert!(d.schedule().unwrap_err().to_string().contains("num_diffusion_timesteps"));
        assert!(DiffusionConfig { beta_schedule: BetaSchedule::Cosine, beta_start: 0.0, beta_end: 0.0, ..Default::default() }.validate().is_ok());
    }
}
