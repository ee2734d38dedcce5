//! Per-sample solver statistics and best-iterate bookkeeping.

use crate::error::{DeqError, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// Which residual decides convergence and selects the best iterate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    /// `||f(z) - z||` per sample.
    #[default]
    Abs,
    /// `||f(z) - z|| / ||f(z)||` per sample.
    Rel,
}

impl std::str::FromStr for StopMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "abs" => Ok(Self::Abs),
            "rel" => Ok(Self::Rel),
            _ => Err(format!("unknown stop mode `{s}` (expected `abs` or `rel`)")),
        }
    }
}

impl std::fmt::Display for StopMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Abs => "abs",
            Self::Rel => "rel",
        })
    }
}

/// Statistics of one solve, per sample (TorchDEQ's `info`).
///
/// Traces hold the residual of every step actually taken (`trace[step][sample]`); unlike
/// TorchDEQ they are not padded with a leading `1e8` column or with the lowest value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SolverStats {
    /// Stop mode the solve used.
    pub stop_mode: StopMode,
    /// Lowest absolute residual reached by each sample.
    pub abs_lowest: Vec<f64>,
    /// Lowest relative residual reached by each sample.
    pub rel_lowest: Vec<f64>,
    /// Step (NFE count) at which each sample's returned state was found.
    pub nstep: Vec<usize>,
    /// Absolute residual of every step, `abs_trace[step][sample]`.
    pub abs_trace: Vec<Vec<f64>>,
    /// Relative residual of every step.
    pub rel_trace: Vec<Vec<f64>>,
    /// Number of function evaluations performed.
    pub nfe: usize,
    /// Samples for which `f` produced NaN or Inf at some step.
    pub nonfinite: Vec<bool>,
    /// Spectral radius estimate of the Jacobian at the fixed point, per sample, when requested.
    pub sradius: Option<Vec<f64>>,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl SolverStats {
    /// Mean over samples of the lowest absolute residual.
    pub fn mean_abs(&self) -> f64 {
        mean(&self.abs_lowest)
    }
    /// Mean over samples of the lowest relative residual.
    pub fn mean_rel(&self) -> f64 {
        mean(&self.rel_lowest)
    }
    /// Largest lowest-residual over samples in the stop mode.
    pub fn max_lowest(&self) -> f64 {
        let v = match self.stop_mode {
            StopMode::Abs => &self.abs_lowest,
            StopMode::Rel => &self.rel_lowest,
        };
        v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
    }
    /// Samples that diverged: in the stop mode, the lowest residual is above `tol` and the
    /// last residual exceeds `factor` times the first (the residual grew instead of falling).
    pub fn diverging(&self, tol: f64, factor: f64) -> Vec<usize> {
        let (trace, lowest) = match self.stop_mode {
            StopMode::Abs => (&self.abs_trace, &self.abs_lowest),
            StopMode::Rel => (&self.rel_trace, &self.rel_lowest),
        };
        let (Some(first), Some(last)) = (trace.first(), trace.last()) else { return Vec::new() };
        (0..lowest.len())
            .filter(|&i| {
                let (f, l) = (first.get(i).copied().unwrap_or(0.0), last.get(i).copied().unwrap_or(0.0));
                lowest[i] > tol && (l > factor * f || (l.is_nan() && !f.is_nan()))
            })
            .collect()
    }

    /// One line for error messages: NFE and, over samples, the largest first, lowest and last
    /// residual in the stop mode.
    pub fn summary(&self) -> String {
        let (trace, lowest) = match self.stop_mode {
            StopMode::Abs => (&self.abs_trace, &self.abs_lowest),
            StopMode::Rel => (&self.rel_trace, &self.rel_lowest),
        };
        let max = |v: &[f64]| v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        format!(
            "nfe {}, {} residual first {:.3e}, lowest {:.3e}, last {:.3e} (largest over samples)",
            self.nfe,
            self.stop_mode,
            trace.first().map_or(f64::NAN, |v| max(v)),
            max(lowest),
            trace.last().map_or(f64::NAN, |v| max(v))
        )
    }

    /// Mean over samples of `nstep`.
    pub fn mean_nstep(&self) -> f64 {
        mean(&self.nstep.iter().map(|&n| n as f64).collect::<Vec<_>>())
    }
    /// True when any sample saw NaN or Inf.
    pub fn any_nonfinite(&self) -> bool {
        self.nonfinite.iter().any(|&b| b)
    }
    /// Appends a later solve that continued from this one's result (the sliced core): traces are
    /// concatenated, NFE added, `nstep` offset by the NFE already spent, and the lowest residuals
    /// are the later solve's (they describe the state that is returned).
    pub fn chain(&mut self, later: SolverStats) {
        let offset = self.nfe;
        self.abs_trace.extend(later.abs_trace);
        self.rel_trace.extend(later.rel_trace);
        self.nfe += later.nfe;
        self.nonfinite = if self.nonfinite.is_empty() {
            later.nonfinite
        } else {
            self.nonfinite.iter().zip(&later.nonfinite).map(|(a, b)| *a || *b).collect()
        };
        self.abs_lowest = later.abs_lowest;
        self.rel_lowest = later.rel_lowest;
        self.nstep = later.nstep.iter().map(|n| n + offset).collect();
        self.stop_mode = later.stop_mode;
        if later.sradius.is_some() {
            self.sradius = later.sradius;
        }
    }
}

