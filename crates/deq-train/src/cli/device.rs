//! `--device cpu|cuda|cuda:N`.

use crate::error::{Result, TrainError};
use candle_core::Device;

/// The device a binary was asked to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceArg {
    /// The CPU (all threads of `--threads`).
    #[default]
    Cpu,
    /// A CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
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
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceArg {
    /// The device for a model that runs on the CPU only so far: `cpu` gives [`Device::Cpu`],
    /// a CUDA device gives an error naming the model and the flag (never a silent fallback).
    pub fn cpu_only(&self, model: &str) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(_) => Err(TrainError::Config {
                key: "--device".into(),
                message: format!(
                    "{model} runs on the CPU only in this release (its custom kernels have no CUDA path yet); `--device {self}` cannot be honoured, use `--device cpu`"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_cuda_for_cpu_models() {
        assert_eq!("cpu".parse::<DeviceArg>().unwrap(), DeviceArg::Cpu);
        assert_eq!("cuda".parse::<DeviceArg>().unwrap(), DeviceArg::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceArg>().unwrap(), DeviceArg::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            assert!(bad.parse::<DeviceArg>().is_err(), "{bad}");
        }
        assert!(DeviceArg::Cpu.cpu_only("mdeq").unwrap().is_cpu());
        let e = DeviceArg::Cuda(1).cpu_only("mdeq").unwrap_err().to_string();
        assert!(e.contains("--device") && e.contains("cuda:1") && e.contains("mdeq"), "{e}");
    }
}
