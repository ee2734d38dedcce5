//! Sparse graphs as weighted edge lists, their normalisations, the Perron-Frobenius eigenvalue,
//! and message aggregation through `index_select` + `index_add` (never a dense `n x n` matrix).

use candle_core::{DType, Device, Result, Tensor};

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

    /// The edge tensors on `device` for [`aggregate`].
    pub fn tensors(&self, dtype: DType, device: &Device) -> Result<EdgeTensors> {
        Ok(EdgeTensors {
            n: self.n,
            src: Tensor::from_vec(self.src.clone(), self.num_edges(), device)?,
            dst: Tensor::from_vec(self.dst.clone(), self.num_edges(), device)?,
            weight: Tensor::from_vec(self.weight.clone(), (self.num_edges(), 1), device)?.to_dtype(dtype)?,
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
}

/// `A^T X` for node-major features `x` (`(n, m)`): row `j` of the result is
/// `sum_{i -> j} A[i, j] x[i]` (in the column convention of the IGNN paper, `X A`). Memory is
/// proportional to the number of edges times `m`. Differentiable with respect to `x`
/// (`index_select` and `index_add` have exact backward rules).
pub fn aggregate(x: &Tensor, a: &EdgeTensors) -> Result<Tensor> {
    let msgs = x.index_select(&a.src, 0)?.broadcast_mul(&a.weight)?;
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
}
