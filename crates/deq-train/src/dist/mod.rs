//! Data parallelism: where a process sits in a job ([`DistContext`], from torchrun's or
//! Slurm's environment), the collective operations a trainer needs ([`Collective`]: the
//! bucketed gradient all-reduce, the broadcast of initial parameters, metric reductions), and
//! the process group that synchronised layers reduce over ([`with_group`]).
//!
//! Implementations: [`SingleProcess`] (the identity) and [`ThreadGroup`] (ranks as threads of
//! one process: what `cargo test` uses to prove a world-N run equal to a world-1 run). A job
//! launched with `WORLD_SIZE > 1` needs a multi-process collective, which this version does not
//! have yet: [`collective_for`] refuses it with an error, never training several unsynchronised
//! copies. Trainers are written against [`Collective`] so that nothing else changes.

mod collective;
mod context;
mod sync;
mod threads;

pub use collective::{all_reduce_mean_bucketed, all_reduce_sum_f64, broadcast_vars, Collective, SingleProcess, DEFAULT_BUCKET_ELEMS};
pub use context::DistContext;
pub use sync::{all_reduce_sum_differentiable, current_group, with_group};
pub use threads::ThreadGroup;

use crate::error::{Result, TrainError};
use std::sync::Arc;

/// The collective for `ctx`: [`SingleProcess`] for a world of one; an error naming
/// `WORLD_SIZE` for larger worlds, which no build supports yet (rather than silently training
/// `world_size` unsynchronised copies).
pub fn collective_for(ctx: DistContext) -> Result<Arc<dyn Collective>> {
    if ctx.world_size == 1 {
        return Ok(Arc::new(SingleProcess::default()));
    }
    Err(TrainError::Config {
        key: "WORLD_SIZE".into(),
        message: format!("{} processes requested, but multi-process data parallelism is not available in this version: run one process (unset WORLD_SIZE or set it to 1)", ctx.world_size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor, Var};

    #[test]
    fn single_process_defaults_and_multi_process_is_refused() {
        let ctx = DistContext::default();
        assert!(ctx.is_main());
        assert!(collective_for(ctx.clone()).is_ok());
        let e = collective_for(DistContext { rank: 1, world_size: 2, local_rank: 1, local_world_size: 2, ..ctx }).err().unwrap().to_string();
        assert!(e.contains("WORLD_SIZE") && e.contains("2 processes") && !e.contains("--features"), "{e}");
    }

    /// Runs `f(rank's collective)` on `world` threads and returns the results in rank order.
    fn on_threads<R: Send + 'static>(world: usize, f: impl Fn(Arc<dyn Collective>) -> R + Send + Sync + 'static) -> Vec<R> {
        let f = Arc::new(f);
        let handles: Vec<_> = ThreadGroup::new(world)
            .into_iter()
            .map(|g| {
                let f = f.clone();
                std::thread::spawn(move || f(Arc::new(g)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
    }

    #[test]
    fn thread_group_reduces_broadcasts_and_averages_gradients_in_buckets() {
        let out = on_threads(3, |c| {
            let r = c.context().rank as f64;
            let sum = c.all_reduce_sum(&Tensor::new(&[r, 10.0 * r], &Device::Cpu).unwrap()).unwrap().to_vec1::<f64>().unwrap();
            let b = c.broadcast(&Tensor::new(&[r + 1.0], &Device::Cpu).unwrap(), 2).unwrap().to_vec1::<f64>().unwrap();
            c.barrier().unwrap();
            // Gradients: var a (3 values) has rank-dependent gradients, var b (2) none on rank 1;
            // bucket of 4 elements forces two buckets.
            let a = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
            let bv = Var::zeros((1, 2), DType::F32, &Device::Cpu).unwrap();
            let loss = if r == 1.0 { a.as_tensor().sum_all().unwrap().affine(r, 0.0).unwrap() } else { (a.as_tensor().sum_all().unwrap().affine(r, 0.0).unwrap() + bv.as_tensor().sum_all().unwrap().affine(2.0, 0.0).unwrap()).unwrap() };
            let mut g = loss.backward().unwrap();
            all_reduce_mean_bucketed(&*c, &mut g, &[a.clone(), bv.clone()], 4).unwrap();
            let ga = g.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            let gb = g.get(bv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Broadcast of the initial parameters, and metrics.
            let w = Var::new(&[r as f32, -(r as f32)], &Device::Cpu).unwrap();
            broadcast_vars(&*c, std::slice::from_ref(&w)).unwrap();
            let m = all_reduce_sum_f64(&*c, &[1.0, r]).unwrap();
            (sum, b, ga, gb, w.as_tensor().to_vec1::<f32>().unwrap(), m)
        });
        for (sum, b, ga, gb, w, m) in out {
            assert_eq!(sum, vec![3.0, 30.0]);
            assert_eq!(b, vec![3.0]);
            assert_eq!(ga, vec![1.0; 3], "mean of 0, 1, 2");
            assert_eq!(gb, vec![4.0 / 3.0; 2], "rank 1's missing gradient counts as zeros");
            assert_eq!(w, vec![0.0, 0.0], "rank 0's value");
            assert_eq!(m, vec![3.0, 3.0]);
        }
    }

    #[test]
    fn ranks_that_disagree_get_an_error_not_a_hang() {
        let out = on_threads(2, |c| {
            let n = 2 + c.context().rank;
            c.all_reduce_sum(&Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap()).map(|_| ()).map_err(|e| e.to_string())
        });
        for r in out {
            let e = r.unwrap_err();
            assert!(e.contains("all_reduce") && e.contains("rank 1"), "{e}");
        }
    }

    #[test]
    fn differentiable_all_reduce_sums_values_and_gradients() {
        let out = on_threads(2, |c| {
            let r = c.context().rank as f64;
            let x = Var::new(&[1.0 + r, 2.0], &Device::Cpu).unwrap();
            let s = all_reduce_sum_differentiable(&c, x.as_tensor()).unwrap();
            // loss_r = sum((r + 1) * s): d loss_total / dx = sum over ranks of (r + 1) = 3.
            let loss = s.affine(r + 1.0, 0.0).unwrap().sum_all().unwrap();
            let g = deq_core::grad::backward(&loss).unwrap();
            (s.to_vec1::<f64>().unwrap(), g.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap())
        });
        for (s, g) in out {
            assert_eq!(s, vec![3.0, 4.0]);
            assert_eq!(g, vec![3.0, 3.0]);
        }
        assert!(current_group().is_none());
        let inner = with_group(Arc::new(ThreadGroup::new(1).remove(0)), current_group);
        assert!(inner.is_none(), "a group of one is no group");
    }
}
