//! # ignn
//!
//! Implicit graph neural networks (Gu et al., NeurIPS 2020) on deq-core: the equilibrium
//! `X = relu(W X A + Omega_1 U A + Omega_2 U)` over sparse graphs (edge lists, aggregation by
//! `index_select` + `index_add`), with the well-posedness projection
//! `||W||_inf <= kappa / lambda_pf(A)`, solved and differentiated by deq-core (implicit or
//! phantom gradients); the chains task, and a GCN baseline.
//!
//! | module | what it holds |
//! |---|---|
//! | [`graph`] | edge-list graphs, normalisation, `lambda_pf`, sparse aggregation |
//! | [`spmm`] | the compressed-row `A^T X` kernel as a differentiable candle op |
//! | [`projection`] | the row-wise L1-ball projection of `W` |
//! | [`layer`] | the implicit graph layer |
//! | [`model`] | node classifiers: IGNN, the stacked PPI model, GCN |
//! | [`graph_model`] | the graph classifier (implicit layers, sum pooling, MLP) |
//! | [`config`] | the run configuration (`[data]`, `[train]`, `[deq]`) |
//! | [`chains`] | the chains dataset |
//! | [`planetoid`] | the plain-text Planetoid format (Cora, CiteSeer; any graph) |
//! | [`ppi`] | the GraphSAGE format (PPI) |
//! | [`tu`] | the TU graph-classification format |
//! | [`error`] | reader errors naming file and line |
//! | [`train`] | node-level training, evaluation, checkpoints |
//! | [`graph_train`] | graph-classification training with k-fold cross-validation |
//!
//! ## Example: an implicit layer on a graph, then a short training run
//!
//! ```
//! use candle_core::{DType, Device};
//! use deq_core::{rng::DeqRng, DeqConfig, NormType};
//! use ignn::train::{train_nodes, NodeTask, NodeTrainConfig, RunOptions};
//! use ignn::{Graph, ImplicitGraph};
//!
//! // A 4-cycle, augmented-normalised; lambda_pf bounds the projection of W.
//! let g = Graph::from_edges(4, &[(0, 1), (1, 2), (2, 3), (3, 0)]).unwrap().symmetrized().aug_normalized();
//! let lambda = g.lambda_pf(1000);
//! let a = g.tensors(DType::F32, &Device::Cpu)?;
//! let deq = DeqConfig { norm_type: NormType::None, ..Default::default() };
//! let mut rng = DeqRng::new(0);
//! let layer = ImplicitGraph::new(3, 8, true, 0.9, deq.clone(), &mut rng, DType::F32, &Device::Cpu)?;
//! let u = rng.randn((4, 3), DType::F32, &Device::Cpu)?;
//! let (x, stats, _backward) = layer.forward(&u, &a, lambda, false)?;
//! assert_eq!(x.dims(), &[4, 8]);
//! assert!(stats.max_lowest() < 1e-2);
//!
//! // The chains task, a few full-batch epochs.
//! let task: NodeTask = ignn::chains::generate(2, 5, 6, 10, 0.2, 0.1, 0).into();
//! let cfg = NodeTrainConfig { hidden: 8, epochs: 5, ..Default::default() };
//! let r = train_nodes(&task, &cfg, &deq, &RunOptions::default(), |_, _, _| {})?;
//! assert!((0.0..=1.0).contains(&r.test));
//! # Ok::<(), anyhow::Error>(())
//! ```
#![warn(missing_docs)]

pub mod chains;
pub mod config;
pub mod error;
pub mod graph;
pub mod graph_model;
pub mod graph_train;
pub mod layer;
pub mod model;
pub mod planetoid;
pub mod ppi;
pub mod projection;
pub mod spmm;
pub mod train;
pub mod tu;

pub use graph::{aggregate, aggregate_indexed, EdgeTensors, Graph};
pub use error::GraphFileError;
pub use layer::ImplicitGraph;
