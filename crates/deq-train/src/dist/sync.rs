//! The process group a model's synchronised layers reduce over (PyTorch's default process
//! group), and a differentiable all-reduce for them: synchronised batch norm sums its batch
//! statistics over the ranks, so that a world-N run normalises by the statistics of the whole
//! global batch, as a world-1 run does.

use super::Collective;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use std::cell::RefCell;
use std::sync::Arc;

thread_local! {
    static GROUP: RefCell<Option<Arc<dyn Collective>>> = const { RefCell::new(None) };
}

/// Runs `f` with `group` as this thread's process group (restored afterwards). Trainers call
/// it around their loop; a group of one rank is the same as none.
pub fn with_group<R>(group: Arc<dyn Collective>, f: impl FnOnce() -> R) -> R {
    let previous = GROUP.with(|g| g.borrow_mut().replace(group));
    struct Restore(Option<Arc<dyn Collective>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let p = self.0.take();
            GROUP.with(|g| *g.borrow_mut() = p);
        }
    }
    let _restore = Restore(previous);
    f()
}

/// This thread's process group when it has more than one rank.
pub fn current_group() -> Option<Arc<dyn Collective>> {
    GROUP.with(|g| g.borrow().clone()).filter(|c| c.context().world_size > 1)
}

/// `t` summed over the ranks of `group`, differentiable: the gradient of a sum over ranks is
/// the sum over ranks of the gradients. Works on any device: the values are reduced by the
/// collective, and a custom op whose forward passes them through carries the backward rule.
pub fn all_reduce_sum_differentiable(group: &Arc<dyn Collective>, t: &Tensor) -> candle_core::Result<Tensor> {
    let summed = group.all_reduce_sum(&t.detach()).map_err(|e| candle_core::Error::Msg(e.to_string()))?.contiguous()?;
    t.contiguous()?.apply_op2_arc(&summed, Arc::new(Box::new(AllReduce(group.clone()))))
}

/// `(t, sum over ranks of t) -> the sum`, with the gradient of `t` all-reduced.
struct AllReduce(Arc<dyn Collective>);

impl CustomOp2 for AllReduce {
    fn name(&self) -> &'static str {
        "all-reduce-sum"
    }

    fn cpu_fwd(&self, _s1: &CpuStorage, _l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = l2.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("all-reduce-sum: needs a contiguous tensor".into()))?;
        let out = match s2 {
            CpuStorage::F32(v) => CpuStorage::F32(v[a..b].to_vec()),
            CpuStorage::F64(v) => CpuStorage::F64(v[a..b].to_vec()),
            CpuStorage::BF16(v) => CpuStorage::BF16(v[a..b].to_vec()),
            CpuStorage::F16(v) => CpuStorage::F16(v[a..b].to_vec()),
            _ => candle_core::bail!("all-reduce-sum: floating-point tensors only"),
        };
        Ok((out, l2.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _s1: &candle_core::CudaStorage, _l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        if l2.start_offset() != 0 || !l2.is_contiguous() {
            candle_core::bail!("all-reduce-sum: needs a contiguous tensor at offset 0");
        }
        Ok((s2.try_clone(l2)?, l2.shape().clone()))
    }

    fn bwd(&self, _arg1: &Tensor, _arg2: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(all_reduce_sum_differentiable(&self.0, grad_res)?), None))
    }
}
