//! Peak GPU memory (feature `cuda`): candle allocates through the CUDA driver's stream-ordered
//! allocator, whose default memory pool records the high-water mark of the memory in use
//! (`CU_MEMPOOL_ATTR_USED_MEM_HIGH`). [`reset_peak`] before a step and [`peak_bytes`] after it
//! give the step's peak, as `torch.cuda.max_memory_allocated` does for PyTorch.

use crate::error::{Result, TrainError};
use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::Device;

fn err(what: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::Config { key: "--device".into(), message: format!("CUDA {what} failed: {e:?}") }
}

fn pool(dev: &Device) -> Result<sys::CUmemoryPool> {
    let Device::Cuda(d) = dev else {
        return Err(TrainError::Config { key: "--device".into(), message: "GPU memory of a non-CUDA device".into() });
    };
    let stream = d.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().map_err(|e| err("cuCtxSetCurrent", e))?;
    let mut cu_dev: sys::CUdevice = 0;
    // SAFETY: out-pointers to locals; the context is current.
    unsafe { sys::cuDeviceGet(&mut cu_dev, ctx.ordinal() as i32) }.result().map_err(|e| err("cuDeviceGet", e))?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: as above.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, cu_dev) }.result().map_err(|e| err("cuDeviceGetDefaultMemPool", e))?;
    Ok(pool)
}

/// Resets the device's peak to the memory in use now.
pub fn reset_peak(dev: &Device) -> Result<()> {
    let p = pool(dev)?;
    let mut zero: u64 = 0;
    // SAFETY: the attribute takes a cuuint64_t; resetting the high-water mark requires 0.
    unsafe { sys::cuMemPoolSetAttribute(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, &mut zero as *mut u64 as *mut std::ffi::c_void) }
        .result()
        .map_err(|e| err("cuMemPoolSetAttribute", e))
}

/// The most memory in use on the device since the last [`reset_peak`], in bytes (after
/// waiting for the queued work).
pub fn peak_bytes(dev: &Device) -> Result<u64> {
    dev.synchronize()?;
    let p = pool(dev)?;
    let mut v: u64 = 0;
    // SAFETY: the attribute is a cuuint64_t.
    unsafe { sys::cuMemPoolGetAttribute(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, &mut v as *mut u64 as *mut std::ffi::c_void) }
        .result()
        .map_err(|e| err("cuMemPoolGetAttribute", e))?;
    Ok(v)
}
