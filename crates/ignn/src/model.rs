//! Node classifiers: IGNN (one implicit layer + linear readout, as in the paper's chains
//! experiment), the zoo's 5-layer PPI model, and the 2-layer GCN baseline.

use crate::graph::{aggregate, EdgeTensors};
use crate::layer::{ImplicitGraph, LayerSolve};
use candle_core::{DType, Device, Result, Tensor, Var, D};
use deq_core::rng::DeqRng;
use deq_core::DeqConfig;
use deq_train::{DeqObjective, JacTerm};

/// Inverted dropout with a mask drawn from `rng` (identity when `p == 0`).
pub fn dropout(x: &Tensor, p: f64, rng: &mut DeqRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mask = rng.dropout_mask(x.shape(), 1.0 - p, x.dtype(), x.device())?;
    x * mask
}

/// A node classifier.
#[derive(Debug)]
pub enum NodeModel {
    /// `logits = dropout(normalize_rows(IGNN(U))) R^T`.
    Ignn {
        /// The implicit layer.
        layer: ImplicitGraph,
        /// Readout `(classes, m)`, no bias.
        readout: Var,
        /// Dropout before the readout.
        dropout: f64,
        /// L2-normalise each node's features before the readout (the reference's readout).
        normalize: bool,
    },
    /// The zoo's PPI model: implicit layers `p -> 4h -> 2h -> 2h -> h -> classes`, each with
    /// a skip linear map of its input, `x_{i+1} = elu(IGNN_i(x_i) + V_i x_i + c_i)` (no ELU
    /// after the last).
    Stacked {
        /// The implicit layers.
        layers: Vec<ImplicitGraph>,
        /// Skip linear maps `(V_i (out, in), c_i (out,))`.
        proj: Vec<(Var, Var)>,
    },
    /// `logits = A^T (dropout(relu(A^T U W1^T + b1))) W2^T + b2` (Kipf & Welling).
    Gcn {
        /// First layer `(h, p)` and bias.
        w1: Var,
        /// First bias.
        b1: Var,
        /// Second layer `(classes, h)`.
        w2: Var,
        /// Second bias.
        b2: Var,
        /// Dropout between the layers.
        dropout: f64,
    },
}

/// A `(out, in)` matrix drawn from `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (PyTorch's `Linear`).
pub(crate) fn uniform(rng: &mut DeqRng, shape: (usize, usize), fan_in: usize, dtype: DType, dev: &Device) -> Result<Var> {
    let s = 1.0 / (fan_in as f64).sqrt();
    Var::from_tensor(&rng.rand(shape, -s, s, dtype, dev)?)
}

/// The fixed-point solves of one forward pass, one per implicit layer (none for the GCN).
#[derive(Debug, Clone, Default)]
pub struct Solves {
    /// Forward solve statistics.
    pub forward: Vec<deq_core::SolverStats>,
    /// Adjoint solve statistics, filled in when the implicit backward runs.
    pub backward: Vec<deq_core::grad::BackwardStats>,
    /// The Jacobian regulariser of each implicit layer on a training step that applies it.
    pub jac: Vec<JacTerm>,
}

impl Solves {
    /// Records `solve`'s statistics and, when `objective` applies it at this step, the layer's
    /// Jacobian regulariser.
    pub(crate) fn push(&mut self, layer: &ImplicitGraph, solve: &LayerSolve, a: &EdgeTensors, objective: Option<(&DeqObjective, usize)>) -> Result<()> {
        self.forward.push(solve.stats.clone());
        self.backward.push(solve.backward.clone());
        if let Some((o, step)) = objective {
            if let Some(j) = layer.jacobian(solve, a, o, step).map_err(|e| candle_core::Error::Msg(e.to_string()))? {
                self.jac.push(j);
            }
        }
        Ok(())
    }

    /// The sum of the layers' weighted Jacobian terms (to add to the loss), if any.
    pub fn jac_term(&self) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for j in &self.jac {
            total = Some(match total {
                None => j.term.clone(),
                Some(t) => (t + &j.term)?,
            });
        }
        Ok(total)
    }

    /// Forward NFE of all layers.
    pub fn nfe(&self) -> usize {
        self.forward.iter().map(|s| s.nfe).sum()
    }
    /// Adds the forward solves to `m`.
    pub fn add_forward_to(&self, m: &mut deq_train::SolverMetrics) {
        self.forward.iter().for_each(|s| m.add_forward(s));
    }
    /// Adds the adjoint solves run so far to `m`.
    pub fn add_backward_to(&self, m: &mut deq_train::SolverMetrics) {
        self.backward.iter().for_each(|b| m.add_backward(&b.get()));
    }
}

impl NodeModel {
    /// IGNN with `hidden` features.
    #[allow(clippy::too_many_arguments)]
    pub fn ignn(p: usize, hidden: usize, classes: usize, kappa: f64, dropout: f64, skip_input: bool, deq: DeqConfig, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let layer = ImplicitGraph::new(p, hidden, skip_input, kappa, deq, rng, dtype, dev)?;
        let readout = uniform(rng, (classes, hidden), hidden, dtype, dev)?;
        Ok(NodeModel::Ignn { layer, readout, dropout, normalize: true })
    }

