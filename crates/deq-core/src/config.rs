//! [`DeqConfig`]: every option of TorchDEQ's `add_deq_args`, with the same names and defaults,
//! loadable from TOML (unknown keys are errors) and overridable from the command line through
//! [`DeqArgs`].

use crate::error::{DeqError, Result};
use crate::solver::{get_solver, StopMode};
use serde::{Deserialize, Serialize};

/// Reparameterisation applied to the layers of `f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NormType {
    /// No reparameterisation.
    None,
    /// Weight normalisation (`W = g v / ||v||` per output row).
    #[default]
    WeightNorm,
    /// Spectral normalisation (`W = g W / sigma(W)`).
    SpectralNorm,
}

impl std::str::FromStr for NormType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "weight_norm" => Ok(Self::WeightNorm),
            "spectral_norm" => Ok(Self::SpectralNorm),
            _ => Err(format!("unknown norm_type `{s}` (expected none, weight_norm or spectral_norm)")),
        }
    }
}

/// How the DEQ produces the states it supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Core {
    /// One solve; states are sampled from its trajectory at cumulative steps.
    Indexing,
    /// The solve is cut into segments, each resuming from the previous gradient state.
    #[default]
    Sliced,
}

impl std::str::FromStr for Core {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "indexing" => Ok(Self::Indexing),
            "sliced" => Ok(Self::Sliced),
            _ => Err(format!("unknown core `{s}` (expected indexing or sliced)")),
        }
    }
}

/// Every DEQ option, named and defaulted as TorchDEQ's `add_deq_args`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeqConfig {
    /// Forward solver name.
    pub f_solver: String,
    /// Backward (adjoint) solver name.
    pub b_solver: String,
    /// Forward NFE budget.
    pub f_max_iter: usize,
    /// Backward NFE budget.
    pub b_max_iter: usize,
    /// Forward tolerance.
    pub f_tol: f64,
    /// Backward tolerance.
    pub b_tol: f64,
    /// Forward stop mode.
    pub f_stop_mode: StopMode,
    /// Backward stop mode.
    pub b_stop_mode: StopMode,
    /// Evaluation budget factor: `eval max_iter = f_max_iter * eval_factor`.
    pub eval_factor: f64,
    /// Evaluation budget, overrides `eval_factor` when > 0.
    pub eval_f_max_iter: usize,
    /// Reparameterisation of `f`'s layers.
    pub norm_type: NormType,
    /// Do not learn the norm scale; use `norm_target_norm`.
    pub norm_no_scale: bool,
    /// Clip the norm factor at `norm_clip_value`.
    pub norm_clip: bool,
    /// Upper bound of the clipped factor.
    pub norm_clip_value: f64,
    /// Target norm when the scale is not learned (and the spectral norm's initial scale).
    pub norm_target_norm: f64,
    /// Power iterations per spectral-norm recomputation.
    pub sn_n_power_iters: usize,
    /// Indexing or sliced core.
    pub core: Core,
    /// Implicit differentiation for the last state.
    pub ift: bool,
    /// TorchDEQ's hook-based IFT. Here it is the same custom op as `ift` with the Jacobian taken at
    /// the solver's fixed point; it never hangs when the layer is called twice before backward.
    pub hook_ift: bool,
    /// Number of supervised states (fixed-point correction).
    pub n_states: usize,
    /// Explicit solver steps at which to supervise states.
    #[serde(deserialize_with = "one_or_many")]
    pub indexing: Vec<usize>,
    /// Fixed-point-correction decay (`gamma^(n-k-1)`).
    pub gamma: f64,
    /// Phantom-gradient steps, one value or one per state.
    #[serde(deserialize_with = "one_or_many")]
    pub grad: Vec<usize>,
    /// Phantom-gradient damping.
    pub tau: f64,
    /// Phantom-gradient sampling gap (-1: off).
    pub sup_gap: i64,
    /// Phantom-gradient sampling locations.
    #[serde(deserialize_with = "one_or_many")]
    pub sup_loc: Vec<usize>,
    /// Jacobian-regulariser weight.
    pub jac_loss_weight: f64,
    /// Probability of applying the Jacobian regulariser on a step.
    pub jac_loss_freq: f64,
    /// Raise `jac_loss_weight` by 0.1 every this many steps (0: off).
    pub jac_incremental: usize,
    /// Estimate the spectral radius at the fixed point in evaluation.
    pub sradius_mode: bool,
    /// Not in TorchDEQ: keep the gradient path (IFT or phantom) in evaluation mode too, e.g. for
    /// adversarial attacks or meta-learning through a trained DEQ.
    pub differentiable_eval: bool,
}

