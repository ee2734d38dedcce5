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
pub mod train;
pub mod tu;

pub use graph::{aggregate, EdgeTensors, Graph};
pub use error::GraphFileError;
pub use layer::ImplicitGraph;
