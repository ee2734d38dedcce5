//! A fitted representation: the DEQ-INR or the explicit SIREN baseline, behind one interface
//! for the trainer (amortised training forward, chunked prediction, parameters).

use crate::error::Result;
use crate::model::{AmortisedGrad, DeqInr, InrForward, SolveMode};
use crate::siren::Siren;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use deq_core::grad::AdjointCarry;
use deq_core::SolverStats;
use deq_train::{DeqObjective, JacTerm};

/// The DEQ's state between full-batch training steps: the last fixed-point estimate and, with
/// `amortised_grad = "carried_adjoint"`, the carried adjoint.
#[derive(Debug, Clone, Default)]
pub struct AmortisedCache {
    /// Last state (none before the first step: that step solves from zeros).
    pub z: Option<Tensor>,
    /// Carried adjoint.
    pub carry: AdjointCarry,
}

impl AmortisedCache {
    /// A cache restored from a checkpoint.
    pub fn restore(z: Option<Tensor>, adjoint: Option<Tensor>) -> Self {
        Self { z, carry: AdjointCarry::new(adjoint) }
    }
}

/// The network being fitted.
#[derive(Debug)]
pub enum InrNet {
    /// (Implicit)^2.
    Deq(DeqInr),
    /// Explicit SIREN.
    Siren(Siren),
}

/// One training forward: predictions and, for the DEQ, the solver statistics.
#[derive(Debug)]
pub struct TrainForward {
    /// Predictions `(N, C)` with their graph (the fixed point's).
    pub pred: Tensor,
    /// Predictions of every state the DEQ returned, earliest first (the last is `pred`); for
    /// fixed-point correction.
    pub state_preds: Vec<Tensor>,
    /// The DEQ's last state and the inputs of `f` (for the Jacobian regulariser).
    pub point: Option<(Tensor, Vec<Tensor>)>,
    /// Solver statistics (DEQ only).
    pub stats: Option<SolverStats>,
    /// Term to add to the loss before `backward` (carried adjoint; its value is not a loss).
    pub seed: Option<Tensor>,
}

impl TrainForward {
    /// The tensor to differentiate: `loss` plus [`TrainForward::seed`] when there is one.
    pub fn backward_target(&self, loss: Tensor) -> Result<Tensor> {
        Ok(match &self.seed {
            Some(s) => (loss + s)?,
            None => loss,
        })
    }
}

/// The DEQ's solves of one [`InrNet::predict`] (empty for SIREN).
#[derive(Debug, Clone, Default)]
pub struct PredictSolves {
    /// Mean over chunks of the largest solver step count.
    pub mean_steps: f64,
    /// Statistics of every chunk's solve.
    pub solver: deq_train::SolverMetrics,
    /// Residual trace of the first chunk (a fixed probe: the same points every evaluation).
    pub probe_trace: Vec<f64>,
}

