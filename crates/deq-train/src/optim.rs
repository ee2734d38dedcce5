//! Optimisers: SGD (momentum, Nesterov, weight decay) and Adam / AdamW, PyTorch semantics.
//!
//! Parameters are named [`Var`]s so that the optimiser state can be checkpointed by name
//! ([`Optimizer::state`] / [`Optimizer::load_state`]). Gradients come from a candle
//! [`GradStore`]; a parameter without a gradient is left unchanged (its state too).

use crate::error::{Result, TrainError};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

/// What every optimiser offers to a trainer.
pub trait Optimizer {
    /// Applies one update from `grads`.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// The current learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (schedules call this before each step).
    fn set_lr(&mut self, lr: f64);
    /// The optimiser state as named tensors (for checkpoints).
    fn state(&self) -> Result<Vec<(String, Tensor)>>;
    /// Restores a state written by [`Optimizer::state`]; missing or mis-shaped entries are errors.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
    /// The parameters, by name.
    fn params(&self) -> &[(String, Var)];
}

fn missing(key: &str) -> TrainError {
    TrainError::Config { key: key.to_string(), message: "missing from the optimiser state in the checkpoint".into() }
}

fn load_like(state: &HashMap<String, Tensor>, key: &str, like: &Tensor) -> Result<Tensor> {
    let t = state.get(key).ok_or_else(|| missing(key))?;
    if t.shape() != like.shape() {
        return Err(TrainError::Config { key: key.to_string(), message: format!("shape {:?} in the checkpoint, {:?} in the model", t.dims(), like.dims()) });
    }
    Ok(t.to_dtype(like.dtype())?.to_device(like.device())?)
}

/// Stochastic gradient descent with momentum, optional Nesterov momentum and (coupled) weight
/// decay, as `torch.optim.SGD` (dampening 0).
pub struct Sgd {
    params: Vec<(String, Var)>,
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    bufs: Vec<Option<Tensor>>,
}

impl Sgd {
    /// A new SGD optimiser.
    pub fn new(params: Vec<(String, Var)>, lr: f64, momentum: f64, nesterov: bool, weight_decay: f64) -> Result<Self> {
        if nesterov && momentum <= 0.0 {
            return Err(TrainError::Config { key: "nesterov".into(), message: "Nesterov momentum needs momentum > 0".into() });
        }
        let n = params.len();
        Ok(Self { params, lr, momentum, nesterov, weight_decay, bufs: vec![None; n] })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            let mut g = g.detach();
            if self.weight_decay != 0.0 {
                g = (g + p.as_tensor().detach().affine(self.weight_decay, 0.0)?)?;
            }
            if self.momentum != 0.0 {
                let buf = match self.bufs[i].take() {
                    None => g.clone(),
                    Some(b) => (b.affine(self.momentum, 0.0)? + &g)?,
                };
                g = if self.nesterov { (g + buf.affine(self.momentum, 0.0)?)? } else { buf.clone() };
                self.bufs[i] = Some(buf);
            }
            p.set(&(p.as_tensor().detach() - g.affine(self.lr, 0.0)?)?)?;
        }
        Ok(())
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .params
            .iter()
            .zip(&self.bufs)
            .filter_map(|((name, _), b)| b.as_ref().map(|b| (format!("sgd.momentum.{name}"), b.clone())))
            .collect())
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            let key = format!("sgd.momentum.{name}");
            self.bufs[i] = if state.contains_key(&key) { Some(load_like(state, &key, p.as_tensor())?) } else { None };
        }
        Ok(())
    }
    fn params(&self) -> &[(String, Var)] {
        &self.params
    }
}

/// Adam (`decoupled = false`, weight decay added to the gradient, `torch.optim.Adam`) or AdamW
/// (`decoupled = true`, `p -= lr * wd * p` before the update, `torch.optim.AdamW`).
pub struct Adam {
    params: Vec<(String, Var)>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    step: usize,
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
}