impl Default for DeqConfig {
    fn default() -> Self {
        Self {
            f_solver: "fixed_point_iter".into(),
            b_solver: "fixed_point_iter".into(),
            f_max_iter: 40,
            b_max_iter: 40,
            f_tol: 1e-3,
            b_tol: 1e-6,
            f_stop_mode: StopMode::Abs,
            b_stop_mode: StopMode::Abs,
            eval_factor: 1.0,
            eval_f_max_iter: 0,
            norm_type: NormType::WeightNorm,
            norm_no_scale: false,
            norm_clip: false,
            norm_clip_value: 1.0,
            norm_target_norm: 1.0,
            sn_n_power_iters: 1,
            core: Core::Sliced,
            ift: false,
            hook_ift: false,
            n_states: 1,
            indexing: Vec::new(),
            gamma: 0.8,
            grad: vec![1],
            tau: 1.0,
            sup_gap: -1,
            sup_loc: Vec::new(),
            jac_loss_weight: 0.0,
            jac_loss_freq: 0.0,
            jac_incremental: 0,
            sradius_mode: false,
            differentiable_eval: false,
        }
    }
}

/// Reads a list of step counts written either as a list (`[5, 10]`) or, as TorchDEQ's
/// `get_deq(grad=5)` accepts, as one integer (`5`, the same as `[5]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<usize>, D::Error> {
    struct Steps;
    impl<'de> serde::de::Visitor<'de> for Steps {
        type Value = Vec<usize>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a step count or a list of step counts")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
            usize::try_from(v).map(|v| vec![v]).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
            usize::try_from(v).map(|v| vec![v]).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element::<usize>()? {
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Steps)
}

fn bad(key: &str, message: impl Into<String>) -> DeqError {
    DeqError::Config { key: key.to_string(), message: message.into() }
}

impl DeqConfig {
    /// Parses a TOML table (the `[deq]` section of a model config). Unknown keys are errors.
    /// (Cargo feature `toml`, on by default.)
    #[cfg(feature = "toml")]
    pub fn from_toml_str(s: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(s).map_err(|e| DeqError::Toml(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Serialises to TOML. (Cargo feature `toml`, on by default.)
    #[cfg(feature = "toml")]
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| DeqError::Toml(e.to_string()))
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<()> {
        get_solver(&self.f_solver).map_err(|e| bad("f_solver", e.to_string()))?;
        get_solver(&self.b_solver).map_err(|e| bad("b_solver", e.to_string()))?;
        // f_max_iter = 0 is allowed: the solver is skipped and the state is z0 (warm-started,
        // amortised steps, as TorchDEQ's `solver_kwargs={'f_max_iter': 0}`).
        for (k, v) in [("f_tol", self.f_tol), ("b_tol", self.b_tol)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(k, format!("must be a finite non-negative number, got {v}")));
            }
        }
        if !(self.eval_factor.is_finite() && self.eval_factor > 0.0) {
            return Err(bad("eval_factor", "must be positive"));
        }
        if self.n_states == 0 {
            return Err(bad("n_states", "must be at least 1"));
        }
        if self.grad.is_empty() || self.grad.contains(&0) {
            return Err(bad("grad", "needs one or more step counts, each at least 1"));
        }
        if !(self.tau > 0.0 && self.tau <= 1.0) {
            return Err(bad("tau", format!("must be in (0, 1], got {}", self.tau)));
        }
        if self.sup_gap == 0 || self.sup_gap < -1 {
            return Err(bad("sup_gap", "must be -1 (off) or positive"));
        }
        if self.indexing.windows(2).any(|w| w[0] >= w[1]) || self.indexing.contains(&0) {
            return Err(bad("indexing", "steps must be positive and strictly increasing"));
        }
        if self.indexing.last().is_some_and(|&l| l >= self.f_max_iter) {
            return Err(bad("indexing", format!("steps must be below f_max_iter ({})", self.f_max_iter)));
        }
        if !(0.0..=1.0).contains(&self.jac_loss_freq) {
            return Err(bad("jac_loss_freq", "must be a probability in [0, 1]"));
        }
        if self.norm_clip_value <= 0.0 || self.norm_target_norm <= 0.0 {
            return Err(bad("norm_clip_value", "norm values must be positive"));
        }
        let n = self.supervised_states();
        if self.grad.len() != 1 && self.grad.len() != n {
            return Err(bad("grad", format!("has {} values but {n} states are supervised", self.grad.len())));
        }
        Ok(())
    }

