//! `--device cpu|cuda|cuda:N`.

use crate::error::{Result, TrainError};
use candle_core::Device;

/// The device a binary was asked to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceArg {
    /// The CPU (all threads of `--threads`).
    #[default]
    Cpu,
    /// `cuda`: the CUDA device of this process's local rank (`LOCAL_RANK` or `SLURM_LOCALID`,
    /// 0 in a single-process run), torchrun's one-GPU-per-process convention.
    CudaLocal,
    /// `cuda:N`: a CUDA device by ordinal.
    Cuda(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::CudaLocal),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (expected cpu, cuda or cuda:N)")),
        }
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::CudaLocal => f.write_str("cuda"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceArg {
    /// Opens the device: the CPU, or with the `cuda` feature the CUDA device (`cuda` is the
    /// local rank's). A build without `cuda` refuses a CUDA device with an error saying how to
    /// get one, never falling back to the CPU.
    pub fn open(&self) -> Result<Device> {
        let ordinal = match self {
            Self::Cpu => return Ok(Device::Cpu),
            Self::Cuda(n) => *n,
            Self::CudaLocal => crate::dist::DistContext::from_env()?.local_rank,
        };
        open_cuda(ordinal, self)
    }

    /// The device for a model that runs on the CPU only so far: `cpu` gives [`Device::Cpu`],
    /// a CUDA device gives an error naming the model and the flag (never a silent fallback).
    pub fn cpu_only(&self, model: &str) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(_) | Self::CudaLocal => Err(TrainError::Config {
                key: "--device".into(),
                message: format!(
                    "{model} runs on the CPU only in this release (its custom kernels have no CUDA path yet); `--device {self}` cannot be honoured, use `--device cpu`"
                ),
            }),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize, arg: &DeviceArg) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| TrainError::Config { key: "--device".into(), message: format!("cannot open `{arg}` (CUDA device {ordinal}): {e}") })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize, arg: &DeviceArg) -> Result<Device> {
    Err(TrainError::Config {
        key: "--device".into(),
        message: format!("`{arg}`: this binary was built without CUDA; build it with scripts/build-cuda.sh (cargo's --features cuda) or use `--device cpu`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_cuda_for_cpu_models() {
        assert_eq!("cpu".parse::<DeviceArg>().unwrap(), DeviceArg::Cpu);
        assert_eq!("cuda".parse::<DeviceArg>().unwrap(), DeviceArg::CudaLocal);
        assert_eq!(DeviceArg::CudaLocal.to_string(), "cuda");
        assert!(DeviceArg::Cpu.open().unwrap().is_cpu());
        #[cfg(not(feature = "cuda"))]
        {
            let e = DeviceArg::Cuda(2).open().unwrap_err().to_string();
            assert!(e.contains("cuda:2") && e.contains("built without CUDA") && e.contains("build-cuda.sh"), "{e}");
        }
        assert_eq!("cuda:3".parse::<DeviceArg>().unwrap(), DeviceArg::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            assert!(bad.parse::<DeviceArg>().is_err(), "{bad}");
        }
        assert!(DeviceArg::Cpu.cpu_only("mdeq").unwrap().is_cpu());
        let e = DeviceArg::Cuda(1).cpu_only("mdeq").unwrap_err().to_string();
        assert!(e.contains("--device") && e.contains("cuda:1") && e.contains("mdeq"), "{e}");
    }
}
