//! Gradient clipping by global norm and by value (`torch.nn.utils.clip_grad_norm_` /
//! `clip_grad_value_`).

use crate::error::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Var};

/// The global L2 norm of the gradients of `vars` (those present in `grads`).
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
    }
    Ok(sq.sqrt())
}

/// Scales the gradients so that their global norm is at most `max_norm`; returns the norm
/// before clipping (non-finite when a gradient holds NaN/Inf: the caller decides what to do).
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads, vars)?;
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = g.affine(scale, 0.0)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// Clamps every gradient element to `[-clip, clip]`.
pub fn clip_grad_value(grads: &mut GradStore, vars: &[Var], clip: f64) -> Result<()> {
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            let c = g.clamp(-clip, clip)?;
            grads.insert(v.as_tensor(), c);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn clipping_by_norm_and_value() {
        let a = Var::new(&[0.0f64, 0.0], &Device::Cpu).unwrap();
        let b = Var::new(&[0.0f64], &Device::Cpu).unwrap();
        let mut g = GradStore::default();
        g.insert(a.as_tensor(), Tensor::new(&[3.0f64, 0.0], &Device::Cpu).unwrap());
        g.insert(b.as_tensor(), Tensor::new(&[4.0f64], &Device::Cpu).unwrap());
        let vars = [a.clone(), b.clone()];
        assert!((clip_grad_norm(&mut g, &vars, 1.0).unwrap() - 5.0).abs() < 1e-12);
        assert!((grad_norm(&g, &vars).unwrap() - 1.0).abs() < 1e-6);
        // Under the limit nothing changes.
        assert!((clip_grad_norm(&mut g, &vars, 10.0).unwrap() - 1.0).abs() < 1e-6);
        clip_grad_value(&mut g, &vars, 0.5).unwrap();
        assert_eq!(g.get(a.as_tensor()).unwrap().to_vec1::<f64>().unwrap(), vec![0.5, 0.0]);
        assert_eq!(g.get(b.as_tensor()).unwrap().to_vec1::<f64>().unwrap(), vec![0.5]);
    }
}
