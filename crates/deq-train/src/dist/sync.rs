//! The process group a model's synchronised layers reduce over (PyTorch's default process
//! group), and a differentiable all-reduce for them: synchronised batch norm sums its batch
//! statistics over the ranks, so that a world-N run normalises by the statistics of the whole
//! global batch, as a world-1 run does.

use super::Collective;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
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
/// the sum over ranks of the gradients.
pub fn all_reduce_sum_differentiable(group: &Arc<dyn Collective>, t: &Tensor) -> candle_core::Result<Tensor> {
    t.contiguous()?.apply_op1(AllReduce(group.clone()))
}

struct AllReduce(Arc<dyn Collective>);

impl CustomOp1 for AllReduce {
    fn name(&self) -> &'static str {
        "all-reduce-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = layout.shape().clone();
        let t = match storage {
            CpuStorage::F32(v) => Tensor::from_slice(contiguous(v, layout)?, shape.clone(), &candle_core::Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_slice(contiguous(v, layout)?, shape.clone(), &candle_core::Device::Cpu)?,
            _ => candle_core::bail!("all-reduce-sum: f32 or f64 only"),
        };
        let r = self.0.all_reduce_sum(&t).map_err(|e| candle_core::Error::Msg(e.to_string()))?.flatten_all()?;
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(r.to_vec1()?),
            _ => CpuStorage::F64(r.to_vec1()?),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(AllReduce(self.0.clone()))?))
    }
}

fn contiguous<'a, T>(v: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("all-reduce-sum: needs a contiguous tensor"),
    }
}
