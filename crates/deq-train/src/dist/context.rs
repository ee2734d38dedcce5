//! Where this process sits in a data-parallel job, read from torchrun's environment (`RANK`,
//! `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) or, when none
//! of those is set, from Slurm's (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
//! `SLURM_NTASKS_PER_NODE`).

use crate::error::{Result, TrainError};

/// Rank, world size and rendezvous address of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistContext {
    /// Global rank, 0-based.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Rank on this machine (selects the GPU).
    pub local_rank: usize,
    /// Processes on this machine.
    pub local_world_size: usize,
    /// Host of rank 0 (`MASTER_ADDR`; `127.0.0.1` when unset).
    pub master_addr: String,
    /// torchrun's store port (`MASTER_PORT`; 29500 when unset). The NCCL id is handed out on
    /// the next port (see [`DistContext::id_port`]).
    pub master_port: u16,
}

impl Default for DistContext {
    fn default() -> Self {
        Self { rank: 0, world_size: 1, local_rank: 0, local_world_size: 1, master_addr: "127.0.0.1".into(), master_port: 29500 }
    }
}

impl DistContext {
    /// Reads the process's environment (see the module docs); a single process when nothing is
    /// set. Values that are not non-negative integers, or a rank outside the world, are errors
    /// naming the variable.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`DistContext::from_env`] over any variable lookup (for tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |k: &str| -> Result<Option<usize>> {
            match get(k) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| TrainError::Config { key: k.into(), message: format!("`{v}` is not a non-negative integer") }),
            }
        };
        let torchrun = ["RANK", "WORLD_SIZE", "LOCAL_RANK"].iter().any(|k| get(k).is_some());
        let slurm = !torchrun && get("SLURM_PROCID").is_some();
        let d = Self::default();
        let mut ctx = if slurm {
            let world = num("SLURM_NTASKS")?.unwrap_or(1);
            // SLURM_NTASKS_PER_NODE may read "4" or "4(x2)".
            let per_node = get("SLURM_NTASKS_PER_NODE").and_then(|v| v.split('(').next().and_then(|s| s.trim().parse().ok())).unwrap_or(world);
            Self { rank: num("SLURM_PROCID")?.unwrap_or(0), world_size: world, local_rank: num("SLURM_LOCALID")?.unwrap_or(0), local_world_size: per_node, ..d }
        } else {
            let world = num("WORLD_SIZE")?.unwrap_or(1);
            Self { rank: num("RANK")?.unwrap_or(0), world_size: world, local_rank: num("LOCAL_RANK")?.unwrap_or(0), local_world_size: num("LOCAL_WORLD_SIZE")?.unwrap_or(world), ..d }
        };
        if let Some(a) = get("MASTER_ADDR") {
            ctx.master_addr = a;
        }
        if let Some(p) = num("MASTER_PORT")? {
            ctx.master_port = u16::try_from(p).map_err(|_| TrainError::Config { key: "MASTER_PORT".into(), message: format!("{p} is not a port") })?;
        }
        let (rank_key, world_key) = if slurm { ("SLURM_PROCID", "SLURM_NTASKS") } else { ("RANK", "WORLD_SIZE") };
        if ctx.world_size == 0 {
            return Err(TrainError::Config { key: world_key.into(), message: "must be at least 1".into() });
        }
        if ctx.rank >= ctx.world_size {
            return Err(TrainError::Config { key: rank_key.into(), message: format!("rank {} is outside a world of {}", ctx.rank, ctx.world_size) });
        }
        if ctx.local_world_size == 0 || ctx.local_rank >= ctx.local_world_size {
            return Err(TrainError::Config { key: if slurm { "SLURM_LOCALID" } else { "LOCAL_RANK" }.into(), message: format!("local rank {} of {} on this machine", ctx.local_rank, ctx.local_world_size) });
        }
        Ok(ctx)
    }

    /// True on rank 0 (the process that logs, writes metrics and checkpoints).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// The port on `master_addr` where rank 0 hands out the collective's id: `MASTER_PORT + 1`
    /// (torchrun's own store owns `MASTER_PORT`), or `DEQ_ID_PORT` when set.
    pub fn id_port(&self) -> Result<u16> {
        match std::env::var("DEQ_ID_PORT") {
            Ok(v) => v.trim().parse().map_err(|_| TrainError::Config { key: "DEQ_ID_PORT".into(), message: format!("`{v}` is not a port") }),
            Err(_) => self.master_port.checked_add(1).ok_or_else(|| TrainError::Config { key: "MASTER_PORT".into(), message: "65535 leaves no port for the id".into() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ctx(vars: &[(&str, &str)]) -> Result<DistContext> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistContext::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_slurm_and_single_process() {
        assert_eq!(ctx(&[]).unwrap(), DistContext::default());
        let t = ctx(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2"), ("MASTER_ADDR", "node7"), ("MASTER_PORT", "29400")]).unwrap();
        assert_eq!((t.rank, t.world_size, t.local_rank, t.local_world_size, t.master_addr.as_str(), t.master_port), (3, 8, 1, 2, "node7", 29400));
        assert!(!t.is_main());
        let s = ctx(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1"), ("SLURM_NTASKS_PER_NODE", "4(x2)")]).unwrap();
        assert_eq!((s.rank, s.world_size, s.local_rank, s.local_world_size), (5, 8, 1, 4));
        // torchrun's variables win over Slurm's (torchrun inside an allocation).
        let both = ctx(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8")]).unwrap();
        assert_eq!((both.rank, both.world_size), (0, 2));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (vars, key) in [
            (vec![("RANK", "x")], "RANK"),
            (vec![("RANK", "2"), ("WORLD_SIZE", "2")], "RANK"),
            (vec![("WORLD_SIZE", "0")], "WORLD_SIZE"),
            (vec![("SLURM_PROCID", "4"), ("SLURM_NTASKS", "4")], "SLURM_PROCID"),
            (vec![("MASTER_PORT", "70000")], "MASTER_PORT"),
            (vec![("WORLD_SIZE", "2"), ("LOCAL_RANK", "2")], "LOCAL_RANK"),
        ] {
            let e = ctx(&vars).unwrap_err().to_string();
            assert!(e.contains(key), "{vars:?}: {e}");
        }
    }
}
