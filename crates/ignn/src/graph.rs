//! Sparse graphs as weighted edge lists, their normalisations, the Perron-Frobenius eigenvalue,
//! and message aggregation `A^T X` by a compressed-row kernel (CPU) or `index_select` +
//! `index_add` (never a dense `n x n` matrix).

use crate::spmm::{Csr, SpMM};
use candle_core::{DType, Device, Result, Tensor};
use std::sync::Arc;

/// A directed, weighted graph on `n` nodes: edge `k` goes from `src[k]` to `dst[k]` with
/// weight `weight[k]` (the adjacency entry `A[src, dst]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// Number of nodes.
    pub n: usize,
    /// Source node of each edge.
    pub src: Vec<u32>,
    /// Destination node of each edge.
    pub dst: Vec<u32>,
    /// Weight of each edge.
    pub weight: Vec<f32>,
}

impl Graph {
    /// A graph from `(src, dst)` pairs with unit weights; ids must be `< n`.
    pub fn from_edges(n: usize, edges: &[(u32, u32)]) -> std::result::Result<Self, String> {
        for (k, &(a, b)) in edges.iter().enumerate() {
            if a as usize >= n || b as usize >= n {
                return Err(format!("edge {k} ({a} -> {b}) has a node id out of range (n = {n})"));
            }
        }
        Ok(Self { n, src: edges.iter().map(|e| e.0).collect(), dst: edges.iter().map(|e| e.1).collect(), weight: vec![1.0; edges.len()] })
    }

    /// Number of edges.
    pub fn num_edges(&self) -> usize {
        self.src.len()
    }

    /// Adds the reverse of every edge (for undirected graphs given one direction).
    pub fn symmetrized(&self) -> Self {
        let mut g = self.clone();
        g.src.extend_from_slice(&self.dst);
        g.dst.extend_from_slice(&self.src);
        g.weight.extend_from_slice(&self.weight);
        g
    }

    /// The augmented normalisation `(D + I)^-1/2 (A + I) (D + I)^-1/2` with `D` the row sums
    /// (out-degrees) of `|A|`, as in IGNN and GCN (absolute values keep it defined for signed
    /// weights; for the usual non-negative adjacency they change nothing).
    pub fn aug_normalized(&self) -> Self {
        let mut deg = vec![1.0f64; self.n];
        for (&s, &w) in self.src.iter().zip(&self.weight) {
            deg[s as usize] += (w as f64).abs();
        }
        let inv: Vec<f64> = deg.iter().map(|d| 1.0 / d.sqrt()).collect();
        let mut g = Graph { n: self.n, src: Vec::with_capacity(self.num_edges() + self.n), dst: Vec::new(), weight: Vec::new() };
        for k in 0..self.num_edges() {
            let (s, d) = (self.src[k] as usize, self.dst[k] as usize);
            g.src.push(self.src[k]);
            g.dst.push(self.dst[k]);
            g.weight.push((self.weight[k] as f64 * inv[s] * inv[d]) as f32);
        }
        for i in 0..self.n {
            g.src.push(i as u32);
            g.dst.push(i as u32);
            g.weight.push(inv[i] as f32 * inv[i] as f32);
        }
        g
    }

    /// The Perron-Frobenius eigenvalue of `|A|` (its spectral radius) by power iteration in
    /// f64 from a positive vector, to `1e-9` relative change or `max_iter` steps.
    pub fn lambda_pf(&self, max_iter: usize) -> f64 {
        if self.n == 0 || self.num_edges() == 0 {
            return 0.0;
        }
        // Power iteration on |A|^T + a shift keeps it convergent for periodic graphs (a shift by
        // 1 does not change the eigenvector; the eigenvalue is corrected below).
        let mut x = vec![1.0f64 / (self.n as f64).sqrt(); self.n];
        let mut lam = 0.0;
        for _ in 0..max_iter {
            let mut y = x.clone();
            for k in 0..self.num_edges() {
                y[self.dst[k] as usize] += (self.weight[k] as f64).abs() * x[self.src[k] as usize];
            }
            let norm = y.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm == 0.0 {
                return 0.0;
            }
            let next = norm / x.iter().map(|v| v * v).sum::<f64>().sqrt() - 1.0;
            y.iter_mut().for_each(|v| *v /= norm);
            x = y;
            if (next - lam).abs() <= 1e-9 * next.abs().max(1e-12) {
                return next;
            }
            lam = next;
        }
        lam
    }