    /// Forward NFE budget in evaluation mode.
    pub fn eval_max_iter(&self) -> usize {
        if self.eval_f_max_iter > 0 {
            self.eval_f_max_iter
        } else {
            ((self.f_max_iter as f64 * self.eval_factor) as usize).max(1)
        }
    }

    /// Number of states the training forward returns before phantom sampling.
    pub fn supervised_states(&self) -> usize {
        if self.n_states > 1 {
            self.n_states.min(self.f_max_iter)
        } else {
            self.indexing.len() + 1
        }
    }

    /// Whether implicit differentiation is used for the last state.
    pub fn uses_ift(&self) -> bool {
        self.ift || self.hook_ift
    }

    /// Jacobian-regulariser weight at a training step (with `jac_incremental`).
    pub fn jac_weight_at(&self, step: usize) -> f64 {
        if self.jac_incremental > 0 {
            self.jac_loss_weight + 0.1 * (step / self.jac_incremental) as f64
        } else {
            self.jac_loss_weight
        }
    }
}

/// Heading of the DEQ flags in `--help`.
#[cfg(feature = "cli")]
const DEQ_HEADING: &str = "DEQ options (TorchDEQ names; applied to [deq])";

/// Command-line overrides for [`DeqConfig`], with TorchDEQ's flag names (`--f_solver anderson`).
/// Every flag is optional; [`DeqArgs::apply`] overwrites only what was given.
/// (Cargo feature `cli`, on by default.)
#[cfg(feature = "cli")]
#[derive(Debug, Clone, Default, clap::Args)]
#[allow(missing_docs)]
pub struct DeqArgs {
    /// Forward solver: fixed_point_iter, simple_fixed_point_iter, anderson, broyden (or a registered one).
    #[arg(long = "f_solver", help_heading = DEQ_HEADING)]
    pub f_solver: Option<String>,
    /// Backward (adjoint) solver of implicit differentiation.
    #[arg(long = "b_solver", help_heading = DEQ_HEADING)]
    pub b_solver: Option<String>,
    /// Forward NFE budget (0: no solve, the state is z0).
    #[arg(long = "f_max_iter", help_heading = DEQ_HEADING)]
    pub f_max_iter: Option<usize>,
    /// Backward NFE budget.
    #[arg(long = "b_max_iter", help_heading = DEQ_HEADING)]
    pub b_max_iter: Option<usize>,
    /// Forward stopping tolerance.
    #[arg(long = "f_tol", help_heading = DEQ_HEADING)]
    pub f_tol: Option<f64>,
    /// Backward stopping tolerance.
    #[arg(long = "b_tol", help_heading = DEQ_HEADING)]
    pub b_tol: Option<f64>,
    /// Forward residual: abs or rel.
    #[arg(long = "f_stop_mode", help_heading = DEQ_HEADING)]
    pub f_stop_mode: Option<StopMode>,
    /// Backward residual: abs or rel.
    #[arg(long = "b_stop_mode", help_heading = DEQ_HEADING)]
    pub b_stop_mode: Option<StopMode>,
    /// Evaluation budget = f_max_iter * eval_factor.
    #[arg(long = "eval_factor", help_heading = DEQ_HEADING)]
    pub eval_factor: Option<f64>,
    /// Evaluation budget (overrides eval_factor when > 0).
    #[arg(long = "eval_f_max_iter", help_heading = DEQ_HEADING)]
    pub eval_f_max_iter: Option<usize>,
    /// Reparameterisation of f's layers: none, weight_norm, spectral_norm.
    #[arg(long = "norm_type", help_heading = DEQ_HEADING)]
    pub norm_type: Option<NormType>,
    /// Do not learn the norm scale (use norm_target_norm).
    #[arg(long = "norm_no_scale", help_heading = DEQ_HEADING, num_args = 0..=1, default_missing_value = "true")]
    pub norm_no_scale: Option<bool>,
    /// Clip the norm factor at norm_clip_value.
    #[arg(long = "norm_clip", help_heading = DEQ_HEADING, num_args = 0..=1, default_missing_value = "true")]
    pub norm_clip: Option<bool>,
    /// Upper bound of the clipped norm factor.
    #[arg(long = "norm_clip_value", help_heading = DEQ_HEADING)]
    pub norm_clip_value: Option<f64>,
    /// Target norm when the scale is not learned.
    #[arg(long = "norm_target_norm", help_heading = DEQ_HEADING)]
    pub norm_target_norm: Option<f64>,
    /// Power iterations per spectral-norm recomputation.
    #[arg(long = "sn_n_power_iters", help_heading = DEQ_HEADING)]
    pub sn_n_power_iters: Option<usize>,
    /// DEQ core: sliced or indexing.
    #[arg(long = "core", help_heading = DEQ_HEADING)]
    pub core: Option<Core>,
    /// Implicit differentiation for the last state.
    #[arg(long = "ift", help_heading = DEQ_HEADING, num_args = 0..=1, default_missing_value = "true")]
    pub ift: Option<bool>,
    /// TorchDEQ's hook IFT (same custom op here).
    #[arg(long = "hook_ift", help_heading = DEQ_HEADING, num_args = 0..=1, default_missing_value = "true")]
    pub hook_ift: Option<bool>,
    /// Number of supervised states (fixed-point correction).
    #[arg(long = "n_states", help_heading = DEQ_HEADING)]
    pub n_states: Option<usize>,
    /// Solver steps at which to supervise states (one or more).
    #[arg(long = "indexing", help_heading = DEQ_HEADING, num_args = 1..)]
    pub indexing: Option<Vec<usize>>,
    /// Fixed-point-correction decay.
    #[arg(long = "gamma", help_heading = DEQ_HEADING)]
    pub gamma: Option<f64>,
    /// Phantom-gradient steps, one value or one per state.
    #[arg(long = "grad", help_heading = DEQ_HEADING, num_args = 1..)]
    pub grad: Option<Vec<usize>>,
    /// Phantom-gradient damping, in (0, 1].
    #[arg(long = "tau", help_heading = DEQ_HEADING)]
    pub tau: Option<f64>,
    /// Phantom-gradient sampling gap (-1: off).
    #[arg(long = "sup_gap", help_heading = DEQ_HEADING, allow_negative_numbers = true)]
    pub sup_gap: Option<i64>,
    /// Phantom-gradient sampling locations.
    #[arg(long = "sup_loc", help_heading = DEQ_HEADING, num_args = 1..)]
    pub sup_loc: Option<Vec<usize>>,
    /// Jacobian-regulariser weight.
    #[arg(long = "jac_loss_weight", help_heading = DEQ_HEADING)]
    pub jac_loss_weight: Option<f64>,
    /// Probability of applying the Jacobian regulariser on a step.
    #[arg(long = "jac_loss_freq", help_heading = DEQ_HEADING)]
    pub jac_loss_freq: Option<f64>,
    /// Raise jac_loss_weight by 0.1 every this many steps (0: off).
    #[arg(long = "jac_incremental", help_heading = DEQ_HEADING)]
    pub jac_incremental: Option<usize>,
    /// Estimate the spectral radius at the fixed point in evaluation.
    #[arg(long = "sradius_mode", help_heading = DEQ_HEADING, num_args = 0..=1, default_missing_value = "true")]
    pub sradius_mode: Option<bool>,
    /// Keep the gradient path in evaluation mode (not in TorchDEQ).
    #[arg(long = "differentiable_eval", help_heading = DEQ_HEADING, num_args = 0..=1, default_missing_value = "true")]
    pub differentiable_eval: Option<bool>,
}

