//! A plain fully connected layer (`torch.nn.Linear`) through deq-core's `nn::linear_map`.

use candle_core::{DType, Device, Result, Tensor, Var};
use deq_core::rng::DeqRng;

/// `y = x W^T + b` for `x` of shape `(..., in)`, `W` `(out, in)`, `b` `(out,)`; weight and bias
/// drawn from U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's default).
#[derive(Debug)]
pub struct Linear {
    weight: Var,
    bias: Option<Var>,
}

impl Linear {
    /// A new `in_dim -> out_dim` layer with PyTorch's default initialisation.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, rng: &mut DeqRng, dtype: DType, dev: &Device) -> Result<Self> {
        if in_dim == 0 || out_dim == 0 {
            candle_core::bail!("linear: {in_dim} -> {out_dim} features");
        }
        let bound = 1.0 / (in_dim as f64).sqrt();
        let weight = Var::from_tensor(&rng.rand((out_dim, in_dim), -bound, bound, dtype, dev)?)?;
        let bias = if bias { Some(Var::from_tensor(&rng.rand(out_dim, -bound, bound, dtype, dev)?)?) } else { None };
        Ok(Self { weight, bias })
    }

    /// Applies the layer to `(..., in)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = deq_core::nn::linear_map(x, self.weight.as_tensor())?;
        match &self.bias {
            Some(b) => y.broadcast_add(b.as_tensor()),
            None => Ok(y),
        }
    }

    /// Trainable variables (`weight`, `bias`).
    pub fn vars(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        out.push((format!("{prefix}.weight"), self.weight.clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{prefix}.bias"), b.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_weight_and_bias_to_any_rank() {
        let mut rng = DeqRng::new(1);
        let l = Linear::new(3, 2, true, &mut rng, DType::F64, &Device::Cpu).unwrap();
        let x = rng.randn((4, 5, 3), DType::F64, &Device::Cpu).unwrap();
        let y = l.forward(&x).unwrap();
        assert_eq!(y.dims(), &[4, 5, 2]);
        let mut vars = Vec::new();
        l.vars("fc", &mut vars);
        let (w, b) = (vars[0].1.as_tensor(), vars[1].1.as_tensor());
        let want = x.broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap();
        let d = (y - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(d < 1e-12);
        assert_eq!(vars.iter().map(|v| v.0.as_str()).collect::<Vec<_>>(), ["fc.weight", "fc.bias"]);
        let bound = 1.0 / 3f64.sqrt();
        assert!(w.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() <= bound);
    }
}
