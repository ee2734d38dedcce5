//! The NCCL [`Collective`] (feature `nccl`): one process per GPU, NCCL's unique id created by
//! rank 0 and handed to the others over TCP ([`super::rendezvous`], on
//! [`DistContext::id_port`], not torchrun's `MASTER_PORT`), then `ncclCommInitRank`.
//! Collectives run on the model's CUDA stream; tensors on the CPU (metrics) travel through the
//! device. NCCL sums in its own ring order, so runs are reproducible on one machine but not
//! bit-identical to the in-process or TCP collectives.

use super::collective::{mismatch, Collective};
use super::rendezvous::rendezvous;
use super::DistContext;
use crate::error::Result;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{CudaDevice, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// NCCL's communicator holds raw pointers; every use goes through the mutex below, and NCCL
/// allows a communicator to be used from any one thread at a time.
struct SharedComm(Comm);
// SAFETY: access is serialised by `NcclGroup::comm`'s mutex.
unsafe impl Send for SharedComm {}
// SAFETY: as above.
unsafe impl Sync for SharedComm {}

/// One rank of an NCCL process group, bound to one CUDA device.
pub struct NcclGroup {
    ctx: DistContext,
    device: CudaDevice,
    comm: Arc<Mutex<SharedComm>>,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclGroup(rank {} of {})", self.ctx.rank, self.ctx.world_size)
    }
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> crate::error::TrainError {
    mismatch(format!("NCCL {what} failed: {e:?}"))
}

impl NcclGroup {
    /// Creates (rank 0) or receives (the others) NCCL's id within `timeout`, then initialises
    /// the communicator on `device`'s stream.
    pub fn connect(ctx: DistContext, device: &CudaDevice, timeout: Duration) -> Result<Self> {
        let mine = if ctx.rank == 0 {
            let id = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
            id.internal().iter().map(|&c| c as u8).collect::<Vec<u8>>()
        } else {
            Vec::new()
        };
        let links = rendezvous(&ctx, &mine, timeout)?;
        let bytes: [u8; 128] = links.payload.as_slice().try_into().map_err(|_| mismatch(format!("rendezvous: rank 0 sent an NCCL id of {} bytes, not 128", links.payload.len())))?;
        let id = Id::uninit(bytes.map(|b| b as core::ffi::c_char));
        let comm = Comm::from_rank(device.cuda_stream(), ctx.rank, ctx.world_size, id).map_err(|e| nccl_err("ncclCommInitRank", e))?;
        drop(links);
        Ok(Self { ctx, device: device.clone(), comm: Arc::new(Mutex::new(SharedComm(comm))) })
    }

    fn on_device(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_device(&Device::Cuda(self.device.clone()))?.contiguous()?)
    }

    fn run(&self, t: &Tensor, op: Op) -> Result<Tensor> {
        let back = t.device().clone();
        let d = self.on_device(t)?;
        let out = d.apply_op1_no_bwd(&NcclOp { comm: self.comm.clone(), op })?;
        Ok(out.to_device(&back)?)
    }
}

#[derive(Clone, Copy)]
enum Op {
    Sum,
    Broadcast(usize),
}

struct NcclOp {
    comm: Arc<Mutex<SharedComm>>,
    op: Op,
}

impl CustomOp1 for NcclOp {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _s: &candle_core::CpuStorage, _l: &Layout) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives run on CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("nccl: needs a contiguous tensor".into()))?;
        let guard = self.comm.lock().map_err(|_| candle_core::Error::Msg("nccl: a thread panicked inside a collective".into()))?;
        let comm = &guard.0;
        let dev = s.device().clone();
        macro_rules! reduce {
            ($slice:expr, $t:ty) => {{
                let src = $slice.slice(a..b);
                let mut dst = dev.alloc_zeros::<$t>(b - a)?;
                match self.op {
                    Op::Sum => comm.all_reduce(&src, &mut dst, &ReduceOp::Sum).map(|_| ()),
                    Op::Broadcast(root) => comm.broadcast(Some(&src), &mut dst, root as i32).map(|_| ()),
                }
                .map_err(|e| candle_core::Error::Msg(format!("NCCL collective failed: {e:?}")))?;
                CudaStorage::wrap_cuda_slice(dst, dev.clone())
            }};
        }
        let out = match &s.slice {
            CudaStorageSlice::F32(v) => reduce!(v, f32),
            CudaStorageSlice::F64(v) => reduce!(v, f64),
            CudaStorageSlice::BF16(v) => reduce!(v, half::bf16),
            CudaStorageSlice::F16(v) => reduce!(v, half::f16),
            _ => candle_core::bail!("nccl: floating-point tensors only"),
        };
        Ok((out, l.shape().clone()))
    }
}

impl Collective for NcclGroup {
    fn context(&self) -> &DistContext {
        &self.ctx
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.run(t, Op::Sum)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.ctx.world_size {
            return Err(mismatch(format!("broadcast from rank {root} in a world of {}", self.ctx.world_size)));
        }
        self.run(t, Op::Broadcast(root))
    }

    fn barrier(&self) -> Result<()> {
        let one = Tensor::ones(1, candle_core::DType::F32, &Device::Cuda(self.device.clone()))?;
        // Reading the result back waits for the all-reduce, which waits for every rank.
        self.all_reduce_sum(&one)?.to_vec1::<f32>()?;
        Ok(())
    }
}