impl InrNet {
    /// `deq` or `siren`.
    pub fn kind(&self) -> &'static str {
        match self {
            InrNet::Deq(_) => "deq",
            InrNet::Siren(_) => "siren",
        }
    }

    /// Training forward on coordinates `x`. For the DEQ, `cache` is the amortised state: with
    /// a state the step starts from it without solver iterations; without one it solves from
    /// zeros and fills it; `None` (minibatches) solves from zeros without a cache. Add
    /// [`TrainForward::seed`] to the loss, and call [`InrNet::finish_step`] after `backward`.
    pub fn train_forward(&self, x: &Tensor, cache: Option<&mut AmortisedCache>) -> Result<TrainForward> {
        let of = |out: InrForward, stats: Option<SolverStats>, seed: Option<Tensor>| -> Result<TrainForward> {
            let pred = out.preds.last().cloned().ok_or_else(|| candle_core::Error::Msg("the DEQ returned no state".into()))?;
            Ok(TrainForward { pred, state_preds: out.preds, point: Some((out.state, out.inputs)), stats, seed })
        };
        match self {
            InrNet::Siren(s) => {
                let pred = s.forward(x)?;
                Ok(TrainForward { state_preds: vec![pred.clone()], pred, point: None, stats: None, seed: None })
            }
            InrNet::Deq(m) => match cache {
                Some(c) => match (&c.z, m.config().amortised_grad) {
                    (Some(z0), AmortisedGrad::CarriedAdjoint) => {
                        let (out, seed) = m.forward_carried(x, z0, &mut c.carry)?;
                        c.z = Some(out.state.detach());
                        of(out, None, seed)
                    }
                    (z0, _) => {
                        let mode = if z0.is_some() { SolveMode::Amortised } else { SolveMode::Full };
                        let out = m.forward_states(x, z0.as_ref(), mode)?;
                        if mode == SolveMode::Full {
                            c.carry.reset();
                        }
                        c.z = Some(out.state.detach());
                        let stats = out.stats.clone();
                        of(out, Some(stats), None)
                    }
                },
                None => {
                    let out = m.forward_states(x, None, SolveMode::Full)?;
                    let stats = out.stats.clone();
                    of(out, Some(stats), None)
                }
            },
        }
    }

    /// The training objective of the `[deq]` options for a run seeded with `seed` (`None` for
    /// SIREN, which is not a DEQ). With full-batch training (`full`), whose steps refine a
    /// cached state instead of solving, the fixed-point-correction options are refused.
    pub fn objective(&self, seed: u64, full: bool) -> Result<Option<DeqObjective>> {
        let InrNet::Deq(m) = self else { return Ok(None) };
        let o = DeqObjective::new(m.deq_config(), seed)?;
        if full {
            o.refuse_correction("with full-batch training (its steps refine the cached state by the `grad` steps instead of solving): set fit.batch_size to train on minibatches solved from zeros")?;
        }
        Ok(Some(o))
    }

    /// The Jacobian regulariser of `objective` at step `step` at the last state of `fw`
    /// (`None` on steps it skips, and for SIREN).
    pub fn jacobian(&self, objective: &DeqObjective, step: usize, fw: &TrainForward) -> Result<Option<JacTerm>> {
        let (InrNet::Deq(m), Some((z, u))) = (self, &fw.point) else { return Ok(None) };
        let f = |z: &[Tensor]| -> candle_core::Result<Vec<Tensor>> { Ok(vec![m.f(&z[0], u).map_err(|e| candle_core::Error::Msg(e.to_string()))?]) };
        Ok(objective.jacobian(step, &f, std::slice::from_ref(z))?)
    }

    /// After `backward` of a step of [`InrNet::train_forward`]: advances the carried adjoint
    /// (nothing for other steps).
    pub fn finish_step(&self, grads: &GradStore, cache: Option<&mut AmortisedCache>) -> Result<()> {
        if let Some(c) = cache {
            if c.carry.is_pending() {
                c.carry.update(grads)?;
            }
        }
        Ok(())
    }

    /// Predictions for `x` (`(N, k)`), `chunk` points at a time (the DEQ solves each chunk
    /// from zeros), row-major `(N, C)`; also the solver statistics of the DEQ's solves.
    pub fn predict(&self, x: &Tensor, chunk: usize) -> Result<(Vec<f32>, PredictSolves)> {
        let n = x.dim(0)?;
        let chunk = if chunk == 0 { n.max(1) } else { chunk };
        let x = &x.to_dtype(self.named_vars().first().map(|(_, v)| v.dtype()).unwrap_or(candle_core::DType::F32))?;
        let mut out = Vec::new();
        let (mut steps, mut parts) = (0.0, 0usize);
        let mut solves = PredictSolves::default();
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let xs = x.narrow(0, start, len)?;
            let y = match self {
                InrNet::Siren(s) => s.forward(&xs)?.detach(),
                InrNet::Deq(m) => {
                    let (y, _, st) = m.forward(&xs, None, SolveMode::Eval)?;
                    steps += st.nstep.iter().copied().max().unwrap_or(0) as f64;
                    if parts == 0 {
                        solves.probe_trace = deq_train::probe_trace(&st);
                    }
                    solves.solver.add_forward(&st);
                    parts += 1;
                    y
                }
            };
            out.extend(y.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?);
            start += len;
        }
        solves.mean_steps = if parts > 0 { steps / parts as f64 } else { 0.0 };
        Ok((out, solves))
    }

    /// The device of the parameters (the CPU for a network without any).
    pub fn device(&self) -> candle_core::Device {
        self.named_vars().first().map(|(_, v)| v.device().clone()).unwrap_or(candle_core::Device::Cpu)
    }

    /// Trainable variables with names.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        match self {
            InrNet::Deq(m) => m.named_vars(),
            InrNet::Siren(s) => s.named_vars(),
        }
    }

    /// The parameters whose rounding becomes a phase error: the weight that multiplies the raw
    /// coordinates (the DEQ's injection, the SIREN's first layer) and, for the SIREN, the first
    /// bias, which is also multiplied by the first-layer frequency. [`crate::compress`] keeps
    /// them in f32: f16's relative error of 5e-4 at audio's scale (25000, or 3000 for SIREN) is a
    /// phase error of radians.
    pub fn phase_params(&self) -> &'static [&'static str] {
        match self {
            InrNet::Deq(_) => &["injection.weight"],
            InrNet::Siren(_) => &["layer.0.weight", "layer.0.bias"],
        }
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.as_tensor().elem_count()).sum()
    }

    /// Evaluations of `f` so far (DEQ; 0 for SIREN).
    pub fn f_evals(&self) -> usize {
        match self {
            InrNet::Deq(m) => m.f_evals(),
            InrNet::Siren(_) => 0,
        }
    }
}
