//! Data parallelism: where a process sits in a job ([`DistContext`], from torchrun's or
//! Slurm's environment), the collective operations a trainer needs ([`Collective`]: the
//! bucketed gradient all-reduce, the broadcast of initial parameters, metric reductions), and
//! the process group that synchronised layers reduce over ([`with_group`]).
//!
//! Implementations: [`SingleProcess`] (the identity), [`ThreadGroup`] (ranks as threads of
//! one process: what `cargo test` uses to prove a world-N run equal to a world-1 run),
//! [`TcpGroup`] (processes on one or many machines, through rank 0 over TCP: CPU jobs) and,
//! with the `nccl` feature, [`NcclGroup`] (one process per GPU). [`collective_for`] picks one
//! from the job's environment and device. Ranks meet at `MASTER_ADDR` on
//! [`DistContext::id_port`]; every wait ends after [`dist_timeout`] with an error naming the
//! rank that is missing.

mod collective;
mod context;
#[cfg(feature = "nccl")]
mod nccl;
mod rendezvous;
mod sync;
mod tcp;
#[cfg(test)]
mod test_support;
mod threads;

pub use collective::{agree_on_signal, all_reduce_mean_bucketed, all_reduce_sum_f64, broadcast_vars, bucket_elems, Collective, SingleProcess, DEFAULT_BUCKET_ELEMS};
pub use context::DistContext;
pub use sync::{all_reduce_sum_differentiable, current_group, with_group};
pub use rendezvous::dist_timeout;
#[cfg(feature = "nccl")]
pub use nccl::NcclGroup;
pub use tcp::TcpGroup;
pub use threads::ThreadGroup;

use crate::error::Result;
use std::sync::Arc;

/// The collective for `ctx` on `device`: [`SingleProcess`] for a world of one; for larger
/// worlds NCCL when the model runs on a CUDA device and the build has the `nccl` feature,
/// otherwise [`TcpGroup`] (CPU jobs; on CUDA without `nccl` it works through host copies, and
/// says so in the log). Waits at most [`dist_timeout`] for the other ranks.
pub fn collective_for(ctx: DistContext, device: &candle_core::Device) -> Result<Arc<dyn Collective>> {
    if ctx.world_size == 1 {
        return Ok(Arc::new(SingleProcess::default()));
    }
    let timeout = dist_timeout()?;
    tracing::info!("rank {} of {}: joining the job at {}:{}", ctx.rank, ctx.world_size, ctx.master_addr, ctx.id_port()?);
    #[cfg(feature = "nccl")]
    if let candle_core::Device::Cuda(d) = device {
        return Ok(Arc::new(NcclGroup::connect(ctx, d, timeout)?));
    }
    if device.is_cuda() {
        tracing::warn!("this build has no `nccl` feature: collectives of a CUDA job go through host memory over TCP (slow); build with --features nccl");
    }
    Ok(Arc::new(TcpGroup::connect(ctx, timeout)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor, Var};

    #[test]
    fn single_process_defaults_and_a_larger_world_meets_over_tcp() {
        let ctx = DistContext::default();
        assert!(ctx.is_main());
        assert_eq!(collective_for(ctx.clone(), &Device::Cpu).unwrap().context().world_size, 1);
        let port = test_support::free_port();
        let ranks: Vec<_> = (0..2)
            .map(|rank| {
                let ctx = test_support::local(rank, 2, port);
                std::thread::spawn(move || {
                    let c = collective_for(ctx, &Device::Cpu).unwrap();
                    c.all_reduce_sum(&Tensor::new(&[rank as f32 + 1.0], &Device::Cpu).unwrap()).unwrap().to_vec1::<f32>().unwrap()
                })
            })
            .collect();
        for h in ranks {
            assert_eq!(h.join().unwrap(), vec![3.0]);
        }
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
