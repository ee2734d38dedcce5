//! Sparse-dense products `A^T X` as a candle custom op: the adjacency in compressed rows,
//! rows in parallel (CPU threads; on CUDA one block per row, deq-core's `deq_csr_spmm`
//! kernel, the matrix uploaded once per device), no `(E, m)` message tensor. The backward pass is the same op with the
//! transposed matrix (`A X`), so it is itself differentiable. Memory is the `(n, m)` output plus
//! `O(E)` for the two index structures, built once per graph.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// A sparse matrix in compressed rows: row `r` holds `(col[k], val[k])` for
/// `k in ptr[r]..ptr[r + 1]`.
#[derive(Debug)]
pub struct Csr {
    rows: usize,
    cols: usize,
    ptr: Vec<usize>,
    col: Vec<u32>,
    val32: Vec<f32>,
    val64: Vec<f64>,
    /// The matrix on each CUDA device it was used on.
    #[cfg(feature = "cuda")]
    on_device: std::sync::Mutex<Vec<(candle_core::cuda_backend::DeviceId, Arc<cuda::DeviceCsr>)>>,
}

impl Csr {
    /// The matrix `M[rows[k], cols[k]] += vals[k]` of size `n_rows x n_cols` (entries are kept
    /// in the order given within each row).
    pub fn from_triplets(n_rows: usize, n_cols: usize, rows: &[u32], cols: &[u32], vals: &[f32]) -> Self {
        let mut ptr = vec![0usize; n_rows + 1];
        for &r in rows {
            ptr[r as usize + 1] += 1;
        }
        for i in 0..n_rows {
            ptr[i + 1] += ptr[i];
        }
        let mut next = ptr.clone();
        let mut col = vec![0u32; rows.len()];
        let mut val32 = vec![0f32; rows.len()];
        for k in 0..rows.len() {
            let slot = &mut next[rows[k] as usize];
            col[*slot] = cols[k];
            val32[*slot] = vals[k];
            *slot += 1;
        }
        let val64 = val32.iter().map(|&v| v as f64).collect();
        Self {
            rows: n_rows,
            cols: n_cols,
            ptr,
            col,
            val32,
            val64,
            #[cfg(feature = "cuda")]
            on_device: Default::default(),
        }
    }

    /// Bytes held by the index structure.
    pub fn bytes(&self) -> usize {
        self.ptr.len() * 8 + self.col.len() * 4 + self.val32.len() * 4 + self.val64.len() * 8
    }

    fn apply<T>(&self, x: &[T], m: usize, vals: &[T]) -> Vec<T>
    where
        T: Copy + Default + Send + Sync + std::ops::Mul<Output = T> + std::ops::AddAssign,
    {
        let mut out = vec![T::default(); self.rows * m];
        // About 64k multiply-adds per task keeps both cores busy without tiny tasks.
        let rows_per_task = (65_536 / (m.max(1) * (1 + self.col.len() / self.rows.max(1)))).max(1);
        out.par_chunks_mut(rows_per_task * m).enumerate().for_each(|(t, chunk)| {
            let r0 = t * rows_per_task;
            for (i, orow) in chunk.chunks_mut(m).enumerate() {
                let r = r0 + i;
                for k in self.ptr[r]..self.ptr[r + 1] {
                    let c = self.col[k] as usize;
                    let w = vals[k];
                    for (o, &xv) in orow.iter_mut().zip(&x[c * m..(c + 1) * m]) {
                        *o += w * xv;
                    }
                }
            }
        });
        out
    }
}

/// `M X` for a `(cols, m)` input, with `M^T` for the backward pass.
#[derive(Debug, Clone)]
pub struct SpMM {
    m: Arc<Csr>,
    mt: Arc<Csr>,
}

impl SpMM {
    /// The product with `m`, differentiated with `mt` (which must be `m`'s transpose).
    pub fn new(m: Arc<Csr>, mt: Arc<Csr>) -> Self {
        Self { m, mt }
    }

    /// The same op for the transposed matrix.
    pub fn transposed(&self) -> Self {
        Self { m: self.mt.clone(), mt: self.m.clone() }
    }

    /// `M x` for `x` of shape `(cols, features)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }
}