/// Best-iterate and statistics bookkeeping shared by the solvers.
pub(crate) struct Tracker<'a> {
    stats: SolverStats,
    best: Tensor,
    trajectory: Vec<Tensor>,
    indexing: &'a [usize],
    tol: f64,
    return_final: bool,
    pub(crate) step: usize,
}

impl<'a> Tracker<'a> {
    pub(crate) fn new(z0: &Tensor, opts: &'a super::SolverOptions) -> Self {
        let b = z0.dims()[0];
        Self {
            stats: SolverStats {
                stop_mode: opts.stop_mode,
                abs_lowest: vec![f64::INFINITY; b],
                rel_lowest: vec![f64::INFINITY; b],
                nstep: vec![0; b],
                nonfinite: vec![false; b],
                ..Default::default()
            },
            best: z0.clone(),
            trajectory: Vec::with_capacity(opts.indexing.len()),
            indexing: &opts.indexing,
            tol: opts.tol,
            return_final: opts.return_final,
            step: 0,
        }
    }

    /// Records one function evaluation whose candidate state is `candidate` and whose residuals
    /// are `abs` and `rel`. Returns true when every sample's current residual is under `tol`.
    pub(crate) fn record(&mut self, candidate: &Tensor, abs: Vec<f64>, rel: Vec<f64>) -> Result<bool> {
        self.step += 1;
        self.stats.nfe = self.step;
        let step = self.step;
        let mode = self.stats.stop_mode;
        let b = abs.len();
        let mut take = vec![false; b];
        for i in 0..b {
            if !abs[i].is_finite() || !rel[i].is_finite() {
                self.stats.nonfinite[i] = true;
            }
            let (cur, low) = match mode {
                StopMode::Abs => (abs[i], self.stats.abs_lowest[i]),
                StopMode::Rel => (rel[i], self.stats.rel_lowest[i]),
            };
            // NaN never compares lower, so a non-finite candidate is never kept as the best.
            take[i] = self.return_final || cur < low;
            if take[i] {
                self.stats.nstep[i] = step;
            }
            if self.return_final || abs[i] < self.stats.abs_lowest[i] {
                self.stats.abs_lowest[i] = abs[i];
            }
            if self.return_final || rel[i] < self.stats.rel_lowest[i] {
                self.stats.rel_lowest[i] = rel[i];
            }
        }
        let ntake = take.iter().filter(|&&t| t).count();
        if ntake == b {
            self.best = candidate.clone();
        } else if ntake > 0 {
            let mask: Vec<u8> = take.iter().map(|&t| t as u8).collect();
            let mask = Tensor::from_vec(mask, (b, 1), candidate.device())?
                .broadcast_as(candidate.shape())?;
            self.best = mask.where_cond(candidate, &self.best)?;
        }
        let cur = match mode {
            StopMode::Abs => &abs,
            StopMode::Rel => &rel,
        };
        let converged = !self.return_final && cur.iter().all(|&r| r < self.tol);
        self.stats.abs_trace.push(abs);
        self.stats.rel_trace.push(rel);
        if self.indexing.contains(&step) {
            self.trajectory.push(self.best.clone());
        }
        Ok(converged)
    }

    /// Finishes the solve: serves indices never reached (early stop) the final best state, and
    /// fails with [`DeqError::NonFinite`] if the returned state itself holds NaN or Inf.
    pub(crate) fn finish(self) -> Result<super::Solution> {
        let mut trajectory = self.trajectory;
        while trajectory.len() < self.indexing.len() {
            trajectory.push(self.best.clone());
        }
        if self.stats.any_nonfinite() {
            let finite = self
                .best
                .to_dtype(DType::F64)?
                .abs()?
                .max_keepdim(1)?
                .flatten_all()?
                .to_vec1::<f64>()?;
            let bad: Vec<usize> =
                finite.iter().enumerate().filter(|(_, v)| !v.is_finite()).map(|(i, _)| i).collect();
            if !bad.is_empty() {
                return Err(DeqError::NonFinite { context: "fixed-point solve", samples: bad });
            }
        }
        Ok(super::Solution { z: self.best, trajectory, stats: self.stats })
    }
}