impl Adam {
    /// A new Adam/AdamW optimiser.
    pub fn new(params: Vec<(String, Var)>, lr: f64, betas: (f64, f64), eps: f64, weight_decay: f64, decoupled: bool) -> Result<Self> {
        let n = params.len();
        Ok(Self { params, lr, beta1: betas.0, beta2: betas.1, eps, weight_decay, decoupled, step: 0, m: vec![None; n], v: vec![None; n] })
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            let mut g = g.detach();
            let mut w = p.as_tensor().detach();
            if self.weight_decay != 0.0 {
                if self.decoupled {
                    w = w.affine(1.0 - self.lr * self.weight_decay, 0.0)?;
                } else {
                    g = (g + w.affine(self.weight_decay, 0.0)?)?;
                }
            }
            let m = match self.m[i].take() {
                None => g.affine(1.0 - self.beta1, 0.0)?,
                Some(m) => (m.affine(self.beta1, 0.0)? + g.affine(1.0 - self.beta1, 0.0)?)?,
            };
            let v = match self.v[i].take() {
                None => g.sqr()?.affine(1.0 - self.beta2, 0.0)?,
                Some(v) => (v.affine(self.beta2, 0.0)? + g.sqr()?.affine(1.0 - self.beta2, 0.0)?)?,
            };
            let denom = (v.affine(1.0 / bc2, 0.0)?.sqrt()? + self.eps)?;
            let update = (m.affine(self.lr / bc1, 0.0)? / denom)?;
            p.set(&(w - update)?)?;
            self.m[i] = Some(m);
            self.v[i] = Some(v);
        }
        Ok(())
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("adam.step".to_string(), Tensor::new(&[self.step as f64], &candle_core::Device::Cpu)?)];
        for (i, (name, _)) in self.params.iter().enumerate() {
            if let (Some(m), Some(v)) = (&self.m[i], &self.v[i]) {
                out.push((format!("adam.m.{name}"), m.clone()));
                out.push((format!("adam.v.{name}"), v.clone()));
            }
        }
        Ok(out)
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let step = state.get("adam.step").ok_or_else(|| missing("adam.step"))?;
        self.step = step.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?.first().copied().unwrap_or(0.0) as usize;
        for (i, (name, p)) in self.params.iter().enumerate() {
            let (km, kv) = (format!("adam.m.{name}"), format!("adam.v.{name}"));
            if state.contains_key(&km) {
                self.m[i] = Some(load_like(state, &km, p.as_tensor())?);
                self.v[i] = Some(load_like(state, &kv, p.as_tensor())?);
            } else {
                self.m[i] = None;
                self.v[i] = None;
            }
        }
        Ok(())
    }
    fn params(&self) -> &[(String, Var)] {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn scalar_grads(p: &Var, g: f64) -> GradStore {
        let mut s = GradStore::default();
        s.insert(p.as_tensor(), Tensor::new(&[g], &Device::Cpu).unwrap());
        s
    }
    fn value(p: &Var) -> f64 {
        p.as_tensor().to_vec1::<f64>().unwrap()[0]
    }

    #[test]
    fn sgd_matches_pytorch_formulas() {
        // p = 1, grads 1 then 2, lr 0.1, momentum 0.9, wd 0.01 (coupled).
        for nesterov in [false, true] {
            let p = Var::new(&[1.0f64], &Device::Cpu).unwrap();
            let mut opt = Sgd::new(vec![("p".into(), p.clone())], 0.1, 0.9, nesterov, 0.01).unwrap();
            let (mut w, mut buf) = (1.0f64, None::<f64>);
            for g in [1.0, 2.0] {
                opt.step(&scalar_grads(&p, g)).unwrap();
                let gg = g + 0.01 * w;
                let b = buf.map(|b| 0.9 * b + gg).unwrap_or(gg);
                buf = Some(b);
                let d = if nesterov { gg + 0.9 * b } else { b };
                w -= 0.1 * d;
                assert!((value(&p) - w).abs() < 1e-12, "nesterov={nesterov}: {} vs {w}", value(&p));
            }
        }
    }

    #[test]
    fn adam_and_adamw_match_pytorch_formulas() {
        for decoupled in [false, true] {
            let p = Var::new(&[0.5f64], &Device::Cpu).unwrap();
            let mut opt = Adam::new(vec![("p".into(), p.clone())], 0.01, (0.9, 0.999), 1e-8, 0.1, decoupled).unwrap();
            let (mut w, mut m, mut v) = (0.5f64, 0.0, 0.0);
            for (t, g) in [(1, 0.3), (2, -0.2), (3, 0.7)] {
                opt.step(&scalar_grads(&p, g)).unwrap();
                let mut gg = g;
                if decoupled {
                    w *= 1.0 - 0.01 * 0.1;
                } else {
                    gg += 0.1 * w;
                }
                m = 0.9 * m + 0.1 * gg;
                v = 0.999 * v + 0.001 * gg * gg;
                let (mh, vh) = (m / (1.0 - 0.9f64.powi(t)), v / (1.0 - 0.999f64.powi(t)));
                w -= 0.01 * mh / (vh.sqrt() + 1e-8);
                assert!((value(&p) - w).abs() < 1e-12, "decoupled={decoupled} step {t}: {} vs {w}", value(&p));
            }
        }
    }

    #[test]
    fn state_round_trips_and_missing_entries_are_errors() {
        let p = Var::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
        let mut a = Adam::new(vec![("w".into(), p.clone())], 0.01, (0.9, 0.999), 1e-8, 0.0, true).unwrap();
        let mut g = GradStore::default();
        g.insert(p.as_tensor(), Tensor::new(&[0.1f64, -0.3], &Device::Cpu).unwrap());
        a.step(&g).unwrap();
        let state: HashMap<String, Tensor> = a.state().unwrap().into_iter().collect();
        let q = Var::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
        let mut b = Adam::new(vec![("w".into(), q)], 0.01, (0.9, 0.999), 1e-8, 0.0, true).unwrap();
        b.load_state(&state).unwrap();
        assert_eq!(b.step, 1);
        let err = b.load_state(&HashMap::new()).err().unwrap().to_string();
        assert!(err.contains("adam.step"), "{err}");
    }
}
