//! Exponential moving average of parameters (DDPM / DDIM's `EMAHelper`): after every optimiser
//! step `shadow = rate * shadow + (1 - rate) * param`; sampling uses the shadow weights.

use candle_core::{Tensor, Var};
use std::collections::HashMap;

use crate::error::{Result, TrainError};

/// The shadow copies of a set of named variables.
#[derive(Debug, Clone)]
pub struct Ema {
    rate: f64,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Shadows starting at the variables' current values; `rate` in `[0, 1)`.
    pub fn new(vars: &[(String, Var)], rate: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&rate) {
            return Err(TrainError::config("train.ema_rate", format!("{rate} must be in [0, 1)")));
        }
        Ok(Self { rate, shadow: vars.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?))).collect::<Result<_>>()? })
    }

    /// Moves every shadow towards its variable (`vars` in the order given to [`Ema::new`]).
    pub fn update(&mut self, vars: &[(String, Var)]) -> Result<()> {
        if vars.len() != self.shadow.len() {
            return Err(TrainError::config("ema", format!("{} variables for {} shadows", vars.len(), self.shadow.len())));
        }
        for ((name, s), (_, v)) in self.shadow.iter_mut().zip(vars) {
            let next = (s.affine(self.rate, 0.0)? + v.as_tensor().affine(1.0 - self.rate, 0.0)?)?;
            *s = next.detach();
            debug_assert!(!name.is_empty());
        }
        Ok(())
    }

    /// The shadow values by name.
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.shadow
    }

    /// Replaces the shadows with saved values (every name must be present, shapes equal).
    pub fn load(&mut self, saved: &HashMap<String, Tensor>) -> Result<()> {
        for (name, s) in self.shadow.iter_mut() {
            let t = saved.get(name).ok_or_else(|| TrainError::config("ema", format!("the checkpoint has no EMA value of {name}")))?;
            if t.dims() != s.dims() {
                return Err(TrainError::config("ema", format!("{name}: saved shape {:?}, expected {:?}", t.dims(), s.dims())));
            }
            *s = t.to_dtype(s.dtype())?.to_device(s.device())?;
        }
        Ok(())
    }

    /// Writes the shadow values into `vars` (for sampling with the averaged weights).
    pub fn copy_to(&self, vars: &[(String, Var)]) -> Result<()> {
        for ((_, s), (_, v)) in self.shadow.iter().zip(vars) {
            v.set(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn follows_the_update_rule_and_round_trips() {
        let v = Var::from_tensor(&Tensor::new(&[1f64, 2.0], &Device::Cpu).unwrap()).unwrap();
        let vars = vec![("w".to_string(), v.clone())];
        let mut e = Ema::new(&vars, 0.9).unwrap();
        v.set(&Tensor::new(&[3f64, 0.0], &Device::Cpu).unwrap()).unwrap();
        e.update(&vars).unwrap();
        let s = e.tensors()[0].1.to_vec1::<f64>().unwrap();
        assert!((s[0] - 1.2).abs() < 1e-12 && (s[1] - 1.8).abs() < 1e-12);
        let saved: HashMap<String, Tensor> = e.tensors().iter().cloned().collect();
        let mut f = Ema::new(&vars, 0.9).unwrap();
        f.load(&saved).unwrap();
        f.copy_to(&vars).unwrap();
        assert_eq!(v.as_tensor().to_vec1::<f64>().unwrap(), s);
        assert!(Ema::new(&vars, 1.0).is_err());
        let bad: HashMap<String, Tensor> = [("w".to_string(), Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap())].into();
        assert!(f.load(&bad).unwrap_err().to_string().contains("w"));
    }
}