    /// The zoo's 5-layer PPI model with `hidden` = its `nhid` (256 in the zoo).
    #[allow(clippy::too_many_arguments)]
    pub fn stacked(p: usize, hidden: usize, classes: usize, kappa: f64, skip_input: bool, deq: DeqConfig, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        let sizes = [p, 4 * hidden, 2 * hidden, 2 * hidden, hidden, classes];
        let mut layers = Vec::new();
        let mut proj = Vec::new();
        for w in sizes.windows(2) {
            layers.push(ImplicitGraph::new(w[0], w[1], skip_input, kappa, deq.clone(), rng, dtype, dev)?);
            let s = 1.0 / (w[0] as f64).sqrt();
            proj.push((uniform(rng, (w[1], w[0]), w[0], dtype, dev)?, Var::from_tensor(&rng.rand(w[1], -s, s, dtype, dev)?)?));
        }
        Ok(NodeModel::Stacked { layers, proj })
    }

    /// A 2-layer GCN with `hidden` features.
    pub fn gcn(p: usize, hidden: usize, classes: usize, dropout: f64, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        Ok(NodeModel::Gcn {
            w1: uniform(rng, (hidden, p), p, dtype, dev)?,
            b1: Var::zeros(hidden, dtype, dev)?,
            w2: uniform(rng, (classes, hidden), hidden, dtype, dev)?,
            b2: Var::zeros(classes, dtype, dev)?,
            dropout,
        })
    }

    /// Logits `(n, classes)` for node features `u` (`(n, p)`) on the normalised graph `a`.
    /// `rng` is `Some` in training (dropout on).
    pub fn forward(&self, u: &Tensor, a: &EdgeTensors, lambda_pf: f64, rng: Option<&mut DeqRng>) -> Result<(Tensor, Solves)> {
        let (mut logits, solves) = self.run(u, a, lambda_pf, rng, None)?;
        Ok((logits.pop().expect("one state at least"), solves))
    }

    /// A training forward for `objective` at optimiser step `step`: the logits of every
    /// supervised state of the last implicit layer (earliest first; the earlier layers pass on
    /// their fixed points), and the solves with each layer's Jacobian regulariser when the
    /// step applies it.
    pub fn forward_train(&self, u: &Tensor, a: &EdgeTensors, lambda_pf: f64, rng: &mut DeqRng, objective: &DeqObjective, step: usize) -> Result<(Vec<Tensor>, Solves)> {
        self.run(u, a, lambda_pf, Some(rng), Some((objective, step)))
    }

    fn run(&self, u: &Tensor, a: &EdgeTensors, lambda_pf: f64, mut rng: Option<&mut DeqRng>, objective: Option<(&DeqObjective, usize)>) -> Result<(Vec<Tensor>, Solves)> {
        let train = rng.is_some();
        let mut solves = Solves::default();
        match self {
            NodeModel::Ignn { layer, readout, dropout: p, normalize } => {
                let solve = layer.forward_states(u, a, lambda_pf, train)?;
                solves.push(layer, &solve, a, objective)?;
                let mut logits = Vec::with_capacity(solve.states.len());
                for x in &solve.states {
                    let mut h = if *normalize {
                        let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
                        x.broadcast_div(&norm)?
                    } else {
                        x.clone()
                    };
                    if let Some(r) = rng.as_deref_mut() {
                        h = dropout(&h, *p, r)?;
                    }
                    logits.push(h.matmul(&readout.as_tensor().t()?)?);
                }
                Ok((logits, solves))
            }
            NodeModel::Stacked { layers, proj } => {
                let mut x = u.clone();
                for (i, (layer, (v, c))) in layers.iter().zip(proj).enumerate() {
                    let solve = layer.forward_states(&x, a, lambda_pf, train)?;
                    solves.push(layer, &solve, a, objective)?;
                    let skip = x.matmul(&v.as_tensor().t()?)?.broadcast_add(c.as_tensor())?;
                    if i + 1 < layers.len() {
                        x = (solve.last() + skip)?.elu(1.0)?;
                    } else {
                        let logits = solve.states.iter().map(|z| z + &skip).collect::<Result<Vec<_>>>()?;
                        return Ok((logits, solves));
                    }
                }
                Ok((vec![x], solves))
            }
            NodeModel::Gcn { w1, b1, w2, b2, dropout: p } => {
                let mut h = aggregate(&u.matmul(&w1.as_tensor().t()?)?, a)?.broadcast_add(b1.as_tensor())?.relu()?;
                if let Some(r) = rng {
                    h = dropout(&h, *p, r)?;
                }
                Ok((vec![aggregate(&h.matmul(&w2.as_tensor().t()?)?, a)?.broadcast_add(b2.as_tensor())?], solves))
            }
        }
    }

    /// Whether the model is implicit (the GCN baseline is not: the `[deq]` options that act on
    /// the loss are refused for it).
    pub fn is_implicit(&self) -> bool {
        !matches!(self, NodeModel::Gcn { .. })
    }

    /// Trainable variables with names.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        match self {
            NodeModel::Ignn { layer, readout, .. } => {
                layer.vars("ignn", &mut out);
                out.push(("readout".into(), readout.clone()));
            }
            NodeModel::Stacked { layers, proj } => {
                for (i, (layer, (v, c))) in layers.iter().zip(proj).enumerate() {
                    layer.vars(&format!("ignn.{i}"), &mut out);
                    out.push((format!("proj.{i}.weight"), v.clone()));
                    out.push((format!("proj.{i}.bias"), c.clone()));
                }
            }
            NodeModel::Gcn { w1, b1, w2, b2, .. } => {
                for (n, v) in [("gcn.w1", w1), ("gcn.b1", b1), ("gcn.w2", w2), ("gcn.b2", b2)] {
                    out.push((n.into(), v.clone()));
                }
            }
        }
        out
    }
}
