//! The chains task of the IGNN paper: long-range dependencies. Each chain is a directed path;
//! only its first node carries the class (one-hot in the first feature dimensions), every node
//! of the chain has the chain's label, so a model must carry information along the whole chain.

use crate::graph::Graph;
use deq_core::rng::DeqRng;

/// A generated chains dataset.
#[derive(Debug, Clone)]
pub struct Chains {
    /// The directed graph (edges `k -> k + 1` within each chain).
    pub graph: Graph,
    /// Node features `(n, feature_dim)`, row-major.
    pub features: Vec<f32>,
    /// Feature dimension.
    pub feature_dim: usize,
    /// Label of each node.
    pub labels: Vec<u32>,
    /// Training, validation and test node ids.
    pub split: (Vec<u32>, Vec<u32>, Vec<u32>),
    /// Number of classes.
    pub classes: usize,
}

/// `classes x chains_per_class` chains of `length` nodes with `feature_dim`-dimensional
/// features (the paper: 2 classes, 20 chains each, 100 features). Node id
/// `((class * chains_per_class + chain) * length + position)`. The split shuffles all nodes
/// with `seed` and takes the given fractions for training and validation, the rest for test.
pub fn generate(classes: usize, chains_per_class: usize, length: usize, feature_dim: usize, train_frac: f64, val_frac: f64, seed: u64) -> Chains {
    let n = classes * chains_per_class * length;
    let mut edges = Vec::with_capacity(n);
    let mut features = vec![0f32; n * feature_dim];
    let mut labels = vec![0u32; n];
    for c in 0..classes {
        for ch in 0..chains_per_class {
            let base = (c * chains_per_class + ch) * length;
            features[base * feature_dim + c] = 1.0;
            for pos in 0..length {
                labels[base + pos] = c as u32;
                if pos + 1 < length {
                    edges.push(((base + pos) as u32, (base + pos + 1) as u32));
                }
            }
        }
    }
    let graph = Graph::from_edges(n, &edges).expect("ids in range by construction");
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = DeqRng::new(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let n_train = ((n as f64 * train_frac).round() as usize).max(1);
    let n_val = (n as f64 * val_frac).round() as usize;
    let split = (order[..n_train].to_vec(), order[n_train..n_train + n_val].to_vec(), order[n_train + n_val..].to_vec());
    Chains { graph, features, feature_dim, labels, split, classes }
}

impl From<Chains> for crate::train::NodeTask {
    fn from(c: Chains) -> Self {
        Self { graph: c.graph, features: c.features, feature_dim: c.feature_dim, labels: crate::train::Labels::Single(c.labels), classes: c.classes, split: c.split }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_have_the_paper_structure() {
        let c = generate(2, 20, 10, 100, 0.05, 0.1, 42);
        assert_eq!(c.graph.n, 400);
        assert_eq!(c.graph.num_edges(), 40 * 9);
        // Only chain heads carry a feature, and it is their class.
        let heads: Vec<usize> = (0..400).filter(|&i| c.features[i * 100..(i + 1) * 100].iter().any(|&v| v != 0.0)).collect();
        assert_eq!(heads.len(), 40);
        assert!(heads.iter().all(|&h| h % 10 == 0 && c.features[h * 100 + c.labels[h] as usize] == 1.0));
        let (tr, va, te) = &c.split;
        assert_eq!((tr.len(), va.len(), te.len()), (20, 40, 340));
        let mut all: Vec<u32> = tr.iter().chain(va).chain(te).copied().collect();
        all.sort();
        assert_eq!(all, (0..400).collect::<Vec<u32>>());
    }
}