#[cfg(feature = "cli")]
impl DeqArgs {
    /// Overwrites the fields of `cfg` given on the command line, then validates.
    pub fn apply(&self, cfg: &mut DeqConfig) -> Result<()> {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { cfg.$f = v.clone(); } )* };
        }
        set!(
            f_solver, b_solver, f_max_iter, b_max_iter, f_tol, b_tol, f_stop_mode, b_stop_mode,
            eval_factor, eval_f_max_iter, norm_type, norm_no_scale, norm_clip, norm_clip_value,
            norm_target_norm, sn_n_power_iters, core, ift, hook_ift, n_states, indexing, gamma, grad,
            tau, sup_gap, sup_loc, jac_loss_weight, jac_loss_freq, jac_incremental, sradius_mode,
            differentiable_eval
        );
        cfg.validate()
    }
}

#[cfg(all(test, feature = "cli", feature = "toml"))]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        deq: DeqArgs,
    }

    #[test]
    fn defaults_match_torchdeq() {
        let c = DeqConfig::default();
        assert_eq!((c.f_max_iter, c.b_max_iter, c.f_tol, c.b_tol), (40, 40, 1e-3, 1e-6));
        assert_eq!((c.f_solver.as_str(), c.core, c.norm_type), ("fixed_point_iter", Core::Sliced, NormType::WeightNorm));
        assert_eq!((c.gamma, c.grad.clone(), c.tau, c.sup_gap), (0.8, vec![1], 1.0, -1));
        assert_eq!(c.eval_max_iter(), 40);
        c.validate().unwrap();
    }

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let mut c = DeqConfig::default();
        c.f_solver = "anderson".into();
        c.indexing = vec![5, 10];
        c.f_stop_mode = StopMode::Rel;
        c.norm_type = NormType::SpectralNorm;
        let s = c.to_toml_string().unwrap();
        assert_eq!(DeqConfig::from_toml_str(&s).unwrap(), c);
        let partial = DeqConfig::from_toml_str("f_solver = \"broyden\"\nf_max_iter = 22\n").unwrap();
        assert_eq!((partial.f_solver.as_str(), partial.f_max_iter, partial.b_max_iter), ("broyden", 22, 40));
        let err = DeqConfig::from_toml_str("f_solvr = \"broyden\"").unwrap_err().to_string();
        assert!(err.contains("f_solvr"), "{err}");
        let err = DeqConfig::from_toml_str("f_solver = \"newton\"").unwrap_err().to_string();
        assert!(err.contains("f_solver") && err.contains("newton"), "{err}");
        // TorchDEQ accepts one integer where a list of steps is expected (`get_deq(grad=5)`).
        let scalar = DeqConfig::from_toml_str("grad = 5\nindexing = 3\nsup_loc = 2\n").unwrap();
        assert_eq!((scalar.grad.clone(), scalar.indexing.clone(), scalar.sup_loc.clone()), (vec![5], vec![3], vec![2]));
        let lists = DeqConfig::from_toml_str("grad = [5]\nindexing = [3]\nsup_loc = [2]\n").unwrap();
        assert_eq!(scalar, lists);
        let err = DeqConfig::from_toml_str("grad = -1").unwrap_err().to_string();
        assert!(err.contains("grad") && err.contains("a step count or a list of step counts"), "{err}");
        // The same from JSON (unsigned integers take another path through serde).
        let json: DeqConfig = serde_json::from_str(r#"{"grad": 5, "indexing": [2, 4], "sup_loc": 1}"#).unwrap();
        assert_eq!((json.grad, json.indexing, json.sup_loc), (vec![5], vec![2, 4], vec![1]));
        let err = DeqConfig::from_toml_str("tau = 1.5").unwrap_err().to_string();
        assert!(err.contains("tau"), "{err}");
    }

    #[test]
    fn cli_flags_use_torchdeq_names() {
        let cli = Cli::parse_from([
            "x", "--f_solver", "anderson", "--f_max_iter", "30", "--ift", "--indexing", "5", "10",
            "--sup_gap", "-1", "--f_stop_mode", "rel", "--norm_type", "spectral_norm",
        ]);
        let mut c = DeqConfig::default();
        cli.deq.apply(&mut c).unwrap();
        assert_eq!(c.f_solver, "anderson");
        assert_eq!(c.f_max_iter, 30);
        assert!(c.ift);
        assert_eq!(c.indexing, vec![5, 10]);
        assert_eq!(c.f_stop_mode, StopMode::Rel);
        assert_eq!(c.norm_type, NormType::SpectralNorm);
        assert_eq!(c.b_max_iter, 40, "untouched keys keep their value");
        assert!(Cli::try_parse_from(["x", "--f_solvr", "anderson"]).is_err());
    }
}
