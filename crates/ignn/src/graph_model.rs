//! The graph classifier of the zoo's IGNN graph-classification model: stacked implicit graph
//! layers over a batch of graphs (their disjoint union), sum pooling per graph, and a 2-layer
//! MLP head `V_1 dropout(relu(V_0 h))`.

use crate::graph::EdgeTensors;
use crate::layer::ImplicitGraph;
use crate::model::{dropout, uniform};
use candle_core::{DType, Device, Result, Tensor, Var};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use deq_train::DeqObjective;

/// Implicit layers `p -> h -> ... -> h`, sum pooling, MLP `h -> h -> classes`.
#[derive(Debug)]
pub struct GraphClassifier {
    layers: Vec<ImplicitGraph>,
    v0: (Var, Var),
    v1: (Var, Var),
    dropout: f64,
}

fn linear(rng: &mut DeqRng, in_dim: usize, out_dim: usize, dtype: DType, dev: &Device) -> Result<(Var, Var)> {
    let s = 1.0 / (in_dim as f64).sqrt();
    Ok((uniform(rng, (out_dim, in_dim), in_dim, dtype, dev)?, Var::from_tensor(&rng.rand(out_dim, -s, s, dtype, dev)?)?))
}

fn apply(x: &Tensor, (w, b): &(Var, Var)) -> Result<Tensor> {
    x.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())
}

impl GraphClassifier {
    /// `layers` implicit layers (the zoo: 3) with `hidden` features.
    #[allow(clippy::too_many_arguments)]
    pub fn new(p: usize, hidden: usize, classes: usize, layers: usize, kappa: f64, dropout: f64, skip_input: bool, deq: DeqConfig, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let mut ls = Vec::with_capacity(layers);
        for i in 0..layers.max(1) {
            ls.push(ImplicitGraph::new(if i == 0 { p } else { hidden }, hidden, skip_input, kappa, deq.clone(), rng, dtype, dev)?);
        }
        let v0 = linear(rng, hidden, hidden, dtype, dev)?;
        let v1 = linear(rng, hidden, classes, dtype, dev)?;
        Ok(Self { layers: ls, v0, v1, dropout })
    }

    /// Logits `(num_graphs, classes)` for the batch: node features `u` (`(N, p)`) of the
    /// disjoint union `a`, `graph_of` (`(N,)` u32) the graph of every node. `rng` is `Some` in
    /// training (dropout on). Also returns the implicit layers' solves.
    pub fn forward(&self, u: &Tensor, a: &EdgeTensors, lambda_pf: f64, graph_of: &Tensor, num_graphs: usize, rng: Option<&mut DeqRng>) -> Result<(Tensor, crate::model::Solves)> {
        let (mut logits, solves) = self.run(u, a, lambda_pf, graph_of, num_graphs, rng, None)?;
        Ok((logits.pop().expect("one state at least"), solves))
    }

    /// A training forward for `objective` at optimiser step `step`: the logits of every
    /// supervised state of the last implicit layer (earliest first), and the solves with each
    /// layer's Jacobian regulariser when the step applies it.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train(&self, u: &Tensor, a: &EdgeTensors, lambda_pf: f64, graph_of: &Tensor, num_graphs: usize, rng: &mut DeqRng, objective: &DeqObjective, step: usize) -> Result<(Vec<Tensor>, crate::model::Solves)> {
        self.run(u, a, lambda_pf, graph_of, num_graphs, Some(rng), Some((objective, step)))
    }

    #[allow(clippy::too_many_arguments)]
    fn run(&self, u: &Tensor, a: &EdgeTensors, lambda_pf: f64, graph_of: &Tensor, num_graphs: usize, mut rng: Option<&mut DeqRng>, objective: Option<(&DeqObjective, usize)>) -> Result<(Vec<Tensor>, crate::model::Solves)> {
        let train = rng.is_some();
        let mut x = u.clone();
        let mut solves = crate::model::Solves::default();
        let mut last_states = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let solve = layer.forward_states(&x, a, lambda_pf, train)?;
            solves.push(layer, &solve, a, objective)?;
            x = solve.last().clone();
            if i + 1 == self.layers.len() {
                last_states = solve.states;
            }
        }
        let mut logits = Vec::with_capacity(last_states.len());
        for z in &last_states {
            let pooled = Tensor::zeros((num_graphs, z.dim(1)?), z.dtype(), z.device())?.index_add(graph_of, z, 0)?;
            let mut h = apply(&pooled, &self.v0)?.relu()?;
            if let Some(r) = rng.as_deref_mut() {
                h = dropout(&h, self.dropout, r)?;
            }
            logits.push(apply(&h, &self.v1)?);
        }
        Ok((logits, solves))
    }

    /// Trainable variables with names.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            l.vars(&format!("ignn.{i}"), &mut out);
        }
        for (name, (w, b)) in [("v0", &self.v0), ("v1", &self.v1)] {
            out.push((format!("{name}.weight"), w.clone()));
            out.push((format!("{name}.bias"), b.clone()));
        }
        out
    }
}
