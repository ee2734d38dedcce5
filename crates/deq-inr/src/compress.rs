//! Compression: the model's parameters stored as f16 safetensors, the bit rate per sample, and
//! the quality after quantisation (parameters rounded to f16 and back).

use crate::error::{InrError, Result};
use crate::net::InrNet;
use candle_core::{DType, Tensor};
use std::path::Path;

/// Writes every parameter of `net` as f16 into a safetensors file (atomically) and returns
/// its size in bytes.
pub fn save_f16(net: &InrNet, path: &Path) -> Result<u64> {
    let tensors: Vec<(String, Tensor)> = net.named_vars().into_iter().map(|(k, v)| Ok((k, v.as_tensor().to_dtype(DType::F16)?))).collect::<Result<_>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&tensors.into_iter().collect(), &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| InrError::io(path, e))?;
    Ok(std::fs::metadata(path).map_err(|e| InrError::io(path, e))?.len())
}

/// Rounds every parameter to f16 in place; returns the originals for [`restore`].
pub fn quantize_f16(net: &InrNet) -> Result<Vec<Tensor>> {
    let mut saved = Vec::new();
    for (_, v) in net.named_vars() {
        let t = v.as_tensor();
        saved.push(t.copy()?);
        v.set(&t.to_dtype(DType::F16)?.to_dtype(t.dtype())?)?;
    }
    Ok(saved)
}

/// Puts back the parameters saved by [`quantize_f16`].
pub fn restore(net: &InrNet, saved: &[Tensor]) -> Result<()> {
    for ((_, v), t) in net.named_vars().into_iter().zip(saved) {
        v.set(t)?;
    }
    Ok(())
}

/// Loads f16 (or any dtype) parameters from a safetensors file into `net`; a missing tensor or
/// a shape mismatch names the key and the file.
pub fn load(net: &InrNet, path: &Path) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| InrError::format(path, format!("reading tensors: {e}")))?;
    for (k, v) in net.named_vars() {
        let t = tensors.get(&k).ok_or_else(|| InrError::format(path, format!("no tensor `{k}`")))?;
        if t.dims() != v.as_tensor().dims() {
            return Err(InrError::format(path, format!("tensor `{k}` has shape {:?}, the model expects {:?}", t.dims(), v.as_tensor().dims())));
        }
        v.set(&t.to_dtype(v.as_tensor().dtype())?)?;
    }
    Ok(())
}

/// Bits per sample of a `bytes`-byte file describing `samples` samples (pixels, audio
/// samples, video pixels).
pub fn bits_per_sample(bytes: u64, samples: usize) -> f64 {
    bytes as f64 * 8.0 / samples.max(1) as f64
}