    /// The subgraph induced by `nodes` (renumbered `0..nodes.len()` in the given order) and
    /// the old id of each new node.
    pub fn induced(&self, nodes: &[u32]) -> Self {
        let mut new_id = vec![u32::MAX; self.n];
        for (k, &v) in nodes.iter().enumerate() {
            new_id[v as usize] = k as u32;
        }
        let mut g = Graph { n: nodes.len(), src: Vec::new(), dst: Vec::new(), weight: Vec::new() };
        for k in 0..self.num_edges() {
            let (s, d) = (new_id[self.src[k] as usize], new_id[self.dst[k] as usize]);
            if s != u32::MAX && d != u32::MAX {
                g.src.push(s);
                g.dst.push(d);
                g.weight.push(self.weight[k]);
            }
        }
        g
    }

    /// The weakly connected components, each a sorted list of node ids, ordered by their
    /// smallest node.
    pub fn components(&self) -> Vec<Vec<u32>> {
        let mut parent: Vec<u32> = (0..self.n as u32).collect();
        fn root(p: &mut [u32], mut v: u32) -> u32 {
            while p[v as usize] != v {
                p[v as usize] = p[p[v as usize] as usize];
                v = p[v as usize];
            }
            v
        }
        for k in 0..self.num_edges() {
            let (a, b) = (root(&mut parent, self.src[k]), root(&mut parent, self.dst[k]));
            if a != b {
                parent[a.max(b) as usize] = a.min(b);
            }
        }
        let mut index = vec![usize::MAX; self.n];
        let mut out: Vec<Vec<u32>> = Vec::new();
        for v in 0..self.n as u32 {
            let r = root(&mut parent, v) as usize;
            if index[r] == usize::MAX {
                index[r] = out.len();
                out.push(Vec::new());
            }
            out[index[r]].push(v);
        }
        out
    }

    /// The disjoint union of `graphs` (block-diagonal adjacency) and the graph index of every
    /// node.
    pub fn disjoint_union(graphs: &[&Graph]) -> (Graph, Vec<u32>) {
        let mut g = Graph { n: 0, src: Vec::new(), dst: Vec::new(), weight: Vec::new() };
        let mut owner = Vec::new();
        for (i, h) in graphs.iter().enumerate() {
            let off = g.n as u32;
            g.src.extend(h.src.iter().map(|v| v + off));
            g.dst.extend(h.dst.iter().map(|v| v + off));
            g.weight.extend_from_slice(&h.weight);
            g.n += h.n;
            owner.extend(std::iter::repeat(i as u32).take(h.n));
        }
        (g, owner)
    }

    /// The edge tensors on `device` for [`aggregate`] (on the CPU, and on CUDA in builds with
    /// the `cuda` feature, with the compressed-row kernels of [`crate::spmm`]).
    pub fn tensors(&self, dtype: DType, device: &Device) -> Result<EdgeTensors> {
        let spmm = has_spmm(device).then(|| {
            let at = Csr::from_triplets(self.n, self.n, &self.dst, &self.src, &self.weight);
            let a = Csr::from_triplets(self.n, self.n, &self.src, &self.dst, &self.weight);
            SpMM::new(Arc::new(at), Arc::new(a))
        });
        Ok(EdgeTensors {
            n: self.n,
            src: Tensor::from_vec(self.src.clone(), self.num_edges(), device)?,
            dst: Tensor::from_vec(self.dst.clone(), self.num_edges(), device)?,
            weight: Tensor::from_vec(self.weight.clone(), (self.num_edges(), 1), device)?.to_dtype(dtype)?,
            spmm,
        })
    }
}

