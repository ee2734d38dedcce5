//! Data-parallel context: rank and world size (torchrun's environment variables), the point
//! after backward where gradients are all-reduced, and rank-0-only side effects.
//!
//! The single-process path is [`SingleProcess`], and it is the only one so far: a job launched
//! with `WORLD_SIZE > 1` (as `torchrun` sets it) is refused with an error, never trained as
//! several unsynchronised copies. Trainers are written against [`Collective`] so that a
//! multi-process collective can be added without changing them.

use crate::error::{Result, TrainError};
use candle_core::backprop::GradStore;
use candle_core::Var;

/// Where this process sits in a data-parallel job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistContext {
    /// Global rank, 0-based.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Rank on this machine (selects the GPU).
    pub local_rank: usize,
}

impl Default for DistContext {
    fn default() -> Self {
        Self { rank: 0, world_size: 1, local_rank: 0 }
    }
}

impl DistContext {
    /// Reads `RANK`, `WORLD_SIZE` and `LOCAL_RANK` (all optional; defaults: a single process).
    pub fn from_env() -> Result<Self> {
        let get = |k: &str, d: usize| -> Result<usize> {
            match std::env::var(k) {
                Err(_) => Ok(d),
                Ok(v) => v.trim().parse().map_err(|_| TrainError::Config { key: k.into(), message: format!("`{v}` is not a non-negative integer") }),
            }
        };
        let ctx = Self { rank: get("RANK", 0)?, world_size: get("WORLD_SIZE", 1)?, local_rank: get("LOCAL_RANK", 0)? };
        if ctx.world_size == 0 || ctx.rank >= ctx.world_size {
            return Err(TrainError::Config { key: "RANK".into(), message: format!("rank {} with world size {}", ctx.rank, ctx.world_size) });
        }
        Ok(ctx)
    }

    /// True on rank 0 (the process that logs, writes metrics and checkpoints).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

/// The gradient all-reduce a trainer calls after backward and before clipping.
pub trait Collective {
    /// Replaces every gradient by its mean over the processes.
    fn all_reduce_mean(&self, grads: &mut GradStore, vars: &[Var]) -> Result<()>;
    /// The context.
    fn context(&self) -> DistContext;
}

/// One process: the all-reduce is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn all_reduce_mean(&self, _grads: &mut GradStore, _vars: &[Var]) -> Result<()> {
        Ok(())
    }
    fn context(&self) -> DistContext {
        DistContext::default()
    }
}

/// The collective for `ctx`: [`SingleProcess`] for a world of one; an error naming
/// `WORLD_SIZE` for larger worlds, which no build supports yet (rather than silently training
/// `world_size` unsynchronised copies).
pub fn collective_for(ctx: DistContext) -> Result<Box<dyn Collective>> {
    if ctx.world_size == 1 {
        return Ok(Box::new(SingleProcess));
    }
    Err(TrainError::Config {
        key: "WORLD_SIZE".into(),
        message: format!("{} processes requested, but multi-process data parallelism is not available in this version: run one process (unset WORLD_SIZE or set it to 1)", ctx.world_size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_defaults_and_multi_process_is_refused() {
        let ctx = DistContext::default();
        assert!(ctx.is_main());
        assert!(collective_for(ctx).is_ok());
        let e = collective_for(DistContext { rank: 1, world_size: 2, local_rank: 1 }).err().unwrap().to_string();
        assert!(e.contains("WORLD_SIZE") && e.contains("2 processes") && !e.contains("--features"), "{e}");
    }
}
