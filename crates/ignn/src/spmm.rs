//! Sparse-dense products `A^T X` as a candle custom op (CPU): the adjacency in compressed rows,
//! rows in parallel, no `(E, m)` message tensor. The backward pass is the same op with the
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
        Self { rows: n_rows, cols: n_cols, ptr, col, val32, val64 }
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

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.transposed().forward(grad)?))
    }
}