impl CustomOp1 for SpMM {
    fn name(&self) -> &'static str {
        "ignn-spmm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, m) = l.shape().dims2()?;
        if n != self.m.cols {
            candle_core::bail!("ignn-spmm: input has {n} rows, the matrix has {} columns", self.m.cols);
        }
        let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("ignn-spmm expects a contiguous input".into()))?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.m.apply(&v[a..b], m, &self.m.val32)),
            CpuStorage::F64(v) => CpuStorage::F64(self.m.apply(&v[a..b], m, &self.m.val64)),
            _ => candle_core::bail!("ignn-spmm supports f32 and f64"),
        };
        Ok((out, Shape::from((self.m.rows, m))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, m) = l.shape().dims2()?;
        if n != self.m.cols {
            candle_core::bail!("ignn-spmm: input has {n} rows, the matrix has {} columns", self.m.cols);
        }
        let out = cuda::spmm(&self.m, s, l, m)?;
        Ok((out, Shape::from((self.m.rows, m))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.transposed().forward(grad)?))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The CUDA path: the matrix's arrays on the device, and the launch of deq-core's kernel.
    use super::Csr;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, Layout, Result};
    use std::sync::Arc;

    /// A [`Csr`]'s arrays in one device's memory.
    pub(super) struct DeviceCsr {
        ptr: CudaSlice<i64>,
        col: CudaSlice<u32>,
        val32: CudaSlice<f32>,
        val64: CudaSlice<f64>,
    }

    impl std::fmt::Debug for DeviceCsr {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "DeviceCsr({} non-zeros)", self.col.len())
        }
    }

    fn upload(m: &Csr, dev: &CudaDevice) -> Result<Arc<DeviceCsr>> {
        let mut cache = m.on_device.lock().map_err(|_| candle_core::Error::Msg("ignn-spmm: poisoned device cache".into()))?;
        if let Some((_, d)) = cache.iter().find(|(id, _)| *id == dev.id()) {
            return Ok(d.clone());
        }
        let ptr: Vec<i64> = m.ptr.iter().map(|&p| p as i64).collect();
        let d = Arc::new(DeviceCsr { ptr: dev.clone_htod(&ptr)?, col: dev.clone_htod(&m.col)?, val32: dev.clone_htod(&m.val32)?, val64: dev.clone_htod(&m.val64)? });
        cache.push((dev.id(), d.clone()));
        Ok(d)
    }

    /// `M x` for the contiguous `(cols, m)` input in `s`.
    pub(super) fn spmm(mat: &Csr, s: &CudaStorage, l: &Layout, m: usize) -> Result<CudaStorage> {
        let dev = s.device().clone();
        let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("ignn-spmm expects a contiguous input".into()))?;
        let d = upload(mat, &dev)?;
        let cfg = LaunchConfig { grid_dim: (mat.rows.max(1) as u32, 1, 1), block_dim: (m.clamp(1, 256).next_multiple_of(32).min(256) as u32, 1, 1), shared_mem_bytes: 0 };
        let m32 = m as u32;
        macro_rules! launch {
            ($x:expr, $t:ty, $vals:expr, $name:literal) => {{
                let x = $x.slice(a..b);
                // SAFETY: every element is written by the kernel (one block per output row).
                let out = unsafe { dev.alloc::<$t>(mat.rows * m)? };
                if mat.rows > 0 && m > 0 {
                    let func = dev.get_or_load_custom_func($name, deq_core::cuda::MODULE, deq_core::cuda::PTX)?;
                    let mut builder = func.builder();
                    builder.arg(&d.ptr);
                    builder.arg(&d.col);
                    builder.arg($vals);
                    builder.arg(&x);
                    builder.arg(&out);
                    builder.arg(&m32);
                    // SAFETY: the arguments match the kernel's signature; ptr has rows + 1 entries.
                    unsafe { builder.launch(cfg) }.w()?;
                }
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        Ok(match &s.slice {
            CudaStorageSlice::F32(x) => launch!(x, f32, &d.val32, "deq_csr_spmm_f32"),
            CudaStorageSlice::F64(x) => launch!(x, f64, &d.val64, "deq_csr_spmm_f64"),
            _ => candle_core::bail!("ignn-spmm supports f32 and f64"),
        })
    }
}