/// Edge lists as tensors, ready for aggregation.
#[derive(Debug, Clone)]
pub struct EdgeTensors {
    /// Number of nodes.
    pub n: usize,
    /// Sources `(E,)` u32.
    pub src: Tensor,
    /// Destinations `(E,)` u32.
    pub dst: Tensor,
    /// Weights `(E, 1)`.
    pub weight: Tensor,
    /// The compressed-row kernel for `A^T X` (None on devices without one).
    pub spmm: Option<SpMM>,
}

/// `A^T X` for node-major features `x` (`(n, m)`): row `j` of the result is
/// `sum_{i -> j} A[i, j] x[i]` (in the column convention of the IGNN paper, `X A`).
/// Differentiable with respect to `x`. On the CPU and on CUDA (f32/f64) this is the
/// compressed-row kernel of [`crate::spmm`] (memory: the output); elsewhere (other dtypes,
/// builds without `cuda`) [`aggregate_indexed`].
pub fn aggregate(x: &Tensor, a: &EdgeTensors) -> Result<Tensor> {
    match &a.spmm {
        Some(op) if has_spmm(x.device()) && matches!(x.dtype(), DType::F32 | DType::F64) => op.forward(x),
        _ => aggregate_indexed(x, a),
    }
}

/// Whether [`crate::spmm`] has a kernel for `device`.
fn has_spmm(device: &Device) -> bool {
    device.is_cpu() || (cfg!(feature = "cuda") && device.is_cuda())
}

/// `A^T X` through `index_select` + `index_add` (any device; memory proportional to the number
/// of edges times `m`, for the `(E, m)` messages).
pub fn aggregate_indexed(x: &Tensor, a: &EdgeTensors) -> Result<Tensor> {
    let msgs = x.contiguous()?.index_select(&a.src, 0)?.broadcast_mul(&a.weight.to_dtype(x.dtype())?)?;
    Tensor::zeros((a.n, x.dim(1)?), x.dtype(), x.device())?.index_add(&a.dst, &msgs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_and_lambda_pf() {
        // An undirected triangle: the augmented normalisation has spectral radius 1.
        let g = Graph::from_edges(3, &[(0, 1), (1, 2), (2, 0)]).unwrap().symmetrized();
        let a = g.aug_normalized();
        assert!((a.lambda_pf(1000) - 1.0).abs() < 1e-6, "{}", a.lambda_pf(1000));
        // The raw triangle's adjacency has eigenvalue 2.
        assert!((g.lambda_pf(1000) - 2.0).abs() < 1e-6);
        // A directed chain is nilpotent: radius 0 (the shift keeps the iteration finite).
        let c = Graph::from_edges(4, &[(0, 1), (1, 2), (2, 3)]).unwrap();
        assert!(c.lambda_pf(2000) < 1e-2);
        assert!(Graph::from_edges(2, &[(0, 5)]).is_err());
    }

    #[test]
    fn induced_components_and_union() {
        let g = Graph::from_edges(6, &[(0, 1), (1, 2), (3, 4), (5, 5)]).unwrap();
        assert_eq!(g.components(), vec![vec![0, 1, 2], vec![3, 4], vec![5]]);
        let h = g.induced(&[2, 1, 4]);
        assert_eq!((h.n, h.src.clone(), h.dst.clone()), (3, vec![1], vec![0]));
        let (u, owner) = Graph::disjoint_union(&[&h, &g]);
        assert_eq!(u.n, 9);
        assert_eq!(owner, vec![0, 0, 0, 1, 1, 1, 1, 1, 1]);
        assert_eq!((u.src[1], u.dst[1]), (3, 4));
    }
}
