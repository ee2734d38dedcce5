//! The PTX of the zoo's own CUDA kernels (feature `cuda`), built from
//! `kernels/deq_kernels.cu` at compile time. Load a kernel on a candle device with
//! `dev.get_or_load_custom_func(name, MODULE, PTX)`; every crate of the workspace takes its
//! kernels from here, so they are compiled once.
//!
//! Kernels: `deq_csr_spmm_f32` / `deq_csr_spmm_f64` (`out = M x`, `M` in compressed rows,
//! one block per row; used by ignn's sparse aggregation).

/// The module name under which [`PTX`] is loaded.
pub const MODULE: &str = "deq_kernels";

/// The compiled kernels.
pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/deq_kernels.ptx"));
