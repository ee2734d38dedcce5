//! With the `cuda` feature: compiles `kernels/deq_kernels.cu` to PTX with `nvcc` (`$NVCC`, or
//! `nvcc` on `PATH`, as candle's own kernels) for `$CUDA_COMPUTE_CAP` (default 70: the PTX is
//! JIT-compiled by the driver for any newer GPU). Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels/deq_kernels.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("deq_kernels.ptx");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "70".into());
    let cap: String = cap.chars().filter(|c| c.is_ascii_digit()).collect();
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("--gpu-architecture=compute_{cap}"), "kernels/deq_kernels.cu", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("deq-core: cannot run `{nvcc}` to build the CUDA kernels ({e}); set NVCC or use scripts/build-cuda.sh"));
    assert!(status.success(), "deq-core: `{nvcc}` failed on kernels/deq_kernels.cu");
}
