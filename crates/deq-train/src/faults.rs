//! Numerical faults in training: NaN or Inf in a batch, the forward solve, the loss, the
//! adjoint solve or the gradient, and solves that diverge.
//!
//! A trainer runs each step's stages through a [`FaultGuard`]: by default (`stop`) the first
//! fault ends the run with an error naming the step, the stage and the error (which carries
//! the solver's statistics for solver faults); with `skip` the batch is dropped without an
//! optimiser step, counted, and the run goes on until more than `max_skipped` batches have
//! been dropped. Other errors (I/O, configuration) pass through untouched.

use crate::error::TrainError;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::error::Error;

/// What a trainer does with a numerical fault (`train.on_nonfinite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    /// Stop the run with an error naming the step and the stage.
    #[default]
    Stop,
    /// Skip the batch (no optimiser step) and count it.
    Skip,
}

/// Whether `e` or an error in its chain is a numerical fault: deq-core's
/// [`DeqError::NonFinite`](deq_core::DeqError::NonFinite) or
/// [`DeqError::Diverging`](deq_core::DeqError::Diverging) (also inside a candle error, as
/// backward passes return them), or [`TrainError::Diverged`] (a non-finite loss, gradient
/// or batch).
pub fn is_numerical_fault(e: &(dyn Error + 'static)) -> bool {
    let mut cur: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<deq_core::DeqError>() {
            if matches!(d, deq_core::DeqError::NonFinite { .. } | deq_core::DeqError::Diverging { .. }) {
                return true;
            }
        }
        // `Deq` and `Candle` are transparent: their `source()` skips the error they hold.
        match err.downcast_ref::<TrainError>() {
            Some(TrainError::Diverged { .. }) => return true,
            Some(TrainError::Deq(d)) if is_numerical_fault(d) => return true,
            Some(TrainError::Candle(c)) if is_numerical_fault(c) => return true,
            _ => {}
        }
        if let Some(c) = err.downcast_ref::<candle_core::Error>() {
            // Backward passes carry deq-core's errors as candle errors, which keep only the
            // message: match deq-core's wording.
            let m = c.to_string();
            if m.contains("non-finite values (NaN/Inf)") || m.contains("diverging ") {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// An error that [`FaultGuard`] can classify: its source chain is searched by
/// [`is_numerical_fault`]; a crate whose error type turns deq-train's
/// [`TrainError::Diverged`] into a variant of its own says so in [`FaultChain::is_numerical`].
pub trait FaultChain: std::fmt::Display {
    /// The error as the head of its source chain.
    fn chain(&self) -> &(dyn Error + 'static);
    /// Whether this is a numerical fault (by default: [`is_numerical_fault`] of the chain).
    fn is_numerical(&self) -> bool {
        is_numerical_fault(self.chain())
    }
}

impl FaultChain for anyhow::Error {
    fn chain(&self) -> &(dyn Error + 'static) {
        self.as_ref()
    }
}

impl FaultChain for TrainError {
    fn chain(&self) -> &(dyn Error + 'static) {
        self
    }
}

/// Fails with [`TrainError::Diverged`] when `t` holds NaN or Inf (one pass: `t - t` is zero
/// exactly where `t` is finite).
pub fn check_tensor_finite(what: &str, t: &Tensor, step: usize) -> crate::Result<()> {
    let s = (t - t)?.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    if s.is_finite() {
        Ok(())
    } else {
        Err(TrainError::Diverged { step, message: format!("{what} holds NaN or Inf") })
    }
}

/// Applies a run's [`OnNonFinite`] policy to the failures of its steps.
#[derive(Debug, Clone)]
pub struct FaultGuard {
    policy: OnNonFinite,
    max_skipped: usize,
    skipped: usize,
}

impl FaultGuard {
    /// A guard with `policy`, allowing at most `max_skipped` skipped batches in the run
    /// (`skipped`: those already skipped before a resume).
    pub fn new(policy: OnNonFinite, max_skipped: usize, skipped: usize) -> Self {
        Self { policy, max_skipped, skipped }
    }

    /// Batches skipped so far in the run.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Handles the failure `e` of `stage` (e.g. `"forward solve"`) at optimiser step `step`:
    /// `Ok(())` when the batch is skipped, else the error to stop with: numerical faults
    /// become [`TrainError::Diverged`] naming the step and stage, other errors are returned
    /// as they are.
    pub fn handle<E>(&mut self, step: usize, stage: &str, e: E) -> Result<(), E>
    where
        E: FaultChain + From<TrainError>,
    {
        if !e.is_numerical() {
            return Err(e);
        }
        if self.policy == OnNonFinite::Skip && self.skipped < self.max_skipped {
            self.skipped += 1;
            tracing::warn!(step, stage, skipped = self.skipped, "numerical fault, batch skipped: {e}");
            return Ok(());
        }
        let hint = match self.policy {
            OnNonFinite::Stop => "set train.on_nonfinite = \"skip\" to skip such batches, lower the learning rate, or resume from the last checkpoint".to_string(),
            OnNonFinite::Skip => format!("{} batches were skipped already (train.max_skipped = {})", self.skipped, self.max_skipped),
        };
        Err(TrainError::Diverged { step, message: format!("stage `{stage}`: {e}; {hint}") }.into())
    }
}

/// The stage of a step that [`FaultGuard::run_step`] reports a fault in.
#[derive(Debug)]
pub struct Stage(std::cell::Cell<&'static str>);

impl Stage {
    /// Enters the stage `name` (e.g. `"forward solve"`).
    pub fn set(&self, name: &'static str) {
        self.0.set(name);
    }

    /// The stage entered last.
    pub fn get(&self) -> &'static str {
        self.0.get()
    }
}

impl FaultGuard {
    /// Runs the stages of optimiser step `step` up to the local gradient (`body`, which names
    /// each stage it enters through [`Stage::set`]; the first is `"data"`), agrees with every
    /// rank of `collective` on whether any of them met a numerical fault, and applies the
    /// policy on every rank alike: `Ok(Some(v))` goes on with the step, `Ok(None)` means the
    /// batch is skipped, `Err` stops the run (a numerical fault named by step and stage, or
    /// any other error as it is).
    pub fn run_step<T, E, C>(&mut self, collective: &C, step: usize, body: impl FnOnce(&Stage) -> Result<T, E>) -> Result<Option<T>, E>
    where
        C: crate::Collective + ?Sized,
        E: FaultChain + From<TrainError>,
    {
        let stage = Stage(std::cell::Cell::new("data"));
        let attempt = body(&stage);
        let mine = matches!(&attempt, Err(e) if e.is_numerical());
        let any = collective.context().world_size > 1 && crate::dist::all_reduce_sum_f64(collective, &[mine as u8 as f64])?[0] > 0.0;
        match attempt {
            Ok(v) if !any => Ok(Some(v)),
            other => {
                let e = match other {
                    Err(e) => e,
                    Ok(_) => TrainError::Diverged { step, message: "another rank reported a numerical fault".into() }.into(),
                };
                self.handle(step, if mine { stage.get() } else { "another rank" }, e)?;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(Box<dyn Error + Send + Sync + 'static>);
    impl FaultChain for E {
        fn chain(&self) -> &(dyn Error + 'static) {
            &*self.0
        }
    }
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }
    impl From<TrainError> for E {
        fn from(t: TrainError) -> Self {
            E(Box::new(t))
        }
    }

    fn solver_fault() -> E {
        E(Box::new(candle_core::Error::wrap(deq_core::DeqError::Diverging { context: "adjoint (implicit backward) solve", samples: vec![1], summary: "nfe 8".into() })))
    }

    #[test]
    fn faults_stop_or_skip_and_other_errors_pass() {
        let io = || E(Box::new(TrainError::io("x.bin", std::io::Error::other("gone"))));
        assert!(!io().is_numerical());
        assert!(solver_fault().is_numerical());
        // Inside deq-train's transparent variants too.
        assert!(TrainError::Deq(deq_core::DeqError::NonFinite { context: "fixed-point solve", samples: vec![0] }).is_numerical());
        assert!(TrainError::Candle(candle_core::Error::wrap(deq_core::DeqError::Diverging { context: "adjoint", samples: vec![1], summary: String::new() })).is_numerical());
        assert!(!TrainError::Candle(candle_core::Error::Msg("shape mismatch".into())).is_numerical());
        // deq-core's other errors (configuration, a singular solve) are not numerical faults.
        assert!(!TrainError::Deq(deq_core::DeqError::Singular("anderson")).is_numerical());
        assert!(!TrainError::Deq(deq_core::DeqError::UnknownSolver("newton".into(), "broyden".into())).is_numerical());
        assert!(E(Box::new(deq_core::DeqError::NonFinite { context: "fixed-point solve", samples: vec![0] })).is_numerical());
        let mut stop = FaultGuard::new(OnNonFinite::Stop, 5, 0);
        let e = stop.handle(12, "backward", solver_fault()).unwrap_err().to_string();
        assert!(e.contains("step 12") && e.contains("stage `backward`") && e.contains("nfe 8") && e.contains("on_nonfinite"), "{e}");
        assert!(stop.handle(12, "data", io()).unwrap_err().to_string().contains("x.bin"));
        let mut skip = FaultGuard::new(OnNonFinite::Skip, 2, 1);
        assert!(skip.handle(3, "loss", solver_fault()).is_ok());
        assert_eq!(skip.skipped(), 2);
        let e = skip.handle(4, "loss", solver_fault()).unwrap_err().to_string();
        assert!(e.contains("2 batches were skipped"), "{e}");
        assert!(skip.handle(5, "data", io()).is_err(), "I/O errors are never skipped");
    }

    /// Runs one step with `body(rank)` on each of two ranks: each rank's result and skip count.
    fn on_two_ranks(policy: OnNonFinite, max_skipped: usize, body: impl Fn(usize) -> Result<usize, E> + Sync) -> Vec<(Result<Option<usize>, String>, usize)> {
        let groups = crate::dist::ThreadGroup::new(2);
        let body = &body;
        std::thread::scope(|sc| {
            let hs: Vec<_> = groups
                .into_iter()
                .enumerate()
                .map(|(r, g)| {
                    sc.spawn(move || {
                        let mut guard = FaultGuard::new(policy, max_skipped, 0);
                        let got = guard.run_step(&g, 9, |_| body(r)).map_err(|e| e.to_string());
                        (got, guard.skipped())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn run_step_names_the_stage_and_skips_on_every_rank() {
        let one = crate::SingleProcess::default();
        let mut stop = FaultGuard::new(OnNonFinite::Stop, 3, 0);
        assert_eq!(stop.run_step(&one, 4, |_| Ok::<_, E>(7)).unwrap(), Some(7));
        let e = stop
            .run_step(&one, 4, |s| -> Result<(), E> {
                s.set("loss");
                s.set("backward (adjoint solve)");
                Err(solver_fault())
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("step 4") && e.contains("stage `backward (adjoint solve)`") && e.contains("nfe 8"), "{e}");
        let e = stop.run_step(&one, 5, |_| -> Result<(), E> { Err(E(Box::new(TrainError::io("x.bin", std::io::Error::other("gone"))))) }).unwrap_err().to_string();
        assert!(e.contains("x.bin") && !e.contains("stage"), "{e}");
        let mut skip = FaultGuard::new(OnNonFinite::Skip, 1, 0);
        assert_eq!(skip.run_step(&one, 6, |_| -> Result<(), E> { Err(solver_fault()) }).unwrap(), None);
        assert_eq!(skip.skipped(), 1);
        assert!(skip.run_step(&one, 7, |_| -> Result<(), E> { Err(solver_fault()) }).is_err());
        // Two ranks: a fault on rank 1 alone skips the batch on rank 0 too.
        let outs = on_two_ranks(OnNonFinite::Skip, 5, |r| if r == 1 { Err(solver_fault()) } else { Ok(r) });
        assert_eq!(outs, vec![(Ok(None), 1), (Ok(None), 1)]);
        // Two ranks without a fault: both go on with their own results, nothing skipped.
        let outs = on_two_ranks(OnNonFinite::Stop, 0, Ok);
        assert_eq!(outs, vec![(Ok(Some(0)), 0), (Ok(Some(1)), 0)]);
    }

    #[test]
    fn tensors_with_nan_or_inf_are_named() {
        // Zero and the largest finite value are finite (`t - t`, not `t / t` or `t + t`).
        let ok = Tensor::new(&[1.0f32, 0.0, f32::MAX, -f32::MAX, -2.0], &candle_core::Device::Cpu).unwrap();
        check_tensor_finite("batch", &ok, 0).unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Tensor::new(&[1.0f32, bad, 3.5], &candle_core::Device::Cpu).unwrap();
            let e = check_tensor_finite("batch", &t, 9).unwrap_err().to_string();
            assert!(e.contains("step 9") && e.contains("batch holds NaN or Inf"), "{e}");
        }
    }
}
